"""Stress past one machine: each worker runs as a Ray async actor on a Ray cluster.

    hosts = RayWorkers("10.0.0.5:6379", configs)     # what run_stress does for --ray ADDRESS
    while not hosts.finished: deltas = hosts.collect()

Ray's actors can be asyncio-native, so the actor is a thin shell around the same
`StressWorker` that local processes run: start() launches worker.run() on the actor's
event loop, take() hands out the last interval, stop() asks for a graceful end.
`RayWorkers` has LocalWorkers' interface (collect, finished, stop, close, errors), so
the coordinator cannot tell the two apart.

Each node needs cxtest installed (the same version) and the scenario file at the same
path, or the project shipped with Ray's runtime_env working_dir (CXTEST_RAY_WORKING_DIR).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cxtest import logs
from cxtest.errors import CxtestError
from cxtest.stress.stats import Metrics
from cxtest.stress.worker import Delta, StressWorker, WorkerConfig, settle_garbage_collector

WAIT_S = 0.5  # collect() waits at most this long for the actors' answers: the coordinator ticks every second
START_LIMIT_S = 120.0  # an actor not running by then was not placed (the cluster is short of CPUs) or failed to start
CLOSE_S = 10.0
CONNECT_S = 5.0  # Ray itself retries an address where nothing answers for minutes
WORKING_DIR_ENV = "CXTEST_RAY_WORKING_DIR"  # a folder shipped to every node as the actors' working directory

_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


class ClusterUnreachable(CxtestError):
    """No Ray cluster answers at the address given with --ray."""


class StressActor:
    """One worker on a Ray node (made a Ray actor by RayWorkers): its methods run on the actor's event loop."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.worker: StressWorker | None = None
        self.running: asyncio.Future | None = None

    async def start(self) -> tuple[Delta, str | None]:
        """Load the scenario here (on this node) and start the worker's share of the plan."""
        logs.configure("warning")
        try:
            self.worker = StressWorker(self.config)
        except Exception as exc:  # noqa: BLE001 - told as text: not every exception survives pickling (ScenarioError)
            nothing = Delta(self.config.index, 0.0, 0, 0, Metrics().encode(), done=True)
            return nothing, f"{type(exc).__name__}: {exc}"
        settle_garbage_collector()  # an actor is a process of its own, as a local worker is
        self.running = asyncio.ensure_future(self.worker.run())
        return await self.take()

    async def take(self) -> tuple[Delta, str | None]:
        """The last interval, and why the worker ended if it ended by an exception."""
        assert self.worker is not None and self.running is not None, "take() before start()"
        delta = self.worker.take()
        if self.running.done() and not self.running.cancelled() and self.running.exception() is not None:
            exc = self.running.exception()
            return replace(delta, done=True), f"{type(exc).__name__}: {exc}"
        return delta, None

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    async def activate(self, active: int, from_iteration: int, from_t: float) -> None:
        if self.worker is not None:
            self.worker.activate(active, from_iteration, from_t)

    async def finish(self, timeout: float) -> bool:
        """Stop and wait (bounded) until the worker has drained and saved its results; True if it did."""
        if self.worker is None or self.running is None:
            return True
        self.worker.stop()
        done, _ = await asyncio.wait({self.running}, timeout=timeout)
        return bool(done)


def is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1]
    return host.startswith(_LOOPBACK)


def check_reachable(address: str, timeout: float = CONNECT_S) -> None:
    """Fail at once, with the address, when nothing listens there (host:port addresses; "auto" is Ray's to find)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ClusterUnreachable(f"no Ray cluster answers at {address} ({why}): start one with `ray start --head`, or check --ray") from None


def connect(address: str) -> Any:
    """This process as a Ray driver on the cluster at address (once); Ray itself, imported."""
    # Before Ray is imported: its constants are read at import time.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if is_loopback(address):
        # A loopback address means a one-machine cluster on loopback. Without this Ray swaps
        # 127.0.0.1 for the "remotely reachable" address it guesses from a route to a public IP.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import logging

    import ray

    if not ray.is_initialized():
        check_reachable(address)
        working_dir = os.environ.get(WORKING_DIR_ENV)
        ray.init(
            address=address,
            namespace="cxtest",
            runtime_env={"working_dir": working_dir} if working_dir else None,
            log_to_driver=False,  # the actors' output would break the live table and the JSON lines
            logging_level=logging.WARNING,
        )
    return ray


def cluster_cpus(address: str) -> int:
    """CPUs the cluster reports: the default worker count with --ray (one actor per core)."""
    ray = connect(address)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def portable(config: WorkerConfig, working_dir: str | None) -> WorkerConfig:
    """With a shipped working_dir the actors run inside its copy: paths under it become relative to it."""
    if not working_dir:
        return config
    root = Path(working_dir).resolve()

    def inside(path: str | None) -> str | None:
        if path is None:
            return None
        resolved = Path(path).resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else path

    return replace(
        config,
        scenario_file=inside(config.scenario_file) or config.scenario_file,
        project_file=inside(config.project_file),
        artifacts_root=inside(config.artifacts_root) or config.artifacts_root,
    )


def _reason(exc: BaseException) -> str:
    """A Ray error as one line: the worker's own exception when there is one, not Ray's traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": ")


class RayWorkers:
    """One Ray async actor per WorkerConfig, spread over the cluster's nodes; polled, never waited on for long."""

    def __init__(self, address: str, configs: list[WorkerConfig]):
        self.ray = connect(address)
        working_dir = os.environ.get(WORKING_DIR_ENV)
        cpus = self.ray.cluster_resources().get("CPU", 0)
        # One core each while they fit, so SPREAD puts one actor per core across the nodes;
        # more workers than cores share them rather than wait forever to be placed.
        num_cpus = 1 if len(configs) <= cpus else 0
        actor_class = self.ray.remote(StressActor)
        self.actors = [
            actor_class.options(
                name=f"{config.stress_id}-w{config.index}", num_cpus=num_cpus, scheduling_strategy="SPREAD",
                max_restarts=0, max_task_retries=0,
            ).remote(portable(config, working_dir))
            for config in configs
        ]
        self.done = [False] * len(configs)
        self.errors: list[str] = []
        self.cpus = cpus
        self.asked_at = time.monotonic()
        self.running = [False] * len(configs)
        self.pending: dict[int, Any] = {index: actor.start.remote() for index, actor in enumerate(self.actors)}

    def collect(self) -> list[Delta]:
        """Every actor's last interval that arrives within WAIT_S; slower answers come in a later call."""
        for index, actor in enumerate(self.actors):
            if not self.done[index] and index not in self.pending:
                self.pending[index] = actor.take.remote()
        if not self.pending:
            return []
        ready, _ = self.ray.wait(list(self.pending.values()), num_returns=len(self.pending), timeout=WAIT_S)
        ready_ids = set(ready)
        deltas = []
        for index in [i for i, ref in self.pending.items() if ref in ready_ids]:
            ref = self.pending.pop(index)
            try:
                delta, failure = self.ray.get(ref, timeout=WAIT_S)
            except Exception as exc:  # noqa: BLE001 - the boundary: an actor died or could not start
                self._fail(index, _reason(exc))
                continue
            self.running[index] = True
            deltas.append(delta)
            if failure is not None:
                self._fail(index, failure)
            elif delta.done:
                self.done[index] = True
        self._give_up_on_unstarted()
        return deltas

    def _fail(self, index: int, reason: str) -> None:
        self.errors.append(f"worker {index}: {reason}")
        self.done[index] = True

    def _give_up_on_unstarted(self) -> None:
        if time.monotonic() - self.asked_at < START_LIMIT_S:
            return
        for index in range(len(self.actors)):
            if not self.running[index] and not self.done[index]:
                self.pending.pop(index, None)
                self._fail(index, f"not started after {START_LIMIT_S:g}s (the cluster reports {self.cpus:g} CPUs)")

    @property
    def finished(self) -> bool:
        return all(self.done)

    def stop(self) -> None:
        """Ask every running actor to start no more iterations (fire and forget: collect() sees them end)."""
        for index, actor in enumerate(self.actors):
            if not self.done[index]:
                actor.stop.remote()

    def activate(self, active: int, from_iteration: int, from_t: float) -> None:
        """Tell every running actor how many take part from then on (fire and forget, like stop)."""
        for index, actor in enumerate(self.actors):
            if not self.done[index]:
                actor.activate.remote(active, from_iteration, from_t)

    def close(self, timeout: float = CLOSE_S) -> None:
        """Let unfinished actors drain (bounded), end every actor, and leave the cluster running."""
        waiting = [actor.finish.remote(timeout) for index, actor in enumerate(self.actors) if not self.done[index] and self.running[index]]
        if waiting:
            self.ray.wait(waiting, num_returns=len(waiting), timeout=timeout + 2)
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - an actor already gone needs no ending
                pass
        self.ray.shutdown()
