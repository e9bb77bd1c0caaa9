"""The plain data alerting passes along: incidents, the changes notifiers announce, receipts.

Rules decide, incidents remember, the outbox delivers, notifiers speak; they
share these shapes and nothing else.
"""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass
from datetime import datetime

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
