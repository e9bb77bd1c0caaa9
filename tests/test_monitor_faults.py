"""`cxtest monitor` under faults: nothing lost, nothing said twice (DESIGN.md, "Bad input and faults").

Each test breaks one thing for a while — the webhook receiver, the monitor process
(SIGKILL, SIGTERM), the store, the scenario files, one of two agents — and then
counts what reached the receiver: every incident change exactly once, in order.

Deliveries are counted at a small webhook sink of our own (`Sink`), by the
`X-Cxtest-Delivery` header when the notifier sends one, otherwise by
(change, incident key): no scenario here has reminders, so each pair is one
transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from alerts.incidents import Incidents
from alerts.outbox import attempts_table, deliveries_table, ensure_tables
from cxtest.monitor import Monitor
from cxtest.sandbox.server import Sandbox, ThreadedServer
from cxtest.store import Store

CXTEST = Path(sys.executable).with_name("cxtest")
SCENARIO = "status"
KEY = f"{SCENARIO}:failures@local"
OPENED_RESOLVED = [("opened", KEY), ("resolved", KEY)]
SETTLE_S = 1.5  # a duplicate would arrive within a few more runs and outbox rounds


# =========================================================================== helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sink:
    """A webhook receiver on a fixed loopback port that can go away and come back on the same port.

    `stop()` closes the port (connection refused), `start()` listens again; `delay` makes every
    answer late. `arrived` counts requests as they come in, `received` holds the finished ones.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.arrived = 0
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.server = ThreadedServer(Starlette(routes=[Route("/hook", self._hook, methods=["POST"])]))

    async def _hook(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.arrived += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            self.received.append({"body": body, "delivery": request.headers.get("x-cxtest-delivery")})
        return JSONResponse({"ok": True})

    def start(self) -> "Sink":
        self.server.start()
        self.server.requested_port = self.server.port  # a restart listens on the same port
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/hook"

    def pairs(self, key: str | None = None) -> list[tuple[str, str]]:
        with self._lock:
            items = list(self.received)
        found = [(i["body"]["change"], i["body"]["incident"]["key"]) for i in items]
        return [p for p in found if key is None or p[1] == key]

    def assert_once(self, expected: list[tuple[str, str]]) -> None:
        """Exactly `expected`, in order; and no delivery id twice when the notifier sends one."""
        assert self.pairs() == expected
        ids = [i["delivery"] for i in self.received if i["delivery"] is not None]
        assert not [d for d, n in Counter(ids).items() if n > 1], f"a delivery arrived twice: {ids}"


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


def write_project(
    folder: Path, hook_url: str, *, store: str = "sqlite:///../results.db", every: str = "0.5s", slow_ms: int = 0
) -> Path:
    """A project folder: cxtest.yaml (one webhook notifier) and status.yaml (GET /api/status every `every`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cxtest.yaml").write_text(
        textwrap.dedent(
            f"""\
            store: {store}
            artifacts: ../artifacts
            notifiers:
              oncall: {{ type: webhook, url: "{hook_url}" }}
            monitor: {{ listen: "" }}
            """
        )
    )
    write_scenario(folder / f"{SCENARIO}.yaml", every=every, slow_ms=slow_ms)
    return folder


def write_scenario(
    path: Path, *, name: str = "Status", every: str = "0.5s", expect: str = "{ status: 200 }", slow_ms: int = 0
) -> None:
    # A slow first step keeps a run in flight most of the time, so a kill lands mid-run.
    slow = f"  - request: GET /api/slow?ms={slow_ms}\n    expect: {{ status: 200 }}\n" if slow_ms else ""
    path.write_text(
        f"name: {name}\n"
        "channel: http\n"
        'target: { url: "${env:CXTEST_SANDBOX_URL}" }\n'
        "steps:\n"
        f"{slow}"
        "  - request: GET /api/status\n"
        f"    expect: {expect}\n"
        f"schedule: {{ every: {every} }}\n"
        "alert: { open_after: 2, resolve_after: 2, notify: [oncall] }\n"
    )


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


async def async_wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def monitoring(folder: Path, **options: Any) -> AsyncIterator[Monitor]:
    """An in-process monitor, started, and stopped (bounded) when the block ends."""
    monitor = Monitor([folder], listen="", **options)
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
    try:
        await async_wait_until(
            lambda: task.done() or monitor.started.is_set(),
            10,
            "the monitor to start",
        )
        if task.done():
            task.result()
        yield monitor
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def incidents_in(store: Store) -> list[Any]:
    return Incidents(store).history(scenario_id=SCENARIO)


def open_incident(store: Store) -> Any:
    return next((i for i in incidents_in(store) if i.state.value == "open"), None)


def delivery_rows(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(deliveries_table).order_by(deliveries_table.c.id)).mappings()]


def attempt_agents(store: Store, delivery_id: int) -> list[str]:
    a = attempts_table
    with store.engine.connect() as conn:
        return list(conn.execute(select(a.c.agent).where(a.c.delivery_id == delivery_id, a.c.outcome == "accepted")).scalars())


def assert_results_unique(store: Store) -> list[Any]:
    results = store.results(scenario_id=SCENARIO, limit=100_000)
    # run_id names the monitor process's run, shared by its results; a result is (run_id, started_at).
    twice = [run for run, n in Counter((r.run_id, r.started_at) for r in results).items() if n > 1]
    assert not twice, f"results stored twice: {twice}"
    return results


def runs_counted(monitor: Monitor) -> int:
    """Runs the monitor finished, from its own cxtest_runs counter."""
    total = 0.0
    for metric in monitor.metrics.registry.collect():
        if metric.name == "cxtest_runs":
            total += sum(s.value for s in metric.samples if s.name == "cxtest_runs_total")
    return int(total)


class Agent:
    """`cxtest monitor` in a subprocess; stopped by its own pid only."""

    def __init__(self, folder: Path, log: Path, env: dict[str, str], *, store: str | None = None, location: str | None = None):
        self.port = free_port()
        self.log = log
        self.args = [str(CXTEST), "monitor", str(folder), "--listen", f"127.0.0.1:{self.port}"]
        if store:
            self.args += ["--store", store]
        if location:
            self.args += ["--location", location]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Agent":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"cxtest monitor exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 20) -> "Agent":
        wait_until(self.healthy, timeout, "cxtest monitor to answer /healthz", every=0.1)
        return self

    def status(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/status.json", timeout=5).json()

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float) -> int:
        """SIGTERM; the exit code, which must come within `timeout` seconds."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"cxtest monitor still running {timeout:g}s after SIGTERM:\n{self.log_tail()}") from None

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def agents(tmp_path: Path, sandbox: Sandbox) -> Iterator[Callable[..., Agent]]:
    """Start `cxtest monitor` subprocesses; any still running at the end is killed (by its pid)."""
    started: list[Agent] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXTEST_")}
    env["CXTEST_SANDBOX_URL"] = sandbox.url

    def start(folder: Path, **options: Any) -> Agent:
        agent = Agent(folder, tmp_path / f"agent-{len(started)}.log", env, **options)
        started.append(agent)
        return agent.start()

    try:
        yield start
    finally:
        for agent in started:
            agent.cleanup()


# =========================================================================== 1. receiver down


async def _receiver_down(tmp_path: Path, sandbox: Sandbox, sink: Sink, monkeypatch: pytest.MonkeyPatch, down_for: float, cycles: int) -> None:
    monkeypatch.setenv("CXTEST_SANDBOX_URL", sandbox.url)
    folder = write_project(tmp_path / "scenarios", sink.url)
    async with monitoring(folder, watch_interval=0.2) as monitor:
        await async_wait_until(lambda: monitor.last_result.get(SCENARIO), 10, "a first run")
        sink.stop()
        down_at = time.monotonic()
        for cycle in range(cycles):
            sandbox.set_broken(True)
            await async_wait_until(lambda: open_incident(monitor.store), 10, f"incident {cycle + 1} to open")
            sandbox.set_broken(False)
            await async_wait_until(lambda: open_incident(monitor.store) is None, 10, f"incident {cycle + 1} to resolve")
            # Spread the cycles over the outage.
            await asyncio.sleep(max(0.0, down_at + down_for * (cycle + 1) / cycles - time.monotonic()))
        assert sink.pairs() == [] and time.monotonic() - down_at >= down_for
        sink.start()
        expected = OPENED_RESOLVED * cycles
        # The first delivery waits out its backoff (1 s doubling, jitter up to 1.5x).
        await async_wait_until(lambda: len(sink.pairs()) >= len(expected), 3 * down_for + 15, "the deliveries after the outage")
        await asyncio.sleep(SETTLE_S)
        sink.assert_once(expected)
        rows = delivery_rows(monitor.store)
        assert [(r["change"], r["state"]) for r in rows] == [(c, "sent") for c, _ in expected]
        assert rows[0]["attempts"] >= 2  # it was refused and retried, not sent late once
        assert len(incidents_in(monitor.store)) == cycles


async def test_receiver_down_for_a_while_gets_every_transition_once(
    tmp_path: Path, sandbox: Sandbox, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook receiver that is down for 5 s, then back, gets the opened and resolved it missed, once each, in order."""
    await _receiver_down(tmp_path, sandbox, sink, monkeypatch, down_for=5.0, cycles=1)


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_receiver_down_for_a_minute_gets_every_transition_once(
    tmp_path: Path, sandbox: Sandbox, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver down for 60 s while three incidents open and resolve gets all six changes afterwards, once each, in order."""
    await _receiver_down(tmp_path, sandbox, sink, monkeypatch, down_for=60.0, cycles=3)


# =========================================================================== 2. SIGKILL and restart


@pytest.mark.timeout(90)
def all_sent(store: Store) -> bool:
    from alerts.outbox import Outbox

    found = Outbox(store, {}).deliveries()
    return bool(found) and all(d.state.value == "sent" for d in found)


def test_sigkill_mid_run_and_restart_keeps_the_incident_and_the_schedule(
    tmp_path: Path, sandbox: Sandbox, sink: Sink, agents: Callable[..., Agent]
) -> None:
    """A monitor killed with SIGKILL and restarted finds its open incident, runs on, and announces open and resolve once each."""
    folder = write_project(tmp_path / "scenarios", sink.url, slow_ms=250)
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    try:
        first = agents(folder).wait_healthy()
        wait_until(lambda: store.results(scenario_id=SCENARIO, limit=1), 10, "a first stored result")
        sandbox.set_broken(True)
        opened = wait_until(lambda: open_incident(store), 15, "the incident to open")
        # Killed once the opened notification was sent (between send and record it would come again: at-least-once).
        wait_until(lambda: sink.pairs() == [("opened", KEY)], 10, "the opened delivery")
        # ...and recorded as sent: a delivery still claimed by the killed agent waits out its lease (60 s).
        wait_until(lambda: all_sent(store), 10, "the opened delivery to be recorded")
        first.kill()
        killed_at = datetime.now(timezone.utc)

        second = agents(folder).wait_healthy()
        assert [(i["id"], i["key"]) for i in second.status()["open_incidents"]] == [(opened.id, KEY)]
        wait_until(lambda: len(store.results(scenario_id=SCENARIO, since=killed_at)) >= 3, 10, "runs after the restart")
        time.sleep(SETTLE_S)
        [still] = incidents_in(store)
        assert (still.id, still.key, still.state.value) == (opened.id, KEY, "open")
        sink.assert_once([("opened", KEY)])

        sandbox.set_broken(False)
        wait_until(lambda: ("resolved", KEY) in sink.pairs(), 15, "the resolved delivery")
        time.sleep(SETTLE_S)
        sink.assert_once(OPENED_RESOLVED)
        [resolved] = incidents_in(store)
        assert (resolved.id, resolved.state.value) == (opened.id, "resolved")
        assert second.terminate(timeout=10) == 0
        assert_results_unique(store)
    finally:
        store.close()


# =========================================================================== 3. store unavailable


async def test_store_outage_loses_no_result_and_incidents_still_open(
    tmp_path: Path, sandbox: Sandbox, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every store statement failing for 2 s (results, incidents, outbox), every run is saved afterwards and the incident opens and resolves once."""
    import sqlite3

    monkeypatch.setenv("CXTEST_SANDBOX_URL", sandbox.url)
    folder = write_project(tmp_path / "scenarios", sink.url)
    outage = threading.Event()

    def refuse(*_args: Any) -> None:
        if outage.is_set():
            raise sqlite3.OperationalError("disk I/O error")

    async with monitoring(folder, watch_interval=0.2) as monitor:
        event.listen(monitor.store.engine, "before_cursor_execute", refuse)
        try:
            await async_wait_until(lambda: monitor.last_result.get(SCENARIO), 10, "a first run")
            sandbox.set_broken(True)
            outage.set()
            began = datetime.now(timezone.utc)
            await asyncio.sleep(2.0)
            ran_meanwhile = runs_counted(monitor)
            outage.clear()
            ended = datetime.now(timezone.utc)
            await async_wait_until(lambda: sink.pairs() == [("opened", KEY)], 10, "the opened delivery")
            during = monitor.store.results(scenario_id=SCENARIO, since=began, until=ended)
            assert len(during) >= 3 and all(r.outcome.value == "failed" for r in during)
            sandbox.set_broken(False)
            await async_wait_until(lambda: ("resolved", KEY) in sink.pairs(), 10, "the resolved delivery")
            await asyncio.sleep(SETTLE_S)
        finally:
            outage.clear()
    # Stopped: every run it counted is in the store, once.
    stored = assert_results_unique(Store(f"sqlite:///{tmp_path / 'results.db'}"))
    assert runs_counted(monitor) > ran_meanwhile
    assert len(stored) == runs_counted(monitor)
    sink.assert_once(OPENED_RESOLVED)


# =========================================================================== 4. file edited while open


async def test_scenario_edited_while_its_incident_is_open_keeps_the_incident(
    tmp_path: Path, sandbox: Sandbox, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renaming the scenario, changing its expectation and its schedule while its incident is open keeps that incident, which then resolves once."""
    monkeypatch.setenv("CXTEST_SANDBOX_URL", sandbox.url)
    folder = write_project(tmp_path / "scenarios", sink.url)
    async with monitoring(folder, watch_interval=0.2) as monitor:
        sandbox.set_broken(True)
        opened = await async_wait_until(lambda: open_incident(monitor.store), 10, "the incident to open")
        write_scenario(folder / f"{SCENARIO}.yaml", name="Status renamed", every="0.3s", expect="{ status: 2xx, latency: 5s }")
        await async_wait_until(lambda: monitor.scenarios[SCENARIO].name == "Status renamed", 5, "the reload")
        edited_at = datetime.now(timezone.utc)
        assert monitor.scheduler.get_job(SCENARIO).trigger.interval.total_seconds() == pytest.approx(0.3)
        await async_wait_until(
            lambda: len(monitor.store.results(scenario_id=SCENARIO, since=edited_at)) >= 3, 10, "runs of the edited file"
        )
        after = monitor.store.results(scenario_id=SCENARIO, since=edited_at)
        assert {r.scenario_name for r in after} == {"Status renamed"}
        assert all(r.outcome.value == "failed" and "status (503) is 2xx" in r.message for r in after)  # the edited expectation
        [still] = incidents_in(monitor.store)
        assert (still.id, still.key, still.state.value) == (opened.id, opened.key, "open")

        sandbox.set_broken(False)
        await async_wait_until(lambda: ("resolved", KEY) in sink.pairs(), 10, "the resolved delivery")
        await asyncio.sleep(SETTLE_S)
    sink.assert_once(OPENED_RESOLVED)
    assert sink.received[-1]["body"]["incident"]["scenario_name"] == "Status renamed"
    assert [(i.id, i.state.value) for i in incidents_in(monitor.store)] == [(opened.id, "resolved")]


# =========================================================================== 5. several agents, one store


@pytest.fixture
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    """An empty database of its own on the session's PostgreSQL server."""
    import psycopg

    name = "faults_" + secrets.token_hex(4)
    admin = postgres_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_two_agents_one_store_open_and_resolve_once_when_one_dies(
    tmp_path: Path, sandbox: Sandbox, sink: Sink, agents: Callable[..., Agent], fresh_postgres: str
) -> None:
    """Two agents at one location on one PostgreSQL store open one incident, and the survivor of a SIGKILL resolves it, each announced once."""
    key = f"{SCENARIO}:failures@eu-1"
    folder = write_project(tmp_path / "scenarios", sink.url)
    # One after the other: two agents creating the tables of an empty PostgreSQL store at the same
    # moment race in CREATE TABLE (pg_type unique violation) and one exits 3 -- a Store start-up bug.
    pair = [agents(folder, store=fresh_postgres, location="eu-1").wait_healthy() for _ in range(2)]
    store = Store(fresh_postgres)
    try:
        wait_until(lambda: len(store.results(scenario_id=SCENARIO, limit=10)) >= 4, 10, "runs of both agents")
        sandbox.set_broken(True)
        wait_until(lambda: sink.pairs() == [("opened", key)], 15, "the opened delivery")
        time.sleep(SETTLE_S)
        sink.assert_once([("opened", key)])
        [opened] = incidents_in(store)
        assert opened.state.value == "open" and opened.key == key

        # Kill the agent that sent the opened notification; the other must finish the story.
        [row] = delivery_rows(store)
        [sender] = attempt_agents(store, row["id"])
        victim = next(a for a in pair if sender.endswith(f"/{a.pid}"))
        survivor = next(a for a in pair if a is not victim)
        victim.kill()
        time.sleep(1.0)
        sandbox.set_broken(False)
        wait_until(lambda: ("resolved", key) in sink.pairs(), 15, "the resolved delivery")
        time.sleep(SETTLE_S)
        sink.assert_once([("opened", key), ("resolved", key)])
        assert [(i.id, i.state.value) for i in incidents_in(store)] == [(opened.id, "resolved")]
        resolved_row = delivery_rows(store)[-1]
        assert resolved_row["change"] == "resolved"
        assert [a.rsplit("/", 1)[1] for a in attempt_agents(store, resolved_row["id"])] == [str(survivor.pid)]
        assert survivor.terminate(timeout=10) == 0
        assert_results_unique(store)
    finally:
        store.close()


# =========================================================================== 6. graceful stop


@pytest.mark.timeout(60)
def test_sigterm_exits_cleanly_and_flushes_a_just_enqueued_delivery(
    tmp_path: Path, sandbox: Sandbox, sink: Sink, agents: Callable[..., Agent]
) -> None:
    """SIGTERM right after an opened notification is queued: the monitor sends it, then exits 0 within a few seconds."""
    folder = write_project(tmp_path / "scenarios", sink.url)
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    try:
        agent = agents(folder).wait_healthy()
        ensure_tables(store.engine)
        sandbox.set_broken(True)
        wait_until(lambda: delivery_rows(store), 15, "the opened delivery to be queued", every=0.005)
        began = time.monotonic()
        assert agent.terminate(timeout=8) == 0
        assert time.monotonic() - began < 5
        [row] = delivery_rows(store)
        assert (row["change"], row["state"]) == ("opened", "sent")
        sink.assert_once([("opened", KEY)])
        assert_results_unique(store)
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_sigterm_while_a_slow_receiver_answers_sends_once(
    tmp_path: Path, sandbox: Sandbox, agents: Callable[..., Agent]
) -> None:
    """SIGTERM while a delivery is in flight to a slow receiver: the send completes once, is recorded as sent, and the monitor exits 0."""
    slow = Sink(delay=1.5).start()
    folder = write_project(tmp_path / "scenarios", slow.url)
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    try:
        agent = agents(folder).wait_healthy()
        sandbox.set_broken(True)
        wait_until(lambda: slow.arrived >= 1, 15, "the opened delivery to reach the receiver", every=0.01)
        began = time.monotonic()
        assert agent.terminate(timeout=10) == 0
        assert time.monotonic() - began < 6
        time.sleep(2.0)  # anything the receiver still holds finishes
        slow.assert_once([("opened", KEY)])
        assert slow.arrived == 1
        [row] = delivery_rows(store)
        assert (row["change"], row["state"]) == ("opened", "sent")
        assert_results_unique(store)
    finally:
        store.close()
        slow.stop()
