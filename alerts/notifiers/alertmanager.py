"""`type: alertmanager` — Prometheus Alertmanager, API v2 (POST /api/v2/alerts, a list of postableAlert).

Format: https://prometheus.io/docs/alerting/latest/clients/ and the OpenAPI spec
https://github.com/prometheus/alertmanager/blob/main/api/v2/openapi.yaml (postableAlert: labels,
annotations, startsAt, endsAt, generatorURL). Labels identify the alert (alertname required);
annotations are informational and always the latest received. An alert sent without endsAt
expires `resolve_timeout` (default 5m) after it was last received, so clients re-send active
alerts "on the order of 30 seconds to 3 minutes": this notifier sets `resend_every` and the
monitor re-sends open incidents (as `reminded`) that often. A resolve sends endsAt = resolved_at.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import field_validator

from alerts.model import Change, Incident
from alerts.notifiers.base import (
    JSON,
    LABEL_NAME,
    BaseNotifier,
    HttpUrl,
    Settings,
    evidence_line,
    iso,
    join_url,
    one_line,
    redacted,
)

#: Labels cxtest sets itself; `labels:` in the settings may not replace them.
OWN_LABELS = ("alertname", "scenario", "rule", "severity", "incident", "location")


class AlertmanagerSettings(Settings):
    """`notifiers.<name>` with `type: alertmanager`."""

    url: HttpUrl  # Alertmanager's base URL, e.g. http://127.0.0.1:9093
    labels: dict[str, str] = {}  # extra labels on every alert, e.g. {team: cx, env: prod}

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        for name in labels:
            if not LABEL_NAME.fullmatch(name):
                raise ValueError(f"bad label name {name!r}: use letters, digits and _, not starting with a digit")
            if name in OWN_LABELS:
                raise ValueError(f"label {name!r} is set by cxtest; pick another name")
        return labels


class AlertmanagerNotifier(BaseNotifier):
    type: ClassVar[str] = "alertmanager"
    settings_model: ClassVar[type[Settings]] = AlertmanagerSettings
    #: Seconds between re-sends of an open incident: well inside Alertmanager's default 5m resolve_timeout.
    resend_every: ClassVar[float | None] = 60.0
    settings: AlertmanagerSettings

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> JSON:
        incident, change = redacted(incident), Change(change)
        labels = {
            **self.settings.labels,
            "alertname": "cxtest",
            "scenario": incident.scenario_id,
            "rule": incident.rule,
            "severity": incident.severity,
            "incident": incident.key,
        }
        if incident.location:
            labels["location"] = incident.location
        description = "\n".join([incident.summary, *(evidence_line(e) for e in incident.evidence)])
        annotations = {"summary": one_line(incident, change), "description": description, "scenario_name": incident.scenario_name}
        alert: dict[str, Any] = {"labels": labels, "annotations": annotations, "startsAt": iso(incident.opened_at)}
        if incident.link:
            annotations["link"] = incident.link
            alert["generatorURL"] = incident.link
        if change is Change.resolved:
            alert["endsAt"] = iso(incident.resolved_at or incident.opened_at)
        return [alert]

    def endpoint(self, incident: Incident, change: Change, ref: str | None) -> tuple[str, str]:
        return "POST", join_url(self.settings.url, "/api/v2/alerts")
