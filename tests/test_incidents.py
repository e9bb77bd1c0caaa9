"""alerts.incidents: the persisted state machine, on SQLite and PostgreSQL alike.

Deliveries are recorded by a small enqueue function that writes to a test table
inside the caller's transaction, as alerts.outbox.enqueue does, so a rolled-back
transition leaves no delivery behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.engine import Connection

from alerts.incidents import EVIDENCE_KEPT, Incidents
from alerts.model import Change, Incident, IncidentState
from alerts.rules import Verdict, judge
from cxtest.model import AlertPolicy, Maintenance, Outcome, Result, Scenario, Schedule
from cxtest.store import Store, metadata

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
LINK_BASE = "https://cx.example.com/status/"

# --------------------------------------------------------------------------- deliveries, recorded

test_metadata = MetaData()
deliveries = Table(
    "test_deliveries",
    test_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", Integer, nullable=False),
    Column("key", String(512), nullable=False),
    Column("change", String(16), nullable=False),
    Column("notifier", String(64), nullable=False),
)


def record(conn: Connection, incident: Incident, change: Change, notifiers: Sequence[str]) -> list[int]:
    """The outbox's contract: insert pending deliveries inside the caller's transaction."""
    return [
        conn.execute(
            insert(deliveries)
            .values(incident_id=incident.id, key=incident.key, change=change.value, notifier=name)
            .returning(deliveries.c.id)
        ).scalar_one()
        for name in notifiers
    ]


def recorded(store: Store) -> list[tuple[str, str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(deliveries).order_by(deliveries.c.id)).all()
    return [(r.key, r.change, r.notifier) for r in rows]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cxtest.db'}"
    return request.getfixturevalue("postgres_url")


def _reset(store: Store) -> None:
    # The PostgreSQL server lives for the session: every test starts from empty tables.
    test_metadata.drop_all(store.engine)
    metadata.drop_all(store.engine)
    metadata.create_all(store.engine)
    test_metadata.create_all(store.engine)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url) as s:
        _reset(s)
        yield s
        test_metadata.drop_all(s.engine)
        metadata.drop_all(s.engine)


@pytest.fixture
def incidents(store: Store) -> Incidents:
    return Incidents(store, enqueue=record, link_base=LINK_BASE)


def scenario(**changes: object) -> Scenario:
    fields: dict[str, object] = {
        "id": "demo/status",
        "name": "Status page answers",
        "channel": "http",
        "steps": ({"request": {"url": "http://127.0.0.1/status"}},),
        "schedule": Schedule(every=60, locations=("eu-1",)),
        "alert": AlertPolicy(open_after=3, resolve_after=2, notify=("oncall", "ops-hook"), remind_every=600),
        "tags": ("billing",),
    }
    fields.update(changes)
    return Scenario(**fields)


def result(outcome: Outcome, minute: int, location: str = "eu-1", scenario_id: str = "demo/status") -> Result:
    return Result(
        scenario_id=scenario_id,
        scenario_name="Status page answers",
        channel="http",
        file="scenarios/status.yaml",
        outcome=outcome,
        started_at=T0 + timedelta(minutes=minute),
        duration=0.2,
        message="step 1 (status): status (503) == 200" if outcome is Outcome.failed else "",
        location=location,
        run_id=f"run-{location}-{minute}",
    )


def firing(*minutes: int, rule: str = "failures", location: str | None = "eu-1") -> Verdict:
    evidence = tuple(result(Outcome.failed, m, location or "eu-1") for m in sorted(minutes, reverse=True))
    return Verdict(rule, location, True, "critical", f"{len(minutes)} failed runs in a row at eu-1: step 1", evidence)


def resolving(rule: str = "failures", location: str | None = "eu-1") -> Verdict:
    return Verdict(rule, location, False, "critical", "2 passing runs in a row at eu-1", ())


KEY = "demo/status:failures@eu-1"


# --------------------------------------------------------------------------- open, append, resolve


def test_open_once_and_append_evidence(incidents: Incidents, store: Store) -> None:
    """A firing verdict opens one incident and enqueues `opened`; more firing verdicts only add evidence."""
    changes = incidents.apply(scenario(), [firing(0, 1, 2)], now=T0)
    assert [(i.key, c) for i, c in changes] == [(KEY, Change.opened)]
    opened = changes[0][0]
    assert (opened.state, opened.rule, opened.location, opened.severity) == (IncidentState.open, "failures", "eu-1", "critical")
    assert opened.link == f"https://cx.example.com/status/incidents/{opened.id}"
    assert [e.run_id for e in opened.evidence] == ["run-eu-1-2", "run-eu-1-1", "run-eu-1-0"]
    assert opened.evidence[0].message == "step 1 (status): status (503) == 200"
    assert recorded(store) == [(KEY, "opened", "oncall"), (KEY, "opened", "ops-hook")]

    for minute in range(3, 7):
        assert incidents.apply(scenario(), [firing(minute)], now=T0 + timedelta(minutes=minute)) == []
    [still] = incidents.open_incidents()
    assert still.id == opened.id
    assert len(still.evidence) == EVIDENCE_KEPT
    assert [e.run_id for e in still.evidence] == [f"run-eu-1-{m}" for m in (6, 5, 4, 3, 2)]
    assert still.summary == "1 failed runs in a row at eu-1: step 1"
    assert len(recorded(store)) == 2  # no notification for more of the same
    assert incidents.get(opened.id) == still


def test_undecided_verdict_changes_nothing(incidents: Incidents, store: Store) -> None:
    """firing None neither opens nor resolves."""
    undecided = Verdict("failures", "eu-1", None, "critical", "1 failed run", ())
    assert incidents.apply(scenario(), [undecided], now=T0) == []
    incidents.apply(scenario(), [firing(0, 1, 2)], now=T0)
    assert incidents.apply(scenario(), [undecided], now=T0) == []
    assert len(incidents.open_incidents()) == 1


def test_resolve_enqueues_resolved(incidents: Incidents, store: Store) -> None:
    """A resolving verdict closes the open incident and enqueues `resolved`; the key can then open again."""
    [(opened, _)] = incidents.apply(scenario(), [firing(0, 1, 2)], now=T0)
    later = T0 + timedelta(minutes=10)
    [(resolved, change)] = incidents.apply(scenario(), [resolving()], now=later)
    assert change is Change.resolved
    assert (resolved.id, resolved.state, resolved.resolved_at) == (opened.id, IncidentState.resolved, later)
    assert incidents.get(opened.id).state is IncidentState.resolved
    assert incidents.open_incidents() == []
    assert recorded(store)[2:] == [(KEY, "resolved", "oncall"), (KEY, "resolved", "ops-hook")]
    assert incidents.apply(scenario(), [resolving()], now=later) == []  # nothing open: nothing to do

    [(again, _)] = incidents.apply(scenario(), [firing(20, 21, 22)], now=later + timedelta(minutes=15))
    assert again.id != opened.id
    assert [i.id for i in incidents.history()] == [again.id, opened.id]
    assert [i.id for i in incidents.history(scenario_id="other")] == []


def test_notify_argument_overrides_the_policy(incidents: Incidents, store: Store) -> None:
    """apply(notify=...) picks the receivers; an empty list enqueues nothing but still records the incident."""
    incidents.apply(scenario(), [firing(0, 1, 2)], now=T0, notify=["ops-hook"])
    assert recorded(store) == [(KEY, "opened", "ops-hook")]
    incidents.apply(scenario(id="demo/other"), [firing(0, 1, 2)], now=T0, notify=[])
    assert len(recorded(store)) == 1
    assert len(incidents.open_incidents()) == 2


# --------------------------------------------------------------------------- silences and maintenance


def test_silence_suppresses_opening_but_not_resolving(incidents: Incidents, store: Store) -> None:
    """While a matching silence is active nothing opens; a resolve still notifies so receivers drop the alert."""
    [(opened, _)] = incidents.apply(scenario(), [firing(0, 1, 2)], now=T0)
    silence = incidents.silence_add("demo/*", duration="1h", reason="deploy", created_by="ann", now=T0)
    assert incidents.silenced("demo/status", ("billing",), T0 + timedelta(minutes=59))
    assert not incidents.silenced("demo/status", ("billing",), T0 + timedelta(hours=1))
    assert not incidents.silenced("web/home", (), T0)

    incidents.apply(scenario(), [resolving()], now=T0 + timedelta(minutes=5))
    assert recorded(store)[-1] == (KEY, "resolved", "ops-hook")

    assert incidents.apply(scenario(), [firing(6, 7, 8)], now=T0 + timedelta(minutes=10)) == []
    assert incidents.open_incidents() == []
    assert [r[1] for r in recorded(store)] == ["opened", "opened", "resolved", "resolved"]

    assert incidents.silence_remove(silence) is True
    assert incidents.silence_remove(silence) is False
    assert len(incidents.apply(scenario(), [firing(6, 7, 8)], now=T0 + timedelta(minutes=11))) == 1
    assert opened.id not in {i.id for i in incidents.open_incidents()}


def test_silence_tags_must_all_match_and_silences_list(incidents: Incidents) -> None:
    """A silence with tags covers only scenarios carrying every one; expired silences drop off the active list."""
    voice = incidents.silence_add("*", until=T0 + timedelta(hours=2), tags=("billing", "voice"), now=T0)
    short = incidents.silence_add("demo/status", duration=timedelta(minutes=5), now=T0)
    assert not incidents.silenced("ivr/billing", ("billing",), T0 + timedelta(minutes=10))
    assert incidents.silenced("ivr/billing", ("voice", "billing", "x"), T0 + timedelta(minutes=10))
    assert [s.id for s in incidents.silences(now=T0)] == [short, voice]
    assert [s.id for s in incidents.silences(now=T0 + timedelta(minutes=10))] == [voice]
    assert [s.id for s in incidents.silences(active_only=False, now=T0 + timedelta(hours=3))] == [short, voice]
    listed = incidents.silences(now=T0)[1]
    assert (listed.matcher, listed.tags, listed.ends_at) == ("*", ("billing", "voice"), T0 + timedelta(hours=2))
    with pytest.raises(ValueError, match="either duration"):
        incidents.silence_add("*", now=T0)
    with pytest.raises(ValueError, match="in the future"):
        incidents.silence_add("*", until=T0 - timedelta(seconds=1), now=T0)


def test_maintenance_suppresses_opening(store: Store) -> None:
    """Inside a maintenance window covering the scenario nothing opens; outside it opens as usual."""
    window = Maintenance.model_validate(
        {"name": "upgrade", "scenarios": ["demo/*"], "from": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()}
    )
    incidents = Incidents(store, enqueue=record, maintenance=[window])
    assert incidents.apply(scenario(), [firing(0, 1, 2)], now=T0 + timedelta(minutes=30)) == []
    assert incidents.open_incidents() == [] and recorded(store) == []
    [(opened, change)] = incidents.apply(scenario(), [firing(0, 1, 2)], now=T0 + timedelta(hours=1))
    assert change is Change.opened and opened.link == ""


# --------------------------------------------------------------------------- reminders


def test_reminders_due_once_per_interval(incidents: Incidents, store: Store) -> None:
    """With remind_every 10m a reminder is due 10m after the last notification, once, then 10m later again."""
    policies = {"demo/status": scenario().alert}
    incidents.apply(scenario(), [firing(0, 1, 2)], now=T0)
    assert incidents.due_reminders(T0 + timedelta(seconds=599), policies) == []
    [(reminded, change)] = incidents.due_reminders(T0 + timedelta(seconds=600), policies)
    assert (change, reminded.reminders) == (Change.reminded, 1)
    assert incidents.due_reminders(T0 + timedelta(seconds=900), policies) == []
    [(reminded, _)] = incidents.due_reminders(T0 + timedelta(seconds=1200), policies)
    assert reminded.reminders == 2
    assert [r[1] for r in recorded(store)] == ["opened", "opened", "reminded", "reminded", "reminded", "reminded"]
    assert incidents.due_reminders(T0 + timedelta(hours=5), {}) == []  # scenario no longer loaded: no policy
    no_remind = {"demo/status": AlertPolicy(notify=("oncall",))}
    assert incidents.due_reminders(T0 + timedelta(hours=5), no_remind) == []


def test_reminders_pause_while_silenced(incidents: Incidents) -> None:
    """No reminder while a silence covers the scenario; the overdue one goes out once it ends."""
    policies = {"demo/status": scenario().alert}
    incidents.apply(scenario(), [firing(0, 1, 2)], now=T0)
    incidents.silence_add("demo/status", duration="1h", now=T0)
    assert incidents.due_reminders(T0 + timedelta(minutes=30), policies) == []
    assert len(incidents.due_reminders(T0 + timedelta(minutes=61), policies)) == 1


def test_reminder_claimed_once_by_two_agents(db_url: str, store: Store) -> None:
    """Two Incidents objects on one database asking at the same moment: each reminder goes out once."""
    policies = {f"demo/s{i}": scenario().alert for i in range(5)}
    first = Incidents(store, enqueue=record)
    for i in range(5):
        first.apply(scenario(id=f"demo/s{i}"), [firing(0, 1, 2)], now=T0)
    with Store(db_url) as other_store:
        second = Incidents(other_store, enqueue=record)
        for round_ in range(1, 4):
            now = T0 + timedelta(minutes=10 * round_)
            barrier = threading.Barrier(2)
            out: dict[str, list] = {}

            def run(name: str, agent: Incidents) -> None:
                barrier.wait()
                out[name] = agent.due_reminders(now, policies)

            threads = [threading.Thread(target=run, args=(n, a)) for n, a in (("a", first), ("b", second))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(out["a"]) + len(out["b"]) == 5
            assert sorted(i.reminders for i, _ in out["a"] + out["b"]) == [round_] * 5
    reminders = [r for r in recorded(store) if r[1] == "reminded"]
    assert len(reminders) == 5 * 3 * 2  # 5 incidents, 3 rounds, 2 notifiers


# --------------------------------------------------------------------------- two agents


def _two_agents(db_url: str, first_enqueue=record) -> tuple[Incidents, Incidents, list[Store]]:
    stores = [Store(db_url), Store(db_url)]
    return Incidents(stores[0], enqueue=first_enqueue), Incidents(stores[1], enqueue=record), stores


def test_two_agents_racing_open_exactly_one(db_url: str, store: Store) -> None:
    """Two agents applying the same firing verdicts at the same moment: one incident and one `opened` per key."""
    a, b, stores = _two_agents(db_url)
    try:
        for round_ in range(10):
            sc = scenario(id=f"demo/race-{round_}")
            barrier = threading.Barrier(2)
            out: dict[str, list] = {}

            def run(name: str, agent: Incidents) -> None:
                barrier.wait()
                out[name] = agent.apply(sc, [firing(0, 1, 2)], now=T0)

            threads = [threading.Thread(target=run, args=(n, x)) for n, x in (("a", a), ("b", b))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(out["a"]) + len(out["b"]) == 1, out
    finally:
        for s in stores:
            s.close()
    assert len(incidents_open(store)) == 10
    assert sorted(r[0] for r in recorded(store) if r[2] == "oncall") == sorted(
        f"demo/race-{i}:failures@eu-1" for i in range(10)
    )
    assert len(recorded(store)) == 20


def incidents_open(store: Store) -> list[Incident]:
    return Incidents(store, enqueue=record).open_incidents()


def _waiting_on_lock(store: Store) -> bool:
    if store.dialect != "postgresql":
        return True
    with store.engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")).scalar())


def test_lost_insert_race_is_treated_as_already_open(db_url: str, store: Store) -> None:
    """Agent B looks while A's new incident is uncommitted, then loses on the unique index: B appends, A notifies."""
    inserted, release = threading.Event(), threading.Event()

    def slow_record(conn: Connection, incident: Incident, change: Change, notifiers: Sequence[str]) -> list[int]:
        ids = record(conn, incident, change, notifiers)
        inserted.set()
        release.wait(20)  # hold A's transaction open, its incident row inserted but not committed
        return ids

    a, b, stores = _two_agents(db_url, first_enqueue=slow_record)
    out: dict[str, list] = {}
    try:
        ta = threading.Thread(target=lambda: out.__setitem__("a", a.apply(scenario(), [firing(0, 1, 2)], now=T0)))
        ta.start()
        assert inserted.wait(20)
        tb = threading.Thread(target=lambda: out.__setitem__("b", b.apply(scenario(), [firing(1, 2, 3)], now=T0)))
        tb.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_lock(store) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        release.set()
        ta.join(30)
        tb.join(30)
    finally:
        release.set()
        for s in stores:
            s.close()
    assert [c for _, c in out["a"]] == [Change.opened]
    assert out["b"] == []
    [incident] = incidents_open(store)
    assert [e.run_id for e in incident.evidence] == ["run-eu-1-3", "run-eu-1-2", "run-eu-1-1", "run-eu-1-0"]
    assert recorded(store) == [(KEY, "opened", "oncall"), (KEY, "opened", "ops-hook")]


# --------------------------------------------------------------------------- edits, restarts, reconcile


def test_editing_the_scenario_keeps_the_open_incident(incidents: Incidents, store: Store) -> None:
    """Same id, new name and steps: the open incident is found by key, renamed, and resolved as usual."""
    [(opened, _)] = incidents.apply(scenario(), [firing(0, 1, 2)], now=T0)
    edited = scenario(name="Status page answers fast", steps=({"request": {"url": "http://127.0.0.1/v2/status"}},))
    assert incidents.apply(edited, [firing(3)], now=T0 + timedelta(minutes=3)) == []
    [still] = incidents.open_incidents()
    assert (still.id, still.scenario_name) == (opened.id, "Status page answers fast")
    [(resolved, _)] = incidents.apply(edited, [resolving()], now=T0 + timedelta(minutes=5))
    assert resolved.id == opened.id


def test_incidents_survive_restart(db_url: str, store: Store) -> None:
    """Close the store and open it again: the open incident, its evidence and link are still there."""
    first = Incidents(Store(db_url), enqueue=record, link_base=LINK_BASE)
    [(opened, _)] = first.apply(scenario(), [firing(0, 1, 2)], now=T0)
    first.store.close()

    with Store(db_url) as reopened:
        again = Incidents(reopened, enqueue=record, link_base=LINK_BASE)
        assert again.open_incidents() == [opened]
        assert again.apply(scenario(), [firing(3)], now=T0) == []  # still the same incident
        [(resolved, change)] = again.apply(scenario(), [resolving()], now=T0 + timedelta(minutes=9))
        assert (resolved.id, change) == (opened.id, Change.resolved)


def test_reconcile_resolves_an_incident_whose_results_now_pass(incidents: Incidents, store: Store) -> None:
    """At start-up, stored results newer than the failures (2 passes) resolve the open incident."""
    sc = scenario()
    history = [result(Outcome.failed, m) for m in (2, 1, 0)]
    store.save(history)
    [(opened, _)] = incidents.apply(sc, judge(sc.alert, store.results(scenario_id=sc.id)), now=T0)
    assert opened.key == KEY

    store.save([result(Outcome.passed, 3), result(Outcome.passed, 4)])  # the agent was down meanwhile
    restarted = Incidents(store, enqueue=record)
    done = restarted.reconcile([sc], store, now=T0 + timedelta(minutes=5))
    assert [(i.id, c) for i, c in done] == [(opened.id, Change.resolved)]
    assert done.orphaned == [] and done.unjudged == []
    assert restarted.open_incidents() == []
    assert recorded(store)[-1] == (KEY, "resolved", "ops-hook")


def test_reconcile_keeps_still_failing_and_orphaned_incidents(incidents: Incidents, store: Store) -> None:
    """Still failing stays open; a scenario that is not loaded stays open and is reported, not dropped."""
    sc, gone = scenario(), scenario(id="demo/deleted")
    store.save([result(Outcome.failed, m) for m in (0, 1, 2)])
    incidents.apply(sc, [firing(0, 1, 2)], now=T0)
    [(orphan, _)] = incidents.apply(gone, [firing(0, 1, 2)], now=T0)
    [(nothing_yet, _)] = incidents.apply(sc, [firing(0, 1, 2, location="us-1")], now=T0)

    done = incidents.reconcile([sc], store, now=T0)
    assert list(done) == [(incidents.get(nothing_yet.id), Change.resolved)]  # us-1 no longer runs it
    assert [i.id for i in done.orphaned] == [orphan.id]
    assert {i.key for i in incidents.open_incidents()} == {KEY, "demo/deleted:failures@eu-1"}

    widened = scenario(schedule=Schedule(every=60, locations=("eu-1", "ap-1")))
    incidents.apply(widened, [firing(0, 1, 2, location="ap-1")], now=T0)
    assert [i.key for i in incidents.reconcile([widened], store, now=T0).unjudged] == ["demo/status:failures@ap-1"]

    resolved = incidents.resolve(orphan.id, now=T0, notify=["oncall"], reason="scenario file deleted")
    assert resolved is not None and resolved[1] is Change.resolved
    assert incidents.resolve(orphan.id, now=T0) is None
    assert recorded(store)[-1] == ("demo/deleted:failures@eu-1", "resolved", "oncall")


def test_reconcile_resolves_an_incident_whose_rule_was_removed(incidents: Incidents, store: Store) -> None:
    """An incident of a rule the policy no longer has could never resolve otherwise: reconcile resolves it."""
    with_degraded = scenario(alert=AlertPolicy(degraded_after=2, notify=("oncall",)))
    store.save([result(Outcome.degraded, m) for m in (0, 1)])
    [(opened, _)] = incidents.apply(with_degraded, [firing(0, 1, rule="degraded")], now=T0)
    without = scenario(alert=AlertPolicy(notify=("oncall",)))
    assert [(i.id, c) for i, c in incidents.reconcile([without], store, now=T0)] == [(opened.id, Change.resolved)]


def test_default_enqueue_is_the_outbox(store: Store) -> None:
    """Without enqueue=, transitions go to alerts.outbox.enqueue: one pending delivery per notifier, same transaction."""
    outbox = pytest.importorskip("alerts.outbox")
    incidents = Incidents(store)
    [(opened, _)] = incidents.apply(scenario(), [firing(0, 1, 2)], now=T0)
    with store.engine.connect() as conn:
        rows = conn.execute(select(outbox.deliveries_table).order_by(outbox.deliveries_table.c.id)).mappings().all()
    assert [(r["incident_id"], r["incident_key"], r["change"], r["notifier"]) for r in rows] == [
        (opened.id, KEY, "opened", "oncall"),
        (opened.id, KEY, "opened", "ops-hook"),
    ]
