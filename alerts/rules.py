"""Rules decide: a scenario's recent results in, verdicts out. Pure functions, no I/O.

Each rule is a small callable `(policy, runs, ...) -> Verdict`; `judge` picks the
rules a policy asks for and runs them per location (or across locations for the
quorum rule). A verdict says what the incident for its key should be:

    firing True   an incident should be open
    firing False  an open incident should be resolved
    firing None   not enough information either way: leave things as they are

The gap between "open after N failures" and "resolve after M passes" is the
hysteresis that keeps a flapping target from opening and resolving every run.

Words used below:

    failing   outcome failed or error (an unreachable target must alert)
    passing   outcome passed or degraded (the journey worked)
    skipped   runs that did not test anything; every rule ignores them
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from cxtest.model import AlertPolicy, Maintenance, Outcome, Result, TimeWindow

__all__ = [
    "RULES",
    "Verdict",
    "in_maintenance",
    "in_window",
    "is_degraded_or_worse",
    "is_failing",
    "is_passing",
    "judge",
    "matches",
    "rules_of",
]

FAILING = frozenset({Outcome.failed, Outcome.error})
PASSING = frozenset({Outcome.passed, Outcome.degraded})
DEGRADED_OR_WORSE = frozenset({Outcome.degraded, Outcome.failed, Outcome.error})

RULES = ("failures", "failure_rate", "degraded", "quorum")


@dataclass(frozen=True)
class Verdict:
    """What one rule concluded about one scenario (at one location, or across them for quorum)."""

    rule: str  # failures, failure_rate, degraded, quorum
    location: str | None  # None for rules that look across locations
    firing: bool | None  # True: should be open; False: should be resolved; None: leave as is
    severity: str
    summary: str  # one line: what the rule saw, then the expected-versus-actual text
    evidence: tuple[Result, ...] = ()  # the results behind the verdict, newest first


def is_failing(result: Result) -> bool:
    return result.outcome in FAILING


def is_passing(result: Result) -> bool:
    return result.outcome in PASSING


def is_degraded_or_worse(result: Result) -> bool:
    return result.outcome in DEGRADED_OR_WORSE


def is_passed(result: Result) -> bool:
    return result.outcome is Outcome.passed


# --------------------------------------------------------------------------- helpers


def _streak(runs: Sequence[Result], test: Callable[[Result], bool]) -> tuple[Result, ...]:
    """The newest runs, in order, for as long as `test` holds."""
    out = []
    for run in runs:
        if not test(run):
            break
        out.append(run)
    return tuple(out)


def _runs(word: str, n: int) -> str:
    return f"{n} {word} run" + ("" if n == 1 else "s")


def _detail(results: Iterable[Result]) -> str:
    """The expected-versus-actual text of the newest result that has one (else its outcome)."""
    results = list(results)
    for result in results:
        if result.message:
            return result.message
    return f"outcome {results[0].outcome.value}" if results else ""


def _at(location: str | None) -> str:
    return f" at {location}" if location else ""


def _by_location(runs: Sequence[Result]) -> dict[str, list[Result]]:
    """Runs grouped by location, each group newest first; groups in order of their newest run."""
    groups: dict[str, list[Result]] = {}
    for run in runs:
        groups.setdefault(run.location, []).append(run)
    return groups


# --------------------------------------------------------------------------- rules


def failures(policy: AlertPolicy, runs: Sequence[Result], location: str | None = None) -> Verdict:
    """`open_after` failing runs in a row open; `resolve_after` passing runs in a row resolve."""
    failing = _streak(runs, is_failing)
    if len(failing) >= policy.open_after:
        summary = f"{_runs('failed', len(failing))} in a row{_at(location)}: {_detail(failing)}"
        return Verdict("failures", location, True, policy.severity, summary, failing)
    passing = _streak(runs, is_passing)
    if len(passing) >= policy.resolve_after:
        summary = f"{_runs('passing', len(passing))} in a row{_at(location)}"
        return Verdict("failures", location, False, policy.severity, summary, passing)
    if failing:
        summary = f"{_runs('failed', len(failing))} in a row{_at(location)} ({policy.open_after} open an incident): {_detail(failing)}"
    else:
        summary = f"{_runs('passing', len(passing))} in a row{_at(location)} ({policy.resolve_after} resolve an incident)"
    return Verdict("failures", location, None, policy.severity, summary, ())


def failure_rate(policy: AlertPolicy, runs: Sequence[Result], location: str | None = None) -> Verdict:
    """At least `failures` of the last `of` runs failing open; once below that rate,
    `resolve_after` passing runs in a row resolve (the rate wins while both hold, so a
    resolved incident is not reopened by the very window that resolved it)."""
    rate = policy.failure_rate
    assert rate is not None
    window = tuple(runs[: rate.of])
    failed = tuple(r for r in window if is_failing(r))
    if len(failed) >= rate.failures:
        summary = f"{len(failed)} of the last {len(window)} runs failed{_at(location)}: {_detail(failed)}"
        return Verdict("failure_rate", location, True, policy.severity, summary, failed)
    passing = _streak(runs, is_passing)
    seen = f"{len(failed)} of the last {len(window)} runs failed{_at(location)}"
    if len(passing) >= policy.resolve_after:
        return Verdict("failure_rate", location, False, policy.severity, f"{seen}, then {_runs('passing', len(passing))} in a row", passing)
    return Verdict("failure_rate", location, None, policy.severity, f"{seen} ({rate.failures} of {rate.of} open an incident)", ())


def degraded(policy: AlertPolicy, runs: Sequence[Result], location: str | None = None) -> Verdict:
    """`degraded_after` degraded-or-worse runs in a row open at `degraded_severity`;
    `resolve_after` runs in a row that fully passed resolve."""
    assert policy.degraded_after is not None
    severity = policy.degraded_severity
    worse = _streak(runs, is_degraded_or_worse)
    if len(worse) >= policy.degraded_after:
        summary = f"{_runs('degraded', len(worse))} in a row{_at(location)}: {_detail(worse)}"
        return Verdict("degraded", location, True, severity, summary, worse)
    passed = _streak(runs, is_passed)
    if len(passed) >= policy.resolve_after:
        return Verdict("degraded", location, False, severity, f"{_runs('passed', len(passed))} in a row{_at(location)}", passed)
    summary = f"{_runs('degraded', len(worse))} in a row{_at(location)} ({policy.degraded_after} open an incident)"
    return Verdict("degraded", location, None, severity, summary, ())


def quorum(policy: AlertPolicy, groups: dict[str, list[Result]], expected: int) -> Verdict:
    """At least `quorum` locations whose latest `open_after` runs all failed open one
    incident for the scenario (location None). It resolves once fewer than `quorum`
    locations could still be failing: each other location either has `resolve_after`
    passing runs in a row or has no results at all."""
    assert policy.quorum is not None
    failing: dict[str, tuple[Result, ...]] = {}
    unsure: list[str] = []
    passing: dict[str, tuple[Result, ...]] = {}
    for location, runs in groups.items():
        failed = _streak(runs, is_failing)
        passed = _streak(runs, is_passing)
        if len(failed) >= policy.open_after:
            failing[location] = failed
        elif len(passed) >= policy.resolve_after:
            passing[location] = passed
        else:
            unsure.append(location)
    total = max(expected, len(groups))
    names = ", ".join(sorted(failing))
    seen = f"{len(failing)} of {total} locations failing" + (f" ({names})" if names else "")
    if len(failing) >= policy.quorum:
        # The newest failing run of each failing location, newest first.
        evidence = tuple(sorted((runs[0] for runs in failing.values()), key=lambda r: r.started_at, reverse=True))
        return Verdict("quorum", None, True, policy.severity, f"{seen}: {_detail(evidence)}", evidence)
    if len(failing) + len(unsure) < policy.quorum:
        evidence = tuple(sorted((runs[0] for runs in passing.values()), key=lambda r: r.started_at, reverse=True))
        return Verdict("quorum", None, False, policy.severity, f"{seen}, {policy.quorum} needed", evidence)
    return Verdict("quorum", None, None, policy.severity, f"{seen}, {len(unsure)} undecided, {policy.quorum} needed", ())


def judge(policy: AlertPolicy, history: Sequence[Result], *, locations: Sequence[str] = ()) -> list[Verdict]:
    """Every verdict the policy's rules reach on one scenario's history (newest first).

    `locations` are the locations scheduled to run the scenario: when given, results
    from any other location are ignored (an agent no longer scheduled must not keep an
    incident open forever) and the quorum counts them all, reporting or not.

    Per-location rules (failures, failure_rate, degraded) give one verdict per location
    present in the history; `quorum`, when set, replaces the per-location `failures`
    rule with one verdict across locations (location None).
    """
    runs = [r for r in history if r.outcome is not Outcome.skipped]
    if locations:
        wanted = set(locations)
        runs = [r for r in runs if r.location in wanted]
    groups = _by_location(runs)
    verdicts: list[Verdict] = []
    if policy.quorum is not None:
        verdicts.append(quorum(policy, groups, len(set(locations))))
    for location, group in groups.items():
        if policy.quorum is None:
            verdicts.append(failures(policy, group, location))
        if policy.failure_rate is not None:
            verdicts.append(failure_rate(policy, group, location))
        if policy.degraded_after is not None:
            verdicts.append(degraded(policy, group, location))
    return verdicts


def rules_of(policy: AlertPolicy) -> frozenset[str]:
    """The rules this policy runs: an incident of any other rule can no longer be judged."""
    names = {"quorum" if policy.quorum is not None else "failures"}
    if policy.failure_rate is not None:
        names.add("failure_rate")
    if policy.degraded_after is not None:
        names.add("degraded")
    return frozenset(names)


# --------------------------------------------------------------------------- time windows

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _days(spec: str) -> frozenset[int]:
    """Weekday numbers (Monday 0) from "mon-fri", "sat,sun" or a wrapping range like "fri-mon"."""
    out: set[int] = set()
    for part in spec.lower().split(","):
        ends = [_DAYS.index(d.strip()) for d in part.split("-")]
        first, last = ends[0], ends[-1]
        day = first
        while True:
            out.add(day)
            if day == last:
                break
            day = (day + 1) % 7
    return frozenset(out)


def _clock(text: str) -> timedelta:
    hours, minutes = text.split(":")
    return timedelta(hours=int(hours), minutes=int(minutes))


def _aware(now: datetime) -> datetime:
    # A naive time is taken as UTC, as everywhere else in cxtest.
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now


def in_window(window: TimeWindow, now: datetime) -> bool:
    """Whether `now` falls in the weekly window, read on the wall clock of the window's time zone.

    `start` is inclusive and `end` exclusive ("24:00" is the end of the day). A window
    whose end is before its start runs over midnight and belongs to the day it starts on
    (`days: fri, start: "22:00", end: "02:00"` covers Friday 22:00 to Saturday 02:00).
    A window whose start equals its end is empty.
    """
    local = _aware(now).astimezone(ZoneInfo(window.timezone))
    days = _days(window.days)
    start, end = _clock(window.start), _clock(window.end)
    clock = timedelta(hours=local.hour, minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
    today = local.weekday()
    if start < end:
        return today in days and start <= clock < end
    if start > end:
        yesterday = (today - 1) % 7
        return (today in days and clock >= start) or (yesterday in days and clock < end)
    return False


def matches(scenario_id: str, tags: Iterable[str], patterns: Sequence[str], wanted_tags: Sequence[str]) -> bool:
    """A scenario matches when its id matches any glob and it carries every wanted tag."""
    if not any(fnmatch.fnmatchcase(scenario_id, p) for p in patterns):
        return False
    return set(wanted_tags) <= set(tags)


def in_maintenance(scenario_id: str, tags: Iterable[str], windows: Sequence[Maintenance], now: datetime) -> Maintenance | None:
    """The first maintenance window covering this scenario now, if any.

    A window covers a scenario whose id matches one of its `scenarios` globs and which
    carries every one of its `tags`; one-off windows run from `from` (inclusive) to
    `until` (exclusive), naive times being UTC; weekly windows as in `in_window`.
    """
    tags = tuple(tags)
    now = _aware(now)
    for window in windows:
        if not matches(scenario_id, tags, window.scenarios, window.tags):
            continue
        if window.weekly is not None:
            if in_window(window.weekly, now):
                return window
        elif window.starts is not None and window.ends is not None:
            if _aware(window.starts) <= now < _aware(window.ends):
                return window
    return None

