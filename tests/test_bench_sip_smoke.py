"""Smoke run of the concurrent-calls benchmark (bench/sip_calls.py --quick): 20 calls of 2 s against SIPp."""

from __future__ import annotations

import re

from bench_smoke import quick_run


def test_sip_calls_quick_answers_every_call_and_hears_the_echo() -> None:
    """Every call is answered by the SIPp UAS, >= 99% of our audio comes back, SIPp's UAC row is printed too."""
    run = quick_run("sip_calls.py", timeout=120)
    assert re.search(r"^cxtest\s+20\s+20\s+20\s", run.stdout, re.MULTILINE), run.output
    assert re.search(r"^SIPp UAC\s+20\s+20\s", run.stdout, re.MULTILINE), run.output
    assert "PASS" in run.stdout and run.code == 0, run.output
