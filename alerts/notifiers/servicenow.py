"""`type: servicenow` — a ServiceNow record (an incident by default) through the Table API.

Format: https://developer.servicenow.com/dev.do#!/reference/api/latest/rest/c_TableAPI
POST /api/now/table/{table} creates a record and answers 201 {"result": {"sys_id": ..., "number": ...}};
PATCH /api/now/table/{table}/{sys_id} updates it. Basic auth or an OAuth bearer token.
Incident fields used: short_description (160 chars), description, impact and urgency (1 high .. 3 low),
correlation_id / correlation_display, work_notes (a journal entry), state 6 = Resolved with
close_code ("Resolution code", e.g. "Solution provided"; older instances: "Solved (Permanently)")
and close_notes: https://www.servicenow.com/docs/ (Incident Management > Resolve and close an incident).

opened -> create, Receipt.ref = result.sys_id; reminded -> PATCH a work note; resolved -> PATCH state 6.
Reminders and the resolve need that sys_id: without it they fail and are not retried.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import httpx
from pydantic import field_validator, model_validator

from alerts.model import Change, Incident
from alerts.notifiers.base import (
    JSON,
    BaseNotifier,
    HttpUrl,
    Settings,
    clip,
    evidence_line,
    excerpt,
    headline,
    iso,
    join_url,
    one_line,
    open_for,
    redacted,
    response_json,
)
from cxtest.errors import NotifierError

#: severity -> (impact, urgency); ServiceNow derives the priority from the two.
IMPACT_URGENCY = {"critical": ("1", "1"), "error": ("2", "2"), "warning": ("2", "3"), "info": ("3", "3")}
RESOLVED_STATE = "6"
_TABLE = re.compile(r"[a-z][a-z0-9_]*")


class ServiceNowSettings(Settings):
    """`notifiers.<name>` with `type: servicenow`."""

    instance_url: HttpUrl  # e.g. https://acme.service-now.com
    user: str | None = None  # basic auth, with password
    password: str | None = None
    token: str | None = None  # or an OAuth bearer token
    table: str = "incident"
    fields: dict[str, Any] = {}  # extra fields on the created record, e.g. {assignment_group: ..., caller_id: ...}
    close_code: str = "Solution provided"  # the resolution code set on resolve

    @field_validator("table")
    @classmethod
    def _table_name(cls, table: str) -> str:
        if not _TABLE.fullmatch(table):
            raise ValueError(f"bad table name {table!r}: lower-case letters, digits and _, e.g. incident")
        return table

    @model_validator(mode="after")
    def _one_way_to_sign_in(self) -> "ServiceNowSettings":
        basic = self.user is not None or self.password is not None
        if basic and self.token is not None:
            raise ValueError("give either user and password (basic auth) or token (OAuth bearer), not both")
        if basic and (not self.user or not self.password):
            raise ValueError("basic auth needs both user and password")
        if not basic and not self.token:
            raise ValueError("give user and password (basic auth) or token (OAuth bearer)")
        return self


class ServiceNowNotifier(BaseNotifier):
    type: ClassVar[str] = "servicenow"
    settings_model: ClassVar[type[Settings]] = ServiceNowSettings
    settings: ServiceNowSettings

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> JSON:
        incident, change = redacted(incident), Change(change)
        if change is Change.resolved:
            notes = [f"{headline(incident, change)} at {iso(incident.resolved_at)} after {open_for(incident)}."]
            notes += [f"The problem was: {incident.summary}"] + ([f"Incident: {incident.link}"] if incident.link else [])
            return {"state": RESOLVED_STATE, "close_code": self.settings.close_code, "close_notes": "\n".join(notes)}
        lines = [incident.summary]
        if incident.evidence:
            lines += ["", "Evidence:", *(f"- {evidence_line(e)}" for e in incident.evidence)]
        if incident.link:
            lines += ["", f"Incident: {incident.link}"]
        if change is Change.reminded:
            return {"work_notes": f"{headline(incident, change)} (reminder {incident.reminders}): " + "\n".join(lines)}
        impact, urgency = IMPACT_URGENCY.get(incident.severity, ("2", "2"))
        details = [f"Scenario: {incident.scenario_id}", f"Rule: {incident.rule}", f"Location: {incident.location or 'all'}",
                   f"Opened: {iso(incident.opened_at)}", ""]
        return {
            "short_description": clip(one_line(incident, change), 160),
            "description": "\n".join(details + lines),
            "impact": impact,
            "urgency": urgency,
            "correlation_id": clip(incident.key, 100),
            "correlation_display": "cxtest",
            **self.settings.fields,
        }

    def endpoint(self, incident: Incident, change: Change, ref: str | None) -> tuple[str, str]:
        table_url = join_url(self.settings.instance_url, f"/api/now/table/{self.settings.table}")
        if change is Change.opened:
            return "POST", table_url
        if not ref:
            raise NotifierError(
                f"{self.who}: cannot {'resolve' if change is Change.resolved else 'update'} incident {incident.key!r}:"
                f" no sys_id of the {self.settings.table} record (the create was never accepted)",
                retryable=False,
            )
        return "PATCH", f"{table_url}/{ref}"

    def headers(self, body: bytes) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}

    def auth(self) -> tuple[str, str] | None:
        if self.settings.user and self.settings.password:
            return (self.settings.user, self.settings.password)
        return None

    def ref_from(self, response: httpx.Response, change: Change, ref: str | None) -> str | None:
        if change is not Change.opened:
            return ref
        body = response_json(response)
        result = body.get("result") if isinstance(body, dict) else None
        sys_id = result.get("sys_id") if isinstance(result, dict) else None
        if not isinstance(sys_id, str) or not sys_id:
            text = excerpt(response)
            raise NotifierError(
                f"{self.who}: HTTP {response.status_code} but no result.sys_id in the answer, so the record"
                f" cannot be updated or resolved later: {text}",
                status_code=response.status_code,
                excerpt=text,
                retryable=False,
            )
        return sys_id
