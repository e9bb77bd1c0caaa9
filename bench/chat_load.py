#!/usr/bin/env python
"""Chat load: N concurrent conversations with the sandbox bot, cxtest's Runner versus Locust, in the same run.

The sandbox (cxtest.sandbox.server.serve: one uvicorn worker, no IVR) runs in its
own process on 127.0.0.1. For each N in --users, one after the other against it:

  cxtest   scenarios/demo/chat_balance.yaml ("hi", the two greeting messages, the
           Billing button, the Balance button with the balance saved, "pay
           <balance>"), copied into distinct conversations and run by
           Runner.run_many with concurrency N and a SQLite Store in a temporary
           folder, as `cxtest run` saves its results. Warmed up with 3N
           conversations; then as many as the warm-up's rate fills --seconds with.
  locust   `python -m locust -f bench/chat_load.py --headless` in a child process
           (importing locust monkey-patches the process with gevent, which must not
           meet asyncio): N FastHttpUsers, spawn rate N, --seconds, stats reset once
           all are spawned. Each user's task is the same conversation as the same
           four POST /bot/rest requests with the same checks on every answer; a
           wrong answer fails its request and ends the conversation, as the
           scenario would.

Columns, per side and N:

  conv          conversations finished in the window
  failed        those that did not pass (cxtest: outcome failed or error; locust: a
                failed request)
  window s      cxtest: run_many's wall time; locust: all users spawned -> test stop
  conv/s        conv / window
  turns/s       user messages answered / window (four per conversation)
  turn p50/p95  a user message sent -> the bot's answer received (one HTTP round
                trip), ms; cxtest's `turn_latency`, Locust's response times (which
                it keeps rounded to whole ms)
  CPU s         the side's process (all its threads) over the window: this process
                for cxtest, the locust child's /proc stat for locust
  % core        CPU s / window
  conv/CPU s    conversations per second of one core's time (conv / CPU s)
  sandbox       the sandbox process's CPU over the same window, % of a core

then per N the ratio cxtest / locust of conv/s and of conv/CPU s. There is no
target: the figures are reported, not judged. Exit code 0 when every conversation
passed on both sides, 2 otherwise or when a side could not run (the figures then
mean nothing).

    .venv/bin/python bench/chat_load.py                  # 10 and 50 users, 20 s per side
    .venv/bin/python bench/chat_load.py --users 100 --seconds 60
    .venv/bin/python bench/chat_load.py --no-store       # cxtest without the SQLite store
    .venv/bin/python bench/chat_load.py --quick          # 5 users, 2 s (the CI smoke run)
    .venv/bin/python bench/chat_load.py --profile        # also cProfile cxtest's run at the largest level
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server_process import BenchError, ServerProcess, die_with_parent, free_port, run_bench

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "demo" / "chat_balance.yaml"
BOT_PATH = "/bot/rest"
STATUS_PATH = "/api/status"
SANDBOX_START_TIMEOUT_S = 20.0
SANDBOX_STOP_TIMEOUT_S = 5.0
LOCUST_STOP_TIMEOUT_S = 5  # at the end each user finishes its conversation: none is cut off midway
LOCUST_SPARE_S = 60.0  # start-up and shut-down on top of --seconds before the child counts as hung
SHOWN_FAILURES = 3  # per side and level
WARMUP_S = 1.0  # cxtest warms up in batches of 2N conversations until this has passed


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from Linux /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the locust side (child process only)


def _locust_user_class() -> type:
    """The Locust user; defined only inside `locust -f bench/chat_load.py`, where gevent already patched everything."""
    import json
    import re
    import uuid

    from locust import FastHttpUser, constant, events, task
    from locust.exception import CatchResponseError

    options: dict[str, Any] = {}
    # "start", "stop": [monotonic time, our CPU s, the sandbox's CPU s]; "failures": the first few, as text
    measures: dict[str, Any] = {"failures": []}

    @events.init_command_line_parser.add_listener
    def _arguments(parser: Any) -> None:
        parser.add_argument("--measures-file", help="where to write the measured window and the first failures (JSON)")
        parser.add_argument("--sandbox-pid", type=int, default=0, help="the sandbox's pid, for its CPU over the window")

    @events.init.add_listener
    def _init(environment: Any, **_kw: Any) -> None:
        options["parsed"] = environment.parsed_options

    def mark() -> list[float]:
        sandbox = options["parsed"].sandbox_pid
        return [time.monotonic(), cpu_seconds(os.getpid()), cpu_seconds(sandbox) if sandbox else 0.0]

    # The window is the one --reset-stats counts: from all users spawned to the test stopping.
    @events.spawning_complete.add_listener
    def _spawned(**_kw: Any) -> None:
        measures["start"] = mark()

    @events.test_stop.add_listener
    def _stopped(**_kw: Any) -> None:
        measures["stop"] = mark()
        if options["parsed"].measures_file:
            Path(options["parsed"].measures_file).write_text(json.dumps(measures))

    def text(message: dict[str, Any]) -> str:
        return " ".join(message["text"].split()).casefold()  # the scenario's default normalising

    def button(message: dict[str, Any], title: str) -> str | None:
        return next((b["payload"] for b in message.get("buttons", []) if b["title"] == title), None)

    class ChatUser(FastHttpUser):
        """One customer after another: chat_balance.yaml's conversation, checked as the scenario checks it."""

        wait_time = constant(0)

        def say(self, conversation_id: str, said: str, name: str, check: Any) -> Any:
            """POST one user message; the check returns what the next turn needs, or raises ValueError on a wrong answer."""
            body = {"conversation_id": conversation_id, "user": conversation_id, "text": said}
            with self.client.post(BOT_PATH, json=body, name=name, catch_response=True) as response:
                try:
                    if response.status_code != 200:
                        raise ValueError(f"status {response.status_code}")
                    return check(response.json(), response.request_meta["response_time"] / 1000)
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    response.failure(f"{name}: {exc}")
                    raise CatchResponseError(f"{name}: {exc}") from None

        @task
        def conversation(self) -> None:
            began = time.perf_counter()
            conversation_id = f"locust-{uuid.uuid4().hex}"
            failure = None
            try:
                self.converse(conversation_id)
            except CatchResponseError as exc:
                failure = exc
                if len(measures["failures"]) < SHOWN_FAILURES:
                    measures["failures"].append(str(exc))
            elapsed_ms = (time.perf_counter() - began) * 1000
            events.request.fire(request_type="CONVERSATION", name="chat_balance", response_time=elapsed_ms,
                                response_length=0, exception=failure, context={})

        def converse(self, conversation_id: str) -> None:
            def greeting(reply: Any, _latency: float) -> str:
                first, menu = reply["messages"][0], reply["messages"][1]
                if "acme bank assistant" not in text(first):
                    raise ValueError(f"expected 'Acme Bank assistant', got {first['text']!r}")
                if text(menu) != "how can i help?" or not {"Billing", "Opening hours"} <= {b["title"] for b in menu["buttons"]}:
                    raise ValueError(f"expected 'How can I help?' with Billing and Opening hours, got {menu!r}")
                return button(menu, "Billing") or "Billing"  # a button sends its payload, or its title

            def billing(reply: Any, _latency: float) -> str:
                message = reply["messages"][0]
                if "pay a bill or hear your balance" not in text(message):
                    raise ValueError(f"expected 'pay a bill or hear your balance', got {message['text']!r}")
                if reply["intent"]["name"] != "billing" or reply["intent"]["confidence"] < 0.9:
                    raise ValueError(f"expected intent billing, confidence >= 0.9, got {reply['intent']!r}")
                return button(message, "Balance") or "Balance"

            def balance(reply: Any, latency: float) -> str:
                said = reply["messages"][0]["text"]
                if not re.fullmatch(r"your balance is .* pounds\.", text(reply["messages"][0])):
                    raise ValueError(f"expected 'Your balance is * pounds.', got {said!r}")
                if latency > 2.0:  # max_latency failed: 2s
                    raise ValueError(f"the balance took {latency:.3f}s (at most 2s)")
                found = re.search(r"(\d+) pounds", said)
                if found is None:
                    raise ValueError(f"no amount in {said!r}")
                return found.group(1)

            def paid(amount: str) -> Any:
                def check(reply: Any, _latency: float) -> None:
                    said = text(reply["messages"][0])
                    if f"payment of {amount} pounds" not in said or "sorry" in said:
                        raise ValueError(f"expected 'payment of {amount} pounds', got {reply['messages'][0]['text']!r}")

                return check

            billing_payload = self.say(conversation_id, "hi", "hi", greeting)
            balance_payload = self.say(conversation_id, billing_payload, "Billing", billing)
            amount = self.say(conversation_id, balance_payload, "Balance", balance)
            self.say(conversation_id, f"pay {amount}", "pay", paid(amount))

    return ChatUser


if __name__ != "__main__" and "locust" in sys.modules:  # loaded by `locust -f` in the child
    ChatUser = _locust_user_class()


# --------------------------------------------------------------------------- the parent




class Sandbox(ServerProcess):
    """The sandbox app alone (no IVR: `cxtest sandbox` would also bind SIP port 5080), one uvicorn worker."""

    def __init__(self) -> None:
        port = free_port()
        serve = "import sys; from cxtest.sandbox.server import serve; serve('127.0.0.1', int(sys.argv[1]))"
        super().__init__(
            [sys.executable, "-c", serve, str(port)],
            f"http://127.0.0.1:{port}",
            ready_path=STATUS_PATH,
            name="sandbox",
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            start_timeout=SANDBOX_START_TIMEOUT_S,
            stop_timeout=SANDBOX_STOP_TIMEOUT_S,
            error=BenchError,
        )


@dataclass
class Side:
    name: str
    users: int
    conversations: int = 0
    failed: int = 0
    degraded: int = 0  # cxtest only: passed, but the balance came after 500 ms
    window: float = 0.0
    turns: int = 0
    latencies_ms: dict[float, int] = field(default_factory=dict)  # turn latency -> how many
    cpu: float = 0.0
    sandbox_cpu: float = 0.0
    problems: list[str] = field(default_factory=list)  # the first few failures, to show

    @property
    def rate(self) -> float:
        return self.conversations / self.window if self.window else 0.0

    @property
    def per_cpu_second(self) -> float:
        return self.conversations / self.cpu if self.cpu else float("nan")


def percentile(counts: dict[float, int], q: float) -> float:
    """The q-th percentile (nearest rank) of values given with their counts; nan when there are none."""
    total = sum(counts.values())
    if not total:
        return float("nan")
    rank = max(1, round(q / 100 * total + 0.5))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return max(counts)


# --------------------------------------------------------------------------- cxtest


def copies(template: Any, prefix: str, n: int) -> list[Any]:
    """n scenarios with their own ids (each run opens its own conversation)."""
    return [template.model_copy(update={"id": f"{prefix}/{i}"}) for i in range(n)]


def turn_latencies(template: Any, results: list[Any]) -> list[float]:
    """Each user message's turn: the turn_latency of the first bot step after it."""
    from probes.chat.model import BotSays

    firsts = [i for i, step in enumerate(template.steps) if isinstance(step, BotSays) and i and not isinstance(template.steps[i - 1], BotSays)]
    return [r.steps[i].measures["turn_latency"] for r in results for i in firsts if i < len(r.steps) and "turn_latency" in r.steps[i].measures]


def not_passed(results: list[Any]) -> list[Any]:
    from cxtest.model import Outcome

    # degraded (the balance slower than 500 ms) is a right answer, late: Locust's check knows only the 2 s limit.
    return [r for r in results if r.outcome not in (Outcome.passed, Outcome.degraded)]


async def run_cxtest(template: Any, users: int, seconds: float, folder: Path, store: Any, sandbox: Sandbox, profiler: Any = None) -> Side:
    import gc

    from cxtest.model import Outcome, Project
    from cxtest.runner import Runner

    side = Side("cxtest", users)
    project = Project(root=folder)
    async with Runner(project, concurrency=users, artifacts_root=folder / "artifacts", store=store) as runner:
        # Warm batches until WARMUP_S has passed; the last one's rate sizes the measured run to fill `seconds`.
        warmed, batch = time.perf_counter() + WARMUP_S, 0
        while True:
            began = time.perf_counter()
            warm = await runner.run_many(copies(template, f"warm{users}.{batch}", 2 * users))
            if not_passed(warm):
                raise BenchError(f"cxtest warm-up: {not_passed(warm)[0].message}")
            rate, batch = len(warm) / (time.perf_counter() - began), batch + 1
            if time.perf_counter() >= warmed:
                break
        scenarios = copies(template, f"run{users}", max(2 * users, round(rate * seconds)))
        gc.collect()
        if profiler is not None:
            profiler.enable()
        sandbox_cpu, cpu, wall = sandbox.cpu_seconds(), time.process_time(), time.perf_counter()
        results = await runner.run_many(scenarios)
        side.window = time.perf_counter() - wall
        side.cpu = time.process_time() - cpu
        if profiler is not None:
            profiler.disable()
        side.sandbox_cpu = (sandbox.cpu_seconds() or 0.0) - (sandbox_cpu or 0.0)
    failed = not_passed(results)
    side.conversations, side.failed = len(results), len(failed)
    side.degraded = sum(1 for r in results if r.outcome is Outcome.degraded)
    side.problems = [r.message.splitlines()[0] for r in failed[:SHOWN_FAILURES]]
    latencies = turn_latencies(template, [r for r in results if r not in failed])
    side.turns = len(latencies)
    for latency in latencies:
        key = round(latency * 1000, 1)
        side.latencies_ms[key] = side.latencies_ms.get(key, 0) + 1
    return side


# --------------------------------------------------------------------------- locust


def run_locust(users: int, seconds: int, folder: Path, sandbox: Sandbox) -> Side:
    import json
    import subprocess

    measures_file = folder / f"locust-{users}.json"
    command = [
        sys.executable, "-m", "locust", "-f", str(Path(__file__).resolve()),
        "--headless", "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s",
        "--host", sandbox.url, "--reset-stats", "--stop-timeout", str(LOCUST_STOP_TIMEOUT_S),
        "--json", "--only-summary", "--loglevel", "WARNING",
        "--measures-file", str(measures_file), "--sandbox-pid", str(sandbox.proc.pid if sandbox.proc else 0),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}  # no stray settings
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=folder, env=env,  # cwd: no locust.conf picked up
            timeout=seconds + LOCUST_SPARE_S, preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"locust did not finish within {seconds + LOCUST_SPARE_S:g}s") from None
    if done.returncode not in (0, 1) or not measures_file.exists():  # 1: some request failed, counted below
        raise BenchError(f"locust exited with code {done.returncode}: {done.stderr.strip()[-2000:]}")
    try:
        entries = json.loads(done.stdout[done.stdout.index("[") :])
    except ValueError:
        raise BenchError(f"locust printed no JSON stats: {done.stdout.strip()[-1000:]} {done.stderr.strip()[-1000:]}") from None
    measures = json.loads(measures_file.read_text())
    if "start" not in measures:
        raise BenchError("locust never finished spawning its users")
    side = Side("locust", users)
    side.window = measures["stop"][0] - measures["start"][0]
    side.cpu = measures["stop"][1] - measures["start"][1]
    side.sandbox_cpu = measures["stop"][2] - measures["start"][2]
    side.problems = measures["failures"]
    for entry in entries:
        if entry["method"] == "CONVERSATION":
            side.conversations += entry["num_requests"]
            side.failed += entry["num_failures"]
        else:
            side.turns += entry["num_requests"] - entry["num_failures"]
            for ms, count in entry["response_times"].items():
                side.latencies_ms[float(ms)] = side.latencies_ms.get(float(ms), 0) + count
    return side


# --------------------------------------------------------------------------- report


def report(sides: list[Side], seconds: int, store_note: str) -> None:
    from rich.console import Console
    from rich.table import Table

    headers = ("side", "users", "conv", "failed", "window s", "conv/s", "turns/s", "turn p50 ms", "p95 ms",
               "CPU s", "% core", "conv/CPU s", "sandbox % core")
    table = Table(title=f"chat_balance.yaml conversations against the sandbox bot, ~{seconds}s per side ({store_note})")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for s in sides:
        table.add_row(
            s.name, str(s.users), f"{s.conversations:,}", str(s.failed), f"{s.window:.1f}", f"{s.rate:,.1f}",
            f"{s.turns / s.window if s.window else 0:,.0f}", f"{percentile(s.latencies_ms, 50):.1f}",
            f"{percentile(s.latencies_ms, 95):.1f}", f"{s.cpu:.2f}", f"{s.cpu / s.window * 100 if s.window else 0:.0f}%",
            f"{s.per_cpu_second:,.0f}", f"{s.sandbox_cpu / s.window * 100 if s.window else 0:.0f}%",
        )
    Console(width=max(150, Console().width)).print(table)


def print_profile(profiler: Any, users: int, top: int = 25) -> None:
    import pstats

    stats = pstats.Stats(profiler)
    # cProfile sees the event loop's thread only: the store's worker thread is not in these figures.
    print(f"\ncProfile of cxtest's measured run at {users} users (event-loop thread only), top {top} by own time:")
    stats.sort_stats("tottime").print_stats(top)
    print(f"top {top} by cumulative time, cxtest and probes code only:")
    stats.sort_stats("cumulative").print_stats(r"(cxtest|probes)/", top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", help="concurrent conversations, comma-separated levels (default 10,50)")
    parser.add_argument("--seconds", type=int, help="measured window per side and level (default 20)")
    parser.add_argument("--no-store", action="store_true", help="cxtest keeps its results in memory only (no SQLite store)")
    parser.add_argument("--quick", action="store_true", help="5 users for 2 s (unless given): the CI smoke run")
    parser.add_argument("--profile", action="store_true", help="cProfile cxtest's measured run at the largest level, print hot spots")
    args = parser.parse_args(argv)
    # --quick only changes the defaults: `--quick --users 50` is 50 users for 2 s.
    users_text = args.users or ("5" if args.quick else "10,50")
    try:
        levels = [int(u) for u in users_text.split(",") if u.strip()]
    except ValueError:
        parser.error(f"--users: not a list of numbers: {users_text!r}")
    if args.seconds is None:
        args.seconds = 2 if args.quick else 20
    if not levels or min(levels) < 1 or args.seconds < 1:
        parser.error("--users and --seconds must be at least 1")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job may inherit SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))  # a CI timeout unwinds like Ctrl-C
    sys.path.insert(0, str(ROOT))
    import asyncio
    import cProfile
    import tempfile

    from cxtest.loader import load_scenario
    from cxtest.model import Project
    from cxtest.store import Store

    started = time.perf_counter()
    store_note = "cxtest without a store" if args.no_store else "cxtest with a SQLite store"
    sides: list[Side] = []
    with tempfile.TemporaryDirectory(prefix="cxtest-chat-load-") as tmp, Sandbox() as sandbox:
        folder = Path(tmp)
        os.environ["CXTEST_SANDBOX_URL"] = sandbox.url  # the demo scenario's target reads it
        template = load_scenario(SCENARIO, Project(root=folder))
        store = None if args.no_store else Store(f"sqlite:///{folder}/results.db")
        try:
            for users in levels:
                print(f"{users} users: cxtest, then locust, {args.seconds}s each ...", flush=True)
                profiler = cProfile.Profile() if args.profile and users == max(levels) else None
                sides.append(asyncio.run(run_cxtest(template, users, args.seconds, folder, store, sandbox, profiler)))
                sides.append(run_locust(users, args.seconds, folder, sandbox))
                if profiler is not None:
                    print_profile(profiler, users)
        finally:
            if store is not None:
                store.close()
    report(sides, args.seconds, store_note)
    for cx, lo in zip(sides[::2], sides[1::2]):
        print(f"{cx.users} users: cxtest {cx.conversations:,} conversations, {cx.failed} failed;"
              f" locust {lo.conversations:,} conversations, {lo.failed} failed")
        print(f"ratio cxtest/locust at {cx.users} users: {cx.rate / lo.rate if lo.rate else float('nan'):.2f}x conversations/s,"
              f" {cx.per_cpu_second / lo.per_cpu_second:.2f}x conversations per CPU second")
        if cx.degraded:
            print(f"  cxtest: {cx.degraded:,} of them degraded (the balance came after 500 ms); counted as passed, as Locust"
                  " knows only the 2 s limit")
        for side in (cx, lo):
            for problem in side.problems:
                print(f"  {side.name} failure: {problem}")
    load = os.getloadavg()
    print(f"(bench took {time.perf_counter() - started:.0f}s; sandbox: one uvicorn worker, its own process;"
          f" {os.cpu_count()} CPUs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    if any(s.failed or not s.conversations for s in sides):
        print("not every conversation passed: the figures mean nothing")
        return 2
    return 0


if __name__ == "__main__":
    run_bench(main, "the sandbox was stopped")
