"""The sandbox's phone numbers: what each number does when it is dialled, healthy and broken.

    table = NumberTable.load()                      # numbers.yaml beside this module
    table.numbers["+18005550101"].acts(broken=False) # a Behaviour: greeting, busy, no_answer, ...

SandboxIvr (ivr.py) answers a dialled user that is not an IVR entry from this
table: `serve_number` plays one number's behaviour on the incoming Call. Every
text a number speaks, healthy or broken, is synthesised by flite at start-up and
cached like the IVR prompts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxtest.sandbox.files import load_yaml
from probes.voice.sip import Call
from probes.voice.speech import synthesise

DEFAULT_NUMBERS = Path(__file__).with_name("numbers.yaml")
SPEAKING = ("greeting", "announcement")  # the behaviours that say a text
NUMBER = re.compile(r"\+?[0-9]{3,15}")
#: After an announcement the 404 waits this long, so the announcement's last packets reach the caller before it.
ANNOUNCEMENT_TAIL_S = 0.2

BehaviourName = Literal["greeting", "busy", "no_answer", "dead_air", "announcement", "unavailable"]


class NumbersError(RuntimeError):
    """The numbers file cannot be read or is not valid."""


class Behaviour(BaseModel):
    """What a number does with a call; `say` is the text of a greeting or an announcement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    behaviour: BehaviourName
    say: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _say_when_speaking(self) -> Behaviour:
        if self.behaviour in SPEAKING and self.say is None:
            raise ValueError(f"behaviour {self.behaviour} needs say: the text it speaks")
        if self.behaviour not in SPEAKING and self.say is not None:
            raise ValueError(f"behaviour {self.behaviour} says nothing: remove say (only {' and '.join(SPEAKING)} speak)")
        return self


class Number(Behaviour):
    """One number of the table: its name, its healthy behaviour, and what it does when the sandbox is broken."""

    name: str = Field(min_length=1)
    broken: Behaviour | None = None  # left out: the number behaves the same when the sandbox is broken

    def acts(self, broken: bool) -> Behaviour:
        if broken and self.broken is not None:
            return self.broken
        return Behaviour(behaviour=self.behaviour, say=self.say)


class NumberTable(BaseModel):
    """Every number the sandbox answers, with the voice that speaks them and the timings they share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voice: str = "rms"  # a flite voice name (flite -lv) or a .flitevox file
    ring_s: float = Field(default=0.7, ge=0, le=10)  # 180 Ringing this long before a greeting or dead-air number answers
    max_call_s: float = Field(default=120.0, gt=0)  # then the number hangs up (or stops ringing), so no call stays forever
    numbers: dict[str, Number] = Field(min_length=1)

    @field_validator("numbers", mode="before")
    @classmethod
    def _numbers_are_quoted_digits(cls, value: object) -> object:
        if isinstance(value, dict):
            for number in value:
                if not isinstance(number, str):
                    raise ValueError(f"number {number!r} is not text: quote it in YAML (\"+{number}\"), or it loses its +")
                if not NUMBER.fullmatch(number):
                    raise ValueError(f"number {number!r} is not a phone number: an optional + and 3 to 15 digits, like \"+18005550101\"")
        return value

    @classmethod
    def load(cls, path: str | Path = DEFAULT_NUMBERS) -> NumberTable:
        """Read and check a numbers file; NumbersError says what is wrong and where."""
        return load_yaml(cls, path, "numbers file", NumbersError)

    def texts(self) -> set[str]:
        """Every text a number may say, healthy or broken."""
        behaviours = [*self.numbers.values(), *(n.broken for n in self.numbers.values() if n.broken is not None)]
        return {b.say for b in behaviours if b.say is not None}


def synthesise_numbers(table: NumberTable, cache_dir: str | Path | None = None) -> dict[str, bytes]:
    """Text -> pcm (8 kHz mono 16-bit) for every text of the table; texts already cached are not spoken again.

    Raises probes.voice.speech.SpeechError when flite is missing or lacks the voice.
    """
    return {text: synthesise(text, table.voice, cache_dir) for text in sorted(table.texts())}


# --------------------------------------------------------------------------- answering


async def serve_number(call: Call, behaviour: Behaviour, spoken: dict[str, bytes], table: NumberTable, hold_music: bytes) -> None:
    """Do what `behaviour` says with an incoming call; returns when the call is over (or rejected)."""
    what = behaviour.behaviour
    if what == "busy":
        await call.reject(486, "Busy Here")
    elif what == "unavailable":
        await call.reject(480, "Temporarily Unavailable")
    elif what == "no_answer":
        await call.ring()
        if not await _ended_within(call, table.max_call_s):
            await call.reject(480, "Temporarily Unavailable")  # a caller that never cancels must not ring here forever
    elif what == "announcement":
        await call.progress_media()
        await _for_at_most(call, table.max_call_s, _announce(call, spoken[behaviour.say]))
        await call.reject(404, "Not Found")
    elif what == "greeting":
        await _answer_after_ringing(call, table.ring_s)
        await _for_at_most(call, table.max_call_s, _greet_then_hold(call, spoken[behaviour.say], hold_music))
        await call.hangup()
    else:  # dead_air: the media clock sends encoded silence whenever nothing plays
        await _answer_after_ringing(call, table.ring_s)
        await _ended_within(call, table.max_call_s)
        await call.hangup()


async def _answer_after_ringing(call: Call, ring_s: float) -> None:
    await call.ring()
    await asyncio.sleep(ring_s)
    await call.answer()  # CallEnded if the caller cancelled meanwhile: the user agent takes that as the call's end


async def _announce(call: Call, pcm: bytes) -> None:
    await call.play(pcm)
    await asyncio.sleep(ANNOUNCEMENT_TAIL_S)


async def _greet_then_hold(call: Call, greeting: bytes, hold_music: bytes) -> None:
    await call.play(greeting)
    while True:
        await call.play(hold_music)


async def _ended_within(call: Call, seconds: float) -> bool:
    """Whether the call ended (the caller hung up or cancelled) within `seconds`."""
    try:
        await asyncio.wait_for(call.ended.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _for_at_most(call: Call, seconds: float, work: Awaitable[None]) -> None:
    """Run `work` until it ends, the call ends, or `seconds` pass, whichever is first."""
    task = asyncio.ensure_future(work)
    ended = asyncio.ensure_future(call.ended.wait())
    try:
        await asyncio.wait({task, ended}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        ended.cancel()
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # CallEnded when the caller hung up mid-play; a bug otherwise (the user agent logs it)
