"""A small HTTP/1.1 client for bots that answer JSON in the response: keep-alive connections per origin.

    pool = Pool(ssl.create_default_context, connect_timeout=10.0)
    response = await pool.request("POST", "http://127.0.0.1:8000/bot", {"content-type": "application/json"}, body)
    response.status, response.reason, response.headers["content-type"], response.body
    await pool.close()

Why not httpx or aiohttp: a stress exercise sends every user message of every virtual
user through here. httpx spent about 1 ms of CPU per request (its pool scans every
connection per request); aiohttp about 0.2 ms, most of it in features a chat exchange
does not use (redirects, cookies, auth, tracing, per-request timers). This does one
request at a time per connection, reads Content-Length, chunked and close-delimited
bodies, and nothing else: no redirects (httpx did not follow them either), no cookies
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
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from cxtest.errors import ProbeError, ProtocolError, StepTimeout, TargetUnreachable

MAX_HEAD = 64 * 1024  # a status line and headers longer than this are not a bot's answer
USER_AGENT = "cxtest"


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case; a repeated header's values joined with ", " (Set-Cookie's with newlines)
    body: bytes


@dataclass(frozen=True)
class Origin:
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


class _Closed(Exception):
    """The connection ended before a whole response came; `answered`: some of it had come."""

    def __init__(self, answered: bool, cause: BaseException | None = None):
        super().__init__("closed")
        self.answered, self.cause = answered, cause


class _Connection(asyncio.Protocol):
    """One connection: one request at a time; the response is parsed as its bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.ended = False  # the peer closed or the connection broke: never reused
        self.reusable = True
        self._head: tuple[int, str, dict[str, str], int] | None = None  # status, reason, headers, body start

    # -- asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.reusable = False  # bytes nobody asked for (a 408 before closing, say): never reuse this one
            return
        self.buffer += data
        self._parse(eof=False)

    def eof_received(self) -> bool:
        self.ended = True
        if self.waiter is not None and not self.waiter.done():
            self._parse(eof=True)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if self.waiter is not None and not self.waiter.done():
            self._parse(eof=True, cause=exc)

    # -- use

    @property
    def idle(self) -> bool:
        return not self.ended and self.reusable and self.transport is not None and not self.transport.is_closing()

    async def exchange(self, request: bytes) -> Response:
        assert self.transport is not None
        self.buffer.clear()
        self._head = None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing

    def _parse(self, eof: bool, cause: BaseException | None = None) -> None:
        assert self.waiter is not None
        try:
            response = self._response(eof)
        except ProtocolError as exc:
            self.reusable = False
            self.waiter.set_exception(exc)
            return
        if response is not None:
            self.waiter.set_result(response)
        elif eof:
            self.reusable = False
            self.waiter.set_exception(_Closed(bool(self.buffer), cause))

    def _response(self, eof: bool) -> Response | None:
        """The whole response when it is here, else None (wait for more)."""
        while self._head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise ProtocolError(f"the bot's answer has no end of headers in its first {MAX_HEAD} bytes")
                return None
            head = _head(bytes(self.buffer[:end]))
            if 100 <= head[0] < 200:  # 100 Continue and the like: the real response follows
                del self.buffer[: end + 4]
                continue
            self._head = (*head, end + 4)
        status, reason, headers, start = self._head
        body = bytes(self.buffer[start:])  # a bot's answer is small: copies cost less than keeping track
        if status in (204, 304):
            content: bytes | None = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            content = _dechunk(body)
        elif "content-length" in headers:
            length = _length(headers["content-length"])
            content = body[:length] if len(body) >= length else None
            if len(body) > length:
                self.reusable = False  # bytes nobody asked for: the connection's state is unknown
        else:
            self.reusable = False  # the body ends when the connection does
            content = body if eof else None
        if content is None:
            return None
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        encoding = headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            try:
                content = zlib.decompress(content, 47 if encoding == "gzip" else 15)
            except zlib.error as exc:
                raise ProtocolError(f"the bot's {encoding} answer does not decompress: {exc}") from None
        return Response(status, reason, headers, content)


def _head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
        raise ProtocolError(f"the bot's answer is not HTTP: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ProtocolError(f"malformed header line in the bot's answer: {line[:80]!r}")
        name = name.strip().lower()
        # Set-Cookie values hold commas (Expires=Mon, 07 Dec ...): repeated ones are kept a line each.
        joint = "\n" if name == "set-cookie" else ", "
        headers[name] = f"{headers[name]}{joint}{value.strip()}" if name in headers else value.strip()
    if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers["connection"] = "close"
    return int(code), reason, headers


def _length(value: str) -> int:
    if not value.strip().isdigit():
        raise ProtocolError(f"the bot's answer has a bad Content-Length: {value[:40]!r}")
    return int(value)


def _dechunk(body: bytes) -> bytes | None:
    """A whole chunked body, or None when it has not all come yet."""
    out = bytearray()
    at = 0
    while True:
        end = body.find(b"\r\n", at)
        if end < 0:
            if len(body) - at > 1024:
                raise ProtocolError("the bot's chunked answer has a chunk size line that does not end")
            return None
        size_text = body[at:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"the bot's chunked answer has a bad chunk size: {size_text[:20]!r}") from None
        at = end + 2
        if size == 0:
            # Trailers, if any, end with an empty line.
            rest = body[at:]
            return bytes(out) if rest.startswith(b"\r\n") or b"\r\n\r\n" in rest else None
        if len(body) < at + size + 2:
            return None
        out += body[at : at + size]
        at += size + 2


class Pool:
    """Keep-alive connections per origin, one request at a time on each; as many connections as requests in flight."""

    def __init__(self, tls: Callable[[], ssl.SSLContext] = ssl.create_default_context, connect_timeout: float = 10.0):
        self._make_tls = tls  # made on the first https connection: loading the CAs costs ~20 ms
        self._tls: ssl.SSLContext | None = None
        self.connect_timeout = connect_timeout
        self._idle: dict[Origin, list[_Connection]] = {}

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Response:
        origin, target, host = split_url(url)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        given = {name.lower() for name in headers}
        if "user-agent" not in given:
            lines.append(f"User-Agent: {USER_AGENT}")
        if "accept" not in given:
            lines.append("Accept: */*")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
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
