"""`type: pagerduty` — PagerDuty Events API v2 alert events.

Format: https://developer.pagerduty.com/docs/events-api-v2/trigger-events/
(routing_key, event_action trigger|acknowledge|resolve, dedup_key <= 255 chars,
payload.summary <= 1024 chars, payload.source, payload.severity critical|error|warning|info,
payload.timestamp/component/group/class/custom_details, links [{href, text}]);
responses: https://developer.pagerduty.com/docs/events-api-v2/overview/ (202 with dedup_key,
400 invalid event, 429 throttled, 5xx retry).

opened -> trigger; reminded -> trigger again with the same dedup_key (PagerDuty adds it to the
open alert, or opens a new one if someone resolved it there); resolved -> resolve.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
from pydantic import Field

from alerts.model import Change, Incident
from alerts.notifiers.base import (
    JSON,
    BaseNotifier,
    HttpUrl,
    Settings,
    clip,
    evidence_dict,
    iso,
    one_line,
    redacted,
    response_json,
)

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITIES = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


class PagerDutySettings(Settings):
    """`notifiers.<name>` with `type: pagerduty`."""

    routing_key: str = Field(min_length=1)  # the Integration Key of an Events API v2 integration
    url: HttpUrl = DEFAULT_URL  # the Events API endpoint (tests point it at 127.0.0.1)


class PagerDutyNotifier(BaseNotifier):
    type: ClassVar[str] = "pagerduty"
    settings_model: ClassVar[type[Settings]] = PagerDutySettings
    settings: PagerDutySettings

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> JSON:
        incident, change = redacted(incident), Change(change)
        event: dict[str, Any] = {
            "routing_key": self.settings.routing_key,
            "event_action": "resolve" if change is Change.resolved else "trigger",
            "dedup_key": clip(incident.key, 255),
        }
        if change is Change.resolved:
            return event
        details: dict[str, Any] = {
            "scenario": incident.scenario_name,
            "scenario_id": incident.scenario_id,
            "rule": incident.rule,
            "location": incident.location,
            "summary": incident.summary,
            "opened_at": iso(incident.opened_at),
            "reminders": incident.reminders,
            "tags": list(incident.tags),
            "evidence": [evidence_dict(e) for e in incident.evidence],
        }
        body: dict[str, Any] = {
            "summary": clip(one_line(incident, change), 1024),
            "source": incident.scenario_id,
            "severity": SEVERITIES.get(incident.severity, "error"),
            "timestamp": iso(incident.opened_at),
            "component": incident.scenario_name,
            "class": incident.rule,
            "custom_details": details,
        }
        if incident.location:
            body["group"] = incident.location
        event["payload"] = body
        event["client"] = "cxtest"
        if incident.link:
            event["client_url"] = incident.link
            event["links"] = [{"href": incident.link, "text": "cxtest incident"}]
        return event

    def endpoint(self, incident: Incident, change: Change, ref: str | None) -> tuple[str, str]:
        return "POST", self.settings.url

    def ref_from(self, response: httpx.Response, change: Change, ref: str | None) -> str | None:
        body = response_json(response)
        key = body.get("dedup_key") if isinstance(body, dict) else None
        return key if isinstance(key, str) else ref
