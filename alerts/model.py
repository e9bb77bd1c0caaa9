"""The plain data alerting passes along: incidents, the changes notifiers announce, receipts.

Rules decide, incidents remember, the outbox delivers, notifiers speak; they
share these shapes and nothing else.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

from cxtest.model import Outcome


class Change(str, enum.Enum):
    """What a notification announces about an incident."""

    opened = "opened"
    reminded = "reminded"  # still open, said again (remind_every, or a receiver that needs re-sending)
    resolved = "resolved"


class IncidentState(str, enum.Enum):
    open = "open"
    resolved = "resolved"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One result that made or kept the incident open."""

    run_id: str
    started_at: datetime
    outcome: Outcome
    message: str  # the expected-versus-actual text
    location: str
    artifacts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Incident:
    """A persisted problem with one scenario, keyed so that editing the scenario file never orphans it.

    key = scenario id + ":" + rule (+ "@" + location for per-location rules), e.g.
    "demo/status:failures" or "demo/status:degraded@eu-1".
    """

    id: int
    key: str
    scenario_id: str
    scenario_name: str
    rule: str  # failures, failure_rate, degraded, quorum
    location: str | None
    severity: str  # critical, error, warning, info
    state: IncidentState
    summary: str  # one line: what is wrong, expected versus seen
    opened_at: datetime
    resolved_at: datetime | None = None
    reminders: int = 0
    evidence: tuple[Evidence, ...] = ()
    link: str = ""  # where a person sees it (the monitor's status page)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receiver's acceptance of a notification; `ref` is its id for this incident, if it gave one
    (a ServiceNow sys_id, say) and later notifications of the same incident need it."""

    status_code: int
    excerpt: str = ""
    ref: str | None = None


# The outbox sets this around each send, so notifiers can tell receivers which delivery a request
# is (X-Cxtest-Delivery): a retry after a crash carries the same id and can be dropped as a duplicate.
current_delivery: contextvars.ContextVar[int | None] = contextvars.ContextVar("cxtest_delivery", default=None)


# --------------------------------------------------------------------------- JSON, for the store


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _from_iso(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def evidence_to_json(e: Evidence) -> dict[str, Any]:
    return {
        "run_id": e.run_id,
        "started_at": _iso(e.started_at),
        "outcome": Outcome(e.outcome).value,
        "message": e.message,
        "location": e.location,
        "artifacts": list(e.artifacts),
    }


def evidence_from_json(data: Mapping[str, Any]) -> Evidence:
    return Evidence(
        run_id=data["run_id"],
        started_at=_from_iso(data["started_at"]),  
        outcome=Outcome(data["outcome"]),
        message=data.get("message", ""),
        location=data.get("location", ""),
        artifacts=tuple(data.get("artifacts") or ()),
    )


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Evidence):
        return evidence_to_json(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def incident_to_json(incident: Incident) -> dict[str, Any]:
    """Every Incident field as JSON: datetimes ISO 8601 (UTC), enums by value, tuples as lists."""
    return {f.name: _plain(getattr(incident, f.name)) for f in fields(Incident)}


_DATETIME_FIELDS = ("opened_at", "resolved_at")


def incident_from_json(data: Mapping[str, Any]) -> Incident:
    """The Incident `incident_to_json` wrote; keys it does not know are ignored."""
    known = {f.name for f in fields(Incident)}
    values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
    for name in _DATETIME_FIELDS:
        if name in values:
            values[name] = _from_iso(values[name])
    values["state"] = IncidentState(values["state"])
    values["evidence"] = tuple(evidence_from_json(e) for e in values.get("evidence") or ())
    values["tags"] = tuple(values.get("tags") or ())
    return Incident(**values)
