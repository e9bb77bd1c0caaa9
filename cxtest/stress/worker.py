"""The stress worker: one event loop running its share of the virtual users, and how it is hosted.

`StressWorker` is the async core. It loads the scenario itself (from the file, so a
process or a Ray actor on another machine needs only the path), runs iterations
through a `Runner` (the same probes, checks and evidence as `cxtest run`), records
each finished iteration into `Metrics`, saves results in batches, and hands out what
happened since the last call to `take()`. Two hosts wrap it: `LocalWorkers` (one
child process per core, talking over pipes) and `RayWorker` (a Ray async actor).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cxtest import logs
from cxtest.model import Scenario, Step
from cxtest.stress.plan import Share, StressPlan
from cxtest.stress.stats import Metrics

log = logs.get_logger("cxtest.stress")

TICK_S = 0.05  # how often a worker adjusts its users or starts due iterations
WAITING_TICK_S = 0.25  # the same for a worker not taking part yet
GC_YOUNG_THRESHOLD = 50_000  # allocations between two young-generation collections in a worker (Python's default: 700)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, as plain picklable data: it loads the rest itself."""

    scenario_file: str
    scenario_id: str
    project_file: str | None
    plan: dict[str, Any]  # StressPlan.model_dump()
    index: int
    workers: int
    stress_id: str
    store_url: str | None
    artifacts_root: str
    started_at: float = 0.0  # time.time() the shape starts at, shared by every worker
    active: int = 0  # workers taking part from the start (the first ones); 0: all of them
    environment: dict[str, str] = field(default_factory=dict)  # ${env:...} values the scenario needs


@dataclass(frozen=True)
class Delta:
    """One worker's last interval: when (seconds into the shape), users running, iterations started, what finished, CPU used."""

    worker: int
    t: float
    users: int
    started: int
    metrics: bytes
    done: bool = False
    cpu: float = 0.0  # CPU seconds the worker's process used in the interval


def step_kinds(scenario: Scenario) -> list[str]:
    """The YAML key of each step (expect_prompt, user, request...): its model's first field of its own."""
    return [next((name for name in type(step).model_fields if name not in Step.model_fields), type(step).__name__) for step in scenario.steps]


def load_one(config: WorkerConfig) -> tuple[Any, Scenario]:
    """The project and the one scenario the exercise runs, loaded the way `cxtest run` loads it."""
    from cxtest.loader import load_project, load_scenarios

    os.environ.update(config.environment)
    project = load_project(Path(config.project_file) if config.project_file else None)
    _, scenarios = load_scenarios([Path(config.scenario_file)], project)
    [scenario] = [s for s in scenarios if s.id == config.scenario_id]
    return project, scenario


class StressWorker:
    """Runs one share of the plan until the shape ends or stop() is called; take() hands out progress."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.plan = StressPlan.model_validate(config.plan)
        self.share = Share(self.plan, config.index, config.workers, config.active or None)
        project, scenario = load_one(config)
        self.project = project
        self.scenario = scenario.model_copy(update={"tags": (*scenario.tags, f"stress:{config.stress_id}")})
        self.metrics = Metrics(step_kinds=step_kinds(self.scenario))
        self.users: set[asyncio.Task] = set()
        self.started = 0
        self.started_since = 0
        self.stopping = False  # stop() was called: start no more iterations
        self.finished = asyncio.Event()
        self._count = 0
        self._cpu = time.process_time()

    async def run(self) -> None:
        from cxtest.runner import BatchWriter, EvidenceSampler, Runner
        from cxtest.store import Store

        store = Store(self.config.store_url) if self.config.store_url else None
        writer = BatchWriter(store) if store is not None else None
        runner = Runner(
            self.project,
            run_id=self.config.stress_id,
            artifacts_root=Path(self.config.artifacts_root),
            think=self.plan.think,
            evidence=EvidenceSampler(),
        )
        try:
            await self._drive(runner, writer)
        finally:
            await self._drain()
            await runner.aclose()
            if writer is not None:
                await writer.close()
            if store is not None:
                store.close()
            self.finished.set()

    def stop(self) -> None:
        """Start no more iterations; those running finish (bounded by the plan's graceful stop)."""
        self.stopping = True

    def activate(self, active: int, from_iteration: int, from_t: float) -> None:
        """From that iteration of the plan (arrival rate) or that moment (users) on, `active` workers share it."""
        self.share.activate(active, from_iteration, from_t)

    def take(self) -> Delta:
        """What happened since the last take."""
        metrics, self.metrics = self.metrics, Metrics(step_kinds=self.metrics.step_kinds)
        started, self.started_since = self.started_since, 0
        cpu, self._cpu = time.process_time() - self._cpu, time.process_time()
        return Delta(self.config.index, self.elapsed(), len(self.users), started, metrics.encode(), self.finished.is_set(), cpu)

    def elapsed(self) -> float:
        return time.time() - self.config.started_at

    # -- the shape

    async def _drive(self, runner: Any, writer: Any) -> None:
        wait = self.config.started_at - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        length = self.plan.length
        while not self.stopping:
            t = self.elapsed()
            if t >= length:
                break
            if self.plan.arrival:
                self._arrive(runner, writer, t)
            else:
                self._keep_users(runner, writer, t)
            # A plain sleep, not wait_for(stopping): that made a task and a timer 20 times a second,
            # a third of an idle worker's CPU. A stop waits for the tick at most. A worker not taking
            # part yet looks less often: it is told it joins 1.5 s ahead.
            await asyncio.sleep(TICK_S if self.config.index < self.share.active else WAITING_TICK_S)

    def _keep_users(self, runner: Any, writer: Any, t: float) -> None:
        """Closed model: each user loops iterations; a ramp down lets a user finish its iteration first."""
        wanted = self.share.users_at(t)
        while len(self.users) < wanted:
            self._spawn(self._user(runner, writer, len(self.users)))

    def _arrive(self, runner: Any, writer: Any, t: float) -> None:
        """Open model: start what is due by now on the plan's grid; past max_users an iteration is dropped."""
        due = self.share.started_by(t) - self._count
        for _ in range(max(0, due)):
            self._count += 1
            if len(self.users) >= self.share.max_users:
                self.metrics.dropped += 1
                continue
            self._spawn(self._iteration(runner, writer))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self.users.add(task)
        task.add_done_callback(self.users.discard)

    async def _user(self, runner: Any, writer: Any, number: int) -> None:
        while not self.stopping:
            t = self.elapsed()
            if t >= self.plan.length or number >= self.share.users_at(t):
                return
            await self._iteration(runner, writer)

    async def _iteration(self, runner: Any, writer: Any) -> None:
        self.started += 1
        self.started_since += 1
        label = f"w{self.config.index}-{self.started}"
        result = await runner.run_scenario(self.scenario, iteration=label)
        self.metrics.record(result)
        if writer is not None:
            writer.add(result)

    async def _drain(self) -> None:
        """The shape is over or we were stopped: running iterations get the graceful stop, then are cancelled."""
        if not self.users:
            return
        _, pending = await asyncio.wait(set(self.users), timeout=self.plan.graceful_stop)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)


# --------------------------------------------------------------------------- one process per core


def _child(config: WorkerConfig, conn: Any) -> None:
    """A worker process: run the worker, send a Delta a second, stop when the parent says so."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's: it tells us to stop
    logs.configure("warning")

    async def main() -> None:
        worker = StressWorker(config)
        settle_garbage_collector()
        running = asyncio.ensure_future(worker.run())
        while not running.done():
            await asyncio.sleep(1.0)
            while conn.poll(0):  # poll(0) returns at once
                message = conn.recv()
                if message == "stop":
                    worker.stop()
                elif message[0] == "active":
                    worker.activate(*message[1:])
            conn.send(worker.take())
        running.result()
        conn.send(worker.take())

    try:
        _event_loop_runner()(main())
    except Exception as exc:  # noqa: BLE001 - the boundary: the parent reports it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def settle_garbage_collector() -> None:
    """Freeze what loading made, and collect the young generation far less often.

    A worker saving results keeps a batch of them (tens of thousands of objects) alive
    between saves, and with the default thresholds (700) the collector walked them again
    and again: a sixth of a worker's CPU at 300 chat iterations a second. Iterations free
    almost everything by reference counting; the rare cycles (an exception's traceback)
    are still collected.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def _event_loop_runner() -> Any:
    """uvloop.run when uvloop is installed (a dependency; a Ray worker's image may lack it), else asyncio.run.

    A worker spends most of its CPU in the event loop and its sockets: uvloop halves the loop's
    share of every HTTP exchange (bench/stress_chat.py).
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


class LocalWorkers:
    """`count` worker processes on this machine (spawned, so nothing of the parent's event loop leaks in)."""

    def __init__(self, configs: list[WorkerConfig]):
        context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.pipes: list[Any] = []
        for config in configs:
            parent, child = context.Pipe()
            process = context.Process(target=_child, args=(config, child), name=f"cxtest-stress-{config.index}", daemon=True)
            process.start()
            child.close()
            self.processes.append(process)
            self.pipes.append(parent)
        self.done = [False] * len(configs)
        self.errors: list[str] = []

    def collect(self) -> list[Delta]:
        """Every Delta the workers sent since the last call."""
        deltas = []
        for index, pipe in enumerate(self.pipes):
            if self.done[index]:
                continue
            try:
                while pipe.poll():
                    message = pipe.recv()
                    if isinstance(message, tuple) and message and message[0] == "error":
                        self.errors.append(f"worker {index}: {message[1]}")
                        self.done[index] = True
                        break
                    deltas.append(message)
                    if message.done:
                        self.done[index] = True
            except (EOFError, OSError):
                if not self.processes[index].is_alive():
                    self.done[index] = True
                    if self.processes[index].exitcode not in (0, None):
                        self.errors.append(f"worker {index} exited with code {self.processes[index].exitcode}")
        return deltas

    @property
    def finished(self) -> bool:
        return all(self.done)

    def stop(self) -> None:
        self._tell("stop")

    def activate(self, active: int, from_iteration: int, from_t: float) -> None:
        self._tell(("active", active, from_iteration, from_t))

    def _tell(self, message: Any) -> None:
        for index, pipe in enumerate(self.pipes):
            if not self.done[index]:
                try:
                    pipe.send(message)
                except (BrokenPipeError, OSError):
                    self.done[index] = True

    def close(self, timeout: float = 10.0) -> None:
        """Wait for the processes; end the ones that do not finish, by their pid."""
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(2)
        for pipe in self.pipes:
            pipe.close()


def with_index(config: WorkerConfig, index: int, workers: int) -> WorkerConfig:
    return replace(config, index=index, workers=workers)
