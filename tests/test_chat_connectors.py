"""The rest, rasa and websocket connectors through whole scenarios against real bots: Botkit 4 and the sandbox bot.

Every connector meets its peers for: a right answer, a wrong answer, a bot that
never answers, HTML or invalid JSON, a bot that closes the conversation, two
messages for one input. (botframework and directline: tests/test_chat_botframework.py
and tests/test_chat_directline.py.)
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from chat_peers import BotkitPeer
from cxtest.loader import load_scenario
from cxtest.model import Outcome, Project, Result
from cxtest.runner import Runner
from cxtest.sandbox.app import create_app
from servers import ThreadedServer

STEP_TIMEOUT = "1.5s"

# The Botkit webhook answers with every frame it would send over the socket, typing indicators included.
BOTKIT_REST = {
    "connector": "rest",
    "body": {"type": "message", "text": "{{ text }}", "user": "{{ user }}", "channel": "webhook"},
    "messages": "$[?(@.type == 'message')]",
    "buttons": "$.quick_replies[*]",
    "intent": None,
    "confidence": None,
}


@pytest.fixture(scope="module")
def botkit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotkitPeer]:
    with BotkitPeer(tmp_path_factory.mktemp("botkit")) as peer:
        yield peer


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with ThreadedServer(create_app()) as server:
        yield server.url


@pytest.fixture
def targets(botkit: BotkitPeer, sandbox: str) -> dict[str, dict]:
    return {
        "rest/botkit": {**BOTKIT_REST, "url": botkit.webhook_url},
        "websocket/botkit": {"connector": "websocket", "url": botkit.websocket_url},
        "rest/sandbox": {"connector": "rest", "url": f"{sandbox}/bot/rest"},
        "rasa/sandbox": {"connector": "rasa", "url": sandbox},
        "websocket/sandbox": {"connector": "websocket", "url": f"{sandbox}/bot/ws"},
    }


_names = itertools.count()


@pytest.fixture
def converse(tmp_path: Path, targets: dict[str, dict]):  # type: ignore[no-untyped-def]
    project = Project(root=tmp_path)

    async def converse(peer: str, *steps: dict) -> Result:
        document = {"name": peer, "channel": "chat", "step_timeout": STEP_TIMEOUT, "target": targets[peer], "steps": list(steps)}
        path = tmp_path / f"chat_{next(_names)}.yaml"
        path.write_text(yaml.safe_dump(document))
        async with Runner(project, artifacts_root=tmp_path / "artifacts") as runner:
            return await runner.run_scenario(load_scenario(path, project))

    return converse


BOTKIT = ["rest/botkit", "websocket/botkit"]
SANDBOX = ["rest/sandbox", "rasa/sandbox", "websocket/sandbox"]


@pytest.mark.parametrize("peer", BOTKIT)
async def test_botkit_right_answer_and_button(converse, peer: str) -> None:  # type: ignore[no-untyped-def]
    """Botkit's welcome with its quick replies; clicking Billing sends its payload and gets the billing answer."""
    result = await converse(
        peer,
        {"user": "hi"},
        {"bot": {"equals": "Welcome to Acme Bank. How can I help?", "buttons": ["Billing", "Support"]}},
        {"user": {"button": "Billing"}},
        {"bot": {"contains": "pay a bill", "max_latency": "1s"}},
    )
    assert result.outcome is Outcome.passed, result.message


@pytest.mark.parametrize("peer", SANDBOX)
async def test_sandbox_right_answer_two_messages_and_button(converse, peer: str) -> None:  # type: ignore[no-untyped-def]
    """The sandbox greets with two messages, checked in order; its Billing button takes the conversation to billing."""
    result = await converse(
        peer,
        {"user": "hi"},
        {"bot": "Acme Bank assistant"},
        {"bot": {"equals": "How can I help?", "buttons": {"contains": ["Billing"]}}},
        {"user": {"button": "Billing"}},
        {"bot": {"contains": "pay a bill or hear your balance"}},
    )
    assert result.outcome is Outcome.passed, result.message


@pytest.mark.parametrize("peer", BOTKIT + SANDBOX)
async def test_a_wrong_answer_fails_quoting_the_bot(converse, peer: str) -> None:  # type: ignore[no-untyped-def]
    """Asked about loans, each bot falls back; the step fails with the bot's words and the transcript."""
    result = await converse(peer, {"user": "loans please"}, {"bot": {"contains": "interest rate"}})
    assert result.outcome is Outcome.failed, result.message
    assert "sorry, i did not understand" in result.message.casefold()
    assert "user: loans please" in result.steps[1].evidence["transcript"]


@pytest.mark.parametrize("peer", BOTKIT + SANDBOX)
async def test_a_bot_that_never_answers_fails_at_the_step_timeout(converse, peer: str) -> None:  # type: ignore[no-untyped-def]
    """"silence" gets no message: the bot step fails just before the step timeout, saying after what."""
    result = await converse(peer, {"user": "silence"}, {"bot": "anything"})
    assert result.outcome is Outcome.failed
    assert "the bot sent nothing within 1.3s after the user said 'silence'" in result.message


@pytest.mark.parametrize("peer", BOTKIT)
async def test_html_text_is_compared_without_its_tags(converse, peer: str) -> None:  # type: ignore[no-untyped-def]
    """Botkit's HTML message passes a check written as plain text, and the transcript keeps it as sent."""
    result = await converse(peer, {"user": "html"}, {"bot": {"equals": "Opening hours: 9am to 5pm"}})
    assert result.outcome is Outcome.passed, result.message
    transcript = json.loads(next(Path(a.path) for a in result.artifacts if a.path.endswith("transcript.json")).read_text())
    assert transcript[1]["text"] == "<p>Opening hours: <b>9am to 5pm</b></p>"


@pytest.mark.parametrize(
    ("peer", "word", "says"),
    [
        ("rest/sandbox", "html", "the bot's answer is not JSON (text/html"),
        ("rasa/sandbox", "html", "the bot's answer is not JSON (text/html"),
        ("websocket/sandbox", "html", "the bot sent a frame that is not JSON"),
        ("rest/sandbox", "badjson", "the bot's answer is not JSON (application/json"),
        ("rasa/sandbox", "badjson", "the bot's answer is not JSON (application/json"),
        ("websocket/sandbox", "badjson", "the bot sent a frame that is not JSON"),
        ("websocket/botkit", "badjson", "the bot sent a frame that is not JSON"),
    ],
)
async def test_an_answer_that_is_not_json_is_an_error_quoting_it(converse, peer: str, word: str, says: str) -> None:  # type: ignore[no-untyped-def]
    """HTML or broken JSON where JSON belongs: outcome error (the harness could not test), the answer quoted."""
    result = await converse(peer, {"user": word}, {"bot": "anything"})
    assert result.outcome is Outcome.error, result.message
    assert says in result.message


@pytest.mark.parametrize(
    ("peer", "says"),
    [
        ("rest/botkit", "answered 500"),
        ("websocket/botkit", "the bot closed the websocket (code 1006)"),
        ("rest/sandbox", "closed the connection without answering"),
        ("rasa/sandbox", "closed the connection without answering"),
        ("websocket/sandbox", "the bot closed the websocket (code 1011, bot closed the conversation)"),
    ],
)
async def test_a_bot_that_drops_the_conversation_is_an_error_saying_how(converse, peer: str, says: str) -> None:  # type: ignore[no-untyped-def]
    """"close" mid-conversation: after a right first answer, the drop ends the run as an error that says how."""
    result = await converse(
        peer,
        {"user": "billing"},
        {"bot": "pay a bill"},
        {"user": "close"},
        {"bot": "anything"},
    )
    assert result.outcome is Outcome.error, result.message
    assert result.steps[1].outcome is Outcome.passed
    assert says in result.message


async def test_botkit_two_messages_for_one_input_come_in_order(converse) -> None:  # type: ignore[no-untyped-def]
    """"two" gets two messages (typing indicators left out); a bot step checks each, in order."""
    result = await converse("websocket/botkit", {"user": "two"}, {"bot": {"equals": "First of two"}}, {"bot": {"equals": "Second of two"}})
    assert result.outcome is Outcome.passed, result.message
