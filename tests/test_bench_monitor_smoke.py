"""Smoke run of the monitor-at-scale benchmark (bench/monitor_scale.py --quick).

200 scenarios on 10 s schedules for a 15 s window against the sandbox in its own
process: every job fires at least once, and the whole run takes about 20 s.
"""

from __future__ import annotations

import re

from bench_smoke import quick_run


def test_monitor_scale_quick_meets_target() -> None:
    """The quick benchmark exits 0 (start lag p99 below target), prints its table and the verdict."""
    run = quick_run("monitor_scale.py", timeout=90)
    assert run.code == 0, run.output
    assert "lag p50 ms" in run.stdout and "stored/s" in run.stdout, run.output
    row = re.search(r"^\W*200\W.*$", run.stdout, re.MULTILINE)  # the table's one row: 200 jobs
    assert row, run.output
    assert re.search(r"^start lag p99 at 200 scenarios: \d+\.\d+ ms \(target < 50 ms\): PASS$", run.stdout, re.MULTILINE), run.output
