"""`connector: botframework`: talk to a Bot Framework bot directly, as the Bot Framework Emulator does.

    target: {connector: botframework, url: http://127.0.0.1:3978}   # the bot's messages: {url}{path}

Each message is an activity POSTed to {url}/api/messages with `serviceUrl` set to a
callback server this connector runs on 127.0.0.1 (one per connector, shared by its
conversations, started with the first conversation); the bot answers by POSTing its
activities there, to /v3/conversations/{conversation id}/activities[/{replyToId}],
and each is routed to its conversation by that id. The bot must run with auth off
(no app id and password, as for the Emulator) and be able to reach 127.0.0.1.

Opening a conversation sends a conversationUpdate adding the bot and the user, as the
Emulator does, so a bot that greets on join greets. Message activities are bot
messages: `text` (or, when a message has none, the title, subtitle and text of its
hero and thumbnail cards, one a line), buttons from `suggestedActions` and from those
cards (title, value). Typing indicators and other activities are left out. An
activity of the wrong shape ends the conversation with a ProtocolError.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ValidationError

from cxtest.errors import ProbeError, ProtocolError
from probes.chat.connectors.base import BotMessage, Button, ChatTarget, Conversation, UserMessage
from probes.chat.connectors.rest import HttpConnector, as_button, snippet

CALLBACK_HOST = "127.0.0.1"
BOT_ID = "bot"
CARD_TYPES = ("application/vnd.microsoft.card.hero", "application/vnd.microsoft.card.thumbnail")


class BotFrameworkTarget(ChatTarget):
    connector: Literal["botframework"]
    path: str = "/api/messages"  # the bot's messaging endpoint, joined to url
    channel_id: str = "emulator"
    locale: str = "en-US"


# --------------------------------------------------------------------------- activities
# The parts of a Bot Framework activity a bot message is made of; the rest is kept in raw.


class CardAction(BaseModel):
    title: str | None = None
    value: Any = None


class SuggestedActions(BaseModel):
    actions: list[CardAction] = []


class Attachment(BaseModel):
    contentType: str
    content: Any = None


class HeroCard(BaseModel):
    title: str | None = None
    subtitle: str | None = None
    text: str | None = None
    buttons: list[CardAction] = []


class Activity(BaseModel):
    type: str
    text: str | None = None
    suggestedActions: SuggestedActions | None = None
    attachments: list[Attachment] | None = None


def _shape_error(what: str, error: ValidationError, document: Any) -> ProtocolError:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    problem = f"{where}: {first['msg']}" if where else first["msg"]
    return ProtocolError(f"{what} of the wrong shape ({problem}): {snippet(json.dumps(document, default=str))}")


def _buttons(actions: list[CardAction]) -> list[Button]:
    return [button for action in actions if (button := as_button(action.model_dump())) is not None]


def bot_message(document: Any, arrived: float) -> BotMessage | None:
    """The bot message one activity carries; None for activities that are not messages (typing, events...)."""
    try:
        activity = Activity.model_validate(document)
    except ValidationError as exc:
        raise _shape_error("the bot sent an activity", exc, document) from None
    if activity.type != "message":
        return None
    buttons = _buttons(activity.suggestedActions.actions) if activity.suggestedActions else []
    card_lines = []
    for attachment in activity.attachments or ():
        if attachment.contentType not in CARD_TYPES:
            continue
        try:
            card = HeroCard.model_validate(attachment.content)
        except ValidationError as exc:
            raise _shape_error(f"the bot sent a card ({attachment.contentType})", exc, attachment.content) from None
        card_lines += [line for line in (card.title, card.subtitle, card.text) if line]
        buttons += _buttons(card.buttons)
    text = activity.text if activity.text else "\n".join(card_lines)
    return BotMessage(text, tuple(buttons), raw=document, at=arrived)


# --------------------------------------------------------------------------- one HTTP exchange


async def request_json(client: httpx.AsyncClient, url: str, target: ChatTarget, body: Any,
                    headers: dict[str, str] | None = None, method: str = "POST", params: Any = None) -> Any:
    """Send one request; its JSON answer (None when empty). Every wire failure becomes cxtest's error here."""
    from probes.http import _translate

    try:
        response = await client.request(method, url, json=body, params=params, headers={**target.headers, **(headers or {})})
    except httpx.HTTPError as exc:
        raise _translate(exc, url, target.connect_timeout) from None
    if response.status_code >= 300:
        raise ProtocolError(f"{url} answered {response.status_code} {response.reason_phrase}: {snippet(response.text)}")
    if not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type")
        raise ProtocolError(f"the answer from {url} is not JSON ({kind}): {snippet(response.text)}") from None


# --------------------------------------------------------------------------- the connector


class BotFrameworkConversation(Conversation):
    def __init__(self, connector: BotFrameworkConnector, target: BotFrameworkTarget, user_id: str):
        super().__init__()
        self.connector, self.target, self.user_id = connector, target, user_id
        self.failed = False  # the bot broke the protocol: the conversation is over
        self.id = uuid.uuid4().hex  # the Emulator, too, makes up the conversation id
        self.endpoint = str(httpx.URL(target.url).join(target.path))

    def activity(self, type_: str, **fields: Any) -> dict[str, Any]:
        """An activity from the user to the bot, as the Emulator sends it."""
        return {
            "type": type_,
            "id": uuid.uuid4().hex,
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "channelId": self.target.channel_id,
            "serviceUrl": self.connector.service_url,
            "from": {"id": self.user_id, "name": "User", "role": "user"},
            "recipient": {"id": BOT_ID, "name": "Bot", "role": "bot"},
            "conversation": {"id": self.id},
            "locale": self.target.locale,
            **fields,
        }

    async def post(self, activity: dict[str, Any]) -> None:
        # The bot answers once its turn is over; what it said came to the callback server meanwhile.
        await request_json(self.connector.client(self.target), self.endpoint, self.target, activity)

    async def send(self, message: UserMessage) -> None:
        await self.post(self.activity("message", text=message.value, textFormat="plain"))

    def on_activity(self, document: Any) -> None:
        """An activity the bot posted to this conversation."""
        if self.failed:
            return
        try:
            message = bot_message(document, time.monotonic())
        except ProtocolError as exc:
            self.fail(exc)
            return
        if message is not None:
            self.deliver(message)

    def fail(self, error: ProtocolError) -> None:
        """End the conversation with `error`: every later receive() raises it, nothing after it is delivered."""
        if not self.failed:
            self.failed = True
            self.deliver(error)

    async def close(self) -> None:
        self.connector.conversations.pop(self.id, None)


class BotFrameworkConnector(HttpConnector):
    name: ClassVar[str] = "botframework"
    target_model: ClassVar[type] = BotFrameworkTarget

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(transport)
        self.conversations: dict[str, BotFrameworkConversation] = {}
        self.service_url = ""
        self._runner: Any = None  # aiohttp's AppRunner of the callback server, once started
        self._starting = asyncio.Lock()

    async def open(self, target: BotFrameworkTarget, conversation_id: str) -> Conversation:
        await self._start_callback_server()
        conversation = BotFrameworkConversation(self, target, conversation_id)
        self.conversations[conversation.id] = conversation
        members = [{"id": BOT_ID, "name": "Bot"}, {"id": conversation.user_id, "name": "User"}]
        try:
            await conversation.post(conversation.activity("conversationUpdate", membersAdded=members))
        except BaseException:
            await conversation.close()
            raise
        return conversation

    async def _start_callback_server(self) -> None:
        from aiohttp import web

        async with self._starting:
            if self._runner is not None:
                return
            app = web.Application()
            app.router.add_post("/v3/conversations/{conversation}/activities", self._on_callback)
            app.router.add_post("/v3/conversations/{conversation}/activities/{reply_to}", self._on_callback)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, CALLBACK_HOST, 0)
            try:
                await site.start()
            except OSError as exc:
                await runner.cleanup()
                raise ProbeError(f"cannot start the Bot Framework callback server on {CALLBACK_HOST}: {exc}") from None
            port = runner.addresses[0][1]
            self.service_url = f"http://{CALLBACK_HOST}:{port}"
            self._runner = runner

    async def _on_callback(self, request: Any) -> Any:
        from aiohttp import web

        conversation = self.conversations.get(request.match_info["conversation"])
        if conversation is None:
            return web.json_response({"error": {"code": "ConversationNotFound", "message": "no such conversation"}}, status=404)
        body = await request.text()
        try:
            document = json.loads(body)
        except ValueError:
            conversation.fail(ProtocolError(f"the bot posted an activity that is not JSON: {snippet(body)}"))
            return web.json_response({"error": {"code": "BadArgument", "message": "not JSON"}}, status=400)
        conversation.on_activity(document)
        return web.json_response({"id": uuid.uuid4().hex})

    async def aclose(self) -> None:
        self.conversations.clear()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await super().aclose()
