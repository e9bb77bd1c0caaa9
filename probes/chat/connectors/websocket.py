"""`connector: websocket`: a JSON chat over one websocket per conversation (Botkit's web adapter shape by default).

    target:
      connector: websocket
      url: ws://127.0.0.1:3000
      message: {type: message, text: "{{ text }}", user: "{{ user }}", channel: websocket}   # the default
      hello: true        # send {type: hello, user, channel: socket} first, as Botkit's web client does

Frames from the bot with `type: message` (or no type) are bot messages: `text`, and
buttons from `quick_replies` or `buttons` (title/payload). Typing indicators and other
events are left out. A frame that is not JSON, or the bot closing the socket, ends the
conversation with a ProtocolError at the next `bot` step.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, ClassVar, Literal

from cxtest.errors import ProtocolError, TargetUnreachable
from probes.chat.connectors.base import BotMessage, ChatTarget, Conversation, UserMessage
from probes.chat.connectors.rest import as_button, snippet

MESSAGE = {"type": "message", "text": "{{ text }}", "user": "{{ user }}", "channel": "websocket"}


class WebsocketTarget(ChatTarget):
    connector: Literal["websocket"]
    message: dict[str, Any] = MESSAGE
    hello: bool = False


def parse(frame: Any) -> BotMessage | None:
    """A bot message from one JSON frame; None for events that are not messages (typing, hello...)."""
    if not isinstance(frame, dict) or frame.get("type", "message") != "message":
        return None
    buttons = tuple(b for b in map(as_button, frame.get("quick_replies") or frame.get("buttons") or ()) if b is not None)
    text = frame.get("text")
    if text is None and not buttons:
        return None
    return BotMessage(str(text or ""), buttons, raw=frame)


class WebsocketConversation(Conversation):
    def __init__(self, socket: Any, target: WebsocketTarget, conversation_id: str):
        super().__init__()
        self.socket, self.target, self.conversation_id = socket, target, conversation_id
        self._closing = False
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in self.socket:
                arrived = time.monotonic()
                try:
                    document = json.loads(frame)
                except ValueError:
                    self.deliver(ProtocolError(f"the bot sent a frame that is not JSON: {snippet(str(frame))}"))
                    return
                message = parse(document)
                if message is not None:
                    self.deliver(BotMessage(message.text, message.buttons, raw=message.raw, at=arrived))
        except ConnectionClosed:
            pass
        if not self._closing:
            code, reason = self.socket.close_code, self.socket.close_reason  # 1006: dropped without a close frame
            self.deliver(ProtocolError(f"the bot closed the websocket (code {code}{', ' + reason if reason else ''})"))

    async def send(self, message: UserMessage) -> None:
        from websockets.exceptions import ConnectionClosed

        from probes.http import render

        frame = render(self.target.message, {"text": message.value, "user": self.conversation_id, "conversation_id": self.conversation_id})
        try:
            await self.socket.send(json.dumps(frame))
        except ConnectionClosed:
            raise ProtocolError(f"the bot closed the websocket (code {self.socket.close_code}) before our message went out") from None

    async def close(self) -> None:
        self._closing = True
        self._reader.cancel()
        try:
            await self.socket.close()
        except Exception:  # closing a socket the bot already dropped: nothing left to release
            pass


class WebsocketConnector:
    name: ClassVar[str] = "websocket"
    target_model: ClassVar[type] = WebsocketTarget

    async def open(self, target: WebsocketTarget, conversation_id: str) -> Conversation:
        import websockets
        from websockets.exceptions import InvalidHandshake, InvalidURI

        url = re.sub(r"^http", "ws", target.url)  # http://host/bot/ws and ws://host/bot/ws are the same place
        try:
            socket = await asyncio.wait_for(
                websockets.connect(url, additional_headers=target.headers, open_timeout=None, proxy=None),
                target.connect_timeout,
            )
        except TimeoutError:
            raise TargetUnreachable(f"no websocket handshake with {url} within {target.connect_timeout:g}s") from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise TargetUnreachable(f"cannot open a websocket to {url}: {exc}") from None
        if target.hello:
            await socket.send(json.dumps({"type": "hello", "user": conversation_id, "channel": "socket"}))
        return WebsocketConversation(socket, target, conversation_id)

    async def aclose(self) -> None:
        """Each conversation owns its socket: nothing shared to release."""
