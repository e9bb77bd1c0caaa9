"""Smoke run of the chat stress benchmark (bench/stress_chat.py --quick).

`cxtest stress` at 20 conversations a second for 6 s, again with a SQLite store, then
Locust at the same rate, against the sandbox bot in its own process: about 30 s in all.
"""

from __future__ import annotations

import re

import pytest

from bench_smoke import quick_run

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
    run = quick_run("stress_chat.py", timeout=220)
    assert run.code == 0, run.output
    table = rows(run.stdout)
    assert sorted(table) == sorted(SIDES), f"expected rows for {SIDES}, got {sorted(table)}\n{run.output}"
    for side, cells in table.items():
        conversations, failed, window, per_second, cpu, _, per_core, p95 = (number(c) for c in cells[1:9])
        assert conversations > 0 and failed == 0, f"{side}: {cells}\n{run.output}"
        assert RATE / 4 <= per_second <= RATE * 3, f"{side}: {per_second} conversations/s at a rate of {RATE:g}\n{run.output}"
        assert cpu > 0 and per_core > 0 and window > 0, f"{side}: {cells}\n{run.output}"
        assert 0 < p95 < 2000, f"{side}: p95 {p95} ms\n{run.output}"
    stored = re.search(r"^cxtest\+store: ([\d,]+) conversations in the run, 0 failed; ([\d,]+) results stored$", run.stdout, re.MULTILINE)
    assert stored and stored.group(1) == stored.group(2), run.output
    assert re.search(r"^ratio cxtest/locust per core: \d+\.\d+x without a store, \d+\.\d+x with the SQLite store$", run.stdout, re.MULTILINE), run.output
    assert re.search(r"^(PASS|FAIL): cxtest with its store [\d,]+ conversations per CPU second, locust [\d,]+ ", run.stdout, re.MULTILINE), run.output
