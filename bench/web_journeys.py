#!/usr/bin/env python
"""Web journeys: three-step journeys through the sandbox site, one shared browser versus a browser per run.

The sandbox (cxtest.sandbox.server.serve: one uvicorn worker, no IVR, so SIP port
5080 stays free) runs in its own process on 127.0.0.1. The journey is the help
page's search, three steps:

    goto /site/help
    fill "lost card" into the search box (role=searchbox[name='Search help'])
    expect_text: the answer count (data-testid=help-count) equals "1 answer"

For each concurrency C in --concurrency, one after the other, --journeys copies of it run:

  shared   one Runner, Runner.run_many with concurrency C: one WebProbe, so one
           Chromium process (launched on the first run, inside the window) and a
           fresh browser context per run; the browser is closed at the end of the
           window.
  per-run  the same journeys, at most C at once, each through its own Runner that
           is closed after it: a fresh WebProbe per run, so every run starts the
           Playwright driver (node) and a Chromium of its own, and closes both. The
           probe has no setting to launch a browser per run; this is the way the
           public API allows, and what running scenarios one `cxtest run` at a time
           costs.

Tracing is off (target.trace: off) unless --trace says otherwise: the probe's
default, retain-on-failure, records a trace with screenshots and DOM snapshots in
every run of both modes alike; that is the cost of the evidence, not of the browser,
and this benchmark is about sharing the browser. No result store either. One journey
per mode is run first as a warm-up (imports, the Chromium binary in the page cache,
the sandbox's code paths), not measured.

Columns, per mode and C:

  journeys      journeys run in the window
  failed        those that did not pass (any outcome but passed)
  wall s        the window: the first run starting -> the last browser closed
  journeys/min  journeys / wall s * 60
  p50 s         the median run's duration (Result.duration; for per-run it includes
                starting the browser, which happens when the run opens its session)
  peak PSS MB   the largest sum, over the samples, of the proportional set size
                (/proc/PID/smaps_rollup, via psutil) of this process and every
                descendant but the sandbox: Playwright's node driver(s) and every
                Chromium process. PSS shares each shared page among the processes
                that map it, so the sum counts Chromium's shared libraries once.
                Read every 500 ms (reading it costs the kernel a walk of every
                mapping) by a thread of this process.
  peak RSS MB   the same with resident set sizes, which count shared pages once per
                process: an upper bound, for comparison; read every 100 ms
  procs         the most processes in that tree at one sample (every 100 ms)
  CPU s         user + system CPU of the same tree over the window: this process
                (the sampler thread's own CPU taken out), the live descendants, and
                the processes that ended in the window (their parents reaped them,
                so the kernel added their CPU to the parents' children-times). This
                process is a child subreaper: Chromium's zygote outlives the browser
                process, and without it the zygote and every renderer it reaped
                would be handed to init and their CPU lost (40-60% of the total).
  CPU s/journey CPU s / journeys
  sandbox % core  the sandbox process's CPU over the window, % of one core
  others % core   the machine's busy CPU over the window (/proc/stat, all cores)
                minus all of the above and the sampler's: other work on the
                machine, or the kernel's own threads; on 2 cores anything much
                above 0% slowed the window. (The load average says little here:
                it counts Chromium's many runnable threads, 20-30 at concurrency 8.)

then the time to start Playwright's node driver and its PSS (median of three starts,
no browser): per-run pays it in every journey. Then per C the ratio shared / per-run
of journeys per minute and of peak PSS. There is no target: the figures are
reported, not judged. Exit code 0 when every journey passed, 2 when one did not or
the benchmark could not run (the figures then mean nothing).

    .venv/bin/python bench/web_journeys.py                          # 100 journeys, concurrency 1, 4 and 8
    .venv/bin/python bench/web_journeys.py --concurrency 4 --journeys 200
    .venv/bin/python bench/web_journeys.py --trace retain-on-failure
    .venv/bin/python bench/web_journeys.py --quick                  # 4 journeys at concurrency 2 (the CI smoke run)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server_process import BenchError, ServerProcess, die_with_parent, free_port, run_bench

ROOT = Path(__file__).resolve().parent.parent
STATUS_PATH = "/api/status"
SANDBOX_START_TIMEOUT_S = 20.0
SANDBOX_STOP_TIMEOUT_S = 5.0
SAMPLE_EVERY_S = 0.1
# Reading PSS makes the kernel walk every mapping: 20-40 ms for a browser's ~17 processes on this
# machine, a third of a core at 10 Hz. RSS is cheap (statm), so PSS is read every 5th sample only.
PSS_EVERY = 5
SETTLE_TIMEOUT_S = 10.0  # for the last window's browsers to be gone before the next starts
SHOWN_FAILURES = 3  # per mode and level
MB = 1024 * 1024

JOURNEY = """\
name: Help search finds the lost card answer
channel: web
target: {{ url: "${{env:CXTEST_SANDBOX_URL}}", trace: "{trace}" }}
steps:
  - goto: /site/help
  - fill: {{ selector: "role=searchbox[name='Search help']", value: "lost card" }}
  - expect_text: {{ selector: "data-testid=help-count", equals: "1 answer" }}
"""




def sandbox() -> ServerProcess:
    """The sandbox app alone (`cxtest sandbox` would also bind SIP port 5080), one uvicorn worker."""
    port = free_port()
    serve = "import sys; from cxtest.sandbox.server import serve; serve('127.0.0.1', int(sys.argv[1]))"
    return ServerProcess(
        [sys.executable, "-c", serve, str(port)],
        f"http://127.0.0.1:{port}",
        ready_path=STATUS_PATH,
        name="sandbox",
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        start_timeout=SANDBOX_START_TIMEOUT_S,
        stop_timeout=SANDBOX_STOP_TIMEOUT_S,
        error=BenchError,
    )


# --------------------------------------------------------------------------- the process tree


def tree(left_out: int) -> list[Any]:
    """This process and its descendants but the sandbox (pid `left_out`; serve() runs uvicorn in-process, no children)."""
    import psutil

    me = psutil.Process()
    return [me] + [p for p in me.children(recursive=True) if p.pid != left_out]


def become_subreaper() -> None:
    """Have the descendants that outlive their parent handed to this process rather than to init (Linux prctl).

    When a browser closes, Chromium's zygote (which forked and reaped every renderer) and
    crashpad handler outlive the browser process. Handed to init, they and the CPU of every
    renderer go out of this process's children-times unseen: 40-60% of the CPU was missing
    without this, against /proc/stat on an otherwise idle machine.
    """
    import ctypes

    if ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1) != 0:  # PR_SET_CHILD_SUBREAPER
        raise BenchError(f"cannot become a child subreaper: {os.strerror(ctypes.get_errno())}")


def reap_orphans(left_out: int) -> None:
    """Reap the ended Chromium processes handed to this process; their CPU joins its children-times."""
    import psutil

    for child in psutil.Process().children():
        # Only Chromium's (chromium, chrome_crashpad...): the Playwright driver is asyncio's to reap.
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if child.pid != left_out and child.name().startswith("chrom") and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, 0)


def tree_cpu(left_out: int) -> float:
    """User + system CPU of the tree so far, with what its ended processes left in their parents' children-times.

    A process that ended but is not yet reaped (a zombie) still shows its own times here.
    """
    import psutil

    total = 0.0
    for process in tree(left_out):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


class MemorySampler:
    """A thread that sums the tree's PSS and RSS every SAMPLE_EVERY_S and keeps the peaks."""

    def __init__(self, left_out: int) -> None:
        self.left_out = left_out
        self.peak_pss = self.peak_rss = 0
        self.peak_processes = 0
        self.pss_readable = True
        self.samples = 0
        self.cpu = 0.0  # the thread's own CPU, taken out of the tree's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        began = time.thread_time()
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_EVERY_S):
                break
        self.sample()  # the last moment of the window
        self.cpu = time.thread_time() - began

    def sample(self) -> None:
        import psutil

        with_pss = self.pss_readable and self.samples % PSS_EVERY == 0
        reap_orphans(self.left_out)
        pss = rss = 0
        processes = 0
        for process in tree(self.left_out):
            try:
                if with_pss:
                    memory = process.memory_full_info()
                    pss += memory.pss
                else:
                    memory = process.memory_info()
                rss += memory.rss
                processes += 1
            except psutil.AccessDenied:
                self.pss_readable = with_pss = False  # smaps_rollup unreadable: RSS only from now on
            except psutil.Error:
                pass  # it ended between the listing and the reading (a zombie has no memory either)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss)
        if with_pss:
            self.peak_pss = max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, processes)


def machine_busy() -> float:
    """CPU seconds every core of the machine has spent busy so far (psutil's /proc/stat; steal counted as busy)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal  # guest time is already inside user and nice


def settle(left_out: int) -> None:
    """Wait until the previous window's drivers and browsers are gone, so they count in no other window."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        reap_orphans(left_out)
        left = tree(left_out)[1:]
        if not left:
            return
        if time.monotonic() > deadline:
            names = sorted({p.name() for p in left})
            raise BenchError(f"processes of the last window still alive after {SETTLE_TIMEOUT_S:g}s: {', '.join(names)}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- the journeys


@dataclass
class Window:
    mode: str  # "shared" or "per-run"
    concurrency: int
    journeys: int = 0
    failed: int = 0
    wall: float = 0.0
    durations: list[float] = field(default_factory=list)
    peak_pss: int = 0
    peak_rss: int = 0
    pss_readable: bool = True
    peak_processes: int = 0
    cpu: float = 0.0
    sampler_cpu: float = 0.0
    sandbox_cpu: float = 0.0
    others_cpu: float = 0.0  # the machine's busy CPU that was none of the above: other work, or the kernel's
    problems: list[str] = field(default_factory=list)

    @property
    def per_minute(self) -> float:
        return self.journeys / self.wall * 60 if self.wall else 0.0


def copies(template: Any, prefix: str, n: int) -> list[Any]:
    """n scenarios with their own ids (so their own artifact folders)."""
    return [template.model_copy(update={"id": f"{prefix}/{i}"}) for i in range(n)]


async def run_shared(scenarios: list[Any], concurrency: int, project: Any, folder: Path) -> list[Any]:
    from cxtest.runner import Runner

    async with Runner(project, concurrency=concurrency, artifacts_root=folder / "artifacts") as runner:
        return await runner.run_many(scenarios)


async def run_per_run(scenarios: list[Any], concurrency: int, project: Any, folder: Path) -> list[Any]:
    import asyncio

    from cxtest.runner import Runner

    limit = asyncio.Semaphore(concurrency)

    async def one(scenario: Any) -> Any:
        async with limit:
            # Closing the Runner closes its WebProbe: the browser and the Playwright driver end with the run.
            async with Runner(project, concurrency=1, artifacts_root=folder / "artifacts") as runner:
                return await runner.run_scenario(scenario)

    return list(await asyncio.gather(*(one(scenario) for scenario in scenarios)))


RUNS = {"shared": run_shared, "per-run": run_per_run}


async def driver_alone(starts: int = 3) -> tuple[float, int]:
    """The median time to start Playwright's node driver and its PSS once started: the part of per-run that is not Chromium."""
    import psutil
    from playwright.async_api import async_playwright

    times, sizes = [], []
    for _ in range(starts):
        began = time.perf_counter()
        playwright = await async_playwright().start()
        times.append(time.perf_counter() - began)
        try:
            sizes.append(sum(child.memory_full_info().pss for child in psutil.Process().children(recursive=True)
                             if child.name().startswith("node")))
        except psutil.Error:
            sizes.append(0)
        finally:
            await playwright.stop()
    return statistics.median(times), int(statistics.median(sizes))


def measure(mode: str, template: Any, journeys: int, concurrency: int, project: Any, folder: Path, site: ServerProcess) -> Window:
    import asyncio
    import gc

    from cxtest.model import Outcome

    left_out = site.proc.pid if site.proc else -1
    settle(left_out)
    scenarios = copies(template, f"{mode}-{concurrency}", journeys)
    gc.collect()
    window = Window(mode, concurrency)
    cpu, busy, sandbox_cpu = tree_cpu(left_out), machine_busy(), site.cpu_seconds() or 0.0
    with MemorySampler(left_out) as sampler:
        wall = time.perf_counter()
        results = asyncio.run(RUNS[mode](scenarios, concurrency, project, folder))
        window.wall = time.perf_counter() - wall
    window.sampler_cpu = sampler.cpu
    window.cpu = tree_cpu(left_out) - cpu - sampler.cpu
    window.sandbox_cpu = (site.cpu_seconds() or 0.0) - sandbox_cpu
    window.others_cpu = max(0.0, machine_busy() - busy - window.cpu - sampler.cpu - window.sandbox_cpu)
    window.peak_pss, window.peak_rss = sampler.peak_pss, sampler.peak_rss
    window.pss_readable, window.peak_processes = sampler.pss_readable, sampler.peak_processes
    failed = [r for r in results if r.outcome is not Outcome.passed]
    window.journeys, window.failed = len(results), len(failed)
    window.durations = [r.duration for r in results]
    window.problems = [f"{r.outcome.value}: {r.message.splitlines()[0] if r.message else '(no message)'}" for r in failed[:SHOWN_FAILURES]]
    return window


# --------------------------------------------------------------------------- report


def report(windows: list[Window], trace: str) -> None:
    from rich.console import Console
    from rich.table import Table

    pss_readable = all(w.pss_readable for w in windows)
    headers = ("mode", "concurrency", "journeys", "failed", "wall s", "journeys/min", "p50 s",
               "peak PSS MB" if pss_readable else "peak PSS MB (unreadable)", "peak RSS MB", "procs", "CPU s", "CPU s/journey",
               "sandbox % core", "others % core")
    table = Table(title=f"three-step help-search journeys against the sandbox site (trace: {trace}, no store)")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for w in windows:
        table.add_row(
            w.mode, str(w.concurrency), str(w.journeys), str(w.failed), f"{w.wall:.1f}", f"{w.per_minute:.0f}",
            f"{statistics.median(w.durations):.2f}" if w.durations else "-",
            f"{w.peak_pss / MB:.0f}" if pss_readable else "-", f"{w.peak_rss / MB:.0f}", str(w.peak_processes),
            f"{w.cpu:.1f}", f"{w.cpu / w.journeys:.2f}" if w.journeys else "-",
            f"{w.sandbox_cpu / w.wall * 100:.0f}%" if w.wall else "-", f"{w.others_cpu / w.wall * 100:.0f}%" if w.wall else "-",
        )
    Console(width=max(180, Console().width)).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--journeys", type=int, help="journeys per mode and level (default 100)")
    parser.add_argument("--concurrency", help="runs at once, comma-separated levels (default 1,4,8)")
    parser.add_argument("--trace", choices=("off", "on", "retain-on-failure"), default="off",
                        help="target.trace of the journey (default off: see the docstring)")
    parser.add_argument("--quick", action="store_true", help="4 journeys at concurrency 2 (unless given): the CI smoke run")
    args = parser.parse_args(argv)
    # --quick only changes the defaults: `--quick --concurrency 8` is 4 journeys at concurrency 8.
    levels_text = args.concurrency or ("2" if args.quick else "1,4,8")
    try:
        levels = [int(c) for c in levels_text.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--concurrency: not a list of numbers: {levels_text!r}")
    if args.journeys is None:
        args.journeys = 4 if args.quick else 100
    if not levels or min(levels) < 1 or args.journeys < 1:
        parser.error("--journeys and --concurrency must be at least 1")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job may inherit SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))  # a CI timeout unwinds like Ctrl-C
    sys.path.insert(0, str(ROOT))
    import asyncio

    from cxtest import logs
    from cxtest.loader import load_scenario
    from cxtest.model import Project

    logs.configure("warning")  # not a line per browser launched
    become_subreaper()
    started = time.perf_counter()
    load_before = os.getloadavg()
    windows: list[Window] = []
    with tempfile.TemporaryDirectory(prefix="cxtest-web-journeys-") as tmp, sandbox() as site:
        folder = Path(tmp)
        os.environ["CXTEST_SANDBOX_URL"] = site.url  # the journey's target reads it
        (folder / "journey.yaml").write_text(JOURNEY.format(trace=args.trace))
        project = Project(root=folder)
        template = load_scenario(folder / "journey.yaml", project)
        print("warm-up: one journey per mode ...", flush=True)
        for mode in RUNS:
            warm = measure(mode, template, 1, 1, project, folder, site)
            if warm.failed:
                raise BenchError(f"warm-up ({mode}) did not pass: {warm.problems[0]}")
        settle(site.proc.pid if site.proc else -1)
        driver_start, driver_pss = asyncio.run(driver_alone())
        for concurrency in levels:
            for mode in RUNS:
                print(f"concurrency {concurrency}: {args.journeys} journeys, {mode} ...", flush=True)
                windows.append(measure(mode, template, args.journeys, concurrency, project, folder, site))
    report(windows, args.trace)
    print(f"Playwright's driver alone (started by every per-run journey, once by shared): {driver_start:.2f} s to start,"
          f" {driver_pss / MB:.0f} MB PSS")
    for shared, per_run in zip(windows[::2], windows[1::2]):
        speed = shared.per_minute / per_run.per_minute if per_run.per_minute else float("nan")
        memory = (shared.peak_pss / per_run.peak_pss) if per_run.peak_pss else float("nan")
        print(f"ratio shared/per-run at concurrency {shared.concurrency}: {speed:.2f}x journeys per minute, {memory:.2f}x peak PSS")
        for w in (shared, per_run):
            for problem in w.problems:
                print(f"  {w.mode} failure: {problem}")
    load_after = os.getloadavg()
    memory_note = (f"PSS from /proc/PID/smaps_rollup every {SAMPLE_EVERY_S * PSS_EVERY * 1000:.0f} ms"
                   if all(w.pss_readable for w in windows) else "PSS unreadable: RSS only")
    sampler_cpu = sum(w.sampler_cpu for w in windows)
    print(f"(bench took {time.perf_counter() - started:.0f}s; {memory_note}, RSS every {SAMPLE_EVERY_S * 1000:.0f} ms;"
          f" the sampler's {sampler_cpu:.1f} CPU s left out of CPU s; {os.cpu_count()} CPUs; load average before"
          f" {load_before[0]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f})")
    if any(w.failed or not w.journeys for w in windows):
        print("not every journey passed: the figures mean nothing")
        return 2
    return 0


if __name__ == "__main__":
    run_bench(main, "the sandbox was stopped")
