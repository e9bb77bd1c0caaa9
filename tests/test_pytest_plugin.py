"""The pytest plugin: `pytest scenarios/` turns scenario files into test items with readable failures."""

from __future__ import annotations

import re
from typing import Iterator

import pytest

from cxtest.sandbox.server import Sandbox

pytest_plugins = ["pytester"]

PROJECT = "store: sqlite:///results.db\nartifacts: artifacts\ndefaults:\n  step_timeout: 5s\n"

STATUS = """\
name: Contact centre status is up
channel: http
target: {{ url: "{url}" }}
steps:
  - name: status
    request: GET /api/status
    expect:
      status: 200
      json_path: {{ $.status: up }}
"""

BAD = """\
name: Bad scenario
channel: http
target: { url: "http://127.0.0.1:1" }
steps:
  - request: GET /api/status
    expect:
      statuss: 200
"""

NOT_A_SCENARIO = """\
# some other tool's settings, next to the scenarios
name: docker-compose-ish
services:
  web: { image: nginx }
"""


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


@pytest.fixture(scope="module")
def broken_sandbox() -> Iterator[Sandbox]:
    with Sandbox(broken=True) as sb:
        yield sb


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".yaml", cxtest=PROJECT)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def test_passing_scenario_passes(project: pytest.Pytester, sandbox: Sandbox) -> None:
    """A scenario whose expectations hold is one passing test item named after the file."""
    project.makefile(".yaml", status=STATUS.format(url=sandbox.url))
    result = run(project, "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*status.yaml::status PASSED*"])


def test_failing_scenario_fails_with_readable_text(project: pytest.Pytester, broken_sandbox: Sandbox) -> None:
    """A failing scenario fails with the step, the check sentence and an evidence line, not a traceback."""
    project.makefile(".yaml", status=STATUS.format(url=broken_sandbox.url))
    result = run(project)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "failed: Contact centre status is up (status.yaml) after " in out
    assert "  step 1 (status) failed " in out
    assert "    failed: status (503) == 200" in out
    assert "    failed: $.status ('degraded') == 'up'" in out
    evidence = re.search(r"^  evidence: (\S+step-1-response\.txt)$", out, re.MULTILINE)
    assert evidence, out
    assert "HTTP 503" in (project.path / evidence.group(1)).read_text()
    assert "Traceback" not in out and "runner.py" not in out


def test_bad_scenario_fails_with_located_problem(project: pytest.Pytester) -> None:
    """A bad scenario file is a failing item whose text is `file:line:col path: message`."""
    project.makefile(".yaml", bad=BAD)
    result = run(project)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["bad.yaml:7:7 steps[[]0[]].expect.statuss: unknown key 'statuss'; did you mean 'status'?"])


def test_yaml_that_is_not_a_scenario_is_not_collected(project: pytest.Pytester, sandbox: Sandbox) -> None:
    """YAML without top-level channel and steps (and cxtest.yaml itself) is left alone."""
    project.makefile(".yaml", status=STATUS.format(url=sandbox.url), other=NOT_A_SCENARIO)
    project.makefile(".yml", half="channel: http\nname: no steps here\n")
    result = run(project, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["status.yaml::status", "1 test collected*"])
    assert "other" not in result.stdout.str() and "half" not in result.stdout.str()
    assert "cxtest.yaml" not in result.stdout.str()
