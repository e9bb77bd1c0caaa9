"""What every chat connector is: open a conversation, send, receive bot messages in order, close.

    conversation = await connector.open(conversation_id)   # a fresh user and conversation
    await conversation.send(UserMessage(text="hi"))          # returns once the bot accepted it
    message = await conversation.receive(timeout=10.0)       # the next bot message, or None at the timeout
    await conversation.close()

Bots answer in their own time and sometimes with several messages: a connector
puts each bot message into the conversation's queue as it arrives (from an HTTP
response, a websocket, a callback, a poll), stamped with the monotonic time it
arrived. Every failure of the wire is raised as cxtest's error tree here, at the
connector: TargetUnreachable (refused, DNS, TLS), ProtocolError (an answer that is
not the protocol: HTML for JSON, invalid JSON, a closed socket), StepTimeout (no
HTTP answer in time). A connector that sees its peer go away while messages are
awaited puts the error into the queue, so receive() raises it where the scenario is.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from cxtest.model import Duration, Frozen


@dataclass(frozen=True)
class Button:
    title: str
    value: str | None = None  # what clicking sends (payload, postBack value); None: the title


@dataclass(frozen=True)
class UserMessage:
    """What the customer sends: text, or a click on one of the buttons the bot offered."""

    text: str
    button: Button | None = None  # set when the text comes from clicking it

    @property
    def value(self) -> str:
        """What goes on the wire: the button's value when clicked, else the text."""
        return self.button.value if self.button is not None and self.button.value is not None else self.text


@dataclass(frozen=True)
class BotMessage:
    """One message from the bot, as the connector understood it, with the raw JSON it came in."""

    text: str = ""
    buttons: tuple[Button, ...] = ()
    intent: str | None = None
    confidence: float | None = None
    raw: Any = None
    at: float = field(default_factory=time.monotonic)  # monotonic time it arrived


class ChatTarget(Frozen):
    """Settings every connector takes; each connector's target extends it with `connector: <name>`."""

    url: str
    headers: dict[str, str] = {}
    user: str = "cxtest"  # user id prefix; each conversation is `<user>-<run id>-<8 random hex digits>`
    verify: bool | str = True  # TLS: False, or a CA bundle file
    connect_timeout: Duration = 10.0


class Conversation:
    """One conversation: bot messages queue up as they arrive; receive() hands them out in order."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[BotMessage | BaseException] = asyncio.Queue()

    def deliver(self, item: BotMessage | BaseException) -> None:
        """Called by the connector for each bot message, or with the error that ends the conversation."""
        self._queue.put_nowait(item)

    async def receive(self, timeout: float) -> BotMessage | None:
        """The next bot message; None when none came within timeout seconds (0: only one already here)."""
        if not self._queue.empty():
            item = self._queue.get_nowait()
        else:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return None
        if isinstance(item, BaseException):
            self.deliver(item)  # every later receive raises it too
            raise item
        return item

    def pending(self) -> int:
        return self._queue.qsize()

    async def send(self, message: UserMessage) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the conversation holds (a socket, a callback route); never raises."""


class Connector(Protocol):
    """One per probe and target settings: holds pooled clients; opens conversations."""

    name: ClassVar[str]
    target_model: ClassVar[type[ChatTarget]]

    async def open(self, target: Any, conversation_id: str) -> Conversation: ...

    async def aclose(self) -> None: ...
