"""Smoke run of the concurrent-IVR benchmark (bench/ivr_concurrency.py --quick): one call alone, then one and two at once.

Every call is a real ~18 s call through the sandbox IVR's welcome menu and opening
hours, recorded and transcribed by whisper: the run takes ~85 s, and ~2 minutes while
about half the calls hit a whisper retry (a level runs again then; see the bench's
docstring). Hence slow, with a timeout for the worst case of those re-runs.
"""

from __future__ import annotations

import re

import pytest

from bench_smoke import quick_run


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_ivr_concurrency_quick_prints_the_reference_the_table_and_the_verdict() -> None:
    """The reference and a row per level run are printed, every run passed, and the "sustained:" line ends it.

    The verdict itself (exit 0 or 1) depends on how busy the machine is; exit 2 means no single call passed.
    """
    run = quick_run("ivr_concurrency.py", timeout=300)
    assert run.code in (0, 1), run.output
    assert re.search(r"^  hear 'Welcome to Acme Bank'\s+\d+\.\d{3}\s", run.stdout, re.MULTILINE), run.output
    assert "late ms" in run.stdout and "STT ms" in run.stdout, run.output
    rows = re.findall(r"^\s*(\d+)\s+(\d+)/(\d+)\s", run.stdout, re.MULTILINE)  # N, runs passed / runs
    assert rows and rows[0][0] == "1", run.output
    assert all(passed == runs for _, passed, runs in rows), run.output
    assert re.search(
        r"^sustained: [0-2] concurrent IVR scenarios \(step timings within 100 ms of a single call\)$", run.stdout, re.MULTILINE
    ), run.output
