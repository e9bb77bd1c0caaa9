"""`cxtest monitor`: every scenario on its schedule; results stored, incidents judged and announced.

This is the only module that imports APScheduler. Jobs live in memory and are
rebuilt from the scenario files at start and on reload (the files are the source
of truth; incidents and undelivered notifications live in the store). Start
times are spread over each interval so 10,000 scenarios on a 60 s schedule do
not all fire in the same second.

    scheduler --fires--> run (capped per channel) --> writer (batched save)
              --> rules.judge --> incidents.apply --> outbox (deliveries) --> notifiers
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from alerts.model import Change
from alerts.rules import in_window, judge
from cxtest import logs
from cxtest.errors import ScenarioError, StoreError
from cxtest.loader import SCENARIO_SUFFIXES, load_scenarios
from cxtest.model import AlertPolicy, Outcome, Result, Scenario

log = logs.get_logger("cxtest.monitor")

DEFAULT_POLICY = AlertPolicy()
FAILING = (Outcome.failed, Outcome.error)


def start_offset(scenario_id: str, every: float) -> float:
    """A stable offset in [0, every): the same scenario starts at the same phase after every restart."""
    return (zlib.crc32(scenario_id.encode()) % 10_000) / 10_000 * every


def policy_of(scenario: Scenario) -> AlertPolicy:
    return scenario.alert or DEFAULT_POLICY


def history_depth(policy: AlertPolicy) -> int:
    rate = policy.failure_rate.of if policy.failure_rate else 0
    return max(policy.open_after, policy.resolve_after, rate, policy.degraded_after or 0) + 1


@dataclass
class _Submitted:
    scenario: Scenario
    result: Result
    judge: bool  # a failure awaiting its confirmation run is stored but does not count


class Monitor:
    """Runs scenarios on their schedules until `stop` is set; see the module docstring."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        location: str | None = None,
        store_url: str | None = None,
        listen: str | None = None,
        stop_grace: float = 30.0,
        watch_interval: float = 2.0,
    ):
        self.paths = list(paths)
        self.project, scenarios = load_scenarios(self.paths)
        self.location = location or self.project.location
        self.project = self.project.model_copy(update={"location": self.location})
        self.store_url = store_url
        self.listen = self.project.monitor.listen if listen is None else listen
        self.stop_grace = stop_grace
        self.watch_interval = watch_interval
        self.agent = f"{self.location}/{socket.gethostname()}/{os.getpid()}"
        self.scenarios: dict[str, Scenario] = {}
        self.history: dict[str, deque[Result]] = {}
        self.last_result: dict[str, Result] = {}
        self.started_at = datetime.now(timezone.utc)
        self.reload_requested = asyncio.Event()
        # Set once jobs are scheduled and the operator endpoint (if any) listens.
        self.started = asyncio.Event()
        self._pending: list[_Submitted] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._caps: dict[str, asyncio.Semaphore] = {}
        self._mtimes: dict[str, float] = {}
        self._resent: dict[tuple[int, str], float] = {}  # (incident id, notifier) -> when last re-sent
        self.metrics = _Metrics()
        self._set_scenarios(scenarios)

    # ----------------------------------------------------------------- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        from alerts.incidents import Incidents
        from alerts.notifiers import build_notifiers
        from alerts.outbox import Outbox
        from cxtest.cli import store_url as project_store_url
        from cxtest.runner import Runner
        from cxtest.store import Store

        self.store = Store(project_store_url(self.project, self.store_url))
        self.incidents = Incidents(self.store, link_base=self.project.monitor.link_base, maintenance=self.project.maintenance)
        self.notifiers = build_notifiers(self.project.notifiers)
        fallbacks = {name: n.fallback for name, n in self.project.notifiers.items() if n.fallback}
        self.outbox = Outbox(self.store, self.notifiers, agent=self.agent, fallbacks=fallbacks)
        self.runner = Runner(self.project, store=None)
        self.scheduler = AsyncIOScheduler(timezone=timezone.utc)
        self.scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        self._mtimes = self._file_times()

        await asyncio.to_thread(self._prime_history)
        await self._apply_transitions(lambda: self.incidents.reconcile(self.loaded, self.store))
        for scenario in self.scenarios.values():
            self.metrics.prepare(scenario)
        # What is loaded by now (scenarios, modules, metric series) lives as long as the monitor:
        # out of the collector's way, a full collection at 10,000 scenarios stalls the loop ~4x less.
        gc.collect()
        gc.freeze()
        for scenario in self.scenarios.values():
            self._schedule(scenario)
        self.scheduler.start()
        log.info("monitor started", agent=self.agent, scenarios=len(self.scenarios), jobs=len(self.scheduler.get_jobs()))

        tasks = [
            asyncio.create_task(self._writer(stop), name="writer"),
            asyncio.create_task(self.outbox.run(stop), name="outbox"),
            asyncio.create_task(self._reminders(stop), name="reminders"),
            asyncio.create_task(self._watch(stop), name="watch"),
        ]
        server = await self._start_http() if self.listen else None
        self.started.set()
        try:
            await stop.wait()
        finally:
            await self._shutdown(tasks, server)

    async def _shutdown(self, tasks: list[asyncio.Task[Any]], server: Any) -> None:
        """In-flight runs finish (or are recorded as stopped), results are saved, the outbox flushed."""
        # Paused, not shut down yet: AsyncIOExecutor.shutdown cancels every job still running, so
        # each run in flight was recorded as stopped (~50 of them at 10,000 scenarios on 60 s).
        self.scheduler.pause()
        await asyncio.sleep(0)  # runs submitted in the last round start, and join _inflight
        if self._inflight:
            log.info("waiting for runs in flight", runs=len(self._inflight), grace=self.stop_grace)
            _, late = await asyncio.wait(self._inflight, timeout=self.stop_grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self.scheduler.shutdown(wait=False)
        # The writer and the outbox end their round by themselves once `stop` is set: cancelled
        # mid-way, a batch being committed would be saved again, a send in flight sent again.
        await asyncio.wait([t for t in tasks if t.get_name() in ("writer", "outbox")], timeout=10.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await self._flush_results()
        with contextlib.suppress(StoreError):
            await self.outbox.flush(timeout=10.0)
        if server is not None:
            server.should_exit = True
            await server.wait_closed()
        await self.runner.aclose()
        await self.outbox.aclose()
        self.store.close()
        gc.unfreeze()  # what run() froze can be collected again (tests run many monitors in one process)
        log.info("monitor stopped", agent=self.agent)

    # ----------------------------------------------------------------- scenarios and jobs

    def _set_scenarios(self, scenarios: Sequence[Scenario]) -> None:
        self.loaded = list(scenarios)  # every scenario, for reconciling incidents other locations opened
        mine = [s for s in scenarios if s.schedule is not None and (not s.schedule.locations or self.location in s.schedule.locations)]
        self.scenarios = {s.id: s for s in mine}
        for scenario in mine:
            depth = history_depth(policy_of(scenario))
            old = self.history.get(scenario.id, ())
            self.history[scenario.id] = deque(old, maxlen=depth)
            if scenario.channel not in self._caps:
                self._caps[scenario.channel] = asyncio.Semaphore(self.project.monitor.caps.get(scenario.channel, 50))

    def _admission(self, scenario: Scenario) -> Any:
        """The channel's cap, then the probe's own admission (call pacing) if it has one: a fresh context per attempt."""
        cap = self._caps[scenario.channel]
        admission = getattr(self.runner.probe(scenario.channel), "admission", None)

        @contextlib.asynccontextmanager
        async def admit() -> Any:
            async with cap:
                if admission is None:
                    yield
                else:
                    async with admission(scenario):
                        yield

        return admit

    def _trigger(self, scenario: Scenario) -> Any:
        schedule = scenario.schedule
        assert schedule is not None
        if schedule.cron:
            return CronTrigger(**_cron_fields(schedule.cron), timezone=timezone.utc, jitter=schedule.jitter)
        every = schedule.every or 60.0
        first = datetime.now(timezone.utc) + timedelta(seconds=start_offset(scenario.id, every))
        return IntervalTrigger(seconds=every, start_date=first, jitter=schedule.jitter, timezone=timezone.utc)

    def _schedule(self, scenario: Scenario) -> None:
        every = scenario.schedule.every if scenario.schedule else None
        self.scheduler.add_job(
            self._fire,
            self._trigger(scenario),
            args=[scenario.id],
            id=scenario.id,
            name=scenario.name,
            coalesce=True,  # a stalled loop runs a missed scenario once, not once per missed slot
            max_instances=1,
            misfire_grace_time=max(1, int(every or 60)),
            replace_existing=True,
        )

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        if event.scheduled_run_times:
            lag = (datetime.now(timezone.utc) - event.scheduled_run_times[0]).total_seconds()
            self.metrics.lag(lag)

    async def _fire(self, scenario_id: str) -> None:
        scenario = self.scenarios.get(scenario_id)
        if scenario is None:
            return
        now = datetime.now(timezone.utc)
        if scenario.schedule and scenario.schedule.active and not any(in_window(w, now) for w in scenario.schedule.active):
            return
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            admit = self._admission(scenario)
            result = await self.runner.run_scenario(scenario, admit=admit)
            confirm = policy_of(scenario).confirm_after
            if confirm is not None and result.outcome in FAILING:
                self._submit(scenario, result, judge=False)
                await asyncio.sleep(confirm)  # holding no slot
                result = await self.runner.run_scenario(scenario, admit=admit)
            self._submit(scenario, result)
        except asyncio.CancelledError:
            self._submit(scenario, _stopped_result(scenario, self.location, now), judge=False)
            raise
        finally:
            self._inflight.discard(task)

    def _submit(self, scenario: Scenario, result: Result, judge: bool = True) -> None:
        self._pending.append(_Submitted(scenario, result, judge))
        self.metrics.record(result)

    # ----------------------------------------------------------------- results and incidents

    async def _writer(self, stop: asyncio.Event, interval: float = 0.2) -> None:
        while not stop.is_set():
            try:
                await self._flush_results()
            except StoreError as exc:
                log.warning("store unavailable; results kept in memory and retried", error=str(exc), pending=len(self._pending))
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one bad batch
                log.error("saving or judging results failed; kept and retried", error=repr(exc), pending=len(self._pending))
            await asyncio.sleep(interval)

    async def _flush_results(self) -> None:
        """Save pending results in one batch, then judge them: nothing counts until it is committed."""
        if not self._pending:
            return
        batch = self._pending[:]
        await asyncio.to_thread(self.store.save, [s.result for s in batch])
        del self._pending[: len(batch)]
        verdicts = []
        for item in batch:
            self.last_result[item.scenario.id] = item.result
            if not item.judge:
                continue
            history = self.history.setdefault(item.scenario.id, deque(maxlen=history_depth(policy_of(item.scenario))))
            history.appendleft(item.result)
            verdicts.append((item.scenario, list(history)))
        if verdicts:
            await self._apply_transitions(lambda: self._judge_all(verdicts))

    def _judge_all(self, batch: list[tuple[Scenario, list[Result]]]) -> list[Any]:
        changes = []
        for scenario, history in batch:
            policy = policy_of(scenario)
            if policy.quorum:
                # Every agent's results, but only recent ones: a dead agent's last failures must not count forever.
                every = scenario.schedule.every if scenario.schedule and scenario.schedule.every else 60.0
                since = datetime.now(timezone.utc) - timedelta(seconds=every * history_depth(policy) * 2)
                history = self.store.results(scenario_id=scenario.id, since=since, limit=history_depth(policy) * 8)
            verdicts = judge(policy, history, locations=scenario.schedule.locations if scenario.schedule else ())
            changes += self.incidents.apply(scenario, verdicts, notify=policy.notify)
        return changes

    async def _apply_transitions(self, work: Any) -> None:
        changes = await asyncio.to_thread(work)
        for incident, change in changes:
            log.warning("incident " + change.value, key=incident.key, severity=incident.severity, summary=incident.summary)
            self.metrics.transitions.append((incident.key, change.value))

    def _prime_history(self) -> None:
        """Recent results from the store, so a restart does not forget a streak of failures."""
        for scenario_id, history in self.history.items():
            mine = [r for r in self.store.results(scenario_id=scenario_id, limit=history.maxlen * 4) if r.location == self.location]
            history.extend(mine[: history.maxlen])
            if mine:
                self.last_result[scenario_id] = mine[0]

    async def _reminders(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        while not stop.is_set():
            policies = {s.id: policy_of(s) for s in self.scenarios.values()}
            try:
                await self._apply_transitions(lambda: self.incidents.due_reminders(datetime.now(timezone.utc), policies))
                await asyncio.to_thread(self._resend_open)
            except StoreError as exc:
                log.warning("store unavailable for reminders", error=str(exc))
            await asyncio.sleep(interval)

    def _resend_open(self) -> None:
        """Receivers that forget an alert unless told again (Alertmanager) hear of open incidents regularly."""
        from alerts.outbox import enqueue

        resending = {name: n.resend_every for name, n in self.notifiers.items() if getattr(n, "resend_every", None)}
        if not resending:
            return
        now = time.monotonic()
        for incident in self.incidents.open_incidents():
            scenario = self.scenarios.get(incident.scenario_id)
            if scenario is None:
                continue
            due = [
                name
                for name in policy_of(scenario).notify
                # The first sighting starts the clock: the `opened` delivery was the first send.
                if name in resending and now - self._resent.setdefault((incident.id, name), now) >= resending[name]
            ]
            if due:
                with self.store.engine.begin() as conn:
                    enqueue(conn, incident, Change.reminded, due)
                for name in due:
                    self._resent[(incident.id, name)] = now

    # ----------------------------------------------------------------- reload

    def _file_times(self) -> dict[str, float]:
        """The modification time of every scenario file and of cxtest.yaml, to notice edits.

        os.scandir, not scenario_files' sorted rglob + Path.stat: for 10,000 files that is
        ~40 ms instead of ~230 ms of CPU every watch_interval, in a thread that holds the GIL
        while the event loop is starting runs (bench/monitor_scale.py). It may see more files
        than scenario_files (a change there only costs a reload), never fewer.
        """
        times: dict[str, float] = {}
        for path in [*self.paths, self.project.root / "cxtest.yaml"]:
            if path.is_dir():
                _mtimes_below(str(path), times)
            else:
                with contextlib.suppress(OSError):
                    times[str(path)] = path.stat().st_mtime
        return times

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reload_requested.wait(), self.watch_interval)
            times = await asyncio.to_thread(self._file_times)
            if self.reload_requested.is_set() or times != self._mtimes:
                self.reload_requested.clear()
                self._mtimes = times
                # Reading 10,000 files takes ~8 s: in a thread, so runs keep starting on time meanwhile.
                scenarios = await asyncio.to_thread(self._read_scenarios)
                if scenarios is not None:
                    self.reload(scenarios)

    def _read_scenarios(self) -> list[Scenario] | None:
        try:
            _project, scenarios = load_scenarios(self.paths)
        except ScenarioError as exc:
            log.error("reload refused: scenario problems; keeping the running set", problems=[str(p) for p in exc.problems])
            return None
        return scenarios

    def reload(self, scenarios: Sequence[Scenario] | None = None) -> bool:
        """Re-read the scenario files (or take `scenarios`, read from them); jobs follow, open
        incidents stay (they are keyed by id). False when the files have problems."""
        if scenarios is None:
            scenarios = self._read_scenarios()
            if scenarios is None:
                return False
        old = self.scenarios
        self._set_scenarios(scenarios)
        for gone in old.keys() - self.scenarios.keys():
            self.scheduler.remove_job(gone)
        for scenario_id, scenario in self.scenarios.items():
            before = old.get(scenario_id)
            if before is None or before.steps != scenario.steps:
                self.metrics.prepare(scenario)
            if before is None or before.schedule != scenario.schedule:
                self._schedule(scenario)
        log.info("reloaded", scenarios=len(self.scenarios), removed=len(old.keys() - self.scenarios.keys()))
        return True

    # ----------------------------------------------------------------- operator endpoint

    async def _start_http(self) -> Any:
        import uvicorn

        from cxtest.monitor_http import create_app

        host, _, port = self.listen.rpartition(":")
        config = uvicorn.Config(create_app(self), host=host.strip("[]"), port=int(port), log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # the monitor owns SIGTERM/SIGHUP
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 10
        while not server.started and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if task.done():
            raise OSError(f"cannot listen on {self.listen}")
        server.wait_closed = lambda: task  # type: ignore[attr-defined]
        return server


def _mtimes_below(folder: str, times: dict[str, float]) -> None:
    """Scenario-like files below `folder` (as scenario_files: no part starting with . or _,
    no descent into symlinked folders) with their modification times."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith((".", "_")):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    _mtimes_below(entry.path, times)
                elif entry.name.endswith(SCENARIO_SUFFIXES):
                    times[entry.path] = entry.stat().st_mtime


def _cron_fields(cron: str) -> dict[str, str]:
    minute, hour, day, month, day_of_week = cron.split()
    return {"minute": minute, "hour": hour, "day": day, "month": month, "day_of_week": day_of_week}


def _stopped_result(scenario: Scenario, location: str, started_at: datetime) -> Result:
    return Result(
        scenario_id=scenario.id,
        scenario_name=scenario.name,
        channel=scenario.channel,
        file=scenario.source.file,
        outcome=Outcome.error,
        started_at=started_at,
        duration=(datetime.now(timezone.utc) - started_at).total_seconds(),
        message="the monitor stopped during this run",
        tags=scenario.tags,
        location=location,
    )


class _Metrics:
    """What /metrics reports (one registry per monitor, so tests can run several), plus raw start lags."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.runs = Counter("cxtest_runs", "Scenario runs by outcome.", ["scenario", "channel", "outcome"], registry=self.registry)
        self.run_seconds = Histogram(
            "cxtest_run_duration_seconds", "Whole-run duration.", ["channel"], registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.step_seconds = Histogram(
            "cxtest_step_duration_seconds", "Step duration.", ["scenario", "step"], registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.lag_seconds = Histogram(
            "cxtest_start_lag_seconds", "Scheduled start to job submission.", registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
        )
        self.start_lag: deque[float] = deque(maxlen=100_000)
        self.transitions: deque[tuple[str, str]] = deque(maxlen=10_000)

    def prepare(self, scenario: Scenario) -> None:
        """Each step's series before its first run, as Prometheus advises. With ~26 objects each
        (a lock per bucket), made lazily they were most of what full garbage collections scanned."""
        for index in range(len(scenario.steps)):
            self.step_seconds.labels(scenario.id, str(index + 1))

    def record(self, result: Result) -> None:
        self.runs.labels(result.scenario_id, result.channel, result.outcome.value).inc()
        self.run_seconds.labels(result.channel).observe(result.duration)
        for step in result.steps:
            if step.outcome is not Outcome.skipped:
                self.step_seconds.labels(result.scenario_id, str(step.index + 1)).observe(step.duration)

    def lag(self, seconds: float) -> None:
        self.start_lag.append(seconds)
        self.lag_seconds.observe(seconds)


def run_monitor(paths: Sequence[Path], **options: Any) -> None:
    """Sync wrapper for the CLI: run until SIGTERM or SIGINT; SIGHUP reloads the scenario files."""

    async def main() -> None:
        monitor = Monitor(paths, **options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, monitor.reload_requested.set)
        await monitor.run(stop)

    asyncio.run(main())

