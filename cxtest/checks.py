"""Checks judge: expectations turn what a probe saw into passed / degraded / failed.

Every CheckResult keeps what was expected, what was seen and a sentence saying
both, Gatus-style: `status (500) == 200`, `latency (812ms) > 500ms`.
"""

from __future__ import annotations

import difflib
import operator
import re
from typing import Annotated, Any, Mapping


from pydantic import BeforeValidator, model_validator

from cxtest.model import CheckResult, Frozen, Levels, Outcome, format_duration

# Measures where a smaller value is worse; every other measure is worse when larger.
HIGHER_IS_BETTER = frozenset({"tls_days_left", "mos", "quality", "confidence", "similarity", "level"})
SECONDS = frozenset(
    {"latency", "duration", "ttfb", "dom_content_loaded", "load", "time_to_answer", "post_dial_delay", "time_to_first_audio", "prompt_duration", "greeting_duration", "dead_air", "jitter"}
)

ABSENT = object()


def show(value: Any, limit: int = 60) -> str:
    if value is ABSENT:
        return "absent"
    text = repr(value)
    if len(text) <= limit:
        return text
    # Close a cut string's quote; other values (lists, mappings) have none to close.
    return text[: limit - 1] + "…" + (text[0] if isinstance(value, str) else "")


def show_measure(name: str, value: float) -> str:
    if name in SECONDS or name.endswith(("latency", "_time")):
        return format_duration(value)
    return f"{value:g}"


# --------------------------------------------------------------------------- levels


def judge_levels(name: str, value: float, levels: Levels, label: str | None = None) -> CheckResult:
    """One measure against its degraded and failed levels."""
    label = label or name
    higher_is_better = name in HIGHER_IS_BETTER
    worse, ok = ("<", ">=") if higher_is_better else (">", "<=")

    def crossed(limit: float | None) -> bool:
        return limit is not None and (value < limit if higher_is_better else value > limit)

    seen = show_measure(name, value)
    expected = {k: v for k, v in (("degraded", levels.degraded), ("failed", levels.failed)) if v is not None}
    if crossed(levels.failed):
        outcome, text = Outcome.failed, f"{label} ({seen}) {worse} {show_measure(name, levels.failed)}"
    elif crossed(levels.degraded):
        text = f"{label} ({seen}) {worse} {show_measure(name, levels.degraded)} (degraded level)"
        outcome = Outcome.degraded
    else:
        tightest = levels.degraded if levels.degraded is not None else levels.failed
        outcome = Outcome.passed
        text = f"{label} ({seen}) {ok} {show_measure(name, tightest)}" if tightest is not None else f"{label} ({seen})"
    return CheckResult(label, outcome, expected, value, text)


def judge_thresholds(thresholds: Mapping[str, Levels], measures: Mapping[str, float]) -> list[CheckResult]:
    """Scenario-level limits against the run's measures; a measure never recorded fails loudly."""
    results = []
    for name, levels in thresholds.items():
        if name in measures:
            results.append(judge_levels(name, measures[name], levels))
        else:
            results.append(CheckResult(name, Outcome.failed, levels, ABSENT, f"{name} was not measured in this run"))
    return results


# --------------------------------------------------------------------------- value matchers


def _shorthand(value: Any) -> Any:
    if isinstance(value, Match):
        return value
    if isinstance(value, dict) and value.keys() & Match.model_fields.keys():
        return value
    if isinstance(value, dict):
        # A mapping may be a JSON object to compare with, or a misspelled matcher: refuse the latter.
        for key in value:
            close = difflib.get_close_matches(str(key), Match.model_fields, n=1, cutoff=0.75)
            if close:
                raise ValueError(
                    f"unknown matcher '{key}'; did you mean '{close[0]}'? (to compare with a mapping, write equals: {{...}})"
                )
    if isinstance(value, list):
        return {"one_of": value}
    return {"equals": value}


def valid_regex(value: str | None) -> str | None:
    """A validator's check: the regular expression compiles, or a ValueError naming it."""
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regular expression {value!r}: {exc}") from None
    return value


class Match(Frozen):
    """Expectations on one value. A bare value means `equals`, a list means `one_of`."""

    equals: Any = None
    not_equals: Any = None
    contains: str | None = None
    not_contains: str | None = None
    matches: str | None = None
    one_of: list[Any] | None = None
    exists: bool | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    length: int | None = None

    @model_validator(mode="after")
    def _valid_regex(self) -> "Match":
        valid_regex(self.matches)
        return self


ValueMatch = Annotated[Match, BeforeValidator(_shorthand)]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b  # true is neither 1 nor "True" (and True == 1 in Python)
    if a == b:
        return True
    scalars = (str, int, float)
    return isinstance(a, scalars) and isinstance(b, scalars) and str(a) == str(b)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def judge_match(label: str, actual: Any, match: Match) -> list[CheckResult]:
    """Every expectation set on `match`, each its own CheckResult."""
    results: list[CheckResult] = []
    seen = show(actual)

    def record(ok: bool, expected: Any, sentence: str) -> None:
        results.append(CheckResult(label, Outcome.passed if ok else Outcome.failed, expected, actual, sentence))

    fields = match.model_fields_set
    if "exists" in fields:
        present = actual is not ABSENT
        record(present == match.exists, match.exists, f"{label} {'exists' if match.exists else 'is absent'}" + ("" if present == match.exists else f" ({seen})"))
    if "equals" in fields:
        record(same(actual, match.equals), match.equals, f"{label} ({seen}) == {show(match.equals)}")
    if "not_equals" in fields:
        record(not same(actual, match.not_equals), match.not_equals, f"{label} ({seen}) != {show(match.not_equals)}")
    text = None if actual is ABSENT else (actual if isinstance(actual, str) else str(actual))
    if match.contains is not None:
        record(text is not None and match.contains in text, match.contains, f"{label} ({seen}) contains {show(match.contains)}")
    if match.not_contains is not None:
        record(text is not None and match.not_contains not in text, match.not_contains, f"{label} ({seen}) does not contain {show(match.not_contains)}")
    if match.matches is not None:
        found = text is not None and re.search(match.matches, text) is not None
        record(found, match.matches, f"{label} ({seen}) matches {show(match.matches)}")
    if match.one_of is not None:
        record(any(same(actual, v) for v in match.one_of), match.one_of, f"{label} ({seen}) in {show(match.one_of)}")
    for limit, compare, sign in ((match.gt, operator.gt, ">"), (match.ge, operator.ge, ">="), (match.lt, operator.lt, "<"), (match.le, operator.le, "<=")):
        if limit is not None:
            number = _number(actual)
            record(number is not None and compare(number, limit), limit, f"{label} ({seen}) {sign} {limit:g}")
    if match.length is not None:
        size = len(actual) if isinstance(actual, (str, list, dict)) else None
        results.append(
            CheckResult(
                f"len({label})",
                Outcome.passed if size == match.length else Outcome.failed,
                match.length,
                size,
                f"len({label}) ({'n/a' if size is None else size}) == {match.length}",
            )
        )
    return results
