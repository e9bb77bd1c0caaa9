"""The built-in checks: what went wrong on any page of a run, whether a step asked or not.

Console errors, uncaught errors, responses >= 400 and failed requests are collected from the
browser context's events as they happen; each step reports, as one check per kind, what came
in since the step before, and the scenario's `allow_*` regexes let known noise pass.
Chromium's own "Failed to load resource" console lines are left out: the network checks
report those requests already (one allow entry should let one request pass), all but the
favicon, which the browser fetches for itself and no customer sees fail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cxtest.model import CheckResult, Outcome
from probes.web.model import WebTarget

SHOWN = 3  # problems named in one check's sentence; the check's `actual` keeps them all


@dataclass(frozen=True)
class Kind:
    name: str  # the check's name
    one: str  # one problem, in a sentence
    allow: str  # the target field of regexes that let a problem pass


KINDS = (
    Kind("console errors", "console error", "allow_console_errors"),
    Kind("page errors", "page error", "allow_page_errors"),
    Kind("http errors", "http error", "allow_http_errors"),
    Kind("failed requests", "failed request", "allow_failed_requests"),
)


class Watch:
    def __init__(self, target: WebTarget):
        self.target = target
        origin = urlsplit(target.url or "")
        self.origin = f"{origin.scheme}://{origin.netloc}" if origin.netloc else None
        # kind name -> [(shown, matched against the allow regexes)], since the last step
        self.seen: dict[str, list[tuple[str, str]]] = {kind.name: [] for kind in KINDS}

    def attach(self, context: Any) -> None:
        context.on("console", self._console)
        context.on("weberror", self._page_error)
        context.on("response", self._response)
        context.on("requestfailed", self._request_failed)

    def _short(self, url: str) -> str:
        """Same-origin URLs as their path, the way a person reads them in a report."""
        if self.origin and url.startswith(self.origin + "/"):
            return url[len(self.origin):]
        return url

    def _note(self, kind: str, shown: str, matched: str) -> None:
        if (shown, matched) not in self.seen[kind]:
            self.seen[kind].append((shown, matched))

    def _console(self, message: Any) -> None:
        if message.type != "error" or message.text.startswith("Failed to load resource:"):
            return
        where = message.location or {}
        at = f" at {self._short(where['url'])}:{where.get('lineNumber', 0) + 1}" if where.get("url") else ""
        self._note("console errors", f"{message.text}{at}", message.text)

    def _page_error(self, web_error: Any) -> None:
        error = web_error.error
        text = f"{error.name}: {error.message}" if error.name and not error.message.startswith(error.name) else error.message
        frame = re.search(r"\(?((?:https?|file)://[^\s)]+?):(\d+):\d+\)?", error.stack or "")
        at = f" at {self._short(frame.group(1))}:{frame.group(2)}" if frame else ""
        self._note("page errors", f"{text}{at}", text)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            method = response.request.method
            shown = f"{response.status} {'' if method == 'GET' else method + ' '}{self._short(response.url)}"
            self._note("http errors", shown, response.url)

    def _request_failed(self, request: Any) -> None:
        failure = request.failure or "failed"
        # Aborted requests are the page's own doing: a navigation cancels what the old page was loading.
        if failure != "net::ERR_ABORTED":
            self._note("failed requests", f"{failure} for {self._short(request.url)}", f"{request.url} {failure}")

    def judge(self) -> list[CheckResult]:
        """One check per kind that saw something since the last call; allowed problems pass."""
        checks = []
        for kind in KINDS:
            seen, self.seen[kind.name] = self.seen[kind.name], []
            if seen:
                checks.append(self._check(kind, seen))
        return checks

    def _check(self, kind: Kind, seen: list[tuple[str, str]]) -> CheckResult:
        allow = getattr(self.target, kind.allow)
        bad = [shown for shown, matched in seen if not any(re.search(p, matched) for p in allow)]
        allowed = [shown for shown, matched in seen if shown not in bad]
        shown = [shown for shown, _ in seen]
        if bad:
            text = _sentence(kind.one, bad)
            if allowed:
                text += f"; {len(allowed)} more allowed by {kind.allow}"
            return CheckResult(kind.name, Outcome.failed, f"none outside {kind.allow}", shown, text)
        return CheckResult(kind.name, Outcome.passed, f"none outside {kind.allow}", shown, _sentence(kind.one, allowed) + f", allowed by {kind.allow}")

    def also_seen(self) -> str:
        """For a step that broke off: what the built-in checks saw meanwhile, which may be why."""
        problems = [f"{kind.one}: {shown}" for kind in KINDS for shown, matched in self.seen[kind.name]
                    if not any(re.search(p, matched) for p in getattr(self.target, kind.allow))]
        return f" (meanwhile {'; '.join(problems[:SHOWN])})" if problems else ""


def _sentence(one: str, problems: list[str]) -> str:
    named = "; ".join(problems[:SHOWN]) + (f"; … {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")
    return f"{one} ({named})" if len(problems) == 1 else f"{len(problems)} {one}s ({named})"
