"""Concurrent calls with audio both ways: cxtest's user agent, then SIPp's own UAC, against one SIPp UAS echoing RTP.

    .venv/bin/python bench/sip_calls.py                 # 50, 200, 400 concurrent calls, 10 s each
    .venv/bin/python bench/sip_calls.py --quick         # 20 calls, 2 s (the CI smoke run)
    .venv/bin/python bench/sip_calls.py --calls 400 --hold 20

For each level N, one process (this one) places N calls at --rate calls per
second to a SIPp UAS (uas_answer.xml with -rtp_echo, a child process on
127.0.0.1). Every call plays a tone for --hold seconds, stops sending, waits
for the echo to drain, and hangs up. Reported per level:

  setup p50/p95    INVITE sent -> 200 OK received
  audio received   RTP packets echoed back / RTP packets sent, all calls
  CPU per call     this process's CPU over the level / (N * hold), as % of one core
  peak concurrent  calls up at the same time

Then SIPp's UAC (uac_call.xml, RTP streamed with rtp_stream) places the same N
calls at the same rate with the same hold against the same UAS: its setup
p50/p95 (from -trace_rtt, 4 ms resolution) and its CPU per call, measured the
same way. Exit 0 when the largest level received >= 99% of its audio and
every call was answered; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the peers the tests use: one way to start SIPp

from probes.voice import UserAgent, audio  # noqa: E402
from voice_peers import SippUac, SippUas  # noqa: E402

TARGET_AUDIO = 0.99


@dataclass
class Level:
    who: str
    calls: int
    answered: int
    setup_ms: list[float]
    sent: int
    received: int
    cpu_s: float
    wall_s: float
    hold_s: float
    peak: int

    @property
    def audio_share(self) -> float:
        return self.received / self.sent if self.sent else 0.0

    @property
    def cpu_per_call(self) -> float:
        """Share of one core per concurrent call."""
        return self.cpu_s / (self.calls * self.hold_s) if self.calls else 0.0


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def ours(uri: str, calls: int, rate: float, hold: float) -> Level:
    tone = audio.tone(440, hold)
    up = 0
    peak = 0

    async with UserAgent("127.0.0.1") as ua:

        async def one() -> tuple[bool, float, int, int]:
            nonlocal up, peak
            call = await ua.dial(uri, no_answer_timeout=30)
            if not call.answered:
                return False, 0.0, 0, 0
            up += 1
            peak = max(peak, up)
            try:
                await call.play(tone)
                call.media.stop()
                await asyncio.sleep(0.2)  # the last packets' echo is on its way back
                return True, call.time_to_answer * 1000, call.media.packets_sent, call.media.stats.received
            finally:
                up -= 1
                await call.hangup()

        started, cpu = time.monotonic(), cpu_self()
        tasks = []
        for _ in range(calls):
            tasks.append(asyncio.ensure_future(one()))
            await asyncio.sleep(1 / rate)
        results = await asyncio.gather(*tasks)
        cpu, wall = cpu_self() - cpu, time.monotonic() - started
    answered = [r for r in results if r[0]]
    return Level(
        "cxtest", calls, len(answered), [r[1] for r in answered], sum(r[2] for r in answered),
        sum(r[3] for r in answered), cpu, wall, hold, peak,
    )


def sipp_uac(workdir: Path, uas: SippUas, calls: int, rate: float, hold: float) -> Level:
    uac = SippUac(
        workdir, uas.address, "uac_call.xml", calls=calls, rate=rate, max_concurrent=calls,
        duration_ms=int(hold * 1000), timeout_s=hold + 60, extra_args=["-trace_rtt", "-rtt_freq", "1"],
    )
    started, cpu = time.monotonic(), cpu_children()
    code = uac.run(hold + calls / rate + 90)
    cpu, wall = cpu_children() - cpu, time.monotonic() - started
    setup = []
    for path in uac.dir.glob("*_rtt.csv"):
        with path.open() as f:
            setup += [float(row["response_time_ms"]) for row in csv.DictReader(f, delimiter=";") if row.get("rtd_no") == "setup"]
    stats = uac.stats()
    succeeded = int(stats.get("SuccessfulCall(C)", 0) or 0)
    if code != 0:
        print(f"  SIPp UAC exit {code}: {uac.explain()[:300]}")
    return Level("SIPp UAC", calls, succeeded, setup, 0, 0, cpu, wall, hold, calls)


def show(level: Level) -> str:
    audio_text = f"{level.audio_share:7.2%}" if level.sent else "    n/a"
    return (
        f"{level.who:<9} {level.calls:>5} {level.answered:>8} {level.peak:>5} "
        f"{percentile(level.setup_ms, 50):>8.1f} {percentile(level.setup_ms, 95):>8.1f} "
        f"{audio_text} {level.cpu_per_call:>8.3%} {level.cpu_s:>7.1f} {level.wall_s:>6.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="50,200,400", help="concurrency levels, comma-separated")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds of audio per call")
    parser.add_argument("--rate", type=float, default=100.0, help="call attempts per second")
    parser.add_argument("--quick", action="store_true", help="20 calls of 2 s: a smoke run")
    parser.add_argument("--no-sipp-uac", action="store_true", help="skip the SIPp UAC comparison")
    args = parser.parse_args()
    levels = [20] if args.quick else [int(n) for n in args.calls.split(",")]
    hold = 2.0 if args.quick else args.hold

    print(f"{'who':<9} {'calls':>5} {'answered':>8} {'peak':>5} {'setup50':>8} {'setup95':>8} {'audio':>7} {'CPU/call':>8} {'CPU s':>7} {'wall s':>6}")
    print(f"{'':<9} {'':>5} {'':>8} {'':>5} {'ms':>8} {'ms':>8} {'recv':>7} {'% core':>8}")
    verdict = True
    with tempfile.TemporaryDirectory(prefix="cxtest-sip-bench-") as tmp:
        for calls in levels:
            workdir = Path(tmp) / f"level-{calls}"
            workdir.mkdir()
            with SippUas(workdir, "uas_answer.xml", calls=None, rtp_echo=True, timeout_s=hold + 120) as uas:
                level = asyncio.run(ours(uas.uri, calls, args.rate, hold))
                print(show(level), flush=True)
                if not args.no_sipp_uac:
                    print(show(sipp_uac(workdir, uas, calls, args.rate, hold)), flush=True)
            if calls == max(levels):
                verdict = level.answered == calls and level.audio_share >= TARGET_AUDIO
                print(
                    f"target: {calls} concurrent calls, >= {TARGET_AUDIO:.0%} audio received: "
                    f"{level.answered}/{calls} answered, {level.audio_share:.2%} received: {'PASS' if verdict else 'FAIL'}"
                )
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
