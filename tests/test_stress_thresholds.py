"""stress thresholds: k6-style expressions parsed with clear errors, judged against Metrics with the sentences people read."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from cxtest.model import Outcome, Result, StepResult
from cxtest.stress.stats import Metrics
from cxtest.stress.thresholds import MIN_RUNS, Threshold, clearly_lost, judge, parse_threshold, show

STARTED = datetime(2026, 12, 7, 15, 0, tzinfo=timezone.utc)


def run(outcome: Outcome = Outcome.passed, duration: float = 1.0, **measures: float) -> Result:
    steps = (StepResult(index=0, name="bot", outcome=outcome, started=0.0, duration=0.1, measures=measures),)
    return Result(scenario_id="s", scenario_name="S", channel="chat", file="s.yaml", outcome=outcome, started_at=STARTED, duration=duration, steps=steps)


def metrics_of(*results: Result, dropped: int = 0) -> Metrics:
    metrics = Metrics(step_kinds=["user"])
    for result in results:
        metrics.record(result)
    metrics.dropped = dropped
    return metrics


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("p95(step:expect_prompt.prompt_latency) < 2s", ("p95", "step:expect_prompt.prompt_latency", "<", 2.0)),
        ("rate(failed) < 1%", ("rate", "failed", "<", 0.01)),
        ("p99(turn_latency) < 800ms", ("p99", "turn_latency", "<", 0.8)),
        ("min(mos) > 3.5", ("min", "mos", ">", 3.5)),
        ("avg(duration) <= 1.5s", ("avg", "duration", "<=", 1.5)),
        ("rate(checks) > 99.5%", ("rate", "checks", ">", 0.995)),
        ("count(dropped) == 0", ("count", "dropped", "==", 0.0)),
        ("p99.9(latency) < 1s", ("p99.9", "latency", "<", 1.0)),
        # and the forms around them
        ("rate(failed)<0.01", ("rate", "failed", "<", 0.01)),
        ("  med(step:hear 'Hi (EN)'.duration) >= 1m30s ", ("med", "step:hear 'Hi (EN)'.duration", ">=", 90.0)),
        ("max(level) <= -3", ("max", "level", "<=", -3.0)),
        ("count(step:user.duration) > 100", ("count", "step:user.duration", ">", 100.0)),
    ],
)
def test_parse_examples(text: str, parsed: tuple) -> None:
    """Every example of the contract parses into stat, metric, operator and a limit in natural units."""
    threshold = parse_threshold(text)
    assert (threshold.stat, threshold.metric, threshold.op, threshold.limit) == pytest.approx(parsed)
    assert threshold.text == text.strip()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mean(latency) < 1s", "unknown stat 'mean': use p50..p99.9, med, avg, min, max, count or rate"),
        ("p95x(latency) < 1s", "unknown stat 'p95x'"),
        ("p101(latency) < 1s", "percentile 101 is outside 0-100"),
        ("p99(turn_latency) < 800", "turn_latency is a duration: give a unit, e.g. 800ms or 800s"),
        ("avg(step:user.duration) < 2", "step:user.duration is a duration: give a unit"),
        ("p95(latency) = 1s", "'=' is not an operator: use <, <=, >, >= or =="),
        ("p95(latency) => 1s", "'=>' is not an operator"),
        ("p95(latency) != 1s", "'!=' is not an operator"),
        ("p95(latency) << 1s", "'<<' is not an operator"),
        ("rate(failed) < 120%", "'120%' is outside 0-100%"),
        ("rate(failed) < -1%", "'-1%' is outside 0-100%"),
        ("rate(failed) < 5", "a rate is a percent or a share: write e.g. 1% or 0.01, not '5'"),
        ("rate(latency) < 1%", "rate() takes one of passed, degraded, failed, error, checks, dropped or checks:NAME (one check's pass share), not 'latency'"),
        ("p95(failed) < 1%", "'failed' is counted, not measured: use rate(failed) or count(failed)"),
        ("p95(mos) > 80%", "a percent limit is for rate(); p95(mos) takes a plain number"),
        ("min(mos) > 3.5s", "mos is not a duration: give a plain number, not '3.5s'"),
        ("avg(latency) < 2 sec", "'2 sec' is not a duration: use e.g. 800ms, 2s or 1m30s"),
        ("count(dropped) == 1s", "count(dropped) takes a plain number"),
        ("latency < 1s", "it does not start with a stat and a metric in parentheses"),
        ("p95() < 1s", "the metric in parentheses is empty"),
        ("p95(latency < 1s", "the metric's closing parenthesis is missing"),
        ("p95(latency) <", "no limit after '<'"),
        ("p95(latency)", "'nothing' is not an operator"),
    ],
)
def test_bad_thresholds_say_what_is_wrong(text: str, problem: str) -> None:
    """A bad threshold is a ValueError naming the threshold, the problem, and the form to write."""
    with pytest.raises(ValueError) as caught:
        parse_threshold(text)
    message = str(caught.value)
    assert message.startswith(f"bad threshold {text!r}: "), message
    assert problem in message, f"expected {problem!r} in {message!r}"
    assert message.endswith("(write STAT(METRIC) OP LIMIT, e.g. p95(turn_latency) < 800ms or rate(failed) < 1%)"), message


# --------------------------------------------------------------------------- judging


def test_judge_passed_failed_and_no_data() -> None:
    """Each verdict shows what was seen against the limit: passed, FAILED with the relation that held, or no data."""
    results = [run(turn_latency=0.412, mos=4.2, level=-20)] * 121 + [run(Outcome.failed, turn_latency=0.412, mos=4.2, level=-45)] * 4
    metrics = metrics_of(*results)
    verdicts = judge(
        [
            "p95(turn_latency) < 800ms",
            "rate(failed) < 1%",
            "min(mos) > 3.5",
            "min(level) > -30",
            "count(dropped) == 0",
            "avg(duration) <= 1.5s",
            "p95(step:nope.duration) < 2s",
            "p99(step:user.turn_latency) < 300ms",
        ],
        metrics,
    )
    assert [(v.ok, v.text) for v in verdicts] == [
        (True, "p95(turn_latency) = 412ms < 800ms: passed"),
        (False, "rate(failed) = 3.2% >= 1%: FAILED"),
        (True, "min(mos) = 4.2 > 3.5: passed"),
        (False, "min(level) = -45 <= -30: FAILED"),
        (True, "count(dropped) = 0 == 0: passed"),
        (True, "avg(duration) = 1s <= 1.5s: passed"),
        (False, "p95(step:nope.duration) < 2s: no data"),
        (False, "p99(step:user.turn_latency) = 412ms >= 300ms: FAILED"),
    ]
    assert verdicts[1].seen == pytest.approx(0.032)
    assert verdicts[6].seen is None
    assert isinstance(verdicts[0].threshold, Threshold) and verdicts[0].threshold.text == "p95(turn_latency) < 800ms"


def test_judge_on_nothing_finished_is_no_data() -> None:
    """Before any iteration finishes a rate has no data, while a count of dropped iterations is 0, which is data."""
    verdicts = judge([parse_threshold("rate(failed) < 1%"), parse_threshold("count(dropped) == 0")], Metrics())
    assert [(v.ok, v.seen, v.text) for v in verdicts] == [
        (False, None, "rate(failed) < 1%: no data"),
        (True, 0.0, "count(dropped) = 0 == 0: passed"),
    ]


def test_judge_shows_long_durations_and_dropped() -> None:
    """Durations past a second read as seconds; a count that must be 0 shows the != that held."""
    metrics = metrics_of(run(duration=2.5), dropped=3)
    assert [v.text for v in judge(["max(duration) < 2s", "count(dropped) == 0"], metrics)] == [
        "max(duration) = 2.5s >= 2s: FAILED",
        "count(dropped) = 3 != 0: FAILED",
    ]


@pytest.mark.parametrize(
    ("text", "value", "shown"),
    [
        ("p95(latency) < 1s", 0.0004, "0.4ms"),
        ("p95(latency) < 1s", 0.41237, "412ms"),
        ("p95(latency) < 1s", 0.9998, "1s"),
        ("p95(latency) < 1s", 12.345, "12.3s"),
        ("p95(latency) < 1s", 95.0, "1m35s"),
        ("p95(mos) > 1", 3.456, "3.46"),
        ("p95(bytes) > 1", 123456.0, "123456"),
        ("count(dropped) < 1", 1234567.0, "1234567"),
        ("rate(checks) > 1%", 0.9995, "99.95%"),
    ],
)
def test_values_are_shown_as_people_write_them(text: str, value: float, shown: str) -> None:
    """Verdicts show three significant digits in the threshold's units, never exponent notation."""
    assert show(parse_threshold(text), value) == shown


# --------------------------------------------------------------------------- clearly lost


def test_clearly_lost_needs_enough_runs_and_a_failure() -> None:
    """abort_on_fail: a failing threshold is lost only on MIN_RUNS finished runs; passing or no data never is."""
    failing = parse_threshold("rate(failed) < 1%")
    few = metrics_of(*[run(Outcome.failed)] * 10, *[run()] * (MIN_RUNS - 20))
    enough = metrics_of(*[run(Outcome.failed)] * 10, *[run()] * (MIN_RUNS - 10))
    assert (clearly_lost(failing, few, MIN_RUNS), clearly_lost(failing, enough, MIN_RUNS)) == (False, True)
    assert not clearly_lost(parse_threshold("rate(failed) < 50%"), enough, MIN_RUNS)
    assert not clearly_lost(parse_threshold("p95(step:nope.duration) < 1s"), enough, MIN_RUNS)


def test_a_count_past_its_upper_limit_is_lost_at_once() -> None:
    """Counts only grow: count(dropped) == 0 is lost on the first drop; count(...) > N can still be reached."""
    metrics = metrics_of(run(), dropped=1)
    assert clearly_lost(parse_threshold("count(dropped) == 0"), metrics, MIN_RUNS)
    assert not clearly_lost(parse_threshold("count(passed) > 50"), metrics, MIN_RUNS)
