"""Chatbot conversations (`channel: chat`): say things, check every answer, measure how fast it came.

One connector per protocol (probes/chat/connectors/), chosen by `target.connector`;
one conversation per run, opened on the first step and closed when the run ends,
its transcript kept as evidence (transcript.json).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import secrets
import time
from typing import Annotated, Any, ClassVar, Union

from pydantic import Field

from cxtest.checks import ABSENT, judge_levels
from cxtest.errors import ProbeError, StepFailed
from cxtest.model import Observation, Outcome, Scenario, Step
from probes.base import RunContext
from probes.chat.connectors.base import BotMessage, Button, Conversation, UserMessage
from probes.chat.matching import judge, json_value, negated, strip_html
from probes.chat.model import BotSays, ChatStep, Pause, UserSays, WaitForBot
from probes.http import render  # the chat steps' {{ saved values }}

CONNECTORS = {
    "rest": "probes.chat.connectors.rest:RestConnector",
    "rasa": "probes.chat.connectors.rasa:RasaConnector",
    "websocket": "probes.chat.connectors.websocket:WebsocketConnector",
    "botframework": "probes.chat.connectors.botframework:BotFrameworkConnector",
    "directline": "probes.chat.connectors.directline:DirectLineConnector",
}
TRANSCRIPT_LINES = 12  # the end of the transcript that a failure shows


def connector_class(name: str) -> Any:
    module, _, attribute = CONNECTORS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def _target_model() -> Any:
    models = tuple(connector_class(name).target_model for name in CONNECTORS)
    return Annotated[Union[models], Field(discriminator="connector")]  # type: ignore[misc]


class ChatSession:
    """One conversation with the bot: bot messages wait in an inbox until a `bot` step checks them."""

    def __init__(self, probe: ChatProbe, scenario: Scenario, ctx: RunContext):
        self.probe, self.scenario, self.ctx = probe, scenario, ctx
        self.target = scenario.target
        self.conversation: Conversation | None = None
        self.opened_at = 0.0
        self.sends: list[float] = []  # when each of our messages went out
        self.inbox: list[BotMessage] = []  # received, not yet checked
        self.seen: list[BotMessage] = []  # every bot message received, for button clicks
        self._notes: list[tuple[float, str, str, dict[str, Any]]] = []  # the transcript's lines, made when read

    async def step(self, index: int, step: Step, timeout: float) -> Observation:
        if self.conversation is None:
            connector = await self.probe.connector(self.target.connector)
            self.opened_at = time.monotonic()
            # The run id is shared by every scenario of one `cxtest run`: a bot must not mix their conversations up.
            self.conversation = await connector.open(self.target, f"{self.target.user}-{self.ctx.run_id}-{secrets.token_hex(4)}")
        if isinstance(step, UserSays):
            return await self._user(step, self._before(timeout))
        if isinstance(step, WaitForBot):
            return await self._wait_for_bot(step, min(step.wait_for_bot, self._before(timeout)))
        if isinstance(step, Pause):
            await asyncio.sleep(step.wait)
            return Observation()
        assert isinstance(step, BotSays)
        return await self._bot(step, timeout)

    @staticmethod
    def _before(timeout: float) -> float:
        # Give up just before the runner's own step timeout, so the failure says what was awaited.
        return max(0.1, timeout - 0.2)

    async def _user(self, step: UserSays, wait: float) -> Observation:
        if isinstance(step.user, str):
            message = UserMessage(render(step.user, self.ctx.variables))
        else:
            title = render(step.user.button, self.ctx.variables)
            message = UserMessage(title, await self._button(title, wait))
        self.sends.append(time.monotonic())
        self._note("user", message.text, self.sends[-1], button=message.button.value if message.button else None)
        await self.conversation.send(message)
        return Observation()

    async def _button(self, title: str, wait: float) -> Button:
        """The newest button with that title; the bot's messages not checked yet count, and one still coming is awaited."""
        deadline = time.monotonic() + wait
        while True:
            for message in reversed(self.seen):
                for button in message.buttons:
                    if button.title.casefold() == title.casefold():
                        return button
            message = await self.conversation.receive(max(0.0, deadline - time.monotonic()))
            if message is None:
                break
            self._received(message)
            self.inbox.append(message)
        offered = [button.title for message in self.seen for button in message.buttons]
        raise StepFailed(f"no button {title!r} to click: the bot offered {list(dict.fromkeys(offered)) or 'no buttons'}")

    async def _next(self, timeout: float) -> BotMessage | None:
        if self.inbox:
            return self.inbox.pop(0)
        message = await self.conversation.receive(timeout)
        if message is not None:
            self._received(message)
        return message

    def _latency(self, message: BotMessage) -> float:
        """From our last message before this one arrived (or the conversation's opening) to its arrival."""
        for sent in reversed(self.sends):  # in the order they went out
            if sent <= message.at:
                return message.at - sent
        return message.at - self.opened_at

    def _received(self, message: BotMessage) -> None:
        self.seen.append(message)
        latency = self._latency(message)
        self._note("bot", message.text, message.at, latency=latency, buttons=[b.title for b in message.buttons],
                   intent=message.intent, confidence=message.confidence, raw=message.raw)

    async def _wait_for_bot(self, step: WaitForBot, wait: float) -> Observation:
        if not self.inbox:
            message = await self.conversation.receive(wait)
            if message is None:
                raise StepFailed(f"the bot sent nothing within {wait:g}s{self._after()}\n{self.transcript_text()}")
            self._received(message)
            self.inbox.append(message)
        return Observation()

    async def _bot(self, step: BotSays, timeout: float) -> Observation:
        waited = self._before(timeout)
        message = await self._next(waited)
        if message is None:
            raise StepFailed(f"the bot sent nothing within {waited:g}s{self._after()}\n{self.transcript_text()}")
        expect = self.probe.filled(step.bot, self.ctx.variables)
        latency = self._latency(message)
        checks = judge(expect, message, expect.normalise)
        if expect.not_ is not None:
            checks.append(negated(judge(expect.not_, message, expect.normalise), "not"))
        if expect.max_latency is not None:
            checks.append(judge_levels("turn_latency", latency, expect.max_latency))
        measures = {"turn_latency": latency}
        if message.confidence is not None:
            measures["intent_confidence"] = message.confidence
        if all(check.outcome is not Outcome.failed for check in checks):
            self._save(expect.save, message)
            return Observation(checks=tuple(checks), measures=measures)
        return Observation(
            checks=tuple(checks),
            measures=measures,
            evidence={"expected": step.describe(), "got": message.text, "transcript": self.transcript_text()},
        )

    def _save(self, sources: dict[str, str], message: BotMessage) -> None:
        for name, source in sources.items():
            if source == "text":
                value: Any = strip_html(message.text).strip()
            elif source == "intent":
                value = message.intent
            elif source.startswith("regex:"):
                found = re.search(source[6:], strip_html(message.text))
                value = None if found is None else (found.group(1) if found.groups() else found.group(0))
            else:
                value = json_value(message.raw, source)
                value = None if value is ABSENT else value
            if value is None:
                raise StepFailed(f"cannot save {name!r}: {source!r} found nothing in {message.text!r}")
            self.ctx.variables[name] = value

    def _after(self) -> str:
        said = next((line["text"] for line in reversed(self.transcript) if line["from"] == "user"), None)
        return f" after the user said {said!r}" if said is not None else " after the conversation opened"

    def _note(self, who: str, text: str, at: float, **details: Any) -> None:
        # Kept raw: most runs pass and nobody reads their transcript (see `transcript`).
        self._notes.append((at, who, text, details))

    @property
    def transcript(self) -> list[dict[str, Any]]:
        """Every line so far, in the order things happened: a message read after our next one went out arrived before it."""
        lines = []
        for at, who, text, details in sorted(self._notes, key=lambda note: round(note[0] - self.opened_at, 3)):
            line = {"from": who, "text": text, "at": round(at - self.opened_at, 3)}
            line.update({key: value for key, value in details.items() if value not in (None, [])})
            if "latency" in line:
                line["latency"] = round(line["latency"], 3)
            lines.append(line)
        return lines

    def transcript_text(self, last: int = TRANSCRIPT_LINES) -> str:
        transcript = self.transcript
        lines = transcript[-last:]
        shown = [] if len(transcript) <= last else [f"  ... {len(transcript) - last} earlier lines"]
        for line in lines:
            extra = f"  ({line['latency'] * 1000:.0f} ms)" if "latency" in line else ""
            buttons = f"  [{' | '.join(line['buttons'])}]" if line.get("buttons") else ""
            shown.append(f"  {line['at']:7.3f}s {line['from']:>4}: {line['text']}{buttons}{extra}")
        return "transcript:\n" + "\n".join(shown)

    async def __aenter__(self) -> ChatSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.conversation is not None:
            await self.conversation.close()
        if self._notes and self.ctx.wants_evidence:  # the text form is in a failed step's evidence; this is the whole record
            self.ctx.write_text("transcript.json", transcript_json(self.transcript))


def transcript_json(lines: list[dict[str, Any]]) -> str:
    """A JSON list, one line of the conversation per line of text: readable, and written by json's C encoder (indent= is not)."""
    if not lines:
        return "[]"
    return "[\n  " + ",\n  ".join(json.dumps(line, default=str) for line in lines) + "\n]\n"


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value  # what render() fills
    if isinstance(value, dict):
        return any(_has_template(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_template(item) for item in value)
    return False


class ChatProbe:
    channel: ClassVar[str] = "chat"
    target_model: ClassVar[Any] = _target_model()
    step_model: ClassVar[Any] = ChatStep
    measures: ClassVar[frozenset[str]] = frozenset({"turn_latency", "intent_confidence"})

    def __init__(self) -> None:
        self._connectors: dict[str, Any] = {}
        self._templated: dict[int, tuple[Any, dict[str, Any] | None]] = {}
        self._filled_models: dict[tuple[int, str], tuple[Any, Any]] = {}

    def templated(self, expect: Any) -> dict[str, Any] | None:
        """A bot step's expectations as given, when some hold `{{ }}` to fill; None when none do.

        Asked on every bot message of every run: the answer is kept per expectation object
        (the scenario's, shared by its runs), kept alive beside it so its id stays its own.
        """
        known = self._templated.get(id(expect))
        if known is None or known[0] is not expect:
            if len(self._templated) > 10_000:  # scenarios loaded again and again (a monitor's reloads): start afresh
                self._templated.clear()
            given = expect.model_dump(by_alias=True, exclude_unset=True, exclude={"save"})
            known = (expect, given if _has_template(given) else None)
            self._templated[id(expect)] = known
        return known[1]

    def filled(self, expect: Any, variables: dict[str, Any]) -> Any:
        """`expect` with saved values filled in ("payment of {{ balance }} pounds"); the model made for the same values is reused.

        Validating a filled model cost as much as the rest of a bot step; under load most
        conversations fill in the same values (the same balance, the same name).
        """
        given = self.templated(expect)
        if given is None:
            return expect
        filled = render(given, variables)
        if filled == given:
            return expect
        key = (id(expect), repr(filled))
        known = self._filled_models.get(key)
        if known is None or known[0] is not expect:
            if len(self._filled_models) > 10_000:  # values that change on every run: start afresh now and then
                self._filled_models.clear()
            known = self._filled_models[key] = (expect, type(expect).model_validate({**filled, "save": expect.save}))
        return known[1]

    async def connector(self, name: str) -> Any:
        """One connector per protocol, shared by every run of this probe (its client pools, its callback server)."""
        if name not in self._connectors:
            self._connectors[name] = connector_class(name)()
        return self._connectors[name]

    def session(self, scenario: Scenario, ctx: RunContext) -> ChatSession:
        """The run's conversation, as an async context manager that closes it (a class: no generator per run)."""
        return ChatSession(self, scenario, ctx)

    async def aclose(self) -> None:
        for connector in self._connectors.values():
            try:
                await connector.aclose()
            except ProbeError:
                pass
        self._connectors.clear()

