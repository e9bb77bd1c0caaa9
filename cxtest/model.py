"""The plain data every layer passes along.

Scenario-side models (what users write) are frozen pydantic models, validated by
the loader. Result-side models (what probes and the runner produce) are frozen
dataclasses: they are built on the hot path and only need to be plain data.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

# --------------------------------------------------------------------------- values

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from 1.5, "250ms", "4s", "5m", "1h", "1m30s"."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}: use a number with ms, s, m or h, e.g. 1.5s")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"bad duration {value!r}: must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.startswith("-"):
            raise ValueError(f"bad duration {value!r}: must not be negative")
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    raise ValueError(f"bad duration {value!r}: use a number with ms, s, m or h, e.g. 1.5s")


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_limit(value: Any) -> float:
    """A limit on a measure: a plain number of any sign (dBFS, a ratio, a count) or a duration ("250ms")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return parse_duration(value)


Limit = Annotated[float, BeforeValidator(parse_limit)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Levels(Frozen):
    """Two limits on one measure: past `degraded` the run is degraded, past `failed` it fails.

    Whether "past" means above or below depends on the measure (see checks.HIGHER_IS_BETTER).
    A bare value in `expect:` is the failed level; in `thresholds:` it is the degraded level.
    """

    degraded: Limit | None = None
    failed: Limit | None = None


def _levels(bare_means: str):
    def convert(value: Any) -> Any:
        return value if isinstance(value, (dict, Levels)) else {bare_means: value}

    return BeforeValidator(convert)


ExpectLevels = Annotated[Levels, _levels("failed")]
ThresholdLevels = Annotated[Levels, _levels("degraded")]


class Outcome(str, enum.Enum):
    passed = "passed"
    degraded = "degraded"
    failed = "failed"
    error = "error"
    skipped = "skipped"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @staticmethod
    def worst(outcomes: "list[Outcome] | tuple[Outcome, ...]") -> "Outcome":
        return max(outcomes, key=lambda o: _RANK[o], default=Outcome.passed)


_RANK = {Outcome.skipped: 0, Outcome.passed: 1, Outcome.degraded: 2, Outcome.failed: 3, Outcome.error: 4}

# --------------------------------------------------------------------------- scenarios


class Step(Frozen):
    """Fields every step kind shares; each probe extends it with its own step kinds."""

    name: str | None = None
    timeout: Duration | None = None

    def describe(self) -> str:
        """How reports name this step when the author gave it no name."""
        return self.name or type(self).__name__


_CLOCK = re.compile(r"([01]\d|2[0-3]):[0-5]\d|24:00")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TimeWindow(Frozen):
    """A weekly window, e.g. business hours: `{days: mon-fri, start: "08:00", end: "18:00", timezone: Europe/London}`."""

    days: str = "mon-sun"
    start: str = "00:00"
    end: str = "24:00"
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _valid(self) -> "TimeWindow":
        for clock in (self.start, self.end):
            if not _CLOCK.fullmatch(clock):
                raise ValueError(f"bad time {clock!r}: use HH:MM, e.g. 08:30")
        for part in self.days.lower().split(","):
            for day in part.split("-"):
                if day.strip() not in _WEEKDAYS:
                    raise ValueError(f"bad days {self.days!r}: use e.g. mon-fri or sat,sun")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except Exception:  # noqa: BLE001 - zoneinfo raises several kinds for a bad name
            raise ValueError(f"unknown time zone {self.timezone!r}: use an IANA name like Europe/London") from None
        return self


class Schedule(Frozen):
    """When a scenario runs under `cxtest monitor`: `every` or `cron`, spread by `jitter`."""

    every: Duration | None = None
    cron: str | None = None  # five fields, e.g. "*/5 8-18 * * mon-fri"
    jitter: Duration | None = None
    active: tuple[TimeWindow, ...] = ()  # run only inside these windows
    locations: tuple[str, ...] = ()  # the agents that run it; empty means every agent

    @model_validator(mode="after")
    def _one_trigger(self) -> "Schedule":
        if (self.every is None) == (self.cron is None):
            raise ValueError("give either every (e.g. 5m) or cron (e.g. '*/5 * * * *')")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(f"bad cron {self.cron!r}: five fields (minute hour day month weekday)")
        return self


Severity = Literal["critical", "error", "warning", "info"]


class FailureRate(Frozen):
    """Open when at least `failures` of the last `of` runs failed (e.g. 3 of 5)."""

    failures: int = Field(ge=1)
    of: int = Field(ge=1)


class AlertPolicy(Frozen):
    """When a scenario's results open, remind and resolve an incident, and who hears of it."""

    open_after: int = Field(3, ge=1)  # failed runs in a row
    resolve_after: int = Field(2, ge=1)  # passed runs in a row
    failure_rate: FailureRate | None = None
    degraded_after: int | None = Field(None, ge=1)  # degraded-or-worse runs in a row open a lower-severity incident
    degraded_severity: Severity = "warning"
    confirm_after: Duration | None = None  # re-run a failure after this delay before it counts
    quorum: int | None = Field(None, ge=1)  # locations that must be failing at once
    remind_every: Duration | None = None
    severity: Severity = "critical"
    notify: tuple[str, ...] = ()


class Source(Frozen):
    """Where a scenario came from, for messages: file and line of its first key."""

    file: str
    line: int = 1


class Stage(Frozen):
    """Move linearly to `target` users (or iterations a second, with `rate`) over `duration`."""

    target: float = Field(ge=0)
    duration: Duration


def _think(value: Any) -> Any:
    """`1s` means exactly one second; `[0.5s, 2s]` a uniform pause between the two."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"think {value!r}: one duration, or [shortest, longest]")
        return tuple(parse_duration(v) for v in value)
    seconds = parse_duration(value)
    return (seconds, seconds)


class StressSettings(Frozen):
    """`stress:` in a scenario: how `cxtest stress` runs it unless its options say otherwise (see cxtest.stress.plan)."""

    users: int | None = Field(None, ge=1)
    rate: float | None = Field(None, gt=0)  # iterations started a second
    stages: tuple[Stage, ...] = ()  # ramping users, or a ramping rate with `rate`
    duration: Duration | None = None
    max_users: int | None = Field(None, ge=1)  # with rate: users (iterations at once) at most
    think: Annotated[tuple[float, float] | None, BeforeValidator(_think)] = None
    thresholds: tuple[str, ...] = ()
    abort_on_fail: bool = False
    max_duration: Duration | None = None  # the hard stop
    graceful_stop: Duration = 30.0  # after the shape ends, running iterations get this long to finish

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from cxtest.stress.thresholds import parse_threshold

        for text in value:
            parse_threshold(text)
        return value


class Scenario(Frozen):
    id: str
    name: str
    channel: str
    description: str = ""
    target: Any = None
    steps: tuple[Any, ...]
    thresholds: dict[str, ThresholdLevels] = {}  # "duration" is the whole run; other names are step measures
    schedule: Schedule | None = None
    alert: AlertPolicy | None = None
    tags: tuple[str, ...] = ()
    timeout: Duration = 60.0
    step_timeout: Duration = 10.0
    retries: int = Field(0, ge=0, le=10)
    retry_delay: Duration = 0.0  # wait between a failed attempt and its retry
    stress: StressSettings | None = None  # how `cxtest stress` runs it
    source: Source = Source(file="<memory>")


class Notifier(Frozen):
    """`notifiers.<name>`: the type and the settings every type shares; the rest is the type's own."""

    model_config = ConfigDict(frozen=True, extra="allow")
    type: str
    fallback: str | None = None  # another notifier that takes over while this one keeps failing


class Maintenance(Frozen):
    """No incident opens or notifies for matching scenarios during a window: once (`from`/`until`) or weekly."""

    name: str
    scenarios: tuple[str, ...] = ("*",)  # glob patterns on scenario ids
    tags: tuple[str, ...] = ()
    starts: datetime | None = Field(None, alias="from")
    ends: datetime | None = Field(None, alias="until")
    weekly: TimeWindow | None = None

    @model_validator(mode="after")
    def _when(self) -> "Maintenance":
        if (self.weekly is None) == (self.starts is None or self.ends is None):
            raise ValueError("give either from and until (ISO 8601 times) or weekly: {days, start, end, timezone}")
        return self


class Defaults(Frozen):
    alert: AlertPolicy | None = None
    timeout: Duration | None = None
    step_timeout: Duration | None = None
    retries: int | None = Field(None, ge=0, le=10)
    retry_delay: Duration | None = None


class MonitorSettings(Frozen):
    """`monitor:` in cxtest.yaml: the operator endpoint and concurrency caps per channel."""

    listen: str = "127.0.0.1:9478"  # host:port of /healthz, /metrics and the status page; "" turns it off
    token: str | None = None  # required when listen is not a loopback address
    caps: dict[str, int] = {"http": 100, "chat": 50, "web": 4, "ivr": 50, "phone": 50}
    link_base: str = ""  # public URL of the status page, for links in notifications

    @model_validator(mode="after")
    def _token_off_loopback(self) -> "MonitorSettings":
        host = self.listen.rpartition(":")[0].strip("[]")
        if self.listen and host not in ("127.0.0.1", "localhost", "::1") and not self.token:
            raise ValueError(f"listen {self.listen!r} is not a loopback address: set token to protect it")
        return self


class Project(Frozen):
    """Settings from cxtest.yaml beside the scenarios."""

    root: Path = Path(".")
    store: str = "sqlite:///cxtest.db"
    location: str = "local"
    artifacts: str = "artifacts"
    concurrency: int = Field(16, ge=1)
    notifiers: dict[str, Notifier] = {}
    defaults: Defaults = Defaults()
    maintenance: tuple["Maintenance", ...] = ()
    monitor: MonitorSettings = MonitorSettings()

    @field_validator("notifiers")
    @classmethod
    def _fallbacks_exist(cls, notifiers: dict[str, Notifier]) -> dict[str, Notifier]:
        for name, notifier in notifiers.items():
            if notifier.fallback is not None and (notifier.fallback == name or notifier.fallback not in notifiers):
                raise ValueError(f"'{name}' falls back to {notifier.fallback!r}, which is not another notifier here")
        return notifiers

    @model_validator(mode="after")
    def _store_url(self) -> "Project":
        if "://" not in self.store:
            raise ValueError(f"{self.store!r} is not a URL: use sqlite:///FILE or postgresql://USER@HOST/DB")
        return self


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One expectation judged: what was expected, what was seen, and the sentence saying so."""

    name: str
    outcome: Outcome
    expected: Any
    actual: Any
    text: str


@dataclass(frozen=True, slots=True)
class Observation:
    """What a probe saw in one step, judged against that step's expectations."""

    checks: tuple[CheckResult, ...] = ()
    measures: Mapping[str, float] = field(default_factory=dict)
    evidence: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepResult:
    index: int
    name: str
    outcome: Outcome
    started: float  # seconds since the run started
    duration: float
    message: str = ""
    checks: tuple[CheckResult, ...] = ()
    measures: Mapping[str, float] = field(default_factory=dict)
    evidence: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Artifact:
    label: str
    path: str
    kind: str = "text"  # text, screenshot, recording, trace, html


@dataclass(frozen=True, slots=True)
class Result:
    scenario_id: str
    scenario_name: str
    channel: str
    file: str
    outcome: Outcome
    started_at: datetime
    duration: float
    message: str = ""
    steps: tuple[StepResult, ...] = ()
    checks: tuple[CheckResult, ...] = ()  # scenario-level thresholds
    measures: Mapping[str, float] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    attempts: int = 1
    flaky: bool = False
    tags: tuple[str, ...] = ()
    location: str = "local"
    run_id: str = ""
