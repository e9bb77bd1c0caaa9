"""Real SIP peers on 127.0.0.1 for the voice tests: SIPp, baresip and Kamailio.

Each peer is a child process on free loopback ports, started by a context
manager that returns once the peer is ready (a bounded wait on a readiness
check, never a fixed sleep) and stops it on exit (terminate, then kill after a
bounded wait). Everything a peer writes lands in its own folder under the
given work folder (the test's tmp_path), so a failing test can show it.

    with SippUas(tmp_path, "uas_answer.xml", rtp_echo=True) as uas:   # SIPp as the callee
        uas.uri                  # "sip:service@127.0.0.1:PORT"; uas.address is ("127.0.0.1", PORT)
        ...                      # the UA under test calls uas.uri
        uas.wait()               # SIPp's exit code once its calls (calls=1 by default) are done
        uas.messages()           # every SIP message sent and received (-trace_msg)

    with SippUac(tmp_path, uas.address, "uac_call.xml", duration_ms=2000) as uac:
        uac.wait()               # 0: every call succeeded, 1: at least one failed

    with Baresip(tmp_path, play=wav) as b:                  # auto-answering endpoint
        b.uri                    # "sip:bob@127.0.0.1:PORT"
        b.dtmf_received()        # "123#": RFC 4733 digits it received, in order
        b.recordings()           # with record=True: WAVs of the audio it received
        b.command("dial", "sip:service@127.0.0.1:5080")     # baresip as the caller

    with Kamailio(tmp_path, forward_to=b.address, user="alice", password="secret") as k:
        k.uri                    # "sip:127.0.0.1:PORT": INVITEs need digest auth (407), then go to b

    with KamailioTrunk(tmp_path, {"+15550100": b, "+15550101": uas}, user="alice", password="secret") as trunk:
        trunk.uri                # "sip:127.0.0.1:PORT": INVITEs need digest auth (407, 403 when wrong), then
                                 # go to the dialled number's endpoint; any other number gets the trunk's 404
        trunk.registered()       # the location table: {"alice": ["sip:..."]} once alice has REGISTERed
        trunk.call_log()         # each INVITE and CANCEL: number, Call-ID, arrival time, what the trunk did

Or through the `voice_peers` fixture (tests/conftest.py loads this module as a
plugin), which stops every peer at teardown; a missing binary skips the test
with the package to install:

    def test_x(voice_peers):
        uas = voice_peers.sipp_uas("uas_busy.xml")
        b = voice_peers.baresip()
        k = voice_peers.kamailio(forward_to=b.address)
        trunk = voice_peers.trunk({"+15550100": b})

SIPp facts this relies on (3.6.1): scenario keywords [name] come from
`-key name value`; rtp_stream and play_pcap files are read when the scenario
loads, so scenarios name a fixed play.wav in SIPp's working folder, which the
helpers always write; every call's RTP stream and echo share the one socket
at -mp; exit codes are 0 (all calls succeeded), 1 (one failed), 97/99 (stopped
/ no call), 255/254 (fatal / could not bind).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
import warnings
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # audioop leaves the stdlib in 3.13 (the audioop-lts package brings it back);
    # it is the simplest G.711 encoder and resampler at hand.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

HOST = "127.0.0.1"
PEERS_DIR = Path(__file__).parent / "peers"
SIPP_SCENARIOS = PEERS_DIR / "sipp"
KAMAILIO_CFG = PEERS_DIR / "kamailio" / "kamailio.cfg"
TRUNK_CFG = PEERS_DIR / "kamailio" / "trunk.cfg"
BIND_LOOPBACK_C = PEERS_DIR / "baresip" / "bind_loopback.c"

SIPP = "/usr/bin/sipp"
BARESIP = "/usr/bin/baresip"
KAMAILIO = "/usr/sbin/kamailio"
KAMCMD = "/usr/sbin/kamcmd"
BARESIP_MODULES = Path("/usr/lib/baresip/modules")
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0

# SIPp exit codes (sipp -h).
SIPP_ALL_CALLS_OK = 0
SIPP_SOME_CALL_FAILED = 1
SIPP_STOPPED_BY_COMMAND = 97
SIPP_NO_CALL_PROCESSED = 99


class PeerError(RuntimeError):
    """A peer did not start, or did not behave as a test needs."""


# =========================================================================== ports


def free_port(count: int = 1) -> int:
    """First of `count` consecutive ports free for both UDP and TCP on 127.0.0.1.

    The kernel picks the first (bind to port 0); the rest are checked. A peer may
    still lose a port to another process before it binds: the start-up readiness
    check then fails with the peer's log, rather than a test hanging.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        if all(_port_is_free(port) for port in range(first, first + count)):
            return first
    raise PeerError(f"no {count} consecutive free ports on {HOST}")


def _port_is_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
    return True


def _listening_inodes(proto: str, port: int) -> set[str]:
    """Socket inodes bound to 127.0.0.1:port ('udp', or 'tcp' in LISTEN state)."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    try:
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
    except OSError:
        return inodes
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[1] != wanted:
            continue
        if proto == "tcp" and fields[3] != "0A":  # 0A: LISTEN
            continue
        inodes.add(fields[9])
    return inodes


def _process_holds(pid: int, inodes: set[str]) -> bool:
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    return any(link.startswith("socket:[") and link[8:-1] in inodes for link in links)


# =========================================================================== audio


def tone_wav(path: Path, *, seconds: float = 1.0, freq_hz: float = 440.0, rate: int = 8000,
             silence_s: float = 0.0) -> Path:
    """A 16-bit mono PCM WAV: a sine tone, then `silence_s` of silence."""
    samples = [int(8000 * math.sin(2 * math.pi * freq_hz * i / rate)) for i in range(int(seconds * rate))]
    pcm = struct.pack(f"<{len(samples)}h", *samples) + b"\0\0" * int(silence_s * rate)
    _write_pcm_wav(path, pcm, rate)
    return path


def speech_wav(path: Path, text: str) -> Path:
    """`text` spoken by flite (voice rms) into a 16-bit mono PCM WAV; skips the test without flite."""
    flite = shutil.which("flite")
    if flite is None:
        pytest.skip("flite is not installed: install it (scripts/setup.sh) to voice test prompts")
    subprocess.run([flite, "-voice", "rms", "-t", text, "-o", str(path)], check=True, capture_output=True,
                   timeout=30)
    return path


def read_pcm(path: Path, rate: int = 8000) -> bytes:
    """The audio of a PCM WAV as 16-bit mono samples at `rate`."""
    with wave.open(str(path), "rb") as wav:
        channels, width, src_rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        data = wav.readframes(wav.getnframes())
    if width != 2:
        data = audioop.lin2lin(data, width, 2)
    if channels == 2:
        data = audioop.tomono(data, 2, 0.5, 0.5)
    elif channels != 1:
        raise PeerError(f"{path}: {channels} channels, expected 1 or 2")
    if src_rate != rate:
        data, _ = audioop.ratecv(data, 2, 1, src_rate, rate, None)
    return data


def ulaw_wav(src: Path, dst: Path) -> Path:
    """`src` (any PCM WAV) as the 8 kHz mono G.711 mu-law WAV SIPp's rtp_stream plays as PCMU.

    SIPp sends the file's bytes after the RIFF header as they are, 160 per
    20 ms packet, so the data must already be mu-law: WAV format tag 7.
    """
    ulaw = audioop.lin2ulaw(read_pcm(src), 2)
    fmt = struct.pack("<HHIIHHH", 7, 1, 8000, 8000, 1, 8, 0)  # mu-law, mono, 8 kHz, 8 bits, cbSize 0
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(ulaw)) + ulaw
    dst.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return dst


def rms(path: Path) -> float:
    """Loudness of a PCM WAV (root mean square of its 16-bit samples; 0 is silence)."""
    pcm = read_pcm(path)
    return float(audioop.rms(pcm, 2)) if pcm else 0.0


def _write_pcm_wav(path: Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


# =========================================================================== process base


def require_binary(path: str, package: str) -> None:
    """Skip the test, saying how to fix it, when a peer's binary is missing."""
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} is not installed: install the Debian package `{package}` (scripts/setup.sh)")


class _Peer:
    """A child process with its own folder and log, stopped by pid (then its own session)."""

    name = "peer"

    def __init__(self, workdir: Path) -> None:
        workdir = Path(workdir)
        self.dir = workdir / f"{self.name}-{uuid.uuid4().hex[:6]}"
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- life cycle

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        (self.dir / "command.txt").write_text(" ".join(argv) + "\n")
        with open(self.log_path, "wb") as log:
            # Its own session: a stuck peer's forked children can be killed with it.
            self.process = subprocess.Popen(argv, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> int | None:
        """Stop the peer: SIGTERM, then SIGKILL (to its whole session) after a bounded wait."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
        return process.returncode

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().replace("\r", "\n").splitlines()[-lines:]) or "(empty log)"

    def _wait_until(self, what: str, check, timeout: float = READY_TIMEOUT_S) -> Any:  # noqa: ANN001
        """Poll `check()` until it returns something truthy; fail with the log if the peer dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if not self.running():
                code = self.process.returncode if self.process else None
                raise PeerError(f"{self.name} exited ({code}) before {what}; log {self.log_path}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise PeerError(f"{self.name}: no {what} within {timeout:.0f}s; log {self.log_path}:\n{self._log_tail()}")
            time.sleep(0.05)

    def _wait_bound(self, port: int, proto: str) -> None:
        self._wait_until(f"{proto} socket on {HOST}:{port}",
                         lambda: _process_holds(self.pid, _listening_inodes(proto, port)))


# =========================================================================== SIPp


class _Sipp(_Peer):
    """What SIPp's UAS and UAC roles share: ports, traces, play.wav, exit code."""

    name = "sipp"

    def __init__(self, workdir: Path, scenario: str | Path, *, calls: int | None, service: str,
                 duration_ms: int, play: Path | None, transport: str, timeout_s: float,
                 keys: dict[str, str] | None, extra_args: list[str] | tuple[str, ...]) -> None:
        super().__init__(workdir)
        self.scenario = Path(scenario) if Path(scenario).is_absolute() else SIPP_SCENARIOS / scenario
        if not self.scenario.exists():
            raise PeerError(f"no SIPp scenario {self.scenario}")
        if transport not in ("udp", "tcp"):
            raise PeerError(f"transport must be udp or tcp, not {transport!r}")
        self.calls = calls
        self.service = service
        self.duration_ms = duration_ms
        self.transport = transport
        self.timeout_s = timeout_s
        self.keys = dict(keys or {})
        self.extra_args = list(extra_args)
        self.port = free_port()
        # -mp and -mp+2 are SIPp's media sockets (audio and "video" echo).
        self.media_port = free_port(3)
        self.control_port = free_port()
        self.messages_path = self.dir / "messages.log"
        self.errors_path = self.dir / "errors.log"
        self.stats_path = self.dir / "stats.csv"
        self.screen_path = self.dir / "screen.log"
        # rtp_stream files are read when the scenario loads: always give it one.
        ulaw_wav(play or tone_wav(self.dir / "tone.wav", seconds=1.0, silence_s=0.5), self.dir / "play.wav")

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def _argv(self, remote: str | None, role_args: list[str]) -> list[str]:
        argv = [SIPP]
        if remote:
            argv.append(remote)
        argv += [
            "-sf", str(self.scenario),
            "-t", "u1" if self.transport == "udp" else "t1",
            "-i", HOST, "-p", str(self.port), "-bind_local",
            "-mi", HOST, "-mp", str(self.media_port),
            "-ci", HOST, "-cp", str(self.control_port),
            "-s", self.service,
            "-d", str(self.duration_ms),
            "-nostdin",
            "-trace_msg", "-message_file", str(self.messages_path),
            "-trace_err", "-error_file", str(self.errors_path),
            "-trace_stat", "-stf", str(self.stats_path), "-fd", "1",
            "-trace_screen", "-screen_file", str(self.screen_path),
            # A scenario stuck on a message that never comes ends the run as a failure.
            "-timeout", f"{int(self.timeout_s)}s", "-timeout_error",
        ]
        if self.calls is not None:
            argv += ["-m", str(self.calls)]
        for key, value in self.keys.items():
            argv += ["-key", key, str(value)]
        return argv + role_args + self.extra_args

    def wait(self, timeout: float | None = None) -> int:
        """SIPp's exit code once it ends by itself (after `calls` calls, or its -timeout)."""
        assert self.process is not None, "not started"
        limit = timeout if timeout is not None else self.timeout_s + STOP_TIMEOUT_S
        try:
            return self.process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise PeerError(f"SIPp still running after {limit:.0f}s; log {self.log_path}:\n{self._log_tail()}") from None

    def stop(self) -> int | None:
        # SIGUSR1 is SIPp's soft exit ('q'): no new calls, final statistics written.
        if self.running():
            self._signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1.0)  # type: ignore[union-attr]
        return super().stop()

    def messages(self) -> str:
        """The SIP messages SIPp sent and received (-trace_msg)."""
        return _read(self.messages_path)

    def errors(self) -> str:
        """SIPp's error log (-trace_err): unexpected messages, retransmission timeouts."""
        return _read(self.errors_path)

    def screen(self) -> str:
        """SIPp's final statistics screens (written when it exits by itself or on SIGUSR1)."""
        return _read(self.screen_path)

    def responses(self) -> list[int]:
        """Status codes of every SIP response in the message trace, in order."""
        return [int(code) for code in re.findall(r"^SIP/2\.0 (\d{3}) ", self.messages(), flags=re.M)]

    def requests(self) -> list[str]:
        """Methods of every SIP request in the message trace, in order."""
        return re.findall(r"^([A-Z]+) \S+ SIP/2\.0\s*$", self.messages(), flags=re.M)

    def stats(self) -> dict[str, str]:
        """The last row of SIPp's statistics file (-trace_stat, one row a second), by column name,
        e.g. ["SuccessfulCall(C)"], ["FailedCall(C)"], ["CurrentCall"], ["Retransmissions(C)"],
        ["CallLength(C)"], and the response time of a named rtd: ["ResponseTimesetup(C)"]
        (uac_call.xml's INVITE to 200), or ["ResponseTime1(C)"] for an unnamed one."""
        rows = [row for row in _read(self.stats_path).splitlines() if row.strip()]
        if len(rows) < 2:
            return {}
        names = rows[0].rstrip(";").split(";")
        return dict(zip(names, rows[-1].rstrip(";").split(";")))

    def call_counts(self) -> tuple[int, int]:
        """(successful, failed) calls so far, from the statistics file."""
        stats = self.stats()
        return int(stats.get("SuccessfulCall(C)", 0) or 0), int(stats.get("FailedCall(C)", 0) or 0)

    def explain(self) -> str:
        """Exit code, log tail, errors and the message trace: for assertion messages."""
        code = self.process.returncode if self.process else None
        return (f"SIPp {self.scenario.name} exit {code}, folder {self.dir}\n--- log\n{self._log_tail(15)}\n"
                f"--- errors\n{self.errors()[-3000:]}\n--- messages\n{self.messages()[-6000:]}")


class SippUas(_Sipp):
    """SIPp as the callee, running a UAS scenario from tests/peers/sipp (or any path).

    calls: SIPp exits after that many calls (then wait() gives its verdict);
           None keeps it answering until stopped.
    rtp_echo: every RTP packet sent to media_port comes straight back (-rtp_echo).
    duration_ms: length of the scenario's <pause/> (-d): when uas_remote_bye hangs up,
           how long uas_early_media's early media lasts before the 200.
    play: a PCM WAV the scenario's rtp_stream plays (uas_play, uas_early_media);
           by default a 1 s 440 Hz tone.
    keys: -key name value pairs, i.e. the scenario's [name] keywords.
    uas_auth.xml's credentials and realm: auth_user, auth_password, realm.
    """

    def __init__(self, workdir: Path, scenario: str | Path = "uas_answer.xml", *, calls: int | None = 1,
                 rtp_echo: bool = False, service: str = "service", duration_ms: int = 1000,
                 play: Path | None = None, transport: str = "udp", timeout_s: float = 30.0,
                 auth_user: str = "alice", auth_password: str = "secret", realm: str = "cxtest",
                 keys: dict[str, str] | None = None, extra_args: list[str] | tuple[str, ...] = ()) -> None:
        all_keys = {"auth_user": auth_user, "auth_password": auth_password, "realm": realm, **(keys or {})}
        super().__init__(workdir, scenario, calls=calls, service=service, duration_ms=duration_ms, play=play,
                         transport=transport, timeout_s=timeout_s, keys=all_keys, extra_args=extra_args)
        self.rtp_echo = rtp_echo

    @property
    def uri(self) -> str:
        suffix = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{self.service}@{HOST}:{self.port}{suffix}"

    def start(self) -> SippUas:
        require_binary(SIPP, "sip-tester")
        # -aa: answer INFO, NOTIFY, OPTIONS and UPDATE inside a call with 200 (e.g. SIP INFO DTMF).
        role = ["-aa"] + (["-rtp_echo"] if self.rtp_echo else [])
        self._spawn(self._argv(None, role))
        # Bound means ready: requests wait in the socket until the scenario reads them.
        self._wait_bound(self.port, "udp" if self.transport == "udp" else "tcp")
        return self


class SippUac(_Sipp):
    """SIPp as the caller, running a UAC scenario against `target` ((host, port) or "host:port").

    calls, rate (calls per second) and max_concurrent (-l) shape a load run;
    duration_ms is the scenario's <pause/> (-d): how long each call lasts.
    service: the Request-URI user (-s). auth_user/auth_password answer 401/407 (-au/-ap).
    dtmf: the digits uac_auth.xml sends as RFC 4733 events once the call is up.
    play: the PCM WAV uac_call.xml streams as PCMU (looped); by default a tone.
    """

    def __init__(self, workdir: Path, target: tuple[str, int] | str, scenario: str | Path = "uac_call.xml", *,
                 calls: int = 1, rate: float = 10.0, max_concurrent: int | None = None,
                 service: str = "service", duration_ms: int = 1000, play: Path | None = None,
                 auth_user: str | None = None, auth_password: str | None = None, dtmf: str = "1",
                 transport: str = "udp", timeout_s: float = 30.0, keys: dict[str, str] | None = None,
                 extra_args: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(workdir, scenario, calls=calls, service=service, duration_ms=duration_ms, play=play,
                         transport=transport, timeout_s=timeout_s, keys={"dtmf": dtmf, **(keys or {})},
                         extra_args=extra_args)
        self.target = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
        self.rate = rate
        self.max_concurrent = max_concurrent
        self.auth_user = auth_user
        self.auth_password = auth_password

    def start(self) -> SippUac:
        require_binary(SIPP, "sip-tester")
        role = ["-r", str(self.rate)]
        if self.max_concurrent is not None:
            role += ["-l", str(self.max_concurrent)]
        if self.auth_user is not None:
            role += ["-au", self.auth_user]
        if self.auth_password is not None:
            role += ["-ap", self.auth_password]
        self._spawn(self._argv(self.target, role))
        return self

    def run(self, timeout: float | None = None) -> int:
        """Start, wait for the end and return SIPp's exit code."""
        with self:
            return self.wait(timeout)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# =========================================================================== baresip

_BARESIP_CONFIG = """\
# baresip {version} for the voice tests (written by tests/voice_peers.py): loopback only,
# no sound card, no user folder (-f points here).
poll_method             epoll
sip_listen              {host}:{sip_port}
sip_trans_def           udp
call_local_timeout      30
call_max_calls          16
audio_path              /usr/share/baresip
# The player is an aubridge device nothing reads: received audio is still decoded
# (and recorded by sndfile) and DTMF events still come through.
audio_player            aubridge,nowhere
audio_source            aufile,{play}
audio_alert             aubridge,nowhere
ausrc_srate             8000
ausrc_channels          1
auplay_srate            8000
auplay_channels         1
rtp_ports               {rtp_first}-{rtp_last}
rtcp_mux                no
jitter_buffer_type      fixed
jitter_buffer_delay     1-5
rtp_stats               no
# Names are never resolved; a query could only go to loopback.
dns_server              127.0.0.1:53
net_interface           {host}
module_path             {modules}
module                  g711.so
module                  aufile.so
module                  aubridge.so
{sndfile}module_app              account.so
module_app              menu.so
module_app              ctrl_tcp.so
ctrl_tcp_listen         {host}:{ctrl_port}
snd_path                {recordings}
"""


class Baresip(_Peer):
    """baresip 1.0.0 as an endpoint that auto-answers calls on 127.0.0.1.

    play: a PCM WAV (any rate; converted to 8 kHz mono) it sends into each call;
          by default a 1 s tone. baresip hangs up when its audio file ends, so the
          file is padded with silence to `max_call_s`, unless hangup_after_play=True
          (then baresip sends BYE when the recording ends).
    record: keep the audio it receives (sndfile module): recordings().
    answer: False leaves incoming calls ringing (answer them with command("accept")).
    register_with: (host, port) of a registrar (Kamailio) to REGISTER `user` at with
          auth_user/auth_password; then uri is the AOR there.

    Events (ctrl_tcp module, JSON) are collected from start: events(), wait_event(),
    dtmf_received(). command() sends a ctrl_tcp command ("dial", "hangup", "accept" ...).
    """

    name = "baresip"

    def __init__(self, workdir: Path, *, user: str = "bob", play: Path | None = None,
                 hangup_after_play: bool = False, max_call_s: float = 60.0, record: bool = False,
                 answer: bool = True, register_with: tuple[str, int] | None = None,
                 auth_user: str = "alice", auth_password: str = "secret") -> None:
        super().__init__(workdir)
        self.user = user
        self.record = record
        self.answer = answer
        self.register_with = register_with
        self.auth_user = auth_user
        self.auth_password = auth_password
        # sip_listen takes the port for UDP and TCP, and port+1 for TLS.
        self.port = free_port(2)
        self.ctrl_port = free_port()
        self.rtp_first = free_port(2)
        self.recordings_dir = self.dir / "recordings"
        self.recordings_dir.mkdir()
        source = play or tone_wav(self.dir / "tone.wav", seconds=1.0)
        pad_s = 0.0 if hangup_after_play else max_call_s
        pcm = read_pcm(source) + b"\0\0" * int(pad_s * 8000)
        self.play_path = self.dir / "play-8k.wav"
        _write_pcm_wav(self.play_path, pcm, 8000)
        self._events: list[dict[str, Any]] = []
        self._responses: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._ctrl: socket.socket | None = None
        self._reader: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def uri(self) -> str:
        if self.register_with:
            return f"sip:{self.user}@{self.register_with[0]}:{self.register_with[1]}"
        return f"sip:{self.user}@{HOST}:{self.port}"

    def _write_config(self) -> None:
        config = _BARESIP_CONFIG.format(
            version="1.0.0", host=HOST, sip_port=self.port, play=self.play_path,
            # baresip picks each call's RTP (and RTCP) port at random in this range and
            # tries another when one is taken, so only the start was checked free.
            rtp_first=self.rtp_first, rtp_last=self.rtp_first + 199,
            modules=BARESIP_MODULES, ctrl_port=self.ctrl_port, recordings=self.recordings_dir,
            sndfile="module                  sndfile.so\n" if self.record else "",
        )
        (self.dir / "config").write_text(config)
        params = f";answermode={'auto' if self.answer else 'manual'};audio_codecs=PCMU,PCMA"
        if self.register_with:
            host, port = self.register_with
            account = (f"<sip:{self.user}@{host}:{port}>;auth_user={self.auth_user};auth_pass={self.auth_password}"
                       f";regint=600{params}")
        else:
            account = f"<sip:{self.user}@{HOST}:{self.port}>;regint=0{params}"
        (self.dir / "accounts").write_text(account + "\n")
        (self.dir / "contacts").write_text("")

    def start(self) -> Baresip:
        require_binary(BARESIP, "baresip")
        self._write_config()
        env = dict(os.environ)
        shim = _bind_loopback_shim()
        if shim is not None:
            env["LD_PRELOAD"] = str(shim)
        self._spawn([BARESIP, "-4", "-f", str(self.dir)], env=env)
        self._wait_until("'baresip is ready.'", lambda: "baresip is ready." in self.log())
        self._ctrl = self._wait_until(f"ctrl_tcp on {HOST}:{self.ctrl_port}", self._connect_ctrl)
        self._reader = threading.Thread(target=self._read_ctrl, name=f"baresip-ctrl-{self.port}", daemon=True)
        self._reader.start()
        if self.register_with:
            # The REGISTER may finish before ctrl_tcp is connected: read the log, not the events.
            self._wait_until("200 OK to its REGISTER", lambda: re.search(r"\} 200 OK .*binding", self.log()))
        return self

    def stop(self) -> int | None:
        code = super().stop()
        if self._ctrl is not None:
            with contextlib.suppress(OSError):
                self._ctrl.close()
        if self._reader is not None:
            self._reader.join(timeout=2)
        return code

    # -- ctrl_tcp: JSON in netstrings ("LEN:JSON,") both ways

    def _connect_ctrl(self) -> socket.socket | None:
        try:
            return socket.create_connection((HOST, self.ctrl_port), timeout=1)
        except OSError:
            return None

    def _read_ctrl(self) -> None:
        assert self._ctrl is not None
        self._ctrl.settimeout(None)
        buffer = b""
        while True:
            try:
                chunk = self._ctrl.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while True:
                head, colon, rest = buffer.partition(b":")
                if not colon or not head.isdigit() or len(rest) < int(head) + 1:
                    break
                size = int(head)
                payload, buffer = rest[:size], rest[size + 1:]
                try:
                    message = json.loads(payload)
                except ValueError:
                    continue
                with self._changed:
                    if message.get("event"):
                        self._events.append(message)
                    elif message.get("response"):
                        self._responses[str(message.get("token", ""))] = message
                    self._changed.notify_all()

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """Run a baresip command (e.g. "dial", "sip:x@127.0.0.1:5060"), return its response
        ({"response": true, "ok": ..., "data": ...})."""
        if self._ctrl is None:
            raise PeerError("baresip is not started")
        token = uuid.uuid4().hex[:8]
        payload = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._ctrl.sendall(str(len(payload)).encode() + b":" + payload + b",")
        with self._changed:
            if not self._changed.wait_for(lambda: token in self._responses, timeout=timeout):
                raise PeerError(f"baresip: no response to {command!r} within {timeout:.0f}s:\n{self._log_tail()}")
            return self._responses.pop(token)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events so far (e.g. CALL_INCOMING, CALL_ESTABLISHED, CALL_DTMF_START, CALL_CLOSED), or of one type."""
        with self._changed:
            return [event for event in self._events if kind is None or event.get("type") == kind]

    def wait_event(self, kind: str, count: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        """The `count`-th event of a type, waiting up to `timeout` seconds for it."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.events(kind)) >= count, timeout=timeout):
                raise PeerError(f"baresip: no {kind} event #{count} within {timeout:.0f}s; "
                                f"events {[e.get('type') for e in self._events]}:\n{self._log_tail()}")
            return self.events(kind)[count - 1]

    def dtmf_received(self) -> str:
        """The RFC 4733 digits received in all calls so far, in order, e.g. "123#"."""
        return "".join(str(event.get("param", "")) for event in self.events("CALL_DTMF_START"))

    def wait_dtmf(self, digits: str, timeout: float = 10.0) -> str:
        """Wait (at most `timeout` s) until `digits` are among the digits received; returns all received."""
        with self._changed:
            self._changed.wait_for(lambda: digits in self.dtmf_received(), timeout=timeout)
            return self.dtmf_received()

    def recordings(self, direction: str = "dec") -> list[Path]:
        """With record=True: one WAV per call of the audio received ("dec") or sent ("enc")."""
        return sorted(self.recordings_dir.glob(f"dump-*-{direction}.wav"))


_shim_lock = threading.Lock()
_shim_path: Path | None = None
_shim_tried = False


def _bind_loopback_shim() -> Path | None:
    """The LD_PRELOAD shim keeping baresip's DNS sockets on loopback, built once per session.

    None (baresip then runs without it) when no C compiler is installed.
    """
    global _shim_path, _shim_tried
    with _shim_lock:
        if _shim_tried:
            return _shim_path
        _shim_tried = True
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            warnings.warn("no C compiler: baresip's DNS client will bind the wildcard address", stacklevel=2)
            return None
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="cxtest-bind-")) / "bind_loopback.so"
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(BIND_LOOPBACK_C), "-ldl"],
                       check=True, capture_output=True, timeout=60)
        _shim_path = out
        return out


# =========================================================================== Kamailio


class _Kamailio(_Peer):
    """What both Kamailio set-ups share: loopback ports, digest credentials, start-up until OPTIONS gets 200."""

    name = "kamailio"

    def __init__(self, workdir: Path, *, user: str = "alice", password: str = "secret") -> None:
        super().__init__(workdir)
        self.user = user
        self.password = password
        self.port = free_port()
        self.run_dir = self.dir / "run"
        self.run_dir.mkdir()

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def uri(self) -> str:
        return f"sip:{HOST}:{self.port}"

    def _start(self, cfg: Path, defines: dict[str, str]) -> None:
        require_binary(KAMAILIO, "kamailio")
        for value in (self.user, self.password):
            if '"' in value or "\\" in value:
                raise PeerError(f"Kamailio credentials cannot hold quotes or backslashes: {value!r}")
        defines = {**defines, "AUTH_USER": self.user, "AUTH_PASSWORD": self.password}
        self._spawn([
            KAMAILIO, "-f", str(cfg),
            "-DD",  # stay in the foreground (children are still forked): our child, stopped by pid
            "-E",  # log to stderr, i.e. our log file
            "-L", str(KAMAILIO_MODULES), "-Y", str(self.run_dir),
            "-l", f"udp:{HOST}:{self.port}", "-l", f"tcp:{HOST}:{self.port}",
            "-m", "32", "-M", "8",
            *(arg for name, value in defines.items() for arg in ("-A", f'{name}="{value}"')),
        ])
        self._wait_until(f"200 to OPTIONS on {HOST}:{self.port}", lambda: _answers_options(self.port))


class Kamailio(_Kamailio):
    """Kamailio 5.6 as an authenticating, record-routing proxy (tests/peers/kamailio/kamailio.cfg).

    INVITEs need digest credentials of user/password (407 challenge with qop=auth,
    403 when wrong); they then go to the REGISTERed contact of the Request-URI user,
    else to forward_to (host, port). UDP and TCP on the same port.
    """

    def __init__(self, workdir: Path, forward_to: tuple[str, int], *, user: str = "alice",
                 password: str = "secret") -> None:
        super().__init__(workdir, user=user, password=password)
        self.forward_to = forward_to

    def start(self) -> Kamailio:
        host, port = self.forward_to
        self._start(KAMAILIO_CFG, {"FORWARD_URI": f"sip:{host}:{port}"})
        return self


def _answers_options(port: int) -> bool:
    """One OPTIONS ping to a Kamailio on HOST:port, addressed to itself (its cfg answers 200)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(0.3)
        local_port = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        request = (
            f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{local_port};branch=z9hG4bK{call_id[:12]};rport\r\n"
            f"From: <sip:probe@{HOST}:{local_port}>;tag={call_id[:8]}\r\n"
            f"To: <sip:{HOST}:{port}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        try:
            sock.sendto(request.encode(), (HOST, port))
            reply, _ = sock.recvfrom(65536)
        except OSError:
            return False
    return reply.startswith(b"SIP/2.0 200")


class KamailioTrunk(_Kamailio):
    """Kamailio 5.6 as a SIP trunk routing by dialled number (tests/peers/kamailio/trunk.cfg).

    routes: number -> endpoint (a started peer, whose .uri is used, or a SIP URI). An
          INVITE for that number (the Request-URI user) has its Request-URI rewritten to
          the endpoint's and is relayed there; any other number gets 404 from the trunk.
    INVITEs need digest credentials of user/password (407, then 403 when wrong);
    REGISTER is challenged (401) and saved in the location table: registered().
    call_log(): each initial INVITE and CANCEL it received: when, for which number, what it did.
    """

    name = "trunk"

    def __init__(self, workdir: Path, routes: dict[str, Any], *, user: str = "alice",
                 password: str = "secret") -> None:
        super().__init__(workdir, user=user, password=password)
        self.routes = {str(number): getattr(target, "uri", target) for number, target in routes.items()}
        self.ctl_port = free_port()
        self.numbers_dir = self.dir / "numbers"

    def start(self) -> KamailioTrunk:
        self._write_numbers()
        self._start(TRUNK_CFG, {"NUMBERS_DB": f"text://{self.numbers_dir}", "CTL_SOCKET": f"tcp:{HOST}:{self.ctl_port}"})
        return self

    def _write_numbers(self) -> None:
        """The htable's db_text table: one row per number (db_text escapes ':' in values as '\\:')."""
        self.numbers_dir.mkdir()
        (self.numbers_dir / "version").write_text(
            "id(int,auto) table_name(string) table_version(int) \n0:numbers:2\n")
        rows = ["id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int) "]
        for index, (number, uri) in enumerate(self.routes.items(), start=1):
            if not re.fullmatch(r"[+0-9A-Za-z*#._-]+", number) or not re.fullmatch(r"sip:[^\s\\]+", uri):
                raise PeerError(f"trunk route {number!r} -> {uri!r}: numbers are dial strings, targets SIP URIs")
            escaped = uri.replace(":", "\\:")
            rows.append(f"{index}:{number}:0:0:{escaped}:0")
        (self.numbers_dir / "numbers").write_text("\n".join(rows) + "\n")

    def registered(self) -> dict[str, list[str]]:
        """The location table (kamcmd ul.dump): AOR -> its contact URIs."""
        require_binary(KAMCMD, "kamailio")
        dump = subprocess.run([KAMCMD, "-s", f"tcp:{HOST}:{self.ctl_port}", "ul.dump"], capture_output=True,
                              text=True, timeout=10)
        if dump.returncode != 0:
            raise PeerError(f"kamcmd ul.dump failed ({dump.returncode}): {dump.stderr or dump.stdout}")
        table: dict[str, list[str]] = {}
        aor = None
        for line in dump.stdout.splitlines():
            field, _, value = line.strip().partition(": ")
            if field == "AoR":
                aor = value
                table[aor] = []
            elif field == "Address" and aor is not None:
                table[aor].append(value)
        return table

    def call_log(self) -> list[dict[str, Any]]:
        """What the trunk logged of each call, in order: {"method", "stage", "number", "call_id", "at"}, where
        "at" is epoch seconds and stage is, for an INVITE, "challenged" (no credentials: 407), "refused" (403),
        "unknown" (404) or "routed" (relayed to the number's endpoint); for a CANCEL, "relayed"."""
        pattern = re.compile(r"(INVITE|CANCEL) (\w+) number '([^']*)' call-id (\S+) at (\d+\.\d+)")
        return [{"method": method, "stage": stage, "number": number, "call_id": call_id, "at": float(at)}
                for method, stage, number, call_id, at in pattern.findall(self.log())]


# =========================================================================== pytest fixtures


class VoicePeers:
    """Starts peers in a test's tmp_path and stops them all at teardown (the `voice_peers` fixture)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self._stack = contextlib.ExitStack()

    def sipp_uas(self, scenario: str | Path = "uas_answer.xml", **options: Any) -> SippUas:
        return self._stack.enter_context(SippUas(self.workdir, scenario, **options))

    def sipp_uac(self, target: tuple[str, int] | str, scenario: str | Path = "uac_call.xml",
                 **options: Any) -> SippUac:
        """A started SIPp UAC (wait() for its verdict); stopped at teardown if still running."""
        return self._stack.enter_context(SippUac(self.workdir, target, scenario, **options))

    def baresip(self, **options: Any) -> Baresip:
        return self._stack.enter_context(Baresip(self.workdir, **options))

    def kamailio(self, forward_to: tuple[str, int], **options: Any) -> Kamailio:
        return self._stack.enter_context(Kamailio(self.workdir, forward_to, **options))

    def trunk(self, routes: dict[str, Any], **options: Any) -> KamailioTrunk:
        """A Kamailio trunk routing each number of `routes` to its endpoint (a peer or a SIP URI)."""
        return self._stack.enter_context(KamailioTrunk(self.workdir, routes, **options))

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def voice_peers(tmp_path: Path) -> Iterator[VoicePeers]:
    """Start SIPp, baresip and Kamailio peers on 127.0.0.1; all stopped when the test ends."""
    peers = VoicePeers(tmp_path)
    try:
        yield peers
    finally:
        peers.close()
