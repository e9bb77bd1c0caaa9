#!/usr/bin/env python
"""Chat stress: the sandbox bot driven by `cxtest stress` and by Locust at the same arrival rate, in the same run.

The sandbox app (one uvicorn worker, no IVR) runs in its own process on 127.0.0.1.
Against it, one after the other, in --rounds rounds (3), each round in another order:

  cxtest        `cxtest stress chat_balance.yaml --rate R --duration Ds --json --no-store`
                (the coordinator and its worker processes, one per core), the
                conversation of scenarios/demo/chat_balance.yaml: "hi", the two greeting
                messages, the Billing button, the Balance button with the balance saved,
                "pay <balance>", every expectation checked on every conversation.
  cxtest+store  the same with `--store sqlite:///...`: every iteration's result saved,
                as the stress issue wants; the bench counts the rows afterwards.
  locust        `python -m locust -f bench/stress_chat.py --headless` in a child process:
                U FastHttpUsers (bench/chat_load.py's, the same four POST /bot/rest and
                the same checks on every answer), each paced by constant_throughput(R/U),
                so conversations start at R a second as long as each takes less than U/R s.

Each side is measured over the same window of each of its runs, from --warmup seconds in to
the end of the shape (start-up, imports and the last drain left out): conversations
finished in it, and the CPU every process of the side used in it (cxtest: the
coordinator and its workers, read with psutil at each of its one-a-second JSON lines;
locust: its process, from /proc, read by a greenlet at the same two moments).

This VM's speed drifts by a tenth from one minute to the next, so one run of each side
in a fixed order could put the drift into the ratio; the figures are the sums of the
rounds (each round's ratios are printed as it ends, to show the spread).

Columns, per side (all rounds together):

  conv          conversations finished in the window
  failed        conversations of the whole run that did not pass (cxtest: outcome failed
                or error, degraded counted as passed as in chat_load.py; locust: a failed
                request)
  conv/s        conv / window
  CPU s         the side's CPU over the window; % core = CPU s / window
  conv/CPU s    conversations per second of one core's time: the per-core figure
  p95 ms        a whole conversation's duration, 95th percentile over the whole run (the worst round)
                (cxtest: the `duration` metric; locust: the conversation's time)
  sandbox       the sandbox's CPU over the window, % of a core: the same load on the bot

then the ratio cxtest / locust per core and a PASS/FAIL line for "cxtest (with its
store) at least matches Locust per core". Exit code 0 on PASS with every conversation
passed, 1 on FAIL, 2 when a side could not run or a conversation failed (the figures
then mean nothing). --quick (the CI smoke run) is too short to judge: it prints the
verdict but only a side that could not run or a failed conversation changes its exit code.

    .venv/bin/python bench/stress_chat.py                       # 100 conversations/s, 20 s per side, 3 rounds
    .venv/bin/python bench/stress_chat.py --rate 200 --seconds 30
    .venv/bin/python bench/stress_chat.py --quick               # 20/s for 6 s, 1 round (tests/test_bench_stress_chat_smoke.py)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server_process import BenchError, die_with_parent, run_bench

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "demo" / "chat_balance.yaml"
CONVERSATION = ("chat_balance", "CONVERSATION")  # the name and type bench/chat_load.py's users report a conversation under
SPARE_S = 60.0  # start-up and shut-down on top of --seconds before a side counts as hung
LOCUST_STOP_TIMEOUT_S = 5  # at the end each user finishes its conversation
SHOWN_FAILURES = 3


# --------------------------------------------------------------------------- the locust side (child process only)


def _locust_user() -> type:
    """bench/chat_load.py's user paced to --conversation-rate, with marks for the window; only inside `locust -f`."""
    import gevent
    from locust import events

    import chat_load
    from locust.user.wait_time import constant_throughput

    marks: dict[str, Any] = {}

    @events.init_command_line_parser.add_listener
    def _arguments(parser: Any) -> None:
        parser.add_argument("--conversation-rate", type=float, default=10.0, help="conversations started a second, all users together")
        parser.add_argument("--window-from", type=float, default=0.0, help="seconds after the test starts: the window opens")
        parser.add_argument("--window-to", type=float, default=0.0, help="seconds after the test starts: the window closes")
        parser.add_argument("--window-file", help="where to write the window's marks and the run's figures (JSON)")

    def mark(environment: Any) -> dict[str, float]:
        entry = environment.stats.get(*CONVERSATION)
        return {"at": time.monotonic(), "cpu": chat_load.cpu_seconds(os.getpid()), "conversations": entry.num_requests}

    def window(environment: Any) -> None:
        options = environment.parsed_options
        gevent.sleep(options.window_from)
        marks["from"] = mark(environment)
        gevent.sleep(max(0.0, options.window_to - options.window_from))
        marks["to"] = mark(environment)

    @events.init.add_listener
    def _init(environment: Any, **_kw: Any) -> None:
        options = environment.parsed_options
        # Each of the U users starts a conversation every U/R seconds: R a second in all.
        StressChatUser.wait_time = constant_throughput(options.conversation_rate / max(1, options.num_users))

    @events.test_start.add_listener
    def _started(environment: Any, **_kw: Any) -> None:
        gevent.spawn(window, environment)

    @events.test_stop.add_listener
    def _stopped(environment: Any, **_kw: Any) -> None:
        entry = environment.stats.get(*CONVERSATION)
        errors = [f"{error.error} ({error.occurrences}x)" for error in list(environment.stats.errors.values())[:SHOWN_FAILURES]]
        figures = {
            **marks, "total": entry.num_requests, "failed": entry.num_failures,
            "p95_ms": entry.get_response_time_percentile(0.95) if entry.num_requests else None, "errors": errors,
        }
        if environment.parsed_options.window_file:
            Path(environment.parsed_options.window_file).write_text(json.dumps(figures))

    class StressChatUser(chat_load.ChatUser):
        """chat_load.py's customer: the same conversation and checks; paced by _init."""

    return StressChatUser


if __name__ != "__main__" and "locust" in sys.modules:  # loaded by `locust -f` in the child
    StressChatUser = _locust_user()


# --------------------------------------------------------------------------- the parent


@dataclass
class Side:
    name: str
    conversations: int = 0  # finished in the window
    window: float = 0.0
    cpu: float = 0.0
    sandbox_cpu: float = 0.0
    total: int = 0  # finished in the whole run
    failed: int = 0  # of the whole run
    p95: float | None = None  # seconds, whole run
    stored: int | None = None  # results rows the store holds afterwards (cxtest with a store)
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.conversations / self.window if self.window else 0.0

    def add(self, other: "Side") -> None:
        """Another round of the same side: windows, conversations and CPU add up; the worse p95 is kept."""
        self.name = other.name
        self.conversations += other.conversations
        self.window += other.window
        self.cpu += other.cpu
        self.sandbox_cpu += other.sandbox_cpu
        self.total += other.total
        self.failed += other.failed
        if other.p95 is not None:
            self.p95 = other.p95 if self.p95 is None else max(self.p95, other.p95)
        if other.stored is not None:
            self.stored = (self.stored or 0) + other.stored
        self.problems += other.problems[: SHOWN_FAILURES - len(self.problems)]

    @property
    def per_core(self) -> float:
        return self.conversations / self.cpu if self.cpu else float("nan")


def tree_cpu(process: Any) -> dict[int, float]:
    """CPU seconds so far of a process and every descendant still alive, by pid."""
    import psutil

    seen = {}
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seen[each.pid] = times.user + times.system
    return seen


def cpu_between(start: dict[int, float], end: dict[int, float]) -> float:
    """CPU used between two readings by the processes alive at both (the window is inside every one's life)."""
    return sum(end[pid] - start[pid] for pid in end if pid in start)


def run_cxtest(name: str, folder: Path, scenario: Path, args: argparse.Namespace, sandbox: Any, store: bool, round_: int = 0) -> Side:
    import psutil

    command = [
        sys.executable, "-c", "from cxtest.cli import main; main()", "stress", str(scenario),
        "--rate", f"{args.rate:g}", "--duration", f"{args.seconds}s", "--json", "--workers", str(args.workers),
    ]
    database = folder / f"results-{name.replace('+', '-')}-{round_}.db"
    command += ["--store", f"sqlite:///{database}"] if store else ["--no-store"]
    env = {**os.environ, "CXTEST_SANDBOX_URL": sandbox.url}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder, env=env,
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
    )
    watchdog = threading.Timer(args.seconds + SPARE_S, proc.kill)  # the one we started, by its handle
    watchdog.start()
    side = Side(name)
    first = last = None  # (t, finished runs, tree cpu, sandbox cpu)
    summary: dict[str, Any] | None = None
    final: dict[str, Any] = {}
    try:
        tree = psutil.Process(proc.pid)
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                figures = json.loads(line)
            except ValueError:
                continue
            if "summary" in figures:
                summary = figures["summary"]
                continue
            final = figures
            reading = (figures["t"], sum(figures["runs"].values()), tree_cpu(tree), sandbox.cpu_seconds() or 0.0)
            if first is None and figures["t"] >= args.warmup:
                first = reading
            if figures["t"] <= args.seconds - 0.25:
                last = reading
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait(timeout=10)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if summary is None:
        raise BenchError(f"{name}: `cxtest stress` ended (code {proc.returncode}) without its summary: {stderr.strip()[-1500:]}")
    if summary["errors"]:
        raise BenchError(f"{name}: workers failed: {'; '.join(summary['errors'])}")
    if first is None or last is None or last[0] <= first[0]:
        raise BenchError(f"{name}: no window between {args.warmup:g}s and {args.seconds:g}s (run longer: --seconds)")
    side.window = last[0] - first[0]
    side.conversations = last[1] - first[1]
    side.cpu = cpu_between(first[2], last[2])
    side.sandbox_cpu = last[3] - first[3]
    runs = summary["runs"]
    side.total = sum(runs.values())
    side.failed = runs.get("failed", 0) + runs.get("error", 0)
    side.p95 = final.get("metrics", {}).get("duration", {}).get("p95")
    side.problems = list(final.get("errors", {}))[:SHOWN_FAILURES]
    if store:
        side.stored = stored_results(database)
    return side


def stored_results(database: Path) -> int:
    import sqlite3

    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT count(*) FROM results").fetchone()[0]


def run_locust(folder: Path, args: argparse.Namespace, sandbox: Any) -> Side:
    window_file = folder / "locust-window.json"
    users = args.locust_users or max(2, math.ceil(args.rate / 5))  # each user at most 5 conversations a second
    command = [
        sys.executable, "-m", "locust", "-f", str(Path(__file__).resolve()),
        "--headless", "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{args.seconds}s",
        "--host", sandbox.url, "--stop-timeout", str(LOCUST_STOP_TIMEOUT_S), "--only-summary", "--loglevel", "WARNING",
        "--conversation-rate", f"{args.rate:g}", "--window-from", f"{args.warmup:g}",
        "--window-to", f"{args.seconds - 0.5:g}", "--window-file", str(window_file),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}  # no stray settings
    sandbox_from = sandbox.cpu_seconds() or 0.0
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=folder, env=env, timeout=args.seconds + SPARE_S,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"locust did not finish within {args.seconds + SPARE_S:g}s") from None
    if done.returncode not in (0, 1) or not window_file.exists():  # 1: some request failed, counted below
        raise BenchError(f"locust exited with code {done.returncode}: {done.stderr.strip()[-2000:]}")
    figures = json.loads(window_file.read_text())
    if "from" not in figures or "to" not in figures:
        raise BenchError("locust stopped before its window closed")
    side = Side(f"locust ({users} users)")
    side.window = figures["to"]["at"] - figures["from"]["at"]
    side.conversations = figures["to"]["conversations"] - figures["from"]["conversations"]
    side.cpu = figures["to"]["cpu"] - figures["from"]["cpu"]
    # The sandbox over the whole run, scaled to the window: locust's marks are taken in its own process.
    sandbox_all = (sandbox.cpu_seconds() or 0.0) - sandbox_from
    side.sandbox_cpu = sandbox_all * side.window / args.seconds
    side.total, side.failed = figures["total"], figures["failed"]
    side.p95 = figures["p95_ms"] / 1000 if figures["p95_ms"] is not None else None
    side.problems = figures["errors"]
    return side


def report(sides: list[Side], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    headers = ("side", "conv", "failed", "window s", "conv/s", "CPU s", "% core", "conv/CPU s", "p95 ms", "sandbox % core")
    table = Table(title=f"chat_balance.yaml at {args.rate:g} conversations/s against the sandbox bot, {args.seconds}s per side"
                        f" and round, {args.rounds} round{'s' if args.rounds > 1 else ''} (window from {args.warmup:g}s)")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for s in sides:
        table.add_row(
            s.name, f"{s.conversations:,}", str(s.failed), f"{s.window:.1f}", f"{s.rate:,.1f}", f"{s.cpu:.2f}",
            f"{s.cpu / s.window * 100 if s.window else 0:.0f}%", f"{s.per_core:,.0f}",
            "-" if s.p95 is None else f"{s.p95 * 1000:.1f}", f"{s.sandbox_cpu / s.window * 100 if s.window else 0:.0f}%",
        )
    Console(width=max(150, Console().width)).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, help="conversations started a second, both sides (default 100)")
    parser.add_argument("--seconds", type=int, help="each side's run (default 20)")
    parser.add_argument("--warmup", type=float, help="seconds into each run before the window opens (default 3)")
    parser.add_argument("--workers", type=int, default=0, help="cxtest's worker processes (default 0: one per core)")
    parser.add_argument("--locust-users", type=int, default=0, help="Locust's users (default: rate / 5, at least 2)")
    parser.add_argument("--rounds", type=int, help="rounds of the three sides, each round in another order (default 3)")
    parser.add_argument("--quick", action="store_true", help="20 conversations/s for 6 s, one round (unless given): the CI smoke run")
    args = parser.parse_args(argv)
    # --quick only changes the defaults.
    args.rate = args.rate if args.rate is not None else (20.0 if args.quick else 100.0)
    args.seconds = args.seconds if args.seconds is not None else (6 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 3.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if args.rate <= 0 or args.seconds < 1 or not 0 <= args.warmup < args.seconds - 1 or args.rounds < 1:
        parser.error("--rate must be positive, --seconds at least 1, --warmup at least 0 and under --seconds - 1, --rounds at least 1")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job may inherit SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))  # a CI timeout unwinds like Ctrl-C
    sys.path.insert(0, str(ROOT))
    import tempfile

    from chat_load import Sandbox

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxtest-stress-chat-") as tmp, Sandbox() as sandbox:
        folder = Path(tmp)
        # The scenario and a project file of its own in the temporary folder: no cxtest.yaml above it is picked up.
        scenario = folder / SCENARIO.name
        shutil.copy(SCENARIO, scenario)
        (folder / "cxtest.yaml").write_text("artifacts: artifacts\n")
        runs = {
            "cxtest": lambda r: run_cxtest("cxtest", folder, scenario, args, sandbox, store=False, round_=r),
            "cxtest+store": lambda r: run_cxtest("cxtest+store", folder, scenario, args, sandbox, store=True, round_=r),
            "locust": lambda r: run_locust(folder, args, sandbox),
        }
        sides = [Side(name) for name in runs]
        # This VM's speed drifts by a tenth from one minute to the next: sides measured one after
        # the other in one order would carry that drift into their ratio. Each round runs them in
        # another order, and the figures are the rounds' sums.
        for r in range(args.rounds):
            order = list(runs)[r % 3:] + list(runs)[: r % 3]
            print(f"round {r + 1} of {args.rounds}: {args.rate:g} conversations/s for {args.seconds}s each: {', '.join(order)} ...", flush=True)
            this_round = {name: runs[name](r) for name in order}
            for side, name in zip(sides, runs):
                side.add(this_round[name])
            plain_r, stored_r, locust_r = (this_round[name] for name in runs)
            print(f"  cxtest/locust per core this round: {plain_r.per_core / locust_r.per_core:.2f}x without a store,"
                  f" {stored_r.per_core / locust_r.per_core:.2f}x with it", flush=True)
    report(sides, args)
    plain, stored, locust = sides
    for side in sides:
        print(f"{side.name}: {side.total:,} conversations in the run, {side.failed} failed"
              + (f"; {side.stored:,} results stored" if side.stored is not None else ""))
        for problem in side.problems:
            print(f"  {side.name} failure: {problem}")
    ratio_plain, ratio_stored = plain.per_core / locust.per_core, stored.per_core / locust.per_core
    print(f"ratio cxtest/locust per core: {ratio_plain:.2f}x without a store, {ratio_stored:.2f}x with the SQLite store")
    passed = stored.per_core >= locust.per_core
    print(f"{'PASS' if passed else 'FAIL'}: cxtest with its store {stored.per_core:,.0f} conversations per CPU second,"
          f" locust {locust.per_core:,.0f} (target: cxtest >= locust per core)")
    load = os.getloadavg()
    print(f"(bench took {time.perf_counter() - started:.0f}s; sandbox: one uvicorn worker, its own process;"
          f" {os.cpu_count()} CPUs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    broken = [s.name for s in sides if s.failed or not s.conversations]
    if stored.stored is not None and stored.stored != stored.total:
        print(f"the store holds {stored.stored:,} results for {stored.total:,} conversations")
        broken.append(stored.name)
    if broken:
        print(f"not every conversation passed or was stored ({', '.join(broken)}): the figures mean nothing")
        return 2
    if args.quick:
        print("(--quick: too short to judge; the verdict does not change the exit code)")
        return 0
    return 0 if passed else 1


if __name__ == "__main__":
    run_bench(main, "the sandbox was stopped")
