"""The chat probe end to end: scenarios loaded by the real loader, run by the runner against a small REST bot on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cxtest.loader import load_scenario
from cxtest.model import Outcome, Project, Result, Scenario
from cxtest.runner import Runner
from servers import ThreadedServer


def bot_app() -> Starlette:
    """A bot with one answer per input, in the rest connector's default shape."""

    async def message(request: Request) -> Response:
        body = await request.json()
        text = body["text"]
        if text == "html":
            return PlainTextResponse("<html><body>Internal error</body></html>", media_type="text/html")
        if text == "slow":
            await asyncio.sleep(0.3)
        if text == "silence":
            return JSONResponse({"messages": []})
        if text in ("hi", "slow"):
            messages = [
                {"text": "Hello! I am the Acme assistant."},
                {"text": "How can I help?", "buttons": [{"title": "Billing", "payload": "/billing"}, {"title": "Support", "payload": "/support"}]},
            ]
            return JSONResponse({"messages": messages, "intent": {"name": "greet", "confidence": 0.98}})
        if text == "/billing":
            return JSONResponse({"messages": [{"text": "Your balance is 120 pounds. Ticket 4711."}], "intent": {"name": "billing", "confidence": 1.0}})
        return JSONResponse({"messages": [{"text": f"Sorry, I did not understand: {text}"}], "intent": {"name": "fallback", "confidence": 0.2}})

    return Starlette(routes=[Route("/bot", message, methods=["POST"])])


@pytest.fixture(scope="module")
def bot_url() -> Iterator[str]:
    with ThreadedServer(bot_app()) as server:
        yield server.url + "/bot"


_names = itertools.count()


@pytest.fixture
def run(tmp_path: Path, bot_url: str):  # type: ignore[no-untyped-def]
    project = Project(root=tmp_path)

    async def run(steps: str, **extra: str) -> Result:
        text = f"name: chat\nchannel: chat\nstep_timeout: 2s\ntarget: {{connector: rest, url: '{bot_url}'}}\nsteps:\n" + textwrap.indent(textwrap.dedent(steps), "  ")
        path = tmp_path / f"chat_{next(_names)}.yaml"
        path.write_text(text)
        scenario: Scenario = load_scenario(path, project)
        async with Runner(project, artifacts_root=tmp_path / "artifacts") as runner:
            return await runner.run_scenario(scenario)

    return run


async def test_a_right_conversation_passes_with_latency_and_a_transcript(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two bot messages checked in order, a button clicked by title (its payload sent), a value saved and reused."""
    result = await run(
        """
        - user: hi
        - bot: {equals: "hello! i am the acme assistant.", intent: greet, confidence: 0.9}
        - bot: {contains: help, buttons: [Billing, Support]}
        - user: {button: Billing}
        - bot: {wildcard: "Your balance is * pounds. *", save: {ticket: "regex:Ticket (\\\\d+)"}, max_latency: 1s}
        - user: "ticket {{ ticket }}"
        - bot: {contains: "did not understand: ticket 4711"}
        """
    )
    assert result.outcome is Outcome.passed, result.message
    latencies = [step.measures["turn_latency"] for step in result.steps if "turn_latency" in step.measures]
    assert len(latencies) == 4 and all(0 < latency < 1 for latency in latencies)
    transcript = json.loads(next(Path(a.path) for a in result.artifacts if a.path.endswith("transcript.json")).read_text())
    assert [line["from"] for line in transcript] == ["user", "bot", "bot", "user", "bot", "user", "bot"]
    assert transcript[3] == {"from": "user", "text": "Billing", "at": transcript[3]["at"], "button": "/billing"}
    assert transcript[2]["buttons"] == ["Billing", "Support"] and transcript[1]["intent"] == "greet"


async def test_a_wrong_answer_fails_with_expected_actual_and_the_transcript(run) -> None:  # type: ignore[no-untyped-def]
    """The failed step names what was expected and what came; its evidence holds the transcript so far."""
    result = await run(
        """
        - user: balance please
        - bot: {contains: balance, not: {contains: sorry}}
        """
    )
    assert result.outcome is Outcome.failed
    step = result.steps[1]
    assert "text ('Sorry, I did not understand: balance please') contains 'balance'" in step.message or "contains 'sorry'" in step.message
    assert step.evidence["got"] == "Sorry, I did not understand: balance please"
    assert "user: balance please" in step.evidence["transcript"] and "bot: Sorry" in step.evidence["transcript"]


async def test_a_bot_that_never_answers_fails_at_the_step_timeout_saying_after_what(run) -> None:  # type: ignore[no-untyped-def]
    """No message within the step timeout: failed, "the bot sent nothing within 1.8s after the user said 'silence'"."""
    result = await run(
        """
        - user: silence
        - bot: anything
        """
    )
    assert result.outcome is Outcome.failed
    assert "the bot sent nothing within 1.8s after the user said 'silence'" in result.steps[1].message


async def test_an_html_page_instead_of_json_is_an_error_quoting_it(run) -> None:  # type: ignore[no-untyped-def]
    """A bot endpoint answering text/html: outcome error (the harness could not test), with the page quoted."""
    result = await run(
        """
        - user: html
        - bot: anything
        """
    )
    assert result.outcome is Outcome.error
    assert "not JSON (text/html" in result.message and "Internal error" in result.message


async def test_clicking_a_button_nobody_offered_fails_naming_the_offers(run) -> None:  # type: ignore[no-untyped-def]
    """A click on a title the bot never offered fails and lists what it did offer."""
    result = await run(
        """
        - user: hi
        - user: {button: Opening hours}
        """
    )
    assert result.outcome is Outcome.failed
    assert "no button 'Opening hours' to click: the bot offered ['Billing', 'Support']" in result.message


async def test_wait_for_bot_waits_without_consuming_and_latency_limits_judge(run) -> None:  # type: ignore[no-untyped-def]
    """wait_for_bot passes once a message came; the next bot step still checks it; a slow answer past max_latency fails."""
    result = await run(
        """
        - user: slow
        - wait_for_bot: 1s
        - bot: {contains: hello, max_latency: {degraded: 0.1s, failed: 0.2s}}
        """
    )
    assert result.outcome is Outcome.failed
    assert result.steps[1].outcome is Outcome.passed
    assert result.steps[2].message.startswith("turn_latency (") and result.steps[2].message.endswith(") > 200ms")
