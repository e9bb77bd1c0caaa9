"""The voice tests' SIP peers against each other: SIPp, baresip and Kamailio on 127.0.0.1.

Before the voice probe's UA is tested against these peers, each scenario and
config is proved with the peers alone: SIPp's UAC against SIPp's UAS
scenarios, baresip dialling SIPp (to hear what SIPp plays), and SIPp calling
through Kamailio (digest auth, record-route) to baresip (DTMF, recording).
A missing binary skips the test with the package to install.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from voice_peers import (
    HOST,
    SIPP_ALL_CALLS_OK,
    SIPP_SOME_CALL_FAILED,
    Baresip,
    SippUas,
    VoicePeers,
    _listening_inodes,
    rms,
    speech_wav,
    tone_wav,
)

pytestmark = pytest.mark.timeout(60)


def _rtp_packet(seq: int) -> bytes:
    """A PCMU RTP packet: version 2, payload type 0, 160 bytes of mu-law silence."""
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234ABCD) + b"\xff" * 160


# =========================================================================== SIPp UAS scenarios


def test_uac_call_is_answered_by_uas_answer(voice_peers: VoicePeers) -> None:
    """uas_answer.xml rings, answers with PCMU/PCMA/telephone-event and takes the caller's BYE."""
    uas = voice_peers.sipp_uas("uas_answer.xml", rtp_echo=True)
    uac = voice_peers.sipp_uac(uas.address, "uac_call.xml", duration_ms=500)

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    assert uas.wait() == SIPP_ALL_CALLS_OK, uas.explain()
    assert uas.requests() == ["INVITE", "ACK", "BYE"]
    assert uas.responses() == [100, 180, 200, 200]
    answer = uas.messages().split("SIP/2.0 200 OK", 1)[1]
    assert f"m=audio {uas.media_port} RTP/AVP 0 8 101" in answer
    assert "a=rtpmap:101 telephone-event/8000" in answer
    assert uac.call_counts() == (1, 0)


def test_uas_answer_echoes_rtp(voice_peers: VoicePeers) -> None:
    """With rtp_echo, whatever reaches the UAS's media port comes back to the sender unchanged."""
    uas = voice_peers.sipp_uas("uas_answer.xml", rtp_echo=True, calls=None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as media:
        media.bind((HOST, 0))
        media.settimeout(2)
        sent = [_rtp_packet(seq) for seq in range(5)]
        for packet in sent:
            media.sendto(packet, (HOST, uas.media_port))
        echoed = [media.recvfrom(2048) for _ in sent]

    assert [data for data, _ in echoed] == sent
    assert {source for _, source in echoed} == {(HOST, uas.media_port)}


@pytest.mark.parametrize(("password", "expected_uac", "expected_uas", "final"), [
    ("secret", SIPP_ALL_CALLS_OK, SIPP_ALL_CALLS_OK, 200),
    ("wrong", SIPP_SOME_CALL_FAILED, SIPP_SOME_CALL_FAILED, 403),
])
def test_uas_auth_checks_the_digest_password(voice_peers: VoicePeers, password: str, expected_uac: int,
                                             expected_uas: int, final: int) -> None:
    """uas_auth.xml challenges with 401, then answers 200 to the right password and 403 to a wrong one."""
    uas = voice_peers.sipp_uas("uas_auth.xml", rtp_echo=True, auth_user="alice", auth_password="secret")
    uac = voice_peers.sipp_uac(uas.address, "uac_auth.xml", auth_user="alice", auth_password=password,
                               duration_ms=300)

    assert uac.wait() == expected_uac, uac.explain()
    assert uas.wait() == expected_uas, uas.explain()
    assert uas.responses()[:2] == [401, 100 if final == 200 else 403]
    assert final in uac.responses()
    assert 'WWW-Authenticate: Digest realm="cxtest"' in uas.messages()
    assert 'Authorization: Digest username="alice"' in uas.messages()


@pytest.mark.parametrize(("scenario", "code"), [
    ("uas_busy.xml", 486),
    ("uas_not_found.xml", 404),
    ("uas_unavailable.xml", 503),
])
def test_uas_refusals_send_their_final_response(voice_peers: VoicePeers, scenario: str, code: int) -> None:
    """The refusing UAS scenarios answer 100 then their final code, and take the caller's ACK."""
    uas = voice_peers.sipp_uas(scenario)
    uac = voice_peers.sipp_uac(uas.address, "uac_reject.xml")

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    assert uas.wait() == SIPP_ALL_CALLS_OK, uas.explain()
    assert uac.responses() == [100, code]
    assert uas.requests() == ["INVITE", "ACK"]


def test_uas_no_answer_rings_until_cancel(voice_peers: VoicePeers) -> None:
    """uas_no_answer.xml rings, answers CANCEL with 200 and ends the INVITE with 487 (INVITE's CSeq)."""
    uas = voice_peers.sipp_uas("uas_no_answer.xml")
    uac = voice_peers.sipp_uac(uas.address, "uac_cancel.xml", duration_ms=300)

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    assert uas.wait() == SIPP_ALL_CALLS_OK, uas.explain()
    assert uas.requests() == ["INVITE", "CANCEL", "ACK"]
    assert uas.responses() == [100, 180, 200, 487]
    terminated = uas.messages().split("SIP/2.0 487", 1)[1]
    assert "CSeq: 1 INVITE" in terminated.split("\n\n", 1)[0]


def test_uas_remote_bye_hangs_up_itself(voice_peers: VoicePeers) -> None:
    """uas_remote_bye.xml answers, then sends its own BYE to the caller after duration_ms."""
    uas = voice_peers.sipp_uas("uas_remote_bye.xml", duration_ms=500, rtp_echo=True)
    uac = voice_peers.sipp_uac(uas.address, "uac_wait_bye.xml")

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    assert uas.wait() == SIPP_ALL_CALLS_OK, uas.explain()
    assert uac.requests() == ["INVITE", "ACK", "BYE"]
    bye = uas.messages().split("BYE sip:", 1)[1].split("\n\n", 1)[0]
    assert "SIPpTag00" in bye.split("To:", 1)[1].splitlines()[0]  # the caller's From tag


@pytest.mark.parametrize(("scenario", "provisional"), [
    ("uas_play.xml", 180),
    ("uas_early_media.xml", 183),
])
def test_uas_plays_its_wav_to_the_caller(voice_peers: VoicePeers, tmp_path: Path, scenario: str,
                                         provisional: int) -> None:
    """uas_play.xml (after answering) and uas_early_media.xml (in its 183) send the WAV as PCMU: baresip hears it."""
    prompt = tone_wav(tmp_path / "prompt.wav", seconds=1.5, freq_hz=600)
    uas = voice_peers.sipp_uas(scenario, play=prompt, duration_ms=1000)
    caller = voice_peers.baresip(record=True)

    assert caller.command("dial", uas.uri)["ok"]
    caller.wait_event("CALL_ESTABLISHED")
    time.sleep(1.5)  # let the recording cover the prompt: RTP has no "done" signal
    assert caller.command("hangup")["ok"]
    caller.wait_event("CALL_CLOSED")

    assert uas.wait() == SIPP_ALL_CALLS_OK, uas.explain()
    assert provisional in uas.responses()
    if provisional == 183:
        assert caller.events("CALL_PROGRESS"), "baresip saw no early media"
    [heard] = caller.recordings()
    assert rms(heard) > 500, f"{heard} is silent"


# =========================================================================== baresip


def test_baresip_answers_and_records_sipp_audio(voice_peers: VoicePeers) -> None:
    """baresip auto-answers SIPp's uac_call.xml and records the tone SIPp streams to it."""
    callee = voice_peers.baresip(record=True)
    uac = voice_peers.sipp_uac(callee.address, "uac_call.xml", service=callee.user, duration_ms=1500)

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    callee.wait_event("CALL_CLOSED")
    assert 200 in uac.responses()
    [heard] = callee.recordings()
    assert rms(heard) > 500, f"{heard} is silent"


def test_baresip_hangs_up_when_its_wav_ends(voice_peers: VoicePeers, tmp_path: Path) -> None:
    """With hangup_after_play, baresip sends BYE once its prompt has played."""
    prompt = tone_wav(tmp_path / "short.wav", seconds=0.8)
    callee = voice_peers.baresip(play=prompt, hangup_after_play=True)
    uac = voice_peers.sipp_uac(callee.address, "uac_wait_bye.xml", service=callee.user)

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    assert uac.requests() == ["INVITE", "ACK", "BYE"]


def test_baresip_speaks_a_flite_prompt(voice_peers: VoicePeers, tmp_path: Path) -> None:
    """A flite prompt (16 kHz) is resampled for baresip, which plays it into the call."""
    prompt = speech_wav(tmp_path / "prompt.wav", "Thank you for calling. Please hold.")
    callee = voice_peers.baresip(play=prompt, record=True)
    uac = voice_peers.sipp_uac(callee.address, "uac_call.xml", service=callee.user, duration_ms=1500)

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    callee.wait_event("CALL_CLOSED")
    [sent] = callee.recordings("enc")
    assert rms(sent) > 200, f"{sent} is silent"


# =========================================================================== Kamailio


def test_kamailio_challenges_then_relays_to_baresip_which_gets_dtmf(voice_peers: VoicePeers) -> None:
    """SIPp -> Kamailio (407, digest) -> baresip: the call is record-routed, DTMF arrives, BYE ends it."""
    callee = voice_peers.baresip()
    proxy = voice_peers.kamailio(forward_to=callee.address, user="alice", password="secret")
    uac = voice_peers.sipp_uac(proxy.address, "uac_auth.xml", service=callee.user, auth_user="alice",
                               auth_password="secret", dtmf="12#", duration_ms=2500)

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    assert uac.responses()[:2] in ([407, 100], [100, 407])
    assert 200 in uac.responses()
    assert f"Record-Route: <sip:{HOST}:{proxy.port};lr" in uac.messages()
    assert "Proxy-Authenticate: Digest" in uac.messages() and 'qop="auth"' in uac.messages()
    assert callee.wait_dtmf("12#") == "12#"
    callee.wait_event("CALL_CLOSED")
    assert "authenticated as alice" in proxy.log()


def test_kamailio_refuses_a_wrong_password(voice_peers: VoicePeers) -> None:
    """A wrong password gets 403 from Kamailio and the callee never rings."""
    callee = voice_peers.baresip()
    proxy = voice_peers.kamailio(forward_to=callee.address, user="alice", password="secret")
    uac = voice_peers.sipp_uac(proxy.address, "uac_auth.xml", service=callee.user, auth_user="alice",
                               auth_password="nope", duration_ms=300)

    assert uac.wait() == SIPP_SOME_CALL_FAILED, uac.explain()
    assert 403 in uac.responses()
    assert callee.events("CALL_INCOMING") == [] and callee.events("CALL_ESTABLISHED") == []


def test_kamailio_routes_to_a_registered_baresip(voice_peers: VoicePeers) -> None:
    """baresip REGISTERs at Kamailio (401, digest); a call to its AOR finds it there, not at forward_to."""
    refuser = voice_peers.sipp_uas("uas_busy.xml", calls=None)
    proxy = voice_peers.kamailio(forward_to=refuser.address)
    callee = voice_peers.baresip(user="carol", register_with=proxy.address, auth_user="alice",
                                 auth_password="secret")
    uac = voice_peers.sipp_uac(proxy.address, "uac_auth.xml", service="carol", auth_user="alice",
                               auth_password="secret", dtmf="7", duration_ms=1500)

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    assert callee.wait_dtmf("7") == "7"
    assert refuser.requests() == []


# =========================================================================== load and life cycle


def test_sipp_uac_load_with_rtp_against_uas_answer(voice_peers: VoicePeers) -> None:
    """SIPp's own load run: 40 calls, 20 at once, each streaming RTP at the echoing UAS, all succeed."""
    uas = voice_peers.sipp_uas("uas_answer.xml", rtp_echo=True, calls=None)
    uac = voice_peers.sipp_uac(uas.address, "uac_call.xml", calls=40, rate=40, max_concurrent=20,
                               duration_ms=1000)

    assert uac.wait() == SIPP_ALL_CALLS_OK, uac.explain()
    assert uac.call_counts() == (40, 0)
    assert uac.stats()["ResponseTimesetup(C)"]


def test_peers_free_their_ports_when_stopped(tmp_path: Path) -> None:
    """Leaving a peer's context stops its process and releases its SIP port."""
    with SippUas(tmp_path, "uas_answer.xml", calls=None) as uas:
        assert _listening_inodes("udp", uas.port)
    with Baresip(tmp_path) as callee:
        assert _listening_inodes("udp", callee.port)
    assert not uas.running() and not callee.running()
    assert not _listening_inodes("udp", uas.port)
    assert not _listening_inodes("udp", callee.port)
