"""The user agent against real SIP stacks on 127.0.0.1: SIPp, baresip, and Kamailio in front of baresip.

Each test starts its peers (tests/voice_peers.py) and checks both sides: what
our Call says, and what the peer saw (SIPp's exit code and message trace,
baresip's events, Kamailio's routing).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from probes.voice import Credentials, Timers, UserAgent, audio
from voice_peers import Baresip, Kamailio, SippUas, speech_wav

FAST = Timers(t1=0.1, t2=0.8, t4=1.0)


def peak_hz(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(float)
    return float(np.fft.rfftfreq(len(samples), 1 / 8000)[int(np.argmax(np.abs(np.fft.rfft(samples))))])


def rms_dbfs(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(float)
    return float(20 * np.log10(max(np.sqrt(np.mean(samples**2)), 1e-9) / 32768)) if len(samples) else -120.0


@pytest.fixture
async def ua():
    async with UserAgent(timers=FAST) as agent:
        yield agent


async def wait_exit(peer, timeout: float = 10.0) -> int:
    return await asyncio.to_thread(peer.wait, timeout)


async def test_answered_by_sipp_with_echoed_audio(ua, tmp_path):
    """SIPp answers; the tone we send comes back through its RTP echo; our BYE gets 200 and SIPp counts a success."""
    with SippUas(tmp_path, "uas_answer.xml", rtp_echo=True) as uas:
        call = await ua.dial(uas.uri)
        assert (call.status, call.answered) == (200, True)
        await call.play(audio.tone(800, 1.0))
        await asyncio.sleep(0.2)
        await call.hangup()
        assert await wait_exit(uas) == 0, uas.explain()
    echoed = call.media.recording.pcm()
    assert abs(peak_hz(echoed) - 800) < 15
    assert call.media.stats.loss_fraction < 0.01 and call.media.stats.received >= 45
    assert call.end_reason == "local bye"


@pytest.mark.parametrize(
    "scenario, status, reason",
    [("uas_busy.xml", 486, "Busy Here"), ("uas_not_found.xml", 404, "Not Found"), ("uas_unavailable.xml", 503, "Service Unavailable")],
)
async def test_failure_responses_from_sipp_are_acked(ua, tmp_path, scenario, status, reason):
    """Busy, not found, unavailable: the status is data on the call and SIPp receives the ACK it waits for."""
    with SippUas(tmp_path, scenario) as uas:
        call = await ua.dial(uas.uri)
        assert (call.status, call.reason, call.answered) == (status, reason, False)
        assert await wait_exit(uas) == 0, uas.explain()
    assert "ACK" in uas.requests()


async def test_no_answer_is_cancelled_and_sipp_sees_cancel_then_ack(ua, tmp_path):
    """SIPp rings forever; our no-answer timer sends CANCEL, SIPp answers 200 + 487, and our ACK completes its scenario."""
    with SippUas(tmp_path, "uas_no_answer.xml") as uas:
        call = await ua.dial(uas.uri, no_answer_timeout=1.0)
        assert (call.status, call.cancelled) == (487, True)
        assert 180 in [p.status for p in call.progress]
        assert await wait_exit(uas) == 0, uas.explain()
    assert uas.requests()[:3] == ["INVITE", "CANCEL", "ACK"]


async def test_digest_on_401_passes_sipp_verifyauth(ua, tmp_path):
    """SIPp challenges with 401; our second INVITE's credentials pass its <verifyauth> and the call is answered."""
    with SippUas(tmp_path, "uas_auth.xml", auth_user="alice", auth_password="s3cret") as uas:
        call = await ua.dial(uas.uri, auth=Credentials("alice", "s3cret"))
        assert call.status == 200, uas.explain()
        await call.hangup()
        assert await wait_exit(uas) == 0, uas.explain()
    assert [p.status for p in call.progress if p.status >= 200] == [200]


async def test_wrong_password_is_refused_as_data(ua, tmp_path):
    """A wrong password ends in SIPp's 403 on the call, not an exception."""
    with SippUas(tmp_path, "uas_auth.xml", auth_user="alice", auth_password="s3cret") as uas:
        call = await ua.dial(uas.uri, auth=Credentials("alice", "wrong"))
        assert call.status == 403 and not call.answered
        await asyncio.to_thread(uas.wait, 10)


async def test_401_without_credentials_is_the_outcome(ua, tmp_path):
    """Dialling a challenging UAS without credentials reports 401 and ACKs it."""
    with SippUas(tmp_path, "uas_auth.xml", calls=None) as uas:
        call = await ua.dial(uas.uri)
        assert (call.status, call.reason) == (401, "Unauthorized")
        await asyncio.sleep(0.3)
        assert "ACK" in uas.requests()


async def test_remote_bye_from_sipp(ua, tmp_path):
    """SIPp hangs up after 500 ms: the call ends 'remote bye' and SIPp gets our 200."""
    with SippUas(tmp_path, "uas_remote_bye.xml", duration_ms=500) as uas:
        call = await ua.dial(uas.uri)
        assert call.answered
        assert await call.wait_ended(5) == "remote bye"
        assert await wait_exit(uas) == 0, uas.explain()


async def test_early_media_from_sipp_is_recorded_before_the_answer(ua, tmp_path):
    """SIPp sends 183 with SDP and streams a tone before its 200: the recording holds it before answered_at."""
    with SippUas(tmp_path, "uas_early_media.xml", duration_ms=1500) as uas:
        call = await ua.dial(uas.uri)
        assert call.answered and call.early_media
        assert 183 in [p.status for p in call.progress]
        early = call.media.recording.pcm(end=call.answered_at)
        assert len(early) > 8000 * 2 * 0.8 and rms_dbfs(early) > -40
        assert abs(peak_hz(early) - 440) < 15
        await call.hangup()
        await wait_exit(uas)


async def test_call_over_tcp_to_sipp(ua, tmp_path):
    """A ;transport=tcp URI carries the whole dialog over TCP to SIPp (-t t1)."""
    with SippUas(tmp_path, "uas_answer.xml", transport="tcp") as uas:
        call = await ua.dial(uas.uri)
        assert call.answered and "SIP/2.0/TCP" in call.trace_text()
        await call.hangup()
        assert await wait_exit(uas) == 0, uas.explain()


async def test_baresip_hears_us_plays_to_us_and_gets_our_dtmf(ua, tmp_path):
    """baresip auto-answers, plays speech we record, and logs the RFC 4733 digits we send."""
    speech = speech_wav(tmp_path / "hello.wav", "Thank you for calling Acme. Please hold.")
    with Baresip(tmp_path, play=speech) as peer:
        call = await ua.dial(peer.uri)
        assert call.answered, call.trace_text()
        await asyncio.sleep(0.5)
        await call.send_dtmf("159#")
        await asyncio.sleep(1.0)
        assert peer.dtmf_received() == "159#"
        await call.hangup()
    assert rms_dbfs(call.media.recording.pcm()) > -45, "no audio heard from baresip"


async def test_sip_info_dtmf_is_accepted_by_baresip(ua, tmp_path):
    """DTMF as SIP INFO (application/dtmf-relay) is answered 200 by baresip."""
    with Baresip(tmp_path) as peer:
        call = await ua.dial(peer.uri)
        await call.send_dtmf("7", method="info")
        assert "INFO sip:" in call.trace_text()
        await call.hangup()


async def test_through_kamailio_407_and_record_route_to_baresip(ua, tmp_path):
    """Kamailio challenges with 407 and record-routes: the call sets up, audio flows both ways, BYE goes via the proxy."""
    with Baresip(tmp_path, record=True) as peer, Kamailio(tmp_path, forward_to=peer.address, user="alice", password="secret") as proxy:
        call = await ua.dial(f"sip:bob@127.0.0.1:{proxy.port}", auth=Credentials("alice", "secret"))
        assert call.status == 200, call.trace_text()
        statuses = [p.status for p in call.progress if p.status >= 200]
        assert statuses[0] == 200 and "407 Proxy Authentication Required" in call.trace_text()
        trace = call.trace_text()
        assert f"Route: <sip:127.0.0.1:{proxy.port};lr" in trace.split("ACK sip:")[1], "ACK did not follow the route set"
        await call.play(audio.tone(1000, 1.0))
        await call.hangup()
        assert call.end_reason == "local bye"
        bye = trace_after(call.trace_text(), "BYE sip:")
        assert f"Route: <sip:127.0.0.1:{proxy.port};lr" in bye
    assert rms_dbfs(call.media.recording.pcm()) > -45, "no audio from baresip through the call"


async def test_kamailio_refuses_wrong_credentials(ua, tmp_path):
    """A wrong password at the proxy ends as 407 again (or 403): refused, as data."""
    with Baresip(tmp_path) as peer, Kamailio(tmp_path, forward_to=peer.address, user="alice", password="secret") as proxy:
        call = await ua.dial(f"sip:bob@127.0.0.1:{proxy.port}", auth=Credentials("alice", "nope"))
        assert call.status in (403, 407) and not call.answered


async def test_register_with_kamailio_then_be_called_through_it(ua, tmp_path):
    """REGISTER with digest at Kamailio, then a call to our AOR reaches our user agent through the proxy."""
    with Baresip(tmp_path) as peer, Kamailio(tmp_path, forward_to=peer.address, user="alice", password="secret") as proxy:
        registration = await ua.register(f"sip:127.0.0.1:{proxy.port}", user="carol", auth=Credentials("alice", "secret"), expires=120)
        assert registration.ok and registration.expires > 0
        answered = asyncio.Event()

        async def answer(call):
            await call.answer()
            answered.set()
            await call.ended.wait()

        ua.on_invite = answer
        async with UserAgent(timers=FAST, user="dave") as caller:
            call = await caller.dial(f"sip:carol@127.0.0.1:{proxy.port}", auth=Credentials("alice", "secret"))
            assert call.answered, call.trace_text()
            await asyncio.wait_for(answered.wait(), 2)
            await call.hangup()
        assert await registration.unregister() == 200


def trace_after(trace: str, marker: str) -> str:
    return marker + trace.split(marker, 1)[1] if marker in trace else ""


async def test_hold_re_invite_is_answered_and_the_call_survives(ua, tmp_path):
    """SIPp's re-INVITE with a=sendonly gets our 200 with a=recvonly; the call stays up until SIPp's BYE."""
    with SippUas(tmp_path, "uas_reinvite.xml", duration_ms=800) as uas:
        call = await ua.dial(uas.uri)
        assert call.answered
        assert await call.wait_ended(5) == "remote bye"
        assert await wait_exit(uas) == 0, uas.explain()
    assert "re-INVITE" in [what for _, what, _ in call.events]
    answer = call.trace_text().split("CSeq: 1 INVITE")[-1]
    assert "a=recvonly" in answer


async def test_session_timer_refreshed_by_us_when_we_are_the_refresher(ua, tmp_path):
    """A 200 with Session-Expires: 2;refresher=uac makes us re-INVITE within 2 s; SIPp's scenario, which waits for it, passes."""
    with SippUas(tmp_path, "uas_session_timer.xml") as uas:
        call = await ua.dial(uas.uri)
        assert call.answered
        await asyncio.sleep(1.6)
        assert not call.is_over
        await call.hangup()
        assert await wait_exit(uas) == 0, uas.explain()
    assert call.trace_text().count("INVITE sip:") >= 2
