"""The sandbox contact centre: a small, deterministic target for demos and tests.

``create_app(broken=False)`` builds a Starlette app with:

- a JSON API (``/api/...``): status, login, accounts, a slow endpoint and an
  endpoint that answers HTML where a client expects JSON;
- an admin switch (``/admin/...``) that breaks the contact centre at run time;
- a webhook sink (``/hooks/{name}``) that records what notifiers send;
- a chatbot (``/bot/rest``, ``/webhooks/rest/webhook``, websocket ``/bot/ws``):
  the rules in :mod:`cxtest.sandbox.bot`, spoken in three protocol shapes, and
  failure words (``silence``, ``html``, ``badjson``, ``close``) that make it misbehave on the wire;
- a website (``/site/``, ``/api/contact``): help pages, a contact form and a chat
  widget, in :mod:`cxtest.sandbox.site`;
- an HTML index (``/``) listing every endpoint.

The app is assembled from *components*: each component is a function taking the
shared :class:`SandboxState` and returning a list of :class:`Endpoint`. To add a
channel (IVR, chatbot, website), write one more component function and append it
to :data:`COMPONENTS`; its endpoints appear in the router and on the index page.

"Broken" mode (``create_app(broken=True)``, ``POST /admin/break`` or env
``CXTEST_SANDBOX_BREAK=1``) makes ``/api/status`` answer 503 with billing down
and makes account ``1002`` come back suspended with no balance, so that a
scenario expecting an active account fails with a clear expected-vs-actual;
the chatbot answers billing questions with its fallback.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from cxtest.sandbox import bot as chatbot

#: Environment variable that turns broken mode on when set to "1".
BREAK_ENV = "CXTEST_SANDBOX_BREAK"

#: Upper bound for ``GET /api/slow?ms=N``.
MAX_SLOW_MS = 10_000

#: Seconds a login token stays valid.
TOKEN_TTL_S = 3600

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-pass"

#: Seeded accounts (copied into each app's state, so apps never share them).
SEED_ACCOUNTS: dict[str, dict[str, Any]] = {
    "1001": {"id": "1001", "name": "Ada Lovelace", "balance": 1250.75, "currency": "EUR", "status": "active"},
    "1002": {"id": "1002", "name": "Grace Hopper", "balance": 310.00, "currency": "EUR", "status": "active"},
    "1003": {"id": "1003", "name": "Alan Turing", "balance": 0.00, "currency": "EUR", "status": "active"},
}

#: The account that misbehaves in broken mode.
BROKEN_ACCOUNT = "1002"

#: The "method" of an Endpoint that is a websocket route.
WEBSOCKET = "WEBSOCKET"

#: Pause between the websocket bot's "typing" event and its message.
TYPING_S = 0.1


@dataclass
class SandboxState:
    """Everything the sandbox remembers; lives on ``app.state.sandbox``."""

    broken: bool = False
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (time.time())
    accounts: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {k: dict(v) for k, v in SEED_ACCOUNTS.items()}
    )
    hooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def issue_token(self) -> str:
        token = secrets.token_hex(16)
        self.tokens[token] = time.time() + TOKEN_TTL_S
        return token

    def token_valid(self, token: str) -> bool:
        expiry = self.tokens.get(token)
        if expiry is None:
            return False
        if expiry < time.time():
            self.tokens.pop(token, None)
            return False
        return True


@dataclass(frozen=True)
class Endpoint:
    """One route plus the line the index page shows for it."""

    path: str
    endpoint: Callable[..., Any]
    methods: tuple[str, ...]
    summary: str

    def route(self) -> BaseRoute:
        if self.methods == (WEBSOCKET,):
            return WebSocketRoute(self.path, self.endpoint)
        return Route(self.path, self.endpoint, methods=list(self.methods))


Component = Callable[[SandboxState], list[Endpoint]]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_json(request: Request) -> Any:
    """The request body as JSON, or raise a 400 with a plain message."""
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "request body is not valid JSON") from None


# --------------------------------------------------------------------------- api


def api_component(state: SandboxState) -> list[Endpoint]:
    async def status(request: Request) -> JSONResponse:
        components = {"ivr": "up", "chat": "up", "billing": "down" if state.broken else "up"}
        if state.broken:
            return JSONResponse({"status": "degraded", "components": components}, status_code=503)
        return JSONResponse({"status": "up", "components": components})

    async def login(request: Request) -> JSONResponse:
        body = await read_json(request)
        if not isinstance(body, dict):
            return error(400, "expected a JSON object with user and password")
        if body.get("user") == DEMO_USER and body.get("password") == DEMO_PASSWORD:
            return JSONResponse({"token": state.issue_token(), "expires_in": TOKEN_TTL_S})
        return error(401, "invalid credentials")

    async def account(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not state.token_valid(token.strip()):
            return error(401, "invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
        account_id = request.path_params["account_id"]
        acct = state.accounts.get(account_id)
        if acct is None:
            return error(404, "account not found")
        body = dict(acct)
        if state.broken and account_id == BROKEN_ACCOUNT:
            body.update(
                status="suspended",
                balance=None,
                reason="billing backend unavailable: account locked pending review",
            )
        return JSONResponse(body)

    async def slow(request: Request) -> JSONResponse:
        raw = request.query_params.get("ms", "0")
        try:
            ms = int(raw)
        except ValueError:
            return error(400, f"ms must be an integer, got {raw!r}")
        ms = max(0, min(ms, MAX_SLOW_MS))
        await asyncio.sleep(ms / 1000)
        return JSONResponse({"slept_ms": ms})

    async def html_page(request: Request) -> HTMLResponse:
        # Deliberately 200 with an HTML error page: the "HTML where JSON was
        # expected" case that proxies and login walls produce in real life.
        return HTMLResponse(
            "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
            "<body><h1>Bad Gateway</h1><p>The upstream service returned an invalid response.</p>"
            "<hr><address>sandbox-proxy</address></body></html>\n",
            status_code=200,
        )

    return [
        Endpoint("/api/status", status, ("GET",), "service status; 503 with billing down when broken"),
        Endpoint("/api/login", login, ("POST",), 'JSON {"user": "demo", "password": "demo-pass"} -> token'),
        Endpoint(
            "/api/accounts/{account_id}",
            account,
            ("GET",),
            "account 1001, 1002 or 1003 (Authorization: Bearer TOKEN); 1002 is suspended when broken",
        ),
        Endpoint("/api/slow", slow, ("GET",), f"?ms=N sleeps N ms (at most {MAX_SLOW_MS}) then answers"),
        Endpoint("/api/html", html_page, ("GET",), "an HTML error page with status 200 (not JSON)"),
    ]


# ------------------------------------------------------------------------- admin


def admin_component(state: SandboxState) -> list[Endpoint]:
    def snapshot() -> dict[str, Any]:
        now = time.time()
        return {
            "broken": state.broken,
            "active_tokens": sum(1 for exp in state.tokens.values() if exp >= now),
            "hooks": {name: len(items) for name, items in state.hooks.items()},
        }

    async def set_broken(request: Request) -> JSONResponse:
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("broken"), bool):
            return error(400, 'expected JSON {"broken": true} or {"broken": false}')
        state.broken = body["broken"]
        return JSONResponse(snapshot())

    async def get_state(request: Request) -> JSONResponse:
        return JSONResponse(snapshot())

    return [
        Endpoint("/admin/break", set_broken, ("POST",), 'JSON {"broken": true|false} breaks or mends the sandbox'),
        Endpoint("/admin/state", get_state, ("GET",), "broken flag, active tokens, webhook counts"),
    ]


# ------------------------------------------------------------------------- hooks


def hooks_component(state: SandboxState) -> list[Endpoint]:
    async def receive(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        raw_status = request.query_params.get("status")
        status = 202
        if raw_status is not None:
            try:
                status = int(raw_status)
            except ValueError:
                status = 0
            if not 200 <= status <= 599:
                return error(400, f"status must be an HTTP status 200-599, got {raw_status!r}")
        raw = await request.body()
        text = raw.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text)
            is_json = True
        except ValueError:
            body, is_json = text, False
        now = time.time()
        record = {
            "body": body,
            "json": is_json,
            "headers": dict(request.headers),
            "received_at": datetime.fromtimestamp(now, timezone.utc).isoformat(),
            "received_ts": now,
            "status": status,
        }
        items = state.hooks.setdefault(name, [])
        items.append(record)
        return JSONResponse({"name": name, "count": len(items), "status": status}, status_code=status)

    async def listing(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        items = state.hooks.get(name, [])
        return JSONResponse({"name": name, "count": len(items), "items": items})

    async def clear(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        removed = len(state.hooks.pop(name, []))
        return JSONResponse({"name": name, "cleared": removed})

    async def names(request: Request) -> JSONResponse:
        return JSONResponse({name: len(items) for name, items in state.hooks.items()})

    return [
        Endpoint("/hooks", names, ("GET",), "webhook names and how many deliveries each received"),
        Endpoint("/hooks/{name}", receive, ("POST",), "record a delivery (JSON or text) and answer 202; ?status=500 answers 500 instead"),
        Endpoint("/hooks/{name}", listing, ("GET",), "deliveries received, oldest first, each with body, headers, time and answered status"),
        Endpoint("/hooks/{name}", clear, ("DELETE",), "forget the deliveries"),
    ]


# --------------------------------------------------------------------------- bot


class DropConnection(Response):
    """An "answer" that closes the TCP connection before a single byte of response goes out.

    ASGI has no abort: a server answers 500 to an app that returns before starting
    its response. So this starts one with a header value holding CRLF, which a
    server must refuse (response splitting). uvicorn, h11 and httptools alike,
    refuses it after marking the response started and before writing anything,
    then closes the connection of an app that returns with its response
    unfinished, logging "ASGI callable returned without completing response.".
    A trick rather than an API: tests/test_sandbox_bot.py pins it on real uvicorn.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-cxtest-drop", b"\r\n")]})
        except Exception:  # h11's LocalProtocolError, httptools' RuntimeError: nothing went out
            pass


def http_failure(word: str, silent_body: Any, badjson_body: str) -> Response:
    """How the HTTP bot answers a failure word (see cxtest.sandbox.bot)."""
    if word == chatbot.HTML:
        return HTMLResponse(chatbot.FAILURE_PAGE)
    if word == chatbot.BADJSON:
        return Response(badjson_body, media_type="application/json")
    if word == chatbot.CLOSE:
        return DropConnection()
    return JSONResponse(silent_body)


def bot_component(state: SandboxState) -> list[Endpoint]:
    acme = chatbot.AcmeBot()  # one memory per app, like the rest of the state

    async def turn(conversation_id: str, text: str) -> chatbot.Reply:
        if chatbot.is_slow(text):
            await asyncio.sleep(chatbot.SLOW_REPLY_S)
        return acme.answer(conversation_id, text, broken=state.broken)

    async def rest(request: Request) -> Response:
        body = await read_json(request)
        if not (
            isinstance(body, dict)
            and isinstance(body.get("conversation_id"), str)
            and isinstance(body.get("text"), str)
            and isinstance(body.get("user", ""), str)
        ):
            return error(400, 'expected a JSON object {"conversation_id": str, "user": str, "text": str}')
        word = chatbot.failure_word(body["text"])
        if word:
            return http_failure(word, chatbot.rest_body(chatbot.SILENT_REPLY), chatbot.BADJSON_REST)
        reply = await turn(body["conversation_id"], body["text"])
        return JSONResponse(chatbot.rest_body(reply))

    async def rasa(request: Request) -> Response:
        body = await read_json(request)
        if not (isinstance(body, dict) and isinstance(body.get("sender"), str) and isinstance(body.get("message"), str)):
            return error(400, 'expected a JSON object {"sender": str, "message": str}')
        word = chatbot.failure_word(body["message"])
        if word:
            return http_failure(word, chatbot.rasa_body(chatbot.SILENT_REPLY, body["sender"]), chatbot.BADJSON_RASA)
        reply = await turn(body["sender"], body["message"])
        return JSONResponse(chatbot.rasa_body(reply, body["sender"]))

    async def websocket(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                event = await ws.receive()
                if event["type"] == "websocket.disconnect":
                    return
                try:
                    incoming = json.loads(event.get("text") or event.get("bytes") or b"")
                except (ValueError, UnicodeDecodeError):
                    continue  # Botkit logs and drops a frame that is not JSON; the socket stays open
                if not (
                    isinstance(incoming, dict)
                    and incoming.get("type") == "message"
                    and isinstance(incoming.get("text"), str)
                    and isinstance(incoming.get("user"), str)
                ):
                    continue  # events (hello, welcome_back) and malformed messages get no answer
                word = chatbot.failure_word(incoming["text"])
                if word == chatbot.CLOSE:
                    await ws.close(chatbot.CLOSE_CODE, chatbot.CLOSE_REASON)
                    return
                if word == chatbot.HTML:
                    await ws.send_text(chatbot.FAILURE_PAGE)
                elif word == chatbot.BADJSON:
                    await ws.send_text(chatbot.BADJSON_FRAME)
                if word:
                    continue  # html and badjson: that one frame, no typing; silence: nothing at all
                # Botkit types first: the typing event goes out before the (maybe slow) answer.
                await ws.send_json({"type": "typing"})
                reply = await turn(incoming["user"], incoming["text"])
                for i, message in enumerate(reply.messages):
                    if i:
                        await ws.send_json({"type": "typing"})
                    await asyncio.sleep(TYPING_S)
                    await ws.send_json(chatbot.botkit_message(message))
        except WebSocketDisconnect:
            return  # the client left while the bot was typing

    return [
        Endpoint(
            "/bot/rest",
            rest,
            ("POST",),
            'JSON {"conversation_id", "user", "text"} -> {"messages": [{"text", "buttons"}], "intent": {"name", "confidence"}}',
        ),
        Endpoint(
            "/webhooks/rest/webhook",
            rasa,
            ("POST",),
            'Rasa REST channel: JSON {"sender", "message"} -> [{"recipient_id", "text", "buttons"}]',
        ),
        Endpoint(
            "/bot/ws",
            websocket,
            (WEBSOCKET,),
            'Botkit web adapter: send {"type": "message", "text", "user"}, get "typing" then {"type": "message", "text", "quick_replies"}',
        ),
    ]


# ------------------------------------------------------------------------- site


def site_component(state: SandboxState) -> list[Endpoint]:
    # Imported here, not at the top: cxtest.sandbox.site builds on this module's Endpoint.
    from cxtest.sandbox.site import site_component as website

    return website(state)


#: Components assembled by :func:`create_app`, in index-page order.
COMPONENTS: list[Component] = [api_component, admin_component, hooks_component, bot_component, site_component]


def _index_page(endpoints: list[Endpoint], state: SandboxState) -> str:
    rows = "\n".join(
        f"<tr><td>{' '.join(e.methods)}</td><td><code>{html.escape(e.path)}</code></td>"
        f"<td>{html.escape(e.summary)}</td></tr>"
        for e in endpoints
    )
    mode = "BROKEN" if state.broken else "healthy"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>cxtest sandbox</title></head>\n<body>\n"
        "<h1>cxtest sandbox contact centre</h1>\n"
        f"<p>Mode: <strong id=\"mode\">{mode}</strong></p>\n"
        "<table>\n<tr><th>Method</th><th>Path</th><th>What it does</th></tr>\n"
        f"{rows}\n</table>\n</body></html>\n"
    )


def _env_broken() -> bool:
    return os.environ.get(BREAK_ENV, "").strip() == "1"


def create_app(broken: bool = False) -> Starlette:
    """Build a fresh sandbox app; ``broken`` (or env CXTEST_SANDBOX_BREAK=1) starts it broken."""
    state = SandboxState(broken=broken or _env_broken())
    endpoints: list[Endpoint] = []
    for component in COMPONENTS:
        endpoints.extend(component(state))

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(_index_page(endpoints, state))

    routes = [Route("/", index, methods=["GET"])] + [e.route() for e in endpoints]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.sandbox = state
    app.state.endpoints = endpoints
    return app
