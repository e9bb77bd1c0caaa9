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


def register_secret(value: str, placeholder: str) -> None:
    # Short values would redact ordinary words and numbers all over a report.
    if len(value) >= 4:
        _secrets[value] = placeholder


def redact(text: str) -> str:
    if not _secrets or not text:
        return text
    for value in sorted(_secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, _secrets[value])
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
