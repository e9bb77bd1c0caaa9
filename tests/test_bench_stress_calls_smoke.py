"""Smoke run of the stress benchmark (bench/stress_calls.py --quick): 10 users through the sandbox IVR, then SIPp's UAC.

The sandbox IVR runs in its own process; `cxtest baseline` records the prompts (whisper),
then `cxtest stress` runs 10 users for 10 s with a fifth of the calls transcribed, and
SIPp places as many calls at the same rate: about a minute in all.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "stress_calls.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stress_calls_quick_verifies_every_prompt_and_prints_both_sides() -> None:
    """Every call is answered and completed, every prompt matches by sound, some by words too, and SIPp's column is there."""
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=280, cwd=BENCH.parent.parent)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"^level 10: 10 users \(ramped up over 8s\) for 10s, transcribe 0.2$", done.stdout, re.MULTILINE), output
    attempted = re.search(r"^calls attempted\s+(\d+)\s+(\d+)$", done.stdout, re.MULTILINE)
    answered = re.search(r"^answered\s+(\d+)\s+(\d+)$", done.stdout, re.MULTILINE)
    completed = re.search(r"^completed\s+(\d+)\s+(\d+)$", done.stdout, re.MULTILINE)
    assert attempted and answered and completed, output
    ours, sipp = int(attempted[1]), int(attempted[2])
    assert ours >= 10 and answered[1] == completed[1] == attempted[1], output  # every call of ours walked the path
    assert sipp == ours and int(answered[2]) == sipp, output  # SIPp placed as many, all answered
    by_sound = re.search(r"^prompts by sound \(matched\)\s+(\d+) \(100\.0%\)\s+-$", done.stdout, re.MULTILINE)
    by_words = re.search(r"^prompts by words \(matched\)\s+(\d+) \(100\.0%\)\s+-$", done.stdout, re.MULTILINE)
    assert by_sound and int(by_sound[1]) == 2 * ours, output  # two prompts a call, every call
    assert by_words and 2 <= int(by_words[1]) < int(by_sound[1]), output  # the sampled calls only
    assert re.search(r"^prompt latency p95\s+\d+ ms\s+-$", done.stdout, re.MULTILINE), output
