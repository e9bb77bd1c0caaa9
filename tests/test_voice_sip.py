"""The SIP user agent against itself and against broken raw peers on 127.0.0.1.

Caller and callee are two UserAgents in the test's loop; broken peers are raw
UDP sockets that send what a real stack never would. Timers are shrunk
(T1 = 50 ms, so Timer B/F = 3.2 s) so timeouts end quickly.
"""

from __future__ import annotations

import asyncio
import os
import socket

import numpy as np
import pytest

from probes.voice import audio, dtmf
from probes.voice.sip import CallEnded, Timers, UserAgent

FAST = Timers(t1=0.05, t2=0.4, t4=0.5)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def peak_hz(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / 8000)[int(np.argmax(spectrum))])


@pytest.fixture
async def pair():
    """A caller and a callee user agent; the callee's behaviour is set per test with `callee.on_invite`."""
    async with UserAgent(timers=FAST, user="caller") as caller, UserAgent(timers=FAST, user="ivr") as callee:
        yield caller, callee


def ring_forever(callee: UserAgent) -> list:
    """Make the callee ring and never answer; returns the list its calls are put in."""
    seen = []

    async def ring(call):
        seen.append(call)
        await call.ring()
        await call.ended.wait()

    callee.on_invite = ring
    return seen


def callee_uri(callee: UserAgent, transport: str = "") -> str:
    suffix = f";transport={transport}" if transport else ""
    return f"sip:ivr@127.0.0.1:{callee.port}{suffix}"


async def test_answered_call_carries_audio_both_ways_and_ends_with_bye(pair):
    """An answered call negotiates PCMU, carries a tone each way, and the caller's BYE ends both sides."""
    caller, callee = pair
    answered = asyncio.Event()
    calls = []

    async def answer(call):
        calls.append(call)
        await call.ring()
        await call.answer()
        answered.set()
        await call.play(audio.tone(440, 0.6))

    callee.on_invite = answer
    call = await caller.dial(callee_uri(callee))
    assert (call.status, call.reason, call.answered) == (200, "OK", True)
    assert call.negotiated.codec.name == "PCMU" and call.negotiated.dtmf_payload_type == 101
    assert [p.status for p in call.progress] == [100, 180, 200] and 0 < call.pdd < call.time_to_answer
    await call.play(audio.tone(1000, 0.6))
    await asyncio.sleep(0.2)
    await call.hangup()
    remote = calls[0]
    assert await remote.wait_ended(2) == "remote bye"
    assert call.end_reason == "local bye"
    assert abs(peak_hz(call.media.recording.pcm()) - 440) < 15
    assert abs(peak_hz(remote.media.recording.pcm()) - 1000) < 15
    assert call.media.stats.lost == 0 and call.media.stats.received >= 40
    assert "INVITE sip:ivr@" in call.trace_text() and "BYE sip:" in call.trace_text()


@pytest.mark.parametrize("status, reason", [(486, "Busy Here"), (404, "Not Found"), (503, "Service Unavailable"), (603, "Decline")])
async def test_failure_responses_are_data_not_exceptions(pair, status, reason):
    """A 4xx/5xx/6xx final response comes back as call.status and reason; the call ends 'failed'."""
    caller, callee = pair

    async def refuse(call):
        await call.reject(status, reason)

    callee.on_invite = refuse
    call = await caller.dial(callee_uri(callee))
    assert (call.status, call.reason, call.answered) == (status, reason, False)
    assert call.end_reason == f"failed: {status} {reason}" and call.media.closed
    with pytest.raises(CallEnded, match=f"not answered: {status} {reason}"):
        call.raise_for_status()


async def test_no_answer_sends_cancel_and_the_487_is_acked(pair):
    """Ringing past no_answer_timeout sends CANCEL; the caller gets 487 and the callee sees the cancel."""
    caller, callee = pair
    seen = ring_forever(callee)
    call = await caller.dial(callee_uri(callee), no_answer_timeout=0.4)
    assert (call.status, call.cancelled) == (487, True)
    assert call.end_reason == "cancelled: 487 Request Terminated"
    assert await seen[0].wait_ended(1) == "cancelled by the caller"
    await asyncio.sleep(3 * FAST.t1)
    assert seen[0]._server.acked.is_set(), "the 487 was never ACKed"


async def test_a_cancel_after_ringing_longer_than_timer_b_still_ends_the_call(pair):
    """The callee keeps its INVITE transaction while it rings, so a CANCEL past 64*T1 + 1 s (4.2 s here) gets 200 and 487, not 481."""
    caller, callee = pair
    seen = ring_forever(callee)
    call = await caller.dial(callee_uri(callee), no_answer_timeout=FAST.b + 1.5)
    assert (call.status, call.cancelled) == (487, True)
    assert await seen[0].wait_ended(1) == "cancelled by the caller"


async def test_cancelling_the_dial_task_cancels_the_call(pair):
    """A caller task cancelled while ringing sends CANCEL; the far end stops ringing."""
    caller, callee = pair
    seen = ring_forever(callee)
    dialling = asyncio.ensure_future(caller.dial(callee_uri(callee)))
    while not seen or not seen[0].progress and not seen[0]._server.last:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    dialling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dialling
    assert await seen[0].wait_ended(2) == "cancelled by the caller"


async def test_remote_bye_ends_the_call(pair):
    """The callee hanging up reaches the caller as end_reason 'remote bye'."""
    caller, callee = pair

    async def answer_then_hang_up(call):
        await call.answer()
        await asyncio.sleep(0.3)
        await call.hangup()

    callee.on_invite = answer_then_hang_up
    call = await caller.dial(callee_uri(callee))
    assert await call.wait_ended(3) == "remote bye"
    assert call.media.closed
    with pytest.raises(CallEnded):
        await call.send_dtmf("1")


async def test_early_media_is_heard_before_the_answer(pair):
    """183 with SDP starts media: the caller records the announcement before the 200."""
    caller, callee = pair

    async def announce(call):
        await call.progress_media()
        await call.play(audio.tone(600, 0.5))
        await call.answer()
        await asyncio.sleep(0.2)
        await call.hangup()

    callee.on_invite = announce
    call = await caller.dial(callee_uri(callee))
    assert call.early_media and 183 in [p.status for p in call.progress]
    heard_before_answer = call.media.recording.pcm(end=call.answered_at)
    assert len(heard_before_answer) >= 8000 * 2 * 0.4
    assert abs(peak_hz(heard_before_answer) - 600) < 15


@pytest.mark.parametrize("method", ["rfc4733", "info", "inband"])
async def test_dtmf_reaches_the_callee(pair, method):
    """Digits sent as RFC 4733 events or SIP INFO arrive as digits; in-band tones are found by the Goertzel detector."""
    caller, callee = pair
    heard = []

    async def listen(call):
        await call.answer()
        heard.append(call)
        await call.ended.wait()

    callee.on_invite = listen
    call = await caller.dial(callee_uri(callee))
    await call.send_dtmf("12#9", method=method)
    await asyncio.sleep(0.3)
    remote = heard[0]
    if method == "inband":
        assert "".join(d.digit for d in dtmf.detect_digits(remote.media.recording.pcm())) == "12#9"
    else:
        assert remote.digits_received == "12#9"
    await call.hangup()


async def test_rfc4733_digits_are_paced_in_real_time(pair):
    """Four digits of 100 ms with 100 ms gaps take about 0.8 s on the wire, not one burst."""
    caller, callee = pair
    stamps = []

    async def listen(call):
        await call.answer()
        while True:
            stamps.append((await call.next_digit(5)).started_at)

    callee.on_invite = listen
    call = await caller.dial(callee_uri(callee))
    started = asyncio.get_running_loop().time()
    await call.send_dtmf("1234")
    elapsed = asyncio.get_running_loop().time() - started
    await asyncio.sleep(0.1)
    assert 0.65 < elapsed < 1.3
    gaps = np.diff(stamps)
    assert len(stamps) == 4 and all(0.15 < g < 0.3 for g in gaps), gaps
    await call.hangup()


async def test_call_over_tcp(pair):
    """transport=tcp in the URI places the whole call over one TCP connection."""
    caller, callee = pair

    async def answer(call):
        await call.answer()
        await call.ended.wait()

    callee.on_invite = answer
    call = await caller.dial(callee_uri(callee, "tcp"))
    assert call.answered and "SIP/2.0/TCP" in call.trace_text()
    await call.hangup()
    assert call.end_reason == "local bye"


async def test_options_ping(pair):
    """OPTIONS to a user agent answers 200 with a round-trip time."""
    caller, callee = pair
    response, rtt = await caller.options(callee_uri(callee))
    assert response.code == 200 and 0 < rtt < 1


async def test_options_to_a_silent_port_times_out_as_408():
    """Nothing listening: OPTIONS ends with a synthesised 408 after Timer F (64*T1), not a hang."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        async with UserAgent(timers=FAST) as ua:
            response, rtt = await ua.options(f"sip:x@127.0.0.1:{silent.getsockname()[1]}")
        assert response.code == 408 and "no response" in response.phrase
        assert 3.0 < rtt < 4.5
        retransmissions = 0
        silent.setblocking(False)
        while True:
            try:
                silent.recv(4096)
                retransmissions += 1
            except BlockingIOError:
                break
        assert retransmissions >= 5, "OPTIONS was not retransmitted (Timer E)"
    finally:
        silent.close()


class RawPeer(asyncio.DatagramProtocol):
    """A UDP 'SIP peer' whose replies the test scripts: garbage, a 200 and then silence."""

    def __init__(self, reply):
        self.reply = reply
        self.received: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.received.append(data)
        for answer in self.reply(data):
            self.transport.sendto(answer, addr)


async def raw_peer(reply):
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(lambda: RawPeer(reply), local_addr=("127.0.0.1", 0))
    return transport, peer, transport.get_extra_info("sockname")[1]


async def test_garbage_replies_end_in_a_clear_408_without_leaks():
    """A peer that answers INVITE with non-SIP bytes: 408 naming the garbage, no task, socket or call left behind."""
    transport, peer, port = await raw_peer(lambda data: [b"HTTP/1.1 400 Bad Request\r\n\r\n<html>nope</html>"])
    fds = open_fds()
    tasks = len(asyncio.all_tasks())
    try:
        async with UserAgent(timers=FAST) as ua:
            call = await ua.dial(f"sip:ivr@127.0.0.1:{port}", no_answer_timeout=10)
            assert call.status == 408 and "unreadable" in call.reason and "HTTP/1.1 400" in call.reason
            assert ua.garbage_received >= 3
    finally:
        transport.close()
    await asyncio.sleep(0.05)
    assert open_fds() <= fds
    assert len(asyncio.all_tasks()) <= tasks


def _answer_invite_then_go_silent(data: bytes, port: int) -> list[bytes]:
    if not data.startswith(b"INVITE"):
        return []  # ACK, BYE: never answered
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    keep = [line for line in head.split("\r\n")[1:] if line.split(":")[0] in ("Via", "From", "Call-ID", "CSeq")]
    to = next(line for line in head.split("\r\n") if line.startswith("To:"))
    body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    lines = ["SIP/2.0 200 OK", *keep, f"{to};tag=silent", f"Contact: <sip:x@127.0.0.1:{port}>", "Content-Type: application/sdp"]
    return [("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()]


async def test_peer_that_stops_answering_mid_call_ends_the_hangup_at_timer_f():
    """A far end that answered and then goes silent: our BYE gives up after 64*T1 with a clear reason, nothing leaks."""
    ports = []
    transport, peer, port = await raw_peer(lambda data: _answer_invite_then_go_silent(data, ports[0]))
    ports.append(port)
    fds, tasks = open_fds(), len(asyncio.all_tasks())
    try:
        async with UserAgent(timers=FAST) as ua:
            call = await ua.dial(f"sip:x@127.0.0.1:{port}")
            assert call.answered
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(call.hangup(), 10)
            assert 3.0 < asyncio.get_running_loop().time() - started < 4.5
            assert call.end_reason.startswith("local bye (408 Request Timeout")
            assert sum(d.startswith(b"BYE") for d in peer.received) >= 5
    finally:
        transport.close()
    await asyncio.sleep(0.05)
    assert open_fds() <= fds and len(asyncio.all_tasks()) <= tasks


async def test_lost_packets_are_counted_and_the_recording_keeps_its_timeline(pair):
    """A far end whose every 10th packet is lost: ~10% loss in the stats, the recording still real-time long."""
    caller, callee = pair
    lossy = []

    async def answer_lossily(call):
        await call.answer()
        transport = call.media._transport
        sendto = transport.sendto
        count = iter(range(10**9))

        def drop_every_tenth(data, addr=None):
            if next(count) % 10 != 9:
                sendto(data, addr)

        transport.sendto = drop_every_tenth
        lossy.append(call)
        await call.ended.wait()

    callee.on_invite = answer_lossily
    call = await caller.dial(callee_uri(callee))
    await asyncio.sleep(1.0)
    stats = call.media.stats
    assert 0.07 < stats.loss_fraction < 0.13 and stats.lost >= 4
    assert stats.max_gap_ms >= 35
    recording = call.media.recording
    assert abs(len(recording.pcm()) / 16000 - recording.duration) < 0.05
    await call.hangup()


@pytest.mark.parametrize("uri", ["nonsense", "http://127.0.0.1/", "sip:"])
async def test_a_malformed_uri_says_what_a_sip_uri_looks_like(uri):
    """dial() with something that is not a sip: URI raises ValueError showing the expected form."""
    async with UserAgent(timers=FAST) as ua:
        with pytest.raises(ValueError, match=r"not a SIP URI: .* \(expected sip:user@host"):
            await ua.dial(uri)


def _ring_and_ignore_the_rest(data: bytes) -> list[bytes]:
    if not data.startswith(b"INVITE"):
        return []  # CANCEL and everything after: never answered
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    keep = [line for line in head.split("\r\n")[1:] if line.split(":")[0] in ("Via", "From", "To", "Call-ID", "CSeq")]
    return [("\r\n".join(["SIP/2.0 180 Ringing", *keep, "Content-Length: 0"]) + "\r\n\r\n").encode()]


async def test_a_cancel_nobody_answers_ends_as_408_at_timer_b():
    """Ringing, then our CANCEL is ignored: the call still ends (408 after 64*T1), cancelled, and nothing leaks."""
    transport, peer, port = await raw_peer(_ring_and_ignore_the_rest)
    fds, tasks = open_fds(), len(asyncio.all_tasks())
    try:
        async with UserAgent(timers=FAST) as ua:
            started = asyncio.get_running_loop().time()
            call = await asyncio.wait_for(ua.dial(f"sip:x@127.0.0.1:{port}", no_answer_timeout=0.3), 10)
            assert 3.0 < asyncio.get_running_loop().time() - started < 5.0
            assert (call.status, call.cancelled) == (408, True) and "after CANCEL" in call.reason
            assert sum(d.startswith(b"CANCEL") for d in peer.received) >= 5, "CANCEL was not retransmitted"
    finally:
        transport.close()
    await asyncio.sleep(0.05)
    assert open_fds() <= fds and len(asyncio.all_tasks()) <= tasks
