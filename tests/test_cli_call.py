"""`cxtest call`: one diagnostic call from the command line, against the sandbox IVR in a thread."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import pytest

from cxtest.sandbox.ivr import IvrThread

CLI = Path(sys.executable).parent / "cxtest"


@pytest.fixture(scope="module")
def ivr(tmp_path_factory):
    with IvrThread(cache_dir=tmp_path_factory.mktemp("prompts")) as thread:
        yield thread


def cxtest_call(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "call", *args], capture_output=True, text=True, timeout=60)


def test_answered_call_is_reported_with_recording_and_trace(ivr, tmp_path):
    """Calling the hours line: exit 0, status, PDD, codec, RTP figures, the IVR's hangup; WAV and SIP trace written."""
    wav, trace = tmp_path / "call.wav", tmp_path / "sip.txt"
    done = cxtest_call(ivr.uri("hours"), "--hold", "15", "--record", str(wav), "--trace", str(trace))
    assert done.returncode == 0, done.stdout + done.stderr
    for shown in ("200 OK", "post-dial delay", "PCMU, telephone-event 101", "lost 0 (0.0%)", "remote bye"):
        assert shown in done.stdout, done.stdout
    with wave.open(str(wav)) as heard:
        assert heard.getframerate() == 8000 and heard.getnframes() > 8000 * 3
    assert "INVITE sip:hours@" in trace.read_text() and "BYE sip:" in trace.read_text()


def test_dtmf_from_the_command_line_navigates_the_menu(ivr):
    """--dtmf 3 after the welcome starts reaches opening hours, and the IVR hangs up."""
    done = cxtest_call(ivr.uri("ivr"), "--dtmf", "3", "--after", "1", "--hold", "15")
    assert done.returncode == 0 and "remote bye" in done.stdout, done.stdout + done.stderr
    assert "3" in [step.digit for step in ivr.calls[-1].steps]


def test_failed_call_exits_1_unless_expected(ivr):
    """A 404 exits 1 and shows the status; with --expect 404 the same call exits 0."""
    done = cxtest_call(ivr.uri("nobody"))
    assert done.returncode == 1 and "404 Not Found" in done.stdout, done.stdout + done.stderr
    assert cxtest_call(ivr.uri("nobody"), "--expect", "404").returncode == 0


def test_malformed_digits_are_a_usage_error(ivr):
    """Digits outside 0-9*#A-D are refused with exit 2 and the bad character named."""
    done = cxtest_call(ivr.uri("ivr"), "--dtmf", "1x", "--after", "0", "--hold", "0")
    assert done.returncode == 2 and "'x'" in done.stderr, done.stdout + done.stderr
