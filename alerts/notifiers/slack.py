"""`type: slack` — a Slack incoming webhook with a Block Kit message.

Format: https://api.slack.com/messaging/webhooks (POST JSON `text` + `blocks`; 200 "ok";
400 invalid_payload, 403 action_prohibited, 404 no_service / channel_not_found, 410 channel_is_archived)
and https://api.slack.com/reference/block-kit/blocks (header: plain_text <= 150 chars;
section: text <= 3000, fields <= 10 of <= 2000; context elements <= 10; <= 50 blocks).
`text` is the notification and screen-reader fallback, so it says everything without colour.
mrkdwn needs &, < and > escaped: https://api.slack.com/reference/surfaces/formatting#escaping
"""

from __future__ import annotations

from typing import Any, ClassVar

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
    newest,
    one_line,
    open_for,
    redacted,
    summary_text,
)

#: Evidence lines shown in the message (the newest first); the incident link has them all.
MAX_EVIDENCE = 3


class SlackSettings(Settings):
    """`notifiers.<name>` with `type: slack`."""

    webhook_url: HttpUrl  # https://hooks.slack.com/services/T.../B.../... (a credential: use ${env:...})


def mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _field(title: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": clip(f"*{title}*\n{mrkdwn(value)}", 2000)}


class SlackNotifier(BaseNotifier):
    type: ClassVar[str] = "slack"
    settings_model: ClassVar[type[Settings]] = SlackSettings
    secret_url: ClassVar[bool] = True
    settings: SlackSettings

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> JSON:
        incident, change = redacted(incident), Change(change)
        fields = [
            _field("Scenario", incident.scenario_id),
            _field("Severity", incident.severity),
            _field("Rule", incident.rule),
            _field("Location", incident.location or "all"),
            _field("Opened", iso(incident.opened_at) or ""),
        ]
        if change is Change.resolved:
            fields.append(_field("Resolved", f"{iso(incident.resolved_at)} (open {open_for(incident)})"))
        elif change is Change.reminded:
            fields.append(_field("Reminder", str(incident.reminders)))
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": clip(headline(incident, change), 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": clip(mrkdwn(summary_text(incident, change)) or " ", 3000)}},
            {"type": "section", "fields": fields},
        ]
        if incident.evidence and change is not Change.resolved:
            lines = [f"• {mrkdwn(evidence_line(e))}" for e in newest(incident.evidence, MAX_EVIDENCE)]
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": clip("*Evidence*\n" + "\n".join(lines), 3000)}})
        if incident.link:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{incident.link}|Open the incident in cxtest>"}]})
        text = one_line(incident, change)
        if change is Change.resolved:
            text += f"; open for {open_for(incident)}"
        if incident.link:
            text += f" {incident.link}"
        return {"text": mrkdwn(text), "blocks": blocks}

    def endpoint(self, incident: Incident, change: Change, ref: str | None) -> tuple[str, str]:
        return "POST", self.settings.webhook_url
