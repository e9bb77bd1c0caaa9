"""The sandbox chatbot: its rules and memory, and its three protocol shapes (our REST, Rasa REST, Botkit websocket)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from cxtest.sandbox.app import create_app
from cxtest.sandbox.bot import SLOW_REPLY_S, AcmeBot, failure_word
from cxtest.sandbox.server import Sandbox

GREETING = "Hello! I am the Acme Bank assistant."
FALLBACK_TEXT = "Sorry, I did not understand. You can ask about billing, support or opening hours."
MENU = [
    {"title": "Billing", "payload": "/billing"},
    {"title": "Support", "payload": "/support"},
    {"title": "Opening hours", "payload": "/hours"},
    {"title": "Talk to a person", "payload": "/handoff"},
]


def texts(bot: AcmeBot, conversation_id: str, text: str, broken: bool = False) -> list[str]:
    return [m.text for m in bot.answer(conversation_id, text, broken).messages]


# ------------------------------------------------------------------- rules


def test_greeting_is_two_messages_with_the_menu() -> None:
    """"hi" is answered with two messages, the second offering the four menu buttons."""
    reply = AcmeBot().answer("c1", "hi")
    assert [m.text for m in reply.messages] == [GREETING, "How can I help?"]
    assert reply.messages[0].buttons == ()
    assert [(b.title, b.payload) for b in reply.messages[1].buttons] == [(b["title"], b["payload"]) for b in MENU]
    assert (reply.intent, reply.confidence) == ("greet", 0.8)


@pytest.mark.parametrize(
    ("text", "intent", "confidence", "answer"),
    [
        ("/hours", "hours", 1.0, "We are open Monday to Friday, 9am to 5pm."),
        ("When are you OPEN?", "hours", 0.8, "We are open Monday to Friday, 9am to 5pm."),
        ("/handoff", "handoff", 1.0, "I am handing you over to a colleague."),
        ("can I talk to a human", "handoff", 0.8, "I am handing you over to a colleague."),
        ("I have a login problem", "support", 0.8, "Technical support: you can reset your password on our website, or talk to a person."),
        ("/billing", "billing", 1.0, "Billing: would you like to pay a bill or hear your balance?"),
        ("what is the weather", "fallback", 0.2, FALLBACK_TEXT),
        ("", "fallback", 0.2, FALLBACK_TEXT),
    ],
)
def test_intents_and_confidence(text: str, intent: str, confidence: float, answer: str) -> None:
    """A payload is certain (1.0), a keyword likely (0.8), anything else the fallback (0.2)."""
    reply = AcmeBot().answer("c1", text)
    assert (reply.intent, reply.confidence) == (intent, confidence)
    assert [m.text for m in reply.messages] == [answer]


def test_balance_needs_billing_first_in_the_same_conversation() -> None:
    """"balance" is understood after "billing" in that conversation only; another conversation gets the fallback."""
    bot = AcmeBot()
    assert texts(bot, "c1", "balance") == [FALLBACK_TEXT]
    bot.answer("c1", "I have a question about my bill")
    reply = bot.answer("c1", "what is my balance?")
    assert [m.text for m in reply.messages] == ["Your balance is 120 pounds."]
    assert (reply.intent, reply.confidence) == ("balance", 0.8)
    assert texts(bot, "c2", "what is my balance?") == [FALLBACK_TEXT]
    bot.answer("c1", "opening hours")  # leaving billing forgets it
    assert texts(bot, "c1", "balance") == [FALLBACK_TEXT]


def test_typed_title_counts_as_a_click_only_when_offered() -> None:
    """Typing a button's title is certain (1.0) when the bot's last buttons offered it, a keyword match before."""
    bot = AcmeBot()
    assert (bot.answer("c1", "Billing").confidence) == 0.8
    reply = bot.answer("c1", "balance")
    assert (reply.intent, reply.confidence) == ("balance", 1.0)


def test_paying_asks_the_amount_then_confirms() -> None:
    """"Pay a bill" asks how much; the next message with a number confirms that payment."""
    bot = AcmeBot()
    bot.answer("c1", "/billing")
    assert texts(bot, "c1", "Pay a bill") == ["How much would you like to pay?"]
    reply = bot.answer("c1", "45.50 please")
    assert [m.text for m in reply.messages] == ["Thank you. Your payment of 45.50 pounds has been received."]
    assert reply.intent == "pay_bill"
    assert texts(bot, "c1", "pay 120") == ["Thank you. Your payment of 120 pounds has been received."]


def test_broken_bot_does_not_understand_billing() -> None:
    """Broken, billing payloads and keywords get the fallback with low confidence; other topics still work."""
    bot = AcmeBot()
    reply = bot.answer("c1", "/billing", broken=True)
    assert [m.text for m in reply.messages] == [FALLBACK_TEXT]
    assert (reply.intent, reply.confidence) == ("fallback", 0.2)
    assert texts(bot, "c1", "/balance", broken=True) == [FALLBACK_TEXT]
    assert texts(bot, "c1", "opening hours", broken=True) == ["We are open Monday to Friday, 9am to 5pm."]


def test_memory_forgets_the_least_recently_used_conversation() -> None:
    """Past max_conversations, the conversation used longest ago is forgotten and the rest remembered."""
    bot = AcmeBot(max_conversations=2)
    bot.answer("a", "/billing")
    bot.answer("b", "/billing")
    bot.answer("a", "hello billing")  # a is now the most recently used
    bot.answer("c", "hi")  # evicts b
    assert list(bot.memories) == ["a", "c"]
    assert texts(bot, "a", "balance") == ["Your balance is 120 pounds."]
    assert texts(bot, "b", "balance") == [FALLBACK_TEXT]  # b starts afresh and evicts c
    assert list(bot.memories) == ["a", "b"]


# ------------------------------------------------------ HTTP shapes (ASGI)


@pytest.fixture
async def asgi() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), base_url="http://sandbox") as client:
        yield client


async def test_rest_shape(asgi: httpx.AsyncClient) -> None:
    """POST /bot/rest answers every message with its buttons and the intent with its confidence."""
    r = await asgi.post("/bot/rest", json={"conversation_id": "r1", "user": "cxtest", "text": "hello"})
    assert r.status_code == 200
    assert r.json() == {
        "messages": [{"text": GREETING, "buttons": []}, {"text": "How can I help?", "buttons": MENU}],
        "intent": {"name": "greet", "confidence": 0.8},
    }


async def test_rest_remembers_by_conversation_id(asgi: httpx.AsyncClient) -> None:
    """The REST bot keys its memory on conversation_id: balance works after billing in the same one only."""
    await asgi.post("/bot/rest", json={"conversation_id": "r1", "user": "u", "text": "/billing"})
    same = await asgi.post("/bot/rest", json={"conversation_id": "r1", "user": "u", "text": "balance"})
    other = await asgi.post("/bot/rest", json={"conversation_id": "r2", "user": "u", "text": "balance"})
    assert same.json()["messages"][0]["text"] == "Your balance is 120 pounds."
    assert other.json()["intent"]["name"] == "fallback"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/bot/rest", b"{not json"),
        ("/bot/rest", b'{"conversation_id": "r1"}'),
        ("/bot/rest", b'{"conversation_id": 5, "text": "hi"}'),
        ("/webhooks/rest/webhook", b"<html>"),
        ("/webhooks/rest/webhook", b'["sender", "message"]'),
        ("/webhooks/rest/webhook", b'{"sender": "s1"}'),
    ],
)
async def test_bad_requests_are_json_400(asgi: httpx.AsyncClient, path: str, body: bytes) -> None:
    """Invalid JSON or a body without the protocol's fields is a 400 with a JSON error."""
    r = await asgi.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert isinstance(r.json()["error"], str)


async def test_rasa_shape_accepts_payloads_and_titles(asgi: httpx.AsyncClient) -> None:
    """The Rasa REST webhook answers a list of messages for the sender; buttons appear only where there are some."""
    r = await asgi.post("/webhooks/rest/webhook", json={"sender": "s1", "message": "/greet"})
    assert r.status_code == 200
    assert r.json() == [
        {"recipient_id": "s1", "text": GREETING},
        {"recipient_id": "s1", "text": "How can I help?", "buttons": MENU},
    ]
    r = await asgi.post("/webhooks/rest/webhook", json={"sender": "s1", "message": "Opening hours"})
    assert r.json() == [{"recipient_id": "s1", "text": "We are open Monday to Friday, 9am to 5pm."}]


async def test_admin_break_switches_the_bot(asgi: httpx.AsyncClient) -> None:
    """POST /admin/break makes the bot answer billing with the fallback; mending it brings billing back."""
    ask = {"conversation_id": "r1", "user": "u", "text": "/billing"}
    await asgi.post("/admin/break", json={"broken": True})
    broken = (await asgi.post("/bot/rest", json=ask)).json()
    await asgi.post("/admin/break", json={"broken": False})
    mended = (await asgi.post("/bot/rest", json=ask)).json()
    assert broken["messages"] == [{"text": FALLBACK_TEXT, "buttons": []}]
    assert broken["intent"] == {"name": "fallback", "confidence": 0.2}
    assert mended["intent"] == {"name": "billing", "confidence": 1.0}


async def test_index_lists_bot_endpoints(asgi: httpx.AsyncClient) -> None:
    """The index page lists the three bot endpoints, the websocket one marked as such."""
    page = (await asgi.get("/")).text
    for path in ("/bot/rest", "/webhooks/rest/webhook", "/bot/ws"):
        assert path in page
    assert "WEBSOCKET" in page


# ------------------------------------------------- websocket (TestClient)


def say(text: str, user: str = "w1") -> dict[str, str]:
    return {"type": "message", "text": text, "user": user, "channel": "websocket"}


def test_websocket_types_before_each_message() -> None:
    """Over /bot/ws each bot message comes after a typing event; buttons come as quick_replies."""
    with TestClient(create_app()) as client, client.websocket_connect("/bot/ws") as ws:
        ws.send_json(say("hi"))
        frames = [ws.receive_json() for _ in range(4)]
    assert frames == [
        {"type": "typing"},
        {"type": "message", "text": GREETING},
        {"type": "typing"},
        {"type": "message", "text": "How can I help?", "quick_replies": MENU},
    ]


def test_websocket_ignores_garbage_and_events() -> None:
    """A frame that is not JSON, a hello event or a message without user gets no answer and the socket stays usable."""
    with TestClient(create_app()) as client, client.websocket_connect("/bot/ws") as ws:
        ws.send_text("not json")
        ws.send_bytes(b"\xff\xfe")
        ws.send_json({"type": "hello", "user": "w1", "channel": "socket"})
        ws.send_json({"type": "message", "text": "hi"})
        ws.send_json(say("opening hours"))
        assert ws.receive_json() == {"type": "typing"}
        assert ws.receive_json() == {"type": "message", "text": "We are open Monday to Friday, 9am to 5pm."}


def test_websocket_conversation_is_the_user() -> None:
    """The websocket bot remembers per user, across sockets: balance after billing works for that user only."""
    with TestClient(create_app()) as client:
        with client.websocket_connect("/bot/ws") as ws:
            ws.send_json(say("/billing", user="alice"))
            ws.receive_json(), ws.receive_json()
        with client.websocket_connect("/bot/ws") as ws:
            ws.send_json(say("balance", user="alice"))
            alice = [ws.receive_json(), ws.receive_json()][1]
            ws.send_json(say("balance", user="bob"))
            bob = [ws.receive_json(), ws.receive_json()][1]
    assert alice == {"type": "message", "text": "Your balance is 120 pounds.", "quick_replies": [{"title": "Pay a bill", "payload": "/pay_bill"}]}
    assert bob["text"] == FALLBACK_TEXT


# ------------------------------------------------ real server on 127.0.0.1


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


def test_rest_over_uvicorn_with_slow_mode(sandbox: Sandbox) -> None:
    """Over real HTTP, a text with "slow" is answered after 1.5 s and a plain one at once."""
    with httpx.Client(base_url=sandbox.url, timeout=10) as client:
        start = time.monotonic()
        fast = client.post("/bot/rest", json={"conversation_id": "u1", "user": "u", "text": "opening hours"})
        fast_s = time.monotonic() - start
        start = time.monotonic()
        slow = client.post("/bot/rest", json={"conversation_id": "u1", "user": "u", "text": "slow opening hours"})
        slow_s = time.monotonic() - start
    assert fast.json()["intent"]["name"] == slow.json()["intent"]["name"] == "hours"
    assert fast_s < 0.5
    assert SLOW_REPLY_S <= slow_s < SLOW_REPLY_S + 1.0


async def test_websocket_over_uvicorn(sandbox: Sandbox) -> None:
    """With a websockets client on the real server: two greeting messages, then a slow answer whose typing comes at once."""
    url = sandbox.url.replace("http://", "ws://") + "/bot/ws"
    async with connect(url, open_timeout=5) as ws:

        async def frame() -> tuple[float, dict]:
            raw = await asyncio.wait_for(ws.recv(), timeout=5)
            return time.monotonic(), json.loads(raw)

        await ws.send(json.dumps(say("hello", user="real")))
        greeting = [(await frame())[1] for _ in range(4)]
        assert [f.get("text") for f in greeting] == [None, GREETING, None, "How can I help?"]

        sent = time.monotonic()
        await ws.send(json.dumps(say("slow, but when do you open?", user="real")))
        typed_at, typing = await frame()
        answered_at, answer = await frame()
    assert typing == {"type": "typing"}
    assert typed_at - sent < 0.5
    assert answer == {"type": "message", "text": "We are open Monday to Friday, 9am to 5pm."}
    assert answered_at - sent >= SLOW_REPLY_S


async def test_client_leaving_mid_answer_is_not_a_server_error(sandbox: Sandbox) -> None:
    """A client that closes between the two greeting messages leaves no "Exception in ASGI application" in the log."""
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    log = logging.getLogger("uvicorn.error")  # uvicorn configures it at start-up, so attach after
    log.addHandler(handler)
    try:
        url = sandbox.url.replace("http://", "ws://") + "/bot/ws"
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps(say("hi", user="leaver")))
            await asyncio.wait_for(ws.recv(), timeout=5)  # typing; the bot is about to send the first message
        await asyncio.sleep(0.4)  # the bot finishes its typing pauses against a closed socket
    finally:
        log.removeHandler(handler)
    assert [r.getMessage() for r in errors] == []


# ------------------------------------------------------------ failure words

HTTP_SHAPES = ["/bot/rest", "/webhooks/rest/webhook"]


def say_over_http(path: str, text: str, conversation_id: str = "f1") -> dict[str, str]:
    if path == "/bot/rest":
        return {"conversation_id": conversation_id, "user": "u", "text": text}
    return {"sender": conversation_id, "message": text}


def test_failure_words_are_exact_words_only() -> None:
    """A failure word counts trimmed and in any case, never inside a sentence ("when do you close" is about hours)."""
    assert [failure_word(t) for t in ("silence", "  HTML\n", "BadJson", "Close")] == ["silence", "html", "badjson", "close"]
    assert failure_word("when do you close") is None
    assert failure_word("html please") is None
    assert AcmeBot().answer("c1", "when do you close").intent == "hours"


@pytest.mark.parametrize("text", ["silence", "  SILENCE "])
@pytest.mark.parametrize(("path", "expected"), [("/bot/rest", {"messages": [], "intent": {"name": "silence", "confidence": 1.0}}), ("/webhooks/rest/webhook", [])])
async def test_silence_over_http(asgi: httpx.AsyncClient, path: str, expected: object, text: str) -> None:
    """"silence" is a 200 with no bot message: our REST keeps its intent (silence), Rasa answers []."""
    r = await asgi.post(path, json=say_over_http(path, text))
    assert r.status_code == 200
    assert r.json() == expected


@pytest.mark.parametrize("path", HTTP_SHAPES)
async def test_html_over_http(asgi: httpx.AsyncClient, path: str) -> None:
    """"html" is a 200 text/html error page where the protocol's JSON belongs."""
    r = await asgi.post(path, json=say_over_http(path, "Html"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.text.startswith("<!DOCTYPE html>") and "Bad Gateway" in r.text


@pytest.mark.parametrize("path", HTTP_SHAPES)
async def test_badjson_over_http(asgi: httpx.AsyncClient, path: str) -> None:
    """"badjson" is a 200 application/json whose body is JSON cut off half way."""
    r = await asgi.post(path, json=say_over_http(path, "badjson"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.text.endswith('"half')
    with pytest.raises(json.JSONDecodeError):
        r.json()


async def test_failure_words_leave_the_conversation_alone(asgi: httpx.AsyncClient) -> None:
    """Failure words skip the rules and the memory: after them a conversation in billing still understands "balance"."""
    await asgi.post("/bot/rest", json=say_over_http("/bot/rest", "/billing"))
    for word in ("silence", "html", "badjson"):
        await asgi.post("/bot/rest", json=say_over_http("/bot/rest", word))
    r = await asgi.post("/bot/rest", json=say_over_http("/bot/rest", "what is my balance"))
    assert r.json()["messages"][0]["text"] == "Your balance is 120 pounds."


def test_websocket_silence_sends_nothing() -> None:
    """"silence" over /bot/ws sends no frame at all, not even typing, and the socket goes on answering."""
    with TestClient(create_app()) as client, client.websocket_connect("/bot/ws") as ws:
        ws.send_json(say("silence"))
        ws.send_json(say("opening hours"))
        assert ws.receive_json() == {"type": "typing"}
        assert ws.receive_json() == {"type": "message", "text": "We are open Monday to Friday, 9am to 5pm."}


def test_websocket_html_and_badjson_are_one_frame_each() -> None:
    """"html" and "badjson" over /bot/ws each send one text frame that is not JSON, then the socket goes on answering."""
    with TestClient(create_app()) as client, client.websocket_connect("/bot/ws") as ws:
        ws.send_json(say(" HTML "))
        ws.send_json(say("badjson"))
        ws.send_json(say("opening hours"))
        page, cut = ws.receive_text(), ws.receive_text()
        assert ws.receive_json() == {"type": "typing"}
    assert page.startswith("<!DOCTYPE html>") and "Bad Gateway" in page
    assert cut == '{"type": "message", "text": "half'
    for frame in (page, cut):
        with pytest.raises(json.JSONDecodeError):
            json.loads(frame)


def test_websocket_close_is_1011() -> None:
    """"close" over /bot/ws closes the socket with code 1011 and the reason "bot closed the conversation"."""
    with TestClient(create_app()) as client, client.websocket_connect("/bot/ws") as ws:
        ws.send_json(say("close"))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (closed.value.code, closed.value.reason) == (1011, "bot closed the conversation")


@pytest.mark.parametrize("path", HTTP_SHAPES)
def test_close_drops_the_http_connection_over_uvicorn(sandbox: Sandbox, path: str) -> None:
    """"close" over real HTTP closes the connection with not one byte of response; the sandbox goes on serving."""
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        assert client.post(path, json=say_over_http(path, "hi")).status_code == 200  # a kept-alive connection
        with pytest.raises(httpx.RemoteProtocolError, match="^Server disconnected without sending a response.$"):
            client.post(path, json=say_over_http(path, "close"))
        assert client.post(path, json=say_over_http(path, "hi")).status_code == 200

    body = json.dumps(say_over_http(path, "close")).encode()
    request = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    assert sandbox.port is not None
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as raw:
        raw.sendall(request.encode() + body)
        assert raw.recv(1024) == b""  # end of stream at once: no status line, no headers


async def test_websocket_close_over_uvicorn(sandbox: Sandbox) -> None:
    """"close" over a real websocket arrives as a close frame with 1011 and the reason, after the greeting went out whole."""
    url = sandbox.url.replace("http://", "ws://") + "/bot/ws"
    async with connect(url, open_timeout=5) as ws:
        await ws.send(json.dumps(say("hi", user="closer")))
        greeting = [json.loads(await asyncio.wait_for(ws.recv(), timeout=5)) for _ in range(4)]
        await ws.send(json.dumps(say("close", user="closer")))
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)
    assert greeting[-1]["text"] == "How can I help?"
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "bot closed the conversation")
