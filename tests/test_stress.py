"""`cxtest stress` end to end: worker processes against the sandbox, thresholds deciding the exit code,
results stored with the stress id, Ctrl-C leaving a report, and the safety check on remote targets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from cxtest.sandbox.server import Sandbox
from cxtest.store import Store

CLI = Path(sys.executable).parent / "cxtest"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


def project(folder: Path, url: str, path: str = "/api/status", extra: str = "") -> Path:
    """A project with one HTTP scenario against the sandbox and a SQLite store."""
    (folder / "cxtest.yaml").write_text("store: sqlite:///results.db\n")
    scenario = folder / "status.yaml"
    scenario.write_text(
        "name: status\nchannel: http\n"
        f"target: {{ url: '{url}' }}\n"
        f"steps:\n  - name: status\n    request: GET {path}\n    expect: {{ status: 200 }}\n{extra}"
    )
    return scenario


def stress(folder: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "stress", *args], cwd=folder, capture_output=True, text=True, timeout=timeout)


def lines(done: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_two_workers_merge_into_one_verdict(tmp_path: Path, sandbox: Sandbox) -> None:
    """Two worker processes run 4 users for 3 s; the JSON stream shows them, the summary passes its thresholds, exit 0."""
    scenario = project(tmp_path, sandbox.url)
    done = stress(
        tmp_path, str(scenario), "--users", "4", "--duration", "3s", "--workers", "2", "--json", "--no-store",
        "--threshold", "rate(failed) < 1%", "--threshold", "p95(step:status.latency) < 2s",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    stream = lines(done)
    summary = stream[-1]["summary"]
    ticks = stream[:-1]
    assert max(t["users"] for t in ticks) == 4
    assert summary["runs"]["passed"] > 20 and set(summary["runs"]) == {"passed"}
    assert [t["ok"] for t in summary["thresholds"]] == [True, True]
    assert ticks[-1]["metrics"]["step:status.latency"]["count"] == summary["runs"]["passed"]


def test_a_broken_threshold_fails_the_exit_code(tmp_path: Path, sandbox: Sandbox) -> None:
    """Every iteration fails (404 where 200 is expected): rate(failed) < 1% is broken, exit 1, and the reason is counted."""
    scenario = project(tmp_path, sandbox.url, path="/api/nothing-here")
    done = stress(tmp_path, str(scenario), "--users", "2", "--duration", "2s", "--workers", "1", "--json", "--no-store",
                  "--threshold", "rate(failed) < 1%")
    assert done.returncode == 1, done.stdout + done.stderr
    stream = lines(done)
    summary = stream[-1]["summary"]
    assert summary["thresholds"][0]["ok"] is False and "rate(failed)" in summary["thresholds"][0]["text"]
    assert any(reason.startswith("step 1 (status): status (") for reason in stream[-2]["errors"]), stream[-2]["errors"]


def test_every_iteration_is_stored_with_the_stress_id(tmp_path: Path, sandbox: Sandbox) -> None:
    """Without --no-store each iteration's result lands in the project's store, tagged stress:<id>, run id the stress id."""
    scenario = project(tmp_path, sandbox.url, extra="stress: { users: 2, duration: 2s, thresholds: ['rate(failed) < 1%'] }\n")
    done = stress(tmp_path, str(scenario), "--workers", "1", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = lines(done)[-1]["summary"]
    with Store(f"sqlite:///{tmp_path / 'results.db'}") as store:
        stored = store.results(run_id=summary["stress_id"])
    assert len(stored) == summary["runs"]["passed"] > 0
    assert all(f"stress:{summary['stress_id']}" in r.tags for r in stored)


def test_ctrl_c_stops_cleanly_and_still_reports(tmp_path: Path, sandbox: Sandbox) -> None:
    """SIGINT in the middle of a 60 s run stops the workers; the summary and the HTML report cover what finished; exit 130."""
    scenario = project(tmp_path, sandbox.url)
    process = subprocess.Popen(
        [str(CLI), "stress", str(scenario), "--users", "2", "--duration", "60s", "--workers", "2", "--json", "--no-store",
         "--html", "report.html"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        for line in process.stdout:  # the first figures mean the workers are running
            if '"passed"' in line or time.monotonic() > deadline:
                break
        os.kill(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=45)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + err
    summary = [json.loads(line) for line in out.splitlines() if line.startswith('{"summary"')][0]["summary"]
    assert summary["interrupted"] is True and summary["runs"]["passed"] > 0
    assert (tmp_path / "report.html").is_file()


def test_a_remote_target_needs_yes(tmp_path: Path) -> None:
    """A target that is not this machine is refused without --yes, before any load: the plan and the host are said."""
    scenario = project(tmp_path, "http://contact-centre.example.com")
    done = stress(tmp_path, str(scenario), "--users", "300", "--duration", "5m", "--no-store")
    assert done.returncode == 2
    assert "constant 300 users for 300s" in done.stderr
    assert "contact-centre.example.com" in done.stderr and "--yes" in done.stderr


def test_a_target_that_cannot_be_tested_exits_3(tmp_path: Path) -> None:
    """Every iteration an error (nothing listens): exit 3 whatever the thresholds, like `cxtest run`."""
    scenario = project(tmp_path, "http://127.0.0.1:9")
    done = stress(tmp_path, str(scenario), "--users", "1", "--duration", "1s", "--workers", "1", "--json", "--no-store")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "connection refused" in json.dumps(lines(done)[-2]["errors"])


def test_abort_on_fail_stops_a_clearly_lost_run_early(tmp_path: Path, sandbox: Sandbox) -> None:
    """With --abort-on-fail, a run whose iterations all fail stops within seconds of a 60 s plan, exit 1, saying which threshold."""
    scenario = project(tmp_path, sandbox.url, path="/api/nothing-here")
    started = time.monotonic()
    done = stress(tmp_path, str(scenario), "--users", "2", "--duration", "60s", "--workers", "1", "--json", "--no-store",
                  "--threshold", "rate(failed) < 1%", "--abort-on-fail")
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started < 30
    assert lines(done)[-1]["summary"]["aborted"] == "rate(failed) < 1%"


def test_status_lists_a_stress_runs_failures_with_their_evidence(tmp_path: Path, sandbox: Sandbox) -> None:
    """`cxtest status --run STRESS_ID --outcome failed` lists the stored failed iterations of that stress run."""
    scenario = project(tmp_path, sandbox.url, path="/api/nothing-here")
    done = stress(tmp_path, str(scenario), "--users", "1", "--duration", "1s", "--workers", "1", "--json")
    stress_id = lines(done)[-1]["summary"]["stress_id"]
    listed = subprocess.run([str(CLI), "status", "--run", stress_id, "--outcome", "failed", "--limit", "3"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "250"})
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = [line for line in listed.stdout.splitlines() if line.lstrip().startswith("failed")]
    assert len(rows) == 3 and all("status (404)" in row for row in rows)


def test_a_busy_worker_is_joined_by_the_next_and_no_iteration_is_lost_or_doubled(tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default workers one takes the plan; when it is busy (here: at once) a second joins, and together they start exactly the plan's iterations."""
    from cxtest.stress import Scaling, StressJob, run_stress
    from cxtest.stress.plan import StressPlan

    monkeypatch.setattr(Scaling, "SCALE_OUT_AT", 0.0)  # any CPU at all counts as busy
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    scenario = project(tmp_path, sandbox.url)
    plan = StressPlan(rate=40, duration="5s", max_users=50)
    job = StressJob(scenario_file=str(scenario), scenario_id="status", plan=plan, project_file=str(tmp_path / "cxtest.yaml"),
                    store_url=f"sqlite:///{tmp_path / 'results.db'}", artifacts_root=str(tmp_path / "artifacts"))
    outcome = run_stress(job)
    assert (outcome.workers, outcome.errors, outcome.exit_code) == (2, [], 0)
    started = sum(s.started for s in outcome.snapshots)
    assert 198 <= started <= plan.started_by(plan.length) == 200  # the grid's last tick may fall just short of 5 s
    assert outcome.finished_runs == started
    with Store(job.store_url) as store:
        assert len(store.results(run_id=job.stress_id)) == started


def test_scaling_takes_on_one_worker_at_a_time_on_cpu_alone() -> None:
    """A worker at work above half a core brings in the next, at most one every 2 s; loading before the shape, idle ones and the last one do not."""
    from cxtest.stress import Scaling
    from cxtest.stress.worker import Delta

    def second(t: float, *cpu: float) -> list[Delta]:
        return [Delta(worker=i, t=t, users=0, started=0, metrics=b"", cpu=c) for i, c in enumerate(cpu)]

    scaling = Scaling(3)
    assert not scaling.busy(second(-1.0, 0.0, 0.0, 0.0), at=100.0)
    assert not scaling.busy(second(0.0, 1.9, 1.9, 1.9), at=101.0)  # loading the scenario, before the shape
    assert not scaling.busy(second(1.0, 0.3, 0.9, 0.9), at=102.0)  # only worker 0 is at work, and it is not busy
    assert scaling.busy(second(2.0, 0.6, 0.0, 0.0), at=103.0) and scaling.active == 2
    assert not scaling.busy(second(3.0, 0.9, 0.9, 0.0), at=104.0)  # too soon after the last one joined
    assert scaling.busy(second(4.0, 0.2, 0.7, 0.0), at=105.0) and scaling.active == 3
    assert not scaling.busy(second(6.0, 0.9, 0.9, 0.9), at=108.0)  # none left to take on
