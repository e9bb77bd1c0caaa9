#!/usr/bin/env python
"""Monitor at scale: start lag, CPU and stored results for 500 / 2,000 / 10,000 scheduled HTTP scenarios.

The sandbox contact centre runs in its own process (`cxtest sandbox --port N`,
one uvicorn worker) on 127.0.0.1. For each size N this script writes N scenario
files (GET /api/status, expect 200, `schedule: {every: 60s, jitter: 2s}`, no
notifiers) into a temporary project with a SQLite store, builds an in-process
`Monitor([folder], listen="")`, lets it run for a measured window (75 s by
default: every job fires at least once) and stops it. Per size it reports:

  load s        building the Monitor: reading and validating the N scenario files
  startup s     Monitor.run until the scheduler runs (store, history, N jobs added)
  runs          results stored during the window (every one must have passed)
  lag p50..max  monitor.metrics.start_lag: the time the job was meant to fire
                (jitter included) until APScheduler submitted it (its
                EVENT_JOB_SUBMITTED listener)
  task p99      submission until the job's coroutine actually started on the loop
  GC max        the longest cyclic garbage collection in the window (the loop stands still)
  CPU s, %core  this process (monitor, SQLite threads) over the window
  sandbox       the sandbox process's CPU over the same window
  stored/s      rows in the store / window

PASS when the start lag p99 at the largest size is below 50 ms. Exit code 0 on
PASS, 1 on FAIL, 2 when a run failed or the sandbox misbehaved (the figures then
mean nothing).

    python bench/monitor_scale.py                       # 500, 2000, 10000; 75 s each (~4.5 min)
    python bench/monitor_scale.py --sizes 10000 --seconds 120
    python bench/monitor_scale.py --quick               # 200 scenarios on 10 s schedules, 15 s (CI smoke)
    python bench/monitor_scale.py --sizes 10000 --profile   # cProfile of the event-loop thread
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server_process import BenchError, ServerProcess, die_with_parent, free_port, run_bench

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 50.0
SANDBOX_START_TIMEOUT_S = 20.0
SANDBOX_STOP_TIMEOUT_S = 5.0
STATUS_PATH = "/api/status"

SCENARIO_YAML = """\
name: scale {i}
channel: http
target: {{ url: "{url}" }}
steps:
  - request: GET {path}
    expect: {{ status: 200 }}
schedule: {{ every: {every}s, jitter: {jitter}s }}
"""


# --------------------------------------------------------------------------- the sandbox (child process)



class SandboxProcess(ServerProcess):
    """`cxtest sandbox --port N` in its own process; always stopped by its pid, even on errors."""

    def __init__(self) -> None:
        port = free_port()
        script = Path(sys.executable).parent / "cxtest"
        command = (
            [str(script), "sandbox", "--port", str(port)]
            if script.exists()
            else [sys.executable, "-c", "import sys; from cxtest.cli import main; sys.exit(main())", "sandbox", "--port", str(port)]
        )
        super().__init__(
            command,
            f"http://127.0.0.1:{port}",
            ready_path=STATUS_PATH,
            name="sandbox",
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            start_timeout=SANDBOX_START_TIMEOUT_S,
            stop_timeout=SANDBOX_STOP_TIMEOUT_S,
            error=BenchError,
        )


# --------------------------------------------------------------------------- one size


@dataclass
class Figures:
    size: int
    window: float = 0.0
    load: float = 0.0
    startup: float = 0.0
    runs: int = 0
    not_passed: int = 0
    fired: int = 0  # jobs that fired at least once
    lags: list[float] = field(default_factory=list)  # seconds, scheduled (jittered) -> submitted
    task_lags: list[float] = field(default_factory=list)  # seconds, submitted -> coroutine started
    cpu: float = 0.0
    sandbox_cpu: float | None = None
    gc_pause: float = 0.0  # the longest garbage collection in the window, seconds (it stalls the loop)
    stop: float = 0.0


def write_project(folder: Path, url: str, n: int, every: float, jitter: float) -> Path:
    scenarios = folder / "scenarios"
    scenarios.mkdir(parents=True)
    (scenarios / "cxtest.yaml").write_text(f"store: sqlite:///{folder}/results.db\nartifacts: {folder}/artifacts\n")
    width = len(str(n - 1))
    for i in range(n):
        (scenarios / f"s{i:0{width}d}.yaml").write_text(SCENARIO_YAML.format(i=i, url=url, path=STATUS_PATH, every=f"{every:g}", jitter=f"{jitter:g}"))
    return scenarios


def instrument(monitor: Any, figures: Figures) -> None:
    """Time from APScheduler's submission to the job's coroutine running, per job.

    The instance attributes are set before Monitor.run, which hands `self._fire` to
    add_job and `self._on_submitted` to add_listener, so both wrappers are used.
    Submission events are dispatched once a whole batch of due jobs is submitted, and
    the tasks only start after that, so the mark is always set first.
    """
    submitted: dict[str, float] = {}
    fired: set[str] = set()
    on_submitted, fire = monitor._on_submitted, monitor._fire

    def timed_on_submitted(event: Any) -> None:
        submitted[event.job_id] = time.perf_counter()
        on_submitted(event)

    async def timed_fire(scenario_id: str) -> None:
        mark = submitted.pop(scenario_id, None)
        if mark is not None:
            figures.task_lags.append(time.perf_counter() - mark)
        fired.add(scenario_id)
        await fire(scenario_id)

    monitor._on_submitted = timed_on_submitted
    monitor._fire = timed_fire
    monitor._bench_fired = fired


class GcPauses:
    """The longest cyclic garbage collection while counting (gc.callbacks): the event loop stands still meanwhile."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.counting = False
        self._began = 0.0

    def __call__(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self.counting:
            self.longest = max(self.longest, time.perf_counter() - self._began)


async def measure(monitor: Any, figures: Figures, seconds: float, sandbox: SandboxProcess, profiler: Any) -> None:
    stop = asyncio.Event()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    began = time.perf_counter()
    task = asyncio.create_task(monitor.run(stop), name="monitor")
    while not monitor.started.is_set():
        if task.done():
            await task  # raises what stopped it
            raise BenchError("the monitor stopped during start-up")
        await asyncio.sleep(0.005)
    figures.startup = time.perf_counter() - began
    monitor.metrics.start_lag.clear()  # nothing fired yet; only the window's lags count
    sandbox_before = sandbox.cpu_seconds()
    cpu, wall = time.process_time(), time.perf_counter()
    pauses.counting = True
    if profiler is not None:
        profiler.enable()
    try:
        await asyncio.sleep(seconds)
    finally:
        pauses.counting = False
        gc.callbacks.remove(pauses)
        if profiler is not None:
            profiler.disable()
    figures.gc_pause = pauses.longest
    figures.window = time.perf_counter() - wall
    figures.cpu = time.process_time() - cpu
    sandbox_after = sandbox.cpu_seconds()
    if sandbox_before is not None and sandbox_after is not None:
        figures.sandbox_cpu = sandbox_after - sandbox_before
    figures.lags = list(monitor.metrics.start_lag)
    figures.fired = len(monitor._bench_fired)
    stopping = time.perf_counter()
    stop.set()
    await task
    figures.stop = time.perf_counter() - stopping


def count_rows(db: Path) -> tuple[int, int]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        total, passed = conn.execute("SELECT count(*), coalesce(sum(outcome = 'passed'), 0) FROM results").fetchone()
    return int(total), int(passed)


def run_size(n: int, sandbox: SandboxProcess, seconds: float, every: float, jitter: float, profile: bool) -> Figures:
    from cxtest.monitor import Monitor

    figures = Figures(size=n)
    with tempfile.TemporaryDirectory(prefix="cxtest-monitor-scale-") as tmp:
        folder = write_project(Path(tmp), sandbox.url, n, every, jitter)
        gc.collect()
        began = time.perf_counter()
        monitor = Monitor([folder], listen="")
        figures.load = time.perf_counter() - began
        if len(monitor.scenarios) != n:
            raise BenchError(f"{len(monitor.scenarios)} scenarios scheduled, {n} written")
        instrument(monitor, figures)
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
        asyncio.run(measure(monitor, figures, seconds, sandbox, profiler))
        figures.runs, passed = count_rows(Path(tmp) / "results.db")
        figures.not_passed = figures.runs - passed
        if profiler is not None:
            print_profile(profiler, n)
    return figures


def print_profile(profiler: Any, n: int, top: int = 25) -> None:
    import pstats

    stats = pstats.Stats(profiler)
    # cProfile sees the event loop's thread only: the store's worker threads are not in these figures.
    print(f"\ncProfile of the measured window, {n:,} scenarios (event-loop thread only), top {top} by own time:")
    stats.sort_stats("tottime").print_stats(top)
    print(f"top {top} by cumulative time, cxtest / alerts / probes code only:")
    stats.sort_stats("cumulative").print_stats(r"(cxtest|alerts|probes)/", top)


# --------------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values, in milliseconds; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank] * 1000


def report(all_figures: list[Figures], every: float, jitter: float) -> None:
    headers = (
        "jobs", "load s", "startup s", "runs", "fired", "lag p50 ms", "p95 ms", "p99 ms", "max ms",
        "task p99 ms", "GC max ms", "CPU s", "% core", "sandbox CPU s", "stored/s",
    )
    rows = []
    for f in all_figures:
        rows.append(
            (
                f"{f.size:,}",
                f"{f.load:.2f}",
                f"{f.startup:.2f}",
                f"{f.runs:,}",
                f"{f.fired:,}",
                f"{pct(f.lags, 50):.2f}",
                f"{pct(f.lags, 95):.2f}",
                f"{pct(f.lags, 99):.2f}",
                f"{max(f.lags) * 1000 if f.lags else float('nan'):.2f}",
                f"{pct(f.task_lags, 99):.2f}",
                f"{f.gc_pause * 1000:.0f}",
                f"{f.cpu:.1f}",
                f"{f.cpu / f.window * 100:.0f}%",
                "n/a" if f.sandbox_cpu is None else f"{f.sandbox_cpu:.1f}",
                f"{f.runs / f.window:.1f}",
            )
        )
    window = statistics.median(f.window for f in all_figures)
    title = f"cxtest monitor, HTTP scenarios every {every:g}s (jitter {jitter:g}s), {window:.0f}s window per size"
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for header in headers:
            table.add_column(header, justify="right")
        for row in rows:
            table.add_row(*row)
        Console(width=max(150, Console().width)).print(table)
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(title)
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print(
        "lag: from the time a job was meant to fire (start offset + interval + jitter, as APScheduler"
        " scheduled it) to its submission; task: submission to the coroutine starting on the event loop;"
        " GC max: the longest garbage collection (the loop stands still meanwhile)"
    )



def _interrupt(_signum: int, _frame: Any) -> None:
    # As SIGINT: asyncio.run then cancels the monitor cleanly before KeyboardInterrupt.
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="scenario counts, comma-separated (default 500,2000,10000)")
    parser.add_argument("--seconds", type=float, help="measured window per size (default: every + jitter + 13 s, so 75 s)")
    parser.add_argument("--every", type=float, help="schedule interval in seconds (default 60)")
    parser.add_argument("--jitter", type=float, default=2.0, help="schedule jitter in seconds (default 2)")
    parser.add_argument("--quick", action="store_true", help="200 scenarios every 10 s for 15 s (unless given): a CI smoke run")
    parser.add_argument("--profile", action="store_true", help="cProfile the event-loop thread during each window (slows it)")
    args = parser.parse_args(argv)
    # --quick only changes the defaults: `--quick --sizes 500` is 500 scenarios for 15 s.
    sizes_text = args.sizes or ("200" if args.quick else "500,2000,10000")
    try:
        sizes = [int(s.replace("_", "")) for s in sizes_text.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: not a list of numbers: {sizes_text!r}")
    if args.every is None:
        args.every = 10.0 if args.quick else 60.0
    if args.seconds is None:
        args.seconds = 15.0 if args.quick else args.every + args.jitter + 13.0
    if not sizes or min(sizes) < 1 or args.seconds <= 0 or args.every <= 0 or args.jitter < 0:
        parser.error("--sizes, --seconds and --every must be positive, --jitter not negative")
    if args.seconds < args.every + args.jitter:
        print(f"note: a {args.seconds:g}s window is shorter than the {args.every:g}s interval + {args.jitter:g}s jitter: not every job fires")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job may inherit SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM (a CI timeout) unwinds like Ctrl-C
    sys.path.insert(0, str(ROOT))
    from cxtest import logs

    logs.configure("warning", json=True)  # the monitor's info lines would flood the table

    started = time.perf_counter()
    results: list[Figures] = []
    with SandboxProcess() as sandbox:
        for n in sizes:
            print(f"{n:,} scenarios: {args.seconds:g}s window ...", flush=True)
            figures = run_size(n, sandbox, args.seconds, args.every, args.jitter, args.profile)
            results.append(figures)
            if figures.not_passed:
                report(results, args.every, args.jitter)
                raise BenchError(f"{figures.not_passed} of {figures.runs} runs at {n:,} scenarios did not pass; the figures would mean nothing")
            if figures.runs == 0:
                raise BenchError(f"no run completed at {n:,} scenarios")
    report(results, args.every, args.jitter)
    largest = max(results, key=lambda f: f.size)
    p99 = pct(largest.lags, 99)
    verdict = "PASS" if p99 < TARGET_MS else "FAIL"
    print(f"start lag p99 at {largest.size:,} scenarios: {p99:.2f} ms (target < {TARGET_MS:g} ms): {verdict}")
    sandbox_note = "sandbox: `cxtest sandbox`, one uvicorn worker, separate process"
    print(f"(bench took {time.perf_counter() - started:.0f}s; {sandbox_note}; {os.cpu_count()} CPUs shared by both)")
    if args.profile:
        print("note: --profile was on; cProfile slows the event loop, so the lags above are pessimistic")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    run_bench(main, "the sandbox was stopped")
