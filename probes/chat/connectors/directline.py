"""`connector: directline`: a bot behind Direct Line 3.0 (Azure Bot Service, or a local stand-in).

    target:
      connector: directline
      url: https://directline.botframework.com/v3/directline    # the default
      secret: "${env:DIRECT_LINE_SECRET}"                         # sent as Authorization: Bearer
      poll_interval: 0.5s

Opening a conversation POSTs {url}/conversations; each message is an activity POSTed
to {url}/conversations/{id}/activities; the bot's activities are fetched by polling
GET .../activities?watermark=... every poll_interval, so a reply's arrival time (and
its turn latency) is known to within one interval. Direct Line also offers a
websocket stream (streamUrl); this connector polls, which every Direct Line service
answers, offline-directline included (it has no stream). Our own activities come
back in the activity list and are skipped (by `from.id`). Activities become bot
messages as in the botframework connector (text, suggested actions, hero cards).
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar, Literal

import httpx

from cxtest.errors import CxtestError, ProtocolError
from cxtest.model import Duration
from probes.chat.connectors.base import ChatTarget, Conversation, UserMessage
from probes.chat.connectors.botframework import bot_message, request_json
from probes.chat.connectors.rest import HttpConnector, snippet

DIRECT_LINE = "https://directline.botframework.com/v3/directline"


class DirectLineTarget(ChatTarget):
    connector: Literal["directline"]
    url: str = DIRECT_LINE
    secret: str | None = None  # the channel's secret, or a token made from it
    poll_interval: Duration = 0.5
    locale: str = "en-US"


class DirectLineConversation(Conversation):
    def __init__(self, client: httpx.AsyncClient, target: DirectLineTarget, user_id: str, conversation: str):
        super().__init__()
        self.client, self.target, self.user_id = client, target, user_id
        self.activities_url = f"{target.url.rstrip('/')}/conversations/{conversation}/activities"
        self.auth = {"Authorization": f"Bearer {target.secret}"} if target.secret else {}
        self._poller = asyncio.ensure_future(self._poll())

    async def send(self, message: UserMessage) -> None:
        activity = {"type": "message", "from": {"id": self.user_id}, "text": message.value, "locale": self.target.locale}
        answer = await request_json(self.client, self.activities_url, self.target, activity, self.auth)
        if not isinstance(answer, dict) or "id" not in answer:
            raise ProtocolError(f"Direct Line answers a posted activity with its id, this is not one: {snippet(str(answer))}")

    async def _poll(self) -> None:
        watermark: str | None = None
        while True:
            try:
                answer = await request_json(self.client, self.activities_url, self.target, None, self.auth, "GET",
                                            {"watermark": watermark} if watermark is not None else None)
                arrived = time.monotonic()
                if not isinstance(answer, dict) or not isinstance(answer.get("activities"), list):
                    raise ProtocolError(f"Direct Line answers with {{activities, watermark}}, this is not that: {snippet(str(answer))}")
                for activity in answer["activities"]:
                    if isinstance(activity, dict) and (activity.get("from") or {}).get("id") == self.user_id:
                        continue  # our own message, echoed
                    message = bot_message(activity, arrived)
                    if message is not None:
                        self.deliver(message)
            except CxtestError as exc:
                self.deliver(exc)  # the conversation is over: receive() raises it
                return
            if answer.get("watermark") is not None:
                watermark = str(answer["watermark"])
            await asyncio.sleep(self.target.poll_interval)

    async def close(self) -> None:
        self._poller.cancel()
        await asyncio.gather(self._poller, return_exceptions=True)


class DirectLineConnector(HttpConnector):
    name: ClassVar[str] = "directline"
    target_model: ClassVar[type] = DirectLineTarget

    async def open(self, target: DirectLineTarget, conversation_id: str) -> Conversation:
        auth = {"Authorization": f"Bearer {target.secret}"} if target.secret else {}
        url = f"{target.url.rstrip('/')}/conversations"
        client = self.client(target)
        answer = await request_json(client, url, target, None, auth)
        if not isinstance(answer, dict) or not isinstance(answer.get("conversationId"), str):
            raise ProtocolError(f"Direct Line answers a new conversation with its conversationId, this is not one: {snippet(str(answer))}")
        return DirectLineConversation(client, target, conversation_id, answer["conversationId"])
