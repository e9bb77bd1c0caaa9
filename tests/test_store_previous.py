"""Store.previous_results: what a run's trend compares against, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cxtest.model import CheckResult, Outcome, Result, StepResult
from cxtest.store import Store, metadata

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cxtest.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    with Store(url) as s:
        yield s
        # The PostgreSQL server lives for the session: leave an empty schema for the next test.
        if s.dialect == "postgresql":
            metadata.drop_all(s.engine)


def number(scenario_id: str, at: datetime, run_id: str, outcome: Outcome = Outcome.passed) -> Result:
    connect = StepResult(
        index=0, name="connect", outcome=outcome, started=0.0, duration=0.4,
        checks=(CheckResult("outcome", outcome, "answered", "answered" if outcome is Outcome.passed else "busy", "x"),),
        measures={"post_dial_delay": 0.3},
    )
    return Result(scenario_id, scenario_id, "phone", "numbers.yaml", outcome, at, 1.0, steps=(connect,), run_id=run_id)


def test_previous_results_newest_per_number_before_the_run(store: Store) -> None:
    """Only ids under the prefix, started before `before`, not from the excluded run; the newest per id."""
    inv = "demo/phone_numbers/"
    store.save([
        number(inv + "+1001", T0, "r1", Outcome.failed),
        number(inv + "+1002", T0, "r1"),
        number("demo/phone_numbersX/+1001", T0 + timedelta(minutes=5), "r2"),  # another inventory, same start
        number("Demo/phone_numbers/+1001", T0 + timedelta(minutes=5), "r2"),  # differs only in case
        number("demo/phone%numbers/+1001", T0 + timedelta(minutes=5), "r2"),  # LIKE wildcards must be literal
        number(inv + "+1001", T0 + timedelta(minutes=5), "r2"),
        number(inv + "+1001", T0 + timedelta(minutes=10), "r3", Outcome.failed),  # this run
        number(inv + "+1003", T0 + timedelta(minutes=10), "r3"),  # this run
        number(inv + "+1002", T0 + timedelta(minutes=11), "r4"),  # another agent's, after this run started
    ])
    got = store.previous_results(inv, before=T0 + timedelta(minutes=10), exclude_run_id="r3")
    seen = [(r.scenario_id, r.run_id, r.outcome) for r in got]
    assert seen == [(inv + "+1001", "r2", Outcome.passed), (inv + "+1002", "r1", Outcome.passed)], seen
    assert got[0].steps[0].checks[0].actual == "answered" and got[0].steps[0].measures == {"post_dial_delay": 0.3}


def test_previous_results_excludes_the_run_even_when_older(store: Store) -> None:
    """A result of the excluded run is never its own previous result, whatever its timestamp."""
    store.save([number("inv/+1", T0, "this"), number("inv/+1", T0 - timedelta(days=1), "before")])
    got = store.previous_results("inv/", before=T0 + timedelta(hours=1), exclude_run_id="this")
    assert [(r.run_id, r.started_at) for r in got] == [("before", T0 - timedelta(days=1))]
    assert store.previous_results("inv/", before=T0 - timedelta(days=1)) == []
