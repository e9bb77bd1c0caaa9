"""The Notifier protocol, the shared settings base, and the one place httpx errors become NotifierError.

A notifier is payload + URL + headers (+ a ref parsed from the response where the
vendor returns one). `payload()` is pure and golden-tested; `send()` posts it
through `deliver()`, which maps every transport failure and non-2xx answer:

    connect error, timeout, other transport error   -> NotifierError(retryable=True)
    429, 5xx                                         -> NotifierError(retryable=True,  status_code, excerpt)
    any other non-2xx (4xx, 3xx)                     -> NotifierError(retryable=False, status_code, excerpt)
    2xx                                              -> Receipt(status_code, excerpt, ref)

Every text that comes from an incident goes through cxtest.logs.redact before it
is put in a payload (see `redacted`), and so do excerpts and error messages.
Credentials from the settings (routing keys, API keys) are not redacted in the
body: the receiver needs them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar, Mapping, Protocol, runtime_checkable

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict

from alerts.model import Change, Evidence, Incident, Receipt, current_delivery
from cxtest.errors import NotifierError
from cxtest.logs import redact

#: Longest response excerpt kept in a Receipt or NotifierError.
EXCERPT_CHARS = 500

#: A JSON body: most receivers take an object, Alertmanager a list.
JSON = dict[str, Any] | list[Any]


@runtime_checkable
class Notifier(Protocol):
    """Speaks for one `notifiers.<name>` entry of cxtest.yaml."""

    type: ClassVar[str]  # "pagerduty": the `type:` written in cxtest.yaml
    settings_model: ClassVar[type[BaseModel]]  # frozen, extra="forbid": the other keys of the entry
    resend_every: ClassVar[float | None]  # seconds; set when the receiver forgets open alerts unless re-sent
    name: str  # the key under `notifiers:`

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> JSON:
        """The JSON body sent for this change; pure (no clock, no I/O), golden-tested."""
        ...

    async def send(
        self, client: httpx.AsyncClient, incident: Incident, change: Change, ref: str | None = None
    ) -> Receipt:
        """Deliver; a Receipt only when the receiver accepted (2xx), else NotifierError."""
        ...


class Settings(BaseModel):
    """Base of every notifier's settings model: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _http_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an http(s) URL: write it like https://host/path")
    return value


#: A URL setting: http or https with a host, kept exactly as written.
HttpUrl = Annotated[str, AfterValidator(_http_url)]


# --------------------------------------------------------------------------- text shared by payloads


def iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, e.g. 2025-03-14T09:26:53Z (naive times are taken as UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters; a cut text ends with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_word(incident: Incident, change: Change) -> str:
    """Failing / Degraded, Still failing / Still degraded, Resolved."""
    what = "degraded" if incident.rule == "degraded" else "failing"
    if change is Change.resolved:
        return "Resolved"
    if change is Change.reminded:
        return f"Still {what}"
    return what.capitalize()


def headline(incident: Incident, change: Change) -> str:
    """`Failing: Billing line reaches billing queue` — the state and the scenario."""
    return f"{status_word(incident, change)}: {incident.scenario_name}"


def one_line(incident: Incident, change: Change) -> str:
    """The headline and the summary, for titles and fallbacks: `Failing: X - why` or `Resolved: X (was: why)`."""
    if not incident.summary:
        return headline(incident, change)
    if change is Change.resolved:
        return f"{headline(incident, change)} (was: {incident.summary})"
    return f"{headline(incident, change)} - {incident.summary}"


def summary_text(incident: Incident, change: Change) -> str:
    """The summary as a line of its own: what is wrong, or what was."""
    return f"Was: {incident.summary}" if change is Change.resolved and incident.summary else incident.summary


def duration_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def open_for(incident: Incident) -> str | None:
    """How long a resolved incident was open, e.g. `35m 18s`."""
    if incident.resolved_at is None:
        return None
    return duration_text((incident.resolved_at - incident.opened_at).total_seconds())


def evidence_dict(item: Evidence) -> dict[str, Any]:
    return {
        "run_id": item.run_id,
        "started_at": iso(item.started_at),
        "outcome": item.outcome.value,
        "location": item.location,
        "message": item.message,
        "artifacts": list(item.artifacts),
    }


def evidence_line(item: Evidence) -> str:
    """`2025-03-14T09:21:50Z eu-1 failed: expected status 200, got 503`."""
    return f"{iso(item.started_at)} {item.location} {item.outcome.value}: {item.message}"


def newest(evidence: tuple[Evidence, ...], count: int) -> list[Evidence]:
    """The `count` most recent evidence items, newest first."""
    return sorted(evidence, key=lambda e: e.started_at, reverse=True)[:count]


def incident_dict(incident: Incident) -> dict[str, Any]:
    """Every field of the incident as JSON values (the webhook's default body and template context)."""
    return {
        "id": incident.id,
        "key": incident.key,
        "scenario_id": incident.scenario_id,
        "scenario_name": incident.scenario_name,
        "rule": incident.rule,
        "location": incident.location,
        "severity": incident.severity,
        "state": incident.state.value,
        "summary": incident.summary,
        "opened_at": iso(incident.opened_at),
        "resolved_at": iso(incident.resolved_at),
        "reminders": incident.reminders,
        "link": incident.link,
        "tags": list(incident.tags),
        "evidence": [evidence_dict(e) for e in incident.evidence],
    }


def redacted(incident: Incident) -> Incident:
    """The incident with every text field passed through cxtest.logs.redact."""
    evidence = tuple(
        dataclasses.replace(
            e,
            message=redact(e.message),
            location=redact(e.location),
            artifacts=tuple(redact(a) for a in e.artifacts),
        )
        for e in incident.evidence
    )
    return dataclasses.replace(
        incident,
        key=redact(incident.key),
        scenario_id=redact(incident.scenario_id),
        scenario_name=redact(incident.scenario_name),
        location=redact(incident.location) if incident.location else incident.location,
        summary=redact(incident.summary),
        link=redact(incident.link),
        tags=tuple(redact(t) for t in incident.tags),
        evidence=evidence,
    )


# --------------------------------------------------------------------------- the HTTP boundary


def excerpt(response: httpx.Response) -> str:
    """The start of a response body, redacted, at most EXCERPT_CHARS characters."""
    try:
        text = response.text
    except Exception:  # noqa: BLE001 - undecodable bytes
        text = repr(response.content[:EXCERPT_CHARS])
    return clip(redact(text.strip()), EXCERPT_CHARS)


def shown_url(url: str, *, secret: bool = False) -> str:
    """A URL as error messages show it: no query; only scheme and host when the path is a credential."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<bad URL>"
    origin = f"{parsed.scheme}://{parsed.netloc.decode()}"
    return redact(origin if secret else origin + parsed.path)


def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


async def deliver(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    body: bytes,
    *,
    who: str,
    headers: Mapping[str, str] | None = None,
    auth: httpx.Auth | tuple[str, str] | None = None,
    secret_url: bool = False,
) -> httpx.Response:
    """Send one JSON request; the 2xx response, or NotifierError saying whether a retry can help.

    `who` names the notifier in messages (`oncall (pagerduty)`); `secret_url` hides the
    URL's path in messages (Slack and Teams webhook URLs are credentials).
    """
    where = f"{method} {shown_url(url, secret=secret_url)}"
    all_headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    delivery = current_delivery.get()
    if delivery is not None:
        all_headers["X-Cxtest-Delivery"] = str(delivery)
    try:
        response = await client.request(method, url, content=body, headers=all_headers, auth=auth)
    except httpx.TimeoutException as exc:
        raise NotifierError(f"{who}: {where} timed out ({type(exc).__name__})", retryable=True) from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise NotifierError(f"{who}: {where}: bad URL: {redact(str(exc))}", retryable=False) from None
    except httpx.ConnectError as exc:
        raise NotifierError(f"{who}: {where}: cannot connect: {redact(str(exc)) or type(exc).__name__}", retryable=True) from None
    except httpx.TransportError as exc:
        raise NotifierError(f"{who}: {where}: {type(exc).__name__}: {redact(str(exc))}", retryable=True) from None
    if response.is_success:
        return response
    text = excerpt(response)
    status = response.status_code
    retry = retryable_status(status)
    advice = "will retry" if retry else "not retried: fix the settings or the payload"
    raise NotifierError(
        f"{who}: {where} answered HTTP {status} ({advice}): {text}" if text else f"{who}: {where} answered HTTP {status} ({advice})",
        status_code=status,
        excerpt=text,
        retryable=retry,
    )


def json_bytes(body: JSON) -> bytes:
    """The exact bytes sent (and, for the webhook, signed): compact UTF-8 JSON."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def response_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------- the shared implementation


class BaseNotifier:
    """What every notifier shares: settings, `send` through `deliver`, and hooks to override.

    A subclass sets `type` and `settings_model`, writes `payload`, and overrides
    `endpoint` (method and URL for a change), `headers`, `auth` or `ref_from` as needed.
    """

    type: ClassVar[str]
    settings_model: ClassVar[type[Settings]]
    resend_every: ClassVar[float | None] = None
    secret_url: ClassVar[bool] = False  # the URL itself is a credential: messages show only its host

    def __init__(self, name: str, settings: Settings | Mapping[str, Any]):
        self.name = name
        self.settings = settings if isinstance(settings, self.settings_model) else self.settings_model.model_validate(settings)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def who(self) -> str:
        return f"{self.name} ({self.type})"

    # -- to override

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> JSON:
        raise NotImplementedError

    def endpoint(self, incident: Incident, change: Change, ref: str | None) -> tuple[str, str]:
        """(HTTP method, URL) for this change."""
        raise NotImplementedError

    def headers(self, body: bytes) -> dict[str, str]:
        return {}

    def auth(self) -> httpx.Auth | tuple[str, str] | None:
        return None

    def ref_from(self, response: httpx.Response, change: Change, ref: str | None) -> str | None:
        """The receiver's id for this incident, when it returns one that later changes need."""
        return ref

    # -- shared

    async def send(
        self, client: httpx.AsyncClient, incident: Incident, change: Change, ref: str | None = None
    ) -> Receipt:
        change = Change(change)
        method, url = self.endpoint(incident, change, ref)
        body = json_bytes(self.payload(incident, change, ref))
        response = await deliver(
            client, method, url, body, who=self.who, headers=self.headers(body), auth=self.auth(), secret_url=self.secret_url
        )
        return Receipt(response.status_code, excerpt(response), self.ref_from(response, change, ref))


def join_url(base: str, path: str) -> str:
    """`base` without trailing slashes + `path` (which starts with /)."""
    return base.rstrip("/") + path


LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
