"""`connector: rasa`: Rasa's REST channel, POST {url}/webhooks/rest/webhook with {sender, message}.

    target: {connector: rasa, url: http://127.0.0.1:5005}

Rasa answers with a list of messages, each {recipient_id, text, buttons: [{title,
payload}], image, custom}; a button click sends its payload ("/billing"). Rasa's REST
channel returns no intent: check intents with a rest target on /model/parse instead.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from cxtest.errors import ProtocolError
from probes.chat.connectors.base import BotMessage, ChatTarget, Conversation, UserMessage
from probes.chat.connectors.rest import HttpConnector, HttpConversation, as_button, snippet

WEBHOOK = "/webhooks/rest/webhook"


class RasaTarget(ChatTarget):
    connector: Literal["rasa"]
    path: str = WEBHOOK


def parse(document: Any, at: float) -> list[BotMessage]:
    """Rasa's answer as bot messages that arrived at `at`."""
    if not isinstance(document, list):
        raise ProtocolError(f"Rasa's REST channel answers with a list of messages, this is not one: {snippet(str(document))}")
    messages = []
    for item in document:
        if not isinstance(item, dict):
            raise ProtocolError(f"a Rasa message is an object, this is not: {snippet(str(item))}")
        buttons = tuple(b for b in map(as_button, item.get("buttons") or ()) if b is not None)
        text = item.get("text") or item.get("image") or ""
        messages.append(BotMessage(str(text), buttons, raw=item, at=at))
    return messages


class RasaConnector(HttpConnector):
    name: ClassVar[str] = "rasa"
    target_model: ClassVar[type] = RasaTarget

    async def open(self, target: RasaTarget, conversation_id: str) -> Conversation:
        url = target.url.rstrip("/") + target.path

        def request(message: UserMessage) -> dict[str, Any]:
            return {"method": "POST", "url": url, "json": {"sender": conversation_id, "message": message.value}}

        return HttpConversation(self, target, conversation_id, request, parse)
