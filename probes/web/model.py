"""A web scenario's target (the site, the browser, what the built-in checks allow) and its steps.

Selectors are Playwright's: css, `text=`, `role=button[name='Send']`, `data-testid=`, `xpath=`.
A step given as a bare string uses its shorthand: `click: "#send"`, `expect_text: "Welcome"`.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from cxtest.checks import ValueMatch, valid_regex
from cxtest.model import Frozen, Step

DEBIAN_CHROMIUM = "/usr/bin/chromium"
PLAYWRIGHT_BROWSER = "playwright"  # CXTEST_BROWSER value meaning Playwright's own downloaded build


def _default_executable() -> str | None:
    chosen = os.environ.get("CXTEST_BROWSER", DEBIAN_CHROMIUM)
    return None if chosen == PLAYWRIGHT_BROWSER else chosen


class BrowserSettings(Frozen):
    """Which browser runs the journeys. Runs with equal settings share one browser process."""

    executable: str | None = Field(default_factory=_default_executable)  # None: Playwright's own build
    headless: bool = True
    args: tuple[str, ...] = ()  # extra command-line switches, after cxtest's own


class Viewport(Frozen):
    width: int = Field(1280, ge=1)
    height: int = Field(800, ge=1)


def _regexes(value: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in value:
        valid_regex(pattern)
    return value


def _trace_switch(value: Any) -> Any:
    # YAML reads a bare `on` / `off` as true / false.
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class WebTarget(Frozen):
    url: str | None = None  # base URL that relative goto / expect_url / wait_for url are resolved against
    trace: Annotated[Literal["on", "off", "retain-on-failure"], BeforeValidator(_trace_switch)] = "retain-on-failure"
    viewport: Viewport = Viewport()
    locale: str | None = None
    ignore_https_errors: bool = False
    browser: BrowserSettings = Field(default_factory=BrowserSettings)
    # Regular expressions for what the built-in checks let pass: console error texts, uncaught
    # error messages, URLs of responses >= 400, and URLs (or the error) of failed requests.
    allow_console_errors: tuple[str, ...] = ()
    allow_page_errors: tuple[str, ...] = ()
    allow_http_errors: tuple[str, ...] = ()
    allow_failed_requests: tuple[str, ...] = ()

    _valid = field_validator("allow_console_errors", "allow_page_errors", "allow_http_errors", "allow_failed_requests")(
        classmethod(lambda cls, value: _regexes(value))
    )


# --------------------------------------------------------------------------- step arguments


def _as(field: str):
    """A bare string stands for the given field: `click: "#send"` is `click: {selector: "#send"}`."""
    return BeforeValidator(lambda value: {field: value} if isinstance(value, str) else value)


class Navigate(Frozen):
    url: str
    wait_until: Literal["load", "domcontentloaded", "networkidle", "commit"] = "load"


class Target(Frozen):
    selector: str


class FillIn(Frozen):
    selector: str
    value: str


class Choose(Frozen):
    """An <option> picked by its value or by its visible label; a list picks several (multiple select)."""

    selector: str
    value: str | list[str] | None = None
    label: str | list[str] | None = None

    @model_validator(mode="after")
    def _one(self) -> "Choose":
        if (self.value is None) == (self.label is None):
            raise ValueError("give either value (the option's value) or label (its visible text)")
        return self


class KeyPress(Frozen):
    key: str  # Playwright key names: Enter, Tab, ArrowDown, Control+A
    selector: str | None = None  # focus this element first; without it the key goes to the focused element


class WaitFor(Frozen):
    selector: str | None = None
    state: Literal["visible", "hidden", "attached", "detached"] = "visible"
    url: str | None = None  # a glob (`**/thanks`)
    load_state: Literal["load", "domcontentloaded", "networkidle"] | None = None

    @model_validator(mode="after")
    def _one(self) -> "WaitFor":
        given = [name for name in ("selector", "url", "load_state") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("wait for one thing: a selector (with state), a url glob or a load_state")
        return self


class TextExpect(Frozen):
    """The visible text of the element (or the whole body): every expectation given must hold."""

    selector: str = "body"
    contains: str | None = None
    equals: str | None = None  # the whole text, whitespace collapsed
    matches: str | None = None  # a regular expression, searched

    _regex = field_validator("matches")(classmethod(lambda cls, value: valid_regex(value)))

    @model_validator(mode="after")
    def _something(self) -> "TextExpect":
        if self.contains is None and self.equals is None and self.matches is None:
            raise ValueError("expect_text needs contains, equals or matches")
        return self


class UrlExpect(Frozen):
    glob: str | None = None  # `**/thanks`; relative globs are resolved against target.url
    matches: str | None = None  # a regular expression, searched in the whole URL

    _regex = field_validator("matches")(classmethod(lambda cls, value: valid_regex(value)))

    @model_validator(mode="after")
    def _one(self) -> "UrlExpect":
        if (self.glob is None) == (self.matches is None):
            raise ValueError("expect_url needs a glob (a bare string) or matches (a regular expression)")
        return self


class TitleExpect(Frozen):
    equals: str | None = None
    contains: str | None = None
    matches: str | None = None

    _regex = field_validator("matches")(classmethod(lambda cls, value: valid_regex(value)))

    @model_validator(mode="after")
    def _one(self) -> "TitleExpect":
        if sum(value is not None for value in (self.equals, self.contains, self.matches)) != 1:
            raise ValueError("expect_title needs one of equals (a bare string), contains or matches")
        return self


class Expression(Frozen):
    expression: str  # JavaScript run in the page; a function expression is called, a promise awaited
    expect: ValueMatch | None = None  # a value, or a matcher like {gt: 0} / {contains: "x"}


class SaveFrom(Frozen):
    """Where a saved value comes from: an element's text or attribute, a JavaScript value, or the page URL."""

    selector: str | None = None
    text: bool = False  # the element's visible text (the default for a selector)
    attribute: str | None = None
    input_value: bool = False  # what an <input>, <textarea> or <select> holds
    evaluate: str | None = None
    url: bool = False
    title: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "SaveFrom":
        sources = [self.selector is not None, self.evaluate is not None, self.url, self.title]
        if sum(sources) != 1:
            raise ValueError("save from one of: selector (with text, attribute or input_value), evaluate, url: true, title: true")
        if self.selector is None and (self.text or self.attribute or self.input_value):
            raise ValueError("text, attribute and input_value go with a selector")
        if sum([self.text, self.attribute is not None, self.input_value]) > 1:
            raise ValueError("save a selector's text, one attribute or its input_value, not several")
        return self


def _save_shorthand(value: Any) -> Any:
    # `save: {ticket: "data-testid=ticket"}`: a bare string is a selector whose text is saved.
    if isinstance(value, dict):
        return {name: {"selector": source} if isinstance(source, str) else source for name, source in value.items()}
    return value


class Capture(Frozen):
    name: str
    full_page: bool = False
    selector: str | None = None  # only this element


# --------------------------------------------------------------------------- steps


class Goto(Step):
    goto: Annotated[Navigate, _as("url")]

    def describe(self) -> str:
        return self.name or f"goto {self.goto.url}"


class Click(Step):
    click: Annotated[Target, _as("selector")]

    def describe(self) -> str:
        return self.name or f"click {self.click.selector}"


class Fill(Step):
    fill: FillIn

    def describe(self) -> str:
        return self.name or f"fill {self.fill.selector}"


class Select(Step):
    select: Choose

    def describe(self) -> str:
        return self.name or f"select {self.select.value or self.select.label} in {self.select.selector}"


class Press(Step):
    press: Annotated[KeyPress, _as("key")]

    def describe(self) -> str:
        where = f" in {self.press.selector}" if self.press.selector else ""
        return self.name or f"press {self.press.key}{where}"


class WaitForStep(Step):
    wait_for: Annotated[WaitFor, _as("selector")]

    def describe(self) -> str:
        w = self.wait_for
        what = w.selector and f"{w.selector} {w.state}" or w.url and f"url {w.url}" or f"load state {w.load_state}"
        return self.name or f"wait for {what}"


class ExpectText(Step):
    expect_text: Annotated[TextExpect, _as("contains")]

    def describe(self) -> str:
        e = self.expect_text
        how = next((f"{key} {getattr(e, key)!r}" for key in ("equals", "contains", "matches") if getattr(e, key) is not None), "")
        return self.name or f"text of {e.selector} {how}"


class ExpectVisible(Step):
    expect_visible: Annotated[Target, _as("selector")]

    def describe(self) -> str:
        return self.name or f"{self.expect_visible.selector} is visible"


class ExpectUrl(Step):
    expect_url: Annotated[UrlExpect, _as("glob")]

    def describe(self) -> str:
        return self.name or f"url {self.expect_url.glob or self.expect_url.matches}"


class ExpectTitle(Step):
    expect_title: Annotated[TitleExpect, _as("equals")]

    def describe(self) -> str:
        t = self.expect_title
        return self.name or f"title {t.equals or t.contains or t.matches!r}"


class Evaluate(Step):
    evaluate: Annotated[Expression, _as("expression")]

    def describe(self) -> str:
        return self.name or f"evaluate {self.evaluate.expression[:40]}"


class Save(Step):
    save: Annotated[dict[str, SaveFrom], BeforeValidator(_save_shorthand)] = Field(min_length=1)

    def describe(self) -> str:
        return self.name or f"save {', '.join(self.save)}"


class Screenshot(Step):
    screenshot: Annotated[Capture, _as("name")]

    def describe(self) -> str:
        return self.name or f"screenshot {self.screenshot.name}"


KINDS: dict[str, type[Step]] = {
    "goto": Goto,
    "click": Click,
    "fill": Fill,
    "select": Select,
    "press": Press,
    "wait_for": WaitForStep,
    "expect_text": ExpectText,
    "expect_visible": ExpectVisible,
    "expect_url": ExpectUrl,
    "expect_title": ExpectTitle,
    "evaluate": Evaluate,
    "save": Save,
    "screenshot": Screenshot,
}


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((model.__name__ for key, model in KINDS.items() if key in value), None)
    return type(value).__name__ if type(value) in KINDS.values() else None


WebStep = Annotated[
    Union[tuple(Annotated[model, Tag(model.__name__)] for model in KINDS.values())],  # type: ignore[misc]
    Discriminator(_kind, custom_error_type="web_step", custom_error_message=f"a web step needs one of: {', '.join(KINDS)}"),
]
