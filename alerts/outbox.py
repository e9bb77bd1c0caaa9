"""Durable deliveries: no incident notification is lost.

A delivery (one incident change for one notifier) is written to the store in the
same transaction as the incident transition that decided it (`enqueue`). The
`Outbox` then claims due deliveries, sends them, and records every attempt:

    pending --accepted--> sent
       |  \\--retryable error--> pending again, next_attempt_at = now + backoff (with jitter)
       \\--not retryable, or older than give_up_after--> failed

A notification counts as sent only when its receiver accepted it.

Claims are leases: `claimed_by` / `claimed_until` / `claim_token`. On PostgreSQL
the claim is `SELECT ... FOR UPDATE SKIP LOCKED` then an UPDATE in the same
transaction; on SQLite one atomic UPDATE (SQLite has one writer at a time), read
back by claim token. Two agents therefore never claim the same delivery at the
same time, and an agent that dies between claim and send leaves a lease that
expires: another agent sends the delivery after `lease` seconds.

Delivery is at-least-once: a receiver that accepted a notification but whose
answer never reached us (or an agent killed after the send but before recording
it) gets it again. Each `Notifier.send` runs with `current_delivery` set to the
delivery id, for notifiers that can pass it on as an idempotency key.

Order: deliveries of the same incident key to the same notifier go out in the
order they were decided; a later one waits while an earlier one is still pending
(an "opened" is accepted before its "resolved" is sent). A delivery given up on
(failed) no longer holds the later ones back.

Fallback: when a primary delivery has failed `fallback_after` attempts in a row
(or was given up) and a fallback notifier is configured for it, a copy goes to
the fallback once (`fallback_of` = the primary delivery id), for it and for the
later deliveries still waiting behind it; the primary keeps being retried.
"""

from __future__ import annotations

import asyncio
import enum
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from alerts.model import Change, Incident, current_delivery, incident_from_json, incident_to_json
from alerts.notifiers.base import Notifier
from cxtest.errors import NotifierError, StoreError
from cxtest.logs import get_logger, redact
from cxtest.store import Store, UTCDateTime, create_tables, metadata

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "Delivery",
    "DeliveryState",
    "Notifier",
    "Outbox",
    "attempts_table",
    "backoff",
    "current_delivery",
    "deliveries_table",
    "enqueue",
    "ensure_tables",
    "incident_from_json",
    "incident_to_json",
]

log = get_logger("alerts.outbox")

#: The id of the delivery being sent, set around every `Notifier.send` call
#: (a receiver-side idempotency key, or a header for tests).

EXCERPT_MAX = 500
ERROR_MAX = 1000
#: Rounds of claim-and-send in one dispatch_due call at most (a big backlog continues on the next call).
MAX_ROUNDS = 50
#: Timeout of the HTTP client the outbox creates when none is given.
CLIENT_TIMEOUT_S = 10.0


class DeliveryState(str, enum.Enum):
    pending = "pending"
    sent = "sent"
    failed = "failed"  # given up: not retryable, or older than give_up_after


class AttemptOutcome(str, enum.Enum):
    accepted = "accepted"
    retry = "retry"
    rejected = "rejected"  # this attempt ended the delivery as failed


# --------------------------------------------------------------------------- tables

_Id = BigInteger().with_variant(Integer(), "sqlite")

deliveries_table = Table(
    "deliveries",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("incident_id", BigInteger, nullable=False),
    Column("incident_key", Text, nullable=False),
    Column("notifier", String(255), nullable=False),
    Column("change", String(16), nullable=False),
    Column("incident", JSON, nullable=False),  # incident_to_json snapshot: exactly what was decided
    Column("state", String(16), nullable=False, default=DeliveryState.pending.value),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(255)),
    Column("claimed_until", UTCDateTime()),
    Column("claim_token", String(64)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
    Column("ref", Text),
    Column("fallback_of", _Id),
    Index("ix_deliveries_due", "state", "next_attempt_at"),
    # Order within an incident key and notifier, and the "latest ref" look-up.
    Index("ix_deliveries_chain", "incident_key", "notifier", "id"),
    Index("ix_deliveries_incident", "incident_id", "notifier", "id"),
    # At most one fallback copy per primary delivery (NULLs are distinct on both backends).
    Index("ux_deliveries_fallback_of", "fallback_of", unique=True),
)

attempts_table = Table(
    "delivery_attempts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("delivery_id", _Id, nullable=False),
    Column("agent", String(255), nullable=False, default=""),
    Column("at", UTCDateTime(), nullable=False),
    Column("duration", Float, nullable=False),
    Column("status_code", Integer),
    Column("excerpt", Text, nullable=False, default=""),
    Column("error", Text, nullable=False, default=""),
    Column("outcome", String(16), nullable=False),
    Index("ix_delivery_attempts_delivery", "delivery_id", "id"),
)

TABLES = [deliveries_table, attempts_table]


def ensure_tables(engine: Engine) -> None:
    """Create the outbox tables if they are missing (the Outbox does this when constructed)."""
    create_tables(engine, TABLES)


# --------------------------------------------------------------------------- values


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def backoff(
    attempts: int,
    base_delay: float = 1.0,
    max_delay: float = 300.0,
    rand: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds before the next try after `attempts` failed ones:
    min(max_delay, base_delay * 2**attempts), times a jitter factor in [0.5, 1.5]."""
    exponent = min(max(attempts, 0), 62)  # 2**62 s is already far past any max_delay
    return min(max_delay, base_delay * float(2**exponent)) * rand(0.5, 1.5)


def _clip(text: str | None, limit: int) -> str:
    text = redact(text or "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- enqueue


def enqueue(
    conn: Connection,
    incident: Incident,
    change: Change,
    notifiers: Sequence[str],
    *,
    now: datetime | None = None,
) -> list[int]:
    """Insert one pending delivery per notifier (duplicates once) inside the caller's transaction.

    The caller commits or rolls back: a transition and its deliveries are stored together or
    not at all. Driver errors propagate to the caller's transaction boundary.
    """
    now = _utc(now) if now is not None else _now()
    snapshot = incident_to_json(incident)
    ids: list[int] = []
    for name in dict.fromkeys(notifiers):
        row = {
            "incident_id": incident.id,
            "incident_key": incident.key,
            "notifier": name,
            "change": Change(change).value,
            "incident": snapshot,
            "state": DeliveryState.pending.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        ids.append(conn.execute(insert(deliveries_table).values(row).returning(deliveries_table.c.id)).scalar_one())
    return ids


# --------------------------------------------------------------------------- reading back


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    delivery_id: int
    agent: str
    at: datetime
    duration: float
    status_code: int | None
    excerpt: str
    error: str
    outcome: AttemptOutcome


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    incident_id: int
    incident_key: str
    notifier: str
    change: Change
    incident: Incident  # the snapshot that is (or was) sent
    state: DeliveryState
    attempt_count: int
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    ref: str | None
    fallback_of: int | None
    claimed_by: str | None
    claimed_until: datetime | None
    attempts: tuple[Attempt, ...] = ()  # oldest first

    @property
    def last_error(self) -> str:
        for attempt in reversed(self.attempts):
            if attempt.outcome is not AttemptOutcome.accepted:
                return attempt.error
        return ""


def _attempt_from(row: Mapping[str, Any]) -> Attempt:
    return Attempt(
        id=row["id"],
        delivery_id=row["delivery_id"],
        agent=row["agent"],
        at=row["at"],
        duration=row["duration"],
        status_code=row["status_code"],
        excerpt=row["excerpt"],
        error=row["error"],
        outcome=AttemptOutcome(row["outcome"]),
    )


def _delivery_from(row: Mapping[str, Any], attempts: Sequence[Attempt]) -> Delivery:
    return Delivery(
        id=row["id"],
        incident_id=row["incident_id"],
        incident_key=row["incident_key"],
        notifier=row["notifier"],
        change=Change(row["change"]),
        incident=incident_from_json(row["incident"]),
        state=DeliveryState(row["state"]),
        attempt_count=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        sent_at=row["sent_at"],
        ref=row["ref"],
        fallback_of=row["fallback_of"],
        claimed_by=row["claimed_by"],
        claimed_until=row["claimed_until"],
        attempts=tuple(attempts),
    )


# --------------------------------------------------------------------------- the outbox


@dataclass(slots=True)
class _Claimed:
    """A delivery this agent holds the lease of, with what sending it needs."""

    id: int
    incident_id: int
    incident_key: str
    notifier: str
    change: str
    incident: dict[str, Any]
    attempts: int
    created_at: datetime
    fallback_of: int | None
    token: str
    ref: str | None = None


@dataclass(slots=True)
class _Outcome:
    """One finished attempt, waiting to be written to the store."""

    delivery: _Claimed
    at: datetime
    duration: float
    outcome: AttemptOutcome
    status_code: int | None = None
    excerpt: str = ""
    error: str = ""
    ref: str | None = None
    clock: datetime | None = field(default=None)  # the dispatch's `now`, for next_attempt_at


class Outbox:
    """Sends the stored deliveries; many agents may share one store."""

    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        *,
        agent: str = "local",
        fallbacks: Mapping[str, str] = {},
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        give_up_after: float | None = 24 * 3600,
        lease: float = 60.0,
        client: httpx.AsyncClient | None = None,
        concurrency: int = 16,
        fallback_after: int = 3,
        send_timeout: float | None = None,
    ) -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        if lease <= 0 or concurrency < 1 or fallback_after < 1:
            raise ValueError("lease must be > 0, concurrency and fallback_after >= 1")
        missing = sorted({f for f in fallbacks.values() if f not in notifiers})
        if missing:
            raise ValueError(f"fallback notifier(s) {', '.join(missing)} not configured")
        self.store = store
        self.notifiers = dict(notifiers)
        self.agent = agent
        self.fallbacks = dict(fallbacks)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.give_up_after = give_up_after
        self.lease = lease
        self.concurrency = concurrency
        self.fallback_after = fallback_after
        # A send must end well inside the lease, or another agent could claim and send it too.
        self.send_timeout = send_timeout if send_timeout is not None else lease / 2
        self._own_client = client is None
        self.client = client if client is not None else httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S)
        self._unrecorded: list[_Outcome] = []  # sent, but the store was away when we wrote it down
        self._store_error: str | None = None
        with self.store._errors("cannot create the outbox tables in"):
            ensure_tables(self.store.engine)

    @property
    def engine(self) -> Engine:
        return self.store.engine

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        """Dispatch due deliveries every `interval` seconds until `stop` is set; never raises."""
        failing = False
        while not stop.is_set():
            try:
                await self.dispatch_due()
                if failing:
                    log.info("outbox store reachable again", agent=self.agent)
                failing = False
            except StoreError as exc:
                if not failing:
                    log.warning("outbox cannot reach the store; retrying", agent=self.agent, error=str(exc))
                failing = True
            except Exception:  # noqa: BLE001 - the loop must outlive any bug
                log.exception("outbox dispatch failed", agent=self.agent)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass

    async def flush(self, timeout: float) -> bool:
        """Dispatch until nothing is due (True) or `timeout` seconds pass (False).

        Deliveries waiting for a later retry are left in the store for the next start.
        Raises StoreError if the store cannot be reached.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if await self.dispatch_due() == 0 and not self._unrecorded:
                        return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ dispatching

    async def dispatch_due(self, now: datetime | None = None) -> int:
        """Claim, send and record the due deliveries; returns how many attempts were made.

        Raises StoreError when the store cannot be reached; nothing is lost: unclaimed
        deliveries stay pending, and outcomes not yet written are kept and written first next time.
        """
        clock = _utc(now) if now is not None else None
        await self._record_unrecorded()
        total = 0
        for _ in range(MAX_ROUNDS):
            claimed = await asyncio.to_thread(self._claim, clock or _now(), self.concurrency)
            if not claimed:
                break
            finished = await self._send_all(claimed, clock)
            total += len(claimed)
            if self._unrecorded:
                raise StoreError(self._store_error or "cannot record delivery attempts")
            # Another round if the batch was full, or if something left `pending` (it may unblock the next in line).
            if len(claimed) < self.concurrency and not finished:
                break
        return total

    async def _record_unrecorded(self) -> None:
        while self._unrecorded:
            outcome = self._unrecorded[0]
            await asyncio.to_thread(self._record, outcome)  # raises StoreError: keep it for next time
            self._unrecorded.pop(0)

    async def _send_all(self, claimed: list[_Claimed], clock: datetime | None) -> int:
        """Send every claimed delivery concurrently; returns how many left `pending`."""
        done: set[int] = set()
        finished = 0

        async def one(d: _Claimed) -> None:
            nonlocal finished
            outcome = await self._send(d, clock)
            done.add(d.id)
            try:
                if await asyncio.to_thread(self._record, outcome):
                    finished += 1
            except StoreError as exc:
                self._store_error = str(exc)
                self._unrecorded.append(outcome)
                log.warning("delivery attempt not recorded yet", delivery=d.id, error=str(exc))

        tasks = [asyncio.ensure_future(one(d)) for d in claimed]
        try:
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Hand the unsent ones back at once (a shutdown flush or another agent sends them).
            unsent = [d for d in claimed if d.id not in done]
            if unsent:
                try:
                    await asyncio.to_thread(self._release, unsent)
                except Exception:  # noqa: BLE001 - the lease expires by itself
                    pass
            raise
        return finished

    async def _send(self, d: _Claimed, clock: datetime | None) -> _Outcome:
        at = clock or _now()
        start = time.monotonic()

        def result(outcome: AttemptOutcome, **kw: Any) -> _Outcome:
            return _Outcome(d, at, time.monotonic() - start, outcome, clock=clock, **kw)

        notifier = self.notifiers.get(d.notifier)
        if notifier is None:
            return result(AttemptOutcome.rejected, error=f"notifier {d.notifier!r} is not configured")
        token = current_delivery.set(d.id)
        try:
            incident = incident_from_json(d.incident)
            async with asyncio.timeout(self.send_timeout):
                receipt = await notifier.send(self.client, incident, Change(d.change), d.ref)
        except NotifierError as exc:
            return result(
                AttemptOutcome.retry if exc.retryable else AttemptOutcome.rejected,
                status_code=exc.status_code,
                excerpt=_clip(exc.excerpt, EXCERPT_MAX),
                error=_clip(str(exc), ERROR_MAX),
            )
        except TimeoutError:
            return result(AttemptOutcome.retry, error=f"no answer within {self.send_timeout:g}s")
        except httpx.HTTPError as exc:
            return result(AttemptOutcome.retry, error=_clip(f"{type(exc).__name__}: {exc}", ERROR_MAX))
        except Exception as exc:  # noqa: BLE001 - a notifier bug: keep the delivery, say what happened
            log.exception("notifier raised", notifier=d.notifier, delivery=d.id)
            return result(AttemptOutcome.retry, error=_clip(f"{type(exc).__name__}: {exc}", ERROR_MAX))
        finally:
            current_delivery.reset(token)
        return result(
            AttemptOutcome.accepted,
            status_code=receipt.status_code,
            excerpt=_clip(receipt.excerpt, EXCERPT_MAX),
            ref=receipt.ref,
        )

    # ------------------------------------------------------------------ store work (sync, in threads)

    def _eligible(self, now: datetime) -> tuple[Any, Any]:
        d = deliveries_table.alias("d")
        earlier = deliveries_table.alias("earlier")
        waiting_behind = (
            exists()
            .where(
                earlier.c.incident_key == d.c.incident_key,
                earlier.c.notifier == d.c.notifier,
                earlier.c.state == DeliveryState.pending.value,
                earlier.c.id < d.c.id,
            )
            .correlate(d)
        )
        condition = and_(
            d.c.state == DeliveryState.pending.value,
            d.c.next_attempt_at <= now,
            or_(d.c.claimed_until.is_(None), d.c.claimed_until < now),
            ~waiting_behind,
        )
        return d, condition

    def _claim(self, now: datetime, limit: int) -> list[_Claimed]:
        t = deliveries_table
        token = secrets.token_hex(16)
        until = now + timedelta(seconds=self.lease)
        d, condition = self._eligible(now)
        due = select(d.c.id).where(condition).order_by(d.c.next_attempt_at, d.c.id).limit(limit)
        claim = {"claimed_by": self.agent, "claimed_until": until, "claim_token": token}
        with self.store._errors("cannot claim deliveries in"), self.engine.begin() as conn:
            if self.store.dialect == "postgresql":
                ids = conn.execute(due.with_for_update(skip_locked=True)).scalars().all()
                if not ids:
                    return []
                conn.execute(update(t).where(t.c.id.in_(ids)).values(**claim))
            else:
                # One statement, so one writer: SQLite serialises it against every other agent.
                conn.execute(update(t).where(t.c.id.in_(due.scalar_subquery())).values(**claim))
            rows = conn.execute(
                select(t).where(t.c.claimed_by == self.agent, t.c.claim_token == token).order_by(t.c.id)
            ).mappings().all()
            claimed = [
                _Claimed(
                    id=r["id"],
                    incident_id=r["incident_id"],
                    incident_key=r["incident_key"],
                    notifier=r["notifier"],
                    change=r["change"],
                    incident=r["incident"],
                    attempts=r["attempts"],
                    created_at=r["created_at"],
                    fallback_of=r["fallback_of"],
                    token=token,
                )
                for r in rows
            ]
            refs: dict[tuple[int, str], str | None] = {}
            for c in claimed:
                key = (c.incident_id, c.notifier)
                if key not in refs:
                    refs[key] = conn.execute(
                        select(t.c.ref)
                        .where(
                            t.c.incident_id == c.incident_id,
                            t.c.notifier == c.notifier,
                            t.c.state == DeliveryState.sent.value,
                            t.c.ref.is_not(None),
                        )
                        .order_by(t.c.id.desc())
                        .limit(1)
                    ).scalar()
                c.ref = refs[key]
        return claimed

    def _release(self, claimed: Sequence[_Claimed]) -> None:
        t = deliveries_table
        with self.store._errors("cannot release deliveries in"), self.engine.begin() as conn:
            for c in claimed:
                conn.execute(
                    update(t)
                    .where(t.c.id == c.id, t.c.claim_token == c.token, t.c.state == DeliveryState.pending.value)
                    .values(claimed_by=None, claimed_until=None, claim_token=None)
                )

    def _record(self, o: _Outcome) -> bool:
        """Write one attempt and its consequence; True if the delivery left `pending`."""
        t = deliveries_table
        d = o.delivery
        done_at = o.at + timedelta(seconds=o.duration)
        released = {"claimed_by": None, "claimed_until": None, "claim_token": None}
        outcome = o.outcome
        error = o.error
        next_at: datetime | None = None
        if outcome is AttemptOutcome.retry:
            age = (o.at - d.created_at).total_seconds()
            if self.give_up_after is not None and age >= self.give_up_after:
                outcome = AttemptOutcome.rejected
                error = (error + "; " if error else "") + f"given up after {age:.0f}s"
            else:
                next_at = (o.clock or done_at) + timedelta(
                    seconds=backoff(d.attempts, self.base_delay, self.max_delay)
                )
        mine = and_(t.c.id == d.id, t.c.state == DeliveryState.pending.value, t.c.claim_token == d.token)
        with self.store._errors("cannot record a delivery attempt in"), self.engine.begin() as conn:
            # A write first: on SQLite the transaction then holds the write lock from the start.
            conn.execute(
                insert(attempts_table).values(
                    delivery_id=d.id,
                    agent=self.agent,
                    at=o.at,
                    duration=o.duration,
                    status_code=o.status_code,
                    excerpt=o.excerpt,
                    error=error,
                    outcome=outcome.value,
                )
            )
            if outcome is AttemptOutcome.accepted:
                # Accepted is accepted, even if our lease ran out meanwhile.
                changed = conn.execute(
                    update(t)
                    .where(t.c.id == d.id, t.c.state == DeliveryState.pending.value)
                    .values(state=DeliveryState.sent.value, sent_at=done_at, ref=o.ref, attempts=t.c.attempts + 1, **released)
                ).rowcount
            elif outcome is AttemptOutcome.rejected:
                changed = conn.execute(
                    update(t).where(mine).values(state=DeliveryState.failed.value, attempts=t.c.attempts + 1, **released)
                ).rowcount
            else:
                changed = conn.execute(
                    update(t).where(mine).values(next_attempt_at=next_at, attempts=t.c.attempts + 1, **released)
                ).rowcount
            fallback_ids: list[int] = []
            if changed and outcome is not AttemptOutcome.accepted:
                if d.fallback_of is None and d.notifier in self.fallbacks and (
                    outcome is AttemptOutcome.rejected or d.attempts + 1 >= self.fallback_after
                ):
                    fallback_ids = self._fall_back(conn, d, self.fallbacks[d.notifier], o.clock or done_at)
        self._log(o, outcome, error, d, changed, next_at, fallback_ids)
        return bool(changed) and outcome is not AttemptOutcome.retry

    def _fall_back(self, conn: Connection, d: _Claimed, fallback: str, now: datetime) -> list[int]:
        """Copy `d` and the deliveries waiting behind it to the fallback notifier, each once."""
        t = deliveries_table
        copy = t.alias("copy")
        has_copy = exists().where(copy.c.fallback_of == t.c.id)
        rows = conn.execute(
            select(t.c.id, t.c.incident_id, t.c.incident_key, t.c.change, t.c.incident)
            .where(
                t.c.incident_key == d.incident_key,
                t.c.notifier == d.notifier,
                t.c.fallback_of.is_(None),
                or_(t.c.id == d.id, and_(t.c.id > d.id, t.c.state == DeliveryState.pending.value)),
                ~has_copy,
            )
            .order_by(t.c.id)
        ).mappings().all()
        ids = []
        for r in rows:
            ids.append(
                conn.execute(
                    insert(t)
                    .values(
                        incident_id=r["incident_id"],
                        incident_key=r["incident_key"],
                        notifier=fallback,
                        change=r["change"],
                        incident=r["incident"],
                        state=DeliveryState.pending.value,
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                        fallback_of=r["id"],
                    )
                    .returning(t.c.id)
                ).scalar_one()
            )
        return ids

    def _log(
        self,
        o: _Outcome,
        outcome: AttemptOutcome,
        error: str,
        d: _Claimed,
        changed: int,
        next_at: datetime | None,
        fallback_ids: list[int],
    ) -> None:
        where = {"delivery": d.id, "notifier": d.notifier, "incident": d.incident_key, "change": d.change}
        if not changed:
            # Our lease ran out and another agent took the delivery over (or already finished it).
            log.warning("delivery attempt recorded after losing its lease", **where, outcome=outcome.value, error=error)
        elif outcome is AttemptOutcome.accepted:
            log.info("delivery accepted", **where, status=o.status_code, attempts=d.attempts + 1)
        elif outcome is AttemptOutcome.rejected:
            log.error("delivery failed, giving up", **where, status=o.status_code, error=error, attempts=d.attempts + 1)
        else:
            log.warning(
                "delivery not accepted, will retry",
                **where,
                status=o.status_code,
                error=error,
                attempts=d.attempts + 1,
                next_attempt_at=next_at.isoformat(),
            )
        if fallback_ids:
            log.warning("delivery copied to fallback", **where, fallback=self.fallbacks[d.notifier], copies=fallback_ids)

    # ------------------------------------------------------------------ reading

    def deliveries(
        self,
        incident_id: int | None = None,
        state: DeliveryState | str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries newest first, each with its attempts (oldest first)."""
        t = deliveries_table
        a = attempts_table
        query = select(t)
        if incident_id is not None:
            query = query.where(t.c.incident_id == incident_id)
        if state is not None:
            query = query.where(t.c.state == DeliveryState(state).value)
        query = query.order_by(t.c.id.desc()).limit(limit)
        with self.store._errors("cannot read deliveries from"), self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            ids = [r["id"] for r in rows]
            attempts: dict[int, list[Attempt]] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for ar in conn.execute(select(a).where(a.c.delivery_id.in_(chunk)).order_by(a.c.id)).mappings():
                    attempts.setdefault(ar["delivery_id"], []).append(_attempt_from(ar))
        return [_delivery_from(r, attempts.get(r["id"], ())) for r in rows]
