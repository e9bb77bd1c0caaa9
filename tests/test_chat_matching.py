"""Chat expectations: each `bot:` key judged against one bot message, with a sentence saying what was seen."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from cxtest.model import Outcome
from probes.chat.connectors.base import BotMessage, Button
from probes.chat.matching import judge, negated, normalise, strip_html, wildcard_pattern
from probes.chat.model import BotSays, ChatStep, UserSays, WaitForBot

STEP = TypeAdapter(ChatStep)
BALANCE = BotMessage(
    "<p>Your balance is <b>120</b> pounds.</p>",
    (Button("Pay a bill", "pay"), Button("Main menu")),
    intent="balance",
    confidence=0.92,
    raw={"messages": [{"text": "Your balance is 120 pounds."}], "account": {"currency": "GBP"}},
)


def bot(**expect) -> BotSays:
    return STEP.validate_python({"bot": expect})


def outcomes(expect: dict, message: BotMessage = BALANCE) -> list[Outcome]:
    step = bot(**expect)
    return [check.outcome for check in judge(step.bot, message, step.bot.normalise, similar=lambda a, b: 0.5)]


def test_steps_are_told_apart_by_their_key() -> None:
    """`user`, `bot` and `wait_for_bot` mappings become their step kinds; a button click is a user step."""
    assert isinstance(STEP.validate_python({"user": "hi"}), UserSays)
    assert STEP.validate_python({"user": {"button": "Billing"}}).user.button == "Billing"
    assert isinstance(STEP.validate_python({"bot": "Welcome"}), BotSays)
    assert STEP.validate_python({"wait_for_bot": "5s"}).wait_for_bot == 5.0
    assert isinstance(STEP.validate_python({"wait_for_bot": 2}), WaitForBot)


def test_a_bot_string_is_contains_and_an_empty_bot_step_is_refused() -> None:
    """`bot: "text"` means contains; `bot: {}` expects nothing and is a scenario error naming the keys."""
    assert bot(contains="x").bot.contains == "x" and STEP.validate_python({"bot": "x"}).bot.contains == "x"
    with pytest.raises(ValidationError, match="needs an expectation"):
        STEP.validate_python({"bot": {}})
    with pytest.raises(ValidationError, match="bad regular expression"):
        bot(matches="(")
    with pytest.raises(ValidationError, match="cannot save"):
        bot(contains="x", save={"a": "header:x"})


def test_normalising_strips_html_folds_case_and_collapses_space() -> None:
    """"<p>Your  <b>BALANCE</b></p>" compares as "your balance"; entities are decoded."""
    assert normalise("<p>Your  <b>BALANCE</b></p>\n") == "your balance"
    assert strip_html("Fish &amp; chips") == "Fish & chips"
    assert normalise("<p>a</p><p>b</p>") == "a b"


@pytest.mark.parametrize(
    ("expect", "expected"),
    [
        ({"contains": "balance is 120"}, [Outcome.passed]),
        ({"contains": ["balance", "euros"]}, [Outcome.passed, Outcome.failed]),
        ({"equals": "your balance is 120 pounds."}, [Outcome.passed]),
        ({"equals": "Your balance is 120 pounds.", "normalise": False}, [Outcome.failed]),
        ({"matches": r"balance is \d+ POUNDS"}, [Outcome.passed]),
        ({"wildcard": "Your balance is * pounds."}, [Outcome.passed]),
        ({"wildcard": "balance is *"}, [Outcome.failed]),
        ({"one_of": ["Hello", "Your balance is 120 pounds."]}, [Outcome.passed]),
        ({"intent": "balance", "confidence": 0.9}, [Outcome.passed, Outcome.passed]),
        ({"intent": "billing", "confidence": 0.95}, [Outcome.failed, Outcome.failed]),
        ({"buttons": ["Pay a bill", "Main menu"]}, [Outcome.passed]),
        ({"buttons": ["Main menu", "Pay a bill"]}, [Outcome.failed]),
        ({"buttons": {"contains": ["main menu"]}}, [Outcome.passed]),
        ({"json_path": {"$.account.currency": "GBP"}}, [Outcome.passed]),
        ({"json_path": {"$.account.iban": {"exists": True}}}, [Outcome.failed]),
        ({"similar_to": "Your balance is 120 pounds"}, [Outcome.failed]),
        ({"similar_to": {"text": "x", "threshold": 0.4}}, [Outcome.passed]),
    ],
)
def test_each_expectation_passes_or_fails_on_the_message(expect: dict, expected: list[Outcome]) -> None:
    """Every key given is one check, in order, judged on the normalised text unless normalise is false."""
    assert outcomes(expect) == expected


def test_a_failed_check_says_what_it_saw() -> None:
    """The sentence quotes the message as sent and the expectation: text ('...') contains 'euros'."""
    step = bot(contains="euros")
    (check,) = judge(step.bot, BALANCE)
    assert check.text == "text ('<p>Your balance is <b>120</b> pounds.</p>') contains 'euros'"
    (check,) = judge(bot(intent="billing").bot, BotMessage("hi"))
    assert check.text == "intent (absent) == 'billing'"


def test_not_holds_only_when_no_nested_check_holds() -> None:
    """`not: {contains: sorry}` passes on a balance and fails, naming the check that held, on an apology."""
    step = bot(**{"not": {"contains": "sorry"}})
    assert negated(judge(step.bot.not_, BALANCE), "not").outcome is Outcome.passed
    failed = negated(judge(step.bot.not_, BotMessage("Sorry, I did not understand")), "not")
    assert failed.outcome is Outcome.failed and "contains 'sorry'" in failed.text


def test_wildcards_escape_everything_but_the_star() -> None:
    """Only `*` is special in a wildcard: dots and brackets match themselves."""
    assert wildcard_pattern("order (1.5) * ready").fullmatch("order (1.5) is ready")
    assert not wildcard_pattern("order (1.5) * ready").fullmatch("order (145) is ready")
