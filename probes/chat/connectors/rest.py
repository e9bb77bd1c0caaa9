"""`connector: rest`: any JSON-over-HTTP bot; the request is a template, the replies are found by JSONPath.

    target:
      connector: rest
      url: http://127.0.0.1:8000/bot/rest
      body: {conversation_id: "{{ conversation_id }}", user: "{{ user }}", text: "{{ text }}"}   # the default
      messages: "$.messages[*]"     # each match is one bot message ("$": the whole answer is one)
      text: "$.text"                # within a message; several matches are several messages
      buttons: "$.buttons[*]"       # within a message: strings, or objects with title/text/label and payload/value
      intent: "$.intent.name"       # within the whole answer
      confidence: "$.intent.confidence"

Botium users know this as SimpleRest. The bot answers inside the HTTP response, so
its messages are queued when send() returns; a bot that answers later (a callback or
a socket) needs another connector.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, ClassVar, Literal

import httpx

from cxtest.errors import ProtocolError
from probes.chat.connectors.base import BotMessage, Button, ChatTarget, Conversation, UserMessage

SNIPPET = 120  # characters of a wrong answer shown in the error


class RestTarget(ChatTarget):
    connector: Literal["rest"]
    method: Literal["POST", "PUT", "GET"] = "POST"
    body: Any = {"conversation_id": "{{ conversation_id }}", "user": "{{ user }}", "text": "{{ text }}"}
    messages: str = "$.messages[*]"
    text: str = "$.text"
    buttons: str | None = "$.buttons[*]"
    intent: str | None = "$.intent.name"
    confidence: str | None = "$.intent.confidence"


def _first(path: str | None, document: Any) -> Any:
    from probes.http import _compiled

    if path is None:
        return None
    found = _compiled(path).findall(document)
    return found[0] if found else None


def _all(path: str | None, document: Any) -> list[Any]:
    from probes.http import _compiled

    return [] if path is None else list(_compiled(path).findall(document))


def as_button(value: Any) -> Button | None:
    """A button from a string or an object with a title and perhaps a value (payload, value, postBack...)."""
    if isinstance(value, str):
        return Button(value)
    if not isinstance(value, dict):
        return None
    title = next((value[key] for key in ("title", "text", "label") if isinstance(value.get(key), str)), None)
    payload = next((value[key] for key in ("payload", "value", "postback") if value.get(key) is not None), None)
    if title is None:
        return None
    return Button(title, payload if isinstance(payload, str) or payload is None else json.dumps(payload))


def snippet(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…")


class HttpConversation(Conversation):
    """A conversation whose bot answers in the HTTP response to each message."""

    def __init__(self, client: httpx.AsyncClient, target: ChatTarget, conversation_id: str, request: Callable[[UserMessage], dict[str, Any]], parse: Callable[[Any], list[BotMessage]]):
        super().__init__()
        self.client, self.target, self.conversation_id = client, target, conversation_id
        self._request, self._parse = request, parse

    async def send(self, message: UserMessage) -> None:
        from probes.http import _translate

        request = self._request(message)
        url = request["url"]
        try:
            response = await self.client.request(**request, headers=self.target.headers)
        except httpx.HTTPError as exc:
            raise _translate(exc, url, self.target.connect_timeout) from None
        arrived = time.monotonic()
        if response.status_code >= 400:
            raise ProtocolError(f"the bot at {url} answered {response.status_code} {response.reason_phrase}: {snippet(response.text)}")
        if not response.content.strip():
            return  # a bot with nothing to say
        try:
            document = response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no content type")
            raise ProtocolError(f"the bot's answer is not JSON ({kind}): {snippet(response.text)}") from None
        for bot_message in self._parse(document):
            self.deliver(BotMessage(bot_message.text, bot_message.buttons, bot_message.intent, bot_message.confidence, bot_message.raw, arrived))


class HttpConnector:
    """The shared HTTP client of one probe's conversations; `transport` is the seam for tests without a network."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None):
        self._transport = transport
        self._clients: dict[tuple[Any, float], httpx.AsyncClient] = {}

    def client(self, target: ChatTarget) -> httpx.AsyncClient:
        key = (target.verify, target.connect_timeout)
        if key not in self._clients:
            timeout = httpx.Timeout(None, connect=target.connect_timeout)  # replies may take long: the step timeout bounds them
            self._clients[key] = httpx.AsyncClient(transport=self._transport, verify=target.verify, timeout=timeout)
        return self._clients[key]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


class RestConnector(HttpConnector):
    name: ClassVar[str] = "rest"
    target_model: ClassVar[type] = RestTarget

    async def open(self, target: RestTarget, conversation_id: str) -> Conversation:
        from probes.http import render

        def request(message: UserMessage) -> dict[str, Any]:
            values = {"text": message.value, "conversation_id": conversation_id, "user": conversation_id}
            body = render(target.body, values)
            if target.method == "GET":
                return {"method": "GET", "url": target.url, "params": body if isinstance(body, dict) else {"text": body}}
            if isinstance(body, str):
                return {"method": target.method, "url": target.url, "content": body.encode()}
            return {"method": target.method, "url": target.url, "json": body}

        def parse(document: Any) -> list[BotMessage]:
            intent = _first(target.intent, document)
            confidence = _first(target.confidence, document)
            messages = []
            for item in _all(target.messages, document):
                buttons = tuple(b for b in map(as_button, _all(target.buttons, item)) if b is not None)
                for text in _all(target.text, item) or ([""] if buttons else []):
                    messages.append(BotMessage(str(text), buttons, intent if isinstance(intent, str) else None, _number(confidence), item))
            return messages

        return HttpConversation(self.client(target), target, conversation_id, request, parse)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
