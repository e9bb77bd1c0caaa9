"""Contract tests for cxtest.store.Store, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import socket
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event, text

from cxtest.errors import StoreError
from cxtest.model import Artifact, CheckResult, Outcome, Result, StepResult
from cxtest.store import Store, metadata

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cxtest.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str):
    with Store(store_url) as s:
        yield s
        # The PostgreSQL server lives for the session: leave an empty schema for the next test.
        if s.dialect == "postgresql":
            metadata.drop_all(s.engine)


def make_result(
    scenario_id: str = "billing",
    *,
    at: datetime = T0,
    outcome: Outcome = Outcome.passed,
    run_id: str = "run-1",
    steps: int = 3,
    checks: int = 3,
) -> Result:
    return Result(
        scenario_id=scenario_id,
        scenario_name=f"{scenario_id} journey",
        channel="http",
        file=f"scenarios/{scenario_id}.yaml",
        outcome=outcome,
        started_at=at,
        duration=1.25,
        run_id=run_id,
        steps=tuple(
            StepResult(
                index=i,
                name=f"step {i + 1}",
                outcome=Outcome.passed,
                started=i * 0.4,
                duration=0.35,
                checks=tuple(
                    CheckResult(f"check {k}", Outcome.passed, 200, 200, "status 200 as expected")
                    for k in range(checks)
                ),
                measures={"latency": 0.12 + i},
            )
            for i in range(steps)
        ),
    )


def full_result() -> Result:
    return Result(
        scenario_id="ivr-billing",
        scenario_name="Billing line reaches billing queue",
        channel="ivr",
        file="scenarios/billing.yaml",
        outcome=Outcome.degraded,
        started_at=T0,
        duration=38.5,
        message="mos 3.4 below 3.6",
        steps=(
            StepResult(
                index=0,
                name="greeting",
                outcome=Outcome.passed,
                started=0.0,
                duration=3.2,
                checks=(
                    CheckResult("prompt", Outcome.passed, "Welcome to Acme Bank", "welcome to acme bank", "heard it"),
                    CheckResult("confidence", Outcome.passed, 0.8, 0.93, "0.93 >= 0.8"),
                    CheckResult("within", Outcome.passed, 4, 3, "3s within 4s"),
                ),
                measures={"latency": 1.2, "confidence": 0.93},
                evidence={"transcript": "welcome to acme bank", "recording": "artifacts/greeting.wav"},
            ),
            StepResult(
                index=1,
                name="menu",
                outcome=Outcome.failed,
                started=3.2,
                duration=2.0,
                message="no transfer",
                checks=(
                    CheckResult("transfer", Outcome.failed, True, False, "expected a transfer, got none"),
                    CheckResult("buttons", Outcome.passed, ["Pay", "Balance"], ["Pay", "Balance", "Help"], "has them"),
                    CheckResult("json", Outcome.passed, {"a": [1, 2.5, None]}, {"a": [1, 2.5, None], "b": "x"}, "ok"),
                    CheckResult("nothing", Outcome.error, None, None, "no reply"),
                ),
            ),
            StepResult(index=2, name="empty", outcome=Outcome.skipped, started=5.2, duration=0.0),
        ),
        checks=(CheckResult("mos", Outcome.degraded, 3.6, 3.4, "mos 3.4 below 3.6"),),
        measures={"duration": 38.5, "mos": 3.4},
        artifacts=(
            Artifact("call recording", "artifacts/call.wav", "recording"),
            Artifact("log", "artifacts/log.txt"),
        ),
        attempts=2,
        flaky=True,
        tags=("billing", "release-gate"),
        location="eu-1",
        run_id="run-42",
    )


# --------------------------------------------------------------------------- contract


def test_round_trip_full_result(store: Store, store_url: str) -> None:
    """A saved Result comes back equal, steps, checks, measures and artifacts included, from another Store."""
    saved = full_result()
    store.save([saved])
    with Store(store_url) as other:
        [loaded] = other.results()
    assert loaded == saved
    assert loaded.started_at.tzinfo is not None and loaded.started_at.utcoffset() == timedelta(0)
    assert isinstance(loaded.outcome, Outcome) and isinstance(loaded.steps[0].checks[0].outcome, Outcome)


def test_non_json_values_are_stored_as_text_or_null(store: Store) -> None:
    """Values JSON cannot hold come back as their str(); NaN and infinities as null, and measures as NaN."""
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    step = StepResult(
        index=0, name="s", outcome=Outcome.failed, started=0.0, duration=1.0,
        checks=(CheckResult("odd", Outcome.failed, when, float("inf"), "odd values"),
                CheckResult("path", Outcome.passed, Path("/tmp/x"), {1: "one"}, "more odd values")),
        measures={"mos": float("nan"), "jitter": float("inf"), "latency": 0.25},
    )
    store.save([Result("odd", "odd", "http", "odd.yaml", Outcome.failed, T0, 1.0, steps=(step,))])
    [loaded] = store.results()
    odd, path = loaded.steps[0].checks
    assert (odd.expected, odd.actual) == (str(when), None)
    assert (path.expected, path.actual) == ("/tmp/x", {"1": "one"})
    measures = loaded.steps[0].measures
    assert measures["latency"] == 0.25 and all(math.isnan(measures[name]) for name in ("mos", "jitter"))


def test_query_by_scenario_id(store: Store) -> None:
    """results(scenario_id=...) returns only that scenario's results."""
    store.save([make_result("a"), make_result("b"), make_result("a", at=T0 + timedelta(minutes=1))])
    got = store.results(scenario_id="a")
    assert [r.scenario_id for r in got] == ["a", "a"]
    assert store.results(scenario_id="missing") == []


def test_query_by_time_window(store: Store) -> None:
    """since is inclusive, until exclusive, and any time zone is compared as the same instant."""
    store.save([make_result(at=T0 + timedelta(hours=h)) for h in range(4)])
    plus_two = timezone(timedelta(hours=2))
    got = store.results(since=(T0 + timedelta(hours=1)).astimezone(plus_two), until=T0 + timedelta(hours=3))
    assert [r.started_at for r in got] == [T0 + timedelta(hours=2), T0 + timedelta(hours=1)]
    assert [r.started_at for r in store.results(since=T0 + timedelta(hours=3))] == [T0 + timedelta(hours=3)]
    assert [r.started_at for r in store.results(until=T0 + timedelta(hours=1))] == [T0]


def test_query_by_outcome(store: Store) -> None:
    """results(outcome=...) returns only results with that outcome."""
    store.save([
        make_result(outcome=Outcome.passed),
        make_result(outcome=Outcome.failed, at=T0 + timedelta(seconds=1)),
        make_result(outcome=Outcome.error, at=T0 + timedelta(seconds=2)),
    ])
    assert [r.outcome for r in store.results(outcome=Outcome.failed)] == [Outcome.failed]
    assert store.results(outcome=Outcome.degraded) == []


def test_query_by_run_id(store: Store) -> None:
    """results(run_id=...) returns exactly the results of that run."""
    store.save([make_result("a", run_id="r1"), make_result("b", run_id="r2"), make_result("c", run_id="r1")])
    assert sorted(r.scenario_id for r in store.results(run_id="r1")) == ["a", "c"]


def test_limit_and_newest_first(store: Store) -> None:
    """Results come newest first, across batches, and limit keeps the newest ones."""
    offsets = [5, 1, 9, 3, 7]
    store.save([make_result(at=T0 + timedelta(seconds=s)) for s in offsets[:3]])
    store.save([make_result(at=T0 + timedelta(seconds=s)) for s in offsets[3:]])
    everything = store.results()
    assert [r.started_at for r in everything] == [T0 + timedelta(seconds=s) for s in sorted(offsets, reverse=True)]
    assert store.results(limit=2) == everything[:2]
    assert all(len(r.steps) == 3 and all(len(s.checks) == 3 for s in r.steps) for r in everything)


def test_latest_per_scenario(store: Store) -> None:
    """latest() gives the newest result of each scenario, sorted by scenario_id."""
    store.save([
        make_result("b", at=T0, outcome=Outcome.failed),
        make_result("a", at=T0 + timedelta(minutes=2), outcome=Outcome.passed),
        make_result("b", at=T0 + timedelta(minutes=5), outcome=Outcome.passed),
        make_result("a", at=T0 + timedelta(minutes=1), outcome=Outcome.failed),
        make_result("c", at=T0, outcome=Outcome.error),
    ])
    latest = store.latest()
    assert [(r.scenario_id, r.started_at, r.outcome) for r in latest] == [
        ("a", T0 + timedelta(minutes=2), Outcome.passed),
        ("b", T0 + timedelta(minutes=5), Outcome.passed),
        ("c", T0, Outcome.error),
    ]
    assert latest[0].steps == make_result("a").steps


def test_save_is_atomic(store: Store) -> None:
    """A batch that fails mid-save (a row the database refuses after others went in) leaves nothing behind."""
    store.save([make_result("kept")])
    good = make_result("new")
    bad = replace(make_result("new", at=T0 + timedelta(seconds=1)), scenario_id=None)  # results.scenario_id is NOT NULL
    with pytest.raises(StoreError, match="cannot save results"):
        store.save([good, good, bad, good])
    assert [r.scenario_id for r in store.results()] == ["kept"]
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM results")).scalar() == 1


def test_bulk_save_is_fast(store: Store) -> None:
    """1,000 results of 3 steps x 3 checks save in under 2 s and read back whole."""
    batch = [make_result(f"s{i % 50}", at=T0 + timedelta(seconds=i)) for i in range(1000)]
    started = time.perf_counter()
    store.save(batch)
    elapsed = time.perf_counter() - started
    print(f"\n{store.dialect}: saved 1000 results in {elapsed:.3f}s")
    assert elapsed < 2.0
    assert store.results() == batch[::-1]


def _old_layout(engine) -> None:  # type: ignore[no-untyped-def]
    """The tables as cxtest wrote them before one row per result, holding full_result() and one step-less result."""
    from sqlalchemy import JSON, Boolean, Column, DateTime, Float, ForeignKey, Integer, MetaData, String, Table, Text

    old = MetaData()
    results = Table(
        "results", old, Column("id", Integer, primary_key=True), Column("run_id", String(64)), Column("scenario_id", String(255)),
        Column("scenario_name", Text), Column("channel", String(32)), Column("file", Text), Column("outcome", String(16)),
        Column("started_at", DateTime(timezone=True)), Column("duration", Float), Column("message", Text),
        Column("attempts", Integer), Column("flaky", Boolean), Column("tags", JSON), Column("location", String(64)),
        Column("measures", JSON), Column("checks", JSON), Column("artifacts", JSON),
    )
    steps = Table(
        "steps", old, Column("id", Integer, primary_key=True), Column("result_id", Integer, ForeignKey("results.id")),
        Column("index", Integer), Column("name", Text), Column("outcome", String(16)), Column("started", Float),
        Column("duration", Float), Column("message", Text), Column("measures", JSON), Column("evidence", JSON),
    )
    checks = Table(
        "checks", old, Column("id", Integer, primary_key=True), Column("step_id", Integer, ForeignKey("steps.id")),
        Column("name", Text), Column("outcome", String(16)), Column("expected", JSON(none_as_null=False)),
        Column("actual", JSON(none_as_null=False)), Column("text", Text),
    )
    old.create_all(engine)
    r = full_result()
    check = lambda c: {"name": c.name, "outcome": c.outcome.value, "expected": c.expected, "actual": c.actual, "text": c.text}  # noqa: E731
    with engine.begin() as conn:
        result_ids = []
        for result in (r, replace(r, scenario_id="bare", steps=())):
            inserted = conn.execute(results.insert(), {
                "run_id": result.run_id, "scenario_id": result.scenario_id, "scenario_name": result.scenario_name,
                "channel": result.channel, "file": result.file, "outcome": result.outcome.value,
                "started_at": result.started_at.replace(tzinfo=None), "duration": result.duration, "message": result.message,
                "attempts": result.attempts, "flaky": result.flaky, "tags": list(result.tags), "location": result.location,
                "measures": dict(result.measures), "checks": [check(c) for c in result.checks],
                "artifacts": [{"label": a.label, "path": a.path, "kind": a.kind} for a in result.artifacts],
            })
            result_ids.append(inserted.inserted_primary_key[0])
        # Steps saved out of order, as concurrent writers left them: the fold orders them by index.
        for step_id, step in zip((12, 11, 10), reversed(r.steps)):
            conn.execute(steps.insert(), {
                "id": step_id, "result_id": result_ids[0], "index": step.index, "name": step.name, "outcome": step.outcome.value,
                "started": step.started, "duration": step.duration, "message": step.message,
                "measures": dict(step.measures), "evidence": dict(step.evidence),
            })
            if step.checks:
                conn.execute(checks.insert(), [{"step_id": step_id, **check(c)} for c in step.checks])


def test_a_database_from_before_keeps_its_steps_and_checks(store_url: str) -> None:
    """Opening a database with the old steps and checks tables folds them into their results and drops the tables."""
    from sqlalchemy import create_engine, inspect

    url = store_url.replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url)
    _old_layout(engine)
    try:
        with Store(store_url) as s:
            loaded = {r.scenario_id: r for r in s.results()}
            assert loaded["ivr-billing"] == full_result()
            assert loaded["bare"].steps == ()
            assert {"steps", "checks"}.isdisjoint(inspect(s.engine).get_table_names())
            s.save([make_result("after")])
        with Store(store_url) as again:  # folding happens once; the next opening finds nothing to do
            assert sorted(r.scenario_id for r in again.results()) == ["after", "bare", "ivr-billing"]
    finally:
        if engine.dialect.name == "postgresql":
            metadata.drop_all(engine)
        engine.dispose()


# --------------------------------------------------------------------------- SQLite specifics


def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    """A SQLite file store runs in WAL mode with synchronous=NORMAL, foreign keys and a busy timeout."""
    with Store(f"sqlite:///{tmp_path / 'wal.db'}") as s:
        s.save([make_result()])
        with s.engine.connect() as conn:
            pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in
                       ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["synchronous"] == 1  # NORMAL
    assert pragmas["foreign_keys"] == 1
    assert pragmas["busy_timeout"] > 0
    assert (tmp_path / "wal.db-wal").exists() or (tmp_path / "wal.db").exists()


def _save_batches(url: str, writer: int, batches: int) -> None:
    """One writer process: batches of results whose scenario id, step names and check names all name the writer and result."""
    with Store(url) as s:
        for b in range(batches):
            batch = []
            for i in range(50):
                own = f"w{writer}-b{b}-r{i}"
                r = make_result(own, steps=2, checks=2)
                steps = tuple(
                    replace(step, name=f"{own} step", checks=tuple(replace(c, name=f"{own} check") for c in step.checks))
                    for step in r.steps
                )
                batch.append(replace(r, steps=steps))
            s.save(batch)


def test_sqlite_writers_in_several_processes_keep_rows_together(tmp_path: Path) -> None:
    """Three processes saving batches into one SQLite file at once: every step and check stays with its own result."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    Store(url).close()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_save_batches, args=(url, w, 20)) for w in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    with Store(url) as s:
        results = s.results()
    assert len(results) == 3 * 20 * 50
    for r in results:
        assert [step.name for step in r.steps] == [f"{r.scenario_id} step"] * 2
        assert {c.name for step in r.steps for c in step.checks} == {f"{r.scenario_id} check"}


async def test_sqlite_memory_store_is_shared_across_threads() -> None:
    """sqlite:// keeps one database for every thread, so asyncio.to_thread callers see their own writes."""
    with Store("sqlite://") as s:
        await asyncio.to_thread(s.save, [make_result()])
        got = await asyncio.to_thread(s.results)
    assert got == [make_result()]


def test_unwritable_sqlite_path(tmp_path: Path) -> None:
    """A SQLite file that cannot be created raises StoreError naming the URL, not a driver traceback."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")  # refused even for root, unlike a chmod
    url = f"sqlite:///{blocker / 'cxtest.db'}"
    with pytest.raises(StoreError) as caught:
        Store(url)
    message = str(caught.value)
    assert url in message and "unable to open" in message
    assert "Traceback" not in message and "sqlalche.me" not in message


# --------------------------------------------------------------------------- bad URLs


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_postgres_redacts_password() -> None:
    """An unreachable PostgreSQL URL raises StoreError naming the URL with its password as ***."""
    port = _closed_port()
    with pytest.raises(StoreError) as caught:
        Store(f"postgresql://cx:s3cret-pw@127.0.0.1:{port}/cxtest")
    message = str(caught.value)
    assert f"postgresql://cx:***@127.0.0.1:{port}/cxtest" in message
    assert "s3cret-pw" not in message
    assert "Traceback" not in message and "sqlalche.me" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://cx:s3cret-pw@127.0.0.1:notaport/cxtest",
        "mysql://cx:s3cret-pw@127.0.0.1/cxtest",
        "cx:s3cret-pw@127.0.0.1/cxtest",
    ],
)
def test_bad_url_raises_store_error(url: str) -> None:
    """A malformed or unsupported store URL raises StoreError without showing the password."""
    with pytest.raises(StoreError) as caught:
        Store(url)
    assert "s3cret-pw" not in str(caught.value)
    assert "***" in str(caught.value)


def test_errors_during_use_are_translated(tmp_path: Path) -> None:
    """A driver failure after opening (here a failing statement) surfaces as StoreError too."""
    with Store(f"sqlite:///{tmp_path / 'x.db'}") as s:

        @event.listens_for(s.engine, "before_cursor_execute")
        def _fail(*_args: object) -> None:
            raise OSError("disk I/O error")

        with pytest.raises(StoreError, match="cannot read results from store 'sqlite:///"):
            s.results()
