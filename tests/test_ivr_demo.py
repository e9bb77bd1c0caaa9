"""`cxtest demo` as a user runs it, IVR scenarios included: the sandbox IVR in its own process, calls recognised."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "cxtest"


def test_demo_runs_the_ivr_scenarios_against_the_sandbox_ivr(tmp_path: Path) -> None:
    """Exit 0; the IVR scenarios pass or are degraded (slow support, dead end), every sandbox number passes, and the report shows the call timeline and the inventory."""
    shutil.copytree(REPO / "scenarios", tmp_path / "scenarios", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([str(CLI), "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    ivr = {r["scenario_name"]: r["outcome"] for r in results if r["channel"] == "ivr"}
    said = "\n".join(f"{r['scenario_name']}: {s['name']}: {s['message']}" for r in results for s in r["steps"] if s["message"])
    assert ivr == {
        "Caller hears the opening hours by phone": "passed",
        "Caller checks their balance through the billing menu": "passed",
        "Technical support answers promptly": "degraded",
        "Paying a bill by phone leads somewhere": "degraded",
    }, said
    numbers = {r["scenario_id"].rpartition("/")[2]: r["outcome"] for r in results if r["channel"] == "phone"}
    assert numbers == {n: "passed" for n in ("+18005550101", "+18005550102", "+18005550103", "+18005550104", "+18005550109")}, said
    report = (tmp_path / "out" / "report.html").read_text()
    assert "IVR said" in report and "<audio" in report and "dead_air" in report
    assert "Acme Bank published numbers" in report and "post-dial delay" in report.lower()
