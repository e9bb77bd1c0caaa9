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

The rest and rasa connectors talk through a small keep-alive HTTP/1.1 client
(http1.py): a stress exercise sends thousands of messages a second through it, and
httpx spent about 1 ms of CPU on each (its pool scans every connection per request).
A conversation sends back the cookies its bot set in it, and never another's (the
shared httpx client used to mix every conversation's cookies in one jar).
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import httpx
import orjson

from cxtest.errors import ProbeError, ProtocolError, StepTimeout, TargetUnreachable
from probes.chat.connectors.base import BotMessage, Button, ChatTarget, Conversation, UserMessage
from probes.chat.connectors.http1 import Pool, with_query
from probes.http import _compiled, render

if TYPE_CHECKING:
    import aiohttp

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
    if path is None:
        return None
    found = _compiled(path).findall(document)
    return found[0] if found else None


def _all(path: str | None, document: Any) -> list[Any]:
    return [] if path is None else _compiled(path).findall(document)


def as_button(value: Any) -> Button | None:
    """A button from a string or an object with a title and perhaps a value (payload, value, postBack...)."""
    if isinstance(value, str):
        return Button(value)
    if not isinstance(value, dict):
        return None
    for key in ("title", "text", "label"):
        title = value.get(key)
        if isinstance(title, str):
            break
    else:
        return None
    for key in ("payload", "value", "postback"):
        payload = value.get(key)
        if payload is not None:
            break
    return Button(title, payload if isinstance(payload, str) or payload is None else json.dumps(payload))


def snippet(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…")


class HttpConversation(Conversation):
    """A conversation whose bot answers in the HTTP response to each message.

    `request(message)` gives the request: method, url, and json, data (bytes) or params
    (query pairs). It goes through the connector's keep-alive pool (http1.py), or through
    aiohttp when the environment names a proxy for the URL.
    """

    def __init__(self, connector: HttpConnector, target: ChatTarget, conversation_id: str, request: Callable[[UserMessage], dict[str, Any]], parse: Callable[[Any, float], list[BotMessage]]):
        super().__init__()
        self.connector, self.target, self.conversation_id = connector, target, conversation_id
        self._request, self._parse = request, parse
        self.cookies: dict[str, str] = {}  # what the bot set in this conversation, sent back on its next messages

    async def send(self, message: UserMessage) -> None:
        method, url, headers, body = _wire(self._request(message), self.target.headers)
        if self.cookies:
            given = next((name for name in headers if name.lower() == "cookie"), "Cookie")  # the target's own come first
            ours = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
            headers[given] = f"{headers[given]}; {ours}" if given in headers else ours
        proxy = _env_proxy(url)
        if proxy is None:
            response = await self.connector.pool(self.target).request(method, url, headers, body)
            arrived = time.monotonic()
            status, reason, kind, content = response.status, response.reason, response.headers.get("content-type"), response.body
            set_cookies = response.headers.get("set-cookie", "").split("\n")
        else:
            status, reason, kind, content, set_cookies = await self._via_proxy(method, url, headers, body, proxy)
            arrived = time.monotonic()
        for line in set_cookies:
            _remember_cookie(self.cookies, line)
        if status >= 400:
            raise ProtocolError(f"the bot at {url} answered {status} {reason}: {snippet(_text(content))}")
        if not content.strip():
            return  # a bot with nothing to say
        try:
            document = _json(content)
        except ValueError:
            raise ProtocolError(f"the bot's answer is not JSON ({kind or 'no content type'}): {snippet(_text(content))}") from None
        for bot_message in self._parse(document, arrived):
            self.deliver(bot_message)

    async def _via_proxy(self, method: str, url: str, headers: dict[str, str], body: bytes | None, proxy: str) -> tuple[int, str, str | None, bytes, list[str]]:
        import aiohttp  # only behind a proxy: its import is not paid by every chat run

        session = self.connector.session(self.target)
        try:
            async with session.request(method, url, headers=headers, data=body, proxy=proxy, allow_redirects=False) as response:
                content = await response.read()
                set_cookies = response.headers.getall("set-cookie", [])
                return response.status, response.reason or "", response.headers.get("content-type"), content, set_cookies
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _translate(exc, url, self.target.connect_timeout) from None


def _remember_cookie(cookies: dict[str, str], line: str) -> None:
    """One Set-Cookie line into the conversation's cookies: name=value, or gone when it expires at once (Max-Age=0)."""
    pair, _, attributes = line.partition(";")
    name, equals, value = pair.partition("=")
    name = name.strip()
    if not equals or not name:
        return
    if any(a.strip().lower() in ("max-age=0", "max-age=-1") for a in attributes.split(";")):
        cookies.pop(name, None)
    else:
        cookies[name] = value.strip()


def _wire(request: dict[str, Any], given: dict[str, str]) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, url, headers, body) of a request: JSON as httpx wrote it (compact, UTF-8; orjson writes NaN as null), params in the query."""
    headers = dict(given)
    url = request["url"]
    if "json" in request:
        body: bytes | None = orjson.dumps(request["json"])
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
    elif "data" in request:
        body = request["data"]
    else:
        body = None
        url = with_query(url, request.get("params", []))
    return request["method"], url, headers, body


def _json(content: bytes) -> Any:
    """A bot's JSON answer: orjson for UTF-8 (a stress run parses thousands a second), json for the other encodings RFC 8259 allowed once."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


def _text(content: bytes) -> str:
    return content.decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=256)
def _env_proxy(url: str) -> str | None:
    """The proxy HTTP_PROXY / HTTPS_PROXY / NO_PROXY name for url, as httpx honoured them; looked up once per URL.

    aiohttp's own trust_env looks both the proxy and ~/.netrc up on a thread for every request.
    """
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme)


def _translate(exc: BaseException, url: str, timeout: float) -> Exception:
    """aiohttp's exceptions -> cxtest's error tree, in the words probes/http.py uses for httpx's."""
    import aiohttp

    parts = httpx.URL(url)
    host = parts.host
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        what = "connecting" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "waiting for the response"
        return StepTimeout(f"no answer from {url} within {timeout:g}s ({what})")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
        reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(cause)
        return TargetUnreachable(f"TLS certificate of {host} rejected: {reason}")
    if isinstance(exc, aiohttp.ClientSSLError):
        return TargetUnreachable(f"TLS handshake with {host} failed: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return TargetUnreachable(f"DNS lookup failed for {host}: {exc.os_error}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return TargetUnreachable(f"connection refused by {host}:{parts.port or ''} ({url})".replace(":(", " ("))
        return TargetUnreachable(f"cannot connect to {url}: {exc.os_error}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProtocolError(f"{host} closed the connection without answering ({url})")
    if isinstance(exc, (aiohttp.ClientResponseError, aiohttp.ClientPayloadError)):
        return ProtocolError(f"malformed HTTP response from {url}: {exc}")
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return ProbeError(f"unsupported URL {url!r}: {exc}")
    if isinstance(exc, aiohttp.ClientOSError):
        return ProtocolError(f"the connection to {host} broke ({url}): {exc}")
    return ProbeError(f"HTTP request to {url} failed: {type(exc).__name__}: {exc}")


class HttpConnector:
    """The shared HTTP clients of one probe's conversations.

    rest and rasa: keep-alive pools (http1.py), aiohttp through a proxy; the Bot Framework
    connectors: httpx, with `transport` the seam for tests without a network.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None):
        self._transport = transport
        self._clients: dict[tuple[Any, float], httpx.AsyncClient] = {}
        self._sessions: dict[tuple[Any, float], aiohttp.ClientSession] = {}
        self._pools: dict[tuple[Any, float], Pool] = {}

    def pool(self, target: ChatTarget) -> Pool:
        key = (target.verify, target.connect_timeout)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(functools.partial(_tls, target.verify), target.connect_timeout)
        return pool

    def client(self, target: ChatTarget) -> httpx.AsyncClient:
        key = (target.verify, target.connect_timeout)
        if key not in self._clients:
            timeout = httpx.Timeout(None, connect=target.connect_timeout)  # replies may take long: the step timeout bounds them
            self._clients[key] = httpx.AsyncClient(transport=self._transport, verify=target.verify, timeout=timeout)
        return self._clients[key]

    def session(self, target: ChatTarget) -> aiohttp.ClientSession:
        """One pool per TLS setting and connect timeout, for targets behind a proxy; no cookie jar (conversations keep their own)."""
        import aiohttp

        key = (target.verify, target.connect_timeout)
        if key not in self._sessions:
            # No limit on connections: the runner's concurrency is the limit, as with httpx's pool.
            connector = aiohttp.TCPConnector(limit=0, ssl=_tls(target.verify))
            # Replies may take long: the step timeout bounds them.
            timeout = aiohttp.ClientTimeout(total=None, connect=target.connect_timeout, sock_connect=target.connect_timeout)
            self._sessions[key] = aiohttp.ClientSession(
                connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False,
            )
        return self._sessions[key]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()


def _tls(verify: bool | str) -> ssl.SSLContext:
    """target.verify as a TLS context: True checks against the system's CAs, a file against its CAs, False not at all."""
    try:
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    except OSError as exc:
        raise ProbeError(f"cannot read the CA bundle {verify!r} (target.verify): {exc.strerror or exc}") from None
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class RestConnector(HttpConnector):
    name: ClassVar[str] = "rest"
    target_model: ClassVar[type] = RestTarget

    async def open(self, target: RestTarget, conversation_id: str) -> Conversation:
        def request(message: UserMessage) -> dict[str, Any]:
            values = {"text": message.value, "conversation_id": conversation_id, "user": conversation_id}
            body = render(target.body, values)
            if target.method == "GET":
                return {"method": "GET", "url": target.url, "params": _query(body if isinstance(body, dict) else {"text": body})}
            if isinstance(body, str):
                return {"method": target.method, "url": target.url, "data": body.encode()}
            return {"method": target.method, "url": target.url, "json": body}

        def parse(document: Any, at: float) -> list[BotMessage]:
            intent = _first(target.intent, document)
            intent = intent if isinstance(intent, str) else None
            confidence = _number(_first(target.confidence, document))
            messages = []
            for item in _all(target.messages, document):
                buttons = tuple(b for b in map(as_button, _all(target.buttons, item)) if b is not None)
                for text in _all(target.text, item) or ([""] if buttons else []):
                    messages.append(BotMessage(str(text), buttons, intent, confidence, item, at))
            return messages

        return HttpConversation(self, target, conversation_id, request, parse)


def _query(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Query parameters as httpx wrote them: a list repeats its name, true/false in lower case, None as empty."""

    def text(value: Any) -> str:
        return "true" if value is True else "false" if value is False else "" if value is None else str(value)

    return [(name, text(item)) for name, value in values.items() for item in (value if isinstance(value, (list, tuple)) else [value])]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
