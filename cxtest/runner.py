"""Runs scenarios: the step loop, timeouts, retries, concurrency, artifacts.

This is the one place where exceptions become outcomes:

    StepFailed (StepTimeout) / asyncio timeout  -> failed   the customer would be stuck
    ProbeError (unreachable, garbage reply)     -> error    we could not test
    anything else                               -> error    our own crash, traceback kept as an artifact
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cxtest import logs
from cxtest.logs import redact
from cxtest.checks import HIGHER_IS_BETTER, judge_thresholds
from cxtest.errors import ProbeError, StepFailed
from cxtest.model import Artifact, Observation, Outcome, Project, Result, Scenario, StepResult, format_duration
from probes import probe_class
from probes.base import Probe, RunContext

log = logs.get_logger("cxtest.runner")

ResultHook = Callable[[Result], Awaitable[None] | None]

_ARTIFACT_KINDS = {".png": "screenshot", ".jpg": "screenshot", ".wav": "recording", ".zip": "trace", ".html": "html"}


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "scenario"


class Runner:
    """Runs scenarios against shared probes: one browser, one SIP stack, one HTTP pool per runner."""

    def __init__(
        self,
        project: Project | None = None,
        *,
        concurrency: int | None = None,
        artifacts_root: Path | None = None,
        run_id: str | None = None,
        store: Any = None,
        think: tuple[float, float] | None = None,
        evidence: "EvidenceSampler | None" = None,
    ):
        self.project = project or Project(root=Path.cwd())
        self.concurrency = concurrency or self.project.concurrency
        self.run_id = run_id or new_run_id()
        self.artifacts_root = (artifacts_root or self.project.root / self.project.artifacts).resolve()
        self.store = store
        self.think = think  # (min, max) seconds a customer pauses between steps: stress runs
        self.evidence = evidence  # which runs keep their evidence; None: every run
        self._probes: dict[str, Probe] = {}
        self._folders: dict[str, Path] = {}  # scenario id -> its artifacts folder in this run

    async def __aenter__(self) -> "Runner":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        probes, self._probes = list(self._probes.values()), {}
        for probe in probes:
            await probe.aclose()

    def probe(self, channel: str) -> Probe:
        if channel not in self._probes:
            self._probes[channel] = probe_class(channel)()
        return self._probes[channel]

    # ----------------------------------------------------------------- many

    async def run_many(
        self,
        scenarios: Iterable[Scenario],
        *,
        on_start: Callable[[Scenario], None] | None = None,
        on_result: ResultHook | None = None,
    ) -> list[Result]:
        """Every scenario, at most `concurrency` at once; results saved before this returns.

        A probe with an `admission(scenario)` (an async context manager) admits its runs itself
        instead: the phone probe paces call attempts and caps calls per trunk.
        """
        limit = asyncio.Semaphore(self.concurrency)
        writer = BatchWriter(self.store) if self.store is not None else None

        async def one(scenario: Scenario) -> Result:
            admission = getattr(self.probe(scenario.channel), "admission", None)
            admit = (lambda: admission(scenario)) if admission else (lambda: limit)
            started = False

            def starting() -> None:
                nonlocal started
                if on_start and not started:
                    on_start(scenario)
                started = True

            result = await self.run_scenario(scenario, admit=admit, on_attempt=starting)
            if writer:
                writer.add(result)
            if on_result:
                maybe = on_result(result)
                if asyncio.iscoroutine(maybe):
                    await maybe
            return result

        try:
            return list(await asyncio.gather(*(one(s) for s in scenarios)))
        finally:
            if writer:
                await writer.close()

    # ----------------------------------------------------------------- one

    async def run_scenario(
        self,
        scenario: Scenario,
        *,
        admit: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        on_attempt: Callable[[], None] | None = None,
        iteration: str | None = None,
    ) -> Result:
        """One scenario with its retries, `retry_delay` apart; a pass after a failed attempt is marked flaky.

        `iteration` names this run's artifacts folder below the scenario's, when one scenario
        runs many times in one run id (a stress exercise).

        Each attempt runs inside `admit()` (a concurrency slot), which the scenario's clock does
        not count; the delay between attempts holds no slot, so a retest waiting minutes leaves
        its place to other runs.
        """
        attempt = 1
        result = await self._attempt_in(scenario, attempt, admit, on_attempt, iteration)
        while result.outcome in (Outcome.failed, Outcome.error) and attempt <= scenario.retries:
            attempt += 1
            log.info("retrying", scenario=scenario.id, attempt=attempt, after=result.message, delay=scenario.retry_delay)
            await asyncio.sleep(scenario.retry_delay)
            result = await self._attempt_in(scenario, attempt, admit, on_attempt, iteration)
        if attempt == 1:
            return result
        flaky = result.outcome in (Outcome.passed, Outcome.degraded)
        return replace(result, attempts=attempt, flaky=flaky)

    async def _attempt_in(
        self,
        scenario: Scenario,
        attempt: int,
        admit: Callable[[], AbstractAsyncContextManager[Any]] | None,
        on_attempt: Callable[[], None] | None,
        iteration: str | None = None,
    ) -> Result:
        if admit is None:
            return await self._attempt(scenario, attempt, iteration)
        async with admit():
            if on_attempt:
                on_attempt()
            return await self._attempt(scenario, attempt, iteration)

    async def _attempt(self, scenario: Scenario, attempt: int, iteration: str | None = None) -> Result:
        folder = self._folders.get(scenario.id)
        if folder is None:
            folder = self._folders[scenario.id] = self.artifacts_root / self.run_id / _slug(scenario.id)
        if iteration is not None:
            folder = folder / iteration
        ctx = RunContext(
            run_id=self.run_id,
            artifacts_dir=folder if attempt == 1 else folder / f"attempt-{attempt}",
            location=self.project.location,
            attempt=attempt,
        )
        if self.evidence is not None:
            ctx.keep_passing_evidence, ctx.keep_failing_evidence = self.evidence.decide()
        started_at = datetime.now(timezone.utc)
        clock = time.perf_counter()
        steps: list[StepResult] = []
        deadlines = _Deadlines(scenario.timeout)
        try:
            async with deadlines:
                await self._steps(scenario, ctx, clock, steps, deadlines)
        except TimeoutError:
            # A deadline hit mid-step: that step failed, the rest never ran.
            index = len(steps)
            if index < len(scenario.steps):
                if deadlines.step_expired:
                    message = f"no answer within {format_duration(deadlines.step_timeout)} (step timeout)"
                    in_flight_since = deadlines.step_started
                else:
                    message = f"scenario timeout ({format_duration(scenario.timeout)}) reached during this step"
                    in_flight_since = clock + (steps[-1].started + steps[-1].duration if steps else 0.0)
                steps.append(_step(scenario, index, Outcome.failed, clock, in_flight_since, message))
        except ProbeError as exc:
            # Opening the session (a call, a browser context) failed before any step.
            steps.append(_step(scenario, len(steps), Outcome.error, clock, clock, str(exc)))
        except Exception as exc:  # noqa: BLE001 - the boundary: a crash becomes an `error` result
            steps.append(_step(scenario, len(steps), Outcome.error, clock, clock, _crash(exc, ctx)))
        for index in range(len(steps), len(scenario.steps)):
            steps.append(_step(scenario, index, Outcome.skipped, time.perf_counter(), time.perf_counter(), ""))
        duration = time.perf_counter() - clock
        if self.evidence is not None and ctx.failed and ctx.keep_failing_evidence:
            self.evidence.kept_failure()
        return _result(scenario, ctx, steps, started_at, duration)

    async def _steps(self, scenario: Scenario, ctx: RunContext, clock: float, steps: list[StepResult], deadlines: "_Deadlines") -> None:
        probe = self.probe(scenario.channel)
        async with probe.session(scenario, ctx) as session:
            try:
                for index, step in enumerate(scenario.steps):
                    if index and self.think is not None:
                        await asyncio.sleep(random.uniform(*self.think))
                    timeout = step.timeout or scenario.step_timeout
                    deadlines.step_begins(timeout)
                    result = await _run_step(session, scenario, index, step, ctx, clock, timeout)
                    deadlines.step_ends()
                    steps.append(result)
                    if result.outcome in (Outcome.failed, Outcome.error):
                        ctx.failed = True  # before the session closes: it keeps the evidence of a failure
                        return
            except BaseException:
                ctx.failed = True
                raise


class _Deadlines:
    """An attempt's deadlines, the scenario's and its running step's, watched by one timer.

    Each step used to run in its own asyncio.timeout: a Timeout, a timer armed and cancelled,
    nine times in a chat conversation, a tenth of what the runner costs per run under load.
    Here a step only notes its deadline; the one timer, armed at the earliest deadline it
    knows, looks again when it fires (the step may have ended, or a later one begun) and
    expires the attempt's asyncio.Timeout only when a deadline has truly passed. A step
    gets half a second of grace past its timeout, so a probe's own, more precise message wins.
    """

    GRACE_S = 0.5

    def __init__(self, scenario_timeout: float):
        self.scenario_timeout = scenario_timeout
        self.step_deadline = math.inf
        self.step_timeout = 0.0
        self.step_started = 0.0  # perf_counter() when the running step began
        self.step_expired = False
        self._timeout: asyncio.Timeout | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf

    async def __aenter__(self) -> "_Deadlines":
        self._loop = asyncio.get_running_loop()
        self.scenario_deadline = self._loop.time() + self.scenario_timeout
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        self._arm(self.scenario_deadline)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._timeout is not None
        return await self._timeout.__aexit__(*exc)

    def step_begins(self, timeout: float) -> None:
        self.step_timeout, self.step_started = timeout, time.perf_counter()
        self.step_deadline = self._loop.time() + timeout + self.GRACE_S
        if self.step_deadline < self._armed:
            self._arm(self.step_deadline)

    def step_ends(self) -> None:
        self.step_deadline = math.inf

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        due = min(self.step_deadline, self.scenario_deadline)
        if self._loop.time() < due:
            self._arm(due)
            return
        self._timer = None
        self.step_expired = self.step_deadline < self.scenario_deadline
        assert self._timeout is not None
        self._timeout.reschedule(self._loop.time())  # expires now: the running step is cancelled


class EvidenceSampler:
    """Which runs of a stress exercise keep their evidence: the first few, then one in `every`; failures up to a budget.

    Thousands of recordings or transcripts of runs that passed help nobody and cost the
    disk and CPU the load should have; every failure's evidence is wanted until there
    are plenty of them.
    """

    def __init__(self, first: int = 5, every: int = 100, failures: int = 200):
        self.first, self.every, self.failures = first, every, failures
        self.runs = 0
        self.failures_kept = 0

    def decide(self) -> tuple[bool, bool]:
        """(keep this run's evidence if it passes, keep it if it fails)."""
        self.runs += 1
        passing = self.runs <= self.first or self.runs % self.every == 0
        return passing, self.failures_kept < self.failures

    def kept_failure(self) -> None:
        self.failures_kept += 1


async def _run_step(session: Any, scenario: Scenario, index: int, step: Any, ctx: RunContext, clock: float, timeout: float) -> StepResult:
    """One step, under the deadlines its caller set (_Deadlines); a TimeoutError of the probe's own is its step timeout too."""
    started = time.perf_counter()
    try:
        observation: Observation = await session.step(index, step, timeout)
    except TimeoutError:
        return _step(scenario, index, Outcome.failed, clock, started, f"no answer within {format_duration(timeout)} (step timeout)")
    except StepFailed as exc:
        return _step(scenario, index, Outcome.failed, clock, started, str(exc))
    except ProbeError as exc:
        return _step(scenario, index, Outcome.error, clock, started, str(exc))
    except Exception as exc:  # noqa: BLE001 - the boundary: a crash becomes an `error` step
        return _step(scenario, index, Outcome.error, clock, started, _crash(exc, ctx))
    checks = _redacted(observation.checks) if observation.checks else ()
    outcome, message = Outcome.passed, ""
    if any(c.outcome is not Outcome.passed for c in checks):
        outcome = Outcome.worst([c.outcome for c in checks])
        message = "; ".join(c.text for c in checks if c.outcome is not Outcome.passed)
    return StepResult(
        index=index,
        name=_step_name(step),
        outcome=outcome,
        started=started - clock,
        duration=time.perf_counter() - started,
        message=message,
        checks=checks,
        measures=observation.measures,
        evidence=observation.evidence,
    )


def _redacted(checks: Sequence[Any]) -> tuple[Any, ...]:
    """The checks with secrets in their texts replaced; a check without any is kept as it is (no copy per check per run)."""
    out = []
    for check in checks:
        text = redact(check.text)
        out.append(check if text is check.text else replace(check, text=text))
    return tuple(out)


_step_names: dict[int, tuple[Any, str]] = {}  # id(step) -> (step, its name): steps are frozen, and run again and again


def _step_name(step: Any) -> str:
    known = _step_names.get(id(step))
    if known is None or known[0] is not step:
        if len(_step_names) > 10_000:  # scenarios loaded again and again (a monitor's reloads): start afresh
            _step_names.clear()
        known = _step_names[id(step)] = (step, step.describe())
    return known[1]


def _step(scenario: Scenario, index: int, outcome: Outcome, clock: float, started: float, message: str) -> StepResult:
    now = time.perf_counter()
    return StepResult(
        index=index,
        name=_step_name(scenario.steps[index]),
        outcome=outcome,
        started=started - clock,
        duration=max(0.0, now - started),
        message=redact(message),
    )


def _crash(exc: Exception, ctx: RunContext) -> str:
    path = ctx.write_text("crash.txt", "".join(traceback.format_exception(exc)))
    log.error("probe crashed", error=repr(exc), traceback=str(path))
    return f"internal error: {type(exc).__name__}: {exc} (traceback in {path})"


def _measures(steps: Sequence[StepResult], duration: float) -> dict[str, float]:
    """Run-level measures: each step measure's worst value, plus the whole duration."""
    measures: dict[str, float] = {}
    for step in steps:
        for name, value in step.measures.items():
            if name not in measures:
                measures[name] = value
            else:
                measures[name] = min(measures[name], value) if name in HIGHER_IS_BETTER else max(measures[name], value)
    measures["duration"] = duration
    return measures


def _artifacts(folder: Path) -> tuple[Artifact, ...]:
    if not folder.is_dir():
        return ()
    return tuple(
        Artifact(label=path.relative_to(folder).as_posix(), path=str(path), kind=_ARTIFACT_KINDS.get(path.suffix, "text"))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    )


def _result(scenario: Scenario, ctx: RunContext, steps: list[StepResult], started_at: datetime, duration: float) -> Result:
    measures = _measures(steps, duration)
    ran_all = all(s.outcome in (Outcome.passed, Outcome.degraded) for s in steps)
    checks = tuple(judge_thresholds(scenario.thresholds, measures)) if ran_all else ()
    outcome = Outcome.worst([s.outcome for s in steps] + [c.outcome for c in checks])
    if outcome is Outcome.skipped:
        outcome = Outcome.passed
    problems = [f"step {s.index + 1} ({s.name}): {s.message}" for s in steps if s.message and s.outcome is not Outcome.passed]
    problems += [c.text for c in checks if c.outcome is not Outcome.passed]
    return Result(
        scenario_id=scenario.id,
        scenario_name=scenario.name,
        channel=scenario.channel,
        file=scenario.source.file,
        outcome=outcome,
        started_at=started_at,
        duration=duration,
        message="; ".join(problems),
        steps=tuple(steps),
        checks=checks,
        measures=measures,
        artifacts=_artifacts(ctx.artifacts_dir) if ctx.wrote_artifacts else (),
        attempts=ctx.attempt,
        tags=scenario.tags,
        location=ctx.location,
        run_id=ctx.run_id,
    )


class BatchWriter:
    """Saves results in batches on a worker thread, so the store never stalls the event loop."""

    # Large batches: saving while requests are in flight steals the CPU their latency is measured on.
    def __init__(self, store: Any, batch: int = 1000):
        self.store = store
        self.batch = batch
        self.pending: list[Result] = []
        self.writes: list[asyncio.Task[None]] = []
        self.one_at_a_time = asyncio.Lock()  # SQLite takes one writer; batches keep their order

    def add(self, result: Result) -> None:
        self.pending.append(result)
        if len(self.pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self.writes.append(asyncio.ensure_future(self._save(batch)))

    async def _save(self, batch: list[Result]) -> None:
        async with self.one_at_a_time:
            await asyncio.to_thread(self.store.save, batch)

    async def close(self) -> None:
        self._flush()
        await asyncio.gather(*self.writes)


def run(scenarios: Sequence[Scenario], project: Project | None = None, **options: Any) -> list[Result]:
    """Sync wrapper: run scenarios in a fresh event loop (for the pytest plugin and scripts)."""

    async def main() -> list[Result]:
        async with Runner(project, **options) as runner:
            return await runner.run_many(scenarios)

    return asyncio.run(main())
