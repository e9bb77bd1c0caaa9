"""Per-inventory summaries of phone results: outcome classes, post-dial delay, worst numbers, trend.

A phone scenario file expands into one scenario per number, so one inventory's results
share the scenario id prefix before the last "/". Everything here is a pure function over
plain Results; the previous results (for the trend) come in as a mapping scenario_id ->
the newest earlier Result of that number, fetched from the store by the caller.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from cxtest.model import CheckResult, Outcome, Result

# The classes a call can end in (the connect step's "outcome" check), in display order;
# "error" is ours: a result without that check (a crash, a bad trunk set-up).
CLASSES: tuple[str, ...] = (
    "answered",
    "announcement",
    "busy",
    "no_answer",
    "rejected",
    "unavailable",
    "not_found",
    "auth_failed",
    "unreachable",
    "error",
)
CLASS_COLOURS = {  # distinct by hue or lightness, since neighbours share a stacked bar
    "answered": "#16a34a",
    "announcement": "#0891b2",
    "busy": "#f59e0b",
    "no_answer": "#a16207",
    "rejected": "#dc2626",
    "unavailable": "#db2777",
    "not_found": "#991b1b",
    "auth_failed": "#a855f7",
    "unreachable": "#4c1d95",
    "error": "#6b7280",
}
_OTHER_COLOUR = "#9ca3af"  # a class this module does not know yet
COUNTED_OUTCOMES = (Outcome.passed, Outcome.degraded, Outcome.failed, Outcome.error)
# A number "fails" for the trend when it failed or could not be tested: either way it did not work.
_NOT_WORKING = frozenset({Outcome.failed, Outcome.error})
PERCENTILES = (50, 90, 95)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class PddStats:
    """Post-dial delay over the calls that measured one, in seconds."""

    count: int
    min: float
    p50: float
    p90: float
    p95: float
    max: float


@dataclass(frozen=True, slots=True)
class NumberRow:
    """One number of the inventory as the worst-first table shows it."""

    scenario_id: str
    number: str
    name: str  # the inventory row's name, "" when it had none
    outcome: Outcome
    call_class: str
    expected_class: str | None
    pdd: float | None
    time_to_answer: float | None
    similarity: float | None
    quality: float | None
    flaky: bool
    message: str
    trend: str = ""  # "new failure", "recovered", "still failing", or "" (no change worth a word, or no previous)
    class_change: str = ""  # e.g. "busy -> answered"
    pdd_change: float | None = None  # this PDD minus the previous one, seconds


@dataclass(frozen=True, slots=True)
class Trend:
    """This run of an inventory against the previous results of the same numbers."""

    compared: int  # numbers with a previous result; 0 means there was no previous run
    previous_at: datetime | None  # when the newest previous result started
    passed_delta: int | None  # passed now minus passed then, over the compared numbers
    pdd_p50_delta: float | None
    pdd_p95_delta: float | None
    new_failures: int = 0
    recovered: int = 0
    still_failing: int = 0
    class_changes: int = 0

    @property
    def has_previous(self) -> bool:
        return self.compared > 0


NO_TREND = Trend(compared=0, previous_at=None, passed_delta=None, pdd_p50_delta=None, pdd_p95_delta=None)


@dataclass(frozen=True, slots=True)
class InventorySummary:
    inventory: str  # the scenario id prefix, e.g. "demo/phone_numbers"
    name: str  # the scenario's name, e.g. "Acme published numbers"
    outcomes: dict[str, int]  # passed / degraded / failed / error -> numbers
    classes: dict[str, int]  # outcome class -> numbers, in CLASSES order, only classes seen
    pdd: PddStats | None
    numbers: tuple[NumberRow, ...]  # worst first
    trend: Trend

    @property
    def total(self) -> int:
        return len(self.numbers)

    @property
    def not_passing(self) -> tuple[NumberRow, ...]:
        return tuple(row for row in self.numbers if row.outcome is not Outcome.passed)


# --------------------------------------------------------------------------- reading one result


def is_phone(result: Result) -> bool:
    return result.channel == "phone"


def inventory_of(result: Result) -> str:
    return result.scenario_id.rpartition("/")[0]


def number_of(result: Result) -> str:
    return result.scenario_id.rpartition("/")[2]


def group_by_inventory(results: Sequence[Result]) -> dict[str, list[Result]]:
    """The phone results by inventory, inventories in the order they first appear."""
    groups: dict[str, list[Result]] = {}
    for result in results:
        if is_phone(result):
            groups.setdefault(inventory_of(result), []).append(result)
    return groups


def _outcome_check(result: Result) -> CheckResult | None:
    for step in result.steps:
        for check in step.checks:
            if check.name == "outcome":
                return check
    return None


def call_class(result: Result) -> str:
    """The class the call ended in (the connect step's "outcome" check); "error" when there is none."""
    check = _outcome_check(result)
    if check is None or not isinstance(check.actual, str) or not check.actual:
        return "error"
    return check.actual


def _measure(result: Result, name: str) -> float | None:
    """The run-level measure (the worst over the steps), else the first step that has it."""
    value = result.measures.get(name)
    if value is None:
        value = next((s.measures[name] for s in result.steps if name in s.measures), None)
    if value is None or value != value:  # NaN: measured nothing usable
        return None
    return float(value)


def _names(results: Sequence[Result]) -> tuple[str, dict[str, str]]:
    """The inventory's name and each number's row name, from "<scenario name>: <row name or number>"."""
    inventory_name = ""
    row_names: dict[str, str] = {}
    for result in results:
        # rpartition: the loader appends the row's name last, so the scenario's own ": " stays whole.
        head, sep, tail = result.scenario_name.rpartition(": ")
        if not sep:
            head, tail = result.scenario_name, ""
        inventory_name = inventory_name or head
        row_names[result.scenario_id] = "" if tail == number_of(result) else tail
    return inventory_name, row_names


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), over values sorted ascending."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = (len(sorted_values) - 1) * p / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def pdd_stats(values: Sequence[float]) -> PddStats | None:
    ordered = sorted(values)
    if not ordered:
        return None
    p50, p90, p95 = (percentile(ordered, p) for p in PERCENTILES)
    return PddStats(count=len(ordered), min=ordered[0], p50=p50, p90=p90, p95=p95, max=ordered[-1])


def count_classes(classes: Sequence[str]) -> dict[str, int]:
    """Counts in CLASSES order; classes this module does not know follow, alphabetically."""
    counts: dict[str, int] = {}
    for name in sorted(set(classes), key=_class_position):
        counts[name] = sum(1 for c in classes if c == name)
    return counts


def _class_position(name: str) -> tuple[int, str]:
    return (CLASSES.index(name), "") if name in CLASSES else (len(CLASSES), name)


def class_colour(name: str) -> str:
    return CLASS_COLOURS.get(name, _OTHER_COLOUR)


# --------------------------------------------------------------------------- trend


def number_trend(now: Result, before: Result | None) -> tuple[str, str, float | None]:
    """(trend word, class change, PDD change) of one number against its previous result."""
    if before is None:
        return "", "", None
    failing_now, failing_then = now.outcome in _NOT_WORKING, before.outcome in _NOT_WORKING
    if failing_now and failing_then:
        word = "still failing"
    elif failing_now:
        word = "new failure"
    elif failing_then:
        word = "recovered"
    else:
        word = ""
    class_now, class_then = call_class(now), call_class(before)
    change = f"{class_then} -> {class_now}" if class_now != class_then else ""
    pdd_now, pdd_then = _measure(now, "post_dial_delay"), _measure(before, "post_dial_delay")
    pdd_change = pdd_now - pdd_then if pdd_now is not None and pdd_then is not None else None
    return word, change, pdd_change


def _delta(now: PddStats | None, then: PddStats | None, field: str) -> float | None:
    if now is None or then is None:
        return None
    return getattr(now, field) - getattr(then, field)


def inventory_trend(results: Sequence[Result], previous: Mapping[str, Result], rows: Sequence[NumberRow]) -> Trend:
    """Inventory-level deltas over the numbers that have a previous result."""
    pairs = [(r, previous[r.scenario_id]) for r in results if r.scenario_id in previous]
    if not pairs:
        return NO_TREND
    passed_now = sum(1 for now, _ in pairs if now.outcome is Outcome.passed)
    passed_then = sum(1 for _, then in pairs if then.outcome is Outcome.passed)
    # Percentiles over the same numbers on both sides: a number added since then must not move them.
    stats_now = pdd_stats([v for now, _ in pairs if (v := _measure(now, "post_dial_delay")) is not None])
    stats_then = pdd_stats([v for _, then in pairs if (v := _measure(then, "post_dial_delay")) is not None])
    words = [row.trend for row in rows]
    return Trend(
        compared=len(pairs),
        previous_at=max(then.started_at for _, then in pairs),
        passed_delta=passed_now - passed_then,
        pdd_p50_delta=_delta(stats_now, stats_then, "p50"),
        pdd_p95_delta=_delta(stats_now, stats_then, "p95"),
        new_failures=words.count("new failure"),
        recovered=words.count("recovered"),
        still_failing=words.count("still failing"),
        class_changes=sum(1 for row in rows if row.class_change),
    )


# --------------------------------------------------------------------------- the summary


def number_row(result: Result, row_name: str, before: Result | None) -> NumberRow:
    check = _outcome_check(result)
    trend, class_change, pdd_change = number_trend(result, before)
    return NumberRow(
        scenario_id=result.scenario_id,
        number=number_of(result),
        name=row_name,
        outcome=result.outcome,
        call_class=call_class(result),
        expected_class=check.expected if check is not None and isinstance(check.expected, str) else None,
        pdd=_measure(result, "post_dial_delay"),
        time_to_answer=_measure(result, "time_to_answer"),
        similarity=_measure(result, "similarity"),
        quality=_measure(result, "quality"),
        flaky=result.flaky,
        message=result.message,
        trend=trend,
        class_change=class_change,
        pdd_change=pdd_change,
    )


def worst_first_key(row: NumberRow) -> tuple[int, tuple[int, str], float, str]:
    """Outcome (worst first), then class (alike failures together), then PDD (slowest first)."""
    return (-row.outcome.rank, _class_position(row.call_class), -(row.pdd if row.pdd is not None else -1.0), row.number)


def summarize_inventory(
    inventory: str, results: Sequence[Result], previous: Mapping[str, Result] | None = None
) -> InventorySummary:
    previous = previous or {}
    name, row_names = _names(results)
    rows = sorted(
        (number_row(r, row_names[r.scenario_id], previous.get(r.scenario_id)) for r in results),
        key=worst_first_key,
    )
    outcomes = {o.value: sum(1 for r in results if r.outcome is o) for o in COUNTED_OUTCOMES}
    return InventorySummary(
        inventory=inventory,
        name=name or inventory,
        outcomes=outcomes,
        classes=count_classes([row.call_class for row in rows]),
        pdd=pdd_stats([row.pdd for row in rows if row.pdd is not None]),
        numbers=tuple(rows),
        trend=inventory_trend(results, previous, rows),
    )


def summarize_inventories(
    results: Sequence[Result], previous: Mapping[str, Result] | None = None
) -> list[InventorySummary]:
    """One summary per inventory among `results` (non-phone results are ignored)."""
    return [summarize_inventory(inv, members, previous) for inv, members in group_by_inventory(results).items()]


# --------------------------------------------------------------------------- words


def signed_seconds(value: float) -> str:
    """"+120ms", "-1.5s": a change of a duration."""
    sign = "+" if value >= 0 else "-"
    magnitude = abs(value)
    return f"{sign}{magnitude * 1000:.0f}ms" if magnitude < 1 else f"{sign}{magnitude:.2f}".rstrip("0").rstrip(".") + "s"


def pdd_change_text(row: NumberRow) -> str:
    """"+200ms" when the number's PDD moved by a millisecond or more since its previous result, else ""."""
    if row.pdd_change is None or abs(row.pdd_change) < 0.0005:
        return ""
    return signed_seconds(row.pdd_change)


def trend_text(trend: Trend) -> str:
    """One line: "vs 2025-03-01 09:30 (300 numbers): passed -3, PDD p50 +40ms, p95 +120ms; 3 new failures, ..."."""
    if not trend.has_previous:
        return "no previous run"
    parts = [f"passed {trend.passed_delta:+d}"]
    if trend.pdd_p50_delta is not None:
        parts.append(f"PDD p50 {signed_seconds(trend.pdd_p50_delta)}")
    if trend.pdd_p95_delta is not None:
        parts.append(f"p95 {signed_seconds(trend.pdd_p95_delta)}")
    changes = [
        f"{count} {word}"
        for count, word in (
            (trend.new_failures, "new failure(s)"),
            (trend.recovered, "recovered"),
            (trend.still_failing, "still failing"),
            (trend.class_changes, "class change(s)"),
        )
        if count
    ]
    when = trend.previous_at.strftime("%Y-%m-%d %H:%M") if trend.previous_at else "the previous run"
    text = f"vs {when} ({trend.compared} numbers): {', '.join(parts)}"
    return text + ("; " + ", ".join(changes) if changes else "; no number changed outcome")


# --------------------------------------------------------------------------- plots


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={k: None for k in ("Creator", "Date", "Format", "Type")})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _plain_axes(ax: Any) -> None:
    ax.grid(axis="x", color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def pdd_histogram_svg(summary: InventorySummary, bins: int = 30) -> str:
    """PDD histogram stacked by outcome class (the class bar's colours), p50 and p95 marked; "" without PDDs."""
    if summary.pdd is None:
        return ""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global backend state, thread-safe
    from matplotlib.ticker import MaxNLocator

    by_class: dict[str, list[float]] = {}
    for row in summary.numbers:
        if row.pdd is not None:
            by_class.setdefault(row.call_class, []).append(row.pdd)
    names = sorted(by_class, key=_class_position)
    top = summary.pdd.max if summary.pdd.max > 0 else 1.0
    from .html import _CHART_RC  # here, not at the top: html imports this module

    with matplotlib.rc_context(_CHART_RC):
        fig = Figure(figsize=(6.4, 2.6), layout="constrained")
        ax = fig.add_subplot()
        ax.hist(
            [by_class[n] for n in names],
            bins=bins,
            range=(0.0, top),
            stacked=True,
            color=[class_colour(n) for n in names],
            label=names,
            edgecolor="white",
            linewidth=0.4,
        )
        for label, value in (("p50", summary.pdd.p50), ("p95", summary.pdd.p95)):
            ax.axvline(value, color="#374151", linestyle="--", linewidth=0.8)
            ax.annotate(f"{label} {value * 1000:.0f}ms", (value, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -10), textcoords="offset points", fontsize=7)
        ax.set_xlim(left=0)
        ax.set_xlabel("post-dial delay (s): INVITE to the first 180/183/200")
        ax.set_ylabel("numbers")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _plain_axes(ax)
        ax.legend(frameon=False, fontsize=7)
        return _svg(fig)


def class_bar_svg(summary: InventorySummary) -> str:
    """One bar per outcome class, its count at the end, coloured as in the PDD histogram."""
    if not summary.classes:
        return ""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = list(summary.classes)
    counts = [summary.classes[n] for n in names]
    from .html import _CHART_RC  # here, not at the top: html imports this module

    with matplotlib.rc_context(_CHART_RC):
        fig = Figure(figsize=(4.2, max(1.2, 0.28 * len(names) + 0.7)), layout="constrained")
        ax = fig.add_subplot()
        ys = list(range(len(names)))
        ax.barh(ys, counts, height=0.7, color=[class_colour(n) for n in names], linewidth=0)
        for y, count in zip(ys, counts):
            ax.annotate(str(count), (count, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(ys, names)
        ax.set_ylim(len(names) - 0.5, -0.5)  # CLASSES order top-down
        ax.set_xlim(0, max(counts) * 1.15)
        ax.set_xlabel("numbers")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _plain_axes(ax)
        return _svg(fig)
