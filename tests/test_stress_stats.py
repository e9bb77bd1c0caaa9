"""stress stats: what iterations did, recorded into counters and HDR histograms that merge exactly."""

from __future__ import annotations

import base64
import json
import math
import multiprocessing
import random
from datetime import datetime, timezone
from fractions import Fraction

import numpy as np
import pytest

from cxtest.model import CheckResult, Outcome, Result, StepResult
from cxtest.stress.stats import HIGHEST, MAX_REASONS, OTHER_REASONS, Metrics, _indices, _layout, new_histogram

STARTED = datetime(2026, 12, 7, 15, 0, tzinfo=timezone.utc)
KINDS = ["expect_prompt", "send_dtmf", "expect_prompt"]
STATS = ("p50", "p90", "p95", "p99", "p99.9", "med", "avg", "min", "max", "count")
HDR_PRECISION = 0.001  # 3 significant digits: a value read back is within 0.1% of the recorded one


def check(name: str, outcome: Outcome = Outcome.passed, text: str = "") -> CheckResult:
    return CheckResult(name=name, outcome=outcome, expected=None, actual=None, text=text or f"{name} ok")


def step(index: int, name: str, duration: float, outcome: Outcome = Outcome.passed, message: str = "", checks=(), **measures: float) -> StepResult:
    return StepResult(index=index, name=name, outcome=outcome, started=0.0, duration=duration, message=message, checks=tuple(checks), measures=measures)


def result(outcome: Outcome, duration: float, steps=(), checks=(), message: str = "") -> Result:
    return Result(
        scenario_id="billing", scenario_name="Billing", channel="ivr", file="billing.yaml", outcome=outcome,
        started_at=STARTED, duration=duration, message=message, steps=tuple(steps), checks=tuple(checks),
    )


def ivr_result(turn: float = 0.4, prompt: float = 0.9, level: float = -20.0, mos: float = 4.2) -> Result:
    """Three steps the way the IVR probe reports them: a prompt heard, digits sent, a second prompt."""
    return result(Outcome.passed, 3.5, steps=[
        step(0, "hear 'Welcome to Acme Bank'", 1.25, checks=[check("text")], prompt_latency=prompt, level=level),
        step(1, "send 1", 0.05, turn_latency=turn),
        step(2, "hear 'billing'", 2.0, checks=[check("text"), check("mos", Outcome.degraded)], prompt_latency=prompt * 2, mos=mos),
    ])


# --------------------------------------------------------------------------- the histogram layout


def test_vectorised_layout_is_hdrh_own() -> None:
    """The numpy index and bucket-edge tables agree with HdrHistogram's own methods, so poking its counts is exact."""
    histogram = new_histogram()
    _, _, _, lowest, highest, middle = _layout()
    for index in range(0, histogram.counts_len, 5):
        value = histogram.get_value_from_index(index)
        seen = (lowest[index], highest[index], middle[index])
        expected = (value, histogram.get_highest_equivalent_value(value), histogram._hdr_median_equiv_value(value))
        assert seen == expected, f"index {index}: expected lowest/highest/middle {expected}, saw {seen}"
    values = np.concatenate([np.arange(0, 5000), np.random.default_rng(7).integers(0, HIGHEST, 5000)])
    ours = _indices(values)
    theirs = [histogram._counts_index_for(int(v)) for v in values]
    assert ours.tolist() == theirs


def test_flushed_counts_equal_record_value() -> None:
    """Values recorded through Metrics land in the same buckets, with the same count, min and max, as hdrh's record_value."""
    rng = np.random.default_rng(3)
    seconds = rng.lognormal(-1.0, 1.0, 2000)
    metrics = Metrics()
    for value in seconds:
        metrics.record(result(Outcome.passed, float(value)))
    reference = new_histogram()
    for value in seconds:
        reference.record_value(int(round(value * 1_000_000)))
    ours = metrics.histograms["duration"]
    assert np.array_equal(np.ctypeslib.as_array(ours.counts), np.ctypeslib.as_array(reference.counts))
    assert (ours.total_count, ours.get_min_value(), ours.get_max_value()) == (reference.total_count, reference.get_min_value(), reference.get_max_value())
    assert metrics.stat("p99", "duration") == reference.get_value_at_percentile(99) / 1_000_000


# --------------------------------------------------------------------------- recording


def test_record_names_every_metric_of_the_contract() -> None:
    """One iteration gives duration, each measure, step:<name>.<m>, step:<kind>.<m> and every step's duration."""
    metrics = Metrics(step_kinds=KINDS)
    metrics.record(ivr_result())
    assert metrics.names() == sorted([
        "duration", "prompt_latency", "turn_latency", "level", "mos",
        "step:hear 'Welcome to Acme Bank'.duration", "step:hear 'Welcome to Acme Bank'.prompt_latency", "step:hear 'Welcome to Acme Bank'.level",
        "step:send 1.duration", "step:send 1.turn_latency",
        "step:hear 'billing'.duration", "step:hear 'billing'.prompt_latency", "step:hear 'billing'.mos",
        "step:expect_prompt.duration", "step:expect_prompt.prompt_latency", "step:expect_prompt.level", "step:expect_prompt.mos",
        "step:send_dtmf.duration", "step:send_dtmf.turn_latency",
    ])
    counts = {name: metrics.stat("count", name) for name in ("prompt_latency", "step:expect_prompt.duration", "step:hear 'billing'.duration", "duration")}
    assert counts == {"prompt_latency": 2, "step:expect_prompt.duration": 2, "step:hear 'billing'.duration": 1, "duration": 1}


def test_record_without_kinds_keeps_step_names_only() -> None:
    """Without step_kinds (or past their end) a step is recorded under its name alone."""
    metrics = Metrics(step_kinds=["expect_prompt"])
    metrics.record(ivr_result())
    assert [n for n in metrics.names() if n.startswith("step:") and n.endswith(".duration")] == [
        "step:expect_prompt.duration", "step:hear 'Welcome to Acme Bank'.duration", "step:hear 'billing'.duration", "step:send 1.duration",
    ]


def test_values_come_back_in_natural_units() -> None:
    """Durations in seconds, other measures as given, level negative: read back within HDR precision."""
    metrics = Metrics(step_kinds=KINDS)
    metrics.record(ivr_result(turn=0.412, prompt=0.9, level=-23.5, mos=3.71))
    expected = {"duration": 3.5, "turn_latency": 0.412, "step:hear 'billing'.prompt_latency": 1.8, "step:send 1.duration": 0.05, "mos": 3.71, "level": -23.5}
    for name, value in expected.items():
        for stat in ("min", "max", "p50", "avg"):
            seen = metrics.stat(stat, name)
            assert seen == pytest.approx(value, rel=HDR_PRECISION), f"{stat}({name}): expected {value}, saw {seen}"


def test_checks_count_every_step_and_scenario_check() -> None:
    """Every CheckResult counts: degraded as passed, failed and error as failed, skipped not at all."""
    metrics = Metrics()
    metrics.record(result(Outcome.failed, 1.0, steps=[
        step(0, "a", 0.1, checks=[check("x"), check("y", Outcome.degraded), check("z", Outcome.skipped)]),
        step(1, "b", 0.1, Outcome.failed, "z (1) > 0", checks=[check("z", Outcome.failed, "z (1) > 0"), check("w", Outcome.error)]),
    ], checks=[check("duration", Outcome.failed, "duration (1s) > 500ms")]))
    assert (metrics.checks["passed"], metrics.checks["failed"]) == (2, 3)
    assert (metrics.checks["x:passed"], metrics.checks["z:failed"], metrics.checks["w:failed"]) == (1, 1, 1)
    assert metrics.rate("checks") == pytest.approx(2 / 5)


def test_out_of_range_values_are_clamped_not_lost() -> None:
    """A value past one hour counts as one hour, a negative measure as 0, a NaN is skipped."""
    metrics = Metrics()
    metrics.record(result(Outcome.passed, 7200.0, steps=[step(0, "a", 0.1, loss=-0.5, jitter=float("nan"))]))
    assert metrics.stat("count", "duration") == 1
    assert metrics.stat("max", "duration") == pytest.approx(3600, rel=HDR_PRECISION)
    assert (metrics.stat("min", "loss"), metrics.stat("count", "loss")) == (0.0, 1)
    assert metrics.stat("count", "jitter") is None


# --------------------------------------------------------------------------- percentiles against numpy


@pytest.mark.parametrize("metric", ["turn_latency", "mos", "level"])
def test_stats_match_numpy_within_hdr_precision(metric: str) -> None:
    """p50..p99.9, avg, min and max agree with numpy on the same 10,000 values (level: negative) within 0.1%, one at a time or in summary()."""
    rng = np.random.default_rng(11)
    values = {
        "turn_latency": rng.lognormal(np.log(0.4), 0.6, 10_000),
        "mos": rng.uniform(1.0, 4.5, 10_000),
        "level": -rng.uniform(3.0, 60.0, 10_000),
    }[metric]
    metrics = Metrics()
    for value in values:
        metrics.record(result(Outcome.passed, 1.0, steps=[step(0, "s", 0.1, **{metric: float(value)})]))
    # The p-th percentile is the value of rank ceil(p% of n) (numpy's inverted_cdf), the rank in exact
    # arithmetic: numpy's own 0.999 * 10000 is 9990.000000000002 and would take the next rank.
    ordered = np.sort(values)
    expected = {f"p{p}": ordered[math.ceil(Fraction(p) * len(values) / 100) - 1] for p in ("50", "90", "95", "99", "99.9")}
    expected |= {"med": ordered[len(values) // 2 - 1], "avg": values.mean(), "min": values.min(), "max": values.max()}
    # Recorded values are whole microseconds (durations) or thousandths (measures): half a unit of rounding on top.
    unit = 1e-6 if metric == "turn_latency" else 1e-3
    for stat, want in expected.items():
        seen = metrics.stat(stat, metric)
        assert abs(seen - want) <= abs(want) * HDR_PRECISION + unit / 2, f"{stat}({metric}): numpy says {want}, Metrics says {seen}"
    assert metrics.stat("count", metric) == 10_000
    summary = metrics.summary(metric, (50, 90, 95, 99, 99.9))
    assert summary == {stat: metrics.stat(stat, metric) for stat in ("p50", "p90", "p95", "p99", "p99.9", "min", "max", "avg", "count")}


def test_percentiles_in_one_pass_equal_stat() -> None:
    """percentiles() gives the same values as stat() one at a time, and None with no data."""
    metrics = Metrics()
    for i in range(1, 500):
        metrics.record(result(Outcome.passed, i / 100))
    assert metrics.percentiles("duration", [50, 95, 99]) == {p: metrics.stat(f"p{p}", "duration") for p in (50, 95, 99)}
    assert metrics.percentiles("turn_latency", [50]) is None


def test_stat_without_data_or_unknown() -> None:
    """No data is None; an unknown stat is a ValueError naming the stats there are."""
    metrics = Metrics()
    assert [metrics.stat(s, "duration") for s in ("p95", "avg", "min", "max", "count")] == [None] * 5
    metrics.record(result(Outcome.passed, 1.0))
    with pytest.raises(ValueError, match=r"unknown stat 'mean': use p50..p99.9"):
        metrics.stat("mean", "duration")
    with pytest.raises(ValueError, match="unknown stat 'p101'"):
        metrics.stat("p101", "duration")


# --------------------------------------------------------------------------- rates and counters


def test_rates_are_shares_of_finished_runs_checks_and_wanted_iterations() -> None:
    """rate(outcome) over finished runs, rate(checks) over checks, rate(dropped) over dropped + finished; None when empty."""
    metrics = Metrics()
    assert [metrics.rate(w) for w in ("failed", "checks", "dropped")] == [None, None, None]
    outcomes = [Outcome.passed] * 5 + [Outcome.degraded] * 2 + [Outcome.failed] * 2 + [Outcome.error]
    for outcome in outcomes:
        metrics.record(result(outcome, 1.0, steps=[step(0, "a", 0.1, checks=[check("x", Outcome.failed if outcome is Outcome.failed else Outcome.passed)])]))
    metrics.dropped = 10
    seen = {w: metrics.rate(w) for w in ("passed", "degraded", "failed", "error", "checks", "dropped")}
    assert seen == {"passed": 0.5, "degraded": 0.2, "failed": 0.2, "error": 0.1, "checks": 0.8, "dropped": 0.5}
    assert [metrics.stat("count", w) for w in ("failed", "dropped", "checks", "iterations")] == [2, 10, 10, 10]
    with pytest.raises(ValueError, match="unknown rate 'latency'"):
        metrics.rate("latency")


# --------------------------------------------------------------------------- error reasons


def test_reasons_group_the_same_failure_with_other_seen_values() -> None:
    """latency (412ms) > 300ms and latency (530ms) > 300ms are one reason, counted twice; the first raw text is kept."""
    metrics = Metrics()
    for seen in ("412ms", "530ms"):
        text = f"latency ({seen}) > 300ms"
        metrics.record(result(Outcome.failed, 1.0, steps=[step(0, "send 1", 0.1), step(1, "hear 'billing'", 0.5, Outcome.failed, text)]))
    assert dict(metrics.errors) == {"step 2 (hear 'billing'): latency (…) > 300ms": 2}
    assert metrics.examples == {"step 2 (hear 'billing'): latency (…) > 300ms": "step 2 (hear 'billing'): latency (412ms) > 300ms"}


@pytest.mark.parametrize(
    ("messages", "reasons"),
    [
        (["text ('Sorry, I did not get that') contains 'balance'", "text ('Sorry…') contains 'balance'"], {"step 1 (bot): text (…) contains 'balance'": 2}),
        (["no answer within 4s (step timeout)"] * 2, {"step 1 (bot): no answer within 4s (step timeout)": 2}),
        (["call to sip:1@127.0.0.1 not answered: 486 Busy Here", "call to sip:1@127.0.0.1 not answered: 503 Service Unavailable"],
         {"step 1 (bot): call to sip:1@127.0.0.1 not answered: 486 Busy Here": 1, "step 1 (bot): call to sip:1@127.0.0.1 not answered: 503 Service Unavailable": 1}),
        (["the bot sent nothing within 5s\nuser: hi\nbot: hello", "the bot sent nothing within 5s\nuser: hi"], {"step 1 (bot): the bot sent nothing within 5s": 2}),
        (["internal error: KeyError: 'x' (traceback in artifacts/r1/crash.txt)", "internal error: KeyError: 'x' (traceback in artifacts/r2/crash.txt)"],
         {"step 1 (bot): internal error: KeyError: 'x' (…)": 2}),
        (["session 1733583702 expired", "session 1733583999 expired"], {"step 1 (bot): session # expired": 2}),
        (["run 9f8e7d6c-1a2b failed; deadbeef", "run 0a1b2c3d-4e5f failed; deadbeef"], {"step 1 (bot): run # failed; deadbeef": 2}),
    ],
)
def test_reason_normalisation(messages: list[str], reasons: dict[str, int]) -> None:
    """Seen values, paths and ids vary and are dropped; limits, status codes, expectations and kind words stay."""
    metrics = Metrics()
    for message in messages:
        metrics.record(result(Outcome.failed, 1.0, steps=[step(0, "bot", 0.1, Outcome.failed, message)]))
    assert dict(metrics.errors) == reasons


def test_reasons_without_a_bad_step_and_only_for_failures() -> None:
    """A scenario-level check or the run message gives the reason; passed and degraded runs give none."""
    metrics = Metrics()
    metrics.record(result(Outcome.failed, 9.0, steps=[step(0, "a", 0.1)], checks=[check("duration", Outcome.failed, "duration (9s) > 5s")]))
    metrics.record(result(Outcome.error, 0.1, message="cannot reach the SIP trunk at 127.0.0.1:5060"))
    metrics.record(result(Outcome.degraded, 1.0, steps=[step(0, "a", 0.1, Outcome.degraded, "mos (3.1) < 3.5 (degraded level)")]))
    metrics.record(result(Outcome.passed, 1.0))
    assert dict(metrics.errors) == {"duration (…) > 5s": 1, "cannot reach the SIP trunk at 127.0.0.1:5060": 1}


def test_distinct_reasons_are_capped() -> None:
    """Past MAX_REASONS distinct reasons, new ones count under one 'other reasons' line: nothing is lost."""
    metrics = Metrics()
    for i in range(MAX_REASONS + 5):
        metrics.record(result(Outcome.failed, 1.0, message=f"failure kind {chr(65 + i % 26)}{i // 26}"))
    assert len(metrics.errors) == MAX_REASONS + 1
    assert metrics.errors[OTHER_REASONS] == 5
    assert sum(metrics.errors.values()) == MAX_REASONS + 5


# --------------------------------------------------------------------------- the wire and merging


def synthetic(i: int) -> Result | None:
    """Iteration i of a made-up exercise (None: dropped): mixed outcomes, reasons with varying values, all kinds of measures."""
    rng = random.Random(i)
    if i % 97 == 0:
        return None
    turn = rng.lognormvariate(-1.0, 0.5)
    roll = rng.random()
    outcome = Outcome.passed if roll < 0.8 else Outcome.degraded if roll < 0.9 else Outcome.failed if roll < 0.97 else Outcome.error
    last_outcome, message = Outcome.passed, ""
    if outcome is Outcome.failed:
        last_outcome, message = Outcome.failed, rng.choice([f"turn_latency ({turn * 1000:.0f}ms) > 300ms", f"text ('{rng.random():.3f}') contains 'billing'"])
    elif outcome is Outcome.error:
        last_outcome, message = Outcome.error, f"internal error: OSError (traceback in artifacts/{i}/crash.txt)"
    steps = [
        step(0, "hear 'Welcome to Acme Bank'", rng.uniform(0.5, 3.0), checks=[check("text")], prompt_latency=rng.uniform(0.2, 2.0), level=-rng.uniform(5, 50)),
        step(1, "send 1", rng.uniform(0.01, 0.1), turn_latency=turn),
        step(2, "hear 'billing'", rng.uniform(0.5, 3.0), last_outcome, message,
             checks=[check("text", last_outcome if last_outcome is not Outcome.error else Outcome.passed, message)], prompt_latency=rng.uniform(0.2, 2.0), mos=rng.uniform(1, 4.5)),
    ]
    return result(outcome, sum(s.duration for s in steps), steps=steps)


def record_share(bounds: tuple[int, int]) -> list[bytes]:
    """A worker's share: iterations start..stop, handed back as one encode() per 1000 (its 'seconds')."""
    start, stop = bounds
    deltas = []
    for chunk in range(start, stop, 1000):
        metrics = Metrics(step_kinds=KINDS)
        for i in range(chunk, min(chunk + 1000, stop)):
            iteration = synthetic(i)
            if iteration is None:
                metrics.dropped += 1
            else:
                metrics.record(iteration)
        deltas.append(metrics.encode())
    return deltas


def assert_same_metrics(seen: Metrics, expected: Metrics) -> None:
    assert seen.step_kinds == expected.step_kinds
    assert (seen.runs, seen.errors, seen.checks, seen.dropped) == (expected.runs, expected.errors, expected.checks, expected.dropped)
    assert seen.examples == expected.examples
    assert seen.names() == expected.names()
    for name in expected.names():
        ours, theirs = seen.histograms[name], expected.histograms[name]
        assert ours.total_count == theirs.total_count, f"{name}: expected {theirs.total_count} values, saw {ours.total_count}"
        assert np.array_equal(np.ctypeslib.as_array(ours.counts), np.ctypeslib.as_array(theirs.counts)), f"{name}: bucket counts differ"
        for stat in STATS:
            assert seen.stat(stat, name) == expected.stat(stat, name), f"{stat}({name}): expected {expected.stat(stat, name)}, saw {seen.stat(stat, name)}"
    for what in ("passed", "degraded", "failed", "error", "checks", "dropped"):
        assert seen.rate(what) == expected.rate(what), f"rate({what})"


def test_encode_decode_round_trip() -> None:
    """decode(encode()) gives back every counter, example, kind and histogram; garbage, or buckets that cannot be, is a ValueError."""
    metrics = Metrics(step_kinds=KINDS)
    for i in range(300):
        iteration = synthetic(i)
        if iteration is None:
            metrics.dropped += 1
        else:
            metrics.record(iteration)
    data = metrics.encode()
    assert isinstance(data, bytes) and data.isascii()
    assert_same_metrics(Metrics.decode(data), metrics)
    empty = Metrics.decode(Metrics().encode())
    assert (empty.names(), empty.finished, empty.dropped) == ([], 0, 0)
    fields = json.loads(data)
    bucket_list, count_list, smallest, largest = fields["histograms"]["duration"]
    def with_duration(*sparse: object) -> bytes:
        return json.dumps({**fields, "histograms": {"duration": list(sparse)}}).encode()
    past_the_last = base64.b64encode(np.array([10**6], dtype="<u4").tobytes()).decode()
    one_count = base64.b64encode(np.array([1], dtype="<u8").tobytes()).decode()
    garbage = [
        b'{"runs": 3}', b"\x00\xff", data[: len(data) // 2],
        json.dumps({**fields, "v": 1}).encode(),  # hdrh's V2 histograms, before
        with_duration("not base64!", count_list, smallest, largest),
        with_duration(bucket_list, one_count, smallest, largest),  # counts and buckets do not pair up
        with_duration(past_the_last, one_count, 0, 0),
    ]
    for bad in garbage:
        with pytest.raises(ValueError, match="not encoded Metrics"):
            Metrics.decode(bad)


def test_merge_across_processes_equals_one_process() -> None:
    """10,000 iterations split over 2 spawned processes, sent as encode() deltas and merged, equal one Metrics that saw them all."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        shares = pool.map_async(record_share, [(0, 5000), (5000, 10_000)]).get(timeout=90)
    merged = Metrics()
    for deltas in shares:
        for delta in deltas:
            merged.merge(Metrics.decode(delta))
    single = Metrics(step_kinds=KINDS)
    for i in range(10_000):
        iteration = synthetic(i)
        if iteration is None:
            single.dropped += 1
        else:
            single.record(iteration)
    assert merged.finished + merged.dropped == 10_000
    assert len(merged.errors) >= 3, f"the synthetic failures should give several reasons, saw {dict(merged.errors)}"
    assert_same_metrics(merged, single)


def test_merge_into_empty_and_of_empty() -> None:
    """Merging an empty Metrics changes nothing (hdrh would reset min to 0); merging into an empty one copies."""
    metrics = Metrics()
    metrics.record(ivr_result())
    before = {s: metrics.stat(s, "turn_latency") for s in STATS}
    metrics.merge(Metrics())
    metrics.merge(Metrics.decode(Metrics().encode()))
    assert {s: metrics.stat(s, "turn_latency") for s in STATS} == before
    copy = Metrics()
    copy.merge(metrics)
    assert_same_metrics(copy, metrics)


def test_each_check_name_has_its_own_pass_share() -> None:
    """rate(checks:status) is the share of `status` checks that passed, beside the share of all checks."""
    from cxtest.model import CheckResult, Outcome, Result, StepResult
    from datetime import datetime, timezone

    def run(status_ok: bool) -> Result:
        checks = (
            CheckResult("status", Outcome.passed if status_ok else Outcome.failed, 200, 200 if status_ok else 500, "status"),
            CheckResult("latency", Outcome.passed, 1, 0.1, "latency"),
        )
        step = StepResult(0, "status", Outcome.passed if status_ok else Outcome.failed, 0.0, 0.1, checks=checks)
        return Result("s", "s", "http", "f", step.outcome, datetime.now(timezone.utc), 0.1, steps=(step,))

    metrics = Metrics()
    for ok in (True, True, True, False):
        metrics.record(run(ok))
    assert metrics.rate("checks:status") == 0.75
    assert metrics.rate("checks:latency") == 1.0
    assert metrics.rate("checks") == 7 / 8
    assert metrics.stat("count", "checks:status") == 4
