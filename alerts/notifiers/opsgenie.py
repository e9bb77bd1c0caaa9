"""`type: opsgenie` — Opsgenie Alert API v2.

Format: https://docs.opsgenie.com/docs/alert-api
Create Alert: POST /v2/alerts, header `Authorization: GenieKey <key>`, JSON message (<= 130 chars,
required), alias (<= 512, de-duplication: one open alert per alias), description (<= 15000),
tags (<= 20 of <= 50 chars), details (string -> string), entity, source, priority P1..P5.
Close Alert: POST /v2/alerts/{identifier}/close?identifierType=alias with source, note.
Both answer 202 {"result": "Request will be processed", "requestId": ...}.
EU accounts use https://api.eu.opsgenie.com as `url`.

opened and reminded -> create with alias = incident key (a reminder re-creates the alert if it
was closed in Opsgenie meanwhile, else only bumps its count); resolved -> close by alias.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import Field

from alerts.model import Change, Incident
from alerts.notifiers.base import (
    JSON,
    BaseNotifier,
    HttpUrl,
    Settings,
    clip,
    evidence_line,
    headline,
    iso,
    join_url,
    one_line,
    open_for,
    redacted,
)

DEFAULT_URL = "https://api.opsgenie.com"
PRIORITIES = {"critical": "P1", "error": "P2", "warning": "P3", "info": "P5"}


class OpsgenieSettings(Settings):
    """`notifiers.<name>` with `type: opsgenie`."""

    api_key: str = Field(min_length=1)  # key of an API integration
    url: HttpUrl = DEFAULT_URL  # API base; https://api.eu.opsgenie.com for EU accounts
    tags: tuple[str, ...] = ()  # added to every alert's tags


class OpsgenieNotifier(BaseNotifier):
    type: ClassVar[str] = "opsgenie"
    settings_model: ClassVar[type[Settings]] = OpsgenieSettings
    settings: OpsgenieSettings

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> JSON:
        incident, change = redacted(incident), Change(change)
        if change is Change.resolved:
            after = open_for(incident)
            note = f"{headline(incident, change)} at {iso(incident.resolved_at)}" + (f" after {after}" if after else "")
            return {"source": "cxtest", "note": note}
        lines = [incident.summary, ""]
        if incident.evidence:
            lines += ["Evidence:", *(f"- {evidence_line(e)}" for e in incident.evidence), ""]
        if incident.link:
            lines.append(f"Incident: {incident.link}")
        tags = ["cxtest", incident.rule, *self.settings.tags, *incident.tags]
        details = {
            "scenario": incident.scenario_name,
            "scenario_id": incident.scenario_id,
            "rule": incident.rule,
            "location": incident.location or "",
            "severity": incident.severity,
            "opened_at": iso(incident.opened_at) or "",
            "reminders": str(incident.reminders),
            "link": incident.link,
        }
        return {
            "message": clip(one_line(incident, change), 130),
            "alias": clip(incident.key, 512),
            "description": clip("\n".join(lines).strip(), 15000),
            "tags": list(dict.fromkeys(clip(t, 50) for t in tags))[:20],
            "details": {k: clip(v, 1000) for k, v in details.items() if v},
            "entity": clip(incident.scenario_id, 512),
            "source": "cxtest",
            "priority": PRIORITIES.get(incident.severity, "P3"),
        }

    def endpoint(self, incident: Incident, change: Change, ref: str | None) -> tuple[str, str]:
        if change is Change.resolved:
            alias = quote(clip(redacted(incident).key, 512), safe="")
            return "POST", join_url(self.settings.url, f"/v2/alerts/{alias}/close?identifierType=alias")
        return "POST", join_url(self.settings.url, "/v2/alerts")

    def headers(self, body: bytes) -> dict[str, Any]:
        return {"Authorization": f"GenieKey {self.settings.api_key}"}
