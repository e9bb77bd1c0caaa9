"""alerts.rules: run histories in, verdicts out; maintenance and weekly windows. Pure, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from alerts.rules import Verdict, in_maintenance, in_window, judge
from cxtest.model import AlertPolicy, FailureRate, Maintenance, Outcome, Result, TimeWindow

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
LETTERS = {"P": Outcome.passed, "D": Outcome.degraded, "F": Outcome.failed, "E": Outcome.error, "S": Outcome.skipped}
MESSAGE = {
    Outcome.passed: "",
    Outcome.degraded: "duration (41s) > 40s (degraded level)",
    Outcome.failed: "step 1 (status): status (503) == 200",
    Outcome.error: "step 1 (status): connection refused",
    Outcome.skipped: "",
}


def runs(letters: str, location: str = "eu-1", start: int = 0) -> list[Result]:
    """Results newest first from a string like "FFP" (P passed, D degraded, F failed, E error, S skipped)."""
    out = []
    for i, letter in enumerate(letters):
        outcome = LETTERS[letter]
        out.append(
            Result(
                scenario_id="demo/status",
                scenario_name="Status page",
                channel="http",
                file="scenarios/status.yaml",
                outcome=outcome,
                started_at=T0 - timedelta(minutes=start + i),
                duration=0.2,
                message=MESSAGE[outcome],
                location=location,
                run_id=f"{location}-{start + i}",
            )
        )
    return out


def only(verdicts: list[Verdict], rule: str) -> Verdict:
    found = [v for v in verdicts if v.rule == rule]
    assert len(found) == 1, verdicts
    return found[0]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("history", "firing"),
    [
        ("", None),
        ("F", None),
        ("FF", None),
        ("FFF", True),
        ("FFFF", True),
        ("FFFPP", True),
    ],
)
def test_open_after_n_not_before(history: str, firing: bool | None) -> None:
    """Three failing runs in a row open (open_after: 3); one or two do not."""
    verdicts = judge(AlertPolicy(open_after=3), runs(history))
    if not history:
        assert verdicts == []
        return
    verdict = only(verdicts, "failures")
    assert (verdict.firing, verdict.location, verdict.severity) == (firing, "eu-1", "critical")


@pytest.mark.parametrize(
    ("history", "firing"),
    [
        ("P", None),
        ("PP", False),
        ("PPP", False),
        ("PFFF", None),
        ("PPFFF", False),
        ("DP", False),
    ],
)
def test_resolve_after_m(history: str, firing: bool | None) -> None:
    """Two passing runs in a row resolve (resolve_after: 2); degraded runs count as passing."""
    assert only(judge(AlertPolicy(open_after=3, resolve_after=2), runs(history)), "failures").firing is firing


@pytest.mark.parametrize("history", ["FFPF", "FPFF", "FFPFF", "FPF"])
def test_a_pass_in_between_resets_the_streak(history: str) -> None:
    """A pass between failures starts the count again: no verdict either way."""
    assert only(judge(AlertPolicy(open_after=3, resolve_after=2), runs(history)), "failures").firing is None


@pytest.mark.parametrize(("history", "firing"), [("EEE", True), ("EFE", True), ("FEF", True), ("EE", None)])
def test_error_counts_as_failing(history: str, firing: bool | None) -> None:
    """An unreachable target (outcome error) must alert like a failed expectation."""
    assert only(judge(AlertPolicy(open_after=3), runs(history)), "failures").firing is firing


def test_skipped_runs_are_ignored() -> None:
    """Skipped runs tested nothing: they neither break nor extend a streak."""
    assert only(judge(AlertPolicy(open_after=3), runs("FSFSF")), "failures").firing is True


def test_summary_names_what_the_rule_saw_and_the_newest_failure() -> None:
    """The summary is what the rule saw, then the expected-versus-actual text of the newest failing run."""
    history = runs("FFE")
    verdict = only(judge(AlertPolicy(open_after=3), history), "failures")
    assert verdict.summary == "3 failed runs in a row at eu-1: step 1 (status): status (503) == 200"
    assert verdict.evidence == tuple(history)


# --------------------------------------------------------------------------- failure rate


@pytest.mark.parametrize(
    ("history", "firing"),
    [
        ("FF", None),  # 2 of 2: not yet 3
        ("FFF", True),  # 3 failures before 5 runs: already 3 of the last 5
        ("FPFPF", True),
        ("FPFPFPPP", True),  # the window is the last 5: F P F P F
        ("PFPFP", None),  # 2 of 5, and only one pass in a row
        ("PPFPF", False),  # 2 of 5, then 2 passes in a row
        ("PPFFF", True),  # 3 of 5 still holds: the rate wins over the passes
    ],
)
def test_failure_rate_three_of_five(history: str, firing: bool | None) -> None:
    """failure_rate {failures: 3, of: 5}: open at 3 failures among the last 5 runs; resolve below it after passes."""
    policy = AlertPolicy(open_after=10, resolve_after=2, failure_rate=FailureRate(failures=3, of=5))
    verdict = only(judge(policy, runs(history)), "failure_rate")
    assert (verdict.firing, verdict.location) == (firing, "eu-1")


def test_failure_rate_summary() -> None:
    """The rate summary counts failures in the window and quotes the newest failure."""
    policy = AlertPolicy(failure_rate=FailureRate(failures=3, of=5))
    verdict = only(judge(policy, runs("PFFPF")), "failure_rate")
    assert verdict.summary == "3 of the last 5 runs failed at eu-1: step 1 (status): status (503) == 200"
    assert [r.outcome for r in verdict.evidence] == [Outcome.failed] * 3


# --------------------------------------------------------------------------- degraded


@pytest.mark.parametrize(
    ("history", "firing"),
    [
        ("DD", None),
        ("DDD", True),
        ("DFD", True),  # degraded or worse
        ("PDDD", None),
        ("PP", False),
        ("PPDDD", False),
        ("DP", None),  # a degraded run does not count towards resolving
    ],
)
def test_degraded_rule(history: str, firing: bool | None) -> None:
    """degraded_after: 3 degraded-or-worse runs in a row open; resolve_after runs that fully passed resolve."""
    policy = AlertPolicy(open_after=5, resolve_after=2, degraded_after=3, degraded_severity="warning")
    verdict = only(judge(policy, runs(history)), "degraded")
    assert (verdict.firing, verdict.location, verdict.severity) == (firing, "eu-1", "warning")


def test_degraded_severity_and_summary() -> None:
    """The degraded incident carries degraded_severity, not the policy's severity."""
    policy = AlertPolicy(severity="critical", degraded_after=2, degraded_severity="info")
    verdicts = judge(policy, runs("DD"))
    degraded = only(verdicts, "degraded")
    assert (degraded.firing, degraded.severity) == (True, "info")
    assert degraded.summary == "2 degraded runs in a row at eu-1: duration (41s) > 40s (degraded level)"
    assert only(verdicts, "failures").severity == "critical"


def test_rules_run_only_when_asked() -> None:
    """Without failure_rate or degraded_after in the policy, only the failures rule speaks."""
    assert {v.rule for v in judge(AlertPolicy(), runs("FFF"))} == {"failures"}


# --------------------------------------------------------------------------- locations


def test_per_location_verdicts() -> None:
    """Each location present in the history gets its own verdict, judged on its own runs only."""
    history = sorted(runs("FFF", "eu-1") + runs("PP", "us-1") + runs("F", "ap-1"), key=lambda r: r.started_at, reverse=True)
    verdicts = {v.location: v for v in judge(AlertPolicy(open_after=3, resolve_after=2), history)}
    assert {loc: v.firing for loc, v in verdicts.items()} == {"eu-1": True, "us-1": False, "ap-1": None}
    assert verdicts["eu-1"].summary.startswith("3 failed runs in a row at eu-1: ")
    assert all(r.location == "eu-1" for r in verdicts["eu-1"].evidence)


def test_locations_filter_out_agents_not_scheduled() -> None:
    """With locations given, results from other locations are ignored."""
    history = runs("FFF", "eu-1") + runs("FFF", "old-dc")
    verdicts = judge(AlertPolicy(), history, locations=["eu-1", "us-1"])
    assert [(v.rule, v.location, v.firing) for v in verdicts] == [("failures", "eu-1", True)]


@pytest.mark.parametrize(
    ("histories", "locations", "firing", "seen"),
    [
        ({"eu-1": "FFF", "us-1": "FFF", "ap-1": "PP"}, (), True, "2 of 3 locations failing (eu-1, us-1)"),
        ({"eu-1": "FFF", "us-1": "PEE", "ap-1": "PP"}, (), None, "1 of 3 locations failing (eu-1), 1 undecided"),
        ({"eu-1": "FFF", "us-1": "PP", "ap-1": "PP"}, (), False, "1 of 3 locations failing (eu-1), 2 needed"),
        ({"eu-1": "FFF", "us-1": "FF", "ap-1": "P"}, (), None, "1 of 3 locations failing (eu-1), 2 undecided"),
        ({"eu-1": "FFF"}, ("eu-1", "us-1", "ap-1"), False, "1 of 3 locations failing (eu-1), 2 needed"),
        ({"eu-1": "FFFF", "us-1": "EEE"}, ("eu-1", "us-1", "ap-1"), True, "2 of 3 locations failing (eu-1, us-1)"),
    ],
)
def test_quorum_n_of_m_locations(histories: dict[str, str], locations: tuple[str, ...], firing: bool | None, seen: str) -> None:
    """quorum: 2 opens one scenario-wide incident when 2 locations' latest open_after runs all failed."""
    history = [r for loc, letters in histories.items() for r in runs(letters, loc)]
    history.sort(key=lambda r: r.started_at, reverse=True)
    policy = AlertPolicy(open_after=3, resolve_after=2, quorum=2)
    verdicts = judge(policy, history, locations=locations)
    assert "failures" not in {v.rule for v in verdicts}  # quorum replaces the per-location rule
    verdict = only(verdicts, "quorum")
    assert (verdict.firing, verdict.location) == (firing, None)
    assert verdict.summary.startswith(seen)
    if firing:
        assert ": step 1 (status): " in verdict.summary
        assert {r.location for r in verdict.evidence} == {"eu-1", "us-1"}


def test_quorum_keeps_other_per_location_rules() -> None:
    """quorum replaces only the failures rule; degraded still judges each location."""
    history = runs("DDD", "eu-1") + runs("PPP", "us-1", start=10)
    verdicts = judge(AlertPolicy(quorum=2, degraded_after=3), history)
    assert sorted((v.rule, v.location, v.firing) for v in verdicts if v.rule != "quorum") == [
        ("degraded", "eu-1", True),
        ("degraded", "us-1", False),
    ]


# --------------------------------------------------------------------------- windows

BUSINESS_LONDON = TimeWindow(days="mon-fri", start="08:00", end="18:00", timezone="Europe/London")


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (datetime(2024, 7, 1, 6, 59, 59, tzinfo=timezone.utc), False),  # Mon 07:59:59 BST
        (datetime(2024, 7, 1, 7, 0, tzinfo=timezone.utc), True),  # Mon 08:00 BST: start is inclusive
        (datetime(2024, 7, 1, 16, 59, 59, tzinfo=timezone.utc), True),  # Mon 17:59:59 BST
        (datetime(2024, 7, 1, 17, 0, tzinfo=timezone.utc), False),  # Mon 18:00 BST: end is exclusive
        (datetime(2024, 1, 8, 8, 0, tzinfo=timezone.utc), True),  # Mon 08:00 GMT in winter
        (datetime(2024, 1, 8, 7, 30, tzinfo=timezone.utc), False),
        (datetime(2024, 7, 6, 12, 0, tzinfo=timezone.utc), False),  # Saturday
        (datetime(2024, 7, 1, 7, 0), True),  # naive is UTC
    ],
)
def test_in_window_edges(now: datetime, inside: bool) -> None:
    """Start inclusive, end exclusive, on the wall clock of the window's time zone (summer and winter)."""
    assert in_window(BUSINESS_LONDON, now) is inside


@pytest.mark.parametrize(
    ("window", "now", "inside"),
    [
        (TimeWindow(), datetime(2024, 7, 7, 23, 59, 59, tzinfo=timezone.utc), True),  # 00:00-24:00 every day
        (TimeWindow(days="fri", start="22:00", end="02:00"), datetime(2024, 7, 5, 22, 0, tzinfo=timezone.utc), True),
        (TimeWindow(days="fri", start="22:00", end="02:00"), datetime(2024, 7, 6, 1, 59, tzinfo=timezone.utc), True),
        (TimeWindow(days="fri", start="22:00", end="02:00"), datetime(2024, 7, 6, 2, 0, tzinfo=timezone.utc), False),
        (TimeWindow(days="fri", start="22:00", end="02:00"), datetime(2024, 7, 4, 23, 0, tzinfo=timezone.utc), False),
        (TimeWindow(days="sat,sun", start="10:00", end="24:00"), datetime(2024, 7, 7, 23, 59, tzinfo=timezone.utc), True),
        (TimeWindow(days="fri-mon", start="00:00", end="24:00"), datetime(2024, 7, 8, 12, 0, tzinfo=timezone.utc), True),
        (TimeWindow(days="fri-mon", start="00:00", end="24:00"), datetime(2024, 7, 9, 12, 0, tzinfo=timezone.utc), False),
        (TimeWindow(start="09:00", end="09:00"), datetime(2024, 7, 9, 9, 0, tzinfo=timezone.utc), False),  # empty
    ],
)
def test_in_window_whole_days_overnight_and_wrapping_days(window: TimeWindow, now: datetime, inside: bool) -> None:
    """24:00 ends the day; an overnight window belongs to its starting day; day ranges may wrap the week."""
    assert in_window(window, now) is inside


# Saturday 01:00-05:00 in New York: 05:00-09:00 UTC in summer (EDT), 06:00-10:00 UTC in winter (EST).
WEEKLY_NY = Maintenance(
    name="trunk upgrade",
    scenarios=("ivr/*",),
    weekly=TimeWindow(days="sat", start="01:00", end="05:00", timezone="America/New_York"),
)
ONE_OFF = Maintenance.model_validate(
    {"name": "migration", "tags": ["billing"], "from": "2024-07-01T20:00:00+02:00", "until": "2024-07-01T22:00:00+02:00"}
)


@pytest.mark.parametrize(
    ("scenario_id", "tags", "now", "window"),
    [
        ("ivr/billing", (), datetime(2024, 7, 6, 5, 0, tzinfo=timezone.utc), "trunk upgrade"),  # Sat 01:00 EDT
        ("ivr/billing", (), datetime(2024, 7, 6, 8, 59, tzinfo=timezone.utc), "trunk upgrade"),  # Sat 04:59 EDT
        ("ivr/billing", (), datetime(2024, 7, 6, 9, 0, tzinfo=timezone.utc), None),  # Sat 05:00 EDT
        ("ivr/billing", (), datetime(2024, 7, 6, 4, 30, tzinfo=timezone.utc), None),  # Sat 00:30 EDT
        ("ivr/billing", (), datetime(2024, 1, 6, 5, 30, tzinfo=timezone.utc), None),  # Sat 00:30 EST in winter
        ("ivr/billing", (), datetime(2024, 1, 6, 9, 30, tzinfo=timezone.utc), "trunk upgrade"),  # Sat 04:30 EST
        ("web/home", (), datetime(2024, 7, 6, 6, 0, tzinfo=timezone.utc), None),  # glob does not match
        ("web/pay", ("billing", "web"), datetime(2024, 7, 1, 18, 0, tzinfo=timezone.utc), "migration"),  # from: inclusive
        ("web/pay", ("billing",), datetime(2024, 7, 1, 19, 59, tzinfo=timezone.utc), "migration"),
        ("web/pay", ("billing",), datetime(2024, 7, 1, 20, 0, tzinfo=timezone.utc), None),  # until: exclusive
        ("web/pay", ("web",), datetime(2024, 7, 1, 19, 0, tzinfo=timezone.utc), None),  # lacks the tag
        ("web/pay", ("billing",), datetime(2024, 7, 1, 17, 59, tzinfo=timezone.utc), None),
    ],
)
def test_maintenance_weekly_across_time_zones_and_one_off(
    scenario_id: str, tags: tuple[str, ...], now: datetime, window: str | None
) -> None:
    """Weekly windows follow their zone's clock (DST included); one-off windows run from `from` until `until`."""
    found = in_maintenance(scenario_id, tags, [WEEKLY_NY, ONE_OFF], now)
    assert (found.name if found else None) == window
