"""Notifiers: an incident change becomes a request a receiver accepts.

    notifier_types()                 {"webhook": WebhookNotifier, "pagerduty": ..., ...}
    build_notifiers(project.notifiers)   {"oncall": PagerDutyNotifier("oncall", ...), ...}
    settings_problems(raw notifiers mapping)   what `cxtest validate` reports about them

One module per receiver; each is payload + URL + headers on top of base.BaseNotifier,
and base.deliver is the one place httpx errors become NotifierError.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.base import BaseNotifier, Notifier, NotifierError, Settings
from alerts.notifiers.opsgenie import OpsgenieNotifier
from alerts.notifiers.pagerduty import PagerDutyNotifier
from alerts.notifiers.servicenow import ServiceNowNotifier
from alerts.notifiers.slack import SlackNotifier
from alerts.notifiers.teams import TeamsNotifier
from alerts.notifiers.webhook import WebhookNotifier

__all__ = [
    "BaseNotifier",
    "Notifier",
    "NotifierError",
    "NotifierProblem",
    "Settings",
    "build_notifiers",
    "notifier_class",
    "notifier_types",
    "settings_problems",
]

_TYPES: dict[str, type[BaseNotifier]] = {
    cls.type: cls
    for cls in (
        WebhookNotifier,
        PagerDutyNotifier,
        OpsgenieNotifier,
        SlackNotifier,
        TeamsNotifier,
        AlertmanagerNotifier,
        ServiceNowNotifier,
    )
}


def notifier_types() -> dict[str, type[BaseNotifier]]:
    """Every notifier class by its `type:` name."""
    return dict(_TYPES)


def notifier_class(type_name: str) -> type[BaseNotifier]:
    """The class for a `type:` name; KeyError naming the known types if there is none."""
    try:
        return _TYPES[type_name]
    except KeyError:
        raise KeyError(f"unknown notifier type {type_name!r}{_suggest(type_name, _TYPES)}") from None


@dataclass(frozen=True, slots=True)
class NotifierProblem:
    """One `notifiers.<name>` entry that does not validate.

    Either `message` about its `type` (unknown), or pydantic's `error` from validating
    `values` (the entry without `type`) against `model`, for the loader to locate.
    """

    name: str
    message: str = ""
    error: ValidationError | None = None
    model: type[BaseModel] | None = None
    values: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.error is None:
            return f"notifiers.{self.name}.type: {self.message}"
        lines = []
        for err in self.error.errors(include_url=False):
            where = ".".join(str(p) for p in ("notifiers", self.name, *err["loc"]))
            lines.append(f"{where}: {err['msg']}")
        return "\n".join(lines)


# Keys every notifier entry may carry, checked by cxtest.model.Notifier rather than by the type.
SHARED_KEYS = frozenset({"type", "fallback"})


def settings_problems(notifiers: Any) -> list[NotifierProblem]:
    """Problems with the raw `notifiers:` mapping of cxtest.yaml, entry by entry.

    Entries whose shape the Project model already refuses (not a mapping, `type`
    missing or not text) are left to it, so nothing is reported twice.
    """
    problems: list[NotifierProblem] = []
    if not isinstance(notifiers, Mapping):
        return problems
    for name, entry in notifiers.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            continue
        kind = entry["type"]
        cls = _TYPES.get(kind)
        if cls is None:
            problems.append(NotifierProblem(str(name), message=f"unknown notifier type {kind!r}{_suggest(kind, _TYPES)}"))
            continue
        values = {k: v for k, v in entry.items() if k not in SHARED_KEYS}
        try:
            cls.settings_model.model_validate(values)
        except ValidationError as exc:
            problems.append(NotifierProblem(str(name), error=exc, model=cls.settings_model, values=values))
    return problems


def build_notifiers(settings: Mapping[str, Any]) -> dict[str, BaseNotifier]:
    """One notifier per `notifiers:` entry (cxtest.model.Notifier or a plain mapping with `type`).

    The loader has validated them already; anything still wrong raises ValueError listing every problem.
    """
    raw: dict[str, dict[str, Any]] = {}
    for name, entry in settings.items():
        if isinstance(entry, BaseModel):
            raw[name] = {**entry.model_dump(exclude_none=False), **(entry.model_extra or {})}
        else:
            raw[name] = dict(entry)
    missing = [name for name, entry in raw.items() if not isinstance(entry.get("type"), str)]
    problems = [f"notifiers.{name}: missing type" for name in missing] + [str(p) for p in settings_problems(raw)]
    if problems:
        raise ValueError("bad notifier settings:\n" + "\n".join(problems))
    return {
        name: _TYPES[entry["type"]](name, {k: v for k, v in entry.items() if k not in SHARED_KEYS})
        for name, entry in raw.items()
    }


def _suggest(word: str, choices: Mapping[str, Any]) -> str:
    names = sorted(choices)
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; expected one of: {', '.join(names)}"
