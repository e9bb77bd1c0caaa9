"""`type: teams` — Microsoft Teams through a Workflows webhook, with an Adaptive Card.

The URL comes from a Teams Workflows flow "Post to a channel when a webhook request is received"
(Office 365 connector webhooks are retired; Workflows accept Adaptive Cards only):
https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using
Body: https://learn.microsoft.com/en-us/connectors/teams/?tabs=text1#microsoft-teams-webhook
    {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                          "contentUrl": null, "content": <AdaptiveCard>}]}
Card schema 1.4: https://adaptivecards.io/explorer/ (TextBlock, FactSet, Action.OpenUrl).
The flow answers 202 Accepted.
"""

from __future__ import annotations

from typing import Any, ClassVar

from alerts.model import Change, Incident
from alerts.notifiers.base import (
    JSON,
    BaseNotifier,
    HttpUrl,
    Settings,
    evidence_line,
    headline,
    iso,
    newest,
    one_line,
    open_for,
    redacted,
    summary_text,
)

MAX_EVIDENCE = 3
COLOURS = {Change.opened: "Attention", Change.reminded: "Warning", Change.resolved: "Good"}


class TeamsSettings(Settings):
    """`notifiers.<name>` with `type: teams`."""

    webhook_url: HttpUrl  # the flow's HTTP URL (it carries a signature: use ${env:...})


class TeamsNotifier(BaseNotifier):
    type: ClassVar[str] = "teams"
    settings_model: ClassVar[type[Settings]] = TeamsSettings
    secret_url: ClassVar[bool] = True
    settings: TeamsSettings

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> JSON:
        incident, change = redacted(incident), Change(change)
        facts = [
            {"title": "Scenario", "value": incident.scenario_id},
            {"title": "Severity", "value": incident.severity},
            {"title": "Rule", "value": incident.rule},
            {"title": "Location", "value": incident.location or "all"},
            {"title": "Opened", "value": iso(incident.opened_at) or ""},
        ]
        if change is Change.resolved:
            facts.append({"title": "Resolved", "value": f"{iso(incident.resolved_at)} (open {open_for(incident)})"})
        elif change is Change.reminded:
            facts.append({"title": "Reminder", "value": str(incident.reminders)})
        body: list[dict[str, Any]] = [
            {
                "type": "TextBlock",
                "text": headline(incident, change),
                "size": "Large",
                "weight": "Bolder",
                "color": COLOURS[change],
                "wrap": True,
            },
            {"type": "TextBlock", "text": summary_text(incident, change), "wrap": True},
            {"type": "FactSet", "facts": facts},
        ]
        if incident.evidence and change is not Change.resolved:
            body.append({"type": "TextBlock", "text": "Evidence", "weight": "Bolder", "wrap": True})
            body += [
                {"type": "TextBlock", "text": evidence_line(e), "wrap": True, "spacing": "Small"}
                for e in newest(incident.evidence, MAX_EVIDENCE)
            ]
        card: dict[str, Any] = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "fallbackText": one_line(incident, change),
            "body": body,
            "msteams": {"width": "Full"},
        }
        if incident.link:
            card["actions"] = [{"type": "Action.OpenUrl", "title": "Open the incident in cxtest", "url": incident.link}]
        return {
            "type": "message",
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}],
        }

    def endpoint(self, incident: Incident, change: Change, ref: str | None) -> tuple[str, str]:
        return "POST", self.settings.webhook_url
