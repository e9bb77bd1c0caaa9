"""A chat scenario's steps: `user` says or clicks, `bot` checks the next bot message, `wait_for_bot` waits for one, `wait` lets time pass."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from cxtest.checks import ValueMatch, valid_regex
from cxtest.model import Duration, ExpectLevels, Frozen, Step

DEFAULT_SIMILARITY = 0.7


def _similar_shorthand(value: Any) -> Any:
    return {"text": value} if isinstance(value, str) else value


class SimilarTo(Frozen):
    text: str
    threshold: float = Field(DEFAULT_SIMILARITY, ge=0, le=1)


def _buttons_shorthand(value: Any) -> Any:
    return {"equals": value} if isinstance(value, list) else value


class ButtonsMatch(Frozen):
    """Button titles: all of them in order (`equals`, a bare list), or some of them in any order (`contains`)."""

    equals: list[str] | None = None
    contains: list[str] | None = None


class TextExpect(Frozen):
    """Expectations on one bot message. Every one given must hold."""

    equals: str | None = None
    contains: str | list[str] | None = None
    matches: str | None = None
    wildcard: str | None = None  # the whole text, `*` standing for any text
    one_of: list[str] | None = None
    similar_to: Annotated[SimilarTo | None, BeforeValidator(_similar_shorthand)] = None
    intent: str | None = None
    confidence: float | None = Field(None, ge=0, le=1)  # the least intent confidence
    buttons: Annotated[ButtonsMatch | None, BeforeValidator(_buttons_shorthand)] = None
    json_path: dict[str, ValueMatch] = {}

    _check_regex = field_validator("matches")(classmethod(lambda cls, value: valid_regex(value)))

    @field_validator("json_path")
    @classmethod
    def _paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        from probes.http import _compiled

        for path in value:
            _compiled(path)
        return value


def _bot_shorthand(value: Any) -> Any:
    return {"contains": value} if isinstance(value, str) else value


class BotExpect(TextExpect):
    not_: TextExpect | None = Field(None, alias="not")  # none of these may hold
    max_latency: ExpectLevels | None = None  # limits on turn_latency
    normalise: bool = True  # case folded, whitespace collapsed, HTML tags stripped before comparing
    save: dict[str, str] = {}

    @field_validator("save")
    @classmethod
    def _save_sources(cls, value: dict[str, str]) -> dict[str, str]:
        from probes.http import _compiled

        for source in value.values():
            if source.startswith("$"):
                _compiled(source)
            elif source.startswith("regex:"):
                valid_regex(source[6:])
            elif source not in ("text", "intent"):
                raise ValueError(f"cannot save from {source!r}: use regex:PATTERN, a JSONPath ($.id), text or intent")
        return value

    @model_validator(mode="after")
    def _something_expected(self) -> "BotExpect":
        if not (self.model_fields_set - {"normalise", "save"}):
            raise ValueError("a bot step needs an expectation: contains, equals, matches, wildcard, one_of, similar_to, intent, buttons, json_path, not or max_latency")
        return self


class ButtonClick(Frozen):
    button: str  # a title of a button the bot's last message offered


class UserSays(Step):
    user: str | ButtonClick

    def describe(self) -> str:
        said = self.user if isinstance(self.user, str) else f"[{self.user.button}]"
        return self.name or f"user: {said}"


class BotSays(Step):
    bot: Annotated[BotExpect, BeforeValidator(_bot_shorthand)]

    def describe(self) -> str:
        expect = self.bot
        for key in ("equals", "contains", "wildcard", "matches", "intent"):
            value = getattr(expect, key)
            if value is not None:
                return self.name or f"bot {key} {value!r}"
        if expect.similar_to is not None:
            return self.name or f"bot similar to {expect.similar_to.text!r}"
        return self.name or "bot"


class WaitForBot(Step):
    wait_for_bot: Duration


class Pause(Step):
    wait: Duration  # lets time pass (a customer reading); the bot's messages meanwhile wait for the next bot step

    def describe(self) -> str:
        return self.name or f"wait {self.wait:g}s"


_KINDS = {"user": UserSays, "bot": BotSays, "wait_for_bot": WaitForBot, "wait": Pause}


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((model.__name__ for key, model in _KINDS.items() if key in value), None)
    return type(value).__name__ if type(value) in _KINDS.values() else None


ChatStep = Annotated[
    Union[tuple(Annotated[model, Tag(model.__name__)] for model in _KINDS.values())],  # type: ignore[misc]
    Discriminator(_kind, custom_error_type="chat_step", custom_error_message=f"a chat step needs one of: {', '.join(_KINDS)}"),
]
