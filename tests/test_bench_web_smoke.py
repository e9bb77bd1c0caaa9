"""Smoke run of the web journeys benchmark (bench/web_journeys.py --quick).

4 three-step journeys at concurrency 2 in one shared Chromium, then 4 with a
browser (and Playwright driver) per run, against the sandbox site in its own
process: about 10 to 15 s in all.
"""

from __future__ import annotations

import re

from bench_smoke import quick_run


def test_web_journeys_quick_passes_every_journey_in_both_modes() -> None:
    """The quick benchmark exits 0 (no journey failed), prints a row per mode with its figures, the driver line and the ratio."""
    run = quick_run("web_journeys.py", timeout=90)
    assert run.code == 0, run.output
    for mode in ("shared", "per-run"):
        # mode, concurrency, journeys, failed, wall s, journeys/min, p50 s, peak PSS MB, peak RSS MB, procs, CPU s,
        # CPU s/journey, sandbox % core, others % core
        row = re.search(rf"^\W*{mode}\W+2\W+4\W+0\W+([\d.]+)\W+(\d+)\W+[\d.]+\W+(\d+)\W+(\d+)\W+(\d+)\W+([\d.]+)\W+[\d.]+\W+\d+%\W+\d+%\W*$",
                        run.stdout, re.MULTILINE)
        assert row, run.output
        wall, per_minute, pss, rss, processes, cpu = (float(value) for value in row.groups())
        assert wall > 0 and per_minute > 0 and cpu > 0, run.output
        assert 0 < pss <= rss and processes >= 3, run.output  # this process, the node driver and Chromium's own processes
    assert re.search(r"^Playwright's driver alone .*: \d+\.\d+ s to start, \d+ MB PSS$", run.stdout, re.MULTILINE), run.output
    assert re.search(r"^ratio shared/per-run at concurrency 2: \d+\.\d+x journeys per minute, \d+\.\d+x peak PSS$", run.stdout, re.MULTILINE), run.output
