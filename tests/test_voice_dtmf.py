"""DTMF: RFC 4733 sending and receiving, in-band tones and their Goertzel detection, SIP INFO bodies.

Everything is pure computation on bytes. In-band signals are built here with numpy
(tones off frequency, noise) or by the module itself (tone_pcm); the speech that must
not trigger the detector is synthesised with the flite command.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
import warnings
import wave
from pathlib import Path

import numpy as np
import pytest

from probes.voice.dtmf import (
    COLUMN_HZ,
    DIGITS,
    KEYPAD,
    ROW_HZ,
    DetectorLimits,
    EventReceiver,
    EventSender,
    ToneDetector,
    detect_digits,
    info_body,
    parse_info_body,
    tone_pcm,
    tones_pcm,
    validate_digits,
)
from probes.voice.g711 import PCMA, PCMU

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Python 3.11-3.12 warn that audioop leaves the stdlib in 3.13
    import audioop

RATE = 8000
FRAME_BYTES = 320


# =========================================================================== helpers


def unpack(payload: bytes) -> tuple[int, bool, int, int]:
    """An RFC 4733 payload as (event code, end bit, volume, duration), decoded independently of dtmf.py."""
    event, flags, duration = struct.unpack("!BBH", payload)
    assert not flags & 0x40, "the reserved R bit must be zero"
    return event, bool(flags & 0x80), flags & 0x3F, duration


def event_payload(digit: str, duration: int, end: bool = False, volume: int = 10) -> bytes:
    return struct.pack("!BBH", DIGITS.index(digit), (0x80 if end else 0) | volume, duration)


def to_pcm(wave_: np.ndarray) -> bytes:
    return np.clip(np.round(wave_), -32768, 32767).astype("<i2").tobytes()


def from_pcm(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def sines(frequencies: list[float], ms: float, level_dbfs: float = -10.0) -> bytes:
    t = np.arange(round(ms * RATE / 1000)) / RATE
    amplitude = 32767 * 10 ** (level_dbfs / 20)
    return to_pcm(sum(amplitude * np.sin(2 * np.pi * f * t) for f in frequencies))


def key_frequencies(digit: str) -> tuple[float, float]:
    row = next(index for index, keys in enumerate(KEYPAD) if digit in keys)
    return ROW_HZ[row], COLUMN_HZ[KEYPAD[row].index(digit)]


def white_noise(samples: int, rms_dbfs: float, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 32767 * 10 ** (rms_dbfs / 20), samples)


def heard(pcm: bytes, limits: DetectorLimits = DetectorLimits()) -> str:
    return "".join(found.digit for found in detect_digits(pcm, limits))


def silence(ms: float) -> bytes:
    return bytes(2 * round(ms * RATE / 1000))


# =========================================================================== dial strings


def test_dial_string_upper_cases_letters_and_keeps_pauses():
    """validate_digits accepts the sixteen digits in either case and ',' pauses, returning upper case."""
    assert validate_digits("0123456789*#abcd,ABCD") == "0123456789*#ABCD,ABCD"
    assert validate_digits("") == ""


@pytest.mark.parametrize("text, bad", [("12x4", "'x'"), ("1 2", "' '"), ("5e", "'e'"), ("١", "'١'")])
def test_dial_string_rejects_other_characters_naming_them(text, bad):
    """A character that is not a digit or ',' raises ValueError naming that character."""
    with pytest.raises(ValueError, match=bad):
        validate_digits(text)


# =========================================================================== RFC 4733 sending


def run_sender(sender: EventSender) -> list:
    """Every tick's result until the sender says it is done."""
    ticks = []
    while not sender.done:
        ticks.append(sender.tick())
    assert sender.tick() is None, "a finished sender lets audio flow"
    return ticks


def test_event_sender_sends_each_digit_as_growing_updates_then_three_end_packets():
    """'1#' at 100 ms tone, 100 ms gap: durations 160..800, marker first, three equal end packets, gap of None."""
    sender = EventSender("1#", tone_ms=100, gap_ms=100, volume=10)
    ticks = run_sender(sender)

    def event(code: int) -> list:
        """(event, end, volume, duration, marker, new_event) per tick."""
        updates = [(code, False, 10, 160 * n, n == 1, n == 1) for n in range(1, 5)]
        return updates + [(code, True, 10, 800, False, False)] * 3

    assert all(packets is None or len(packets) == 1 for packets in ticks), "one packet per tick"
    got = [None if packets is None else (*unpack(packets[0].payload), packets[0].marker, packets[0].new_event)
           for packets in ticks]
    assert got == event(1) + [None] * 3 + event(11)
    assert sender.total_ticks == len(ticks) == 17


def test_event_sender_next_digit_starts_tone_plus_gap_after_the_previous():
    """Digits start every tone_ms + gap_ms ticks whatever the tone length, like in-band tones_pcm."""
    for tone_ms, gap_ms in [(100, 100), (60, 40), (200, 60)]:
        ticks = run_sender(EventSender("123", tone_ms=tone_ms, gap_ms=gap_ms))
        starts = [n for n, packets in enumerate(ticks) if packets and packets[0].new_event]
        assert starts == [0, (tone_ms + gap_ms) // 20, 2 * (tone_ms + gap_ms) // 20]


def test_event_sender_pause_adds_half_a_second_of_audio():
    """A ',' adds 25 ticks (500 ms) of None between the digits around it."""
    plain = run_sender(EventSender("12"))
    paused = run_sender(EventSender("1,2"))
    assert len(paused) == len(plain) + 25
    assert paused[7 : 7 + 3 + 25] == [None] * 28


def test_event_sender_rejects_bad_arguments():
    """Bad digits, tones of 0 ms or over 8 s (16-bit duration), negative gaps, volumes over 63 raise ValueError."""
    for kwargs in [dict(digits="1x"), dict(digits="1", tone_ms=0), dict(digits="1", tone_ms=9000),
                   dict(digits="1", gap_ms=-20), dict(digits="1", volume=64)]:
        with pytest.raises(ValueError):
            EventSender(**kwargs)


# =========================================================================== RFC 4733 receiving


def test_receiver_reports_one_digit_per_event_despite_three_end_packets():
    """The first end packet gives the digit; its two copies give nothing more."""
    receiver = EventReceiver()
    results = [receiver.feed(event_payload("7", 160 * n), 1000, 0.02 * n) for n in range(1, 5)]
    results += [receiver.feed(event_payload("7", 800, end=True), 1000, 0.1 + 0.02 * n) for n in range(3)]
    digits = [r for r in results if r is not None]
    assert len(digits) == 1
    assert (digits[0].digit, digits[0].duration_ms, digits[0].started_at) == ("7", 100, 0.02)
    assert receiver.flush(10.0) is None


def test_receiver_reports_an_event_whose_end_packets_were_lost_when_the_next_event_starts():
    """Without end packets, the first packet of an event with a new timestamp reports the previous digit."""
    receiver = EventReceiver()
    for n in range(1, 5):
        assert receiver.feed(event_payload("3", 160 * n), 5000, 0.02 * n) is None
    reported = receiver.feed(event_payload("4", 160), 6600, 0.3)
    assert (reported.digit, reported.duration_ms) == ("3", 80)
    assert receiver.feed(event_payload("4", 800, end=True), 6600, 0.4).digit == "4"


def test_receiver_flushes_an_event_that_went_quiet_without_its_end():
    """flush() reports an unfinished event only once 200 ms passed since its last packet, and only once."""
    receiver = EventReceiver()
    receiver.feed(event_payload("9", 160), 0, 1.0)
    receiver.feed(event_payload("9", 320), 0, 1.02)
    assert receiver.flush(1.2) is None
    assert receiver.flush(1.23).digit == "9"
    assert receiver.flush(2.0) is None
    assert receiver.feed(event_payload("9", 480), 0, 2.1) is None, "a late update of a reported event"


def test_receiver_keeps_both_digits_when_a_new_event_arrives_already_ended():
    """An event whose only surviving packets are end packets still counts after an unfinished one."""
    receiver = EventReceiver()
    receiver.feed(event_payload("1", 160), 0, 0.0)
    assert receiver.feed(event_payload("2", 800, end=True), 1600, 0.3).digit == "1"
    assert receiver.feed(event_payload("2", 800, end=True), 1600, 0.32).digit == "2"
    assert receiver.feed(event_payload("2", 800, end=True), 1600, 0.34) is None


def test_receiver_handles_reordered_and_retransmitted_packets():
    """Out-of-order updates, an end before an update and late packets of the previous event give one digit each."""
    receiver = EventReceiver()
    packets = [
        ("5", 320, False, 100), ("5", 160, False, 100), ("5", 480, False, 100), ("5", 480, False, 100),
        ("5", 800, True, 100), ("5", 640, False, 100), ("5", 800, True, 100),
        ("6", 160, False, 1700), ("5", 800, True, 100), ("6", 480, False, 1700), ("6", 320, False, 1700),
        ("6", 800, True, 1700), ("6", 800, True, 1700),
    ]
    reported = [
        receiver.feed(event_payload(digit, duration, end), ts, n * 0.02)
        for n, (digit, duration, end, ts) in enumerate(packets)
    ]
    assert [(r.digit, r.duration_ms) for r in reported if r] == [("5", 100), ("6", 100)]


def test_receiver_reports_the_same_digit_twice_for_two_events():
    """Two presses of one key are two events (two timestamps), so two digits."""
    receiver = EventReceiver()
    got = []
    for ts, start in [(0, 0.0), (1600, 0.2)]:
        for n in range(1, 6):
            got.append(receiver.feed(event_payload("0", 160 * n, end=n == 5), ts, start + 0.02 * n))
    assert [r.digit for r in got if r] == ["0", "0"]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01\x0a\x00",
        b"\x01\x0a\x00\xa0\x00",
        struct.pack("!BBH", 16, 10, 160),  # flash, not a digit
        struct.pack("!BBH", 255, 0x8A, 800),
    ],
)
def test_receiver_rejects_garbage_payloads(payload):
    """Payloads that are not 4 bytes, or carry an event code that is no DTMF digit, raise ValueError."""
    with pytest.raises(ValueError):
        EventReceiver().feed(payload, 0, 0.0)


def test_every_digit_round_trips_from_sender_to_receiver():
    """All sixteen digits sent by EventSender, timestamped as the RTP stream does, come out of EventReceiver."""
    sender, receiver = EventSender(DIGITS, tone_ms=100, gap_ms=60), EventReceiver()
    received, timestamp, tick = [], 0, 0
    while not sender.done:
        for packet in sender.tick() or []:
            if packet.new_event:
                timestamp = (123456 + tick * 160) % 2**32  # the stream freezes its media timestamp per event
            received.append(receiver.feed(packet.payload, timestamp, tick * 0.02))
        tick += 1
    digits = [r for r in received if r is not None]
    assert "".join(r.digit for r in digits) == DIGITS
    assert {r.duration_ms for r in digits} == {100}
    assert [r.started_at for r in digits] == pytest.approx([n * 0.16 for n in range(16)])


# =========================================================================== in-band tones


def test_tone_pcm_holds_the_two_key_frequencies_at_the_asked_level():
    """tone_pcm('6') is 770 Hz + 1477 Hz, each sine peaking at level_dbfs; twist lowers the quieter tone."""
    samples = from_pcm(tone_pcm("6", duration_ms=1000, level_dbfs=-10.0, twist_db=6.0))
    assert len(samples) == 8000
    spectrum = np.abs(np.fft.rfft(samples)) * 2 / len(samples)  # 1 Hz bins, sine amplitude
    peak = 32767 * 10 ** (-10 / 20)
    assert spectrum[770] == pytest.approx(peak, rel=0.01)
    assert spectrum[1477] == pytest.approx(peak * 10 ** (-6 / 20), rel=0.01)
    spectrum[[770, 1477]] = 0
    assert spectrum.max() < 0.001 * peak


def test_tones_pcm_lays_digits_gaps_and_pauses_end_to_end():
    """tones_pcm('1,2', 100, 50) is 100 ms tone, 500 ms pause, 50 ms gap, 100 ms tone; bad input raises ValueError."""
    assert len(tones_pcm("1,2", tone_ms=100, gap_ms=50)) == 2 * 8 * (100 + 500 + 50 + 100)
    with pytest.raises(ValueError):
        tone_pcm("12")
    with pytest.raises(ValueError):
        tones_pcm("1?")


# =========================================================================== in-band detection


def test_every_digit_is_detected_at_its_place():
    """All sixteen digits from tones_pcm are detected in order, start and end within 20 ms of the tones'."""
    pcm = silence(300) + tones_pcm(DIGITS, tone_ms=100, gap_ms=100) + silence(300)
    found = detect_digits(pcm)
    assert "".join(f.digit for f in found) == DIGITS
    for n, f in enumerate(found):
        assert f.start_s == pytest.approx(0.3 + n * 0.2, abs=0.02)
        assert f.end_s == pytest.approx(0.4 + n * 0.2, abs=0.02)


@pytest.mark.parametrize("codec", [PCMU, PCMA], ids=lambda c: c.name)
def test_digits_survive_g711(codec):
    """Tones encoded and decoded with G.711 mu-law or A-law are all detected."""
    pcm = codec.decode(codec.encode(tones_pcm(DIGITS)))
    assert heard(pcm) == DIGITS


def test_short_tones_with_short_gaps_are_detected():
    """50 ms tones with 50 ms gaps (above the Q.24 40 ms minimum) are all detected, the same key twice too."""
    assert heard(tones_pcm(DIGITS + "55", tone_ms=50, gap_ms=50)) == DIGITS + "55"


def test_blips_and_dropouts_do_not_make_digits():
    """20 ms bursts make no digit; a key with 10 ms drop-outs stays one digit; a 40 ms pause makes two."""
    assert heard(tones_pcm("1234", tone_ms=20, gap_ms=100)) == ""
    held = silence(10).join([tone_pcm("8", 100)] * 4)
    assert heard(held) == "8"
    assert heard(tone_pcm("8", 100) + silence(40) + tone_pcm("8", 100)) == "88"


def test_quiet_tones_are_detected_and_very_quiet_ones_ignored():
    """Tones at -25 dBFS each are detected; at -45 dBFS they are under the energy threshold."""
    assert heard(tones_pcm(DIGITS, level_dbfs=-25.0)) == DIGITS
    assert heard(tones_pcm(DIGITS, level_dbfs=-45.0)) == ""


def test_twist_within_limits_is_accepted_and_beyond_rejected():
    """Every digit with 8 dB normal or 4 dB reverse twist is detected; with 12 dB or 8 dB it is not."""

    def with_twist(twist_db: float) -> bytes:
        return b"".join(tone_pcm(d, 100, -10.0, twist_db) + silence(100) for d in DIGITS)

    assert heard(with_twist(8.0)) == DIGITS
    assert heard(with_twist(-4.0)) == DIGITS
    assert heard(with_twist(12.0)) == ""
    assert heard(with_twist(-8.0)) == ""


def test_twist_limits_are_configurable():
    """A detector allowing 14 dB of normal twist hears what the default rejects."""
    twisted = b"".join(tone_pcm(d, 100, -10.0, 12.0) + silence(100) for d in DIGITS)
    assert heard(twisted, DetectorLimits(normal_twist_db=14.0)) == DIGITS


@pytest.mark.parametrize("deviation", [-0.015, 0.015])
def test_tones_off_frequency_by_q24_tolerance_are_detected(deviation):
    """Q.24: tones up to 1.5% off their nominal frequencies must be detected."""
    pcm = b"".join(sines([f * (1 + deviation) for f in key_frequencies(d)], 100) + silence(100) for d in DIGITS)
    assert heard(pcm) == DIGITS


@pytest.mark.parametrize("deviation", [-0.035, 0.035])
def test_tones_far_off_frequency_are_rejected(deviation):
    """Q.24: tones 3.5% off their nominal frequencies must not be detected."""
    pcm = b"".join(sines([f * (1 + deviation) for f in key_frequencies(d)], 100) + silence(100) for d in DIGITS)
    assert heard(pcm) == ""


def test_white_noise_makes_no_digit():
    """20 s of white noise at -20 dBFS and at -6 dBFS rms hold no digit."""
    for rms_dbfs in (-20.0, -6.0):
        assert heard(to_pcm(white_noise(20 * RATE, rms_dbfs))) == ""


def test_one_frequency_alone_makes_no_digit():
    """Each of the eight DTMF frequencies alone (a row without a column, or the reverse) holds no digit."""
    for frequency in ROW_HZ + COLUMN_HZ:
        assert heard(sines([frequency], 500)) == "", frequency


def test_other_call_progress_tones_make_no_digit():
    """Dial tone, ringback and busy tone (350+440, 440+480, 480+620 Hz) hold no digit."""
    for pair in ([350, 440], [440, 480], [480, 620]):
        assert heard(sines(pair, 1000)) == ""


def test_digits_are_detected_in_noise_at_15_db_snr():
    """Tones mixed with white noise 15 dB under the tone power are all detected, 50 ms tones too."""
    for tone_ms in (100, 50):
        tones = from_pcm(tones_pcm(DIGITS, tone_ms=tone_ms, gap_ms=tone_ms))
        tone_power = 2 * (32767 * 10 ** (-10 / 20)) ** 2 / 2
        noise = white_noise(len(tones), 10 * np.log10(tone_power / 10**1.5 / 32767**2), seed=tone_ms)
        assert heard(to_pcm(tones + noise)) == DIGITS


SPEECH = [
    "Thank you for calling. Press one for billing, press two for support, press three to hear your balance.",
    "Your balance is four hundred and twenty dollars and fifteen cents.",
    "Please enter your account number followed by the pound key, then press star to return to the main menu.",
    "For sales press five. To speak with an agent press zero. Nine eight seven six five four three two one.",
    "Hello, hello! Mmmm, beep beep. Oooooh. Eeeeeee. La la la la la la la.",
]


def flite_speech(folder: Path) -> bytes:
    """The SPEECH sentences in three flite voices, as 8 kHz pcm."""
    pcm = b""
    for voice in ("rms", "slt", "kal"):
        for n, text in enumerate(SPEECH):
            path = folder / f"{voice}-{n}.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, timeout=60)
            with wave.open(str(path)) as wav:
                assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
                rate, frames = wav.getframerate(), wav.readframes(wav.getnframes())
            pcm += audioop.ratecv(frames, 2, 1, rate, RATE, None)[0] if rate != RATE else frames
    return pcm


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite (Debian package flite) is needed to synthesise speech")
def test_speech_makes_no_digit(tmp_path):
    """Over 20 s of synthetic speech in three voices, full of spoken numbers, holds no digit, even 10 dB louder."""
    speech = flite_speech(tmp_path)
    assert len(speech) / 2 / RATE > 20
    assert detect_digits(speech) == []
    assert detect_digits(audioop.mul(speech, 2, 3.16)) == []
    assert detect_digits(PCMU.decode(PCMU.encode(speech))) == []


def test_streaming_detector_fed_frames_matches_whole_recording():
    """ToneDetector fed 20 ms frames then finish() finds the digits detect_digits finds, times within 20 ms."""
    tones = from_pcm(silence(130) + tones_pcm("159#D0*", tone_ms=70, gap_ms=90) + silence(50) + tone_pcm("2", 80))
    pcm = to_pcm(tones + white_noise(len(tones), -35.0))
    whole = detect_digits(pcm)
    detector = ToneDetector()
    streamed = []
    for at in range(0, len(pcm), FRAME_BYTES):
        streamed += detector.feed(pcm[at : at + FRAME_BYTES])
    streamed += detector.finish()
    assert "".join(f.digit for f in whole) == "159#D0*2"
    assert [f.digit for f in streamed] == [f.digit for f in whole]
    for one, other in zip(streamed, whole):
        assert one.start_s == pytest.approx(other.start_s, abs=0.02)
        assert one.end_s == pytest.approx(other.end_s, abs=0.02)


def test_detection_is_fast_enough_for_live_calls():
    """detect_digits gets through 60 s of tones in noise well under a second (asserted under 2 s)."""
    one_round = tones_pcm(DIGITS, tone_ms=80, gap_ms=80) + silence(80)
    rounds = from_pcm(one_round * (60 * RATE * 2 // len(one_round) + 1))[: 60 * RATE]
    pcm = to_pcm(rounds + white_noise(len(rounds), -30.0))
    started = time.perf_counter()
    found = detect_digits(pcm)
    elapsed = time.perf_counter() - started
    assert len(found) > 300
    assert elapsed < 2.0, f"{elapsed:.2f} s for 60 s of audio"


# =========================================================================== SIP INFO


def test_info_body_is_dtmf_relay():
    """info_body('5', 160) is application/dtmf-relay with Signal and Duration lines."""
    assert info_body("5", 160) == ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n")
    assert info_body("#", 100)[1] == b"Signal=#\r\nDuration=100\r\n"
    with pytest.raises(ValueError):
        info_body("55", 100)


def test_info_bodies_round_trip_every_digit():
    """parse_info_body reads back every digit info_body writes."""
    assert [parse_info_body(*info_body(digit, 250)) for digit in DIGITS] == list(DIGITS)


@pytest.mark.parametrize(
    "content_type, body, digit",
    [
        ("Application/DTMF-Relay; charset=us-ascii", b"signal = 9\nduration = 100\n", "9"),
        ("application/dtmf-relay", b"Duration=100\r\nSignal=d\r\n", "D"),
        ("application/dtmf-relay", b"Signal=10\r\nDuration=100\r\n", "*"),
        ("application/dtmf-relay", b"Signal=11\r\n", "#"),
        ("application/dtmf", b"7", "7"),
        ("application/dtmf", b"#\r\n", "#"),
        ("application/dtmf-relay", b"Duration=100\r\n", None),
        ("application/dtmf-relay", b"Signal=X\r\n", None),
        ("application/dtmf-relay", b"Signal=16\r\n", None),
        ("application/dtmf", b"", None),
        ("text/plain", b"Signal=5\r\n", None),
        ("application/sdp", b"v=0\r\n", None),
    ],
)
def test_parse_info_body_accepts_common_forms(content_type, body, digit):
    """dtmf-relay (any case, spaces, event codes for * and #) and plain application/dtmf give the digit; others None."""
    assert parse_info_body(content_type, body) == digit
