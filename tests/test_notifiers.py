"""Notifiers: golden payloads per receiver and change, sends to local servers, settings validation,
and a real Prometheus Alertmanager on 127.0.0.1.

Golden files live in tests/golden/notifiers/<type>-<change>.json. After a deliberate format
change, rewrite them with `CXTEST_UPDATE_GOLDEN=1 pytest tests/test_notifiers.py` and read
the diff against the vendor's documentation before committing it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from alerts.model import Change, Evidence, Incident, IncidentState, Receipt
from alerts.notifiers import (
    BaseNotifier,
    Notifier,
    build_notifiers,
    notifier_class,
    notifier_types,
    settings_problems,
)
from alerts.notifiers.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER
from cxtest import logs
from cxtest.errors import NotifierError, ScenarioError
from cxtest.loader import load_scenarios
from cxtest.model import Notifier as NotifierSettings
from cxtest.model import Outcome
from cxtest.sandbox.server import ThreadedServer
from servers import closed_port

GOLDEN = Path(__file__).parent / "golden" / "notifiers"
UPDATE_GOLDEN = os.environ.get("CXTEST_UPDATE_GOLDEN") == "1"
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")

# --------------------------------------------------------------------------- a deterministic incident

OPENED_AT = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
RESOLVED_AT = datetime(2025, 3, 14, 10, 2, 11, tzinfo=timezone.utc)
EVIDENCE = (
    Evidence(
        "run-0007",
        datetime(2025, 3, 14, 9, 16, 50, tzinfo=timezone.utc),
        Outcome.failed,
        "step 1 GET /api/status: expected status 200, got 503",
        "eu-1",
        ("artifacts/demo/status/run-0007/response.txt",),
    ),
    Evidence(
        "run-0008",
        datetime(2025, 3, 14, 9, 21, 51, tzinfo=timezone.utc),
        Outcome.failed,
        "step 1 GET /api/status: expected status 200, got 503",
        "eu-1",
    ),
    Evidence(
        "run-0009",
        datetime(2025, 3, 14, 9, 26, 52, tzinfo=timezone.utc),
        Outcome.error,
        "cannot connect to 127.0.0.1:8765: connection refused",
        "eu-1",
    ),
)
OPENED = Incident(
    id=42,
    key="demo/status:failures@eu-1",
    scenario_id="demo/status",
    scenario_name="Status page answers",
    rule="failures",
    location="eu-1",
    severity="critical",
    state=IncidentState.open,
    summary="expected status 200, got 503 (3 runs in a row)",
    opened_at=OPENED_AT,
    evidence=EVIDENCE,
    link="http://127.0.0.1:9478/incidents/42",
    tags=("billing", "release-gate"),
)
REMINDED = dataclasses.replace(OPENED, reminders=2)
RESOLVED = dataclasses.replace(OPENED, state=IncidentState.resolved, resolved_at=RESOLVED_AT, reminders=2)
INCIDENTS = {Change.opened: OPENED, Change.reminded: REMINDED, Change.resolved: RESOLVED}

# Settings as cxtest.yaml would give them once ${env:...} is substituted (all fake).
SETTINGS: dict[str, dict[str, Any]] = {
    "webhook": {"url": "https://hooks.example.com/cx"},
    "pagerduty": {"routing_key": "R0UT1NGKEY0123456789abcdefABCDEF"},
    "opsgenie": {"api_key": "00000000-1111-2222-3333-444444444444", "tags": ["cx"]},
    "slack": {"webhook_url": "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXX"},
    "teams": {"webhook_url": "https://prod-00.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=xyz"},
    "alertmanager": {"url": "http://127.0.0.1:9093", "labels": {"team": "cx"}},
    "servicenow": {
        "instance_url": "https://acme.service-now.com",
        "user": "cxtest",
        "password": "not-a-real-password",
        "fields": {"assignment_group": "CX Operations", "caller_id": "cxtest.bot"},
    },
}
SYS_ID = "9d385017c611228701d22104cc95c371"


def make(type_name: str, **overrides: Any) -> BaseNotifier:
    return notifier_class(type_name)(f"my-{type_name}", {**SETTINGS[type_name], **overrides})


@pytest.fixture(autouse=True)
def forget_secrets() -> Iterator[None]:
    """Secrets registered by a test do not redact text in the next."""
    yield
    logs.forget_secrets()


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables: keep every request on 127.0.0.1.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- registry


def test_every_receiver_type_is_registered_and_meets_the_protocol() -> None:
    """The registry names the seven receivers; each class has a settings model and builds a Notifier."""
    assert sorted(notifier_types()) == ["alertmanager", "opsgenie", "pagerduty", "servicenow", "slack", "teams", "webhook"]
    for type_name, cls in notifier_types().items():
        assert cls.type == type_name
        assert cls.settings_model.model_config.get("extra") == "forbid"
        assert cls.settings_model.model_config.get("frozen") is True
        assert isinstance(make(type_name), Notifier)


def test_only_alertmanager_asks_to_be_resent_while_open() -> None:
    """`resend_every` is 60 s for Alertmanager (it expires alerts without endsAt) and None elsewhere."""
    assert {t: c.resend_every for t, c in notifier_types().items()} == {
        "webhook": None,
        "pagerduty": None,
        "opsgenie": None,
        "slack": None,
        "teams": None,
        "alertmanager": 60.0,
        "servicenow": None,
    }


def test_build_notifiers_from_project_settings() -> None:
    """build_notifiers turns cxtest.model.Notifier entries into notifiers named by their key."""
    built = build_notifiers(
        {
            "oncall": NotifierSettings(type="pagerduty", routing_key="R0UT1NGKEY0123456789abcdefABCDEF"),
            "ops-hook": NotifierSettings(type="webhook", url="https://hooks.example.com/cx", secret="s3cret-value"),
        }
    )
    assert {name: (type(n).__name__, n.name) for name, n in built.items()} == {
        "oncall": ("PagerDutyNotifier", "oncall"),
        "ops-hook": ("WebhookNotifier", "ops-hook"),
    }
    assert built["ops-hook"].settings.secret == "s3cret-value"


def test_build_notifiers_refuses_bad_settings_naming_each_problem() -> None:
    """Unvalidated bad settings raise ValueError listing every entry's problem, never a half-built set."""
    with pytest.raises(ValueError) as caught:
        build_notifiers({"a": {"type": "pagerdty"}, "b": {"type": "slack"}})
    assert str(caught.value).splitlines() == [
        "bad notifier settings:",
        "notifiers.a.type: unknown notifier type 'pagerdty'; did you mean 'pagerduty'?",
        "notifiers.b.webhook_url: Field required",
    ]


# --------------------------------------------------------------------------- golden payloads


@pytest.mark.parametrize("change", list(Change), ids=lambda c: c.value)
@pytest.mark.parametrize("type_name", sorted(SETTINGS))
def test_payload_matches_golden_file(type_name: str, change: Change) -> None:
    """payload() for each receiver and change equals tests/golden/notifiers/<type>-<change>.json."""
    notifier = make(type_name)
    ref = SYS_ID if type_name == "servicenow" and change is not Change.opened else None
    payload = notifier.payload(INCIDENTS[change], change, ref)
    path = GOLDEN / f"{type_name}-{change.value}.json"
    text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with CXTEST_UPDATE_GOLDEN=1 once and review it"
    assert payload == json.loads(path.read_text())


def test_payload_is_pure() -> None:
    """The same incident and change give the same payload every time, and the incident is not changed."""
    for type_name in SETTINGS:
        notifier = make(type_name)
        before = dataclasses.replace(OPENED)
        assert notifier.payload(OPENED, Change.opened) == notifier.payload(OPENED, Change.opened)
        assert OPENED == before


def test_pagerduty_limits_summary_and_maps_severity() -> None:
    """PagerDuty: summary cut to 1024 chars, dedup_key to 255, severities map to critical/error/warning/info."""
    long = dataclasses.replace(OPENED, summary="x" * 5000, key="k" * 300, severity="warning")
    event = make("pagerduty").payload(long, Change.opened)
    assert len(event["payload"]["summary"]) == 1024 and event["payload"]["summary"].endswith("…")
    assert len(event["dedup_key"]) == 255
    assert event["payload"]["severity"] == "warning"
    for severity in ("critical", "error", "warning", "info"):
        assert make("pagerduty").payload(dataclasses.replace(OPENED, severity=severity), Change.opened)["payload"]["severity"] == severity


def test_reminder_triggers_pagerduty_again_with_the_same_dedup_key() -> None:
    """A reminder is a second trigger with the opened event's dedup_key, not a new alert."""
    notifier = make("pagerduty")
    opened, reminded = notifier.payload(OPENED, Change.opened), notifier.payload(REMINDED, Change.reminded)
    assert (opened["event_action"], reminded["event_action"]) == ("trigger", "trigger")
    assert opened["dedup_key"] == reminded["dedup_key"] == OPENED.key


def test_opsgenie_limits_and_priorities() -> None:
    """Opsgenie: message <= 130 chars, tags <= 20 of <= 50 chars, priority P1/P2/P3/P5 from severity."""
    many_tags = tuple(f"tag-{i}-" + "t" * 60 for i in range(30))
    alert = make("opsgenie").payload(dataclasses.replace(OPENED, summary="y" * 500, tags=many_tags), Change.opened)
    assert len(alert["message"]) == 130
    assert len(alert["tags"]) == 20 and all(len(t) <= 50 for t in alert["tags"])
    priorities = {s: make("opsgenie").payload(dataclasses.replace(OPENED, severity=s), Change.opened)["priority"]
                  for s in ("critical", "error", "warning", "info")}
    assert priorities == {"critical": "P1", "error": "P2", "warning": "P3", "info": "P5"}


def test_slack_escapes_mrkdwn_control_characters() -> None:
    """`<`, `>` and `&` in incident text are escaped in mrkdwn so they cannot form links or mentions."""
    payload = make("slack").payload(dataclasses.replace(OPENED, summary="<!channel> a & b"), Change.opened)
    assert "&lt;!channel&gt; a &amp; b" in payload["text"]
    assert payload["blocks"][1]["text"]["text"] == "&lt;!channel&gt; a &amp; b"


def test_incident_text_is_redacted_but_credentials_are_sent() -> None:
    """A registered secret in incident text shows as its placeholder; the routing key in the body is kept."""
    logs.register_secret("hunter2-password", "${env:APP_PASSWORD}")
    logs.register_secret(SETTINGS["pagerduty"]["routing_key"], "${env:PD_ROUTING_KEY}")
    leaky = dataclasses.replace(OPENED, summary="login failed for hunter2-password")
    for type_name in SETTINGS:
        text = json.dumps(make(type_name).payload(leaky, Change.opened), ensure_ascii=False)
        assert "hunter2-password" not in text, type_name
        assert "${env:APP_PASSWORD}" in text, type_name
    event = make("pagerduty").payload(leaky, Change.opened)
    assert event["routing_key"] == SETTINGS["pagerduty"]["routing_key"]


def test_webhook_body_template_renders_json_with_incident_fields() -> None:
    """A Jinja2 `body` template gets incident, change, ref, notifier and event, and its JSON is the payload."""
    template = textwrap.dedent(
        """\
        {"title": {{ (change ~ ": " ~ incident.scenario_name) | tojson }},
         "key": {{ incident.key | tojson }}, "severity": {{ incident.severity | tojson }},
         "runs": {{ incident.evidence | length }}, "ref": {{ ref | tojson }},
         "from": {{ notifier | tojson }}, "opened": {{ event.incident.opened_at | tojson }}}"""
    )
    payload = make("webhook", body=template).payload(OPENED, Change.opened, "abc")
    assert payload == {
        "title": "opened: Status page answers",
        "key": "demo/status:failures@eu-1",
        "severity": "critical",
        "runs": 3,
        "ref": "abc",
        "from": "my-webhook",
        "opened": "2025-03-14T09:26:53Z",
    }


def test_servicenow_resolve_without_sys_id_is_not_retried() -> None:
    """Resolving (or reminding) a ServiceNow record without its sys_id fails at once, naming the missing sys_id."""
    notifier = make("servicenow")
    for change in (Change.resolved, Change.reminded):
        with pytest.raises(NotifierError) as caught:
            notifier.endpoint(RESOLVED, change, None)
        assert caught.value.retryable is False
        assert "no sys_id of the incident record" in str(caught.value)


# --------------------------------------------------------------------------- sending to a local receiver


class Receiver:
    """A Starlette app on 127.0.0.1 that records every request and answers as told per path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: dict[str, tuple[int, Any]] = {}  # path -> (status, JSON body or text)
        self.delay = 0.0
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "raw_path": request.scope["raw_path"].decode(),
                    "query": request.url.query,
                    "headers": dict(request.headers),
                    "body": body,
                }
            )
        if self.delay:
            await asyncio.sleep(self.delay)
        status, reply = self.replies.get(request.url.path, (200, "ok"))
        if isinstance(reply, str):
            return PlainTextResponse(reply, status_code=status)
        return JSONResponse(reply, status_code=status)

    def json(self, index: int = -1) -> Any:
        return json.loads(self.requests[index]["body"])


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rx = Receiver()
    with ThreadedServer(rx.app) as server:
        yield rx, server.url


@pytest.fixture
async def client() -> Any:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as c:
        yield c


async def test_webhook_send_is_signed_over_the_exact_body(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """With `secret`, X-Cxtest-Signature is sha256=HMAC of the received body bytes; headers and method are as set."""
    rx, url = receiver
    notifier = make("webhook", url=f"{url}/hooks/cx", secret="hook-secret-123", method="put", headers={"Authorization": "Bearer t0ken"})
    before = int(time.time())
    receipt = await notifier.send(client, OPENED, Change.opened)
    assert receipt == Receipt(status_code=200, excerpt="ok", ref=None)
    [request] = rx.requests
    assert (request["method"], request["path"]) == ("PUT", "/hooks/cx")
    assert request["headers"]["authorization"] == "Bearer t0ken"
    assert request["headers"]["content-type"] == "application/json"
    expected = "sha256=" + hmac.new(b"hook-secret-123", request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"][SIGNATURE_HEADER.lower()], expected)
    assert before <= int(request["headers"][TIMESTAMP_HEADER.lower()]) <= int(time.time())
    assert json.loads(request["body"]) == notifier.payload(OPENED, Change.opened)


async def test_webhook_without_secret_is_not_signed(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """Without `secret` no signature or timestamp header is sent; the default method is POST."""
    rx, url = receiver
    await make("webhook", url=f"{url}/hooks/cx").send(client, RESOLVED, Change.resolved)
    [request] = rx.requests
    assert request["method"] == "POST"
    assert SIGNATURE_HEADER.lower() not in request["headers"] and TIMESTAMP_HEADER.lower() not in request["headers"]
    assert rx.json()["change"] == "resolved"


async def test_pagerduty_send_returns_the_dedup_key(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """PagerDuty: POST to the events URL; the 202 answer's dedup_key becomes the receipt's ref."""
    rx, url = receiver
    rx.replies["/v2/enqueue"] = (202, {"status": "success", "message": "Event processed", "dedup_key": OPENED.key})
    notifier = make("pagerduty", url=f"{url}/v2/enqueue")
    receipt = await notifier.send(client, OPENED, Change.opened)
    assert (receipt.status_code, receipt.ref) == (202, OPENED.key)
    resolved = await notifier.send(client, RESOLVED, Change.resolved, receipt.ref)
    assert resolved.status_code == 202
    assert [(r["method"], r["path"]) for r in rx.requests] == [("POST", "/v2/enqueue")] * 2
    assert [rx.json(i)["event_action"] for i in range(2)] == ["trigger", "resolve"]
    assert rx.json(0)["routing_key"] == SETTINGS["pagerduty"]["routing_key"]


async def test_opsgenie_creates_then_closes_by_alias(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """Opsgenie: create is POST /v2/alerts, close is POST /v2/alerts/<alias>/close?identifierType=alias, both with GenieKey."""
    rx, url = receiver
    accepted = (202, {"result": "Request will be processed", "took": 0.1, "requestId": "43a29c5c"})
    rx.replies["/v2/alerts"] = accepted
    notifier = make("opsgenie", url=url)
    assert (await notifier.send(client, OPENED, Change.opened)).status_code == 202
    await notifier.send(client, RESOLVED, Change.resolved)
    create, close = rx.requests
    assert (create["method"], create["path"]) == ("POST", "/v2/alerts")
    assert (close["method"], close["raw_path"], close["query"]) == (
        "POST",
        "/v2/alerts/demo%2Fstatus%3Afailures%40eu-1/close",
        "identifierType=alias",
    )
    assert create["headers"]["authorization"] == close["headers"]["authorization"] == f"GenieKey {SETTINGS['opsgenie']['api_key']}"
    assert json.loads(create["body"])["alias"] == OPENED.key


async def test_slack_send_posts_blocks_to_the_webhook(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """Slack: the Block Kit message is POSTed to the webhook URL; Slack's `ok` is the receipt excerpt."""
    rx, url = receiver
    receipt = await make("slack", webhook_url=f"{url}/services/T0000/B0000/XXXX").send(client, OPENED, Change.opened)
    assert receipt == Receipt(200, "ok", None)
    assert (rx.requests[0]["method"], rx.requests[0]["path"]) == ("POST", "/services/T0000/B0000/XXXX")
    assert rx.json()["blocks"][0]["type"] == "header"


async def test_teams_send_posts_an_adaptive_card(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """Teams: the message with one Adaptive Card attachment is POSTed to the flow URL with its query intact."""
    rx, url = receiver
    rx.replies["/workflows/abc/triggers/manual/paths/invoke"] = (202, "")
    notifier = make("teams", webhook_url=f"{url}/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=xyz")
    receipt = await notifier.send(client, OPENED, Change.opened)
    assert receipt.status_code == 202
    [request] = rx.requests
    assert request["query"] == "api-version=2016-06-01&sig=xyz"
    attachment = rx.json()["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["content"]["version"] == "1.4"


async def test_alertmanager_send_posts_a_list_of_one_alert(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """Alertmanager: POST /api/v2/alerts under the configured base URL, body a list with one alert."""
    rx, url = receiver
    await make("alertmanager", url=url + "/").send(client, OPENED, Change.opened)
    [request] = rx.requests
    assert (request["method"], request["path"]) == ("POST", "/api/v2/alerts")
    [alert] = rx.json()
    assert alert["labels"]["incident"] == OPENED.key and "endsAt" not in alert


async def test_servicenow_sys_id_round_trip(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """ServiceNow: create returns result.sys_id as ref; reminders and the resolve PATCH that record, with basic auth."""
    rx, url = receiver
    rx.replies["/api/now/table/incident"] = (201, {"result": {"sys_id": SYS_ID, "number": "INC0010001", "state": "1"}})
    notifier = make("servicenow", instance_url=url)
    created = await notifier.send(client, OPENED, Change.opened)
    assert (created.status_code, created.ref) == (201, SYS_ID)
    reminded = await notifier.send(client, REMINDED, Change.reminded, created.ref)
    resolved = await notifier.send(client, RESOLVED, Change.resolved, reminded.ref)
    assert resolved.ref == SYS_ID
    assert [(r["method"], r["path"]) for r in rx.requests] == [
        ("POST", "/api/now/table/incident"),
        ("PATCH", f"/api/now/table/incident/{SYS_ID}"),
        ("PATCH", f"/api/now/table/incident/{SYS_ID}"),
    ]
    basic = "Basic " + base64.b64encode(b"cxtest:not-a-real-password").decode()
    assert {r["headers"]["authorization"] for r in rx.requests} == {basic}
    assert "work_notes" in rx.json(1)
    assert rx.json(2)["state"] == "6" and rx.json(2)["close_code"] == "Solution provided"


async def test_servicenow_token_auth_and_missing_sys_id(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """With `token` ServiceNow gets a Bearer header; a 2xx create without result.sys_id is a non-retryable error."""
    rx, url = receiver
    rx.replies["/api/now/table/u_cx_incident"] = (201, {"result": {"number": "INC0010002"}})
    notifier = notifier_class("servicenow")("snow", {"instance_url": url, "token": "oauth-token-abc", "table": "u_cx_incident"})
    with pytest.raises(NotifierError) as caught:
        await notifier.send(client, OPENED, Change.opened)
    assert caught.value.retryable is False and caught.value.status_code == 201
    assert "no result.sys_id" in str(caught.value)
    assert rx.requests[0]["headers"]["authorization"] == "Bearer oauth-token-abc"


async def test_servicenow_resolve_without_ref_sends_nothing(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """A resolve with ref None raises a non-retryable NotifierError naming the missing sys_id, and sends no request."""
    rx, url = receiver
    with pytest.raises(NotifierError) as caught:
        await make("servicenow", instance_url=url).send(client, RESOLVED, Change.resolved, None)
    assert caught.value.retryable is False
    assert str(caught.value) == (
        "my-servicenow (servicenow): cannot resolve incident 'demo/status:failures@eu-1':"
        " no sys_id of the incident record (the create was never accepted)"
    )
    assert rx.requests == []


# --------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (401, False), (404, False)])
async def test_http_status_maps_to_retryable_or_not(
    status: int, retryable: bool, receiver: tuple[Receiver, str], client: httpx.AsyncClient
) -> None:
    """5xx and 429 are retryable NotifierErrors, other 4xx are not; both carry the status and the answer's text."""
    rx, url = receiver
    rx.replies["/v2/enqueue"] = (status, {"status": "invalid event", "message": "Event object is invalid"})
    with pytest.raises(NotifierError) as caught:
        await make("pagerduty", url=f"{url}/v2/enqueue").send(client, OPENED, Change.opened)
    error = caught.value
    assert (error.status_code, error.retryable) == (status, retryable)
    assert error.excerpt == '{"status":"invalid event","message":"Event object is invalid"}'
    assert str(error).startswith(f"my-pagerduty (pagerduty): POST {url}/v2/enqueue answered HTTP {status} (")


async def test_excerpt_is_cut_to_500_chars_and_redacted(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """A long error answer is cut to 500 characters; a secret echoed by the receiver shows as its placeholder."""
    rx, url = receiver
    logs.register_secret("echoed-secret-value", "${env:HOOK_SECRET}")
    rx.replies["/hook"] = (500, "bad token echoed-secret-value " + "z" * 2000)
    with pytest.raises(NotifierError) as caught:
        await make("webhook", url=f"{url}/hook").send(client, OPENED, Change.opened)
    assert len(caught.value.excerpt) == 500
    assert caught.value.excerpt.startswith("bad token ${env:HOOK_SECRET} zzz")
    assert "echoed-secret-value" not in str(caught.value)


async def test_closed_port_is_retryable(client: httpx.AsyncClient) -> None:
    """Connection refused is a retryable NotifierError without a status code."""
    with closed_port() as port:
        with pytest.raises(NotifierError) as caught:
            await make("alertmanager", url=f"http://127.0.0.1:{port}").send(client, OPENED, Change.opened)
    assert (caught.value.retryable, caught.value.status_code) == (True, None)
    assert f"POST http://127.0.0.1:{port}/api/v2/alerts: cannot connect" in str(caught.value)


async def test_timeout_is_retryable(receiver: tuple[Receiver, str]) -> None:
    """A receiver slower than the client's timeout gives a retryable NotifierError saying it timed out."""
    rx, url = receiver
    rx.delay = 1.0
    async with httpx.AsyncClient(timeout=0.2, trust_env=False) as short:
        with pytest.raises(NotifierError) as caught:
            await make("webhook", url=f"{url}/slow").send(short, OPENED, Change.opened)
    assert caught.value.retryable is True and "timed out" in str(caught.value)


async def test_secret_webhook_urls_are_not_shown_in_errors(receiver: tuple[Receiver, str], client: httpx.AsyncClient) -> None:
    """Slack and Teams webhook URLs are credentials: error messages show only scheme, host and port."""
    rx, url = receiver
    rx.replies["/services/T0000/B0000/SECRETPART"] = (404, "no_service")
    with pytest.raises(NotifierError) as caught:
        await make("slack", webhook_url=f"{url}/services/T0000/B0000/SECRETPART").send(client, OPENED, Change.opened)
    assert "SECRETPART" not in str(caught.value)
    assert str(caught.value) == (
        f"my-slack (slack): POST {url} answered HTTP 404 (not retried: fix the settings or the payload): no_service"
    )
    assert caught.value.retryable is False


# --------------------------------------------------------------------------- validation in cxtest.yaml

GOOD_SCENARIO = """\
name: Status is up
channel: http
target: {url: "http://127.0.0.1:9"}
steps:
  - request: GET /api/status
"""


def problems(project_yaml: str, scenario: str = GOOD_SCENARIO) -> list[str]:
    Path("cxtest.yaml").write_text(textwrap.dedent(project_yaml))
    Path("ok.yaml").write_text(scenario)
    with pytest.raises(ScenarioError) as caught:
        load_scenarios([Path("ok.yaml")])
    return [str(p) for p in caught.value.problems]


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_unknown_notifier_type_suggests_the_close_one(project_dir: Path) -> None:
    """An unknown `type` is located at its value with a did-you-mean among the notifier types."""
    assert problems(
        """\
        notifiers:
          oncall: {type: pagerdty, routing_key: abc}
        """
    ) == ["cxtest.yaml:2:18 notifiers.oncall.type: unknown notifier type 'pagerdty'; did you mean 'pagerduty'?"]


def test_unknown_type_without_close_match_lists_the_types(project_dir: Path) -> None:
    """An unknown `type` with no close match lists every notifier type."""
    assert problems("notifiers:\n  x: {type: carrier-pigeon}\n") == [
        "cxtest.yaml:2:13 notifiers.x.type: unknown notifier type 'carrier-pigeon';"
        " expected one of: alertmanager, opsgenie, pagerduty, servicenow, slack, teams, webhook"
    ]


def test_missing_unknown_and_bad_url_settings_are_each_located(project_dir: Path) -> None:
    """A missing routing_key, a misspelt key and a URL without scheme are three located problems."""
    assert problems(
        """\
        store: sqlite:///cxtest.db
        notifiers:
          oncall:
            type: pagerduty
            routing_kee: abc
            url: events.pagerduty.com/v2/enqueue
        """
    ) == [
        "cxtest.yaml:5:5 notifiers.oncall.routing_kee: unknown key 'routing_kee'; did you mean 'routing_key'?",
        "cxtest.yaml:6:10 notifiers.oncall.url: 'events.pagerduty.com/v2/enqueue' is not an http(s) URL:"
        " write it like https://host/path",
    ]


def test_missing_required_setting_points_at_the_entry(project_dir: Path) -> None:
    """A notifier without its required key is reported at the entry's mapping, naming the key."""
    assert problems("notifiers:\n  chat: {type: slack}\n") == [
        "cxtest.yaml:2:9 notifiers.chat: missing required key 'webhook_url'"
    ]


def test_servicenow_needs_one_way_to_sign_in(project_dir: Path) -> None:
    """ServiceNow without user/password or token says so at the entry."""
    assert problems("notifiers:\n  snow: {type: servicenow, instance_url: 'https://acme.service-now.com', user: me}\n") == [
        "cxtest.yaml:2:9 notifiers.snow: basic auth needs both user and password"
    ]


def test_webhook_template_that_does_not_render_json_is_reported(project_dir: Path) -> None:
    """A body template naming an unknown field, or not rendering JSON, is a validate-time problem at `body`."""
    assert problems(
        """\
        notifiers:
          hook:
            type: webhook
            url: https://hooks.example.com/cx
            body: '{"text": {{ incident.summry | tojson }}}'
          hook2:
            type: webhook
            url: https://hooks.example.com/cx
            body: 'text {{ incident.summary }}'
        """
    ) == [
        "cxtest.yaml:5:11 notifiers.hook.body: template fails when an incident is opened:"
        " 'dict object' has no attribute 'summry'",
        "cxtest.yaml:9:11 notifiers.hook2.body: template fails when an incident is opened:"
        " it does not render JSON (Expecting value at line 1 column 1): 'text expected status 200, got 503'",
    ]


def test_alertmanager_label_that_cxtest_sets_is_refused(project_dir: Path) -> None:
    """An extra Alertmanager label may not replace one cxtest sets; it is located at that label."""
    assert problems("notifiers:\n  am: {type: alertmanager, url: 'http://127.0.0.1:9093', labels: {severity: x}}\n") == [
        "cxtest.yaml:2:67 notifiers.am.labels.severity: label 'severity' is set by cxtest; pick another name"
    ]


def test_scenario_notify_names_an_undefined_notifier(project_dir: Path) -> None:
    """`alert.notify` naming a notifier cxtest.yaml does not define is located at that item, with a suggestion."""
    scenario = GOOD_SCENARIO + "alert: {notify: [pagerdty, ops-hook]}\n"
    assert problems(
        """\
        notifiers:
          pagerduty: {type: pagerduty, routing_key: abc}
          ops-hook: {type: webhook, url: "https://hooks.example.com/cx"}
        """,
        scenario,
    ) == ["ok.yaml:6:18 alert.notify[0]: unknown notifier 'pagerdty'; did you mean 'pagerduty'?"]


def test_notify_without_any_notifiers_says_none_are_defined(project_dir: Path) -> None:
    """With no `notifiers:` in cxtest.yaml, a scenario's notify name is unknown and the message says why."""
    scenario = GOOD_SCENARIO + "alert:\n  notify:\n    - oncall\n"
    assert problems("store: sqlite:///cxtest.db\n", scenario) == [
        "ok.yaml:8:7 alert.notify[0]: unknown notifier 'oncall'; cxtest.yaml defines no notifiers"
    ]


def test_defaults_notify_is_checked_in_cxtest_yaml(project_dir: Path) -> None:
    """`defaults.alert.notify` naming an undefined notifier is reported in cxtest.yaml."""
    assert problems(
        """\
        notifiers:
          ops-hook: {type: webhook, url: "https://hooks.example.com/cx"}
        defaults:
          alert: {notify: [ops-hok]}
        """
    ) == ["cxtest.yaml:4:20 defaults.alert.notify[0]: unknown notifier 'ops-hok'; did you mean 'ops-hook'?"]


def test_broken_notifier_settings_do_not_also_flag_every_scenario(project_dir: Path) -> None:
    """When cxtest.yaml does not load, scenarios' notify names are not reported as unknown on top."""
    scenario = GOOD_SCENARIO + "alert: {notify: [oncall]}\n"
    assert problems("notifiers:\n  oncall: {type: pagerduty}\n", scenario) == [
        "cxtest.yaml:2:11 notifiers.oncall: missing required key 'routing_key'"
    ]


def test_good_notifier_settings_load(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid settings with ${env:...} secrets load, and build_notifiers makes every notifier from them."""
    monkeypatch.setenv("PD_ROUTING_KEY", "R0UT1NGKEY0123456789abcdefABCDEF")
    Path("cxtest.yaml").write_text(
        textwrap.dedent(
            """\
            notifiers:
              oncall: {type: pagerduty, routing_key: "${env:PD_ROUTING_KEY}"}
              am: {type: alertmanager, url: "http://127.0.0.1:9093", labels: {team: cx}}
              snow: {type: servicenow, instance_url: "https://acme.service-now.com", token: abc}
            defaults:
              alert: {notify: [oncall]}
            """
        )
    )
    Path("ok.yaml").write_text(GOOD_SCENARIO + "alert: {notify: [am, snow]}\n")
    project, [scenario] = load_scenarios([Path("ok.yaml")])
    assert scenario.alert is not None and scenario.alert.notify == ("am", "snow")
    built = build_notifiers(project.notifiers)
    assert sorted(built) == ["am", "oncall", "snow"]
    assert built["oncall"].settings.routing_key == "R0UT1NGKEY0123456789abcdefABCDEF"


def test_settings_problems_leaves_shape_errors_to_the_project_model() -> None:
    """Entries that are not mappings or lack a text `type` are not reported twice by settings_problems."""
    assert settings_problems({"a": "nope", "b": {"routing_key": "x"}, "c": {"type": 5}}) == []
    assert settings_problems(None) == []


# --------------------------------------------------------------------------- a real Alertmanager

AM_START_TIMEOUT_S = 10.0
AM_NOTIFY_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sink:
    """Alertmanager's webhook receiver: keeps every notification it is sent."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/am", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        with self.lock:
            self.received.append(await request.json())
        return Response(status_code=200)

    def wait_for(self, status: str, timeout: float = AM_NOTIFY_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for note in self.received:
                    if note.get("status") == status:
                        return note
            time.sleep(0.1)
        raise AssertionError(f"no {status!r} notification within {timeout:g}s; got {self.received}")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, Sink]]:
    """A real Alertmanager on 127.0.0.1 whose only receiver is a webhook to a local sink; stopped by its pid."""
    if not ALERTMANAGER.exists():
        pytest.fail(f"{ALERTMANAGER} not found: run scripts/setup.sh (installs prometheus-alertmanager)", pytrace=False)
    sink = Sink()
    with ThreadedServer(sink.app) as sink_server:
        config = tmp_path / "alertmanager.yml"
        config.write_text(
            textwrap.dedent(
                f"""\
                route:
                  receiver: sink
                  group_by: [alertname, incident]
                  group_wait: 1s
                  group_interval: 1s
                  repeat_interval: 1h
                receivers:
                  - name: sink
                    webhook_configs:
                      - url: {sink_server.url}/am
                        send_resolved: true
                """
            )
        )
        port = _free_port()
        log = (tmp_path / "alertmanager.log").open("wb")
        proc = subprocess.Popen(
            [
                str(ALERTMANAGER),
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + AM_START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"alertmanager exited with {proc.returncode}:\n{(tmp_path / 'alertmanager.log').read_text()}")
                try:
                    if httpx.get(f"{url}/-/ready", timeout=1.0, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"alertmanager not ready within {AM_START_TIMEOUT_S:g}s")
                time.sleep(0.1)
            yield url, sink
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            log.close()


async def test_real_alertmanager_fires_and_resolves(alertmanager: tuple[str, Sink], client: httpx.AsyncClient) -> None:
    """Alertmanager accepts the opened alert and notifies `firing` with our labels, then `resolved` after the resolve."""
    url, sink = alertmanager
    now = datetime.now(timezone.utc).replace(microsecond=0)
    opened = dataclasses.replace(OPENED, opened_at=now - timedelta(minutes=1))
    notifier = make("alertmanager", url=url)

    receipt = await notifier.send(client, opened, Change.opened)
    assert receipt.status_code == 200
    firing = sink.wait_for("firing")
    [alert] = firing["alerts"]
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": "cxtest",
        "scenario": "demo/status",
        "rule": "failures",
        "severity": "critical",
        "incident": "demo/status:failures@eu-1",
        "location": "eu-1",
        "team": "cx",
    }
    assert alert["annotations"]["link"] == OPENED.link
    assert alert["generatorURL"] == OPENED.link

    resolved = dataclasses.replace(opened, state=IncidentState.resolved, resolved_at=datetime.now(timezone.utc))
    await notifier.send(client, resolved, Change.resolved)
    note = sink.wait_for("resolved")
    assert note["alerts"][0]["labels"]["incident"] == OPENED.key
    assert note["alerts"][0]["status"] == "resolved"
