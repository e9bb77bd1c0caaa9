"""Machine-readable report: every result with its steps, checks, measures and artifacts.

All text goes through cxtest.logs.redact, datetimes are ISO 8601, enums are their values,
and values of unknown types (a check's expected/actual can be anything a probe saw) fall
back to str() so the document always serialises.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
from pathlib import Path, PurePath
from typing import Any, Mapping, Sequence

from cxtest.logs import redact
from cxtest.model import Artifact, CheckResult, Result, StepResult

from ._common import count_outcomes, outcome_of, step_label, write_text_atomic

FORMAT = "cxtest-report"
VERSION = 1
_MAX_DEPTH = 32  # deeper than any sane observation; guards against cycles


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-safe, redacted copy of `value`; non-finite floats become None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value, _depth + 1)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return redact(value)
    if _depth >= _MAX_DEPTH:
        return redact(str(value))
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, PurePath):
        return redact(str(value))
    if isinstance(value, (bytes, bytearray)):
        return redact(bytes(value).decode("utf-8", errors="replace"))
    if isinstance(value, Mapping):
        return {redact(str(k)): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = value
        if isinstance(value, (set, frozenset)):
            try:
                items = sorted(value)
            except TypeError:
                items = list(value)
        return [jsonable(v, _depth + 1) for v in items]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name), _depth + 1) for f in dataclasses.fields(value)}
    model_dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(model_dump) and not isinstance(value, type):
        try:
            return jsonable(model_dump(mode="json"), _depth + 1)
        except Exception:  # noqa: BLE001 - a report must never fail on a strange value
            pass
    try:
        return redact(str(value))
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(value).__name__}>"


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _measures(measures: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in (measures or {}).items():
        number = _float(value) if not isinstance(value, bool) else None
        out[redact(str(name))] = number if number is not None or value is None else jsonable(value)
    return out


def check_to_dict(check: CheckResult) -> dict[str, Any]:
    return {
        "name": redact(str(check.name)),
        "outcome": outcome_of(check.outcome).value,
        "expected": jsonable(check.expected),
        "actual": jsonable(check.actual),
        "text": redact(str(check.text)),
    }


def step_to_dict(step: StepResult) -> dict[str, Any]:
    return {
        "index": step.index,
        "name": redact(step.name or ""),
        "label": redact(step_label(step)),
        "outcome": outcome_of(step.outcome).value,
        "started": _float(step.started) or 0.0,
        "duration": _float(step.duration) or 0.0,
        "message": redact(step.message or ""),
        "checks": [check_to_dict(c) for c in step.checks],
        "measures": _measures(step.measures),
        "evidence": {redact(str(k)): redact(str(v)) for k, v in (step.evidence or {}).items()},
    }


def artifact_to_dict(artifact: Artifact) -> dict[str, Any]:
    return {"label": redact(artifact.label), "path": redact(str(artifact.path)), "kind": redact(artifact.kind)}


def result_to_dict(result: Result) -> dict[str, Any]:
    return {
        "scenario_id": redact(result.scenario_id),
        "scenario_name": redact(result.scenario_name),
        "channel": redact(result.channel),
        "file": redact(str(result.file)),
        "outcome": outcome_of(result.outcome).value,
        "started_at": jsonable(result.started_at),
        "duration": _float(result.duration) or 0.0,
        "message": redact(result.message or ""),
        "attempts": result.attempts,
        "flaky": bool(result.flaky),
        "tags": [redact(t) for t in result.tags],
        "location": redact(result.location),
        "run_id": redact(result.run_id),
        "steps": [step_to_dict(s) for s in result.steps],
        "checks": [check_to_dict(c) for c in result.checks],
        "measures": _measures(result.measures),
        "artifacts": [artifact_to_dict(a) for a in result.artifacts],
    }


def _finished(result: Result) -> _dt.datetime:
    return result.started_at + _dt.timedelta(seconds=_float(result.duration) or 0.0)


def _span(results: Sequence[Result]) -> tuple[str | None, str | None]:
    """First start and last finish; None when empty or when naive and aware datetimes mix."""
    if not results:
        return None, None
    try:
        first = min(r.started_at for r in results)
        last = max(_finished(r) for r in results)
    except TypeError:
        return None, None
    return first.isoformat(), last.isoformat()


def summarize(results: Sequence[Result]) -> dict[str, Any]:
    counts = count_outcomes(results)
    started_at, finished_at = _span(results)
    return {
        "total": len(results),
        **counts,
        "flaky": sum(1 for r in results if r.flaky),
        "ok": counts["failed"] == 0 and counts["error"] == 0,
        "duration": round(sum(_float(r.duration) or 0.0 for r in results), 6),
        "started_at": started_at,
        "finished_at": finished_at,
        "run_ids": sorted({redact(r.run_id) for r in results if r.run_id}),
        "locations": sorted({redact(r.location) for r in results if r.location}),
    }


def results_to_dict(results: Sequence[Result]) -> dict[str, Any]:
    """The whole report as plain JSON-safe data (what write_json writes)."""
    results = list(results)
    return {
        "format": FORMAT,
        "version": VERSION,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "summary": summarize(results),
        "results": [result_to_dict(r) for r in results],
    }


def write_json(results: Sequence[Result], path: Path) -> None:
    text = json.dumps(results_to_dict(results), indent=2, ensure_ascii=False, allow_nan=False)
    write_text_atomic(Path(path), text + "\n")
