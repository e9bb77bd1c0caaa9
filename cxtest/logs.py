"""structlog set-up: console in a terminal, JSON when CXTEST_LOG=json or not a terminal.

Secrets substituted from ${env:...} / ${file:...} are registered here by the loader
and replaced by their placeholder in every log line and report text.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_secrets: dict[str, str] = {}  # secret value -> placeholder shown instead
_longest_first: list[tuple[str, str]] = []  # _secrets' items, longest value first: a value inside another is replaced after it


def register_secret(value: str, placeholder: str) -> None:
    # Short values would redact ordinary words and numbers all over a report.
    if len(value) >= 4:
        _secrets[value] = placeholder
        _longest_first[:] = sorted(_secrets.items(), key=lambda item: len(item[0]), reverse=True)


def forget_secrets() -> None:
    """Forget every registered secret (tests; a process loading other projects)."""
    _secrets.clear()
    _longest_first.clear()


def redact(text: str) -> str:
    # Called on every check's text of every run: the order is kept sorted, not sorted per call.
    if not _longest_first or not text:
        return text
    for value, placeholder in _longest_first:
        if value in text:
            text = text.replace(value, placeholder)
    return text


def _redact_event(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}


def configure(level: str = "warning", json: bool | None = None) -> None:
    if json is None:
        json = os.environ.get("CXTEST_LOG") == "json" or not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
