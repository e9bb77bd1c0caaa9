"""Smoke run of the concurrent-calls benchmark (bench/sip_calls.py --quick): 20 calls of 2 s against SIPp."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "sip_calls.py"


def test_sip_calls_quick_answers_every_call_and_hears_the_echo() -> None:
    """Every call is answered by the SIPp UAS, >= 99% of our audio comes back, SIPp's UAC row is printed too."""
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert re.search(r"^cxtest\s+20\s+20\s+20\s", done.stdout, re.MULTILINE), output
    assert re.search(r"^SIPp UAC\s+20\s+20\s", done.stdout, re.MULTILINE), output
    assert "PASS" in done.stdout and done.returncode == 0, output
