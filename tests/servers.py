"""Small real servers on 127.0.0.1 for probe tests.

    with ThreadedServer(make_app()) as server:          # uvicorn in a background thread
        server.url                                       # http://127.0.0.1:PORT (https with certfile=)

    async with raw_server(reply=b"garbage") as port:     # asyncio TCP/TLS server in the test's own loop
        ...

    with closed_port() as port:                          # bound, never listening: connecting is refused
        ...

Everything binds 127.0.0.1 only and is stopped by its context manager.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cxtest.sandbox.server import ThreadedServer

__all__ = ["HOST", "PAGE", "ThreadedServer", "closed_port", "make_app", "raw_server"]  # ThreadedServer: the sandbox's, for the probe tests

HOST = "127.0.0.1"

PAGE = "<html><head><title>Acme Support</title></head><body><h1>Welcome to Acme</h1></body></html>"


# --------------------------------------------------------------------------- the app


def make_app() -> Starlette:
    """A tiny API with one endpoint per behaviour the HTTP probe must judge.

    app.state.hits counts requests per path; app.state.peers records the client
    (host, port) of each request per `tag` query value, i.e. the TCP connections used.
    """

    hits: collections.Counter[str] = collections.Counter()
    peers: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)
    tokens: set[str] = set()
    flaky_calls: collections.Counter[str] = collections.Counter()

    async def data(request: Request) -> Response:
        tag = request.query_params.get("tag")
        if tag and request.client:
            peers[tag].add((request.client.host, request.client.port))
        body = {"status": "up", "token": "tok-123", "kind": "b", "count": 3, "items": [1, 2, 3]}
        return JSONResponse(body, headers={"x-request-id": "req-42"})

    async def login(request: Request) -> Response:
        token = "tok-" + secrets.token_hex(6)
        tokens.add(token)
        return JSONResponse({"token": token, "expires_in": 300})

    async def me(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if auth.removeprefix("Bearer ") in tokens:
            return JSONResponse({"user": "demo"})
        return JSONResponse({"error": "bad token"}, status_code=401)

    async def html(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def error(request: Request) -> Response:
        return PlainTextResponse("boom: billing backend down", status_code=500)

    async def slow(request: Request) -> Response:
        ms = int(request.query_params.get("ms", "100"))
        await asyncio.sleep(ms / 1000)
        return JSONResponse({"slept_ms": ms})

    async def flaky(request: Request) -> Response:
        key = request.query_params.get("key", "")
        flaky_calls[key] += 1
        if flaky_calls[key] == 1:
            return JSONResponse({"error": "warming up"}, status_code=503)
        return JSONResponse({"status": "up", "call": flaky_calls[key]})

    async def echo(request: Request) -> Response:
        return JSONResponse({"headers": dict(request.headers), "params": dict(request.query_params)})

    app = Starlette(
        routes=[
            Route(path, _counted(hits, path, endpoint), methods=methods)
            for path, endpoint, methods in (
                ("/json", data, ["GET"]),
                ("/login", login, ["POST"]),
                ("/me", me, ["GET"]),
                ("/html", html, ["GET"]),
                ("/error", error, ["GET"]),
                ("/slow", slow, ["GET"]),
                ("/flaky", flaky, ["GET"]),
                ("/echo", echo, ["GET", "POST"]),
            )
        ]
    )
    app.state.hits = hits
    app.state.peers = peers
    return app


def _counted(hits: collections.Counter[str], path: str, endpoint):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> Response:
        hits[path] += 1
        return await endpoint(request)

    return handler


# --------------------------------------------------------------------------- raw asyncio servers


@asynccontextmanager
async def raw_server(reply: bytes | None, *, ssl_context: ssl.SSLContext | None = None, hang_up: bool = False) -> AsyncIterator[int]:
    """A TCP (or TLS) server on 127.0.0.1 in the running loop; yields its port.

    It reads the request head, then writes `reply` and closes; with reply=None it
    never answers (closes only when the client goes away, or with hang_up=True at once).
    """
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
                return
            if reply is not None:
                writer.write(reply)
                await writer.drain()
            elif not hang_up:
                await reader.read()  # until the client gives up and closes
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in list(writers):
            writer.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # let the handlers see their closed streams


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but never listens: connecting is refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()
