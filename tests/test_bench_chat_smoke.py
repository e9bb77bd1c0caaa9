"""Smoke run of the chat load benchmark (bench/chat_load.py --quick).

5 concurrent conversations for 2 s through cxtest's Runner, then through Locust in a
child process, against the sandbox bot in its own process: about 8 s in all.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "chat_load.py"


def test_chat_load_quick_passes_every_conversation_on_both_sides() -> None:
    """The quick benchmark exits 0 (no conversation failed), prints a row per side and the ratio line."""
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=BENCH.parent.parent,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for side in ("cxtest", "locust"):
        row = re.search(rf"^\W*{side}\W+5\W+([\d,]+)\W+0\W", done.stdout, re.MULTILINE)  # side, users, conv, failed
        assert row and int(row.group(1).replace(",", "")) > 0, output
    counts = re.search(r"^5 users: cxtest ([\d,]+) conversations, 0 failed; locust ([\d,]+) conversations, 0 failed$", done.stdout, re.MULTILINE)
    assert counts, output
    assert re.search(r"^ratio cxtest/locust at 5 users: \d+\.\d+x conversations/s, \d+\.\d+x conversations per CPU second$", done.stdout, re.MULTILINE), output
