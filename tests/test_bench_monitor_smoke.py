"""Smoke run of the monitor-at-scale benchmark (bench/monitor_scale.py --quick).

200 scenarios on 10 s schedules for a 15 s window against the sandbox in its own
process: every job fires at least once, and the whole run takes about 20 s.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "monitor_scale.py"


def test_monitor_scale_quick_meets_target() -> None:
    """The quick benchmark exits 0 (start lag p99 below target), prints its table and the verdict."""
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=BENCH.parent.parent,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "lag p50 ms" in done.stdout and "stored/s" in done.stdout, output
    row = re.search(r"^\W*200\W.*$", done.stdout, re.MULTILINE)  # the table's one row: 200 jobs
    assert row, output
    assert re.search(r"^start lag p99 at 200 scenarios: \d+\.\d+ ms \(target < 50 ms\): PASS$", done.stdout, re.MULTILINE), output
