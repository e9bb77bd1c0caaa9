"""The error tree. Driver errors (httpx, SQLAlchemy, sockets...) are translated into
these at one boundary per driver, so the runner maps outcomes without knowing drivers.

    CxtestError
    ├── ScenarioError      bad scenario or project file; carries every Problem    -> exit 2
    ├── ProbeError         the harness could not test                              -> outcome "error"
    │   ├── TargetUnreachable   connection refused, DNS failure, TLS handshake failed
    │   └── ProtocolError       the target answered with something that is not the protocol
    ├── StepFailed         a step could not go on: the customer would be stuck     -> outcome "failed"
    │   └── StepTimeout         no answer within the step timeout
    ├── StoreError         the results store could not be read or written
    └── NotifierError      a receiver did not accept a notification (retryable or not)
"""

from __future__ import annotations

from dataclasses import dataclass


class CxtestError(Exception):
    """Base of every error cxtest raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file, located: `file:line:col path: message`."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where} {self.message}"


class ScenarioError(CxtestError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def __reduce__(self) -> tuple:
        return (type(self), (self.problems,))  # crosses to worker processes and Ray actors whole


class ProbeError(CxtestError):
    """The harness could not test the target."""


class TargetUnreachable(ProbeError):
    pass


class ProtocolError(ProbeError):
    pass


class StepFailed(CxtestError):
    """The step could not complete in a way the customer would notice."""


class StepTimeout(StepFailed):
    pass


class StoreError(CxtestError):
    pass


class NotifierError(CxtestError):
    """A receiver did not accept a notification; `retryable` says whether trying again can help."""

    def __init__(self, message: str, *, status_code: int | None = None, excerpt: str = "", retryable: bool = True):
        super().__init__(message)
        self.status_code = status_code
        self.excerpt = excerpt
        self.retryable = retryable
