"""`type: webhook` — any HTTP endpoint: a JSON body (cxtest's own, or a Jinja2 template), optionally HMAC-signed.

No vendor format: the default body is cxtest's documented JSON (docs/alerting.md,
"Notifiers"). With `secret`, each request carries

    X-Cxtest-Timestamp: <unix seconds when sent>
    X-Cxtest-Signature: sha256=<hex HMAC-SHA256(secret, exact body bytes)>

(the same scheme as GitHub's X-Hub-Signature-256: https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries).
A receiver verifies by computing the HMAC over the raw body it received and comparing in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BeforeValidator, field_validator

from alerts.model import Change, Evidence, Incident, IncidentState
from alerts.notifiers.base import JSON, BaseNotifier, HttpUrl, Settings, incident_dict, redacted
from cxtest.errors import NotifierError
from cxtest.model import Outcome

SIGNATURE_HEADER = "X-Cxtest-Signature"
TIMESTAMP_HEADER = "X-Cxtest-Timestamp"
BODY_VERSION = "1"


class WebhookSettings(Settings):
    """`notifiers.<name>` with `type: webhook`."""

    url: HttpUrl  # where to send
    method: Annotated[Literal["POST", "PUT", "PATCH"], BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)] = "POST"
    headers: dict[str, str] = {}  # added to every request, e.g. Authorization: "Bearer ${env:HOOK_TOKEN}"
    body: str | None = None  # a Jinja2 template that renders JSON; default: cxtest's JSON (see default_body)
    secret: str | None = None  # signs each body: X-Cxtest-Signature: sha256=<hex HMAC-SHA256>

    @field_validator("body")
    @classmethod
    def _renders_json(cls, template: str | None) -> str | None:
        """A template that fails for the sample incident would fail for real ones: say so at validate time."""
        if template is None:
            return None
        try:
            compiled = _environment().from_string(template)
        except TemplateError as exc:
            raise ValueError(f"bad template: {exc}") from None
        for change in Change:
            sample = SAMPLE_RESOLVED if change is Change.resolved else SAMPLE
            try:
                render(compiled, sample, change, None, "sample")
            except (TemplateError, ValueError, TypeError) as exc:
                raise ValueError(f"template fails when an incident is {change.value}: {exc}") from None
        return template


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.filters["tojson"] = _tojson
    return env


def _tojson(value: Any) -> str:
    """Plain JSON (Jinja's own tojson escapes <, >, & and ' for HTML); an undefined name is an error."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return json.dumps(value, ensure_ascii=False, default=str)


def default_body(incident: Incident, change: Change, name: str) -> dict[str, Any]:
    """cxtest's own webhook JSON: what changed, and the whole incident."""
    return {"version": BODY_VERSION, "source": "cxtest", "notifier": name, "change": change.value, "incident": incident_dict(incident)}


def render(template: Any, incident: Incident, change: Change, ref: str | None, name: str) -> JSON:
    """The template rendered with `incident` (a dict), `change`, `ref`, `notifier` and `event` (the default body)."""
    event = default_body(incident, change, name)
    text = template.render(incident=event["incident"], change=change.value, ref=ref, notifier=name, event=event)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"it does not render JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): {text[:200]!r}") from None


def signature(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier(BaseNotifier):
    type: ClassVar[str] = "webhook"
    settings_model: ClassVar[type[Settings]] = WebhookSettings
    settings: WebhookSettings

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> JSON:
        incident, change = redacted(incident), Change(change)
        if self.settings.body is None:
            return default_body(incident, change, self.name)
        try:
            return render(_environment().from_string(self.settings.body), incident, change, ref, self.name)
        except (TemplateError, ValueError, TypeError) as exc:
            raise NotifierError(f"{self.who}: the body template fails when an incident is {change.value}: {exc}", retryable=False) from None

    def endpoint(self, incident: Incident, change: Change, ref: str | None) -> tuple[str, str]:
        return self.settings.method, self.settings.url

    def headers(self, body: bytes) -> dict[str, str]:
        headers = dict(self.settings.headers)
        if self.settings.secret:
            headers[TIMESTAMP_HEADER] = str(int(time.time()))
            headers[SIGNATURE_HEADER] = signature(self.settings.secret, body)
        return headers


# A sample incident that templates are tried against when the settings are loaded.
_AT = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
SAMPLE = Incident(
    id=1,
    key="sample/scenario:failures",
    scenario_id="sample/scenario",
    scenario_name="Sample scenario",
    rule="failures",
    location="local",
    severity="critical",
    state=IncidentState.open,
    summary="expected status 200, got 503",
    opened_at=_AT,
    evidence=(Evidence("run-1", _AT, Outcome.failed, "expected status 200, got 503", "local"),),
    link="http://127.0.0.1:9478/incidents/1",
    tags=("sample",),
)
SAMPLE_RESOLVED = Incident(**{**{f: getattr(SAMPLE, f) for f in SAMPLE.__dataclass_fields__}, "state": IncidentState.resolved, "resolved_at": _AT})
