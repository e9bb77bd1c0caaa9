"""Concurrent IVR scenarios on one machine: how many keep their step timings within 100 ms of a single call.

    .venv/bin/python bench/ivr_concurrency.py                  # levels 1, 2, 4, 8, 12, 16
    .venv/bin/python bench/ivr_concurrency.py --quick          # levels 1, 2: the smoke run
    .venv/bin/python bench/ivr_concurrency.py --levels 1,3 --repeat 5

The sandbox IVR runs in its own process (IvrProcess), so its 20 ms media clock
does not share this process's GIL with speech-to-text. One scenario, written to
a temporary folder, calls it as a caller would, with everything a real run does
(the call recorded, every prompt transcribed by faster-whisper in this process,
the evidence written):

    expect_prompt "Welcome to Acme Bank"         the ~10 s menu, heard to its end
    send_dtmf 3
    expect_prompt "We are open Monday to Friday"
    expect_hangup

A warm-up call (the IVR's opening-hours entry) comes first: the first prompt a
process matches loads the pronouncing dictionary on the event loop (~0.3 s).
Then the scenario runs alone until --repeat runs passed without a whisper retry
(below); those are the single-call reference. Then, for each level N, N copies
run at once (Runner concurrency N, all started together, so their prompts play,
end and are transcribed at the same moments: the worst case). What is compared:

  step end   when each step ended, in seconds after the call was answered (step
             1's start + time_to_answer). A late end is a late key press, and an
             IVR counts its no-input timer from the end of its prompt.
  latency    the prompt_latency measure of the prompt steps (listening start ->
             the prompt's first speech), which the IVR's pace decides.

Single calls already differ by 60-250 ms in their step ends (the prompt listener
looks every 100 ms, the last sentence's transcription varies by ~50 ms), so one
call is ~100 ms off the median of a few others about half the time. A step is
therefore late by how much it ended after the LATEST single run's end of that
step: 0 or less is within what one call alone does.

Whisper retries. faster-whisper decodes again at higher temperatures when a
decode comes out repetitive, and a piece then takes 1-4 s instead of 0.5. This
happened in about half the calls until the probe stopped putting 300 ms of
silence before a piece's context (tiny.en heard "2.0. 2.0. 2.0." in it before
"...an agent, press 0"); none happened in the runs since. Each transcription is
still traced to its run (a context variable set when the run starts, which
asyncio.to_thread carries to the worker thread), faster-whisper's own debug
messages tell the retries, and the reference and the verdict use the runs
without one, so a retry, should one come back, shows as such and not as
concurrency. A level runs again (at most 3 times) while every run of it had a
retry; the runs with one are counted and their p95 shown beside.

Printed first, the reference: per step the median end, the spread of the end
over the reference runs, and for prompt steps prompt_latency and
prompt_duration; then how many single runs had a retry and how much later their
step 1 ended. Then one row per level:

  N               scenarios run at once
  passed          runs that passed / runs
  retried         runs with a whisper retry (left out of the late columns)
  late p50/p95/max  step end - the latest single run's end of that step, every
                  step of the runs without a retry, ms (negative: earlier)
  all p95         the same p95 over every run, retried ones included
  lat dev p95     |prompt_latency - the reference median|, prompt steps, ms
  STT ms          mean / max wall time of one transcription (a prompt is cut at
                  its pauses and transcribed piece by piece as it plays), the
                  wait for the model included: its growth over N=1 is the
                  speech-to-text queue
  STT at once     most transcriptions under way at the same time
  loop lag        the longest this process's event loop was late waking from a
                  10 ms sleep, ms: the media clock and every listener stalled
                  this long
  CPU %           this process's CPU over the level's wall time, % of one core
                  (whisper's threads included)
  IVR %           the IVR child's, from /proc/<pid>/stat
  other %         every other process on the machine (from /proc/stat): more
                  than a few % means the figures are not this machine's alone
  wall s          the level's wall time

A level is sustained when every run passed and its late p95 is at most 100 ms;
the levels stop at the first that is not. The last line, "sustained: N
concurrent IVR scenarios (step timings within 100 ms of a single call)", names
the largest sustained level (0: not even one call). The exit code is 0 when N=1
is sustained, 1 when not, and 2 when no single run passed, leaving nothing to
compare with. On this 2-core machine N=1 is sustained and N=2 is not: two
calls started together end their prompts together, and their last pieces and
fits (about 0.5 + 0.13 s of one core each) then share the two cores with the
event loop and the IVR; bench/README.md has the figures. Run it on an otherwise
idle machine: another busy process takes the CPU the transcriptions need (watch
other %).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import logging
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxtest.loader import load_scenario  # noqa: E402
from cxtest.model import Outcome, Project, Result, Scenario  # noqa: E402
from cxtest.runner import Runner  # noqa: E402
from cxtest.sandbox.ivr import IvrProcess  # noqa: E402
from probes.voice import speech  # noqa: E402

TARGET_MS = 100.0
DEFAULT_LEVELS = "1,2,4,8,12,16"
QUICK_LEVELS = "1,2"
REQUIRED_LEVEL = 1  # the exit code's goal; N=2 needs two transcriptions at once (see the docstring)
ROUNDS = 3  # a level runs again, at most this many times, while every run of it had a whisper retry
LOOP_TICK_S = 0.01

SCENARIO = """\
name: IVR concurrency {index}
channel: ivr
target: {{ uri: "{uri}" }}
timeout: 60s
step_timeout: 25s
steps:
  - expect_prompt: "Welcome to Acme Bank"
    within: 3s
  - send_dtmf: "3"
  - expect_prompt: "We are open Monday to Friday"
  - expect_hangup: 10s
"""

WARM_UP = """\
name: IVR concurrency warm-up
channel: ivr
target: {{ uri: "{uri}" }}
timeout: 30s
steps:
  - expect_prompt: "We are open Monday to Friday"
  - expect_hangup: 10s
"""

running_scenario: contextvars.ContextVar[str] = contextvars.ContextVar("running_scenario", default="")


@dataclass
class Timings:
    """One run's steps: end after the answer, prompt_latency and prompt_duration (None: not a prompt step)."""

    passed: bool
    retried: bool  # whisper decoded one of its prompt pieces more than once
    names: list[str]
    ends: list[float]
    latencies: list[float | None]
    durations: list[float | None]
    message: str


def timings(result: Result, retried: bool) -> Timings:
    steps = result.steps
    answered = steps[0].started + steps[0].measures.get("time_to_answer", 0.0)
    return Timings(
        passed=result.outcome is Outcome.passed,
        retried=retried,
        names=[s.name for s in steps],
        ends=[s.started + s.duration - answered for s in steps],
        latencies=[s.measures.get("prompt_latency") for s in steps],
        durations=[s.measures.get("prompt_duration") for s in steps],
        message=result.message,
    )


def clean(runs: list[Timings]) -> list[Timings]:
    return [r for r in runs if r.passed and not r.retried]


def median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


@dataclass
class Reference:
    """Per step, over the single-call runs: the median and latest end, the median latency and duration."""

    runs: list[Timings]
    names: list[str]
    ends: list[float]
    latest: list[float]
    latencies: list[float | None]
    durations: list[float | None]

    @classmethod
    def of(cls, runs: list[Timings]) -> Reference:
        steps = range(len(runs[0].ends))
        return cls(
            runs=runs,
            names=runs[0].names,
            ends=[statistics.median(r.ends[i] for r in runs) for i in steps],
            latest=[max(r.ends[i] for r in runs) for i in steps],
            latencies=[median_or_none([r.latencies[i] for r in runs]) for i in steps],
            durations=[median_or_none([r.durations[i] for r in runs]) for i in steps],
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class SttMeter(logging.Handler):
    """Times every transcription of the process's whisper engine and notes which runs had a retry.

    It wraps the engine's transcribe on the instance, and hears faster-whisper's debug
    message for each retry ("... threshold is not met with temperature ...").
    """

    def __init__(self, engine: speech.WhisperEngine):
        super().__init__(logging.DEBUG)
        self._transcribe = engine.transcribe
        engine.transcribe = self._timed  # type: ignore[method-assign]
        whisper_log = logging.getLogger("faster_whisper")
        whisper_log.setLevel(logging.DEBUG)
        whisper_log.propagate = False  # its per-segment debug lines are for this meter only
        whisper_log.addHandler(self)
        self._lock = threading.Lock()  # transcriptions run in worker threads
        self.seconds: list[float] = []
        self.retried: set[str] = set()  # the scenario ids of the runs with a retry
        self.in_progress = 0
        self.most_at_once = 0

    def _timed(self, pcm: bytes) -> speech.Transcript:
        with self._lock:
            self.in_progress += 1
            self.most_at_once = max(self.most_at_once, self.in_progress)
        started = time.perf_counter()
        try:
            return self._transcribe(pcm)
        finally:
            with self._lock:
                self.in_progress -= 1
                self.seconds.append(time.perf_counter() - started)

    def emit(self, record: logging.LogRecord) -> None:
        if "is not met with temperature" in record.getMessage():
            with self._lock:
                self.retried.add(running_scenario.get())

    def take_retried(self) -> set[str]:
        with self._lock:
            retried, self.retried = self.retried, set()
            return retried

    def reset(self) -> None:
        with self._lock:
            self.seconds = []
            self.retried = set()
            self.most_at_once = self.in_progress


class LoopLag:
    """How late the running loop wakes from short sleeps: its worst stall while running."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _watch(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(LOOP_TICK_S)
            self.worst = max(self.worst, time.perf_counter() - asked - LOOP_TICK_S)


def ivr_pid() -> int:
    """The IVR child: IvrProcess starts it from this thread as `python -m cxtest.sandbox.ivr`."""
    me = os.getpid()
    for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split():
        if b"cxtest.sandbox.ivr" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise RuntimeError("the sandbox IVR child process was not found")


@dataclass
class Cpu:
    """CPU seconds so far: this process, the IVR child, every process on the machine; and the wall clock."""

    ours: float
    ivr: float
    machine: float
    wall: float

    @classmethod
    def now(cls, ivr: int) -> Cpu:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        ivr_fields = Path(f"/proc/{ivr}/stat").read_text().rsplit(")", 1)[1].split()
        # /proc/stat's first line: user nice system idle iowait irq softirq steal, all cores, in ticks.
        machine = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = sum(machine) - machine[3] - machine[4]
        tick = os.sysconf("SC_CLK_TCK")
        return cls(usage.ru_utime + usage.ru_stime, (int(ivr_fields[11]) + int(ivr_fields[12])) / tick, busy / tick, time.perf_counter())

    def __sub__(self, before: Cpu) -> Cpu:
        return Cpu(self.ours - before.ours, self.ivr - before.ivr, self.machine - before.machine, self.wall - before.wall)


@dataclass
class Level:
    calls: int
    runs: list[Timings]
    stt_seconds: list[float]
    stt_at_once: int
    loop_lag_s: float
    cpu: Cpu

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.runs)

    @property
    def retried(self) -> int:
        return sum(r.retried for r in self.runs)

    def late_ms(self, ref: Reference, retried: bool = False) -> list[float]:
        """Step end - the latest single run's, every step of the runs without a retry (or of every run), ms."""
        return [(end - ref.latest[i]) * 1000 for r in self.runs if retried or not r.retried for i, end in enumerate(r.ends)]

    def latency_deviations_ms(self, ref: Reference) -> list[float]:
        deviations = []
        for run in self.runs:
            for latency, expected in zip(run.latencies, ref.latencies):
                if latency is not None and expected is not None:
                    deviations.append(abs(latency - expected) * 1000)
        return deviations

    def sustained(self, ref: Reference) -> bool:
        return self.passed == len(self.runs) and percentile(self.late_ms(ref), 95) <= TARGET_MS


async def run_rounds(
    scenarios: list[Scenario], project: Project, artifacts: Path, meter: SttMeter, ivr: int, enough: int, rounds: int
) -> Level:
    """Run the scenarios all at once, again until `enough` runs passed without a whisper retry (at most `rounds` times)."""

    def starting(scenario: Scenario) -> None:
        running_scenario.set(scenario.id)  # in the run's own task: its transcriptions carry it to their threads

    meter.reset()
    runs: list[Timings] = []
    before = Cpu.now(ivr)
    async with LoopLag() as lag, Runner(project, concurrency=len(scenarios), artifacts_root=artifacts) as runner:
        for _ in range(rounds):
            results = await runner.run_many(scenarios, on_start=starting)
            retried = meter.take_retried()
            runs += [timings(r, r.scenario_id in retried) for r in results]
            if len(clean(runs)) >= enough:
                break
    cpu = Cpu.now(ivr) - before
    return Level(len(scenarios), runs, meter.seconds, meter.most_at_once, lag.worst, cpu)


def show_reference(ref: Reference, singles: list[Timings]) -> None:
    kind = "without a whisper retry" if not ref.runs[0].retried else "all with a whisper retry: no run had none"
    print(f"single-call reference: {len(ref.runs)} runs alone, {kind}; s after the call was answered")
    print(f"  {'step':<40} {'end s':>7} {'spread ms':>9} {'latency s':>9} {'duration s':>10}")
    for i, name in enumerate(ref.names):
        spread = (ref.latest[i] - min(r.ends[i] for r in ref.runs)) * 1000
        latency = f"{ref.latencies[i]:9.3f}" if ref.latencies[i] is not None else f"{'':>9}"
        duration = f"{ref.durations[i]:10.3f}" if ref.durations[i] is not None else ""
        print(f"  {name[:40]:<40} {ref.ends[i]:7.3f} {spread:9.0f} {latency} {duration}".rstrip())
    retried = [r for r in singles if r.retried and r.passed]
    later = f"; their step 1 ended {statistics.median(r.ends[0] for r in retried) - ref.ends[0]:+.2f} s from the median" if retried else ""
    print(f"  single runs: {len(singles)}, with a whisper retry: {len(retried)}{later}")
    print()


HEADER = (
    f"{'N':>3} {'passed':>7} {'retried':>7} {'late ms':>17} {'all':>5} {'lat dev':>7} {'STT ms':>11} {'STT':>7} "
    f"{'loop lag':>8} {'CPU':>5} {'IVR':>4} {'other':>5} {'wall':>5}\n"
    f"{'':>3} {'':>7} {'':>7} {'p50   p95   max':>17} {'p95':>5} {'p95 ms':>7} {'mean   max':>11} {'at once':>7} "
    f"{'max ms':>8} {'%':>5} {'%':>4} {'%':>5} {'s':>5}"
)


def show(level: Level, ref: Reference) -> str:
    late, stt, cpu = level.late_ms(ref), [s * 1000 for s in level.stt_seconds], level.cpu
    other = cpu.machine - cpu.ours - cpu.ivr
    return (
        f"{level.calls:>3} {f'{level.passed}/{len(level.runs)}':>7} {level.retried:>7} "
        f"{percentile(late, 50):5.0f} {percentile(late, 95):5.0f} {max(late, default=float('nan')):5.0f} "
        f"{percentile(level.late_ms(ref, retried=True), 95):5.0f} {percentile(level.latency_deviations_ms(ref), 95):7.0f} "
        f"{statistics.mean(stt) if stt else float('nan'):5.0f} {max(stt, default=float('nan')):5.0f} {level.stt_at_once:>7} "
        f"{level.loop_lag_s * 1000:8.0f} {cpu.ours / cpu.wall:5.0%} {cpu.ivr / cpu.wall:4.0%} {other / cpu.wall:5.0%} {cpu.wall:5.1f}"
    )


async def bench(levels: list[int], repeat: int, folder: Path) -> int:
    project = Project(root=folder)
    artifacts = folder / "artifacts"
    meter = SttMeter(speech.stt_engine("whisper"))  # loads the model before any call

    with IvrProcess() as ivr:
        pid = ivr_pid()
        warm_up = folder / "warm_up.yaml"
        warm_up.write_text(WARM_UP.format(uri=ivr.uri("hours")))
        await run_rounds([load_scenario(warm_up, project)], project, artifacts, meter, pid, enough=0, rounds=1)
        scenarios = []
        for index in range(1, max(levels) + 1):
            path = folder / f"call_{index:02}.yaml"
            path.write_text(SCENARIO.format(index=index, uri=ivr.uri("ivr")))
            scenarios.append(load_scenario(path, project))

        singles = (await run_rounds(scenarios[:1], project, artifacts, meter, pid, enough=repeat, rounds=ROUNDS * repeat)).runs
        basis = clean(singles) or [r for r in singles if r.passed]
        if not basis:
            print(f"no single run passed: {singles[-1].message}")
            return 2
        ref = Reference.of(basis)
        show_reference(ref, singles)

        print(HEADER)
        sustained = 0
        for calls in levels:
            level = await run_rounds(scenarios[:calls], project, artifacts, meter, pid, enough=1, rounds=ROUNDS)
            print(show(level, ref), flush=True)
            for run in level.runs:
                if not run.passed:
                    print(f"      failed: {run.message}")
            if not level.sustained(ref):
                break
            sustained = calls
    print(f"sustained: {sustained} concurrent IVR scenarios (step timings within {TARGET_MS:.0f} ms of a single call)")
    return 0 if sustained >= REQUIRED_LEVEL else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help="concurrent scenarios per level, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="single runs without a whisper retry for the reference")
    parser.add_argument("--quick", action="store_true", help=f"levels {QUICK_LEVELS}, a reference of 2 runs: the smoke run")
    args = parser.parse_args()
    levels = [int(n) for n in (QUICK_LEVELS if args.quick else args.levels).split(",")]
    repeat = 2 if args.quick else args.repeat
    with tempfile.TemporaryDirectory(prefix="cxtest-ivr-bench-") as tmp:
        return asyncio.run(bench(levels, repeat, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
