"""Durable deliveries (alerts.outbox) against a real webhook sink on 127.0.0.1, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import event, exc as sa_exc, func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from alerts.model import Change, Evidence, Incident, IncidentState, Receipt
from alerts.outbox import (
    AttemptOutcome,
    DeliveryState,
    Outbox,
    backoff,
    current_delivery,
    deliveries_table,
    enqueue,
    incident_from_json,
    incident_to_json,
)
from cxtest.errors import NotifierError, StoreError
from cxtest.model import Outcome
from cxtest.sandbox.server import ThreadedServer
from cxtest.store import Store, metadata

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
DELIVERY_HEADER = "X-Cxtest-Delivery"


# --------------------------------------------------------------------------- the sink


@dataclass(frozen=True)
class Hit:
    name: str
    delivery: int
    change: str
    incident_id: int
    ref: str | None
    answer: str  # accepted | 500 | 400 | hung
    at: float


class Sink:
    """A webhook receiver; `mode` (or `modes[name]`) makes it accept, answer 500 or 400, or hang."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generation = 0
        self.reset()
        self.server = ThreadedServer(Starlette(routes=[Route("/hook/{name}", self._receive, methods=["POST"])]))

    def reset(self) -> None:
        """A clean sink for the next test; requests still hanging from the last one are not recorded."""
        with self._lock:
            self.generation += 1
            self.mode = "ok"
            self.modes: dict[str, str] = {}
            self.hang_s = 1.0
            self.delay = 0.0
            self.flaky = 0.0  # chance of a 500 in "ok" mode
            self.hits: list[Hit] = []
            self._rng = random.Random(7)

    async def _receive(self, request: Request) -> Response:
        generation = self.generation
        name = request.path_params["name"]
        body = await request.json()
        mode = self.modes.get(name, self.mode)
        if mode == "ok" and self.flaky:
            with self._lock:
                mode = "500" if self._rng.random() < self.flaky else "ok"
        if self.delay:
            await asyncio.sleep(self.delay)
        if mode == "hang":
            await asyncio.sleep(self.hang_s)
        answer = {"ok": "accepted", "hang": "hung"}.get(mode, mode)
        with self._lock:
            if generation != self.generation:
                return PlainTextResponse("stale", status_code=503)
            self.hits.append(
                Hit(name, int(request.headers[DELIVERY_HEADER]), body["change"], body["incident_id"], body.get("ref"),
                    answer, time.monotonic())
            )
        if mode == "500":
            return PlainTextResponse("upstream broken", status_code=500)
        if mode == "400":
            return PlainTextResponse("bad routing key", status_code=400)
        # ServiceNow-like: a create (no ref yet) answers the record's id; updates answer none.
        reply = {} if body.get("ref") else {"sys_id": f"sys-{request.headers[DELIVERY_HEADER]}"}
        return JSONResponse(reply, status_code=201)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """Come back on the same port the notifiers were configured with."""
        self.server = ThreadedServer(self.server.app, port=self.server.port or 0)
        self.server.start()

    def accepted(self, name: str | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.answer == "accepted" and (name is None or h.name == name)]

    def accepted_ids(self, name: str | None = None) -> list[int]:
        return [h.delivery for h in self.accepted(name)]


class HookNotifier:
    """A minimal webhook notifier: posts the change and the ref, names the delivery in a header."""

    type: ClassVar[str] = "test-webhook"

    def __init__(self, name: str, url: str, after_send: Callable[[], None] | None = None) -> None:
        self.name = name
        self.url = url
        self.after_send = after_send

    def payload(self, incident: Incident, change: Change, ref: str | None = None) -> dict:
        return {"incident_id": incident.id, "key": incident.key, "change": change.value, "summary": incident.summary, "ref": ref}

    async def send(self, client: httpx.AsyncClient, incident: Incident, change: Change, ref: str | None = None) -> Receipt:
        headers = {DELIVERY_HEADER: str(current_delivery.get())}
        try:
            response = await client.post(self.url, json=self.payload(incident, change, ref), headers=headers)
        except httpx.TimeoutException as exc:
            raise NotifierError(f"{self.name}: no answer ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise NotifierError(f"{self.name}: cannot reach {self.url} ({type(exc).__name__})") from None
        finally:
            if self.after_send is not None:
                self.after_send()
        if response.status_code >= 400:
            raise NotifierError(
                f"{self.name}: HTTP {response.status_code}",
                status_code=response.status_code,
                excerpt=response.text[:200],
                retryable=response.status_code >= 500 or response.status_code == 429,
            )
        return Receipt(response.status_code, response.text[:200], ref=response.json().get("sys_id"))


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cxtest.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def stores(store_url: str) -> Iterator[Callable[[], Store]]:
    """Opens Stores on the test's database (one per agent); every table starts and ends empty."""
    opened: list[Store] = []

    def open_store() -> Store:
        opened.append(Store(store_url))
        return opened[-1]

    first = open_store()
    open_store.first = first  # type: ignore[attr-defined]
    if first.dialect == "postgresql":
        # The PostgreSQL server lives for the session: start from, and leave, an empty schema.
        metadata.drop_all(first.engine)
        metadata.create_all(first.engine)
    yield open_store
    for s in opened[1:]:
        s.close()
    if first.dialect == "postgresql":
        metadata.drop_all(first.engine)
    first.close()


@pytest.fixture
def store(stores: Callable[[], Store]) -> Store:
    """The first agent's store."""
    return stores.first  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def _sink_server() -> Iterator[Sink]:
    s = Sink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def sink(_sink_server: Sink) -> Sink:
    """The module's webhook sink, reset (and running) for this test."""
    _sink_server.reset()
    if not _sink_server.server.running:
        _sink_server.restart()
    return _sink_server


@pytest.fixture
async def make(store: Store, sink: Sink) -> AsyncIterator[Callable[..., Outbox]]:
    """Builds Outboxes posting to the sink: make(names=("hook",), store=..., client_timeout=..., **Outbox options)."""
    built: list[Outbox] = []
    clients: list[httpx.AsyncClient] = []

    def build(
        names: tuple[str, ...] = ("hook",),
        *,
        on: Store | None = None,
        client_timeout: float = 2.0,
        after_send: Callable[[], None] | None = None,
        **options: Any,
    ) -> Outbox:
        client = httpx.AsyncClient(timeout=client_timeout)
        clients.append(client)
        notifiers = {n: HookNotifier(n, f"{sink.url}/hook/{n}", after_send) for n in names}
        options.setdefault("base_delay", 0.05)
        options.setdefault("max_delay", 0.5)
        outbox = Outbox(on or store, notifiers, client=client, **options)
        built.append(outbox)
        return outbox

    yield build
    for outbox in built:
        await outbox.aclose()
    for client in clients:
        await client.aclose()


def incident(n: int = 1, *, state: IncidentState = IncidentState.open, key: str | None = None) -> Incident:
    return Incident(
        id=n,
        key=key or f"demo/status-{n}:failures",
        scenario_id=f"demo/status-{n}",
        scenario_name=f"Status page {n}",
        rule="failures",
        location="eu-1",
        severity="critical",
        state=state,
        summary="step 1 (GET /api/status): expected status 200, got 503",
        opened_at=T0,
        resolved_at=T0 + timedelta(minutes=7) if state is IncidentState.resolved else None,
        reminders=1,
        evidence=(
            Evidence("run-1", T0, Outcome.failed, "expected status 200, got 503", "eu-1", ("artifacts/run-1/log.txt",)),
            Evidence("run-2", T0 + timedelta(minutes=1), Outcome.error, "connection refused", "us-1"),
        ),
        link="http://127.0.0.1:9464/incidents/1",
        tags=("billing", "release-gate"),
    )


def put(store: Store, inc: Incident, change: Change, names: tuple[str, ...] | list[str] = ("hook",)) -> list[int]:
    with store.engine.begin() as conn:
        return enqueue(conn, inc, change, names)


def now() -> datetime:
    return datetime.now(timezone.utc)


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


def by_id(outbox: Outbox) -> dict[int, Any]:
    return {d.id: d for d in outbox.deliveries(limit=10_000)}


def all_sent(outbox: Outbox, ids: list[int]) -> Callable[[], bool]:
    return lambda: all(by_id(outbox)[i].state is DeliveryState.sent for i in ids)


class Outage:
    """Makes every statement on a store's engine fail as if the database had gone away."""

    def __init__(self, store: Store) -> None:
        self.engine = store.engine
        self.on = False
        event.listen(self.engine, "before_cursor_execute", self._fail)

    def _fail(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if self.on:
            raise sa_exc.OperationalError(statement, parameters, OSError("server closed the connection unexpectedly"))

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._fail)


# --------------------------------------------------------------------------- pure parts


def test_incident_json_round_trip() -> None:
    """incident_to_json keeps every Incident field (datetimes ISO, enums by value) and incident_from_json rebuilds it."""
    for inc in (incident(3), incident(4, state=IncidentState.resolved)):
        data = incident_to_json(inc)
        assert data["state"] == inc.state.value and data["opened_at"] == T0.isoformat()
        assert data["evidence"][0]["outcome"] == "failed" and data["evidence"][0]["started_at"] == T0.isoformat()
        import json

        assert incident_from_json(json.loads(json.dumps(data))) == inc


def test_backoff_grows_and_has_jitter() -> None:
    """Backoff doubles per attempt up to max_delay, and the jitter spreads it over 0.5x..1.5x."""
    middle = [backoff(n, 1.0, 300.0, rand=lambda a, b: 1.0) for n in range(12)]
    assert middle == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert backoff(3, 1.0, 300.0, rand=lambda a, b: a) == 4.0 and backoff(3, 1.0, 300.0, rand=lambda a, b: b) == 12.0
    assert backoff(10_000, 1.0, 300.0, rand=lambda a, b: 1.0) == 300.0  # no overflow
    samples = [backoff(3, 1.0, 300.0) for _ in range(500)]
    assert all(4.0 <= s <= 12.0 for s in samples)
    assert len({round(s, 6) for s in samples}) > 400 and min(samples) < 5.0 and max(samples) > 11.0


# --------------------------------------------------------------------------- delivery


async def test_delivered_once_when_accepted(make, store: Store, sink: Sink) -> None:
    """An accepted delivery is sent exactly once and recorded as sent with its one attempt and the snapshot."""
    outbox = make()
    inc = incident()
    [did] = put(store, inc, Change.opened)
    [pending] = outbox.deliveries()
    assert pending.state is DeliveryState.pending and pending.attempts == () and pending.incident == inc

    assert await outbox.dispatch_due() == 1
    assert await outbox.dispatch_due(now() + timedelta(hours=1)) == 0
    assert sink.accepted_ids() == [did] and sink.hits[0].change == "opened" and sink.hits[0].incident_id == inc.id

    [d] = outbox.deliveries(incident_id=inc.id)
    assert d.state is DeliveryState.sent and d.attempt_count == 1 and d.sent_at is not None
    assert d.claimed_by is None and d.claimed_until is None and d.ref == f"sys-{did}" and d.incident == inc
    [a] = d.attempts
    assert a.outcome is AttemptOutcome.accepted and a.status_code == 201 and a.error == "" and a.agent == "local"
    assert outbox.deliveries(state="pending") == [] and outbox.deliveries(incident_id=99) == []


@pytest.mark.parametrize(
    "down_s", [pytest.param(3.0, id="down-3s"), pytest.param(60.0, id="down-60s", marks=pytest.mark.slow)]
)
async def test_receiver_down_then_back_delivers_everything_once_in_order(
    make, store: Store, sink: Sink, down_s: float, request: pytest.FixtureRequest
) -> None:
    """With the receiver down for a while, every delivery arrives exactly once after it is back, in order per incident."""
    outbox = make(base_delay=0.05, max_delay=1.0)
    incidents = [incident(n) for n in range(1, 6)]
    opened = [put(store, inc, Change.opened)[0] for inc in incidents]
    resolved = [put(store, inc, Change.resolved)[0] for inc in incidents]
    sink.stop()

    stop = asyncio.Event()
    loop = asyncio.create_task(outbox.run(stop, interval=0.05))
    await asyncio.sleep(down_s)
    assert sink.hits == []
    sink.restart()
    await until(all_sent(outbox, opened + resolved), 15, "every delivery sent after the receiver came back")
    stop.set()
    await asyncio.wait_for(loop, 5)

    got = sink.accepted_ids()
    assert sorted(got) == sorted(opened + resolved) and len(got) == len(set(got))
    for inc in incidents:
        assert [h.change for h in sink.accepted() if h.incident_id == inc.id] == ["opened", "resolved"]
    ds = by_id(outbox)
    for o, r in zip(opened, resolved):
        first = ds[o]
        assert first.attempt_count == len(first.attempts) > 1
        assert [a.outcome for a in first.attempts] == [AttemptOutcome.retry] * (len(first.attempts) - 1) + [AttemptOutcome.accepted]
        assert "cannot reach" in first.attempts[0].error
        # The resolved was not tried before its opened was accepted.
        assert ds[r].attempts[0].at >= first.sent_at
    # Backoff grew while the receiver was down (jitter is at most 3x between neighbours, so compare far apart).
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(ds[opened[0]].attempts, ds[opened[0]].attempts[1:])]
    assert len(gaps) >= 4 and gaps[3] > gaps[0]


async def test_rejected_400_fails_and_is_not_retried(make, store: Store, sink: Sink) -> None:
    """A 400 (not retryable) marks the delivery failed after one attempt; it is never sent again."""
    sink.mode = "400"
    outbox = make()
    [did] = put(store, incident(), Change.opened)
    assert await outbox.dispatch_due() == 1
    assert await outbox.dispatch_due(now() + timedelta(days=2)) == 0
    assert [h.answer for h in sink.hits] == ["400"]
    [d] = outbox.deliveries(state=DeliveryState.failed)
    assert d.id == did and d.attempt_count == 1 and d.sent_at is None and d.claimed_by is None
    [a] = d.attempts
    assert a.outcome is AttemptOutcome.rejected and a.status_code == 400 and a.excerpt == "bad routing key"
    assert d.last_error == "hook: HTTP 400"


async def test_hanging_receiver_is_retried_after_the_client_timeout(make, store: Store, sink: Sink) -> None:
    """A receiver that never answers costs one client timeout, then the delivery is retried and sent."""
    sink.mode, sink.hang_s = "hang", 0.8
    outbox = make(client_timeout=0.3)
    [did] = put(store, incident(), Change.opened)
    started = time.monotonic()
    assert await outbox.dispatch_due() == 1
    assert 0.3 <= time.monotonic() - started < 1.4
    [d] = outbox.deliveries()
    assert d.state is DeliveryState.pending and d.attempt_count == 1 and d.claimed_by is None
    [a] = d.attempts
    assert a.outcome is AttemptOutcome.retry and "no answer" in a.error and a.duration >= 0.3

    sink.mode = "ok"
    assert await outbox.dispatch_due(now() + timedelta(seconds=5)) == 1
    assert sink.accepted_ids() == [did]
    assert [a.outcome for a in outbox.deliveries()[0].attempts] == [AttemptOutcome.retry, AttemptOutcome.accepted]


async def test_send_timeout_bounds_a_notifier_inside_the_lease(make, store: Store, sink: Sink) -> None:
    """A send that outlasts send_timeout (kept well inside the lease) is cut off and retried."""
    sink.mode, sink.hang_s = "hang", 0.8
    outbox = make(client_timeout=10.0, send_timeout=0.3)
    put(store, incident(), Change.opened)
    assert await outbox.dispatch_due() == 1
    [a] = outbox.deliveries()[0].attempts
    assert a.outcome is AttemptOutcome.retry and a.error == "no answer within 0.3s"
    assert make(lease=30.0).send_timeout == 15.0


async def test_give_up_after_max_age(make, store: Store, sink: Sink) -> None:
    """A delivery still failing past give_up_after is marked failed, saying why."""
    sink.mode = "500"
    outbox = make(give_up_after=60.0)
    put(store, incident(), Change.opened)
    assert await outbox.dispatch_due() == 1
    assert outbox.deliveries()[0].state is DeliveryState.pending
    assert await outbox.dispatch_due(now() + timedelta(seconds=61)) == 1
    [d] = outbox.deliveries()
    assert d.state is DeliveryState.failed and d.attempt_count == 2
    assert d.attempts[-1].outcome is AttemptOutcome.rejected and "given up after" in d.attempts[-1].error
    assert d.attempts[-1].status_code == 500 and d.attempts[-1].excerpt == "upstream broken"
    assert await outbox.dispatch_due(now() + timedelta(days=3)) == 0


async def test_order_per_incident_and_notifier(make, store: Store, sink: Sink) -> None:
    """A later change waits while an earlier one of the same incident and notifier is pending; others are not held up."""
    sink.modes["hook"] = "500"
    outbox = make(("hook", "other"))
    a, b = incident(1), incident(2)
    chain = [put(store, a, change)[0] for change in (Change.opened, Change.reminded, Change.resolved)]
    [b_opened] = put(store, b, Change.opened, ["other"])
    [a_other] = put(store, a, Change.opened, ["other"])

    t = now()
    for step in range(3):
        await outbox.dispatch_due(t + timedelta(seconds=10 * step))
    hook_hits = [h for h in sink.hits if h.name == "hook"]
    assert [h.delivery for h in hook_hits] == [chain[0]] * 3  # only the head was tried
    assert sorted(sink.accepted_ids("other")) == sorted([b_opened, a_other])

    sink.modes["hook"] = "ok"
    await outbox.dispatch_due(t + timedelta(seconds=60))
    assert sink.accepted_ids("hook") == chain
    assert [h.change for h in sink.accepted("hook")] == ["opened", "reminded", "resolved"]


async def test_failed_delivery_does_not_hold_back_the_next(make, store: Store, sink: Sink) -> None:
    """Once an earlier delivery is given up (failed), the later ones of the same incident go out."""
    sink.mode = "400"
    outbox = make()
    first, second = put(store, incident(), Change.opened)[0], put(store, incident(), Change.resolved)[0]
    assert await outbox.dispatch_due() == 2  # second round: the head failed, so the next is due
    assert [h.delivery for h in sink.hits] == [first, second]


async def test_ref_round_trip_servicenow_like(make, store: Store, sink: Sink) -> None:
    """Later deliveries of an incident get the ref (sys_id) the receiver gave for the first one."""
    outbox = make(("snow",))
    inc, other = incident(1), incident(2)
    ids = [put(store, inc, change, ["snow"])[0] for change in (Change.opened, Change.reminded, Change.resolved)]
    [other_id] = put(store, other, Change.opened, ["snow"])
    assert await outbox.dispatch_due() == 4
    refs = {h.delivery: h.ref for h in sink.accepted("snow")}
    assert refs == {ids[0]: None, ids[1]: f"sys-{ids[0]}", ids[2]: f"sys-{ids[0]}", other_id: None}
    ds = by_id(outbox)
    assert ds[ids[0]].ref == f"sys-{ids[0]}" and ds[ids[1]].ref is None and ds[other_id].ref == f"sys-{other_id}"


async def test_fallback_takes_over_after_n_failures(make, store: Store, sink: Sink) -> None:
    """After fallback_after failed attempts a copy goes to the fallback once; the primary is still retried."""
    sink.modes["primary"] = "500"
    outbox = make(("primary", "backup"), fallbacks={"primary": "backup"}, fallback_after=3)
    inc = incident()
    opened, resolved = put(store, inc, Change.opened, ["primary"])[0], put(store, inc, Change.resolved, ["primary"])[0]

    t = now()
    for step in range(2):
        await outbox.dispatch_due(t + timedelta(seconds=10 * step))
    assert sink.accepted("backup") == []
    await outbox.dispatch_due(t + timedelta(seconds=20))  # third failure: copies enqueued
    await outbox.dispatch_due(t + timedelta(seconds=30))
    backup = sink.accepted("backup")
    assert [h.change for h in backup] == ["opened", "resolved"]
    ds = by_id(outbox)
    assert [ds[h.delivery].fallback_of for h in backup] == [opened, resolved]

    for step in range(4, 7):
        await outbox.dispatch_due(t + timedelta(seconds=10 * step))
    assert len(sink.accepted("backup")) == 2  # once
    assert len([h for h in sink.hits if h.name == "primary"]) == 7  # one try per dispatch, fallback or not

    sink.modes["primary"] = "ok"
    await outbox.dispatch_due(t + timedelta(seconds=100))
    assert sink.accepted_ids("primary") == [opened, resolved]
    ds = by_id(outbox)
    assert ds[opened].state is DeliveryState.sent and ds[opened].attempt_count == 8
    assert len(ds) == 4


async def test_two_agents_never_send_a_delivery_twice(make, stores, sink: Sink) -> None:
    """Two agents dispatching one store at once (SKIP LOCKED / one-writer UPDATE) send each delivery once, in order."""
    sink.delay, sink.flaky = 0.005, 0.3
    a = make(("hook", "pager"), agent="agent-a", concurrency=4, base_delay=0.02, max_delay=0.1)
    b = make(("hook", "pager"), on=stores(), agent="agent-b", concurrency=4, base_delay=0.02, max_delay=0.1)
    ids: list[int] = []
    for n in range(1, 21):
        ids += put(a.store, incident(n), Change.opened, ["hook", "pager"])
    for n in range(1, 21):
        ids += put(a.store, incident(n), Change.resolved, ["hook", "pager"])

    stop = asyncio.Event()
    loops = [asyncio.create_task(o.run(stop, interval=0.01)) for o in (a, b)]
    try:
        await until(all_sent(a, ids), 60, "both agents to send everything")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), 10)

    counts = collections.Counter(sink.accepted_ids())
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    for n in range(1, 21):
        for name in ("hook", "pager"):
            assert [h.change for h in sink.accepted(name) if h.incident_id == n] == ["opened", "resolved"]
    agents = {att.agent for d in a.deliveries(limit=1000) for att in d.attempts}
    assert agents == {"agent-a", "agent-b"}


async def test_lease_expiry_lets_another_agent_take_over(make, stores, store: Store, sink: Sink) -> None:
    """An agent that dies between claim and send holds the delivery only until its lease runs out."""
    crashed = make(agent="crashed", lease=30.0)
    other = make(on=stores(), agent="other", lease=30.0)
    [did] = put(store, incident(), Change.opened)
    t = now()
    claimed = await asyncio.to_thread(crashed._claim, t, 10)  # claimed, then the process "dies"
    assert [c.id for c in claimed] == [did]
    assert outbox_claim(other, did) == "crashed"

    assert await other.dispatch_due(t + timedelta(seconds=1)) == 0
    assert await other.dispatch_due(t + timedelta(seconds=29)) == 0
    assert sink.hits == []
    assert await other.dispatch_due(t + timedelta(seconds=31)) == 1
    assert sink.accepted_ids() == [did]
    [d] = other.deliveries()
    assert d.state is DeliveryState.sent and [x.agent for x in d.attempts] == ["other"]


def outbox_claim(outbox: Outbox, delivery_id: int) -> str | None:
    return by_id(outbox)[delivery_id].claimed_by


async def test_cancelled_dispatch_hands_its_claims_back(make, store: Store, sink: Sink) -> None:
    """A dispatch cancelled mid-send (shutdown) releases its claims, so flush or another agent sends at once."""
    sink.mode, sink.hang_s = "hang", 1.0
    outbox = make(client_timeout=5.0)
    [did] = put(store, incident(), Change.opened)
    assert await outbox.flush(timeout=0.3) is False
    [d] = outbox.deliveries()
    assert d.state is DeliveryState.pending and d.claimed_by is None and d.attempts == ()
    sink.mode = "ok"
    assert await outbox.flush(timeout=5) is True
    assert sink.accepted_ids() == [did]


async def test_run_loop_and_flush(make, store: Store, sink: Sink) -> None:
    """run() sends what is enqueued while it runs and stops on the event; flush() sends what is due and says so."""
    outbox = make()
    stop = asyncio.Event()
    loop = asyncio.create_task(outbox.run(stop, interval=0.05))
    [first] = put(store, incident(1), Change.opened)
    await until(all_sent(outbox, [first]), 5, "the run loop to send")
    stop.set()
    await asyncio.wait_for(loop, 2)

    later = put(store, incident(2), Change.opened) + put(store, incident(2), Change.resolved)
    assert await outbox.flush(timeout=5) is True
    assert sink.accepted_ids() == [first, *later]
    assert await outbox.flush(timeout=5) is True


async def test_enqueue_rolled_back_leaves_no_delivery(make, store: Store, sink: Sink) -> None:
    """enqueue joins the caller's transaction: a rollback leaves no delivery, a commit leaves one per notifier."""
    outbox = make(("hook", "pager"))
    with pytest.raises(RuntimeError):
        with store.engine.begin() as conn:
            assert len(enqueue(conn, incident(), Change.opened, ["hook", "pager"])) == 2
            raise RuntimeError("the incident transition failed")
    assert outbox.deliveries() == []
    assert await outbox.dispatch_due() == 0 and sink.hits == []

    with store.engine.begin() as conn:
        ids = enqueue(conn, incident(), Change.opened, ["hook", "pager", "hook"])
    assert len(ids) == 2
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(deliveries_table)).scalar() == 2


async def test_store_briefly_unavailable_loses_nothing(make, store: Store, sink: Sink) -> None:
    """With the store away, dispatch raises StoreError and the loop keeps going; once it is back everything is sent once."""
    outage = Outage(store)
    try:
        outbox = make()
        ids = [put(store, incident(n), Change.opened)[0] for n in (1, 2, 3)]
        outage.on = True
        with pytest.raises(StoreError, match="cannot claim deliveries in store"):
            await outbox.dispatch_due()
        with pytest.raises(StoreError):
            outbox.deliveries()

        stop = asyncio.Event()
        loop = asyncio.create_task(outbox.run(stop, interval=0.05))
        await asyncio.sleep(0.5)
        assert not loop.done() and sink.hits == []
        outage.on = False
        await until(all_sent(outbox, ids), 10, "deliveries after the store came back")
        stop.set()
        await asyncio.wait_for(loop, 2)
        assert sorted(sink.accepted_ids()) == ids and len(sink.hits) == 3
    finally:
        outage.remove()


async def test_store_lost_between_send_and_record_does_not_resend(make, store: Store, sink: Sink) -> None:
    """An accepted send whose record could not be written is written later, not sent again."""
    outage = Outage(store)
    try:
        outbox = make(after_send=lambda: setattr(outage, "on", True))
        [did] = put(store, incident(), Change.opened)
        with pytest.raises(StoreError, match="cannot record a delivery attempt"):
            await outbox.dispatch_due()
        assert sink.accepted_ids() == [did]
        with pytest.raises(StoreError):
            await outbox.dispatch_due()  # still away: the outcome is kept
        outage.on = False
        outbox.notifiers["hook"].after_send = None  # type: ignore[attr-defined]
        assert await outbox.dispatch_due(now() + timedelta(minutes=5)) == 0  # past the lease, still not resent
        [d] = outbox.deliveries()
        assert d.state is DeliveryState.sent and d.attempt_count == 1 and d.ref == f"sys-{did}"
        assert sink.accepted_ids() == [did]
    finally:
        outage.remove()


async def test_unknown_notifier_and_bad_fallback(make, store: Store, sink: Sink) -> None:
    """A delivery for a notifier no longer configured fails with a clear error; a fallback must name a notifier."""
    outbox = make(("hook",))
    [did] = put(store, incident(), Change.opened, ["gone"])
    assert await outbox.dispatch_due() == 1
    [d] = outbox.deliveries()
    assert d.id == did and d.state is DeliveryState.failed and d.last_error == "notifier 'gone' is not configured"
    with pytest.raises(ValueError, match="fallback notifier.*nowhere"):
        make(("hook",), fallbacks={"hook": "nowhere"})


@pytest.mark.parametrize("store_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
async def test_claim_skips_rows_another_agent_has_locked(make, store: Store, sink: Sink) -> None:
    """On PostgreSQL a claim skips (SKIP LOCKED) a delivery another agent's claim transaction holds, instead of waiting."""
    outbox = make()
    [locked] = put(store, incident(1), Change.opened)
    [free] = put(store, incident(2), Change.opened)
    with store.engine.begin() as conn:
        conn.execute(select(deliveries_table.c.id).where(deliveries_table.c.id == locked).with_for_update())
        started = time.monotonic()
        assert await outbox.dispatch_due() == 1
        assert time.monotonic() - started < 2
    assert sink.accepted_ids() == [free]
    assert await outbox.dispatch_due() == 1
    assert sink.accepted_ids() == [free, locked]


async def test_deliveries_listing_newest_first_with_filters(make, store: Store, sink: Sink) -> None:
    """deliveries() lists newest first, filtered by incident and state, up to the limit, each with its attempts."""
    sink.modes["pager"] = "400"
    outbox = make(("hook", "pager"))
    ids = put(store, incident(1), Change.opened, ["hook", "pager"]) + put(store, incident(2), Change.opened, ["hook"])
    await outbox.dispatch_due()
    assert [d.id for d in outbox.deliveries()] == sorted(ids, reverse=True)
    assert [d.id for d in outbox.deliveries(limit=2)] == sorted(ids, reverse=True)[:2]
    assert [d.id for d in outbox.deliveries(incident_id=1)] == [ids[1], ids[0]]
    [failed] = outbox.deliveries(state="failed")
    assert failed.notifier == "pager" and failed.attempts[0].status_code == 400
    assert {d.notifier for d in outbox.deliveries(state=DeliveryState.sent)} == {"hook"}
