#!/usr/bin/env python
"""Number sweep: a phone inventory dialled at a calls-per-second limit, post-dial delay checked against SIPp's own clock.

    .venv/bin/python bench/number_sweep.py              # 500 numbers, 20 calls/s, 100 calls at once, 1 s hold
    .venv/bin/python bench/number_sweep.py --quick      # 20 numbers at 10 calls/s (the CI smoke run)
    .venv/bin/python bench/number_sweep.py --numbers 1000 --cps 40 --concurrency 200 --keep

One phone scenario (channel: phone) with an inventory of --numbers rows runs through
`Runner.run_many` in this process; the probe's admission (--concurrency slots, attempts
paced at --cps) decides when each call starts. Every number is answered by one SIPp UAS
(bench/sipp/uas_random_pdd.xml, a child process on 127.0.0.1): 100 Trying at once, 180
Ringing after a pause drawn uniformly from 50 to 800 ms, 200 OK 200 ms later, then a
greeting ("Welcome to Acme.", flite voice rms, 1.5 s) and 1.5 s of silence, looped as PCMU
until our BYE. The probe hears the greeting start and end (0.7 s of silence), holds the
call --hold seconds and hangs up: a call lasts about 4 s, so at 20 calls/s about 80 are up
at once, under the limit of 100. (Longer calls would let the concurrency limit, not the
pacing, set the rate: 100 slots / 5 s = 20/s.) No expected words are given: fitting them
with whisper on every call would measure speech-to-text on this machine's two cores, not
the harness's dialling, pacing and timing.

Printed:

  attempts        INVITEs sent per second over the sweep: (N - 1) / (last INVITE - first),
                  from the send times of our INVITEs; the gaps between consecutive INVITEs
                  (p50, min, max) and the most INVITEs in any one-second window
  calls up        the most calls up at once (our INVITE sent -> the call ended)
  outcomes        the class each number's connect step saw, and the run outcomes (the
                  first few that did not pass, with their messages)
  PDD error       our post_dial_delay (Result.measures) minus SIPp's INVITE received ->
                  180 sent, the two stamps of its message trace (-trace_msg, microseconds,
                  taken as it reads or sends each message), matched by Call-ID: mean
                  (signed) and |error| mean, p50, p95, p99, max in ms. Then where the error
                  comes from, each part's p50 / p95 / max:
                    before INVITE  our call object created (the PDD clock starts) -> our
                                   INVITE handed to the socket
                    INVITE leg     our INVITE sent -> SIPp stamped it received
                    180 leg        SIPp stamped its 180 sent -> our 180 stamped received
                  The legs compare this process's monotonic clock with SIPp's wall clock
                  (mapped once at the start; both are the machine's clock); the three add
                  up to the error exactly. Then how many calls were off by more than 20 ms,
                  and how many of those had the event loop stalled while they dialled.
  loop lag        how late a 10 ms sleep on this process's event loop woke (p50, p99,
                  max): what delays sending an INVITE or stamping a 180 that has arrived.
                  For the sleeps over 20 ms late: their total, and how much of it this
                  process's CPU ran (the loop's thread, all threads). Little CPU of ours
                  in a stall means the process was waiting: descheduled by other work on
                  the machine. The worst stalls are listed.
  CPU             this process's user + system CPU over the sweep, in all and per call;
                  SIPp's (/proc); the rest of the machine's busy CPU (/proc/stat) as other
                  processes; the load average before and after

Verdicts: the achieved attempt rate within 5% of --cps, and |PDD error| p95 under 20 ms.
Exit 0 when both hold, 1 when one does not, 2 when a call was not answered or could not
be matched in SIPp's trace (the figures then mean nothing). Wall-clock figures need an
otherwise idle machine: on two shared cores another busy process stalls both sides, and
the pacer does not make up attempts lost in a stall (it never bursts past the limit).
--keep leaves the work folder (SIPp's message trace and errors, every call's artifacts).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import gc
import os
import re
import resource
import signal
import socket
import statistics
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the SIPp facts the tests rely on: G.711 WAVs, consecutive ports

from server_process import BenchError, ServerProcess, die_with_parent, run_bench  # noqa: E402
from voice_peers import free_port, ulaw_wav  # noqa: E402

SIPP = "/usr/bin/sipp"
UAS_SCENARIO = Path(__file__).resolve().parent / "sipp" / "uas_random_pdd.xml"
GREETING = "Welcome to Acme."  # 1.5 s: short, so calls at 20/s stay under 100 at once (see --hold)
TARGET_RATE_SHARE = 0.05  # the achieved attempt rate within 5% of the limit
TARGET_PDD_ERROR_P95_MS = 20.0
GREETING_GAP_S = 1.5  # silence after the greeting before SIPp plays it again: more than the probe's 0.7 s end of prompt
LAG_EVERY_S = 0.01
STALL_MS = 20
SHOWN_STALLS = 3
SHOWN_FAILURES = 3
SIPP_START_TIMEOUT_S = 10.0
SIPP_STOP_TIMEOUT_S = 5.0
SWEEP_SPARE_S = 60.0  # beyond the pacing time: the last calls' ringing, greeting and hold

SCENARIO = """\
name: Number sweep
channel: phone
target:
  dial: "sip:{{number}}@127.0.0.1:{port}"
  calls_per_second: {cps}
  concurrency: {concurrency}
  no_answer_timeout: 10s
  greeting_within: 3s
  hold: {hold}s
inventory: numbers.csv
expect: {{ outcome: answered }}
"""



# --------------------------------------------------------------------------- SIPp, the callee


class Sipp(ServerProcess):
    """SIPp as the UAS of every number: a child of this process, ready once its SIP socket is bound, stopped by its pid."""

    stop_signals = (signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL)  # SIGUSR1: SIPp's soft exit

    def __init__(self, folder: Path, greeting_wav: Path, life_s: float) -> None:
        self.folder = folder
        self.port = free_port()
        self.messages = folder / "messages.log"
        self.errors = folder / "errors.log"
        ulaw_wav(greeting_wav, folder / "play.wav")  # rtp_stream reads play.wav from the working folder
        super().__init__(
            [
                SIPP, "-sf", str(UAS_SCENARIO), "-t", "u1",
                "-i", "127.0.0.1", "-p", str(self.port), "-bind_local",
                "-mi", "127.0.0.1", "-mp", str(free_port(3)),  # -mp and -mp+2: its media sockets
                "-cp", str(free_port()),  # its control socket; the default 8888 may be taken
                "-nostdin", "-aa",
                "-trace_msg", "-message_file", str(self.messages),
                "-trace_err", "-error_file", str(self.errors),
                "-timeout", f"{int(life_s)}s",  # whatever happens to us, SIPp ends by itself
            ],
            name="SIPp", cwd=folder, log_path=folder / "sipp.log", error=BenchError,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            start_timeout=SIPP_START_TIMEOUT_S, stop_timeout=SIPP_STOP_TIMEOUT_S,
        )

    def __enter__(self) -> "Sipp":
        if not os.access(SIPP, os.X_OK):
            raise BenchError(f"{SIPP} is not installed: install the Debian package sip-tester (scripts/setup.sh)")
        super().__enter__()
        return self

    @property
    def awaited(self) -> str:
        return f"bind 127.0.0.1:{self.port}"

    def ready(self) -> bool:
        """Its SIP socket is bound (INVITEs then wait in the socket until the scenario reads them)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError:
                return True
        return False


def sipp_stamps(messages: str) -> dict[str, tuple[float, float]]:
    """Call-ID -> (epoch SIPp stamped our first INVITE received, epoch it stamped its first 180 sent)."""
    invites: dict[str, float] = {}
    ringing: dict[str, float] = {}
    # Each entry: "----...---- YYYY-MM-DD HH:MM:SS.USEC\nUDP message received [N] bytes :\n\n<SIP message>"
    # (or "message sent (N bytes):"), in local time.
    for block in re.split(r"^-{20,} ", messages, flags=re.M)[1:]:
        stamp = re.match(r"(\d{4}-\d\d-\d\d)\s+(\d\d:\d\d:\d\d\.\d+)", block)
        call_id = re.search(r"^Call-ID:\s*(\S+)", block, re.M | re.I)
        if not stamp or not call_id:
            continue
        at = datetime.datetime.fromisoformat(f"{stamp.group(1)} {stamp.group(2)}").timestamp()
        key = call_id.group(1)
        if re.search(r"^INVITE \S+ SIP/2\.0", block, re.M) and "message received" in block:
            invites.setdefault(key, at)
        elif re.search(r"^SIP/2\.0 180 ", block, re.M) and "message sent" in block:
            ringing.setdefault(key, at)
    return {key: (invites[key], ringing[key]) for key in invites.keys() & ringing.keys()}


# --------------------------------------------------------------------------- the sweep


@dataclass
class Dialled:
    """What our side saw of one call, in this process's monotonic time."""

    call_id: str
    number: str
    invite_sent: float
    ringing_received: float | None
    before_invite: float  # call created (the PDD clock starts) -> INVITE handed to the socket
    ended: float | None


@dataclass
class Lag:
    """One 10 ms sleep on the event loop: how late it woke, and whose CPU ran meanwhile."""

    at: float  # monotonic time it was meant to wake
    late_ms: float
    loop_cpu_ms: float  # the loop's thread
    process_cpu_ms: float  # every thread of this process


@dataclass
class Collection:
    """One cyclic garbage collection: it stops every Python thread, the event loop's among them."""

    at: float  # monotonic
    ms: float
    generation: int


@dataclass
class Sweep:
    results: list[Any]
    calls: list[Dialled]
    lags: list[Lag]
    collections: list[Collection]
    started: float
    wall_s: float
    cpu_s: float  # this process
    sipp_cpu_s: float
    machine_busy_s: float  # every core, every process
    epoch_minus_monotonic: float


def greeting_wav(folder: Path) -> Path:
    """The greeting, then silence: SIPp loops it, so the caller hears the greeting end and RTP never stops."""
    from probes.voice.audio import silence
    from probes.voice.speech import SAMPLE_RATE, synthesise

    try:
        pcm = synthesise(GREETING)
    except Exception as exc:  # flite missing or failing: say so, not a traceback
        raise BenchError(f"cannot speak the greeting with flite: {exc}") from None
    path = folder / "greeting.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm + silence(GREETING_GAP_S))
    return path


def write_inventory(folder: Path, port: int, numbers: int, cps: float, concurrency: int, hold: float) -> Path:
    rows = "".join(f"+1800555{index:04d}\n" for index in range(numbers))
    (folder / "numbers.csv").write_text("number\n" + rows)
    path = folder / "number_sweep.yaml"
    path.write_text(SCENARIO.format(port=port, cps=cps, concurrency=concurrency, hold=hold))
    return path


def dialled(call: Any) -> Dialled:
    invite = next(entry for entry in call.trace if entry.direction == "sent" and entry.text.startswith("INVITE "))
    ringing = next((p.at for p in call.progress if p.status == 180), None)
    return Dialled(
        call_id=call.call_id,
        number=call.dialled_user,
        invite_sent=call.started_at + invite.at,
        ringing_received=None if ringing is None else call.started_at + ringing,
        before_invite=invite.at,
        ended=call.ended_at,
    )


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """CPU seconds every core of the machine has spent busy so far (/proc/stat: all but idle and iowait)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def clock_offset() -> float:
    """time.time() - time.monotonic(), from the tightest of a few readings."""
    readings = []
    for _ in range(20):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        readings.append((after - before, wall - (before + after) / 2))
    return min(readings)[1]


async def lag_monitor(lags: list[Lag], stop: asyncio.Event) -> None:
    """A late wake-up with the loop's thread busy all along is our own code holding the loop; one with
    little CPU of ours is the process waiting: descheduled by other work on the machine, or blocked."""
    while not stop.is_set():
        meant, loop_cpu, process_cpu = time.monotonic() + LAG_EVERY_S, time.thread_time(), time.process_time()
        await asyncio.sleep(LAG_EVERY_S)
        lags.append(Lag(meant, (time.monotonic() - meant) * 1000, (time.thread_time() - loop_cpu) * 1000,
                        (time.process_time() - process_cpu) * 1000))


async def sweep(scenario_path: Path, folder: Path, time_limit: float, sipp: Sipp) -> Sweep:
    from cxtest.loader import load_scenarios
    from cxtest.model import Project
    from cxtest.runner import Runner

    project, scenarios = load_scenarios([scenario_path], Project(root=folder))
    calls: list[Dialled] = []
    lags: list[Lag] = []
    collections_seen: list[Collection] = []
    # The probe's admission paces and caps the calls; the runner's own limit must not.
    async with Runner(project, concurrency=len(scenarios) + 1, artifacts_root=folder / "artifacts") as runner:
        ua = await runner.probe("phone").user_agent("127.0.0.1")  # the one the probe's calls go through
        dial = ua.dial
        watchers: set[asyncio.Task] = set()

        async def dial_and_note(*args: Any, **kwargs: Any) -> Any:
            call = await dial(*args, **kwargs)
            calls.append(dialled(call))
            watcher = asyncio.ensure_future(note_end(call, calls[-1]))
            watchers.add(watcher)
            watcher.add_done_callback(watchers.discard)
            return call

        # This user agent only: notes each call's Call-ID and stamps, and drops the call object once it
        # ends; keeping 500 (their audio packets among them) would lengthen the garbage collections.
        ua.dial = dial_and_note
        stop = asyncio.Event()
        monitor = asyncio.ensure_future(lag_monitor(lags, stop))
        watch_collections = collection_watcher(collections_seen)
        gc.callbacks.append(watch_collections)
        offset = clock_offset()
        cpu, sipp_cpu, busy, started = cpu_self(), sipp.cpu_seconds(), machine_busy(), time.monotonic()
        try:
            async with asyncio.timeout(time_limit):
                results = await runner.run_many(scenarios)
                if watchers:
                    await asyncio.wait(watchers)
        except TimeoutError:
            raise BenchError(f"the sweep did not end within {time_limit:.0f}s") from None
        finally:
            wall, cpu, sipp_cpu, busy = (time.monotonic() - started, cpu_self() - cpu, sipp.cpu_seconds() - sipp_cpu,
                                         machine_busy() - busy)
            gc.callbacks.remove(watch_collections)
            stop.set()
            await monitor
    return Sweep(results, calls, lags, collections_seen, started, wall, cpu, sipp_cpu, busy, offset)


async def note_end(call: Any, noted: Dialled) -> None:
    await call.ended.wait()
    noted.ended = call.ended_at


def collection_watcher(seen: list[Collection]) -> Any:
    """A gc.callbacks entry noting every garbage collection: it runs on whichever thread allocates, the loop's mostly."""
    began = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.monotonic()
        else:
            seen.append(Collection(began[0], (time.monotonic() - began[0]) * 1000, info["generation"]))

    return watch


# --------------------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def spread(values_ms: list[float]) -> str:
    return f"p50 {percentile(values_ms, 50):6.2f}  p95 {percentile(values_ms, 95):6.2f}  max {max(values_ms, default=float('nan')):7.2f}"


def most_up_at_once(calls: list[Dialled]) -> int:
    edges = [(c.invite_sent, 1) for c in calls] + [(c.ended, -1) for c in calls if c.ended is not None]
    up = peak = 0
    for _, change in sorted(edges):
        up += change
        peak = max(peak, up)
    return peak


def most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def seen_class(result: Any) -> str:
    connect = result.steps[0] if result.steps else None
    check = next((c for c in connect.checks if c.name == "outcome"), None) if connect else None
    return str(check.actual) if check else f"none ({result.outcome.value})"


def attempt_rate(run: Sweep, args: argparse.Namespace) -> float:
    sends = sorted(c.invite_sent for c in run.calls)
    gaps = [(b - a) * 1000 for a, b in zip(sends, sends[1:])]
    rate = (len(sends) - 1) / (sends[-1] - sends[0]) if len(sends) > 1 else float("nan")
    print(f"attempts: {len(sends)} INVITEs in {sends[-1] - sends[0]:.2f}s, {rate:.2f}/s; gap p50 {percentile(gaps, 50):.1f} ms,"
          f" min {min(gaps, default=0):.1f}, max {max(gaps, default=0):.1f}; most in one second {most_in_one_second(sends)}")
    print(f"calls up at once: max {most_up_at_once(run.calls)} (limit {args.concurrency})")
    return rate


def stalled_during(lags: list[Lag], start: float, end: float) -> bool:
    """Whether the loop woke more than STALL_MS late somewhere in [start, end]."""
    return any(lag.late_ms > STALL_MS and lag.at <= end and lag.at + lag.late_ms / 1000 >= start for lag in lags)


def pdd_error(run: Sweep, stamps: dict[str, tuple[float, float]]) -> tuple[float, list[str]]:
    """Prints the error table; returns (|error| p95 in ms, numbers that could not be matched)."""
    ours = {r.scenario_id.rpartition("/")[2]: r.measures.get("post_dial_delay") for r in run.results}
    errors, before, outward, back, unmatched, stalled = [], [], [], [], [], 0
    for call in run.calls:
        stamp, pdd = stamps.get(call.call_id), ours.get(call.number)
        if stamp is None or pdd is None or call.ringing_received is None:
            unmatched.append(call.number)
            continue
        invite_in, ringing_out = (at - run.epoch_minus_monotonic for at in stamp)
        error = (pdd - (ringing_out - invite_in)) * 1000
        errors.append(error)
        before.append(call.before_invite * 1000)
        outward.append((invite_in - call.invite_sent) * 1000)
        back.append((call.ringing_received - ringing_out) * 1000)
        if abs(error) > STALL_MS and stalled_during(run.lags, call.invite_sent - call.before_invite, call.ringing_received):
            stalled += 1
    magnitudes = [abs(e) for e in errors]
    p95 = percentile(magnitudes, 95)
    print(f"PDD error (our post_dial_delay - SIPp's INVITE received -> 180 sent), {len(errors)} calls matched by Call-ID:")
    print(f"  {'mean':>8} {'|mean|':>8} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  ms")
    if errors:
        print(f"  {statistics.fmean(errors):8.2f} {statistics.fmean(magnitudes):8.2f} {percentile(magnitudes, 50):8.2f}"
              f" {p95:8.2f} {percentile(magnitudes, 99):8.2f} {max(magnitudes):8.2f}")
        print(f"  before INVITE  {spread(before)} ms")
        print(f"  INVITE leg     {spread(outward)} ms")
        print(f"  180 leg        {spread(back)} ms")
        over = sum(m > STALL_MS for m in magnitudes)
        print(f"  |error| over {STALL_MS} ms: {over} calls, {stalled} of them while the loop woke over {STALL_MS} ms late")
    return p95, unmatched


def loop_lag(run: Sweep) -> None:
    late = [lag.late_ms for lag in run.lags]
    stalls = [lag for lag in run.lags if lag.late_ms > STALL_MS]
    print(f"loop lag (10 ms sleeps): p50 {percentile(late, 50):.2f}  p99 {percentile(late, 99):.2f}  max {max(late, default=0):.1f} ms;"
          f" {len(stalls)} over {STALL_MS} ms late, {sum(s.late_ms for s in stalls):.0f} ms in all,"
          f" of which the loop's CPU {sum(s.loop_cpu_ms for s in stalls):.0f} ms,"
          f" this process's {sum(s.process_cpu_ms for s in stalls):.0f} ms")
    for lag in sorted(stalls, key=lambda s: -s.late_ms)[:SHOWN_STALLS]:
        collected = sum(c.ms for c in run.collections if lag.at <= c.at <= lag.at + lag.late_ms / 1000)
        print(f"  {lag.late_ms:6.0f} ms late at {lag.at - run.started:5.1f}s: loop CPU {lag.loop_cpu_ms:.0f} ms,"
              f" process CPU {lag.process_cpu_ms:.0f} ms, garbage collection {collected:.0f} ms")
    full = [c.ms for c in run.collections if c.generation == 2]
    print(f"garbage collections: {len(run.collections)}, {sum(c.ms for c in run.collections):.0f} ms in all;"
          f" {len(full)} full ones, longest {max(full, default=0):.1f} ms")


def report(args: argparse.Namespace, run: Sweep, stamps: dict[str, tuple[float, float]], load_before: tuple[float, ...]) -> int:
    print(f"numbers {args.numbers}, limit {args.cps:g} calls/s, concurrency {args.concurrency}, hold {args.hold:g}s;"
          f" wall {run.wall_s:.1f}s")
    rate = attempt_rate(run, args)
    classes = collections.Counter(seen_class(r) for r in run.results)
    outcomes = collections.Counter(r.outcome.value for r in run.results)
    print("outcomes: " + ", ".join(f"{name} {count}" for name, count in classes.most_common())
          + "; runs " + ", ".join(f"{name} {count}" for name, count in outcomes.most_common()))
    for result in [r for r in run.results if r.outcome.value != "passed"][:SHOWN_FAILURES]:
        print(f"  {result.scenario_id}: {result.outcome.value}: {result.message}")
    p95, unmatched = pdd_error(run, stamps)
    loop_lag(run)
    others = run.machine_busy_s - run.cpu_s - run.sipp_cpu_s
    load_after = os.getloadavg()
    print(f"CPU: this process {run.cpu_s:.2f}s ({run.cpu_s / max(len(run.calls), 1) * 1000:.1f} ms per call,"
          f" {run.cpu_s / run.wall_s:.0%} of a core); SIPp {run.sipp_cpu_s:.2f}s ({run.sipp_cpu_s / run.wall_s:.0%});"
          f" other processes {max(others, 0) / run.wall_s:.0%} of a core;"
          f" load average {load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs)")
    rate_ok = abs(rate / args.cps - 1) <= TARGET_RATE_SHARE
    error_ok = p95 < TARGET_PDD_ERROR_P95_MS
    print(f"target: {args.cps:g} calls/s +-{TARGET_RATE_SHARE:.0%}: achieved {rate:.2f}/s: {'PASS' if rate_ok else 'FAIL'}")
    print(f"target: |PDD error| p95 < {TARGET_PDD_ERROR_P95_MS:g} ms: {p95:.2f} ms: {'PASS' if error_ok else 'FAIL'}")
    answered = classes.get("answered", 0)
    if answered != args.numbers or unmatched or len(run.calls) != args.numbers:
        print(f"not every number was answered and matched ({answered} answered, {len(run.calls)} dialled,"
              f" unmatched {unmatched[:5]}): the figures mean nothing")
        return 2
    return 0 if rate_ok and error_ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=500, help="inventory size")
    parser.add_argument("--cps", type=float, default=20.0, help="target.calls_per_second")
    parser.add_argument("--concurrency", type=int, default=100, help="target.concurrency")
    parser.add_argument("--hold", type=float, default=1.0, help="target.hold, seconds")
    parser.add_argument("--quick", action="store_true", help="20 numbers at 10 calls/s: the smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (SIPp's trace, the artifacts) and say where")
    args = parser.parse_args()
    if args.quick:
        # Concurrency 20, not 10: calls last ~4 s, so 10 slots would admit ~2.5 calls/s and the
        # rate line would measure the call length instead of the pacing.
        args.numbers, args.cps, args.concurrency, args.hold = 20, 10.0, 20, 1.0
    load_before = os.getloadavg()
    time_limit = args.numbers / args.cps + SWEEP_SPARE_S
    prefix = "cxtest-number-sweep-"
    work = contextlib.nullcontext(tempfile.mkdtemp(prefix=prefix)) if args.keep else tempfile.TemporaryDirectory(prefix=prefix)
    with work as tmp:
        folder = Path(tmp)
        if args.keep:
            print(f"work folder: {folder}")
        with Sipp(folder, greeting_wav(folder), life_s=time_limit + 30) as sipp:
            scenario = write_inventory(folder, sipp.port, args.numbers, args.cps, args.concurrency, args.hold)
            run = asyncio.run(sweep(scenario, folder, time_limit, sipp))
        stamps = sipp_stamps(sipp.messages.read_text(errors="replace"))
        return report(args, run, stamps, load_before)


if __name__ == "__main__":
    run_bench(main, "SIPp was stopped")
