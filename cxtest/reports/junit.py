"""JUnit XML for CI servers (Jenkins, GitLab, GitHub test reporters).

Layout: one <testsuites name="cxtest"> with the overall totals, one <testsuite> per
channel (http, ivr, chat...) so a CI page shows per-channel totals and timings, and one
<testcase> per scenario run. Outcomes map as: failed -> <failure>, error -> <error>,
skipped -> <skipped>, degraded -> a passing case with property outcome=degraded (a
degraded journey still worked; the CI gate must not fail on it). Steps, check texts and
artifacts go to <system-out>; artifacts as [[ATTACHMENT|path]] lines, which Jenkins'
attachments plugin and GitLab's unit test report both read.
"""

from __future__ import annotations

import datetime as _dt
import re
import xml.etree.ElementTree as ET
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Sequence

from cxtest.logs import redact
from cxtest.model import Outcome, Result, format_duration

from ._common import count_outcomes, outcome_of, step_label, write_text_atomic

# Characters XML 1.0 forbids even escaped (terminal colour codes, NULs from a bad reply...).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SCENARIO_SUFFIXES = (".yaml", ".yml", ".json")


def _text(value: object) -> str:
    """Redacted text that is always legal XML."""
    return _XML_INVALID.sub("\ufffd", redact(str(value) if value is not None else ""))


def _seconds(value: float) -> str:
    return f"{max(float(value or 0.0), 0.0):.3f}"


def classname(result: Result) -> str:
    """'scenarios/demo/billing.yaml' -> 'scenarios.demo.billing' (dots inside a part become _)."""
    file = str(result.file or "")
    if not file or file.startswith("<"):
        return f"cxtest.{result.channel or 'scenario'}"
    path: PurePath = PureWindowsPath(file) if "\\" in file else PurePosixPath(file)
    if path.is_absolute():
        try:
            if not isinstance(path, PurePosixPath):
                raise ValueError(file)
            path = PurePosixPath(Path(file).resolve().relative_to(Path.cwd().resolve()).as_posix())
        except ValueError:
            path = PurePosixPath(*path.parts[1:])  # outside the project: drop the root only
    parts = [p for p in path.parts if p not in ("", ".", "..")]
    if parts and parts[-1].lower().endswith(_SCENARIO_SUFFIXES):
        parts[-1] = parts[-1].rsplit(".", 1)[0]
    parts = [re.sub(r"[.\s]+", "_", p) for p in parts]
    return ".".join(parts) or f"cxtest.{result.channel or 'scenario'}"


def _problem_lines(result: Result) -> list[str]:
    """Every failed/degraded/error check text, prefixed by its step; bare failing steps too."""
    lines: list[str] = []
    bad = {Outcome.degraded, Outcome.failed, Outcome.error}
    for step in result.steps:
        label = step_label(step)
        texts = [c.text for c in step.checks if outcome_of(c.outcome) in bad]
        for text in texts:
            lines.append(f"{label}: {text}")
        if outcome_of(step.outcome) in bad and step.message and step.message not in texts:
            lines.append(f"{label}: {step.message}")
    for check in result.checks:
        if outcome_of(check.outcome) in bad:
            lines.append(check.text)
    return lines


def _system_out(result: Result, outcome: Outcome, problems: list[str]) -> str:
    lines: list[str] = []
    if result.flaky:
        lines.append(f"flaky: passed on attempt {result.attempts}")
    if outcome is Outcome.degraded:
        # The case passes, so this is the only place a CI page shows why it is degraded.
        lines.append(f"degraded: {result.message}" if result.message else "degraded")
        lines.extend(f"  {line}" for line in problems)
    for step in result.steps:
        line = f"{step_label(step)} {outcome_of(step.outcome).value} {format_duration(max(step.duration, 0.0))}"
        if step.message:
            line += f": {step.message}"
        lines.append(line)
        for check in step.checks:
            lines.append(f"  [{outcome_of(check.outcome).value}] {check.text}")
    if result.checks:
        lines.append("scenario checks:")
        for check in result.checks:
            lines.append(f"  [{outcome_of(check.outcome).value}] {check.text}")
    if result.measures:
        lines.append("measures: " + ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                              for k, v in result.measures.items()))
    for artifact in result.artifacts:
        lines.append(f"{artifact.kind}: {artifact.label}")
        lines.append(f"[[ATTACHMENT|{artifact.path}]]")
    return "\n".join(lines)


def _testcase(suite: ET.Element, result: Result) -> None:
    outcome = outcome_of(result.outcome)
    case = ET.SubElement(
        suite,
        "testcase",
        classname=_text(classname(result)),
        name=_text(result.scenario_name or result.scenario_id),
        time=_seconds(result.duration),
        file=_text(result.file),
    )
    properties: list[tuple[str, str]] = []
    if outcome is Outcome.degraded:
        properties.append(("outcome", "degraded"))
    if result.flaky:
        properties.append(("flaky", "true"))
    if result.flaky or result.attempts > 1:
        properties.append(("attempts", str(result.attempts)))
    if properties:
        props = ET.SubElement(case, "properties")
        for name, value in properties:
            ET.SubElement(props, "property", name=name, value=_text(value))

    problems = _problem_lines(result)
    if outcome in (Outcome.failed, Outcome.error):
        message = result.message or (problems[0] if problems else outcome.value)
        reasons = [line for line in problems if line != result.message]
        body = "\n".join([result.message, *reasons] if result.message else reasons)
        tag = "failure" if outcome is Outcome.failed else "error"
        element = ET.SubElement(case, tag, message=_text(message), type=outcome.value)
        element.text = _text(body or message)
    elif outcome is Outcome.skipped:
        ET.SubElement(case, "skipped", message=_text(result.message or "skipped"))

    out = _system_out(result, outcome, problems)
    if out:
        ET.SubElement(case, "system-out").text = _text(out)


def _timestamp(results: Sequence[Result]) -> str:
    try:
        first = min(r.started_at for r in results)
    except (TypeError, ValueError):
        first = _dt.datetime.now(_dt.timezone.utc)
    return first.isoformat(timespec="seconds")


def _totals(element: ET.Element, results: Sequence[Result]) -> None:
    counts = count_outcomes(results)
    element.set("tests", str(len(results)))
    element.set("failures", str(counts["failed"]))
    element.set("errors", str(counts["error"]))
    element.set("skipped", str(counts["skipped"]))
    element.set("time", _seconds(sum(max(r.duration or 0.0, 0.0) for r in results)))


def junit_xml(results: Sequence[Result]) -> str:
    results = list(results)
    root = ET.Element("testsuites", name="cxtest")
    _totals(root, results)
    suites: dict[str, list[Result]] = {}
    for result in results:
        suites.setdefault(result.channel or "cxtest", []).append(result)
    if not suites:
        suites["cxtest"] = []  # some CI parsers reject a <testsuites> without a suite
    for channel, group in suites.items():
        suite = ET.SubElement(root, "testsuite", name=_text(channel))
        _totals(suite, group)
        suite.set("timestamp", _timestamp(group))
        run_ids = sorted({r.run_id for r in group if r.run_id})
        locations = sorted({r.location for r in group if r.location})
        if run_ids or locations:
            props = ET.SubElement(suite, "properties")
            for run_id in run_ids:
                ET.SubElement(props, "property", name="run_id", value=_text(run_id))
            for location in locations:
                ET.SubElement(props, "property", name="location", value=_text(location))
        for result in group:
            _testcase(suite, result)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(results: Sequence[Result], path: Path) -> None:
    write_text_atomic(Path(path), junit_xml(results))
