"""`cxtest stress --ray`: the same worker as Ray async actors on a local Ray head (127.0.0.1, two CPUs),
merged by the coordinator into one verdict; and the path rewriting that a shipped working_dir needs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from cxtest.sandbox.server import Sandbox
from cxtest.stress.worker import WorkerConfig

pytest.importorskip("ray", reason="the ray extra is not installed")

BIN = Path(sys.executable).parent
HEAD_START_S = 60.0
# Ray on loopback only, no usage report: without the cluster switch Ray swaps 127.0.0.1 for the
# address it guesses from a route to a public IP.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# The head's dashboard process asks the cloud metadata address (169.254.169.254) and, for a
# cluster from `ray start`, posts a "usage stats disabled" note to Ray's server, whatever the
# settings (Ray 2.60): a dead proxy on loopback takes those requests; loopback goes direct.
DEAD_PROXY = "http://127.0.0.1:9"
PROXIES = {"HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1,localhost,::1"}
HEAD_ENV = {**RAY_ENV, **PROXIES, **{name.lower(): value for name, value in PROXIES.items()}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to `ray start --block` (it ends the Ray processes it started), then its own process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group is the session this test started for it
            process.wait(10)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with two CPUs and no dashboard; its address."""
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="cxray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    log = temp / "head.log"
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
        "--dashboard-agent-listen-port", str(_free_port()),  # its default, 52365, would clash between two runs
        "--object-store-memory", str(100 * 1024 * 1024), "--temp-dir", str(temp / "ray"),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **HEAD_ENV}, start_new_session=True)
    try:
        deadline = time.monotonic() + HEAD_START_S
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start did not come up in {HEAD_START_S:g}s (exit {process.poll()}):\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(process)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


def project(folder: Path, url: str) -> Path:
    """One HTTP scenario whose every run is degraded (latency over 1 ms), so each run keeps its response as evidence."""
    (folder / "cxtest.yaml").write_text("store: sqlite:///results.db\n")
    scenario = folder / "slow.yaml"
    scenario.write_text(
        "name: slow\nchannel: http\n"
        f"target: {{ url: '{url}' }}\n"
        "steps:\n  - name: slow\n    request: GET /api/slow?ms=50\n"
        "    expect: { status: 200, latency: { degraded: 1ms } }\n"
    )
    return scenario


def stress_on_ray(folder: Path, scenario: Path, head: str, *options: str, env: dict[str, str] | None = None) -> tuple[int, list[dict]]:
    """`cxtest stress --ray HEAD --json`: its exit code and its JSON lines (the summary last)."""
    done = subprocess.run(
        [str(BIN / "cxtest"), "stress", str(scenario), "--ray", head, "--no-store", "--json", *options],
        cwd=folder, capture_output=True, text=True, timeout=90,  # cxtest keeps its own Ray connection on loopback
        env={**os.environ, **(env or {})},
    )
    stream = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert stream and "summary" in stream[-1], f"expected JSON lines ending in a summary, saw:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.returncode, stream


def test_two_actors_merge_into_one_verdict(tmp_path: Path, ray_head: str, sandbox: Sandbox) -> None:
    """--ray --workers 2 on a two-CPU head puts two actors to work; their iterations add up to the summary's, thresholds hold, exit 0."""
    scenario = project(tmp_path, sandbox.url)
    code, stream = stress_on_ray(tmp_path, scenario, ray_head, "--users", "4", "--duration", "3s", "--workers", "2",
                                 "--threshold", "rate(failed) < 1%", "--threshold", "p95(step:slow.latency) < 2s")
    summary = stream[-1]["summary"]
    assert code == 0, f"expected exit 0, saw {code}: {summary}"
    assert summary["errors"] == [], summary["errors"]
    assert set(summary["runs"]) == {"degraded"} and summary["runs"]["degraded"] > 20, summary["runs"]
    assert [(t["threshold"], t["ok"]) for t in summary["thresholds"]] == [
        ("rate(failed) < 1%", True), ("p95(step:slow.latency) < 2s", True)], summary["thresholds"]
    assert max(tick["users"] for tick in stream[:-1]) == 4, [tick["users"] for tick in stream[:-1]]
    # Each degraded run kept its response in <artifacts>/<stress id>/<scenario>/w<worker>-<n>/.
    [stress_dir] = (tmp_path / "artifacts").iterdir()
    folders = [path.name for path in stress_dir.glob("*/w*-*")]
    by_worker = {worker: sum(1 for name in folders if name.startswith(f"w{worker}-")) for worker in (0, 1)}
    assert by_worker[0] > 0 and by_worker[1] > 0, f"expected iterations from actors 0 and 1, saw {by_worker}"
    assert len(folders) == by_worker[0] + by_worker[1], f"expected only workers 0 and 1, saw {sorted(folders)[:10]}"
    assert sum(by_worker.values()) == summary["runs"]["degraded"], f"actors ran {by_worker}, the summary counts {summary['runs']}"


def test_a_shipped_working_dir_makes_project_paths_relative(tmp_path: Path) -> None:
    """With a runtime_env working_dir the scenario, project and artifacts paths under it become relative; others stay."""
    from cxtest.stress.cluster import portable

    config = WorkerConfig(
        scenario_file=str(tmp_path / "scenarios" / "a.yaml"), scenario_id="a", project_file=str(tmp_path / "cxtest.yaml"),
        plan={}, index=0, workers=1, stress_id="s", store_url=None, artifacts_root="/var/cx/artifacts",
    )
    moved = portable(config, str(tmp_path))
    assert (moved.scenario_file, moved.project_file, moved.artifacts_root) == ("scenarios/a.yaml", "cxtest.yaml", "/var/cx/artifacts")
    assert portable(config, None) == config


def test_the_project_ships_as_a_working_dir(tmp_path: Path, ray_head: str, sandbox: Sandbox) -> None:
    """With CXTEST_RAY_WORKING_DIR the actors run inside Ray's copy of the project: it passes, and evidence lands in the copy."""
    scenario = project(tmp_path, sandbox.url)
    code, stream = stress_on_ray(tmp_path, scenario, ray_head, "--users", "2", "--duration", "2s",
                                 "--threshold", "rate(failed) < 1%", env={"CXTEST_RAY_WORKING_DIR": str(tmp_path)})
    summary = stream[-1]["summary"]
    assert code == 0 and summary["errors"] == [] and summary["runs"].get("degraded", 0) > 5, summary
    assert not (tmp_path / "artifacts").exists(), "expected the evidence in Ray's copy of the project, not in the original"


def test_an_actor_that_cannot_load_the_scenario_is_reported(tmp_path: Path, ray_head: str, sandbox: Sandbox) -> None:
    """A variable only the coordinator has (not CXTEST_*) fails each actor's load: both errors named in the summary, exit 3."""
    scenario = project(tmp_path, "${env:STRESS_RAY_TEST_URL}")
    code, stream = stress_on_ray(tmp_path, scenario, ray_head, "--users", "2", "--duration", "2s",
                                 env={"STRESS_RAY_TEST_URL": sandbox.url})
    summary = stream[-1]["summary"]
    assert code == 3, f"expected exit 3 (nothing could be tested), saw {code}: {summary}"
    assert sorted(error.split(":", 1)[0] for error in summary["errors"]) == ["worker 0", "worker 1"], summary["errors"]
    assert all("STRESS_RAY_TEST_URL" in error for error in summary["errors"]), summary["errors"]


def test_an_address_where_nothing_listens_fails_at_once() -> None:
    """--ray at a closed port is refused in well under Ray's own minutes of retries, naming the address."""
    from cxtest.stress.cluster import ClusterUnreachable, check_reachable

    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable, match=f"no Ray cluster answers at {address} "):
        check_reachable(address)
    assert time.monotonic() - started < 2, "expected a refused connection to fail at once"
