"""Stress exercises: one scenario run by many virtual users at once, with a verdict from thresholds.

    outcome = run_stress(StressJob(scenario_file=..., scenario_id=..., plan=plan), on_tick=show)
    outcome.verdicts, outcome.exit_code

The coordinator starts the workers (one process per core here, or Ray actors on a
cluster), merges what each sends every second into one Metrics (histograms add up
exactly: no averages of percentiles), keeps a per-second snapshot for the plots,
judges the thresholds as it goes (to abort a clearly lost run) and at the end.
Ctrl-C stops the workers cleanly; what finished is still reported.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cxtest.stress.plan import StressPlan
from cxtest.stress.stats import Metrics
from cxtest.stress.thresholds import Verdict, clearly_lost, judge, parse_threshold
from cxtest.stress.worker import Delta, LocalWorkers, WorkerConfig, step_kinds

__all__ = ["Snapshot", "StressJob", "StressOutcome", "StressPlan", "new_stress_id", "run_stress", "step_kinds"]

START_SPARE_S = 3.0  # workers load the scenario and its probes before the shared start time
COLLECT_S = 1.0
SWITCH_AHEAD_S = 1.5  # a new worker takes its share from this far ahead: the workers read their pipe once a second
ABORT_AFTER_RUNS = 100  # a threshold is judged "clearly lost" only on this many finished iterations


def new_stress_id() -> str:
    return "stress-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass(frozen=True)
class StressJob:
    """What to stress and how: the scenario (by file and id), the plan, where results go."""

    scenario_file: str
    scenario_id: str
    plan: StressPlan
    project_file: str | None = None
    stress_id: str = field(default_factory=new_stress_id)
    store_url: str | None = None
    artifacts_root: str = "artifacts"
    workers: int = 0  # 0: one per core, taken on as the ones at work get busy (see Scaling); N: N, all at work
    ray_address: str | None = None
    environment: dict[str, str] = field(default_factory=dict)


@dataclass
class Snapshot:
    """One second of the whole exercise: users running, iterations started, and what finished in it.

    What finished is kept as the workers sent it, encoded (kB, where a decoded Metrics holds
    megabytes of histogram counts): a ten-minute run keeps 600 of them for the report's plots.
    """

    t: float
    users: int
    started: int
    runs: dict[str, int]
    parts: tuple[bytes, ...]  # each worker's encoded Metrics of this second

    @property
    def finished(self) -> int:
        return sum(self.runs.values())

    @property
    def metrics(self) -> Metrics:
        """Decoded anew on each access: read it once per snapshot."""
        metrics = Metrics()
        for part in self.parts:
            metrics.merge(Metrics.decode(part))
        return metrics


@dataclass
class StressOutcome:
    job: StressJob
    started_at: datetime
    totals: Metrics
    snapshots: list[Snapshot]
    verdicts: list[Verdict]
    duration: float
    interrupted: bool = False
    aborted: str | None = None  # the threshold that was clearly lost
    errors: list[str] = field(default_factory=list)
    workers: int = 0  # the workers that took part, at the end

    @property
    def finished_runs(self) -> int:
        return sum(self.totals.runs.values())

    @property
    def exit_code(self) -> int:
        """0 every threshold held, 1 one did not (or the run was aborted for it), 3 nothing could be tested, 130 Ctrl-C."""
        if self.interrupted:
            return 130
        if self.errors or not self.finished_runs or self.totals.runs.get("error", 0) == self.finished_runs:
            return 3
        return 0 if all(v.ok for v in self.verdicts) and self.aborted is None else 1


def _hosts(job: StressJob, configs: list[WorkerConfig]) -> Any:
    if job.ray_address:
        from cxtest.stress.cluster import RayWorkers

        return RayWorkers(job.ray_address, configs)
    return LocalWorkers(configs)


def _cluster_cpus(address: str) -> int:
    from cxtest.stress.cluster import cluster_cpus

    return cluster_cpus(address)


def run_stress(
    job: StressJob,
    *,
    on_tick: Callable[[Snapshot, Metrics, list[Verdict]], None] | None = None,
    now: Callable[[], float] = time.time,
) -> StressOutcome:
    """Run the exercise to its end (or Ctrl-C, or an abort); on_tick sees every second's snapshot and the totals."""
    plan = job.plan
    thresholds = [parse_threshold(text) for text in plan.thresholds]
    count = job.workers or (_cluster_cpus(job.ray_address) if job.ray_address else os.cpu_count() or 1)
    scaling = Scaling(count) if not job.workers else None
    starts = now() + START_SPARE_S
    configs = [
        WorkerConfig(
            scenario_file=job.scenario_file, scenario_id=job.scenario_id, project_file=job.project_file,
            plan=plan.model_dump(), index=i, workers=count, stress_id=job.stress_id, store_url=job.store_url,
            artifacts_root=job.artifacts_root, started_at=starts, environment=job.environment,
            active=scaling.active if scaling else 0,
        )
        for i in range(count)
    ]
    if job.store_url:
        from cxtest.store import Store

        Store(job.store_url).close()  # the tables exist before the workers open it: two creating them at once collide
    started_at = datetime.now(timezone.utc)
    totals = Metrics()
    snapshots: list[Snapshot] = []
    users: dict[int, int] = {}
    interrupted, aborted = False, None
    hard_stop = starts + plan.length + plan.graceful_stop + 30
    hosts = _hosts(job, configs)
    try:
        stopping = False
        while not hosts.finished:
            try:
                time.sleep(COLLECT_S)
            except KeyboardInterrupt:
                interrupted = True
                hosts.stop()
                stopping = True
                hard_stop = min(hard_stop, now() + plan.graceful_stop + 5)
            deltas = hosts.collect()
            if not deltas and now() < starts:
                continue  # the workers are still loading the scenario
            runs: Counter[str] = Counter()
            for delta in deltas:
                users[delta.worker] = 0 if delta.done else delta.users
                metrics = Metrics.decode(delta.metrics)
                runs.update(metrics.runs)
                totals.merge(metrics)  # its histograms are added in when the totals are next read
            switch = now() - starts + SWITCH_AHEAD_S
            if scaling is not None and not stopping and switch < plan.length and scaling.busy(deltas, now()):
                hosts.activate(scaling.active, math.floor(plan.started_by(switch) + 1e-9), switch)
            parts = tuple(d.metrics for d in deltas)
            snapshot = Snapshot(now() - starts, sum(users.values()), sum(d.started for d in deltas), dict(runs), parts)
            snapshots.append(snapshot)
            verdicts = judge(thresholds, totals)
            if on_tick is not None:
                on_tick(snapshot, totals, verdicts)
            if plan.abort_on_fail and aborted is None and not stopping:
                lost = next((t for t in thresholds if clearly_lost(t, totals, ABORT_AFTER_RUNS)), None)
                if lost is not None:
                    aborted = lost.text
                    hosts.stop()
                    stopping = True
            if now() > hard_stop:
                break
    except KeyboardInterrupt:
        interrupted = True
        hosts.stop()
    finally:
        hosts.close()
    errors = list(getattr(hosts, "errors", []))
    return StressOutcome(
        job=job, started_at=started_at, totals=totals, snapshots=snapshots, verdicts=judge(thresholds, totals),
        duration=max(0.0, now() - starts), interrupted=interrupted, aborted=aborted, errors=errors,
        workers=scaling.active if scaling else count,
    )


class Scaling:
    """How many of the workers take part: one at first, one more whenever one at work is busy.

    A worker's event loop serves more iterations per CPU second the more it has to do at
    once (at 100 chat conversations a second, one worker used 12% of a core where two used
    17% together: each woke for every answer, with caches gone cold in between). So the
    first worker takes the whole plan until it uses more than SCALE_OUT_AT of a core in a
    second, which still leaves its loop the headroom to time answers fairly; then the next
    one joins, and so on, never more than one every SCALE_EVERY_S.
    """

    SCALE_OUT_AT = 0.5  # share of a core a worker at work may use before the next joins
    SCALE_EVERY_S = 2.0

    def __init__(self, workers: int):
        self.workers = workers
        self.active = 1
        self._since = -math.inf  # when the last one joined
        self._last: dict[int, float] = {}  # worker -> t of its last delta

    def busy(self, deltas: list[Delta], at: float) -> bool:
        """Whether another worker joins now (then `active` says how many take part)."""
        shares = []
        for delta in deltas:
            last, self._last[delta.worker] = self._last.get(delta.worker), delta.t
            # Before the shape starts a worker is loading the scenario: that CPU says nothing of the load.
            if last is not None and last >= 0 and delta.t > last and delta.worker < self.active:
                shares.append(delta.cpu / (delta.t - last))
        if self.active >= self.workers or at - self._since < self.SCALE_EVERY_S or not shares or max(shares) <= self.SCALE_OUT_AT:
            return False
        self.active += 1
        self._since = at
        return True


_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def remote_hosts(target: Any) -> list[str]:
    """Hosts a scenario's target names that are not this machine's loopback (URLs, SIP URIs, host:port)."""
    import re

    data = target.model_dump() if hasattr(target, "model_dump") else target
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(data)
    hosts: set[str] = set()
    for text in texts:
        for match in re.finditer(r"(?:[a-z][a-z0-9+.-]*://(?:[^@/\s]*@)?|sips?:(?:[^@\s]*@)?)(\[[^\]]+\]|[^:/;?\s>]+)", text, re.IGNORECASE):
            host = match.group(1)
            if host and not host.startswith(_LOOPBACK) and "{" not in host:
                hosts.add(host)
    return sorted(hosts)
