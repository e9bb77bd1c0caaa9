"""HTTP / API checks: multi-step requests over one shared httpx client pool.

httpx errors are translated into cxtest's error tree here and nowhere else.
"""

from __future__ import annotations

import functools
import json
import operator
import re
import socket
import ssl
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timezone
from functools import cache
from typing import Annotated, Any, AsyncIterator, Callable, ClassVar, Literal

import httpx
import jinja2
import jsonpath
from pydantic import BeforeValidator, Field, field_validator

from cxtest.checks import ABSENT, Match, ValueMatch, judge_levels, judge_match, show, valid_regex
from cxtest.errors import ProbeError, ProtocolError, StepTimeout, TargetUnreachable
from cxtest.logs import redact
from cxtest.model import CheckResult, ExpectLevels, Frozen, Observation, Outcome, Scenario, Step
from probes.base import RunContext

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
EVIDENCE_BODY_LIMIT = 8192
USER_AGENT = "cxtest (+https://github.com/cxtest/cxtest)"


class HttpTarget(Frozen):
    url: str | None = None  # base URL that relative request URLs are joined to
    headers: dict[str, str] = {}
    verify: bool | str = True  # False, or a CA bundle file
    follow_redirects: bool = True


def _request_shorthand(value: Any) -> Any:
    # `request: GET /api/status` reads better than a mapping for the common case.
    if isinstance(value, str):
        method, _, url = value.strip().partition(" ")
        return {"method": method, "url": url.strip()} if url else {"url": method}
    return value


class HttpRequest(Frozen):
    method: Literal[METHODS] = "GET"  # type: ignore[valid-type]
    url: str
    params: dict[str, Any] = {}
    headers: dict[str, str] = {}
    json_body: Any = Field(None, alias="json")
    form: dict[str, Any] | None = None
    body: str | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def _status_shorthand(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"[1-5]xx", value):
        return {"matches": f"^{value[0]}\\d\\d$"}
    codes = value if isinstance(value, list) else [value]
    if not isinstance(value, dict) and not all(isinstance(c, int) and 100 <= c <= 599 for c in codes):
        raise ValueError(f"expected a status code like 200, a list like [200, 201] or a class like 2xx, got {value!r}")
    return value


@cache
def _compiled(path: str) -> Any:
    """The path, compiled once: a _SimplePath when it is only names, wildcards and indexes, else python-jsonpath's."""
    simple = _simple_path(path)
    if simple is not None:
        return simple
    try:
        return jsonpath.compile(path)
    except jsonpath.JSONPathError as exc:
        raise ValueError(f"bad JSONPath {path!r}: {str(exc).splitlines()[0]}") from None


_SIMPLE_PATH = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\.\*|\[\*\]|\[\d+\])*")
_PATH_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|(\.\*|\[\*\])|\[(\d+)\]")
_PATH_KEYWORDS = {"true", "false", "null"}


class _SimplePath:
    """`$.messages[*]`, `$.intent.name`, `$.items[0]`: found with plain dict and list lookups.

    The chat connectors resolve a handful of these on every bot answer; python-jsonpath
    builds a match object (and serialises its location) per node, which cost more than
    the rest of the answer's handling. The results are python-jsonpath's, in its order
    (tests/test_chat_hot_path.py compares them).
    """

    __slots__ = ("path", "segments", "names")

    def __init__(self, path: str, segments: tuple[tuple[str, Any], ...]):
        self.path, self.segments = path, segments
        # `$.intent.name`: only names, a walk down dicts.
        self.names = tuple(key for _, key in segments) if all(kind == "name" for kind, _ in segments) else None

    def findall(self, document: Any) -> list[Any]:
        if self.names is not None:
            for key in self.names:
                if not isinstance(document, dict) or key not in document:
                    return []
                document = document[key]
            return [document]
        found = [document]
        # One loop per kind of segment, no call per node: a chat answer resolves ~6 paths.
        for kind, key in self.segments:
            if kind == "name":
                found = [node[key] for node in found if isinstance(node, dict) and key in node]
            elif kind == "all":
                spread: list[Any] = []
                for node in found:
                    if isinstance(node, dict):
                        spread += node.values()
                    elif isinstance(node, list):
                        spread += node
                found = spread
            else:
                text = str(key)  # python-jsonpath's [0] on an object
                found = [node[key] if isinstance(node, list) else node[text] for node in found
                         if (isinstance(node, list) and key < len(node)) or (isinstance(node, dict) and text in node)]
            if not found:
                break
        return found


def _simple_path(path: str) -> _SimplePath | None:
    if _SIMPLE_PATH.fullmatch(path) is None:
        return None
    segments: list[tuple[str, Any]] = []
    for name, wildcard, index in _PATH_SEGMENT.findall(path[1:]):
        if name in _PATH_KEYWORDS:
            return None  # left to python-jsonpath, whatever it makes of them
        segments.append(("name", name) if name else ("all", None) if wildcard else ("index", int(index)))
    return _SimplePath(path, tuple(segments))


class HttpExpect(Frozen):
    status: Annotated[ValueMatch | None, BeforeValidator(_status_shorthand)] = None
    headers: dict[str, ValueMatch] = {}
    json_path: dict[str, ValueMatch] = {}
    body_contains: str | list[str] | None = None
    body_matches: str | None = None
    latency: ExpectLevels | None = None
    tls_days_left: ExpectLevels | None = None

    @field_validator("json_path")
    @classmethod
    def _paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            _compiled(path)
        return value

    _regex = field_validator("body_matches")(classmethod(lambda cls, value: valid_regex(value)))


class HttpStep(Step):
    request: Annotated[HttpRequest, BeforeValidator(_request_shorthand)]
    expect: HttpExpect = HttpExpect()
    save: dict[str, str] = {}

    def describe(self) -> str:
        return self.name or f"{self.request.method} {self.request.url}"

    @field_validator("save")
    @classmethod
    def _save_sources(cls, value: dict[str, str]) -> dict[str, str]:
        for source in value.values():
            if source.startswith("$"):
                _compiled(source)
            elif source.startswith("regex:"):
                valid_regex(source[6:])
            elif not (source.startswith("header:") or source in ("status", "body")):
                raise ValueError(
                    f"cannot save from {source!r}: use a JSONPath ($.token), header:NAME, regex:PATTERN, status or body"
                )
        return value


_templates = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


@functools.lru_cache(maxsize=4096)
def _template(text: str) -> jinja2.Template:
    # Compiling is most of a render's cost, and a scenario's strings come back on every run.
    return _templates.from_string(text)


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_JINJA_LITERALS = {"true", "false", "none", "True", "False", "None"}


@functools.lru_cache(maxsize=4096)
def _filling(text: str) -> tuple[str, Callable[[dict[str, Any]], Any], bool] | None:
    """"pay {{ balance }}" -> ("pay %s", itemgetter("balance"), True): text with bare `{{ name }}` placeholders only.

    Such a template renders as its text with str() of each value, which is what Jinja2 does
    for it and what %s does; anything else (filters, expressions, statements, comments, a
    line ending Jinja2 would rewrite or drop) is None and goes to Jinja2. The bool: one name.
    """
    literals: list[str] = []
    names: list[str] = []
    end = 0
    for found in _PLACEHOLDER.finditer(text):
        if found.group(1) in _JINJA_LITERALS:
            return None
        literals.append(text[end : found.start()])
        names.append(found.group(1))
        end = found.end()
    literals.append(text[end:])
    literal = "".join(literals)
    if not names or any(mark in literal for mark in ("{{", "{%", "{#", "}}", "\r")) or text.endswith("\n"):
        return None
    return "%s".join(part.replace("%", "%%") for part in literals), operator.itemgetter(*names), len(names) == 1


def render(value: Any, variables: dict[str, Any]) -> Any:
    """Fill `{{ name }}` placeholders in strings, lists and mappings from saved values."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        filling = _filling(value)
        if filling is not None:
            text, values_of, single = filling
            try:
                values = values_of(variables)
            except KeyError:
                pass  # Jinja2 says which is undefined
            else:
                return text % ((values,) if single else values)
        try:
            return _template(value).render(variables)
        except jinja2.UndefinedError as exc:
            saved = ", ".join(sorted(variables)) or "nothing saved yet"
            raise ProbeError(f"{exc.message} in {value!r} (saved values: {saved})") from None
        except jinja2.TemplateSyntaxError as exc:
            raise ProbeError(f"bad template {value!r}: {exc.message}") from None
    if isinstance(value, dict):
        return {k: render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    return value


def _root_cause(exc: BaseException) -> BaseException | None:
    """The most telling exception under httpx's: an SSL error if any, else the deepest OSError.

    httpcore chains some errors by __context__ only (TLS failures) and anyio wraps the
    socket error in OSError("All connection attempts failed") (first of a group per address).
    """
    chain: list[BaseException] = []
    link = exc.__cause__ or exc.__context__
    while link is not None and all(link is not seen for seen in chain):
        chain.append(link)
        if isinstance(link, BaseExceptionGroup) and link.exceptions:
            link = link.exceptions[0]
        else:
            link = link.__cause__ or link.__context__
    for found in chain:
        if isinstance(found, ssl.SSLError):
            return found
    for found in reversed(chain):
        if isinstance(found, OSError):
            return found
    return chain[0] if chain else None


def _translate(exc: httpx.HTTPError, url: str, timeout: float) -> Exception:
    """httpx's exceptions -> cxtest's error tree, with the reason a person needs."""
    cause = _root_cause(exc)
    host = httpx.URL(url).host
    if isinstance(exc, httpx.TimeoutException):
        what = {
            httpx.ConnectTimeout: "connecting",
            httpx.ReadTimeout: "waiting for the response",
            httpx.WriteTimeout: "sending the request",
            httpx.PoolTimeout: "waiting for a free connection",
        }.get(type(exc), "waiting")
        return StepTimeout(f"no answer from {url} within {timeout:g}s ({what})")
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TargetUnreachable(f"TLS certificate of {host} rejected: {cause.verify_message or cause.reason}")
        if isinstance(cause, ssl.SSLError) or "SSL" in text:
            return TargetUnreachable(f"TLS handshake with {host} failed: {text}")
        if isinstance(cause, socket.gaierror) or "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text.lower() or "Temporary failure in name resolution" in text:
            return TargetUnreachable(f"DNS lookup failed for {host}: {text}")
        if isinstance(cause, ConnectionRefusedError) or "refused" in text.lower():
            return TargetUnreachable(f"connection refused by {host}:{httpx.URL(url).port or ''} ({url})".replace(":(", " ("))
        reason = str(cause) if isinstance(cause, OSError) and str(cause) else text
        return TargetUnreachable(f"cannot connect to {url}: {reason}")
    if isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc):
        return ProtocolError(f"{host} closed the connection without answering ({url})")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.LocalProtocolError, httpx.DecodingError)):
        return ProtocolError(f"malformed HTTP response from {url}: {exc}")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ProbeError(f"unsupported URL {url!r}: {exc}")
    return ProbeError(f"HTTP request to {url} failed: {type(exc).__name__}: {exc}")


def _certificate_days_left(response: httpx.Response) -> float | None:
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert or "notAfter" not in cert:
        return None
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), tz=timezone.utc)
    return (expires - datetime.now(timezone.utc)).total_seconds() / 86400


@functools.lru_cache(maxsize=4096)
def _absolute_url(base: str, path: str) -> str:
    # Parsing and joining URLs costs more than the rest of the harness per request; scenarios repeat them.
    return str(httpx.URL(base).join(path))


class _Body:
    """The response body, parsed as JSON at most once and only when asked."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self._json: Any = None
        self._parsed = False
        self.json_error: str | None = None

    @property
    def json(self) -> Any:
        if not self._parsed:
            self._parsed = True
            try:
                self._json = json.loads(self.response.content)
            except (ValueError, UnicodeDecodeError):
                kind = self.response.headers.get("content-type", "no content-type")
                self.json_error = f"body is not JSON ({kind}): {show(self.response.text, 80)}"
        return self._json


def _find(path: str, body: _Body) -> Any:
    found = _compiled(path).findall(body.json)
    if not found:
        return ABSENT
    return found[0] if len(found) == 1 else found


class HttpSession:
    def __init__(self, probe: "HttpProbe", scenario: Scenario, ctx: RunContext):
        self.probe = probe
        self.target: HttpTarget = scenario.target
        self.ctx = ctx

    async def step(self, index: int, step: HttpStep, timeout: float) -> Observation:
        variables = self.ctx.variables
        request = step.request
        url = render(request.url, variables)
        if self.target.url and not url.startswith(("http://", "https://")):
            url = _absolute_url(render(self.target.url, variables), url)
        # Header names are case-insensitive: a step's "authorization" replaces the target's "Authorization".
        headers = {k.lower(): v for k, v in (*self.target.headers.items(), *request.headers.items())}
        client = self.probe.client(self.target.verify)
        started = time.perf_counter()
        try:
            response = await client.request(
                request.method,
                url,
                params=render(request.params, variables) or None,
                headers=render(headers, variables),
                json=render(request.json_body, variables),
                data=render(request.form, variables),
                content=render(request.body, variables),
                timeout=timeout,
                follow_redirects=self.target.follow_redirects,
            )
        except httpx.HTTPError as exc:
            raise _translate(exc, url, timeout) from None
        latency = time.perf_counter() - started

        measures = {"latency": latency}
        days_left = _certificate_days_left(response) if response.url.scheme == "https" else None
        if days_left is not None:
            measures["tls_days_left"] = days_left
        body = _Body(response)
        checks = self._judge(step.expect, response, body, measures)
        checks += self._save(step.save, response, body)
        evidence = {}
        if any(c.outcome is not Outcome.passed for c in checks):
            evidence = {"request": redact(_request_text(response.request)), "response": redact(_response_text(response))}
            if self.ctx.keep_failing_evidence:
                self.ctx.write_text(f"step-{index + 1}-response.txt", evidence["response"])
        return Observation(checks=tuple(checks), measures=measures, evidence=evidence)

    def _judge(self, expect: HttpExpect, response: httpx.Response, body: _Body, measures: dict[str, float]) -> list[CheckResult]:
        status = expect.status or Match(lt=400)
        checks = [_status_class_text(c, status) for c in judge_match("status", response.status_code, status)]
        for name, match in expect.headers.items():
            checks += judge_match(f"header {name}", response.headers.get(name, ABSENT), match)
        for path, match in expect.json_path.items():
            if body.json is None and body.json_error:
                checks.append(CheckResult(path, Outcome.failed, match.model_dump(exclude_unset=True), ABSENT, f"{path}: {body.json_error}"))
            else:
                checks += judge_match(path, _find(path, body), match)
        contains = [expect.body_contains] if isinstance(expect.body_contains, str) else expect.body_contains or []
        for text in contains:
            checks += judge_match("body", response.text, Match(contains=text))
        if expect.body_matches is not None:
            checks += judge_match("body", response.text, Match(matches=expect.body_matches))
        if expect.latency is not None:
            checks.append(judge_levels("latency", measures["latency"], expect.latency))
        if expect.tls_days_left is not None:
            if "tls_days_left" in measures:
                checks.append(judge_levels("tls_days_left", measures["tls_days_left"], expect.tls_days_left))
            else:
                checks.append(CheckResult("tls_days_left", Outcome.failed, expect.tls_days_left, ABSENT, "tls_days_left: no verified TLS certificate on this response"))
        return checks

    def _save(self, save: dict[str, str], response: httpx.Response, body: _Body) -> list[CheckResult]:
        checks = []
        for name, source in save.items():
            if source.startswith("$"):
                value = _find(source, body) if body.json is not None else ABSENT
            elif source.startswith("header:"):
                value = response.headers.get(source[7:], ABSENT)
            elif source.startswith("regex:"):
                found = re.search(source[6:], response.text)
                value = ABSENT if found is None else (found.group(1) if found.groups() else found.group(0))
            else:
                value = response.status_code if source == "status" else response.text
            if value is ABSENT:
                why = f": {body.json_error}" if source.startswith("$") and body.json_error else ""
                checks.append(CheckResult(f"save {name}", Outcome.failed, source, ABSENT, f"save {name}: {source} not found in the response{why}"))
            else:
                self.ctx.variables[name] = value
        return checks


def _status_class_text(check: CheckResult, status: Match) -> CheckResult:
    """`status (503) is 2xx` reads better than the regex the `2xx` shorthand became."""
    found = re.fullmatch(r"\^([1-5])\\d\\d\$", status.matches or "")
    if not found:
        return check
    return replace(check, expected=f"{found.group(1)}xx", text=f"status ({check.actual}) is {found.group(1)}xx")


def _request_text(request: httpx.Request) -> str:
    head = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
    body = request.content.decode("utf-8", "replace")[:EVIDENCE_BODY_LIMIT] if request.content else ""
    return f"{request.method} {request.url}\n{head}\n\n{body}".rstrip()


def _response_text(response: httpx.Response) -> str:
    head = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    body = response.text
    if len(body) > EVIDENCE_BODY_LIMIT:
        body = body[:EVIDENCE_BODY_LIMIT] + f"\n… ({len(response.content)} bytes in all)"
    return f"HTTP {response.status_code} {response.reason_phrase}\n{head}\n\n{body}".rstrip()


class HttpProbe:
    channel: ClassVar[str] = "http"
    target_model: ClassVar[type] = HttpTarget
    step_model: ClassVar[type] = HttpStep
    measures: ClassVar[frozenset[str]] = frozenset({"latency", "tls_days_left"})

    def __init__(self, max_connections: int = 200):
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._clients: dict[bool | str, httpx.AsyncClient] = {}

    def client(self, verify: bool | str) -> httpx.AsyncClient:
        # One pool per TLS trust setting: httpx fixes verification per client.
        client = self._clients.get(verify)
        if client is None:
            try:
                context: ssl.SSLContext | bool = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
            except (OSError, ssl.SSLError) as exc:
                raise ProbeError(f"cannot load the CA bundle {verify!r}: {exc.strerror or exc}") from None
            client = httpx.AsyncClient(verify=context, limits=self._limits, headers={"user-agent": USER_AGENT})
            self._clients[verify] = client
        return client

    @asynccontextmanager
    async def session(self, scenario: Scenario, ctx: RunContext) -> AsyncIterator[HttpSession]:
        yield HttpSession(self, scenario, ctx)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

