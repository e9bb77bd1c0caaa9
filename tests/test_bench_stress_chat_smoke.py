"""Smoke run of the chat stress benchmark (bench/stress_chat.py --quick).

`cxtest stress` at 20 conversations a second for 6 s, again with a SQLite store, then
Locust at the same rate, against the sandbox bot in its own process: about 30 s in all.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "stress_chat.py"
RATE = 20.0  # --quick's conversations a second
SIDES = ("cxtest", "cxtest+store", "locust")


def rows(output: str) -> dict[str, list[str]]:
    """The table's rows by side (locust's name without its user count), as the cells' text."""
    found = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line)[1:-1]]
        if cells and re.fullmatch(r"cxtest|cxtest\+store|locust \(\d+ users\)", cells[0]):
            found[cells[0].split(" (")[0]] = cells
    return found


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


@pytest.mark.timeout(240)
def test_stress_chat_quick_runs_every_side_with_sane_figures() -> None:
    """The quick benchmark exits 0; each side finished conversations at about the rate, all passed, on measured CPU."""
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=220, cwd=BENCH.parent.parent)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    table = rows(done.stdout)
    assert sorted(table) == sorted(SIDES), f"expected rows for {SIDES}, got {sorted(table)}\n{output}"
    for side, cells in table.items():
        conversations, failed, window, per_second, cpu, _, per_core, p95 = (number(c) for c in cells[1:9])
        assert conversations > 0 and failed == 0, f"{side}: {cells}\n{output}"
        assert RATE / 4 <= per_second <= RATE * 3, f"{side}: {per_second} conversations/s at a rate of {RATE:g}\n{output}"
        assert cpu > 0 and per_core > 0 and window > 0, f"{side}: {cells}\n{output}"
        assert 0 < p95 < 2000, f"{side}: p95 {p95} ms\n{output}"
    stored = re.search(r"^cxtest\+store: ([\d,]+) conversations in the run, 0 failed; ([\d,]+) results stored$", done.stdout, re.MULTILINE)
    assert stored and stored.group(1) == stored.group(2), output
    assert re.search(r"^ratio cxtest/locust per core: \d+\.\d+x without a store, \d+\.\d+x with the SQLite store$", done.stdout, re.MULTILINE), output
    assert re.search(r"^(PASS|FAIL): cxtest with its store [\d,]+ conversations per CPU second, locust [\d,]+ ", done.stdout, re.MULTILINE), output
