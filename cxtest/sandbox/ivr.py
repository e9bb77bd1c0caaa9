"""The sandbox IVR: the Acme Bank phone menu answered by a SIP user agent on 127.0.0.1.

    with IvrThread() as ivr:            # speaks the prompts (once, then cached) and answers on a free port
        ivr.uri()                       # "sip:ivr@127.0.0.1:PORT"
        ivr.calls[-1].steps             # (time, node, digit) of the last call, for tests

A dialled user that is no entry of the menu is looked up in the phone numbers
(numbers.yaml, see numbers.py): each number greets, is busy, rings unanswered, has
dead air or plays an announcement, and may do otherwise when the sandbox is broken.

The menu is a YAML file (ivr.yaml beside this module): nodes that say a prompt and
then offer DTMF options or end in a hangup, hold music, silence (a dead end) or
another node. flite speaks each distinct prompt text once into a cache keyed by a
hash of voice and text. Digits count however they arrive (RFC 4733 events, SIP
INFO, in-band tones), and a digit pressed while a menu speaks interrupts it.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxtest.sandbox.files import load_yaml
from cxtest.sandbox.numbers import DEFAULT_NUMBERS, NumbersError, NumberTable, serve_number, synthesise_numbers
from probes.voice import audio, dtmf
from probes.voice.sip import Call, CallEnded, Timers, UserAgent
from probes.voice.speech import SpeechError, synthesise

DEFAULT_MENU = Path(__file__).with_name("ivr.yaml")
DTMF_KEYS = frozenset("0123456789*#")
ENDINGS = ("hangup", "hold", "silence")  # what a node without options may do after its prompt, besides going to a node
SHARED_PROMPTS = ("invalid", "goodbye")  # prompt ids of the menu-wide messages; no node may take these ids
INBAND_POLL_S = 0.1  # in-band DTMF is looked for in what the caller sent, this often
CALLS_KEPT = 100  # the log keeps the latest calls only: each holds its recording, and a sandbox may run for days
#: How long ``IvrThread.start()`` waits for the user agent to listen, and ``stop()`` for the thread to end.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class IvrError(RuntimeError):
    """The IVR cannot run: a bad menu file, no flite, a port taken."""


def _hold_music() -> bytes:
    """A four-note chime and a pause: what a caller on hold hears, looped."""
    notes = (523.25, 659.25, 783.99, 659.25)
    chime = b"".join(audio.tone(hz, 0.3, level_dbfs=-18.0) + audio.silence(0.05) for hz in notes)
    return chime + audio.silence(1.0)


HOLD_MUSIC = _hold_music()


# --------------------------------------------------------------------------- the menu


class MenuNode(BaseModel):
    """One point of the menu: a prompt, then options (a menu) or `then` (what follows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    say: str = Field(min_length=1)
    pause_s: float = Field(default=0.0, ge=0, le=60)  # silence before the prompt
    options: dict[str, str] = Field(default_factory=dict)  # DTMF key -> node id
    then: str | None = None  # hangup, hold, silence, or a node id

    @field_validator("options", mode="before")
    @classmethod
    def _keys_as_text(cls, value: object) -> object:
        # YAML reads an unquoted 1 as the integer 1.
        if isinstance(value, dict):
            return {str(key) if isinstance(key, int) and 0 <= key <= 9 else key: target for key, target in value.items()}
        return value

    @field_validator("options")
    @classmethod
    def _keys_are_dtmf(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key not in DTMF_KEYS:
                raise ValueError(f"option {key!r} is not a DTMF key (0-9, *, #; quote * and # in YAML)")
        return value

    @model_validator(mode="after")
    def _options_or_then(self) -> MenuNode:
        if self.options and self.then is not None:
            raise ValueError("a node has options (a menu) or then (what follows its prompt), not both")
        if not self.options and self.then is None:
            raise ValueError(f"a node without options needs then: {', '.join(ENDINGS)} or a node id")
        return self


class IvrMenu(BaseModel):
    """The whole menu: where each dialled user starts, the nodes, the timeouts and shared prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voice: str = "rms"  # a flite voice name (flite -lv) or a .flitevox file
    no_input_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=2, ge=0)
    max_call_s: float = Field(default=600.0, gt=0)  # then the IVR hangs up, so a forgotten call does not stay forever
    invalid: str = Field(default="Sorry, that is not a valid option.", min_length=1)
    goodbye: str = Field(default="Goodbye.", min_length=1)
    entries: dict[str, str] = Field(min_length=1)  # dialled user part -> node id
    nodes: dict[str, MenuNode] = Field(min_length=1)

    @field_validator("entries", mode="before")
    @classmethod
    def _entries_are_text(cls, value: object) -> object:
        if isinstance(value, dict):
            for user in value:
                if not isinstance(user, str):
                    raise ValueError(f"entry {user!r} is not text: quote it in YAML (\"{user}\"), or a number loses its form")
        return value

    @model_validator(mode="after")
    def _links_resolve(self) -> IvrMenu:
        problems = [f"node id {name!r} is reserved for the shared prompt of that name" for name in SHARED_PROMPTS if name in self.nodes]
        problems += [f"entries.{user}: no node {node!r}" for user, node in self.entries.items() if node not in self.nodes]
        for node_id, node in self.nodes.items():
            problems += [
                f"nodes.{node_id}.options.{key}: no node {target!r}" for key, target in node.options.items() if target not in self.nodes
            ]
            if node.then is not None and node.then not in ENDINGS and node.then not in self.nodes:
                problems.append(f"nodes.{node_id}.then: {node.then!r} is neither {', '.join(ENDINGS)} nor a node")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MENU) -> IvrMenu:
        """Read and check a menu file; IvrError says what is wrong and where."""
        return load_yaml(cls, path, "IVR menu", IvrError)

    def prompts(self) -> dict[str, str]:
        """Prompt id (a node id, or a shared prompt's name) -> the text spoken."""
        return {**{node_id: node.say for node_id, node in self.nodes.items()}, "invalid": self.invalid, "goodbye": self.goodbye}


# --------------------------------------------------------------------------- prompts


def synthesise_prompts(menu: IvrMenu, cache_dir: str | Path | None = None) -> dict[str, bytes]:
    """Every prompt of the menu as pcm (8 kHz mono 16-bit), spoken by flite; texts already in the cache are not spoken again."""
    try:
        return {prompt_id: synthesise(text, menu.voice, cache_dir) for prompt_id, text in menu.prompts().items()}
    except SpeechError as exc:
        raise IvrError(str(exc)) from exc


def load_numbers(path: str | Path = DEFAULT_NUMBERS) -> NumberTable:
    """The phone numbers (the shipped numbers.yaml by default); a bad file is an IvrError, as a bad menu is."""
    try:
        return NumberTable.load(path)
    except NumbersError as exc:
        raise IvrError(str(exc)) from exc


def synthesise_number_texts(numbers: NumberTable, cache_dir: str | Path | None = None) -> dict[str, bytes]:
    """Text -> pcm for everything the numbers say, healthy and broken, spoken once and cached as the prompts are."""
    try:
        return synthesise_numbers(numbers, cache_dir)
    except SpeechError as exc:
        raise IvrError(str(exc)) from exc


# --------------------------------------------------------------------------- calls


class Step(NamedTuple):
    """One moment of a call: it entered a node (digit "") or the caller pressed a digit there."""

    at: float  # time.monotonic()
    node: str
    digit: str


@dataclass
class IvrCall:
    """What the IVR did on one call, for tests and demos to check."""

    call: Call
    entry: str  # the dialled user part
    steps: list[Step] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        """The nodes the call went through, in order."""
        return [step.node for step in self.steps if not step.digit]

    @property
    def digits(self) -> str:
        return "".join(step.digit for step in self.steps)


class _Walk:
    """One call through the menu: plays prompts, takes digits from every source, follows options."""

    def __init__(self, ivr: SandboxIvr, record: IvrCall):
        self.menu, self.prompts, self.record, self.call = ivr.menu, ivr.prompts, record, record.call
        self.inband = ivr.inband
        self.digits: asyncio.Queue[str] = asyncio.Queue()
        self.node = ""

    async def run(self, start: str) -> None:
        listeners = [asyncio.ensure_future(self._take_signalled_digits())]
        if self.inband:
            listeners.append(asyncio.ensure_future(self._listen_inband()))
        walk = asyncio.ensure_future(self._walk(start))
        ended = asyncio.ensure_future(self.call.ended.wait())
        try:
            done, _ = await asyncio.wait({walk, ended}, timeout=self.menu.max_call_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (walk, ended, *listeners):
                task.cancel()
        if not done:
            await self.call.hangup()
        elif walk in done:
            failure = walk.exception()
            if failure is not None and not isinstance(failure, CallEnded):
                raise failure  # a bug, not the caller hanging up: the user agent logs it

    async def _walk(self, node_id: str) -> None:
        while node_id not in ENDINGS:
            node = self.menu.nodes[node_id]
            self._step(node_id, "")
            if node.options:
                node_id = await self._offer(node_id, node)
                continue
            if node.pause_s:
                await self.call.play(audio.silence(node.pause_s))
            await self.call.play(self.prompts[node_id])
            node_id = node.then
        if node_id == "hangup":
            await self.call.hangup()
        elif node_id == "hold":
            while True:
                await self.call.play(HOLD_MUSIC)
        else:
            await self.call.ended.wait()  # the dead end: silence until the caller gives up

    async def _offer(self, node_id: str, node: MenuNode) -> str:
        """Say the menu until a valid option is chosen (its node), or, after `retries` repeats unanswered, goodbye ("hangup")."""
        digit = await self._play_until_digit(audio.silence(node.pause_s)) if node.pause_s else None
        unanswered = 0
        while True:
            if digit is None:
                digit = await self._play_until_digit(self.prompts[node_id]) or await self._next_digit(self.menu.no_input_s)
            if digit is None:
                unanswered += 1
                if unanswered > self.menu.retries:
                    await self.call.play(self.prompts["goodbye"])
                    return "hangup"
                continue
            if digit in node.options:
                return node.options[digit]
            digit = await self._play_until_digit(self.prompts["invalid"])

    async def _play_until_digit(self, pcm: bytes) -> str | None:
        """Play pcm to its end (None) unless a digit interrupts it (the digit): barge-in."""
        if not self.digits.empty():
            return self.digits.get_nowait()
        playing = asyncio.ensure_future(self.call.play(pcm))
        pressed = asyncio.ensure_future(self.digits.get())
        try:
            done, _ = await asyncio.wait({playing, pressed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            playing.cancel()  # cancelling the play stops the prompt at once
            pressed.cancel()
        if pressed in done:
            return pressed.result()
        playing.result()  # CallEnded when the caller hung up mid-prompt
        return None

    async def _next_digit(self, timeout: float) -> str | None:
        try:
            return await asyncio.wait_for(self.digits.get(), timeout)
        except TimeoutError:
            return None

    def _step(self, node: str, digit: str) -> None:
        if not digit:
            self.node = node
        self.record.steps.append(Step(time.monotonic(), node, digit))

    def _pressed(self, digit: str) -> None:
        self._step(self.node, digit)
        self.digits.put_nowait(digit)

    async def _take_signalled_digits(self) -> None:
        """RFC 4733 events and SIP INFO, as the user agent hands them over."""
        while True:
            received = await self.call.next_digit()
            self._pressed(received.digit)

    async def _listen_inband(self) -> None:
        """DTMF tones in the caller's audio, looked for in what arrived since the last look."""
        recording = self.call.media.recording
        detector = dtmf.ToneDetector()
        looked_until: float | None = None
        while True:
            await asyncio.sleep(INBAND_POLL_S)
            if recording.started_at is None:
                continue
            # Times on sample boundaries, so consecutive looks neither overlap nor skip a sample.
            heard_until = recording.started_at + recording.duration
            pcm = recording.pcm(start=recording.started_at if looked_until is None else looked_until, end=heard_until)
            looked_until = heard_until
            for digit in detector.feed(pcm):
                self._pressed(digit.digit)


class SandboxIvr:
    """The menu answering calls on a SIP user agent in the running event loop.

    A call to sip:USER@host:port starts at the node `entries` names for USER;
    failing that, a phone number of `numbers` answers it as its behaviour says (its
    broken one when `broken`); any other user gets 404 Not Found. `calls` logs the
    latest answered menu calls.
    """

    def __init__(
        self,
        menu: IvrMenu | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cache_dir: str | Path | None = None,
        timers: Timers = Timers(),
        inband: bool = True,
        numbers: NumberTable | None = None,
        broken: bool = False,
    ):
        self.menu = menu if menu is not None else IvrMenu.load()
        self.numbers = numbers if numbers is not None else load_numbers()
        both = sorted(set(self.menu.entries) & set(self.numbers.numbers))
        if both:
            raise IvrError(f"dialled users both an IVR entry and a phone number: {', '.join(both)} (the menu would always win)")
        self.host, self.requested_port, self.cache_dir, self.timers = host, port, cache_dir, timers
        self.inband = inband
        self.broken = broken
        self.prompts: dict[str, bytes] = {}
        self.number_texts: dict[str, bytes] = {}  # text -> pcm of what the numbers say
        self.calls: deque[IvrCall] = deque(maxlen=CALLS_KEPT)
        self._ua: UserAgent | None = None

    @property
    def port(self) -> int:
        if self._ua is None:
            raise IvrError("the IVR is not running; call start() first")
        return self._ua.port

    def uri(self, user: str = "ivr") -> str:
        return f"sip:{user}@{self.host}:{self.port}"

    async def start(self) -> SandboxIvr:
        """Load the prompts (synthesising what is not cached), then listen for calls."""
        self.prompts = await asyncio.to_thread(synthesise_prompts, self.menu, self.cache_dir)
        self.number_texts = await asyncio.to_thread(synthesise_number_texts, self.numbers, self.cache_dir)
        ua = UserAgent(self.host, self.requested_port, user="ivr", timers=self.timers)
        try:
            await ua.start()
        except OSError as exc:
            raise IvrError(f"sandbox IVR cannot listen on {self.host}:{self.requested_port}: {exc.strerror or exc}") from exc
        ua.on_invite = self._answer
        self._ua = ua
        return self

    async def aclose(self) -> None:
        """Hang up the calls still up and close the user agent."""
        if self._ua is not None:
            await self._ua.aclose()
            self._ua = None

    async def __aenter__(self) -> SandboxIvr:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _answer(self, call: Call) -> None:
        user = call.dialled_user
        start = self.menu.entries.get(user)
        if start is None:
            number = self.numbers.numbers.get(user)
            if number is None:
                await call.reject(404, "Not Found")
                return
            await serve_number(call, number.acts(self.broken), self.number_texts, self.numbers, HOLD_MUSIC)
            return
        await call.ring()
        await call.answer()
        record = IvrCall(call, user)
        self.calls.append(record)
        await _Walk(self, record).run(start)


class IvrThread:
    """A SandboxIvr in a background thread with its own event loop (the Sandbox, the demo, synchronous tests)."""

    def __init__(
        self,
        menu: IvrMenu | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cache_dir: str | Path | None = None,
        timers: Timers = Timers(),
        numbers: NumberTable | None = None,
        broken: bool = False,
    ):
        self.ivr = SandboxIvr(menu, host=host, port=port, cache_dir=cache_dir, timers=timers, numbers=numbers, broken=broken)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: Exception | None = None

    @property
    def port(self) -> int:
        return self.ivr.port

    @property
    def calls(self) -> deque[IvrCall]:
        return self.ivr.calls

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def uri(self, user: str = "ivr") -> str:
        return self.ivr.uri(user)

    def start(self, timeout: float = START_TIMEOUT_S) -> IvrThread:
        if self.running:
            return self
        # Here, in the caller's thread and before the timeout counts, so a missing flite is raised as itself.
        synthesise_prompts(self.ivr.menu, self.ivr.cache_dir)
        synthesise_number_texts(self.ivr.numbers, self.ivr.cache_dir)
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="cxtest-ivr", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise IvrError(f"sandbox IVR did not start within {timeout:g}s")
        if self._failure is not None:
            self._thread.join(timeout)
            failure, self._failure = self._failure, None
            raise failure
        return self

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.ivr.start()
        except Exception as exc:
            self._failure = exc
            return
        finally:
            self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.ivr.aclose()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Hang up, close the user agent and end the thread (waits at most `timeout`)."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None and thread is not None and thread.is_alive():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop closed in between: the thread is ending anyway
        if thread is not None:
            thread.join(timeout)
        self._thread = self._loop = self._stopping = None

    def __enter__(self) -> IvrThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class IvrProcess:
    """The sandbox IVR in a child process: for a caller that recognises speech in its own
    process (`cxtest demo`), where an IVR thread would share the GIL with speech-to-text and
    its 20 ms media clock would stall. `uri()` and `stop()` as IvrThread; `broken` runs the
    phone numbers broken."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, broken: bool = False):
        self.host, self.requested_port, self.broken = host, port, broken
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    def uri(self, user: str = "ivr") -> str:
        return f"sip:{user}@{self.host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> IvrProcess:
        import sys

        synthesise_prompts(IvrMenu.load())  # here, so a missing flite is raised as itself
        synthesise_number_texts(load_numbers())
        mode = ["broken"] if self.broken else []
        self._process = subprocess.Popen(
            [sys.executable, "-m", "cxtest.sandbox.ivr", self.host, str(self.requested_port), *mode],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        ready = threading.Event()
        lines: list[str] = []

        def read() -> None:
            assert self._process is not None and self._process.stdout is not None
            for line in self._process.stdout:
                lines.append(line.rstrip())
                if line.startswith("ready "):
                    self.port = int(line.split()[1])
                    ready.set()
            ready.set()  # the child ended

        threading.Thread(target=read, name="cxtest-ivr-output", daemon=True).start()
        if not ready.wait(timeout) or not self.port:
            self.stop()
            raise IvrError(f"sandbox IVR process did not start within {timeout:g}s: {' / '.join(lines[-5:])}")
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> IvrProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


async def _serve_forever(host: str, port: int, broken: bool) -> None:
    import gc
    import signal

    ivr = SandboxIvr(host=host, port=port, broken=broken)
    await ivr.start()
    # Everything loaded so far (modules, prompts, numbers) lives as long as the process: out of the
    # collector's sight, a full collection under load scans a fraction of the heap. Its pauses of
    # 60-230 ms skipped media ticks, a hole in every prompt playing (bench/stress_calls.py).
    gc.freeze()
    print(f"ready {ivr.port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await ivr.aclose()


if __name__ == "__main__":  # IvrProcess's child: python -m cxtest.sandbox.ivr HOST PORT [broken]
    import sys

    asyncio.run(_serve_forever(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["broken"]))
