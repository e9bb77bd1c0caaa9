"""Small helpers the report writers share: outcome coercion, step labels, atomic writes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Iterable

from cxtest.model import Outcome, Result, StepResult

# Display order everywhere: the good news first, then worse and worse, skipped last.
OUTCOME_ORDER: tuple[Outcome, ...] = (
    Outcome.passed,
    Outcome.degraded,
    Outcome.failed,
    Outcome.error,
    Outcome.skipped,
)
# Results that get a detailed write-up (JUnit failure text, HTML "Failures" section).
PROBLEM_OUTCOMES = frozenset({Outcome.degraded, Outcome.failed, Outcome.error})


def outcome_of(value: Any) -> Outcome:
    """The Outcome for an enum member or its value; anything unknown counts as error."""
    if isinstance(value, Outcome):
        return value
    try:
        return Outcome(str(value))
    except ValueError:
        return Outcome.error


def step_label(step: StepResult) -> str:
    """'step 2 (login)': StepResult.index is 0-based like Scenario.step_label's index."""
    number = f"step {step.index + 1}"
    name = step.name or ""
    if not name or name == number:
        return number
    if name.startswith(number + " "):  # the probe already gave the full label
        return name
    return f"{number} ({name})"


def count_outcomes(results: Iterable[Result]) -> dict[str, int]:
    counts = {o.value: 0 for o in OUTCOME_ORDER}
    for result in results:
        counts[outcome_of(result.outcome).value] += 1
    return counts


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside the target then rename, so a CI job or web server never reads half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its 0600 mode would make the report unreadable to a web server.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
