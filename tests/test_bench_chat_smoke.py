"""Smoke run of the chat load benchmark (bench/chat_load.py --quick).

5 concurrent conversations for 2 s through cxtest's Runner, then through Locust in a
child process, against the sandbox bot in its own process: about 8 s in all.
"""

from __future__ import annotations

import re

from bench_smoke import quick_run


def test_chat_load_quick_passes_every_conversation_on_both_sides() -> None:
    """The quick benchmark exits 0 (no conversation failed), prints a row per side and the ratio line."""
    run = quick_run("chat_load.py", timeout=90)
    assert run.code == 0, run.output
    for side in ("cxtest", "locust"):
        row = re.search(rf"^\W*{side}\W+5\W+([\d,]+)\W+0\W", run.stdout, re.MULTILINE)  # side, users, conv, failed
        assert row and int(row.group(1).replace(",", "")) > 0, run.output
    counts = re.search(r"^5 users: cxtest ([\d,]+) conversations, 0 failed; locust ([\d,]+) conversations, 0 failed$", run.stdout, re.MULTILINE)
    assert counts, run.output
    assert re.search(r"^ratio cxtest/locust at 5 users: \d+\.\d+x conversations/s, \d+\.\d+x conversations per CPU second$", run.stdout, re.MULTILINE), run.output
