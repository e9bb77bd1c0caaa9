"""Runner: exceptions -> outcomes, timeouts, retries, concurrency, store, artifacts, measures.

The exception mapping uses a tiny fake probe registered as channel "fake"; timing,
concurrency, artifacts and measures use real HTTP against the sandbox on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pytest

import probes
from cxtest.errors import ProbeError, StepFailed, TargetUnreachable
from cxtest.model import CheckResult, Frozen, Observation, Outcome, Project, Result, Scenario, Step
from cxtest.runner import Runner
from cxtest.sandbox.server import Sandbox
from cxtest.store import Store
from probes.http import HttpStep, HttpTarget

# --------------------------------------------------------------------------- a fake probe


class FakeTarget(Frozen):
    open_error: bool = False  # opening the session raises ProbeError


class FakeStep(Step):
    do: str = "pass"  # pass | check_fail | degrade | fail | probe_error | crash | hang | flaky | sleep
    seconds: float = 0.0
    measures: dict[str, float] = {}


class FakeSession:
    def __init__(self, probe: "FakeProbe", ctx: Any):
        self.probe = probe
        self.ctx = ctx

    async def step(self, index: int, step: FakeStep, timeout: float) -> Observation:
        FakeProbe.calls.append((self.ctx.attempt, index, step.do, timeout))
        FakeProbe.active += 1
        FakeProbe.peak = max(FakeProbe.peak, FakeProbe.active)
        try:
            if step.seconds:
                await asyncio.sleep(step.seconds)
            if step.do == "hang":
                await asyncio.sleep(60)
            if step.do == "fail" or (step.do == "flaky" and self.ctx.attempt < 2):
                raise StepFailed("the IVR hung up on the customer")
            if step.do == "probe_error":
                raise TargetUnreachable("connection refused by 127.0.0.1:1")
            if step.do == "crash":
                raise KeyError("boom")
            outcome = {"check_fail": Outcome.failed, "degrade": Outcome.degraded}.get(step.do, Outcome.passed)
            text = {"check_fail": "status (503) == 200", "degrade": "latency (400ms) > 300ms (degraded level)"}
            check = CheckResult("status", outcome, 200, 503 if outcome is Outcome.failed else 200, text.get(step.do, "status (200) == 200"))
            return Observation(checks=(check,), measures=step.measures)
        finally:
            FakeProbe.active -= 1


class FakeProbe:
    channel: ClassVar[str] = "fake"
    target_model: ClassVar[type] = FakeTarget
    step_model: ClassVar[type] = FakeStep
    measures: ClassVar[frozenset[str]] = frozenset({"latency", "tls_days_left"})

    calls: ClassVar[list[tuple[int, int, str, float]]] = []
    active: ClassVar[int] = 0
    peak: ClassVar[int] = 0
    closed: ClassVar[int] = 0

    @asynccontextmanager
    async def session(self, scenario: Scenario, ctx: Any):
        if scenario.target is not None and scenario.target.open_error:
            raise ProbeError("could not open a session: SIP registration refused")
        yield FakeSession(self, ctx)

    async def aclose(self) -> None:
        FakeProbe.closed += 1


@pytest.fixture(autouse=True)
def fake_channel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register FakeProbe as channel "fake" for one test, with the registry caches cleared around it."""
    probes._registry.cache_clear()
    probes.probe_class.cache_clear()
    monkeypatch.setitem(probes.BUILT_IN, "fake", f"{__name__}:FakeProbe")
    FakeProbe.calls, FakeProbe.active, FakeProbe.peak, FakeProbe.closed = [], 0, 0, 0
    yield
    probes._registry.cache_clear()
    probes.probe_class.cache_clear()


def fake(*steps: str | dict[str, Any], id: str = "fake/journey", **fields: Any) -> Scenario:
    built = tuple(FakeStep(do=s) if isinstance(s, str) else FakeStep(**s) for s in steps)
    return Scenario(id=id, name=fields.pop("name", id), channel="fake", target=fields.pop("target", None), steps=built, **fields)


@pytest.fixture
def runner_for(tmp_path: Path):
    def make(**options: Any) -> Runner:
        options.setdefault("artifacts_root", tmp_path / "artifacts")
        options.setdefault("run_id", "run-1")
        return Runner(Project(root=tmp_path), **options)

    return make


async def run_one(runner: Runner, scenario: Scenario) -> Result:
    async with runner:
        [result] = await runner.run_many([scenario])
    return result


# --------------------------------------------------------------------------- outcome mapping


async def test_all_steps_pass(runner_for) -> None:
    """Every step passing gives a passed result with one passed StepResult per step."""
    result = await run_one(runner_for(), fake("pass", {"do": "pass", "name": "second"}))
    assert result.outcome is Outcome.passed
    assert [(s.index, s.name, s.outcome) for s in result.steps] == [(0, "FakeStep", Outcome.passed), (1, "second", Outcome.passed)]
    assert (result.message, result.attempts, result.flaky, result.run_id) == ("", 1, False, "run-1")
    assert result.channel == "fake" and result.scenario_id == "fake/journey"


async def test_failed_check_fails_the_run_and_skips_later_steps(runner_for) -> None:
    """A failed check fails its step; the steps after it are skipped, not run."""
    result = await run_one(runner_for(), fake("pass", "check_fail", "pass", "pass"))
    assert result.outcome is Outcome.failed
    assert [s.outcome for s in result.steps] == [Outcome.passed, Outcome.failed, Outcome.skipped, Outcome.skipped]
    assert result.message == "step 2 (FakeStep): status (503) == 200"
    assert [c[1] for c in FakeProbe.calls] == [0, 1]


async def test_degraded_check_keeps_going_and_degrades_the_run(runner_for) -> None:
    """A degraded step does not stop the journey; the run is degraded with the check text as message."""
    result = await run_one(runner_for(), fake("degrade", "pass"))
    assert result.outcome is Outcome.degraded
    assert [s.outcome for s in result.steps] == [Outcome.degraded, Outcome.passed]
    assert result.message == "step 1 (FakeStep): latency (400ms) > 300ms (degraded level)"


async def test_step_failed_means_failed(runner_for) -> None:
    """A probe raising StepFailed gives a failed step with the exception text; later steps are skipped."""
    result = await run_one(runner_for(), fake("fail", "pass"))
    assert result.outcome is Outcome.failed
    assert [s.outcome for s in result.steps] == [Outcome.failed, Outcome.skipped]
    assert result.steps[0].message == "the IVR hung up on the customer"


async def test_probe_error_means_error(runner_for) -> None:
    """A probe raising ProbeError (target unreachable) gives `error`: we could not test."""
    result = await run_one(runner_for(), fake("pass", "probe_error", "pass"))
    assert result.outcome is Outcome.error
    assert [s.outcome for s in result.steps] == [Outcome.passed, Outcome.error, Outcome.skipped]
    assert result.message == "step 2 (FakeStep): connection refused by 127.0.0.1:1"


async def test_probe_error_opening_the_session_means_error(runner_for) -> None:
    """ProbeError while opening the session errors the first step and skips the others."""
    result = await run_one(runner_for(), fake("pass", "pass", target=FakeTarget(open_error=True)))
    assert result.outcome is Outcome.error
    assert [s.outcome for s in result.steps] == [Outcome.error, Outcome.skipped]
    assert "SIP registration refused" in result.steps[0].message
    assert FakeProbe.calls == []


async def test_crash_means_error_with_traceback_artifact(runner_for, tmp_path: Path) -> None:
    """Any other exception is our own crash: `error`, "internal error" text, traceback kept in crash.txt."""
    result = await run_one(runner_for(), fake("crash", "pass"))
    assert result.outcome is Outcome.error
    message = result.steps[0].message
    assert message.startswith("internal error: KeyError: 'boom' (traceback in ")
    crash = tmp_path / "artifacts" / "run-1" / "fake_journey" / "crash.txt"
    assert str(crash) in message
    assert "Traceback" in crash.read_text() and "KeyError: 'boom'" in crash.read_text()
    assert [(a.label, a.path, a.kind) for a in result.artifacts] == [("crash.txt", str(crash), "text")]
    assert result.steps[1].outcome is Outcome.skipped


async def test_step_that_overruns_its_timeout_fails(runner_for) -> None:
    """A step that never answers fails with "no answer within" its step timeout, and the run moves on."""
    started = time.perf_counter()
    result = await run_one(runner_for(), fake("hang", "pass", step_timeout=0.2))
    elapsed = time.perf_counter() - started
    assert result.outcome is Outcome.failed
    assert result.steps[0].message == "no answer within 200ms (step timeout)"
    assert result.steps[1].outcome is Outcome.skipped
    assert FakeProbe.calls[0][3] == 0.2  # the probe is told its timeout
    assert elapsed < 2.0


async def test_a_step_timeout_overrides_the_scenario_step_timeout(runner_for) -> None:
    """A step's own `timeout` wins over the scenario's step_timeout."""
    result = await run_one(runner_for(), fake({"do": "hang", "timeout": 0.1}, step_timeout=30))
    assert result.steps[0].message == "no answer within 100ms (step timeout)"


async def test_each_step_gets_its_own_timeout_from_when_it_began(runner_for) -> None:
    """Steps that each take most of their timeout all pass; one past it fails at its own deadline, not an earlier step's."""
    steps = [{"do": "sleep", "seconds": 0.3}] * 3 + [{"do": "sleep", "seconds": 1.5}]
    started = time.perf_counter()
    result = await run_one(runner_for(), fake(*steps, step_timeout=0.4, timeout=30))
    elapsed = time.perf_counter() - started
    assert [s.outcome for s in result.steps] == [Outcome.passed] * 3 + [Outcome.failed]
    assert result.steps[3].message == "no answer within 400ms (step timeout)"
    assert 0.85 <= result.steps[3].duration < 1.3  # its timeout and the half second of grace, from its own start
    assert elapsed < 2.5


async def test_scenario_timeout_fails_the_running_step(runner_for) -> None:
    """The scenario deadline hitting mid-step fails that step and skips the rest."""
    result = await run_one(runner_for(), fake("pass", "hang", "pass", timeout=0.3, step_timeout=30))
    assert result.outcome is Outcome.failed
    assert [s.outcome for s in result.steps] == [Outcome.passed, Outcome.failed, Outcome.skipped]
    assert result.steps[1].message == "scenario timeout (300ms) reached during this step"
    assert result.duration < 2.0


# --------------------------------------------------------------------------- retries


async def test_pass_after_a_retry_is_flaky(runner_for) -> None:
    """A run that fails, then passes on retry, is passed, flaky, with the attempt count."""
    result = await run_one(runner_for(), fake("flaky", retries=2))
    assert (result.outcome, result.attempts, result.flaky) == (Outcome.passed, 2, True)
    assert [c[0] for c in FakeProbe.calls] == [1, 2]


async def test_retries_exhausted_stay_failed(runner_for) -> None:
    """`retries: 2` means at most three attempts; a run failing every time is failed and not flaky."""
    result = await run_one(runner_for(), fake("fail", retries=2))
    assert (result.outcome, result.attempts, result.flaky) == (Outcome.failed, 3, False)
    assert len(FakeProbe.calls) == 3


async def test_errors_are_retried_too_and_passes_are_not(runner_for) -> None:
    """An `error` is retried like a failure; a pass is never retried."""
    errored = await run_one(runner_for(), fake("probe_error", retries=1))
    assert (errored.outcome, errored.attempts) == (Outcome.error, 2)
    FakeProbe.calls.clear()
    passed = await run_one(runner_for(run_id="run-2"), fake("pass", retries=3))
    assert (passed.attempts, passed.flaky, len(FakeProbe.calls)) == (1, False, 1)


async def test_retry_waits_retry_delay_without_holding_a_slot(runner_for) -> None:
    """A retry starts `retry_delay` after the failed attempt, and meanwhile another run takes the only slot."""
    scenarios = [fake("flaky", id="fake/flaky", retries=1, retry_delay=0.3), fake({"do": "sleep", "seconds": 0.1}, id="fake/other")]
    started = time.perf_counter()
    async with runner_for(concurrency=1) as runner:
        flaky, other = await runner.run_many(scenarios)
    assert (flaky.outcome, flaky.attempts, flaky.flaky) == (Outcome.passed, 2, True)
    assert time.perf_counter() - started >= 0.3
    assert [(c[0], c[2]) for c in FakeProbe.calls] == [(1, "flaky"), (1, "sleep"), (2, "flaky")]  # the other ran in the delay


async def test_a_probe_admission_replaces_the_runner_limit(runner_for) -> None:
    """A probe with admission(scenario) admits its own runs: the runner's concurrency does not cap them, the admission does."""
    admitted: list[str] = []
    gate = asyncio.Semaphore(4)

    @asynccontextmanager
    async def admission(scenario: Scenario):
        async with gate:
            admitted.append(scenario.id)
            yield

    FakeProbe.admission = staticmethod(admission)
    try:
        scenarios = [fake({"do": "sleep", "seconds": 0.05}, id=f"fake/{i}") for i in range(8)]
        async with runner_for(concurrency=1) as runner:
            results = await runner.run_many(scenarios)
    finally:
        del FakeProbe.admission
    assert FakeProbe.peak == 4
    assert sorted(admitted) == sorted(s.id for s in scenarios)
    assert all(r.outcome is Outcome.passed for r in results)


async def test_retry_artifacts_go_to_their_own_folder(runner_for, tmp_path: Path) -> None:
    """A retry keeps its evidence under attempt-N, so the first attempt's evidence is not overwritten."""
    result = await run_one(runner_for(), fake("crash", retries=1))
    folder = tmp_path / "artifacts" / "run-1" / "fake_journey"
    assert (folder / "crash.txt").is_file()
    assert (folder / "attempt-2" / "crash.txt").is_file()
    assert [a.path for a in result.artifacts] == [str(folder / "attempt-2" / "crash.txt")]


# --------------------------------------------------------------------------- run_many


async def test_concurrency_limit_is_honoured(runner_for) -> None:
    """No more than `concurrency` scenarios run at once, and all of them run."""
    scenarios = [fake({"do": "sleep", "seconds": 0.05}, id=f"fake/{i}") for i in range(9)]
    async with runner_for(concurrency=3) as runner:
        results = await runner.run_many(scenarios)
    assert FakeProbe.peak == 3
    assert [r.scenario_id for r in results] == [f"fake/{i}" for i in range(9)]  # input order
    assert all(r.outcome is Outcome.passed for r in results)


async def test_runner_closes_its_probes(runner_for) -> None:
    """Leaving the runner closes each probe it opened, once."""
    async with runner_for() as runner:
        await runner.run_many([fake("pass", id="a"), fake("pass", id="b")])
        assert FakeProbe.closed == 0
    assert FakeProbe.closed == 1


async def test_hooks_see_every_scenario(runner_for) -> None:
    """on_start and on_result (sync or async) are called once per scenario."""
    started: list[str] = []
    done: list[str] = []

    async def on_result(result: Result) -> None:
        done.append(result.scenario_id)

    async with runner_for() as runner:
        await runner.run_many([fake("pass", id="a"), fake("fail", id="b")], on_start=lambda s: started.append(s.id), on_result=on_result)
    assert sorted(started) == sorted(done) == ["a", "b"]


async def test_results_are_stored_before_run_many_returns(runner_for, tmp_path: Path) -> None:
    """With a store, every result (steps and checks included) is committed when run_many returns."""
    url = "sqlite:///" + str(tmp_path / "results.db")
    store = Store(url)
    try:
        async with runner_for(store=store, run_id="stored-run") as runner:
            results = await runner.run_many([fake("pass", "check_fail", id=f"fake/{i}") for i in range(5)])
            with Store(url) as reader:  # a separate connection sees committed rows only
                saved = reader.results(run_id="stored-run")
    finally:
        store.close()
    assert sorted(r.scenario_id for r in saved) == sorted(r.scenario_id for r in results)
    one = next(r for r in saved if r.scenario_id == "fake/0")
    assert one.outcome is Outcome.failed
    assert [s.outcome for s in one.steps] == [Outcome.passed, Outcome.failed]
    assert one.steps[1].checks[0].text == "status (503) == 200"


async def test_measures_take_each_steps_worst_value(runner_for) -> None:
    """Run measures: the largest latency, the smallest tls_days_left, plus the run's duration."""
    result = await run_one(
        runner_for(),
        fake(
            {"measures": {"latency": 0.1, "tls_days_left": 40}},
            {"measures": {"latency": 0.3, "tls_days_left": 12}},
            {"measures": {"latency": 0.2}},
        ),
    )
    assert result.measures["latency"] == 0.3
    assert result.measures["tls_days_left"] == 12
    assert result.measures["duration"] == result.duration


async def test_scenario_thresholds_degrade_or_fail_the_run(runner_for) -> None:
    """Scenario thresholds judge the run's measures: past degraded -> degraded, past failed -> failed."""
    degraded = await run_one(runner_for(), fake({"measures": {"latency": 0.4}}, thresholds={"latency": 0.25}))
    assert degraded.outcome is Outcome.degraded
    assert [c.text for c in degraded.checks] == ["latency (400ms) > 250ms (degraded level)"]
    assert degraded.message == "latency (400ms) > 250ms (degraded level)"
    failed = await run_one(runner_for(run_id="run-2"), fake({"measures": {"tls_days_left": 3}}, thresholds={"tls_days_left": {"degraded": 30, "failed": 7}}))
    assert failed.outcome is Outcome.failed
    assert failed.message == "tls_days_left (3) < 7"


async def test_thresholds_are_not_judged_after_a_failed_step(runner_for) -> None:
    """When a step failed, thresholds are not judged: the failure is the message, not a missing measure."""
    result = await run_one(runner_for(), fake("fail", thresholds={"latency": 0.25}))
    assert result.checks == ()
    assert result.message == "step 1 (FakeStep): the IVR hung up on the customer"


# --------------------------------------------------------------------------- real HTTP against the sandbox


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


def http(url: str, *steps: dict[str, Any], id: str = "http/journey", **fields: Any) -> Scenario:
    return Scenario(
        id=id,
        name=fields.pop("name", id),
        channel="http",
        target=HttpTarget(url=url),
        steps=tuple(HttpStep.model_validate(s) for s in steps),
        **fields,
    )


async def test_concurrency_limit_over_http(runner_for, sandbox: Sandbox) -> None:
    """10 scenarios of 0.2 s with concurrency 2 take about 1 s: five waves, not one and not ten."""
    scenarios = [http(sandbox.url, {"request": "GET /api/slow?ms=200"}, id=f"slow/{i}") for i in range(10)]
    runner = runner_for(concurrency=2)
    async with runner:
        await runner.run_many(scenarios[:1])  # warm the connection pool
        started = time.perf_counter()
        results = await runner.run_many(scenarios)
        elapsed = time.perf_counter() - started
    assert all(r.outcome is Outcome.passed for r in results), [r.message for r in results]
    assert 0.95 <= elapsed < 1.8, elapsed  # 1 wave would be 0.2 s, 10 waves 2 s


async def test_http_measures_and_thresholds(runner_for, sandbox: Sandbox) -> None:
    """Over HTTP, run latency is the slowest step's, duration covers all steps, and a threshold degrades the run."""
    scenario = http(
        sandbox.url,
        {"request": "GET /api/slow?ms=30"},
        {"request": "GET /api/slow?ms=150"},
        thresholds={"latency": 0.1},
    )
    result = await run_one(runner_for(), scenario)
    step_latencies = [s.measures["latency"] for s in result.steps]
    assert result.measures["latency"] == max(step_latencies) >= 0.15
    assert result.measures["duration"] >= sum(step_latencies)
    assert result.outcome is Outcome.degraded
    [check] = result.checks
    assert check.outcome is Outcome.degraded and check.text.startswith("latency (") and check.text.endswith(") > 100ms (degraded level)")


async def test_artifacts_are_kept_per_run_id(runner_for, sandbox: Sandbox, tmp_path: Path) -> None:
    """Evidence of a failing step lands in artifacts/<run id>/<scenario>/, one folder per run."""
    scenario = http(sandbox.url, {"request": "GET /api/accounts/1001", "expect": {"status": 200}}, id="billing/account lookup")
    first = await run_one(runner_for(run_id="run-a"), scenario)
    second = await run_one(runner_for(run_id="run-b"), scenario)
    for result, run_id in ((first, "run-a"), (second, "run-b")):
        assert result.outcome is Outcome.failed
        assert result.message == "step 1 (GET /api/accounts/1001): status (401) == 200"
        evidence = tmp_path / "artifacts" / run_id / "billing_account_lookup" / "step-1-response.txt"
        assert [a.path for a in result.artifacts] == [str(evidence)]
        assert evidence.read_text().startswith("HTTP 401")

