"""What a channel plugs in: a Probe that owns pooled resources and opens Sessions.

The runner owns the step loop (timeouts, stopping at the first failed step,
exception -> outcome mapping); a probe only knows how to do one step of its
channel. A session holds per-run state: saved values, a call, a conversation, a
browser context.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from cxtest.logs import redact
from cxtest.model import Observation, Scenario, Step


@dataclass
class RunContext:
    """What one run of one scenario may use: its id, its artifacts folder, its saved values."""

    run_id: str
    artifacts_dir: Path
    location: str = "local"
    attempt: int = 1
    variables: dict[str, Any] = field(default_factory=dict)
    wrote_artifacts: bool = False  # saves a folder scan per run when nothing was kept
    failed: bool = False  # a step failed or errored: set by the runner before the session closes
    keep_passing_evidence: bool = True  # a stress exercise keeps a sample only
    keep_failing_evidence: bool = True

    @property
    def wants_evidence(self) -> bool:
        """Whether a probe should keep this run's recordings, transcripts and traces."""
        return self.keep_failing_evidence if self.failed else self.keep_passing_evidence

    def artifact_path(self, name: str) -> Path:
        self.wrote_artifacts = True
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        return self.artifacts_dir / name

    def write_text(self, name: str, text: str) -> Path:
        """Keep a text as evidence, with secrets replaced by their placeholders."""
        path = self.artifact_path(name)
        path.write_text(redact(text))
        return path


class Session(Protocol):
    async def step(self, index: int, step: Step, timeout: float) -> Observation: ...


class Probe(Protocol):
    channel: ClassVar[str]
    target_model: ClassVar[type[BaseModel]]
    step_model: ClassVar[Any]  # a step class, or an annotated union of step kinds

    def session(self, scenario: Scenario, ctx: RunContext) -> AbstractAsyncContextManager[Session]: ...

    async def aclose(self) -> None: ...
