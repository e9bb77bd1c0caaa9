"""SDP offer/answer and SIP digest answers: pure functions, checked against RFC examples and real peers' texts."""

from __future__ import annotations

import hashlib

import pytest

from probes.voice import sdp
from probes.voice.digest import AuthError, Challenge, Credentials, authorization, choose
from probes.voice.g711 import PCMA, PCMU

SIPP_ANSWER = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-11,16\r\n"
)


def test_offer_lists_codecs_in_order_then_telephone_event():
    """Our offer carries PCMU, PCMA and telephone-event 101 on one audio line, sendrecv, 20 ms."""
    text = sdp.describe("127.0.0.1", 40000, (PCMU, PCMA))
    assert "m=audio 40000 RTP/AVP 0 8 101\r\n" in text
    assert "a=rtpmap:101 telephone-event/8000" in text and "a=sendrecv" in text and text.endswith("\r\n")
    parsed = sdp.parse(text)
    assert (parsed.host, parsed.port, parsed.formats) == ("127.0.0.1", 40000, (0, 8, 101))


def test_offerer_takes_the_answer_codec_and_its_event_payload_type():
    """An answer with PCMA only and telephone-event 101 settles on PCMA, DTMF on 101, RTP to the answer's address."""
    media = sdp.negotiate(sdp.parse(SIPP_ANSWER), (PCMU, PCMA), answerer=False)
    assert media.codec.name == "PCMA" and media.codec.payload_type == 8
    assert media.dtmf_payload_type == 101 and media.remote == ("127.0.0.1", 6000)


def test_answerer_keeps_its_preference_and_the_offer_event_number():
    """Answering an offer with telephone-event at 96 keeps 96 and prefers our first common codec."""
    offer = sdp.parse(
        "v=0\r\nc=IN IP4 127.0.0.2\r\nm=audio 5004 RTP/AVP 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\na=recvonly\r\n"
    )
    media = sdp.negotiate(offer, (PCMU, PCMA), answerer=True)
    assert media.codec.name == "PCMU" and media.dtmf_payload_type == 96 and media.direction == "recvonly"


def test_media_level_connection_overrides_session_level():
    """A c= line under m=audio wins over the session's c= line."""
    parsed = sdp.parse("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 7000 RTP/AVP 0\r\nc=IN IP4 127.0.0.3\r\n")
    assert parsed.host == "127.0.0.3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 5000 RTP/AVP 96\r\n", "no audio stream"),
        ("v=0\r\nm=audio 5000 RTP/AVP 0\r\n", "no connection address"),
    ],
)
def test_unusable_descriptions_say_why(text, message):
    """SDP without audio or without an address raises SdpError naming what is missing."""
    with pytest.raises(sdp.SdpError, match=message):
        sdp.parse(text)


def test_no_common_codec_names_both_sides():
    """G.729 only against our G.711 fails with both codec lists in the message."""
    offer = sdp.parse("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n")
    with pytest.raises(sdp.SdpError, match="far end has G729, we have PCMU, PCMA"):
        sdp.negotiate(offer, (PCMU, PCMA), answerer=True)


def test_rejected_stream_is_an_error():
    """Port 0 in the answer means the far end refused audio."""
    answer = sdp.parse("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n")
    with pytest.raises(sdp.SdpError, match="rejected"):
        sdp.negotiate(answer, (PCMU,), answerer=False)


def test_digest_md5_matches_rfc_2617_example():
    """The RFC 2617 §3.5 example gives its published response (same algorithm SIP uses)."""
    challenge = Challenge.parse(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    header = authorization(challenge, Credentials("Mufasa", "Circle Of Life"), "GET", "/dir/index.html", cnonce="0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in header
    assert "qop=auth" in header and "nc=00000001" in header and 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in header


def test_digest_sha256_without_qop():
    """SHA-256 without qop hashes user:realm:password and method:uri with SHA-256 (RFC 8760)."""
    challenge = Challenge.parse('Digest realm="sip.example", nonce="n1", algorithm=SHA-256')
    header = authorization(challenge, Credentials("alice", "secret"), "INVITE", "sip:bob@sip.example")
    h = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    expected = h(f"{h('alice:sip.example:secret')}:n1:{h('INVITE:sip:bob@sip.example')}")
    assert f'response="{expected}"' in header and "algorithm=SHA-256" in header


def test_strongest_of_several_challenges_is_answered():
    """Offered MD5 and SHA-256, we answer SHA-256."""
    chosen = choose(['Digest realm="r", nonce="1", algorithm=MD5', 'Digest realm="r", nonce="2", algorithm=SHA-256'])
    assert chosen.parameters["nonce"] == "2"


@pytest.mark.parametrize(
    "values, message",
    [
        (['Basic realm="r"'], "no Digest challenge"),
        (['Digest realm="r", nonce="1", algorithm=SHA-512-256'], "unsupported digest algorithm"),
    ],
)
def test_unanswerable_challenges_raise(values, message):
    """Basic or an unknown algorithm is an AuthError saying so."""
    with pytest.raises(AuthError, match=message):
        choose(values)


def test_credentials_for_another_realm_are_not_sent():
    """Credentials pinned to a realm refuse a challenge from another realm."""
    challenge = Challenge.parse('Digest realm="evil", nonce="1"')
    with pytest.raises(AuthError, match="realm 'evil'"):
        authorization(challenge, Credentials("a", "b", realm="good"), "INVITE", "sip:x@y")
