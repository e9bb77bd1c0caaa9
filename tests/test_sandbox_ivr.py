"""The sandbox SIP IVR, called by a real SIP user agent on 127.0.0.1.

The Acme Bank menu runs in an IvrThread; one module fixture places every call
against it at once (each a few seconds of real time), and the tests check what
each caller heard and what the IVR logged. A prompt is found in a recording by
correlating it with the synthesised prompt; silence and sound by RMS energy per
20 ms frame. A small menu with short timeouts runs in the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from cxtest.sandbox.ivr import HOLD_MUSIC, IvrCall, IvrError, IvrMenu, IvrThread, SandboxIvr, synthesise_prompts
from cxtest.sandbox.server import Sandbox
from probes.voice import audio
from probes.voice.sip import Call, Timers, UserAgent

FAST = Timers(t1=0.05, t2=0.4, t4=0.5)
FRAME_S = 0.02
LOUD = 100.0  # RMS per frame above which the caller hears something; the IVR's silence decodes to 0
CLI = Path(sys.executable).with_name("cxtest")

SMALL_MENU = """
no_input_s: 0.3
retries: 2
goodbye: "Bye."
entries: {menu: root, short: thanks}
nodes:
  root:
    say: "Main menu."
    options: {1: thanks}
  thanks:
    say: "Thank you."
    then: hangup
"""


# --------------------------------------------------------------------------- what a caller heard


def frame_rms(pcm: bytes) -> np.ndarray:
    samples = np.frombuffer(pcm, dtype="<i2").astype(float)
    frames = len(samples) // audio.FRAME_SAMPLES
    return np.sqrt((samples[: frames * audio.FRAME_SAMPLES].reshape(frames, -1) ** 2).mean(axis=1))


def loud_frames(pcm: bytes) -> np.ndarray:
    return np.nonzero(frame_rms(pcm) > LOUD)[0]


def prompt_starts(heard: bytes, prompt: bytes, after_s: float = 0.0) -> list[float]:
    """Where the prompt starts in what was heard, in seconds: the frames whose next 0.6 s match its first 0.6 s."""
    window = round(0.6 * audio.SAMPLE_RATE)
    wanted = np.frombuffer(prompt, dtype="<i2")[:window].astype(float)
    samples = np.frombuffer(heard, dtype="<i2").astype(float)
    starts: list[float] = []
    first = round(after_s / FRAME_S) * audio.FRAME_SAMPLES
    for at in range(max(0, first), len(samples) - window + 1, audio.FRAME_SAMPLES):  # played prompts start on a frame
        segment = samples[at : at + window]
        norm = np.linalg.norm(segment) * np.linalg.norm(wanted)
        if norm and segment @ wanted / norm > 0.9 and (not starts or at / audio.SAMPLE_RATE - starts[-1] > 0.6):
            starts.append(at / audio.SAMPLE_RATE)
    return starts


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / audio.SAMPLE_RATE


@dataclass
class Heard:
    """One call placed against the IVR: the caller's Call, when it pressed keys, and the IVR's log of it."""

    call: Call
    pressed_at: list[float] = field(default_factory=list)  # time.monotonic() before each key
    record: IvrCall | None = None

    @property
    def pcm(self) -> bytes:
        return self.call.media.recording.pcm()

    def offset(self, monotonic_time: float) -> float:
        return self.call.media.recording.offset(monotonic_time)


async def press(heard: Heard, digits: str, method: str = "rfc4733") -> None:
    heard.pressed_at.append(time.monotonic())
    await heard.call.send_dtmf(digits, method=method)


async def until_ended(heard: Heard, timeout: float = 15.0) -> None:
    """Wait for the IVR to hang up; if it does not, the test finds the call still up (not a fixture error)."""
    with contextlib.suppress(TimeoutError):
        await heard.call.wait_ended(timeout)


# --------------------------------------------------------------------------- the calls


@pytest.fixture(scope="module")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompts")


@pytest.fixture(scope="module")
def acme(prompt_cache: Path) -> Iterator[IvrThread]:
    with IvrThread(cache_dir=prompt_cache, timers=FAST) as ivr:
        yield ivr


async def _place_calls(ivr: IvrThread, caller: UserAgent) -> dict[str, Heard]:
    prompts = ivr.ivr.prompts

    async def dial(user: str = "ivr") -> Heard:
        return Heard(await caller.dial(ivr.uri(user)))

    async def welcome() -> Heard:
        heard = await dial()
        await asyncio.sleep(seconds(prompts["root"]) + 1.0)
        return heard

    async def hours(method: str = "rfc4733") -> Heard:
        heard = await dial()
        await asyncio.sleep(0.6)
        await press(heard, "3", method)
        await until_ended(heard)
        return heard

    async def dead_end() -> Heard:
        heard = await dial()
        await asyncio.sleep(0.6)
        await press(heard, "1")
        await asyncio.sleep(0.6)
        await press(heard, "2")
        await asyncio.sleep(seconds(prompts["pay"]) + 3.5)
        return heard

    async def slow() -> Heard:
        heard = await dial()
        await asyncio.sleep(0.6)
        await press(heard, "2")
        await asyncio.sleep(6.0)
        return heard

    async def invalid() -> Heard:
        heard = await dial()
        await asyncio.sleep(0.6)
        await press(heard, "7")
        await asyncio.sleep(seconds(prompts["invalid"]) + 1.5)
        return heard

    async def hold() -> Heard:
        heard = await dial()
        await asyncio.sleep(0.6)
        await press(heard, "0")
        await asyncio.sleep(seconds(prompts["agent"]) + 3.0)
        return heard

    async def back() -> Heard:
        heard = await dial()
        await asyncio.sleep(0.6)
        await press(heard, "1")
        await asyncio.sleep(0.6)
        await press(heard, "*")
        await asyncio.sleep(1.0)
        return heard

    async def entry() -> Heard:
        heard = await dial("hours")
        await until_ended(heard)
        return heard

    scenarios = {
        "welcome": welcome(),
        "hours": hours(),
        "hours_info": hours("info"),
        "hours_inband": hours("inband"),
        "dead_end": dead_end(),
        "slow": slow(),
        "invalid": invalid(),
        "hold": hold(),
        "back": back(),
        "entry": entry(),
        "unknown": dial("nobody"),
    }
    results = dict(zip(scenarios, await asyncio.gather(*scenarios.values())))
    for heard in results.values():
        await heard.call.hangup()
    records = {record.call.call_id: record for record in ivr.calls}
    for heard in results.values():
        heard.record = records.get(heard.call.call_id)
    return results


@pytest.fixture(scope="module")
def calls(acme: IvrThread) -> dict[str, Heard]:
    """Every call of the module, placed at once so the module takes as long as the longest (~12 s)."""

    async def place() -> dict[str, Heard]:
        async with UserAgent(timers=FAST, user="caller") as caller:
            return await _place_calls(acme, caller)

    return asyncio.run(place())


def test_welcome_prompt_plays_at_once_for_its_whole_length(calls: dict[str, Heard], acme: IvrThread) -> None:
    """The IVR answers sip:ivr@ and plays the welcome prompt from the answer, sound within 1 s, as long as the prompt ±0.5 s."""
    heard = calls["welcome"]
    assert heard.call.status == 200
    prompt = acme.ivr.prompts["root"]
    loud = loud_frames(heard.pcm)
    assert heard.offset(heard.call.answered_at) + 1.0 > loud[0] * FRAME_S
    assert prompt_starts(heard.pcm, prompt) == [pytest.approx(0.0, abs=0.5)]
    assert (loud[-1] - loud[0] + 1) * FRAME_S == pytest.approx(seconds(prompt), abs=0.5)
    assert heard.record.nodes == ["root"]


@pytest.mark.parametrize("scenario", ["hours", "hours_info", "hours_inband"])
def test_pressing_3_plays_opening_hours_then_hangs_up(calls: dict[str, Heard], acme: IvrThread, scenario: str) -> None:
    """3 at the welcome menu (RFC 4733, SIP INFO or in-band) interrupts it, plays the opening hours, and the IVR says BYE."""
    heard = calls[scenario]
    assert heard.call.end_reason == "remote bye"
    assert heard.record.nodes == ["root", "hours"]
    assert heard.record.digits == "3"
    pressed = heard.offset(heard.pressed_at[0])
    [start] = prompt_starts(heard.pcm, acme.ivr.prompts["hours"], after_s=pressed)
    assert start - pressed < 0.6


def test_pay_a_bill_is_a_dead_end(calls: dict[str, Heard], acme: IvrThread) -> None:
    """1 then 2 reaches "pay a bill": its prompt, then silence for 3 s and more, and no hangup."""
    heard = calls["dead_end"]
    assert heard.record.nodes == ["root", "billing", "pay"]
    assert heard.call.end_reason == "local bye"  # the caller gave up; the IVR never hung up
    prompt = acme.ivr.prompts["pay"]
    [start] = prompt_starts(heard.pcm, prompt, after_s=heard.offset(heard.pressed_at[1]))
    after_prompt = heard.pcm[2 * round((start + seconds(prompt)) * audio.SAMPLE_RATE) :]
    assert seconds(after_prompt) >= 3.0
    assert len(loud_frames(after_prompt)) == 0


def test_support_is_slow(calls: dict[str, Heard], acme: IvrThread) -> None:
    """2 (technical support) gives 3.5 s and more of silence before the support prompt starts."""
    heard = calls["slow"]
    pressed = heard.offset(heard.pressed_at[0])
    loud = loud_frames(heard.pcm) * FRAME_S
    first_sound = loud[loud > pressed + 0.5][0]
    assert first_sound - pressed >= 3.5
    assert prompt_starts(heard.pcm, acme.ivr.prompts["support"], after_s=pressed) == [pytest.approx(first_sound, abs=0.3)]
    assert heard.record.nodes == ["root", "support"]


def test_invalid_digit_plays_the_error_then_the_menu_again(calls: dict[str, Heard], acme: IvrThread) -> None:
    """A digit the menu does not offer plays "not a valid option", then the menu again."""
    heard = calls["invalid"]
    pressed = heard.offset(heard.pressed_at[0])
    [error] = prompt_starts(heard.pcm, acme.ivr.prompts["invalid"], after_s=pressed)
    assert error - pressed < 0.5
    assert prompt_starts(heard.pcm, acme.ivr.prompts["root"], after_s=error) == [
        pytest.approx(error + seconds(acme.ivr.prompts["invalid"]), abs=0.1)
    ]
    assert heard.record.nodes == ["root"]
    assert heard.record.digits == "7"


def test_agent_puts_the_caller_on_hold_with_music(calls: dict[str, Heard], acme: IvrThread) -> None:
    """0 says "please hold", then plays the hold chime until the caller hangs up."""
    heard = calls["hold"]
    prompt = acme.ivr.prompts["agent"]
    [start] = prompt_starts(heard.pcm, prompt, after_s=heard.offset(heard.pressed_at[0]))
    assert prompt_starts(heard.pcm, HOLD_MUSIC, after_s=start)[0] == pytest.approx(start + seconds(prompt), abs=0.1)
    assert heard.call.end_reason == "local bye"
    assert heard.record.nodes == ["root", "agent"]


def test_star_goes_back_to_the_main_menu(calls: dict[str, Heard]) -> None:
    """* in the billing menu goes back to the welcome menu."""
    assert calls["back"].record.nodes == ["root", "billing", "root"]


def test_entries_map_the_dialled_user_to_a_start_node(calls: dict[str, Heard], acme: IvrThread) -> None:
    """sip:hours@ starts at the opening hours (and hangs up after them); an unknown user gets 404."""
    heard = calls["entry"]
    assert (heard.record.entry, heard.record.nodes) == ("hours", ["hours"])
    assert prompt_starts(heard.pcm, acme.ivr.prompts["hours"]) == [pytest.approx(0.0, abs=0.5)]
    assert heard.call.end_reason == "remote bye"
    assert (calls["unknown"].call.status, calls["unknown"].record) == (404, None)


# --------------------------------------------------------------------------- in the test's own loop


@pytest.fixture
def small_menu(tmp_path: Path) -> IvrMenu:
    path = tmp_path / "menu.yaml"
    path.write_text(SMALL_MENU)
    return IvrMenu.load(path)


async def test_no_input_repeats_the_menu_then_says_goodbye(small_menu: IvrMenu, prompt_cache: Path) -> None:
    """With no digit, the menu is said 1 + retries times, no_input_s apart, then goodbye and a hangup."""
    async with SandboxIvr(small_menu, cache_dir=prompt_cache, timers=FAST) as ivr, UserAgent(timers=FAST) as caller:
        call = await caller.dial(ivr.uri("menu"))
        assert await call.wait_ended(10) == "remote bye"
        heard = call.media.recording.pcm()
        menu_at = prompt_starts(heard, ivr.prompts["root"])
        assert len(menu_at) == 3
        assert np.diff(menu_at) == pytest.approx([seconds(ivr.prompts["root"]) + 0.3] * 2, abs=0.1)
        assert prompt_starts(heard, ivr.prompts["goodbye"], after_s=menu_at[-1]) != []
        assert (ivr.calls[0].nodes, ivr.calls[0].digits) == (["root"], "")


async def test_menu_options_follow_digits_in_the_tests_loop(small_menu: IvrMenu, prompt_cache: Path) -> None:
    """A SandboxIvr in the caller's own loop takes a digit, follows the option and hangs up after the leaf."""
    async with SandboxIvr(small_menu, cache_dir=prompt_cache, timers=FAST) as ivr, UserAgent(timers=FAST) as caller:
        call = await caller.dial(ivr.uri("menu"))
        await call.send_dtmf("1")
        assert await call.wait_ended(10) == "remote bye"
        assert ivr.calls[0].nodes == ["root", "thanks"]


# --------------------------------------------------------------------------- prompts and menu files


def counting_flite(folder: Path) -> Path:
    """A flite on PATH that logs each run before running the real one."""
    real = subprocess.run(["sh", "-c", "command -v flite"], capture_output=True, text=True).stdout.strip()
    runs = folder / "runs"
    script = folder / "flite"
    script.write_text(f'#!/bin/sh\necho "$@" >> {runs}\nexec {real} "$@"\n')
    script.chmod(0o755)
    return runs


def test_prompts_are_spoken_once_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_menu: IvrMenu) -> None:
    """flite runs once per distinct prompt text; a second synthesis runs no flite and returns the same files."""
    runs = counting_flite(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    first = synthesise_prompts(small_menu, tmp_path / "cache")
    spoken = [line for line in runs.read_text().splitlines() if "-t" in line.split()]
    assert len(spoken) == len(set(small_menu.prompts().values()))
    second = synthesise_prompts(small_menu, tmp_path / "cache")
    assert second == first
    assert len([line for line in runs.read_text().splitlines() if "-t" in line.split()]) == len(spoken)


def test_missing_flite_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_menu: IvrMenu) -> None:
    """Without flite on PATH, synthesis fails naming the Debian package to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(IvrError, match=r"flite is not installed.*apt-get install flite"):
        synthesise_prompts(small_menu, tmp_path / "cache")


def test_unknown_voice_is_a_clear_error(tmp_path: Path, small_menu: IvrMenu) -> None:
    """A voice flite does not have is refused with the voices it has (flite itself would fall back silently)."""
    with pytest.raises(IvrError, match=r"no voice 'nope'.*rms"):
        synthesise_prompts(small_menu.model_copy(update={"voice": "nope"}), tmp_path)


def test_shipped_menu_is_valid() -> None:
    """ivr.yaml loads: sip:ivr@ starts at the welcome menu, with the slow and dead-end branches."""
    menu = IvrMenu.load()
    assert menu.entries["ivr"] == "root"
    assert menu.nodes["root"].options == {"1": "billing", "2": "support", "3": "hours", "0": "agent"}
    assert menu.nodes["support"].pause_s >= 3.5
    assert menu.nodes["pay"].then == "silence"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("options: {1: thanks}", "options: {1: nowhere}"), r"nodes\.root\.options\.1: no node 'nowhere'"),
        (("options: {1: thanks}", "options: {x: thanks}"), r"option 'x' is not a DTMF key"),
        (("then: hangup", "then: explode"), r"nodes\.thanks\.then: 'explode' is neither"),
        (("then: hangup", ""), r"nodes\.thanks: a node without options needs then"),
        (("say: \"Thank you.\"", "say: \"Thank you.\"\n    options: {2: root}"), r"options \(a menu\) or then"),
        (("menu: root", "441632: root"), r"entry 441632 is not text: quote it"),
        (("short: thanks", "short: nothing"), r"entries\.short: no node 'nothing'"),
        (("retries: 2", "retries: 2\ntimeout: 3"), r"timeout: Extra inputs are not permitted"),
        (("nodes:", "nodes: ["), r"cannot read the IVR menu"),
    ],
)
def test_bad_menu_files_say_what_is_wrong_and_where(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    """A mistake in the menu file is an IvrError naming the file and the place of the mistake."""
    path = tmp_path / "menu.yaml"
    path.write_text(SMALL_MENU.replace(*change))
    with pytest.raises(IvrError, match=message) as caught:
        IvrMenu.load(path)
    assert str(path) in str(caught.value)


# --------------------------------------------------------------------------- in the sandbox


async def test_sandbox_serves_the_ivr_beside_the_http_api(prompt_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sandbox(ivr=True) answers SIP at sandbox.ivr.uri() and HTTP as before; leaving it stops both."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(prompt_cache))
    with Sandbox(ivr=True) as sandbox:
        assert re.fullmatch(r"sip:ivr@127\.0\.0\.1:\d+", sandbox.ivr.uri())
        assert httpx.get(f"{sandbox.url}/api/status").status_code == 200
        async with UserAgent(timers=FAST) as caller:
            response, _ = await caller.options(sandbox.ivr.uri())
        assert response.code == 200
    assert not sandbox.ivr.running


def test_a_taken_sip_port_fails_the_sandbox_start(prompt_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sandbox(ivr=True) on a SIP port already in use raises IvrError naming it and leaves no HTTP server running."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(prompt_cache))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        sandbox = Sandbox(ivr=True, sip_port=port)
        with pytest.raises(IvrError, match=f"cannot listen on 127.0.0.1:{port}"):
            sandbox.start()
    assert not sandbox.running


def run_sandbox_command(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """`cxtest sandbox` on free ports, and the lines it printed up to the HTTP address (the last it prints)."""
    proc = subprocess.Popen(
        [str(CLI), "sandbox", "--port", "0", "--sip-port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("listening on http" in line for line in lines):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    return proc, lines


def stop_command(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=15)


async def test_sandbox_command_prints_and_serves_the_ivr(tmp_path: Path, prompt_cache: Path) -> None:
    """`cxtest sandbox --sip-port` prints the IVR's sip: URI and answers there."""
    env = {**os.environ, "XDG_CACHE_HOME": str(prompt_cache)}
    proc, lines = run_sandbox_command(tmp_path, env)
    try:
        found = [re.search(r"IVR answering on (sip:ivr@127\.0\.0\.1:\d+)", line) for line in lines]
        uri = next(match.group(1) for match in found if match)
        async with UserAgent(timers=FAST) as caller:
            call = await caller.dial(uri)
            assert call.status == 200
    finally:
        stop_command(proc)


def test_sandbox_command_without_flite_serves_http_only(tmp_path: Path) -> None:
    """Without flite (and no cached prompts) `cxtest sandbox` says why there is no IVR and serves HTTP anyway."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": str(tmp_path)}
    proc, lines = run_sandbox_command(tmp_path, env)
    try:
        text = "".join(lines)
        assert "no SIP IVR: flite is not installed" in text
        url = re.search(r"listening on (http://127\.0\.0\.1:\d+)", text).group(1)
        assert httpx.get(f"{url}/api/status").status_code == 200
    finally:
        stop_command(proc)
