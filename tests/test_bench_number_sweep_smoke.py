"""Smoke run of the number sweep benchmark (bench/number_sweep.py --quick).

20 numbers of a phone inventory at 10 calls per second through cxtest's Runner, every
one answered by a SIPp UAS (a child process on 127.0.0.1) after a random post-dial
delay: about 8 s in all.
"""

from __future__ import annotations

import re
import shutil

import pytest

from bench_smoke import quick_run


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed: install the Debian package sip-tester (scripts/setup.sh)")
def test_number_sweep_quick_answers_every_number_and_measures_pdd_against_sipp() -> None:
    """Every number is answered and matched in SIPp's trace; the attempt rate, PDD error, lag and CPU rows are sane."""
    run = quick_run("number_sweep.py", timeout=120)
    # 2: a number not answered or not matched by Call-ID. 1 is a missed target: on two shared cores one
    # stall of the event loop in the 2 s window can cost the 5% of the rate, so the verdict is not pinned here.
    assert run.code in (0, 1), run.output
    attempts = re.search(r"^attempts: 20 INVITEs in ([\d.]+)s, ([\d.]+)/s; gap p50 ([\d.]+) ms", run.stdout, re.MULTILINE)
    assert attempts, run.output
    span, rate, gap = (float(value) for value in attempts.groups())
    assert 1.5 < span < 4 and 7 < rate <= 10.5 and 90 < gap < 120, run.output  # paced at 10/s: INVITEs ~100 ms apart
    assert re.search(r"^outcomes: answered 20; runs passed 20$", run.stdout, re.MULTILINE), run.output
    assert "20 calls matched by Call-ID" in run.stdout, run.output
    errors = re.search(r"^\s+(-?[\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", run.stdout, re.MULTILINE)
    assert errors, run.output
    mean, abs_mean, p50, p95, p99, worst = (float(value) for value in errors.groups())
    assert 0 <= p50 <= p95 <= p99 <= worst and p50 < 20, run.output  # ms: a loopback call's PDD is off by about 1 ms
    cpu = re.search(r"^CPU: this process ([\d.]+)s \(([\d.]+) ms per call, .*SIPp ([\d.]+)s", run.stdout, re.MULTILINE)
    assert cpu and float(cpu.group(1)) > 0 and float(cpu.group(3)) > 0, run.output
    assert re.search(r"^target: 10 calls/s \+-5%: achieved [\d.]+/s: (PASS|FAIL)$", run.stdout, re.MULTILINE), run.output
    assert re.search(r"^target: \|PDD error\| p95 < 20 ms: [\d.]+ ms: (PASS|FAIL)$", run.stdout, re.MULTILINE), run.output
