"""Checks of one bot message against a `bot:` step's expectations, each recording what it saw.

    judge(expect, message)  ->  [CheckResult("text", failed, "balance", "Sorry, I did not understand",
                                  "text ('Sorry, I did not understand') contains 'balance'"), ...]
"""

from __future__ import annotations

import functools
import html
import re
from html.parser import HTMLParser
from typing import Any, Callable

from cxtest.checks import ABSENT, judge_match, show
from cxtest.model import CheckResult, Outcome
from probes.chat.connectors.base import BotMessage
from probes.chat.model import TextExpect
from probes.http import _compiled


class _Text(HTMLParser):
    """The text of an HTML fragment: tags dropped, block elements and <br> as spaces."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.parts.append(" ")  # "<p>a</p><p>b</p>" is "a b", not "ab"

    def handle_endtag(self, tag: str) -> None:
        self.parts.append(" ")


def strip_html(text: str) -> str:
    if "<" not in text:
        return html.unescape(text)
    parser = _Text()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


@functools.lru_cache(maxsize=4096)
def normalise(text: str) -> str:
    """What the matchers compare by default: HTML tags stripped, case folded, whitespace collapsed."""
    # Cached: a scenario's expected texts come back on every run, and under load so do most of the bot's.
    return " ".join(strip_html(text).casefold().split())


@functools.lru_cache(maxsize=1024)
def wildcard_pattern(pattern: str) -> re.Pattern[str]:
    """BotiumScript's wildcard: the whole text, `*` standing for any text (none included)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def judge(expect: TextExpect, message: BotMessage, normalised: bool = True, similar: Callable[[str, str], float] | None = None) -> list[CheckResult]:
    """Every expectation set on `expect`, each its own CheckResult, in the order the author reads them."""
    prepare = normalise if normalised else (lambda text: text)
    text = prepare(message.text)
    results: list[CheckResult] = []

    def record(label: str, ok: bool, expected: Any, actual: Any, sentence: str) -> None:
        results.append(CheckResult(label, Outcome.passed if ok else Outcome.failed, expected, actual, sentence))

    seen = show(message.text)
    if expect.equals is not None:
        record("text", text == prepare(expect.equals), expect.equals, message.text, f"text ({seen}) == {show(expect.equals)}")
    if expect.contains is not None:
        for part in [expect.contains] if isinstance(expect.contains, str) else expect.contains:
            record("text", prepare(part) in text, part, message.text, f"text ({seen}) contains {show(part)}")
    if expect.matches is not None:
        found = re.search(expect.matches, text, re.IGNORECASE if normalised else 0) is not None
        record("text", found, expect.matches, message.text, f"text ({seen}) matches {show(expect.matches)}")
    if expect.wildcard is not None:
        ok = wildcard_pattern(prepare(expect.wildcard)).fullmatch(text) is not None
        record("text", ok, expect.wildcard, message.text, f"text ({seen}) is like {show(expect.wildcard)}")
    if expect.one_of is not None:
        ok = any(text == prepare(option) for option in expect.one_of)
        record("text", ok, expect.one_of, message.text, f"text ({seen}) in {show(expect.one_of)}")
    if expect.similar_to is not None:
        if similar is None:
            from probes.chat.semantic import similarity as similar
        score = similar(expect.similar_to.text, strip_html(message.text))
        ok = score >= expect.similar_to.threshold
        sign = ">=" if ok else "<"
        record(
            "meaning", ok, expect.similar_to.text, message.text,
            f"text ({seen}) means {show(expect.similar_to.text)} (similarity {score:.2f} {sign} {expect.similar_to.threshold:g})",
        )
    if expect.intent is not None:
        intent = message.intent if message.intent is not None else ABSENT
        record("intent", message.intent == expect.intent, expect.intent, message.intent, f"intent ({show(intent)}) == {show(expect.intent)}")
    if expect.confidence is not None:
        confidence = message.confidence
        ok = confidence is not None and confidence >= expect.confidence
        record(
            "confidence", ok, expect.confidence, confidence,
            f"intent confidence ({'absent' if confidence is None else f'{confidence:.2f}'}) >= {expect.confidence:g}",
        )
    if expect.buttons is not None:
        titles = [button.title for button in message.buttons]
        if expect.buttons.equals is not None:
            ok = [prepare(t) for t in titles] == [prepare(t) for t in expect.buttons.equals]
            record("buttons", ok, expect.buttons.equals, titles, f"buttons ({show(titles)}) == {show(expect.buttons.equals)}")
        if expect.buttons.contains is not None:
            offered = {prepare(t) for t in titles}
            missing = [t for t in expect.buttons.contains if prepare(t) not in offered]
            record(
                "buttons", not missing, expect.buttons.contains, titles,
                f"buttons ({show(titles)}) include {show(expect.buttons.contains)}" + (f": missing {show(missing)}" if missing else ""),
            )
    for path, match in expect.json_path.items():
        results += judge_match(path, json_value(message.raw, path), match)
    return results


def json_value(document: Any, path: str) -> Any:
    """The first value at a JSONPath in the raw reply, or ABSENT."""
    found = _compiled(path).findall(document) if document is not None else []
    return found[0] if found else ABSENT


def negated(results: list[CheckResult], what: str) -> CheckResult:
    """`not:` holds when none of the nested checks held."""
    held = [result for result in results if result.outcome is Outcome.passed]
    if held:
        return CheckResult("not", Outcome.failed, what, held[0].actual, f"not: {held[0].text} (it should not)")
    return CheckResult("not", Outcome.passed, what, None, "not: " + "; ".join(result.text for result in results))
