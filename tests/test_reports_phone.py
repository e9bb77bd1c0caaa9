"""Per-inventory phone summaries: counts, PDD percentiles, worst-first order, trend, HTML section, CLI block."""

from __future__ import annotations

import io
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console

import cxtest.cli
from cxtest.model import CheckResult, Outcome, Result, StepResult
from cxtest.reports.html import render_html
from cxtest.reports.phone import (
    group_by_inventory,
    percentile,
    summarize_inventory,
    trend_text,
)
from cxtest.store import Store

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
INV = "demo/phone_numbers"

# The contract's outcome for each class when "answered" was expected.
_FAILED_CLASSES = {"busy", "not_found", "unavailable", "no_answer", "rejected", "announcement"}
_ERROR_CLASSES = {"auth_failed", "unreachable"}


def phone(
    number: str,
    seen: str = "answered",
    *,
    expected: str = "answered",
    pdd: float | None = 0.5,
    outcome: Outcome | None = None,
    name: str = "",
    inventory: str = INV,
    at: datetime = T0,
    run_id: str = "run-2",
    quality: float = 4.2,
    flaky: bool = False,
) -> Result:
    """A number's Result shaped as probes/phone.py builds it: connect, then greeting and hold when answered."""
    if outcome is None:
        if seen == expected:
            outcome = Outcome.passed
        else:
            outcome = Outcome.error if seen in _ERROR_CLASSES else Outcome.failed
    connect_measures = {} if pdd is None else {"post_dial_delay": pdd}
    checks = [CheckResult("outcome", Outcome.passed if seen == expected else outcome, expected, seen,
                          f"{seen}, expected {expected}")]
    steps = []
    if seen == "answered":
        connect_measures["time_to_answer"] = (pdd or 0) + 1.0
    steps.append(StepResult(0, "connect", Outcome.passed if seen == expected else outcome, 0.0, 1.5,
                            checks=tuple(checks), measures=connect_measures))
    if seen == "answered":
        steps.append(StepResult(1, "greeting", Outcome.passed, 1.5, 3.0,
                                checks=(CheckResult("greeting", Outcome.passed, "welcome", "welcome to acme", "heard"),),
                                measures={"greeting_latency": 0.4, "similarity": 0.93}))
        steps.append(StepResult(2, "hold", Outcome.passed, 4.5, 5.0, measures={"loss": 0.0, "jitter": 0.002, "quality": quality}))
    measures = {k: v for s in steps for k, v in s.measures.items()}
    message = "" if outcome is Outcome.passed else f"{seen}, expected {expected}"
    return Result(
        scenario_id=f"{inventory}/{number}",
        scenario_name=f"Acme published numbers: {name or number}",
        channel="phone",
        file="scenarios/demo/phone_numbers.yaml",
        outcome=outcome,
        started_at=at,
        duration=6.0,
        message=message,
        steps=tuple(steps),
        measures=measures,
        flaky=flaky,
        run_id=run_id,
    )


def crashed(number: str, **kw) -> Result:
    """A number whose probe crashed: no connect step, so no "outcome" check."""
    return Result(f"{INV}/{number}", f"Acme published numbers: {number}", "phone", "phone.yaml", Outcome.error, T0, 0.1,
                  message="probe crashed: KeyError 'to'", **kw)


def http(scenario_id: str) -> Result:
    return Result(scenario_id, scenario_id, "http", f"{scenario_id}.yaml", Outcome.passed, T0, 0.2)


# --------------------------------------------------------------------------- grouping and counts


def test_grouping_by_inventory_ignores_other_channels() -> None:
    """Phone results group by the scenario id before the last "/", in first-seen order; other channels are left out."""
    results = [phone("+1001"), http("demo/phone_numbers/+1009"), phone("+2001", inventory="uk/numbers"), phone("+1002")]
    groups = group_by_inventory(results)
    assert list(groups) == [INV, "uk/numbers"], list(groups)
    assert [r.scenario_id for r in groups[INV]] == [f"{INV}/+1001", f"{INV}/+1002"]


def test_counts_by_class_and_outcome_with_a_crash_as_error() -> None:
    """Classes come from the connect step's outcome check; a result without it counts as class "error"."""
    results = [phone("+1001"), phone("+1002"), phone("+1003", "busy"), phone("+1004", "unreachable", pdd=None),
               crashed("+1005"), phone("+1006", "busy", expected="busy")]
    summary = summarize_inventory(INV, results)
    assert summary.classes == {"answered": 2, "busy": 2, "unreachable": 1, "error": 1}, summary.classes
    assert list(summary.classes) == ["answered", "busy", "unreachable", "error"], "classes keep the display order"
    assert summary.outcomes == {"passed": 3, "degraded": 0, "failed": 1, "error": 2}, summary.outcomes
    assert summary.name == "Acme published numbers" and summary.total == 6


def test_pdd_percentiles_over_the_calls_that_measured_one() -> None:
    """min/p50/p90/p95/max interpolate linearly over the PDDs present; calls without a PDD are not counted."""
    results = [phone(f"+1{i:03d}", pdd=i / 10) for i in range(1, 11)] + [phone("+1999", "unreachable", pdd=None)]
    pdd = summarize_inventory(INV, results).pdd
    assert pdd is not None and pdd.count == 10
    got = (pdd.min, pdd.p50, pdd.p90, pdd.p95, pdd.max)
    assert got == pytest.approx((0.1, 0.55, 0.91, 0.955, 1.0)), got
    assert percentile([2.0], 95) == 2.0
    assert summarize_inventory(INV, [crashed("+1")]).pdd is None


def test_worst_first_order() -> None:
    """Error before failed before degraded before passed; then by class; then the slowest PDD first."""
    results = [
        phone("+p-fast", pdd=0.2),
        phone("+p-slow", pdd=2.5),
        phone("+degraded", outcome=Outcome.degraded, pdd=1.0),
        phone("+busy-slow", "busy", pdd=0.9),
        phone("+notfound", "not_found", pdd=3.0),
        phone("+busy-fast", "busy", pdd=0.1),
        phone("+unreach", "unreachable", pdd=None),
        crashed("+crash"),
    ]
    order = [row.number for row in summarize_inventory(INV, results).numbers]
    assert order == ["+unreach", "+crash", "+busy-slow", "+busy-fast", "+notfound", "+degraded", "+p-slow", "+p-fast"], order


def test_number_row_carries_the_table_columns() -> None:
    """A row has the number, its row name, class, PDD, answer time, greeting similarity, quality and flaky flag."""
    [row] = summarize_inventory(INV, [phone("+1001", name="Sales line", pdd=0.7, quality=3.9, flaky=True)]).numbers
    seen = (row.number, row.name, row.call_class, row.pdd, row.time_to_answer, row.similarity, row.quality, row.flaky)
    assert seen == ("+1001", "Sales line", "answered", 0.7, pytest.approx(1.7), 0.93, 3.9, True), seen
    [unnamed] = summarize_inventory(INV, [phone("+1002")]).numbers
    assert unnamed.name == "", "a row without a name shows no name, not the number twice"


# --------------------------------------------------------------------------- trend


def previous_run() -> dict[str, Result]:
    before = T0 - timedelta(hours=1)
    old = [
        phone("+1001", pdd=0.4, at=before, run_id="run-1"),  # will fail: new failure
        phone("+1002", "busy", pdd=0.3, at=before, run_id="run-1"),  # will answer: recovered, busy -> answered
        phone("+1003", "not_found", pdd=0.2, at=before, run_id="run-1"),  # still failing
        phone("+1004", pdd=0.5, at=before - timedelta(minutes=5), run_id="run-0"),  # still passing
    ]
    return {r.scenario_id: r for r in old}


def current_run() -> list[Result]:
    return [
        phone("+1001", "unavailable", pdd=0.6),
        phone("+1002", pdd=0.35),
        phone("+1003", "not_found", pdd=0.2),
        phone("+1004", pdd=0.9),
        phone("+1005", pdd=0.1),  # new in the inventory: nothing to compare
    ]


def test_trend_per_number() -> None:
    """Each number is a new failure, recovered, still failing or unchanged, with its class change and PDD change."""
    rows = {row.number: row for row in summarize_inventory(INV, current_run(), previous_run()).numbers}
    seen = {n: (r.trend, r.class_change, None if r.pdd_change is None else round(r.pdd_change, 3)) for n, r in rows.items()}
    assert seen == {
        "+1001": ("new failure", "answered -> unavailable", 0.2),
        "+1002": ("recovered", "busy -> answered", 0.05),
        "+1003": ("still failing", "", 0.0),
        "+1004": ("", "", 0.4),
        "+1005": ("", "", None),
    }, seen


def test_trend_of_the_inventory() -> None:
    """Pass count and PDD p50/p95 deltas are over the numbers present in both runs; the line says so."""
    trend = summarize_inventory(INV, current_run(), previous_run()).trend
    # now passed: +1002, +1004 (2) vs then +1001, +1004 (2); PDD now [0.6, 0.35, 0.2, 0.9] vs then [0.4, 0.3, 0.2, 0.5]
    assert (trend.compared, trend.passed_delta) == (4, 0), trend
    assert trend.pdd_p50_delta == pytest.approx(0.475 - 0.35) and trend.pdd_p95_delta == pytest.approx(0.855 - 0.485), trend
    assert (trend.new_failures, trend.recovered, trend.still_failing, trend.class_changes) == (1, 1, 1, 2), trend
    assert trend.previous_at == T0 - timedelta(hours=1)
    text = trend_text(trend)
    assert text == ("vs 2025-03-01 08:00 (4 numbers): passed +0, PDD p50 +125ms, p95 +370ms; "
                    "1 new failure(s), 1 recovered, 1 still failing, 2 class change(s)"), text


def test_no_previous_run() -> None:
    """Without previous results (no store, or a first run) the trend says "no previous run"."""
    for previous in (None, {}):
        trend = summarize_inventory(INV, current_run(), previous).trend
        assert not trend.has_previous and trend_text(trend) == "no previous run", trend
        assert all(row.trend == "" and row.pdd_change is None for row in summarize_inventory(INV, current_run(), previous).numbers)


# --------------------------------------------------------------------------- HTML


def test_html_section_per_inventory(tmp_path: Path) -> None:
    """The report gets a section per inventory: its name, class counts, two SVG plots, the trend and the numbers."""
    results = current_run() + [phone("+2001", "busy", inventory="uk/numbers"), http("api-health")]
    page = render_html(results, base_dir=tmp_path, previous=previous_run())
    assert page.count("Phone inventory: Acme published numbers") == 2, "one section per inventory"
    assert "demo/phone_numbers" in page and "uk/numbers" in page
    section = page[page.index("Phone inventory:"):page.index("<h2>Results</h2>")]
    for chip in ("answered 3", "unavailable 1", "not_found 1", "busy 1"):
        assert chip in section, f"class chip {chip!r} missing from the inventory sections"
    assert section.count("<svg") == 4, f"expected a PDD histogram and a class bar per inventory, saw {section.count('<svg')} SVGs"
    assert "1 new failure(s), 1 recovered" in section and "busy -&gt; answered" in section
    assert "no previous run" in section, "uk/numbers has no previous results"
    assert "http://" not in re.sub(r'xmlns(:xlink)?="http://[^"]+"', "", section), "plots must not fetch anything"


def test_html_without_phone_results_has_no_inventory_section(tmp_path: Path) -> None:
    """Reports of other channels are unchanged: no inventory heading."""
    assert "Phone inventory" not in render_html([http("api-health")], base_dir=tmp_path)


def test_html_for_300_numbers_caps_the_table_and_stays_quick(tmp_path: Path) -> None:
    """300 numbers: all worst-first rows up to 200, a note saying so, rendered in a few seconds."""
    results = inventory_of_300()
    started = time.perf_counter()
    page = render_html(results, base_dir=tmp_path)
    took = time.perf_counter() - started
    assert "Showing the 200 worst of 300 numbers." in page
    section = page[page.index("Phone inventory:"):page.index("<h2>Results</h2>")]
    assert section.count('<td class="mono">') == 200, section.count('<td class="mono">')
    assert took < 10, f"rendering 300 numbers took {took:.1f}s"


# --------------------------------------------------------------------------- CLI


def inventory_of_300() -> list[Result]:
    """300 numbers: 270 answered, 15 busy, 9 not_found, 4 unreachable, 2 crashed."""
    results = []
    for i in range(300):
        number = f"+1800555{i:04d}"
        if i < 270:
            results.append(phone(number, pdd=0.2 + (i % 50) / 100))
        elif i < 285:
            results.append(phone(number, "busy", pdd=0.3))
        elif i < 294:
            results.append(phone(number, "not_found", pdd=0.25))
        elif i < 298:
            results.append(phone(number, "unreachable", pdd=None))
        else:
            results.append(crashed(number))
    return results


def summary_text(monkeypatch: pytest.MonkeyPatch, results: list[Result], previous=None) -> str:
    buffer = io.StringIO()
    monkeypatch.setattr(cxtest.cli, "out", Console(file=buffer, width=160, no_color=True, highlight=False))
    cxtest.cli.summarize(results, table=True, previous=previous)
    return buffer.getvalue()


def test_cli_summary_of_300_numbers_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 300-number inventory prints its counts, classes, PDD and trend and only the 10 worst numbers."""
    text = summary_text(monkeypatch, inventory_of_300() + [http("api-health")])
    lines = text.splitlines()
    assert len(lines) < 40, f"expected under 40 lines for 300 numbers, got {len(lines)}:\n{text}"
    assert "300: 270 passed, 24 failed, 6 error" in text, text
    assert "answered 270, busy 15, not_found 9, unreachable 4, error 2" in text, text
    assert "p50 " in text and "p95 " in text and "no previous run" in text, text
    assert "... and 20 more not-passing number(s)" in text, text
    assert sum(1 for line in lines if "+1800555" in line) == 10, text
    assert "api-health" in text, "other channels keep their row"
    assert lines[-1].startswith("271 passed, 24 failed, 6 error in 301 scenario(s)"), lines[-1]
    assert " name " not in lines[5], f"no row has a name, so no name column: {lines[5]!r}"


def test_cli_summary_shows_the_trend(monkeypatch: pytest.MonkeyPatch) -> None:
    """With previous results the block carries the trend line and each worst number's change."""
    text = summary_text(monkeypatch, current_run(), previous_run())
    assert "passed +0, PDD p50 +125ms, p95 +370ms" in text, text
    assert "new failure, answered -> unavailable, PDD +200ms" in text, text
    still = next(line for line in text.splitlines() if "+1003" in line)
    assert "still failing" in still and "PDD" not in still, f"an unchanged PDD is not worth a word: {still!r}"


def test_cli_fetches_previous_results_from_the_store(tmp_path: Path) -> None:
    """execute's helper returns each number's newest earlier result, {} on a first run and None without a store."""
    with Store(f"sqlite:///{tmp_path / 'cxtest.db'}") as store:
        now = current_run()
        assert cxtest.cli._previous_phone_results(store, now) == {}
        store.save(list(previous_run().values()) + now)
        found = cxtest.cli._previous_phone_results(store, now)
    assert found is not None and sorted(found) == sorted(previous_run()), found
    assert {r.run_id for r in found.values()} == {"run-0", "run-1"}
    assert cxtest.cli._previous_phone_results(None, now) is None
