"""The live view of a stress exercise: a table a person watches, or one JSON line a second for machines.

Both come from the same figures: the last second (users, iterations a second) and the
totals so far (outcomes, percentiles per step and per measure, errors by reason, the
thresholds as they stand).
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from cxtest.checks import show_measure
from cxtest.stress.plan import StressPlan
from cxtest.stress.stats import Metrics
from cxtest.stress.thresholds import Verdict

PERCENTILES = ("p50", "p95", "p99")
TOP_ERRORS = 5


def _seconds(value: float | None) -> str:
    return "-" if value is None else show_measure("duration", value)


def timed_metrics(totals: Metrics) -> list[str]:
    """The run's duration, then each step's, then the measures (not per step): what the table and report show."""
    names = totals.names()
    steps = sorted(n for n in names if n.startswith("step:") and n.endswith(".duration") and not _is_kind(n, totals))
    measures = sorted(n for n in names if not n.startswith("step:") and n != "duration")
    return ["duration", *steps, *measures]


def _is_kind(name: str, totals: Metrics) -> bool:
    kinds = getattr(totals, "step_kinds", None) or ()
    return name[len("step:"):].rpartition(".")[0] in kinds


def _show(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return show_measure(name.rpartition(".")[2] if name.startswith("step:") else name, value)


def render(plan: StressPlan, t: float, users: int, per_second: float, totals: Metrics, verdicts: list[Verdict]) -> Group:
    """The live table: where the shape is, outcomes, percentiles, errors, thresholds."""
    finished = sum(totals.runs.values())
    head = Text.assemble(
        (f"{t:6.1f}s / {plan.length:g}s", "bold"),
        f"   users {users}   iterations/s {per_second:.1f}   finished {finished}",
        f"   dropped {totals.dropped}" if totals.dropped else "",
    )
    outcomes = Text("   ".join(f"{name} {count}" for name, count in sorted(totals.runs.items())) or "no iteration finished yet")
    figures = Table("metric", *PERCENTILES, "max", "count", box=None, pad_edge=False, show_edge=False)
    for name in timed_metrics(totals)[:14]:
        found = totals.summary(name) or {}
        figures.add_row(name, *(_show(name, found.get(p)) for p in (*PERCENTILES, "max")), f"{found.get('count', 0):.0f}")
    parts: list[Any] = [head, outcomes, figures]
    if totals.errors:
        errors = Table("errors", "count", box=None, pad_edge=False, show_edge=False)
        for reason, count in totals.errors.most_common(TOP_ERRORS):
            errors.add_row(Text(reason[:110]), str(count))
        parts.append(errors)
    for verdict in verdicts:
        parts.append(Text(("✓ " if verdict.ok else "✗ ") + verdict.text, style="green" if verdict.ok else "red"))
    return Group(*parts)


def json_line(t: float, users: int, per_second: float, totals: Metrics, verdicts: list[Verdict]) -> dict[str, Any]:
    """The same figures as one JSON object (seconds for durations)."""
    return {
        "t": round(t, 3),
        "users": users,
        "iterations_per_second": round(per_second, 3),
        "runs": dict(totals.runs),
        "dropped": totals.dropped,
        "checks": dict(totals.checks),
        "metrics": {name: totals.summary(name) for name in totals.names()},
        "errors": dict(totals.errors.most_common(TOP_ERRORS)),
        "thresholds": [{"threshold": v.threshold.text, "seen": v.seen, "ok": v.ok} for v in verdicts],
    }
