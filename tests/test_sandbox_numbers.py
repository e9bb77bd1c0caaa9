"""The sandbox's phone numbers, called by the voice engine's SIP user agent on 127.0.0.1.

One module fixture dials every shipped number of a healthy and of a broken
SandboxIvr at once (about 8 s of real time) and keeps what each caller saw: the
provisional and final responses, the answer, and the audio. A greeting or an
announcement is found in the recording by correlating it with its synthesised
audio; silence and sound by RMS energy per 20 ms frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cxtest.sandbox.ivr import HOLD_MUSIC, IvrError, IvrMenu, IvrProcess, SandboxIvr, load_numbers
from cxtest.sandbox.numbers import NumbersError, NumberTable
from cxtest.sandbox.server import Sandbox
from probes.voice import audio
from probes.voice.sip import Call, Timers, UserAgent

FAST = Timers(t1=0.05, t2=0.4, t4=0.5)
FRAME_S = 0.02
LOUD = 100.0  # RMS per frame above which the caller hears something; encoded silence decodes to 0
NO_ANSWER_TIMEOUT_S = 2.0  # how long the callers here let a number ring
AFTER_GREETING_S = 2.0  # how long a caller stays after the greeting: enough to hear the start of the hold chime
DEAD_AIR_LISTEN_S = 3.0

SALES, SUPPORT, BILLING, CARDS, RETIRED = "+18005550101", "+18005550102", "+18005550103", "+18005550104", "+18005550109"
ACME = (SALES, SUPPORT, BILLING, CARDS)

SMALL_TABLE = """
ring_s: 0.1
max_call_s: 1.0
numbers:
  "+15550001": {name: Closed, behaviour: unavailable}
  "+15550002": {name: Greets, behaviour: greeting, say: "Hello."}
  "+15550003": {name: Rings, behaviour: no_answer}
  "+15550004": {name: Quiet, behaviour: dead_air}
"""


# --------------------------------------------------------------------------- what a caller heard


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / audio.SAMPLE_RATE


def loud_frames(pcm: bytes) -> np.ndarray:
    samples = np.frombuffer(pcm, dtype="<i2").astype(float)
    frames = len(samples) // audio.FRAME_SAMPLES
    rms = np.sqrt((samples[: frames * audio.FRAME_SAMPLES].reshape(frames, -1) ** 2).mean(axis=1))
    return np.nonzero(rms > LOUD)[0]


def starts_of(heard: bytes, wanted: bytes, after_s: float = 0.0) -> list[float]:
    """Where `wanted` starts in what was heard, in seconds: the frames whose next 0.6 s match its first 0.6 s."""
    window = round(0.6 * audio.SAMPLE_RATE)
    reference = np.frombuffer(wanted, dtype="<i2")[:window].astype(float)
    samples = np.frombuffer(heard, dtype="<i2").astype(float)
    starts: list[float] = []
    first = round(after_s / FRAME_S) * audio.FRAME_SAMPLES
    for at in range(max(0, first), len(samples) - window + 1, audio.FRAME_SAMPLES):  # played audio starts on a frame
        segment = samples[at : at + window]
        norm = np.linalg.norm(segment) * np.linalg.norm(reference)
        if norm and segment @ reference / norm > 0.9 and (not starts or at / audio.SAMPLE_RATE - starts[-1] > 0.6):
            starts.append(at / audio.SAMPLE_RATE)
    return starts


@dataclass
class Dialled:
    """One call placed against a number: the caller's Call, and what the number says healthy and broken."""

    call: Call
    texts: dict[str, bytes]  # text -> pcm of everything the numbers say

    @property
    def pcm(self) -> bytes:
        return self.call.media.recording.pcm()

    @property
    def statuses(self) -> list[int]:
        return [p.status for p in self.call.progress if p.status != 100]

    def at(self, status: int) -> float:
        """Seconds from our INVITE to the first `status` response."""
        return next(p.at for p in self.call.progress if p.status == status)

    def answered_offset(self) -> float:
        """Where in the recording the answer came."""
        return self.call.media.recording.offset(self.call.answered_at)


async def dial_and_listen(caller: UserAgent, ivr: SandboxIvr, user: str) -> Dialled:
    """Dial, and when answered stay for the greeting and a bit of hold (or a while of dead air), then hang up."""
    call = await caller.dial(ivr.uri(user), no_answer_timeout=NO_ANSWER_TIMEOUT_S if user != RETIRED else 8.0)
    dialled = Dialled(call, ivr.number_texts)
    if call.answered:
        number = ivr.numbers.numbers.get(user)
        behaviour = number.acts(ivr.broken) if number is not None else None
        listen = seconds(ivr.number_texts[behaviour.say]) + AFTER_GREETING_S if behaviour and behaviour.say else DEAD_AIR_LISTEN_S
        with contextlib.suppress(TimeoutError):
            await call.wait_ended(listen)
        await call.hangup()
    return dialled


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="module")
def calls(cache: Path) -> dict[tuple[str, str], Dialled]:
    """(mode, dialled user) -> the call: every shipped number, healthy and broken, plus a menu entry and an unknown number."""
    users = [*ACME, RETIRED, "ivr", "+18005550100"]

    async def place() -> dict[tuple[str, str], Dialled]:
        async with (
            SandboxIvr(cache_dir=cache, timers=FAST) as healthy,
            SandboxIvr(cache_dir=cache, timers=FAST, broken=True) as broken,
            UserAgent(timers=FAST, user="caller") as caller,
        ):
            keys = [(mode, user) for mode in ("healthy", "broken") for user in users]
            ivrs = {"healthy": healthy, "broken": broken}
            placed = await asyncio.gather(*(dial_and_listen(caller, ivrs[mode], user) for mode, user in keys))
            return dict(zip(keys, placed))

    return asyncio.run(place())


# --------------------------------------------------------------------------- healthy


@pytest.mark.parametrize("number", ACME)
def test_healthy_number_rings_answers_and_greets_then_holds(calls: dict[tuple[str, str], Dialled], number: str) -> None:
    """180 Ringing at once, 200 OK 0.5 to 1 s later, its own greeting from the answer, then the hold chime right after it."""
    dialled = calls["healthy", number]
    greeting = dialled.texts[NumberTable.load().numbers[number].say]
    assert dialled.statuses == [180, 200], dialled.call.trace_text()
    assert dialled.at(180) < 0.2
    assert 0.5 <= dialled.at(200) - dialled.at(180) <= 1.0
    [start] = starts_of(dialled.pcm, greeting)
    assert start == pytest.approx(dialled.answered_offset(), abs=0.3)
    hold_at = starts_of(dialled.pcm, HOLD_MUSIC, after_s=start)
    assert hold_at and hold_at[0] == pytest.approx(start + seconds(greeting), abs=0.1), f"hold chime at {hold_at}, greeting ends {start + seconds(greeting):.2f}"
    assert dialled.call.end_reason == "local bye"  # the number never hung up on its caller


def test_each_acme_number_has_its_own_greeting(calls: dict[tuple[str, str], Dialled]) -> None:
    """No healthy number plays another number's greeting."""
    table = NumberTable.load()
    for number in ACME:
        heard = calls["healthy", number].pcm
        others = [n for n in ACME if n != number and starts_of(heard, calls["healthy", n].texts[table.numbers[n].say])]
        assert others == [], f"{number} played the greeting of {others}"


@pytest.mark.parametrize("mode", ["healthy", "broken"])
def test_retired_number_announces_in_early_media_then_404(calls: dict[tuple[str, str], Dialled], mode: str) -> None:
    """183 with SDP, the not-in-service announcement as early media, then 404 Not Found; never answered."""
    dialled = calls[mode, RETIRED]
    announcement = dialled.texts[NumberTable.load().numbers[RETIRED].say]
    assert dialled.statuses == [183, 404], dialled.call.trace_text()
    assert dialled.call.early_media and not dialled.call.answered
    assert starts_of(dialled.pcm, announcement) == [pytest.approx(0.0, abs=0.3)]
    assert dialled.at(404) - dialled.at(183) >= seconds(announcement)  # the whole announcement, then the 404


def test_menu_entries_route_before_numbers_and_unknown_numbers_get_404(calls: dict[tuple[str, str], Dialled]) -> None:
    """sip:ivr@ still reaches the IVR menu; a number in neither the menu nor the table gets 404 without ringing."""
    assert calls["healthy", "ivr"].call.answered
    unknown = calls["healthy", "+18005550100"]
    assert unknown.statuses == [404] and not unknown.call.early_media


# --------------------------------------------------------------------------- broken


def test_broken_sales_greets_as_another_company(calls: dict[tuple[str, str], Dialled]) -> None:
    """Broken, sales answers as before but says Globex's greeting instead of Acme's."""
    table = NumberTable.load()
    dialled = calls["broken", SALES]
    wrong = table.numbers[SALES].broken.say
    assert "Acme" not in wrong
    assert dialled.statuses == [180, 200]
    assert starts_of(dialled.pcm, dialled.texts[wrong]) == [pytest.approx(dialled.answered_offset(), abs=0.3)]
    assert starts_of(dialled.pcm, dialled.texts[table.numbers[SALES].say]) == []


def test_broken_support_is_busy(calls: dict[tuple[str, str], Dialled]) -> None:
    """Broken, support answers 486 Busy Here at once: no ringing, no media."""
    dialled = calls["broken", SUPPORT]
    assert (dialled.call.status, dialled.call.reason) == (486, "Busy Here")
    assert dialled.statuses == [486] and dialled.at(486) < 0.5
    assert not dialled.call.answered and dialled.call.media.recording.started_at is None


def test_broken_billing_rings_until_the_caller_cancels(calls: dict[tuple[str, str], Dialled]) -> None:
    """Broken, billing sends 180 and rings on; our CANCEL at the no-answer timeout ends it with 487."""
    dialled = calls["broken", BILLING]
    assert dialled.statuses == [180, 487], dialled.call.trace_text()
    assert dialled.call.cancelled and not dialled.call.answered
    assert dialled.at(487) >= NO_ANSWER_TIMEOUT_S


def test_broken_cards_answers_with_dead_air(calls: dict[tuple[str, str], Dialled]) -> None:
    """Broken, cards rings and answers, then sends RTP all along, every frame of it silent."""
    dialled = calls["broken", CARDS]
    assert dialled.statuses == [180, 200]
    expected_packets = DEAD_AIR_LISTEN_S / FRAME_S
    assert dialled.call.media.stats.received >= 0.8 * expected_packets, f"{dialled.call.media.stats.received} RTP packets in {DEAD_AIR_LISTEN_S} s"
    assert seconds(dialled.pcm) >= DEAD_AIR_LISTEN_S - 0.5
    assert len(loud_frames(dialled.pcm)) == 0


# --------------------------------------------------------------------------- the other behaviours and the limits


@pytest.fixture
def small_table(tmp_path: Path) -> NumberTable:
    path = tmp_path / "numbers.yaml"
    path.write_text(SMALL_TABLE)
    return NumberTable.load(path)


async def test_unavailable_and_the_max_call_limit(small_table: NumberTable, cache: Path) -> None:
    """unavailable is 480 at once; after max_call_s a greeting or dead-air number hangs up and an unanswered one gives 480."""
    async with SandboxIvr(numbers=small_table, cache_dir=cache, timers=FAST) as ivr, UserAgent(timers=FAST) as caller:
        closed, greets, rings, quiet = await asyncio.gather(
            *(caller.dial(ivr.uri(n), no_answer_timeout=5.0) for n in ("+15550001", "+15550002", "+15550003", "+15550004"))
        )
        ended = await asyncio.gather(greets.wait_ended(3.0), quiet.wait_ended(3.0))
    assert (closed.status, closed.reason, closed.answered) == (480, "Temporarily Unavailable", False)
    assert ended == ["remote bye", "remote bye"]
    assert [call.duration for call in (greets, quiet)] == [pytest.approx(1.0, abs=0.3)] * 2
    assert (rings.status, rings.cancelled) == (480, False)
    assert rings.progress[-1].at == pytest.approx(1.0, abs=0.3)


def test_a_number_that_is_also_a_menu_entry_is_refused(tmp_path: Path) -> None:
    """A dialled user both in ivr.yaml's entries and the numbers table is an IvrError naming it."""
    path = tmp_path / "numbers.yaml"
    path.write_text('numbers:\n  "+441632960000": {name: Clash, behaviour: busy}\n')
    with pytest.raises(IvrError, match=r"both an IVR entry and a phone number: \+441632960000"):
        SandboxIvr(numbers=NumberTable.load(path))


def test_a_bad_numbers_file_stops_the_ivr_as_a_bad_menu_does(tmp_path: Path) -> None:
    """load_numbers turns a bad numbers file into an IvrError, which `cxtest demo` and `cxtest sandbox` report without a traceback."""
    path = tmp_path / "numbers.yaml"
    path.write_text('numbers:\n  "+15550001": {name: Closed, behaviour: closed}\n')
    with pytest.raises(IvrError, match=r"numbers\.\+15550001\.behaviour"):
        load_numbers(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("behaviour: greeting, say: \"Hello.\"", "behaviour: greeting"), r"numbers\.\+15550002: behaviour greeting needs say"),
        (("behaviour: unavailable", "behaviour: unavailable, say: \"Closed.\""), r"behaviour unavailable says nothing"),
        (("behaviour: dead_air", "behaviour: silent"), r"numbers\.\+15550004\.behaviour: Input should be 'greeting'"),
        (('"+15550001"', "15550001"), r"number 15550001 is not text: quote it"),
        (('"+15550001"', '"+1-555"'), r"'\+1-555' is not a phone number"),
        (("ring_s: 0.1", "ring_s: 0.1\nringing: 3"), r"ringing: Extra inputs are not permitted"),
        (("{name: Rings, behaviour: no_answer}", "{name: Rings, behaviour: no_answer, broken: {behaviour: busy, say: x}}"), r"broken: behaviour busy says nothing"),
        (("numbers:", "numbers: ["), r"cannot read the numbers"),
    ],
)
def test_bad_numbers_files_say_what_is_wrong_and_where(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    """A mistake in a numbers file is a NumbersError naming the file and the place of the mistake."""
    path = tmp_path / "numbers.yaml"
    path.write_text(SMALL_TABLE.replace(*change))
    with pytest.raises(NumbersError, match=message) as caught:
        NumberTable.load(path)
    assert str(path) in str(caught.value)


def test_shipped_numbers_are_four_acme_lines_and_a_retired_one_four_of_them_broken() -> None:
    """Healthy: four distinct Acme greetings and a not-in-service announcement; broken: wrong greeting, busy, no answer, dead air."""
    table = NumberTable.load()
    assert sorted(table.numbers) == sorted([*ACME, RETIRED])
    healthy = {n: table.numbers[n].acts(broken=False) for n in table.numbers}
    assert [healthy[n].behaviour for n in ACME] == ["greeting"] * 4
    assert all("Acme Bank" in healthy[n].say for n in ACME) and len({healthy[n].say for n in ACME}) == 4
    assert (healthy[RETIRED].behaviour, healthy[RETIRED].say) == ("announcement", "The number you have dialled is not in service.")
    broken = {n: table.numbers[n].acts(broken=True).behaviour for n in table.numbers}
    assert broken == {SALES: "greeting", SUPPORT: "busy", BILLING: "no_answer", CARDS: "dead_air", RETIRED: "announcement"}
    assert 0.5 <= table.ring_s <= 1.0 and table.max_call_s == 120


def counting_flite(folder: Path) -> Path:
    """A flite on PATH that logs each run before running the real one."""
    real = subprocess.run(["sh", "-c", "command -v flite"], capture_output=True, text=True).stdout.strip()
    runs = folder / "runs"
    script = folder / "flite"
    script.write_text(f'#!/bin/sh\necho "$@" >> {runs}\nexec {real} "$@"\n')
    script.chmod(0o755)
    return runs


def spoken(runs: Path) -> int:
    return len([line for line in runs.read_text().splitlines() if "-t" in line.split()]) if runs.exists() else 0


async def test_start_up_speaks_every_number_text_once_then_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting the IVR synthesises each menu prompt and each number text, healthy and broken; a second start runs no flite."""
    runs = counting_flite(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    table = NumberTable.load()
    async with SandboxIvr(cache_dir=tmp_path / "cache", timers=FAST) as ivr:
        assert set(ivr.number_texts) == table.texts() and all(ivr.number_texts.values())
    assert spoken(runs) == len(set(IvrMenu.load().prompts().values()) | table.texts())
    async with SandboxIvr(cache_dir=tmp_path / "cache", timers=FAST):
        pass
    assert spoken(runs) == len(set(IvrMenu.load().prompts().values()) | table.texts())


# --------------------------------------------------------------------------- broken, as the demo and the sandbox pass it


@pytest.fixture
def shared_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # the child process and the Sandbox use the default cache
    yield


async def support_call(uri: str) -> Call:
    async with UserAgent(timers=FAST) as caller:
        call = await caller.dial(uri, no_answer_timeout=NO_ANSWER_TIMEOUT_S)
        await call.hangup()
        return call


@pytest.mark.parametrize(("broken", "status"), [(False, 200), (True, 486)])
async def test_ivr_process_runs_the_numbers_broken_when_asked(shared_cache: None, broken: bool, status: int) -> None:
    """IvrProcess(broken=True), as `cxtest demo --break` starts it, makes support busy; healthy it answers."""
    with IvrProcess(broken=broken) as ivr:
        call = await support_call(ivr.uri(SUPPORT))
    assert call.status == status, call.trace_text()


async def test_broken_sandbox_breaks_its_numbers(shared_cache: None) -> None:
    """Sandbox(broken=True, ivr=True), as `cxtest sandbox --break` runs, makes support busy."""
    with Sandbox(broken=True, ivr=True) as sandbox:
        call = await support_call(sandbox.ivr.uri(SUPPORT))
    assert call.status == 486, call.trace_text()
