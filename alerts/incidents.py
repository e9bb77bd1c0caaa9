"""Incidents remember: the persisted state machine between rules and the outbox.

    verdict firing, none open   -> open (enqueue `opened`), unless silenced or in maintenance
    verdict firing, one open    -> append evidence (newest 5 kept), refresh summary; no notification
    verdict resolved, one open  -> resolve (enqueue `resolved`), even when silenced or in maintenance
    verdict undecided           -> nothing
    open, remind_every elapsed  -> remind (enqueue `reminded`), unless silenced or in maintenance

An incident's key is scenario id + ":" + rule (+ "@" + location), so editing a
scenario file (new name, new steps, same id) keeps its incident, and restarts find
it in the store. At most one incident per key is open: a partial unique index
says so, and every transition runs in its own transaction that first locks the
key's open row (SELECT ... FOR UPDATE on PostgreSQL; BEGIN IMMEDIATE on SQLite,
which serialises writers). Two agents that open the same key at once both find
no row to lock; the second INSERT then fails on the unique index, and is retried
as "already open". Notifications are enqueued by the outbox inside the same
transaction, so a transition and its deliveries commit or vanish together.

Decisions:

- A resolved notification goes out even while the scenario is silenced or in
  maintenance: receivers were told it opened, and must not keep a stale alert.
  Silences and maintenance only stop incidents from opening and reminders from
  being sent.
- `reconcile` never resolves an incident because its scenario file is gone (or
  is not scheduled on this agent): it stays open and is listed in the result's
  `orphaned`, and logged, until someone resolves it with `resolve(id)`. It does
  resolve an incident whose scenario still exists but whose policy no longer has
  the incident's rule, or whose schedule no longer lists the incident's
  location: nothing could ever resolve those otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from alerts.model import Change, Evidence, Incident, IncidentState, evidence_from_json, evidence_to_json
from alerts.rules import Verdict, in_maintenance, judge, matches, rules_of
from cxtest import logs
from cxtest.model import AlertPolicy, Maintenance, Result, Scenario, parse_duration
from cxtest.store import Store, UTCDateTime, create_tables, metadata

__all__ = [
    "EVIDENCE_KEPT",
    "Enqueue",
    "Incidents",
    "Reconciliation",
    "Silence",
    "incident_key",
    "incidents_table",
    "silences_table",
]

log = logs.get_logger("alerts.incidents")

EVIDENCE_KEPT = 5  # newest evidence entries kept on an incident
_RACE_ATTEMPTS = 3  # a lost INSERT race is retried as "already open"
_DEFAULT_POLICY = AlertPolicy()

# BIGINT would stop SQLite's INTEGER PRIMARY KEY from being the autoincrementing rowid.
_Id = BigInteger().with_variant(Integer(), "sqlite")

incidents_table = Table(
    "incidents",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("key", String(512), nullable=False),
    Column("scenario_id", String(255), nullable=False),
    Column("scenario_name", Text, nullable=False),
    Column("rule", String(32), nullable=False),
    Column("location", String(64), nullable=True),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("summary", Text, nullable=False, default=""),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    Column("last_notified_at", UTCDateTime(), nullable=True),
    Column("reminders", Integer, nullable=False, default=0),
    Column("evidence", JSON, nullable=False),
    Column("link", Text, nullable=False, default=""),
    Column("tags", JSON, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # At most one open incident per key, whatever number of agents race to open it.
    Index(
        "ux_incidents_open_key",
        "key",
        unique=True,
        sqlite_where=text("state = 'open'"),
        postgresql_where=text("state = 'open'"),
    ),
    Index("ix_incidents_state", "state"),
    Index("ix_incidents_scenario_opened", "scenario_id", "opened_at"),
)

silences_table = Table(
    "silences",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("matcher", String(255), nullable=False),  # glob on scenario ids
    Column("tags", JSON, nullable=False),  # the scenario must carry every one
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("created_by", String(255), nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_silences_ends_at", "ends_at"),
)

_TABLES = [incidents_table, silences_table]

Enqueue = Callable[[Connection, Incident, Change, Sequence[str]], list[int]]


@dataclass(frozen=True, slots=True)
class Silence:
    """While active, no incident opens and no reminder goes out for matching scenarios."""

    id: int
    matcher: str
    tags: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime
    reason: str = ""
    created_by: str = ""
    created_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def covers(self, scenario_id: str, tags: Sequence[str]) -> bool:
        return matches(scenario_id, tags, (self.matcher,), self.tags)


class Reconciliation(list):  # list[tuple[Incident, Change]]
    """The transitions `reconcile` made, plus the open incidents it could not judge."""

    def __init__(self) -> None:
        super().__init__()
        self.orphaned: list[Incident] = []  # open, but no scenario with this id was given
        self.unjudged: list[Incident] = []  # scenario known, but no results yet for the key


def incident_key(scenario_id: str, rule: str, location: str | None = None) -> str:
    return f"{scenario_id}:{rule}" + (f"@{location}" if location else "")


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


# --------------------------------------------------------------------------- evidence


def evidence_of(result: Result) -> Evidence:
    return Evidence(
        run_id=result.run_id,
        started_at=_now(result.started_at),
        outcome=result.outcome,
        message=result.message,
        location=result.location,
        artifacts=tuple(a.path for a in result.artifacts),
    )


def _merge(new: Sequence[Evidence], old: Sequence[Evidence]) -> tuple[Evidence, ...]:
    """Newest first, each run once (another agent may report the same results), at most EVIDENCE_KEPT."""
    seen: dict[tuple[str, datetime, str], Evidence] = {}
    for item in [*new, *old]:
        seen.setdefault((item.run_id, item.started_at, item.location), item)
    return tuple(sorted(seen.values(), key=lambda e: e.started_at, reverse=True)[:EVIDENCE_KEPT])


# --------------------------------------------------------------------------- rows


def _incident_from(row: Mapping[str, Any]) -> Incident:
    return Incident(
        id=row["id"],
        key=row["key"],
        scenario_id=row["scenario_id"],
        scenario_name=row["scenario_name"],
        rule=row["rule"],
        location=row["location"],
        severity=row["severity"],
        state=IncidentState(row["state"]),
        summary=row["summary"],
        opened_at=row["opened_at"],
        resolved_at=row["resolved_at"],
        reminders=row["reminders"],
        evidence=tuple(evidence_from_json(e) for e in row["evidence"] or ()),
        link=row["link"],
        tags=tuple(row["tags"] or ()),
    )


def _silence_from(row: Mapping[str, Any]) -> Silence:
    return Silence(
        id=row["id"],
        matcher=row["matcher"],
        tags=tuple(row["tags"] or ()),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        reason=row["reason"],
        created_by=row["created_by"],
        created_at=row["created_at"],
    )


# --------------------------------------------------------------------------- the state machine


class Incidents:
    """Open, remind and resolve incidents in the store; safe to share between threads and agents.

    `enqueue(conn, incident, change, notifiers) -> delivery ids` records deliveries inside
    the caller's transaction (default: `alerts.outbox.enqueue`, imported when first needed).
    It is not called when the notifier list is empty. `maintenance` are the project's
    maintenance windows. Methods are synchronous: async callers use asyncio.to_thread.
    """

    def __init__(
        self,
        store: Store,
        *,
        enqueue: Enqueue | None = None,
        link_base: str = "",
        maintenance: Sequence[Maintenance] = (),
    ):
        self.store = store
        self.engine = store.engine
        self._enqueue_fn = enqueue
        self.link_base = link_base.rstrip("/")
        self.maintenance = tuple(maintenance)
        with store._errors("cannot create incident tables in"):
            create_tables(self.engine, _TABLES)
            if enqueue is None:
                self._default_outbox()

    def _default_outbox(self) -> None:
        """Use alerts.outbox.enqueue and make sure its tables exist (they must, before a transaction
        that holds SQLite's write lock inserts into them); if the module cannot be imported yet, the
        import is retried at the first notification."""
        try:
            from alerts import outbox
        except ImportError:
            return
        self._enqueue_fn = outbox.enqueue
        ensure = getattr(outbox, "ensure_tables", None)
        if ensure is not None:
            ensure(self.engine)

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One write transaction. On SQLite it takes the write lock up front (BEGIN IMMEDIATE),
        so what it reads cannot change before it writes; PostgreSQL callers lock rows."""
        conn = self.engine.connect()
        try:
            if self.store.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def _write(self, doing: str, work: Callable[[Connection], Any]) -> Any:
        """Run `work` in a transaction; a lost race on the open-key index is retried, and then
        finds the winner's incident already open."""
        with self.store._errors(doing):
            for attempt in range(1, _RACE_ATTEMPTS + 1):
                try:
                    with self._transaction() as conn:
                        return work(conn)
                except IntegrityError:
                    if attempt == _RACE_ATTEMPTS:
                        raise
                    log.info("incident opened by another agent at the same time; treating it as already open")
        return None  # unreachable

    def _read(self, query: Any) -> list[Mapping[str, Any]]:
        with self.store._errors("cannot read incidents from"), self.engine.connect() as conn:
            return list(conn.execute(query).mappings().all())

    def _enqueue(self, conn: Connection, incident: Incident, change: Change, notify: Sequence[str]) -> None:
        if not notify:
            return
        if self._enqueue_fn is None:
            from alerts.outbox import enqueue

            self._enqueue_fn = enqueue
        self._enqueue_fn(conn, incident, change, tuple(notify))

    def _link(self, incident_id: int) -> str:
        return f"{self.link_base}/incidents/{incident_id}" if self.link_base else ""

    # ------------------------------------------------------------------ transitions

    def apply(
        self,
        scenario: Scenario,
        verdicts: Sequence[Verdict],
        *,
        now: datetime | None = None,
        notify: Sequence[str] | None = None,
    ) -> list[tuple[Incident, Change]]:
        """Bring the scenario's incidents in line with the verdicts; one transaction per verdict.

        Returns the transitions made (opened, resolved); appending evidence to an open
        incident is not a transition. `notify` defaults to the scenario's policy.notify.
        """
        now = _now(now)
        policy = scenario.alert or _DEFAULT_POLICY
        receivers = tuple(policy.notify if notify is None else notify)
        changes: list[tuple[Incident, Change]] = []
        for verdict in verdicts:
            if verdict.firing is None:
                continue
            change = self._write(
                "cannot record incidents in",
                lambda conn, verdict=verdict: self._apply_one(conn, scenario, verdict, now, receivers),
            )
            if change is not None:
                changes.append(change)
        return changes

    def _apply_one(
        self, conn: Connection, scenario: Scenario, verdict: Verdict, now: datetime, receivers: Sequence[str]
    ) -> tuple[Incident, Change] | None:
        t = incidents_table
        key = incident_key(scenario.id, verdict.rule, verdict.location)
        row = conn.execute(
            select(t).where(t.c.key == key, t.c.state == IncidentState.open.value).with_for_update()
        ).mappings().first()
        evidence = tuple(evidence_of(r) for r in verdict.evidence)

        if verdict.firing:
            if row is not None:
                current = _incident_from(row)
                merged = _merge(evidence, current.evidence)
                conn.execute(
                    update(t)
                    .where(t.c.id == current.id)
                    .values(
                        summary=verdict.summary,
                        severity=verdict.severity,
                        scenario_name=scenario.name,
                        tags=list(scenario.tags),
                        evidence=[evidence_to_json(e) for e in merged],
                        updated_at=now,
                    )
                )
                return None
            why = self._suppressed_by(conn, scenario.id, scenario.tags, now)
            if why is not None:
                log.info("incident not opened", key=key, because=why, summary=verdict.summary)
                return None
            kept = _merge(evidence, ())
            incident_id = conn.execute(
                insert(t)
                .values(
                    key=key,
                    scenario_id=scenario.id,
                    scenario_name=scenario.name,
                    rule=verdict.rule,
                    location=verdict.location,
                    severity=verdict.severity,
                    state=IncidentState.open.value,
                    summary=verdict.summary,
                    opened_at=now,
                    resolved_at=None,
                    # The reminder interval counts from the opening notification.
                    last_notified_at=now,
                    reminders=0,
                    evidence=[evidence_to_json(e) for e in kept],
                    link="",
                    tags=list(scenario.tags),
                    updated_at=now,
                )
                .returning(t.c.id)
            ).scalar_one()
            link = self._link(incident_id)
            if link:
                conn.execute(update(t).where(t.c.id == incident_id).values(link=link))
            incident = Incident(
                id=incident_id,
                key=key,
                scenario_id=scenario.id,
                scenario_name=scenario.name,
                rule=verdict.rule,
                location=verdict.location,
                severity=verdict.severity,
                state=IncidentState.open,
                summary=verdict.summary,
                opened_at=now,
                evidence=kept,
                link=link,
                tags=tuple(scenario.tags),
            )
            self._enqueue(conn, incident, Change.opened, receivers)
            return incident, Change.opened

        if row is None:
            return None
        return self._resolve_row(conn, row, now, receivers, scenario_name=scenario.name)

    def _resolve_row(
        self, conn: Connection, row: Mapping[str, Any], now: datetime, receivers: Sequence[str], *, scenario_name: str | None = None
    ) -> tuple[Incident, Change]:
        t = incidents_table
        values: dict[str, Any] = {
            "state": IncidentState.resolved.value,
            "resolved_at": now,
            "last_notified_at": now,
            "updated_at": now,
        }
        if scenario_name is not None:
            values["scenario_name"] = scenario_name
        conn.execute(update(t).where(t.c.id == row["id"]).values(**values))
        incident = replace(
            _incident_from(row),
            state=IncidentState.resolved,
            resolved_at=now,
            scenario_name=scenario_name or row["scenario_name"],
        )
        # Sent even when silenced or in maintenance: receivers must not keep a stale alert.
        self._enqueue(conn, incident, Change.resolved, receivers)
        return incident, Change.resolved

    def resolve(
        self, incident_id: int, *, now: datetime | None = None, notify: Sequence[str] = (), reason: str = ""
    ) -> tuple[Incident, Change] | None:
        """Resolve an open incident by hand (e.g. one whose scenario was deleted); None if it is not open."""
        now = _now(now)
        t = incidents_table

        def work(conn: Connection) -> tuple[Incident, Change] | None:
            row = conn.execute(
                select(t).where(t.c.id == incident_id, t.c.state == IncidentState.open.value).with_for_update()
            ).mappings().first()
            if row is None:
                return None
            log.info("incident resolved by hand", key=row["key"], reason=reason)
            return self._resolve_row(conn, row, now, notify)

        return self._write("cannot resolve incidents in", work)

    def due_reminders(self, now: datetime, policies: Mapping[str, AlertPolicy]) -> list[tuple[Incident, Change]]:
        """Remind about open incidents whose policy has remind_every and whose last notification is
        at least that old; each reminder is claimed by one agent only (a conditional UPDATE on the
        reminder count), and none goes out while the scenario is silenced or in maintenance."""
        now = _now(now)
        t = incidents_table
        rows = self._read(select(t).where(t.c.state == IncidentState.open.value).order_by(t.c.id))
        due = []
        for row in rows:
            policy = policies.get(row["scenario_id"])
            if policy is None or not policy.remind_every:
                continue
            last = row["last_notified_at"] or row["opened_at"]
            if now - last < timedelta(seconds=policy.remind_every):
                continue
            due.append((row, policy))
        if not due:
            return []
        silences = self.silences(active_only=True, now=now)
        changes: list[tuple[Incident, Change]] = []
        for row, policy in due:
            tags = tuple(row["tags"] or ())
            why = self._suppressed_why(row["scenario_id"], tags, now, silences)
            if why is not None:
                continue

            def claim(conn: Connection, row: Mapping[str, Any] = row, policy: AlertPolicy = policy) -> Any:
                claimed = conn.execute(
                    update(t)
                    .where(
                        t.c.id == row["id"],
                        t.c.state == IncidentState.open.value,
                        t.c.reminders == row["reminders"],
                    )
                    .values(reminders=row["reminders"] + 1, last_notified_at=now, updated_at=now)
                )
                if claimed.rowcount != 1:
                    return None  # another agent reminded (or resolved) it first
                incident = replace(_incident_from(row), reminders=row["reminders"] + 1)
                self._enqueue(conn, incident, Change.reminded, policy.notify)
                return incident, Change.reminded

            change = self._write("cannot record reminders in", claim)
            if change is not None:
                changes.append(change)
        return changes

    def reconcile(self, scenarios: Sequence[Scenario], store: Store, now: datetime | None = None) -> Reconciliation:
        """At start-up: re-judge every open incident against the stored results and each scenario's
        current policy, and resolve those that now pass. See the module docstring for the incidents
        this leaves open (listed in `orphaned` and `unjudged`) and the ones it resolves because their
        rule or location is no longer configured."""
        now = _now(now)
        out = Reconciliation()
        by_id = {s.id: s for s in scenarios}
        open_now: dict[str, list[Incident]] = {}
        for incident in self.open_incidents():
            open_now.setdefault(incident.scenario_id, []).append(incident)
        for scenario_id, incidents in open_now.items():
            scenario = by_id.get(scenario_id)
            if scenario is None:
                for incident in incidents:
                    log.warning(
                        "open incident for a scenario that is not loaded; left open (resolve it by hand if the file is gone)",
                        key=incident.key,
                        incident=incident.id,
                    )
                out.orphaned.extend(incidents)
                continue
            policy = scenario.alert or _DEFAULT_POLICY
            locations = tuple(scenario.schedule.locations) if scenario.schedule else ()
            history = store.results(scenario_id=scenario_id, limit=_history_limit(policy, locations))
            verdicts = {incident_key(scenario_id, v.rule, v.location): v for v in judge(policy, history, locations=locations)}
            active = rules_of(policy)
            to_apply: list[Verdict] = []
            for incident in incidents:
                verdict = verdicts.get(incident.key)
                if incident.rule not in active:
                    to_apply.append(_retire(incident, "the rule is no longer in the scenario's alert policy"))
                elif locations and incident.location is not None and incident.location not in locations:
                    to_apply.append(_retire(incident, f"{incident.location} no longer runs this scenario"))
                elif verdict is None:
                    log.info("open incident has no results to judge yet; left open", key=incident.key)
                    out.unjudged.append(incident)
                elif verdict.firing is False:
                    to_apply.append(verdict)
            out.extend(self.apply(scenario, to_apply, now=now))
        return out

    # ------------------------------------------------------------------ reading

    def open_incidents(self) -> list[Incident]:
        t = incidents_table
        rows = self._read(select(t).where(t.c.state == IncidentState.open.value).order_by(t.c.opened_at, t.c.id))
        return [_incident_from(r) for r in rows]

    def get(self, incident_id: int) -> Incident | None:
        t = incidents_table
        rows = self._read(select(t).where(t.c.id == incident_id))
        return _incident_from(rows[0]) if rows else None

    def history(self, scenario_id: str | None = None, limit: int = 100) -> list[Incident]:
        """Incidents open and resolved, newest opened first."""
        t = incidents_table
        query = select(t)
        if scenario_id is not None:
            query = query.where(t.c.scenario_id == scenario_id)
        query = query.order_by(t.c.opened_at.desc(), t.c.id.desc()).limit(limit)
        return [_incident_from(r) for r in self._read(query)]

    # ------------------------------------------------------------------ silences

    def silence_add(
        self,
        matcher: str,
        *,
        duration: float | str | timedelta | None = None,
        until: datetime | None = None,
        tags: Sequence[str] = (),
        reason: str = "",
        created_by: str = "",
        now: datetime | None = None,
    ) -> int:
        """Silence scenarios whose id matches the glob (and that carry every tag) from now for
        `duration` (seconds, "2h", a timedelta) or until `until`; returns the silence id."""
        now = _now(now)
        if not matcher:
            raise ValueError("a silence needs a scenario id or glob, e.g. billing/* or *")
        if (duration is None) == (until is None):
            raise ValueError("give either duration (e.g. 2h) or until (a time)")
        if until is not None:
            ends = _now(until)
        else:
            seconds = duration.total_seconds() if isinstance(duration, timedelta) else parse_duration(duration)
            ends = now + timedelta(seconds=seconds)
        if ends <= now:
            raise ValueError(f"a silence must end in the future, not at {ends.isoformat()}")
        row = {
            "matcher": matcher,
            "tags": list(tags),
            "starts_at": now,
            "ends_at": ends,
            "reason": reason,
            "created_by": created_by,
            "created_at": now,
        }
        return self._write(
            "cannot add a silence to",
            lambda conn: conn.execute(insert(silences_table).values(**row).returning(silences_table.c.id)).scalar_one(),
        )

    def silences(self, active_only: bool = True, now: datetime | None = None) -> list[Silence]:
        now = _now(now)
        t = silences_table
        query = select(t)
        if active_only:
            query = query.where(t.c.starts_at <= now, t.c.ends_at > now)
        return [_silence_from(r) for r in self._read(query.order_by(t.c.ends_at, t.c.id))]

    def silence_remove(self, silence_id: int) -> bool:
        """Delete a silence; False if there was none with that id."""
        t = silences_table
        return bool(self._write("cannot remove a silence from", lambda conn: conn.execute(delete(t).where(t.c.id == silence_id)).rowcount))

    def silenced(self, scenario_id: str, tags: Sequence[str], now: datetime | None = None) -> bool:
        now = _now(now)
        return any(s.covers(scenario_id, tuple(tags)) for s in self.silences(active_only=True, now=now))

    def _suppressed_by(self, conn: Connection, scenario_id: str, tags: Sequence[str], now: datetime) -> str | None:
        t = silences_table
        rows = conn.execute(select(t).where(t.c.starts_at <= now, t.c.ends_at > now)).mappings().all()
        return self._suppressed_why(scenario_id, tags, now, [_silence_from(r) for r in rows])

    def _suppressed_why(self, scenario_id: str, tags: Sequence[str], now: datetime, silences: Sequence[Silence]) -> str | None:
        for silence in silences:
            if silence.active(now) and silence.covers(scenario_id, tuple(tags)):
                return f"silence {silence.id} ({silence.matcher}) until {silence.ends_at.isoformat()}" + (
                    f": {silence.reason}" if silence.reason else ""
                )
        window = in_maintenance(scenario_id, tags, self.maintenance, now)
        if window is not None:
            return f"maintenance {window.name}"
        return None


def _retire(incident: Incident, why: str) -> Verdict:
    log.info("resolving incident that can no longer be judged", key=incident.key, because=why)
    return Verdict(incident.rule, incident.location, False, incident.severity, why, ())


def _history_limit(policy: AlertPolicy, locations: Sequence[str]) -> int:
    depth = max(policy.open_after, policy.resolve_after, policy.failure_rate.of if policy.failure_rate else 0, policy.degraded_after or 0)
    return max(100, (depth + 1) * 4 * max(1, len(locations)))

