#!/usr/bin/env python
"""Harness overhead: cxtest's wall time for N HTTP scenarios versus a bare httpx loop.

A tiny ASGI app runs under uvicorn (one worker) in a child process on 127.0.0.1,
so its CPU is not counted in this process. Against it, in the same run:

  baseline         a bare httpx.AsyncClient, N requests, a semaphore of C, the
                   checks a person would write inline (status 200, JSON, a field)
  cxtest           N scenarios (one YAML through the loader, copied N times)
                   through Runner.run_many with concurrency C and a SQLite Store
  cxtest no store  the same without the Store

Each variant is warmed up once, then measured --repeat times in rotating order;
the medians are compared. Exit code 0 when cxtest (with store) / baseline is
below the target (1.5x), 1 otherwise, 2 when a request or a check went wrong.

    python bench/run_overhead.py                 # 1000 scenarios, concurrency 16, 3 repeats
    python bench/run_overhead.py --quick         # 200 scenarios, 1 repeat (CI smoke)
    python bench/run_overhead.py --profile       # also cProfile one cxtest run, print hot spots
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from server_process import BenchError, ServerProcess, run_bench

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.5
WARMUP = 50
SERVER_START_TIMEOUT_S = 15.0
SERVER_STOP_TIMEOUT_S = 5.0
STATUS_PATH = "/api/status"

# --------------------------------------------------------------------------- the server (child process)


def _asgi_app(token: str) -> Callable[..., Awaitable[None]]:
    body = json.dumps({"status": "up", "token": token}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    message = {"type": "http.response.body", "body": body}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(start)
        await send(message)

    return app


def serve(fd: int) -> None:
    """Child process: answer every request with the status JSON on an inherited listening socket."""
    import threading

    import uvicorn

    parent = os.getppid()

    def orphaned() -> None:
        # The parent stops us by pid; if it was killed outright (SIGKILL), do not outlive it.
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()

    # Not Config(fd=...): uvicorn wraps that fd as AF_UNIX, so asyncio skips TCP_NODELAY on the
    # accepted sockets and every response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(fileno=fd)  # the family (AF_INET) is read from the descriptor
    config = uvicorn.Config(
        _asgi_app(os.urandom(8).hex()),
        workers=1,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


class Server(ServerProcess):
    """The uvicorn child on 127.0.0.1, serving a socket bound here (so the port is known at once)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        fd = self.sock.fileno()
        super().__init__(
            [sys.executable, str(Path(__file__).resolve()), "--serve-fd", str(fd)],
            f"http://127.0.0.1:{self.sock.getsockname()[1]}",
            ready_path=STATUS_PATH,
            name="bench server",
            pass_fds=(fd,),
            start_timeout=SERVER_START_TIMEOUT_S,
            stop_timeout=SERVER_STOP_TIMEOUT_S,
        )

    def stop(self) -> None:
        super().stop()
        self.sock.close()


# --------------------------------------------------------------------------- the two clients

SCENARIO_YAML = """\
name: bench status
channel: http
target: {{ url: "{url}" }}
steps:
  - request: GET {path}
    expect:
      status: 200
      json_path: {{ $.status: up }}
"""


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    @property
    def median_server_cpu(self) -> float | None:
        return statistics.median(self.server_cpu) if self.server_cpu else None


async def baseline(url: str, n: int, concurrency: int) -> int:
    """What a person would write: one AsyncClient, a semaphore, inline checks. Returns the failures."""
    import httpx

    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)  # as cxtest's HttpProbe
    failures = 0

    async with httpx.AsyncClient(limits=limits) as client:

        async def one(_i: int) -> None:
            nonlocal failures
            async with limit:
                try:
                    response = await client.get(url, timeout=10.0)
                    ok = response.status_code == 200 and response.json().get("status") == "up"
                except (httpx.HTTPError, ValueError):
                    ok = False
            if not ok:
                failures += 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return failures


def make_scenarios(folder: Path, url: str, n: int, concurrency: int) -> tuple[Any, list[Any]]:
    """One scenario file through the loader, copied into n distinct scenarios."""
    from cxtest.loader import load_project, load_scenario

    (folder / "cxtest.yaml").write_text(f"store: sqlite:///{folder}/unused.db\nconcurrency: {concurrency}\n")
    path = folder / "status.yaml"
    path.write_text(SCENARIO_YAML.format(url=url, path=STATUS_PATH))
    project = load_project(folder / "cxtest.yaml")
    template = load_scenario(path, project)
    return project, [template.model_copy(update={"id": f"bench/{i}", "name": f"bench {i}"}) for i in range(n)]


async def run_cxtest(project: Any, scenarios: list[Any], concurrency: int, artifacts: Path, store: Any) -> int:
    """Runner.run_many over every scenario (store writes included). Returns the results not passed."""
    from cxtest.model import Outcome
    from cxtest.runner import Runner

    async with Runner(project, concurrency=concurrency, artifacts_root=artifacts, store=store) as runner:
        results = await runner.run_many(scenarios)
    return sum(1 for r in results if r.outcome is not Outcome.passed)


# --------------------------------------------------------------------------- measuring


def measure(run: Callable[[], Awaitable[int]], timing: Timing | None, label: str, server: Server) -> None:
    gc.collect()
    server_cpu = server.cpu_seconds()
    cpu, wall = time.process_time(), time.perf_counter()
    failures = asyncio.run(run())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server_after = server.cpu_seconds()
    if failures:
        raise BenchError(f"{label}: {failures} request(s) or check(s) failed; the figures would mean nothing")
    if timing is not None:
        timing.wall.append(wall)
        timing.cpu.append(cpu)
        if server_cpu is not None and server_after is not None:
            timing.server_cpu.append(server_after - server_cpu)



def profile(run: Callable[[], Awaitable[int]], top: int) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(run())
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime")
    # cProfile sees the event loop's thread only: the store's worker thread is not in these figures.
    print(f"\ncProfile of one cxtest run (with store; event-loop thread only), top {top} by own time:")
    stats.print_stats(top)
    stats.sort_stats("cumulative")
    print(f"top {top} by cumulative time, cxtest and probes code only:")
    stats.print_stats(r"(cxtest|probes)/", top)


def report(variants: dict[str, Timing], n: int, concurrency: int, repeat: int, ratio: float, ratio_no_store: float) -> None:
    base = variants["baseline"].median
    rows = [
        (
            name,
            f"{t.median:.3f}",
            f"{n / t.median:,.0f}",
            f"{t.median_cpu:.3f}",
            f"{t.median_cpu / n * 1e6:,.0f}",
            "n/a" if t.median_server_cpu is None else f"{t.median_server_cpu:.3f}",
            f"{t.median / base:.2f}x",
            " ".join(f"{w:.3f}" for w in t.wall),
        )
        for name, t in variants.items()
    ]
    headers = ("variant", "wall s (median)", "req/s", "CPU s", "CPU µs/req", "server CPU s", "vs baseline", "all runs (s)")
    title = f"{n} HTTP requests, concurrency {concurrency}, median of {repeat}"
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i in (0, 7) else "right")
        for row in rows:
            table.add_row(*row)
        Console(width=max(120, Console().width)).print(table)
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    verdict = "PASS" if ratio < TARGET else "FAIL"
    print(f"ratio cxtest/baseline: {ratio:.2f}x (target < {TARGET}x): {verdict}")
    print(f"ratio cxtest without store/baseline: {ratio_no_store:.2f}x")


def _interrupt(_signum: int, _frame: Any) -> None:
    # As SIGINT: asyncio.run then cancels the running measurement cleanly before KeyboardInterrupt.
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, help="scenarios (= requests) per measurement (default 1000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (cxtest's default)")
    parser.add_argument("--repeat", type=int, help="measurements of each variant; the median counts (default 3)")
    parser.add_argument("--quick", action="store_true", help="200 scenarios, 1 repeat (unless given): a CI smoke run")
    parser.add_argument("--profile", action="store_true", help="also cProfile one cxtest run and print hot spots")
    parser.add_argument("--serve-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_fd is not None:
        serve(args.serve_fd)
        return 0
    # --quick only changes the defaults: `--quick --repeat 3` is 200 scenarios measured 3 times.
    if args.scenarios is None:
        args.scenarios = 200 if args.quick else 1000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.scenarios < 1 or args.concurrency < 1 or args.repeat < 1:
        parser.error("--scenarios, --concurrency and --repeat must be at least 1")

    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the server is stopped by the `with` below.
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job may inherit SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    sys.path.insert(0, str(ROOT))
    from cxtest.store import Store

    n, c = args.scenarios, args.concurrency
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxtest-bench-") as tmp, Server() as server:
        folder = Path(tmp)
        url = server.url + STATUS_PATH
        project, scenarios = make_scenarios(folder, server.url, max(n, WARMUP), c)
        artifacts = folder / "artifacts"
        store = Store(f"sqlite:///{folder}/x.db")
        try:
            # Each maps a request count k to one measurable run of k requests.
            runs: dict[str, Callable[[int], Callable[[], Awaitable[int]]]] = {
                "baseline": lambda k: lambda: baseline(url, k, c),
                "cxtest": lambda k: lambda: run_cxtest(project, scenarios[:k], c, artifacts, store),
                "cxtest no store": lambda k: lambda: run_cxtest(project, scenarios[:k], c, artifacts, None),
            }
            variants = {name: Timing() for name in runs}
            for name, run in runs.items():
                measure(run(WARMUP), None, f"{name} warm-up", server)
            names = list(runs)
            for r in range(args.repeat):
                order = names[r % len(names) :] + names[: r % len(names)]  # each variant takes each slot in turn
                for name in order:
                    measure(runs[name](n), variants[name], name, server)
            if args.profile:
                profile(runs["cxtest"](n), 30)
        finally:
            store.close()
    ratio = variants["cxtest"].median / variants["baseline"].median
    ratio_no_store = variants["cxtest no store"].median / variants["baseline"].median
    report(variants, n, c, args.repeat, ratio, ratio_no_store)
    print(f"(bench took {time.perf_counter() - started:.1f}s; server: uvicorn, 1 worker, separate process)")
    if importlib.util.find_spec("sniffio") is None:
        print(
            "note: sniffio is not installed, so httpcore searches sys.path for it on every pooled request,"
            " in both variants: absolute times are higher than they need be and the ratio lower (bench/README.md)"
        )
    return 0 if ratio < TARGET else 1


if __name__ == "__main__":
    run_bench(main, "the server was stopped")
