"""`pytest scenarios/`: every scenario file becomes a test item with readable failure text.

A YAML file counts as a scenario when it has top-level `channel:` and `steps:` keys,
so other YAML in a repository is left alone. `-p no:cxtest` turns the plugin off.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cxtest.errors import ScenarioError
from cxtest.loader import PROJECT_FILE, SCENARIO_SUFFIXES, expand_scenario, find_project_file, load_project, load_scenario
from cxtest.model import Outcome, Project, Result, format_duration

_TOP_LEVEL = re.compile(r"^(channel|steps)\s*:", re.MULTILINE)


def _looks_like_scenario(path: Path) -> bool:
    try:
        keys = set(_TOP_LEVEL.findall(path.read_text(errors="replace")))
    except OSError:
        return False
    return keys == {"channel", "steps"}


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in SCENARIO_SUFFIXES and file_path.name != PROJECT_FILE and _looks_like_scenario(file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    def collect(self):
        yield ScenarioItem.from_parent(self, name=self.path.stem)


class ScenarioFailed(Exception):
    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def _project(config: pytest.Config, path: Path) -> Project:
    cache: dict[Path | None, Project] = config.stash.setdefault(_projects, {})
    file = find_project_file(path)
    if file not in cache:
        cache[file] = load_project(file)
    return cache[file]


_projects = pytest.StashKey[dict]()


class ScenarioItem(pytest.Item):
    def runtest(self) -> None:
        from cxtest.runner import run

        try:
            project = _project(self.config, self.path)
            scenarios = expand_scenario(load_scenario(self.path, project))
        except ScenarioError as exc:
            raise ScenarioFailed("\n".join(str(p) for p in exc.problems)) from None
        results = run(scenarios, project)  # one, or one per number of a phone inventory
        worst = Outcome.worst([r.outcome for r in results])
        self.user_properties.append(("outcome", worst.value))
        if worst in (Outcome.failed, Outcome.error):
            raise ScenarioFailed("\n".join(describe_failure(r) for r in results if r.outcome in (Outcome.failed, Outcome.error)))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return excinfo.value.text
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario {self.name}"


def describe_failure(result: Result) -> str:
    """What went wrong, step by step, the way a person reads it."""
    from cxtest.logs import redact

    lines = [f"{result.outcome.value}: {result.scenario_name} ({result.file}) after {format_duration(result.duration)}"]
    for step in result.steps:
        lines.append(f"  step {step.index + 1} ({step.name}) {step.outcome.value} {format_duration(step.duration)}")
        for check in step.checks:
            if check.outcome is not Outcome.passed:
                lines.append(f"    {check.outcome.value}: {check.text}")
        if step.message and not step.checks:
            lines.append(f"    {step.message}")
    for check in result.checks:
        if check.outcome is not Outcome.passed:
            lines.append(f"  threshold {check.outcome.value}: {check.text}")
    for artifact in result.artifacts:
        lines.append(f"  evidence: {artifact.path}")
    return redact("\n".join(lines))
