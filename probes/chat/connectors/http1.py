"""A small HTTP/1.1 client for bots that answer JSON in the response: keep-alive connections per origin.

    pool = Pool(ssl.create_default_context, connect_timeout=10.0)
    response = await pool.request("POST", "http://127.0.0.1:8000/bot", {"content-type": "application/json"}, body)
    response.status, response.reason, response.headers["content-type"], response.body
    await pool.close()

Why not httpx or aiohttp: a stress exercise sends every user message of every virtual
user through here. httpx spent about 1 ms of CPU per request (its pool scans every
connection per request); aiohttp about 0.2 ms, most of it in features a chat exchange
does not use (redirects, cookies, auth, tracing, per-request timers). This does one
request at a time per connection; responses are parsed by httptools (Node's llhttp,
uvicorn's parser): Content-Length, chunked and close-delimited bodies, 1xx responses,
keep-alive. Nothing else: no redirects (httpx did not follow them either), no cookies
(conversations must not share them), no proxies (the connector uses aiohttp when the
environment names one for the URL).

Errors are cxtest's, raised where the exchange failed: TargetUnreachable (refused, DNS,
TLS, connect timeout), ProtocolError (closed without answering, not HTTP).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import zlib
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple
from urllib.parse import urlencode, urlsplit

import httptools

from cxtest.errors import ProbeError, ProtocolError, StepTimeout, TargetUnreachable

MAX_HEAD = 64 * 1024  # a status line and headers longer than this are not a bot's answer
USER_AGENT = "cxtest"


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case; a repeated header's values joined with ", " (Set-Cookie's with newlines)
    body: bytes


class Origin(NamedTuple):  # a tuple's hash is C's: the pool looks one up per request
    scheme: str
    host: str
    port: int


@functools.lru_cache(maxsize=1024)
def split_url(url: str) -> tuple[Origin, str, str]:
    """(origin, request target, Host header) of an http(s) URL; ProbeError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProbeError(f"unsupported URL {url!r}: the bot's URL must be http:// or https:// with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ProbeError(f"unsupported URL {url!r}: the port is not a number") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Origin(parts.scheme, parts.hostname, port), target, host if default else f"{host}:{port}"


def with_query(url: str, params: list[tuple[str, str]]) -> str:
    if not params:
        return url
    return url + ("&" if "?" in url else "?") + urlencode(params)


@functools.lru_cache(maxsize=1024)
def _head(method: str, url: str, headers: tuple[tuple[str, str], ...]) -> tuple[Origin, bytes]:
    """The request line and headers, but Content-Length: a conversation sends the same ones message after message."""
    origin, target, host = split_url(url)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    given = {name.lower() for name, _ in headers}
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "accept" not in given:
        lines.append("Accept: */*")
    lines += [f"{name}: {value}" for name, value in headers]
    return origin, ("\r\n".join(lines) + "\r\n").encode("latin-1")


class _Closed(Exception):
    """The connection ended before a whole response came; `answered`: some of it had come."""

    def __init__(self, answered: bool, cause: BaseException | None = None):
        super().__init__("closed")
        self.answered, self.cause = answered, cause


class _Connection(asyncio.Protocol):
    """One connection: one request at a time; the response is parsed by httptools (llhttp) as its bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.ended = False  # the peer closed or the connection broke: never reused
        self.reusable = True
        self._parser = httptools.HttpResponseParser(self)
        self._start()

    def _start(self) -> None:
        self._first = b""  # the first bytes of the answer, to show when it is not HTTP
        self._reason = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._head_size = 0
        self._headed = False  # the headers are complete

    # -- asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.reusable = False  # bytes nobody asked for (a 408 before closing, say): never reuse this one
            return
        if len(self._first) < 80:
            self._first += data[: 80 - len(self._first)]
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raised = exc.__cause__ or exc.__context__  # a callback's own ProtocolError comes wrapped
            self._fail(raised if isinstance(raised, ProtocolError) else self._malformed(exc))

    def eof_received(self) -> bool:
        self.ended = True
        self._at_end(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._at_end(exc)

    # -- httptools' callbacks

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            raise ProtocolError(f"the bot's answer has no end of headers in its first {MAX_HEAD} bytes")
        key, text = name.decode("latin-1").lower(), value.decode("latin-1").strip()
        if key not in self._headers:
            self._headers[key] = text
        else:
            # Set-Cookie values hold commas (Expires=Mon, 07 Dec ...): repeated ones are kept a line each.
            self._headers[key] += ("\n" if key == "set-cookie" else ", ") + text

    def on_headers_complete(self) -> None:
        self._headed = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the real response follows
            self._start()
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._finish(status)

    # -- use

    @property
    def idle(self) -> bool:
        return not self.ended and self.reusable and self.transport is not None and not self.transport.is_closing()

    async def exchange(self, request: bytes) -> Response:
        assert self.transport is not None
        self._start()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()

    # -- outcomes

    def _finish(self, status: int) -> None:
        if self.waiter is None or self.waiter.done():
            self.reusable = False  # a second response in the same bytes: nobody asked for it
            return
        content = b"".join(self._body)
        encoding = self._headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            try:
                content = zlib.decompress(content, 47 if encoding == "gzip" else 15)
            except zlib.error as exc:
                self._fail(ProtocolError(f"the bot's {encoding} answer does not decompress: {exc}"))
                return
        self.waiter.set_result(Response(status, self._reason.decode("latin-1"), self._headers, content))

    def _at_end(self, cause: BaseException | None) -> None:
        """The connection ended: a body that runs to the close is whole now; anything else was cut short."""
        if self.waiter is None or self.waiter.done():
            return
        self.reusable = False
        delimited = "content-length" in self._headers or "chunked" in self._headers.get("transfer-encoding", "").lower()
        if self._headed and not delimited:
            self._finish(self._parser.get_status_code())
        else:
            self.waiter.set_exception(_Closed(bool(self._first), cause))

    def _fail(self, error: ProtocolError) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def _malformed(self, exc: httptools.HttpParserError) -> ProtocolError:
        """llhttp's reason, with the answer's first line when it never looked like HTTP."""
        reason = str(exc) or type(exc).__name__
        if not self._headed and not self._first.startswith(b"HTTP/"):
            first = self._first.split(b"\r\n", 1)[0].decode("latin-1")
            return ProtocolError(f"the bot's answer is not HTTP: {first!r}")
        return ProtocolError(f"the bot's answer is malformed HTTP ({reason})")


class Pool:
    """Keep-alive connections per origin, one request at a time on each; as many connections as requests in flight."""

    def __init__(self, tls: Callable[[], ssl.SSLContext] = ssl.create_default_context, connect_timeout: float = 10.0):
        self._make_tls = tls  # made on the first https connection: loading the CAs costs ~20 ms
        self._tls: ssl.SSLContext | None = None
        self.connect_timeout = connect_timeout
        self._idle: dict[Origin, list[_Connection]] = {}

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Response:
        origin, head = _head(method, url, tuple(headers.items()))
        request = head + b"\r\n" if body is None else b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        connection = self._take(origin) or await self._connect(origin, url)
        try:
            response = await connection.exchange(request)
        except _Closed as closed:
            connection.close()
            if closed.answered:
                raise ProtocolError(f"the bot at {url} closed the connection in the middle of its answer") from None
            raise ProtocolError(f"{origin.host} closed the connection without answering ({url})") from None
        except BaseException:
            connection.close()  # cancelled or failed mid-exchange: what is left on the wire is unknown
            raise
        if connection.idle:
            self._idle.setdefault(origin, []).append(connection)
        else:
            connection.close()
        return response

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.idle:  # the peer may have closed it meanwhile (its keep-alive timeout)
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin, url: str) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if origin.scheme == "https":
            tls = self._tls = self._tls or self._make_tls()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise StepTimeout(f"no answer from {url} within {self.connect_timeout:g}s (connecting)") from None
        except ssl.SSLCertVerificationError as exc:
            raise TargetUnreachable(f"TLS certificate of {origin.host} rejected: {exc.verify_message or exc.reason}") from None
        except ssl.SSLError as exc:
            raise TargetUnreachable(f"TLS handshake with {origin.host} failed: {exc}") from None
        except socket.gaierror as exc:
            raise TargetUnreachable(f"DNS lookup failed for {origin.host}: {exc}") from None
        except ConnectionRefusedError:
            raise TargetUnreachable(f"connection refused by {origin.host}:{origin.port} ({url})") from None
        except OSError as exc:
            if "refused" in str(exc).lower():  # every address of the name refused (asyncio's "Multiple exceptions")
                raise TargetUnreachable(f"connection refused by {origin.host}:{origin.port} ({url})") from None
            raise TargetUnreachable(f"cannot connect to {url}: {exc.strerror or exc}") from None
        return connection

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
