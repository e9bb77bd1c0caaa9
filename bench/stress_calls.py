"""`cxtest stress` on the sandbox IVR at 100 and 300 concurrent calls, every prompt verified; then SIPp's UAC at the same load.

    flock /tmp/exp/bench.lock .venv/bin/python bench/stress_calls.py     # 100, then 300 calls at once
    .venv/bin/python bench/stress_calls.py --quick                       # 10 calls (the CI smoke run)
    .venv/bin/python bench/stress_calls.py --users 300 --seconds 90 --transcribe 0.01

The sandbox IVR runs in its own process (IvrProcess). The scenario walks the demo's
opening-hours path (scenarios/demo/ivr_opening_hours.yaml): the welcome menu
(barge-in), press 3, the opening hours, the IVR hangs up; about 8 s a call. Its
baseline is recorded first with `cxtest baseline`. Then per level, `cxtest stress
--stage 8s:N --stage Ss:N --json` (N users, ramped up over about one call so calls do
not move in lock-step, then held for S seconds) runs it with `transcribe: SHARE` in the target: every
call checks each prompt's sound against the baseline (check `prompt_audio`), and
the sampled calls (the first in each worker process, then one in 1/SHARE) also
transcribe it and fit the expected words (check `prompt`). Each iteration's result
goes to a SQLite store in a temporary folder, which is where the figures are read
from, exactly:

  attempted        calls the stress run started (iterations finished)
  answered         calls the IVR answered (a time_to_answer was measured)
  completed        calls that walked the whole path (passed or degraded)
  peak up          most calls up at once (from each iteration's start and duration)
  by sound         prompts checked against their baseline's sound: how many, share matched
  by words         prompts transcribed and fitted: how many, share matched
  audio min        the lowest audio similarity of a prompt that was heard right by words
  latency p95      prompt_latency, all prompts (our key press, or the answer, to the prompt's first speech)
  setup p95        INVITE to 200 OK: cxtest's time_to_answer; SIPp's -trace_rtt
  jitter p95       what our side measured of the IVR's RTP (its media clock running late shows here)
  CPU % core       mean over the seconds all calls were up: cxtest's processes (coordinator and
                   workers), the sandbox IVR, SIPp; "CPU s" is the whole run, start-up included

SIPp's UAC (tests/peers/sipp/uac_call.xml: INVITE, ACK, a looped tone as PCMU,
BYE) then places the same number of calls at cxtest's mean call rate and length
with -l N against the same IVR number: signalling and audio, no prompt checked.
Exit 0 when at the first level every answered call's prompts matched by sound, 1
when not, 2 when nothing could be measured (no baseline, stress or SIPp failed to run).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the peers the tests use: one way to start SIPp

from cxtest.sandbox.ivr import IvrError, IvrProcess  # noqa: E402
from cxtest.store import Store  # noqa: E402
from voice_peers import SippUac  # noqa: E402

CXTEST = Path(sys.executable).parent / "cxtest"
SCENARIO = """\
name: Opening hours under load
channel: ivr
target: {{ uri: "{uri}", transcribe: {transcribe} }}
timeout: 60s
step_timeout: 20s
steps:
  - expect_prompt: "Welcome to Acme Bank"
    within: 3s
    barge_in: true
  - send_dtmf: "3"
  - expect_prompt: "We are open Monday to Friday"
  - expect_hangup: 10s
"""
THRESHOLDS = ["p95(step:expect_prompt.prompt_latency) < 2s", "rate(failed) < 1%"]
FIRST_LEVEL_MATCH = 0.99  # share of prompts matched by sound at the first level for exit 0
SAMPLE_S = 1.0
RAMP_S = 8.0


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class CpuSampler:
    """Per-second CPU (% of one core) of a process and its descendants, read from /proc by psutil."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[tuple[float, float]] = []  # (monotonic time, % core over the second before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cpu-{pid}", daemon=True)

    def _total(self) -> float:
        total = 0.0
        try:
            root = psutil.Process(self.pid)
            for process in [root, *root.children(recursive=True)]:
                try:
                    times = process.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        return total

    def _run(self) -> None:
        last_t, last_cpu = time.monotonic(), self._total()
        while not self._stop.wait(SAMPLE_S):
            now, cpu = time.monotonic(), self._total()
            # A descendant that ended takes its CPU with it: a drop is no negative use.
            self.samples.append((now, max(0.0, cpu - last_cpu) / (now - last_t) * 100))
            last_t, last_cpu = now, cpu

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def mean(self, start: float, end: float) -> float | None:
        inside = [share for t, share in self.samples if start < t <= end]
        return sum(inside) / len(inside) if inside else None


@dataclass
class Side:
    """One side's figures at one level."""

    who: str
    attempted: int = 0
    answered: int = 0
    completed: int = 0
    peak: int = 0
    setup_s: list[float] = field(default_factory=list)
    by_sound: tuple[int, int] = (0, 0)  # (checked, matched)
    by_words: tuple[int, int] = (0, 0)
    audio_min: float | None = None
    latency_s: list[float] = field(default_factory=list)
    jitter_s: list[float] = field(default_factory=list)
    loss: float | None = None
    cpu_s: float = 0.0
    cpu_core: float | None = None
    ivr_core: float | None = None
    call_s: float = 0.0  # mean call length
    errors: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- cxtest


def record_baseline(scenario: Path) -> dict:
    done = subprocess.run([str(CXTEST), "baseline", str(scenario)], cwd=scenario.parent, capture_output=True, text=True, timeout=180)
    path = scenario.parent / "baselines" / f"{scenario.stem}.json"
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"cxtest baseline exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    return json.loads(path.read_text())


def run_stress(scenario: Path, store: Path, users: int, seconds: float, ivr_pid: int) -> tuple[Side, dict]:
    # Users ramp up over about one call's length, so calls do not all begin (and end their prompts) in the same tick.
    argv = [
        str(CXTEST), "stress", str(scenario), "--stage", f"{RAMP_S:g}s:{users}", "--stage", f"{seconds:g}s:{users}", "--json",
        "--store", f"sqlite:///{store}", *(arg for t in THRESHOLDS for arg in ("--threshold", t)),
    ]
    # Made here first: each worker process opens the store, and two creating a new SQLite file's
    # tables at once can collide ("table results already exists"), which ends that worker.
    Store(f"sqlite:///{store}").close()
    cpu_before = cpu_children()
    process = subprocess.Popen(argv, cwd=scenario.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ours, ivr = CpuSampler(process.pid).start(), CpuSampler(ivr_pid).start()
    lines, summary = [], {}
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
    reader.start()
    full_from = full_until = None  # monotonic: the seconds every user was running
    for line in process.stdout:
        if not line.startswith("{"):
            continue
        data = json.loads(line)
        if "summary" in data:
            summary = data["summary"]
            continue
        lines.append(data)
        now = time.monotonic()
        if data["users"] >= users:
            full_from = full_from or now
            full_until = now
    code = process.wait(timeout=seconds + 120)
    ours.stop(), ivr.stop()
    reader.join(5)
    if not summary:
        raise RuntimeError(f"cxtest stress exited {code} without a summary: {''.join(errors)[-1500:]}")
    side = read_store(store, summary["stress_id"], users)
    side.cpu_s = cpu_children() - cpu_before
    if full_from is not None:
        side.cpu_core, side.ivr_core = ours.mean(full_from, full_until), ivr.mean(full_from, full_until)
    summary["stderr"] = "".join(errors)
    summary["exit_code"] = code
    return side, summary


def read_store(store: Path, stress_id: str, users: int) -> Side:
    """The level's figures from every iteration's stored result: outcomes, checks by name, step measures."""
    side = Side(f"cxtest stress ({users} users)")
    with sqlite3.connect(store) as db:
        runs = db.execute("SELECT id, outcome, started_at, duration, message FROM results WHERE run_id = ?", (stress_id,)).fetchall()
        side.attempted = len(runs)
        side.completed = sum(1 for _, outcome, *_ in runs if outcome in ("passed", "degraded"))
        spans = []
        for _, outcome, started_at, duration, message in runs:
            start = _epoch(started_at)
            spans.append((start, start + duration))
            if outcome in ("failed", "error"):
                reason = message.split("\n", 1)[0][:90]
                side.errors[reason] = side.errors.get(reason, 0) + 1
        side.peak = _most_at_once(spans)
        side.call_s = sum(end - start for start, end in spans) / len(spans) if spans else 0.0
        checks = db.execute(
            # A result's steps, and their checks, are JSON in its row.
            "SELECT c.value ->> 'name', c.value ->> 'outcome', count(*) FROM results r, json_each(r.steps) s, json_each(s.value, '$.checks') c "
            "WHERE r.run_id = ? AND c.value ->> 'name' IN ('prompt', 'prompt_audio') GROUP BY 1, 2",
            (stress_id,),
        ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for name, outcome, count in checks:
            counts.setdefault(name, {})[outcome] = count
        side.by_sound = (sum(counts.get("prompt_audio", {}).values()), counts.get("prompt_audio", {}).get("passed", 0))
        side.by_words = (sum(counts.get("prompt", {}).values()), counts.get("prompt", {}).get("passed", 0))
        heard_right = []
        losses = []
        for (measures,) in db.execute(
            "SELECT s.value -> 'measures' FROM results r, json_each(r.steps) s WHERE r.run_id = ?", (stress_id,)
        ):
            values = json.loads(measures)
            if "time_to_answer" in values:
                side.answered += 1
                side.setup_s.append(values["time_to_answer"])
            if "prompt_latency" in values:
                side.latency_s.append(values["prompt_latency"])
            if "jitter" in values:
                side.jitter_s.append(values["jitter"])
            if "loss" in values:
                losses.append(values["loss"])
            if "audio_similarity" in values and values.get("similarity", 0) >= 0.8:
                heard_right.append(values["audio_similarity"])
        side.audio_min = min(heard_right) if heard_right else None
        side.loss = sum(losses) / len(losses) if losses else None
    return side


def _epoch(text: str) -> float:
    from datetime import datetime, timezone

    value = datetime.fromisoformat(text)
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    most = up = 0
    for _, change in edges:
        up += change
        most = max(most, up)
    return most


# --------------------------------------------------------------------------- SIPp


def run_sipp(workdir: Path, port: int, ivr_pid: int, users: int, calls: int, call_s: float) -> Side:
    """SIPp's UAC: `calls` calls of `call_s` at users/call_s a second, at most `users` at once, to the IVR number."""
    rate = users / call_s
    uac = SippUac(
        workdir, ("127.0.0.1", port), "uac_call.xml", calls=calls, rate=round(rate, 2), max_concurrent=users,
        # SIPp's -timeout ends the whole run, not a call: room for every call at `rate`, then one more call length.
        service="ivr", duration_ms=int(call_s * 1000), timeout_s=calls / rate + call_s + 60, extra_args=["-trace_rtt", "-rtt_freq", "1"],
    )
    cpu_before = cpu_children()
    started = time.monotonic()
    uac.start()
    sipp, ivr = CpuSampler(uac.process.pid).start(), CpuSampler(ivr_pid).start()
    code = uac.wait(call_s + calls / rate + 120)
    ended = time.monotonic()
    sipp.stop(), ivr.stop()
    side = Side(f"SIPp UAC ({users} at once)")
    side.cpu_s = cpu_children() - cpu_before
    rows = _sipp_rows(uac.stats_path)
    last = rows[-1] if rows else {}
    side.answered = side.completed = int(last.get("SuccessfulCall(C)", 0) or 0)
    side.attempted = int(last.get("OutgoingCall(C)", 0) or last.get("TotalCallCreated", 0) or 0)
    side.peak = max((int(row.get("CurrentCall", 0) or 0) for row in rows), default=0)
    for path in uac.dir.glob("*_rtt.csv"):
        with path.open() as f:
            side.setup_s += [float(r["response_time_ms"]) / 1000 for r in csv.DictReader(f, delimiter=";") if r.get("rtd_no") == "setup"]
    # Calls start at `rate`, so all are up from one call length in until the last ones end.
    side.cpu_core, side.ivr_core = sipp.mean(started + call_s + 1, ended - call_s), ivr.mean(started + call_s + 1, ended - call_s)
    side.call_s = call_s
    if code != 0:
        side.errors[f"SIPp exit {code}: {uac.errors()[-200:].strip() or 'see ' + str(uac.dir)}"] = 1
    return side


def _sipp_rows(path: Path) -> list[dict[str, str]]:
    try:
        rows = [row for row in path.read_text().splitlines() if row.strip()]
    except OSError:
        return []
    if len(rows) < 2:
        return []
    names = rows[0].rstrip(";").split(";")
    return [dict(zip(names, row.rstrip(";").split(";"))) for row in rows[1:]]


# --------------------------------------------------------------------------- showing


def _share(pair: tuple[int, int]) -> str:
    checked, matched = pair
    return f"{checked} ({matched / checked:.1%})" if checked else "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _core(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def show(level: int, seconds: float, transcribe: float, sides: list[Side]) -> str:
    rows = [
        ("calls attempted", lambda s: str(s.attempted)),
        ("answered", lambda s: str(s.answered)),
        ("completed", lambda s: str(s.completed)),
        ("peak up at once", lambda s: str(s.peak)),
        ("mean call", lambda s: f"{s.call_s:.1f} s"),
        ("setup p95", lambda s: _ms(percentile(s.setup_s, 95))),
        ("prompts by sound (matched)", lambda s: _share(s.by_sound)),
        ("prompts by words (matched)", lambda s: _share(s.by_words)),
        ("audio min (right by words)", lambda s: "-" if s.audio_min is None else f"{s.audio_min:.3f}"),
        ("prompt latency p50", lambda s: _ms(percentile(s.latency_s, 50))),
        ("prompt latency p95", lambda s: _ms(percentile(s.latency_s, 95))),
        ("jitter p95 / max", lambda s: f"{_ms(percentile(s.jitter_s, 95))} / {_ms(max(s.jitter_s, default=None))}" if s.jitter_s else "-"),
        ("RTP loss (mean)", lambda s: "-" if s.loss is None else f"{s.loss:.3%}"),
        ("CPU % core, all up", lambda s: _core(s.cpu_core)),
        ("sandbox IVR % core", lambda s: _core(s.ivr_core)),
        ("CPU s, whole run", lambda s: f"{s.cpu_s:.1f}"),
    ]
    width = 30
    lines = [f"level {level}: {level} users (ramped up over {RAMP_S:g}s) for {seconds:g}s, transcribe {transcribe:g}", f"{'':<{width}}" + "".join(f"{s.who:>28}" for s in sides)]
    for name, value in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{value(s):>28}" for s in sides))
    for side in sides:
        for reason, count in sorted(side.errors.items(), key=lambda item: -item[1])[:5]:
            lines.append(f"  {side.who} error x{count}: {reason}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", default="100,300", help="concurrency levels (constant users), comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each level runs (the stress duration)")
    parser.add_argument("--transcribe", type=float, default=0.01, help="share of calls transcribed (the target's transcribe)")
    parser.add_argument("--quick", action="store_true", help="10 users for 10 s, transcribe 0.2: a smoke run")
    parser.add_argument("--no-sipp-uac", action="store_true", help="skip the SIPp UAC comparison")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it: scenario, baseline, stores, artifacts, SIPp logs")
    args = parser.parse_args()
    levels = [10] if args.quick else [int(n) for n in args.users.split(",")]
    seconds = 10.0 if args.quick else args.seconds
    transcribe = 0.2 if args.quick else args.transcribe
    verdict = 2
    with tempfile.TemporaryDirectory(prefix="cxtest-stress-calls-") as tmp:
        folder = Path(tmp) if args.keep is None else args.keep.resolve()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            ivr = IvrProcess().start()
        except IvrError as exc:
            print(f"no sandbox IVR: {exc}")
            return 2
        try:
            [ivr_pid] = [p.pid for p in psutil.Process().children() if "cxtest.sandbox.ivr" in " ".join(p.cmdline())]
            scenario = folder / "hours.yaml"
            scenario.write_text(SCENARIO.format(uri=ivr.uri("ivr"), transcribe=transcribe))
            try:
                baseline = record_baseline(scenario)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"baseline: {exc}")
                return 2
            recorded = [f"step {step} {known['duration']:.2f}s {known['heard'][:40]!r}" for step, known in baseline.items()]
            print(f"baseline: {', '.join(recorded)}", flush=True)
            for number, users in enumerate(levels):
                try:
                    ours, summary = run_stress(scenario, folder / f"stress-{users}.db", users, seconds, ivr_pid)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"cxtest stress at {users} users: {exc}")
                    return 2
                sides = [ours]
                if not args.no_sipp_uac and ours.attempted:
                    workdir = folder / f"sipp-{users}"
                    workdir.mkdir(exist_ok=True)
                    sides.append(run_sipp(workdir, ivr.port, ivr_pid, users, ours.attempted, ours.call_s))
                print(show(users, seconds, transcribe, sides), flush=True)
                for verdict_line in summary.get("thresholds", []):
                    print(f"  threshold {verdict_line['threshold']}: seen {verdict_line['seen']}, {'held' if verdict_line['ok'] else 'BROKEN'}")
                print(f"  cxtest stress exit {summary['exit_code']}, stress id {summary['stress_id']}", flush=True)
                for error in summary.get("errors", []):
                    print(f"  cxtest stress: {error}")
                if summary.get("errors"):
                    return 2  # a worker died: the level ran with fewer users than it says
                if number == 0:
                    checked, matched = ours.by_sound
                    verdict = 0 if checked and matched >= FIRST_LEVEL_MATCH * checked else 1
        finally:
            ivr.stop()
    return verdict


if __name__ == "__main__":
    sys.exit(main())
