"""The `cxtest` command as a user (or a CI job) runs it: a subprocess in a project folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from cxtest.sandbox.server import Sandbox
from cxtest.store import Store

REPO = Path(__file__).resolve().parents[1]
CXTEST = Path(sys.executable).with_name("cxtest")
if not CXTEST.exists():
    CXTEST = REPO / ".venv" / "bin" / "cxtest"

SECRET = "demo-pass"  # the sandbox password, as in scenarios/demo/secrets/sandbox-password.txt

PROJECT = """\
store: sqlite:///../results.db
artifacts: ../artifacts
defaults:
  step_timeout: 5s
"""

OK = """\
name: Status is up
channel: http
target: { url: "${env:CXTEST_SANDBOX_URL}" }
steps:
  - request: GET /api/status
    expect: { status: 200 }
tags: [smoke]
"""

SLOW = """\
name: Slow but working
channel: http
target: { url: "${env:CXTEST_SANDBOX_URL}" }
steps:
  - request: GET /api/slow?ms=60
    expect:
      status: 200
      latency: { degraded: 20ms, failed: 2s }
"""

BAD = """\
name: Bad scenario
channel: http
target: { url: "${env:CXTEST_SANDBOX_URL}" }
steps:
  - request: GET /api/status
    expect:
      statuss: 200
"""

UNREACHABLE = """\
name: Nobody home
channel: http
target: { url: "http://127.0.0.1:{port}" }
steps:
  - request: GET /api/status
"""

FAST = OK.replace("/api/status", "/api/slow?ms=1")  # passes against a broken sandbox too
STATUS = (REPO / "scenarios" / "demo" / "status.yaml").read_text()  # fails against a broken sandbox

LOGIN_FAILS = """\
name: Login answers 500
channel: http
target: { url: "${env:CXTEST_SANDBOX_URL}" }
steps:
  - name: sign in
    request:
      method: POST
      url: /api/login
      json: { user: demo, password: "${file:secrets/password.txt}" }
    expect: { status: 500 }
"""


# --------------------------------------------------------------------------- the runs
#
# Every test below reads one CLI run. The runs are independent (one project folder
# each), so they are started together, a few at a time, the first time a test asks:
# a cold `cxtest` costs about a second of start-up, mostly imports.

REPORTS = ("--junit", "out/junit.xml", "--json", "out/results.json", "--html", "out/report.html")

#: name -> (scenario files, arguments, which sandbox CXTEST_SANDBOX_URL points at)
RUNS: dict[str, tuple[dict[str, str], tuple[str, ...], str | None]] = {
    "passed_or_degraded": ({"ok": OK, "slow": SLOW}, ("run",), "sandbox"),
    "broken": ({"ok": FAST, "status": STATUS, "login": LOGIN_FAILS}, ("run", *REPORTS), "broken"),
    "bad_files": ({"ok": OK, "bad": BAD, "broken": "name: x\nchannel: http\nsteps: [\n"}, ("run",), "sandbox"),
    "unreachable": ({"down": UNREACHABLE}, ("run",), None),
    "failed_and_error": ({"status": STATUS, "down": UNREACHABLE}, ("run",), "broken"),
    "tag": ({"ok": OK, "slow": SLOW}, ("run", "--tag", "smoke", "--json", "-", "--no-store"), "sandbox"),
    "unknown_tag": ({"ok": OK}, ("run", "--tag", "nope"), "sandbox"),
    "json_stdout": ({"ok": FAST, "status": STATUS}, ("run", "--json", "-"), "broken"),
    "quiet": ({"ok": FAST, "status": STATUS}, ("run", "--quiet"), "broken"),
    "no_store": ({"ok": OK}, ("run", "--no-store"), "sandbox"),
    "validate": ({"ok": OK, "slow": SLOW}, ("validate",), "sandbox"),
    "demo": ({}, ("demo",), None),
    "demo_break": ({}, ("demo", "--break"), None),
}


class Run:
    def __init__(self, root: Path, proc: subprocess.CompletedProcess[str]):
        self.root = root
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def reports(self) -> dict[str, str]:
        """stdout, stderr and the three report files, by name."""
        found = {"stdout": self.stdout, "stderr": self.stderr}
        for name in ("report.html", "junit.xml", "results.json"):
            found[name] = (self.root / "out" / name).read_text()
        return found


def cxtest(cwd: Path, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXTEST_", "FORCE_COLOR"))}
    env.update(NO_COLOR="1", COLUMNS="160")
    if url is not None:
        env["CXTEST_SANDBOX_URL"] = url
    return subprocess.run([str(CXTEST), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=90)


def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_project(root: Path, files: dict[str, str], port: int) -> Path:
    """scenarios/cxtest.yaml plus scenarios/<name>.yaml per file, and the ${file:...} secret they use."""
    folder = root / "scenarios"
    (folder / "secrets").mkdir(parents=True)
    (folder / "secrets" / "password.txt").write_text(SECRET + "\n")
    (folder / "cxtest.yaml").write_text(PROJECT)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text.replace("{port}", str(port)))
    return root


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


@pytest.fixture(scope="module")
def broken_sandbox() -> Iterator[Sandbox]:
    with Sandbox(broken=True) as sb:
        yield sb


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, sandbox: Sandbox, broken_sandbox: Sandbox) -> dict[str, Run]:
    urls = {"sandbox": sandbox.url, "broken": broken_sandbox.url, None: None}
    port = closed_port()

    roots = {}
    for name, (files, args, _) in RUNS.items():
        roots[name] = root = tmp_path_factory.mktemp(name)
        if args[0] == "demo":  # the demo runs scenarios/demo below the working folder
            # Without the IVR and phone scenarios: four cxtest runs at once on two cores would starve their
            # speech recognition; tests/test_ivr_demo.py runs the whole demo on its own.
            shutil.copytree(REPO / "scenarios", root / "scenarios", ignore=shutil.ignore_patterns("__pycache__", "ivr_*.yaml", "phone_*"))
        else:
            make_project(root, files, port)

    def one(name: str) -> Run:
        _, args, url = RUNS[name]
        return Run(roots[name], cxtest(roots[name], *args, url=urls[url]))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(RUNS, pool.map(one, RUNS)))


# --------------------------------------------------------------------------- exit codes


def test_exit_0_when_all_passed_or_degraded(runs: dict[str, Run]) -> None:
    """Exit 0 when every scenario passed or was only degraded; the summary line counts both."""
    run = runs["passed_or_degraded"]
    assert run.code == 0, run
    assert re.search(r"^1 passed, 1 degraded in 2 scenario\(s\), \S+ of probe time$", run.stdout, re.MULTILINE), run
    assert "latency (" in run.stdout and "> 20ms (degraded level)" in run.stdout


def test_exit_1_when_a_scenario_fails(runs: dict[str, Run]) -> None:
    """Exit 1 when an expectation does not hold, with the check sentence and where the evidence is."""
    run = runs["broken"]
    assert run.code == 1, run
    assert "status (503) == 200" in run.stdout
    assert "evidence for Contact centre status is up: " in run.stdout
    assert "1 passed, 2 failed in 3 scenario(s)" in run.stdout


def test_exit_2_on_bad_scenario_files(runs: dict[str, Run]) -> None:
    """Exit 2 on bad files, every problem as `file:line:col path: message` on stderr, nothing run."""
    run = runs["bad_files"]
    assert run.code == 2, run
    lines = run.stderr.splitlines()
    assert "scenarios/bad.yaml:7:7 steps[0].expect.statuss: unknown key 'statuss'; did you mean 'status'?" in lines, run
    assert any(re.fullmatch(r"scenarios/broken\.yaml:\d+:\d+ YAML syntax error: .+", line) for line in lines), run
    assert lines[-1] == "2 problem(s) in 2 file(s)"
    assert run.stdout == ""
    assert not (run.root / "results.db").exists()


def test_exit_3_when_the_target_is_unreachable(runs: dict[str, Run]) -> None:
    """Exit 3 when a scenario could not be tested (nothing listening on the target port)."""
    run = runs["unreachable"]
    assert run.code == 3, run
    assert "cannot connect to http://127.0.0.1:" in run.stdout or "connection refused" in run.stdout, run
    assert "1 error in 1 scenario(s)" in run.stdout


def test_failed_beats_error(runs: dict[str, Run]) -> None:
    """With one failed and one error result the exit code is 1: a failure is the stronger signal."""
    run = runs["failed_and_error"]
    assert run.code == 1, run
    assert "1 failed, 1 error in 2 scenario(s)" in run.stdout


# --------------------------------------------------------------------------- selection and output


def test_tag_selects_only_tagged_scenarios(runs: dict[str, Run]) -> None:
    """`--tag smoke` runs only the scenarios tagged smoke."""
    run = runs["tag"]
    assert run.code == 0, run
    assert [r["scenario_id"] for r in json.loads(run.stdout)["results"]] == ["ok"]


def test_tag_nobody_has_is_a_usage_error(runs: dict[str, Run]) -> None:
    """A tag no scenario has is exit 2 with a message, not an empty green run."""
    run = runs["unknown_tag"]
    assert run.code == 2 and "no scenario has tag(s) nope" in run.stderr, run


def test_junit_json_and_html_reports(runs: dict[str, Run]) -> None:
    """--junit, --json and --html write the three reports with the same results in each."""
    run = runs["broken"]
    out = run.root / "out"

    suites = ET.parse(out / "junit.xml").getroot()
    assert (suites.tag, suites.get("tests"), suites.get("failures"), suites.get("errors")) == ("testsuites", "3", "2", "0")
    cases = {case.get("name"): case for case in suites.iter("testcase")}
    assert set(cases) == {"Status is up", "Contact centre status is up", "Login answers 500"}
    failure = cases["Contact centre status is up"].find("failure")
    assert failure is not None and "status (503) == 200" in failure.get("message", "")
    assert cases["Status is up"].find("failure") is None

    report = json.loads((out / "results.json").read_text())
    summary = report["summary"]
    assert (summary["total"], summary["passed"], summary["failed"], summary["error"]) == (3, 1, 2, 0)
    assert {r["scenario_id"]: r["outcome"] for r in report["results"]} == {"ok": "passed", "status": "failed", "login": "failed"}
    [status] = [r for r in report["results"] if r["scenario_id"] == "status"]
    assert "status (503) == 200" in [c["text"] for c in status["steps"][0]["checks"]]

    html = (out / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "Contact centre status is up" in html and "status (503) == 200" in html


def test_json_dash_prints_only_json_on_stdout(runs: dict[str, Run]) -> None:
    """`--json -` puts the JSON report on stdout and nothing else there, even when something fails."""
    run = runs["json_stdout"]
    assert run.code == 1, run
    report = json.loads(run.stdout)  # the whole of stdout is one JSON document
    assert (report["summary"]["total"], report["summary"]["failed"]) == (2, 1)


def test_quiet_prints_only_the_summary_line(runs: dict[str, Run]) -> None:
    """`--quiet` prints the one summary line: no progress, no table, no evidence paths."""
    run = runs["quiet"]
    assert run.code == 1, run
    assert re.fullmatch(r"1 passed, 1 failed in 2 scenario\(s\), \S+ of probe time\n", run.stdout), run
    assert run.stderr == "", run


# --------------------------------------------------------------------------- the store


def test_no_store_writes_no_database(runs: dict[str, Run]) -> None:
    """`--no-store` runs the scenarios without creating the results database."""
    run = runs["no_store"]
    assert run.code == 0, run
    assert not (run.root / "results.db").exists()
    assert not list(run.root.rglob("*.db"))


def test_default_run_stores_results_and_status_lists_them(runs: dict[str, Run]) -> None:
    """By default results go to the store named in cxtest.yaml, and `cxtest status` lists the latest ones."""
    run = runs["broken"]
    db = run.root / "results.db"  # `sqlite:///../results.db` is relative to cxtest.yaml's folder
    assert db.is_file(), run
    with Store(f"sqlite:///{db}") as store:
        latest = {r.scenario_id: r.outcome.value for r in store.latest()}
    assert latest == {"login": "failed", "ok": "passed", "status": "failed"}

    status = cxtest(run.root, "status")
    assert status.returncode == 0, status
    outcomes = ("passed", "degraded", "failed", "error")
    rows = {line.split()[1]: line.split()[0] for line in status.stdout.splitlines() if line.split()[:1] and line.split()[0] in outcomes}
    assert rows == latest, status.stdout
    assert "status (503) == 200" in status.stdout


def test_validate_a_good_folder(runs: dict[str, Run]) -> None:
    """`cxtest validate` on good files exits 0 and says how many scenarios it checked."""
    run = runs["validate"]
    assert run.code == 0, run
    assert "ok: 2 scenario(s)" in run.stdout + run.stderr


# --------------------------------------------------------------------------- demo and secrets


@pytest.mark.parametrize(("name", "code", "failed"), [("demo", 0, 0), ("demo_break", 1, 3)])
def test_demo(runs: dict[str, Run], name: str, code: int, failed: int) -> None:
    """`cxtest demo` exits 0 and `demo --break` exits 1; both write out/report.html, out/junit.xml, out/results.json."""
    run = runs[name]
    assert run.code == code, run
    outputs = run.reports()
    report = json.loads(outputs["results.json"])
    assert (report["summary"]["total"], report["summary"]["failed"]) == (11, failed)
    assert len(list(ET.fromstring(outputs["junit.xml"]).iter("testcase"))) == 11
    assert "Contact centre status is up" in outputs["report.html"]
    assert (run.root / "out" / "cxtest.db").is_file()


@pytest.mark.parametrize("name", ["demo", "demo_break", "broken"])
def test_file_secret_never_shown(runs: dict[str, Run], name: str) -> None:
    """A ${file:...} password is in no report file and not on stdout or stderr, even as failing evidence."""
    outputs = runs[name].reports()
    for where, text in outputs.items():
        assert SECRET not in text, f"password shown in {where}"
    if name == "broken":  # the failing login's request is in the evidence, with the placeholder instead
        [login] = [r for r in json.loads(outputs["results.json"])["results"] if r["scenario_id"] == "login"]
        assert "${file:secrets/password.txt}" in json.dumps(login["steps"][0]["evidence"])
