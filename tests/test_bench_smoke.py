"""Smoke run of the harness-overhead benchmark (bench/run_overhead.py --quick).

Three repeats of the 200 scenarios, not one: the median then shrugs off one run
slowed by whatever else the CI machine is doing, and it still takes under 10 s.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run_overhead.py"


def test_run_overhead_quick_runs_and_reports() -> None:
    """The quick benchmark completes every request and check and prints the ratio line.

    Exit 1 (target missed) is accepted here: 200 requests on a shared machine are too few
    to judge the target; `make bench` runs the full 1,000 and its exit code is the verdict.
    """
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeat", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=BENCH.parent.parent,
    )
    output = done.stdout + done.stderr
    assert re.search(r"^ratio cxtest/baseline: \d+\.\d+x", done.stdout, re.MULTILINE), output
    assert done.returncode in (0, 1), output  # 2: a request or check failed
