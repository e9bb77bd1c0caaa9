"""Smoke run of the stress benchmark (bench/stress_calls.py --quick): 10 users through the sandbox IVR, then SIPp's UAC.

The sandbox IVR runs in its own process; `cxtest baseline` records the prompts (whisper),
then `cxtest stress` runs 10 users for 10 s with a fifth of the calls transcribed, and
SIPp places as many calls at the same rate: about a minute in all.
"""

from __future__ import annotations

import re

import pytest

from bench_smoke import quick_run


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stress_calls_quick_verifies_every_prompt_and_prints_both_sides() -> None:
    """Every call is answered and completed, every prompt matches by sound, some by words too, and SIPp's column is there."""
    run = quick_run("stress_calls.py", timeout=280)
    assert run.code == 0, run.output
    assert re.search(r"^level 10: 10 users \(ramped up over 8s\) for 10s, transcribe 0.2$", run.stdout, re.MULTILINE), run.output
    attempted = re.search(r"^calls attempted\s+(\d+)\s+(\d+)$", run.stdout, re.MULTILINE)
    answered = re.search(r"^answered\s+(\d+)\s+(\d+)$", run.stdout, re.MULTILINE)
    completed = re.search(r"^completed\s+(\d+)\s+(\d+)$", run.stdout, re.MULTILINE)
    assert attempted and answered and completed, run.output
    ours, sipp = int(attempted[1]), int(attempted[2])
    assert ours >= 10 and answered[1] == completed[1] == attempted[1], run.output  # every call of ours walked the path
    assert sipp == ours and int(answered[2]) == sipp, run.output  # SIPp placed as many, all answered
    by_sound = re.search(r"^prompts by sound \(matched\)\s+(\d+) \(100\.0%\)\s+-$", run.stdout, re.MULTILINE)
    by_words = re.search(r"^prompts by words \(matched\)\s+(\d+) \(100\.0%\)\s+-$", run.stdout, re.MULTILINE)
    assert by_sound and int(by_sound[1]) == 2 * ours, run.output  # two prompts a call, every call
    assert by_words and 2 <= int(by_words[1]) < int(by_sound[1]), run.output  # the sampled calls only
    assert re.search(r"^prompt latency p95\s+\d+ ms\s+-$", run.stdout, re.MULTILINE), run.output
