"""The chat tests' peers on their own: the Botkit bot on its websocket and webhook, and the `chat_peers` fixture.

Before the websocket and rest connectors are tested against Botkit, what Botkit
puts on the wire (documented in tests/chat_peers.py) is pinned here with a plain
websocket client and plain HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosedError

from chat_peers import BotkitPeer, ChatPeers

WELCOME = {
    "type": "message",
    "text": "Welcome to Acme Bank. How can I help?",
    "quick_replies": [{"title": "Billing", "payload": "billing"}, {"title": "Support", "payload": "support"}],
}
REPLY_S = 5.0


@pytest.fixture(scope="module")
def botkit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotkitPeer]:
    with BotkitPeer(tmp_path_factory.mktemp("botkit")) as peer:
        yield peer


def message(text: str, user: str, channel: str) -> dict[str, Any]:
    return {"type": "message", "text": text, "user": user, "channel": channel}


async def recv(socket: Any) -> str:
    return await asyncio.wait_for(socket.recv(), REPLY_S)


async def frames(socket: Any, count: int) -> list[Any]:
    return [json.loads(await recv(socket)) for _ in range(count)]


async def test_websocket_answers_hello_and_the_script(botkit: BotkitPeer) -> None:
    """On the websocket, the web client's hello event and each scripted input get their frames, in order."""
    async with websockets.connect(botkit.websocket_url) as socket:
        await socket.send(json.dumps({"type": "hello", "user": "ws-user-1", "channel": "socket", "user_profile": None}))
        assert await frames(socket, 1) == [WELCOME]
        await socket.send(json.dumps(message("billing", "ws-user-1", "websocket")))
        assert await frames(socket, 1) == [{"type": "message", "text": "You can pay a bill or hear your balance."}]
        await socket.send(json.dumps(message("two", "ws-user-1", "websocket")))
        assert await frames(socket, 3) == [
            {"type": "typing"},
            {"type": "message", "text": "First of two"},
            {"type": "message", "text": "Second of two"},
        ]
        await socket.send(json.dumps(message("  What now? ", "ws-user-1", "websocket")))
        assert await frames(socket, 1) == [{"type": "message", "text": "Sorry, I did not understand: What now?"}]


async def test_websocket_badjson_is_a_frame_that_is_not_json(botkit: BotkitPeer) -> None:
    """On the websocket, "badjson" makes the bot send a text frame that does not parse as JSON."""
    async with websockets.connect(botkit.websocket_url) as socket:
        await socket.send(json.dumps(message("badjson", "ws-user-2", "websocket")))
        frame = await recv(socket)
        with pytest.raises(ValueError):
            json.loads(frame)


async def test_websocket_close_drops_the_socket(botkit: BotkitPeer) -> None:
    """On the websocket, "close" makes the bot drop the connection without a close frame (code 1006)."""
    async with websockets.connect(botkit.websocket_url) as socket:
        await socket.send(json.dumps(message("close", "ws-user-3", "websocket")))
        with pytest.raises(ConnectionClosedError) as closed:
            await recv(socket)
        assert closed.value.rcvd is None


async def test_webhook_answers_in_the_http_response(botkit: BotkitPeer) -> None:
    """On the webhook, each input's frames come back as a JSON list; silence is an empty 200; close a 500."""
    async with httpx.AsyncClient(timeout=REPLY_S) as client:
        async def post(text: str, type_: str = "message") -> httpx.Response:
            return await client.post(botkit.webhook_url, json={**message(text, "hook-user", "webhook"), "type": type_})

        assert (await post("", "hello")).json() == [WELCOME]
        assert (await post("HI")).json() == [WELCOME]
        assert (await post("two")).json() == [
            {"type": "typing"},
            {"type": "message", "text": "First of two"},
            {"type": "message", "text": "Second of two"},
        ]
        assert (await post("html")).json() == [{"type": "message", "text": "<p>Opening hours: <b>9am to 5pm</b></p>"}]
        silence = await post("silence")
        assert (silence.status_code, silence.content) == (200, b"")
        assert (await post("close")).status_code == 500
        wrong_shape = await post("badjson")
        assert (wrong_shape.status_code, wrong_shape.json()) == (200, "not a list of messages")


async def test_fixture_puts_direct_line_in_front_of_a_bot(chat_peers: ChatPeers) -> None:
    """chat_peers.directline() starts a Bot Framework bot behind offline-directline, and the bot's reply can be polled."""
    service = chat_peers.directline()
    async with httpx.AsyncClient(timeout=REPLY_S) as client:
        started = (await client.post(f"{service.url}/conversations")).json()
        activities = f"{service.url}/conversations/{started['conversationId']}/activities"
        posted = await client.post(activities, json={"type": "message", "from": {"id": "u"}, "text": "billing"})
        assert posted.status_code in (200, 201)
        listed = (await client.get(activities, params={"watermark": "0"})).json()
    assert [(a["from"]["id"], a.get("text")) for a in listed["activities"]] == [
        ("u", "billing"), ("id", "You can pay a bill or hear your balance.")]


def test_peers_stop_at_close(tmp_path) -> None:
    """ChatPeers.close() stops every peer it started."""
    peers = ChatPeers(tmp_path)
    bot = peers.botframework()
    started = [bot, peers.directline(bot.messages_url), peers.botkit()]
    assert all(peer.running() for peer in started)
    peers.close()
    assert not any(peer.running() for peer in started)
