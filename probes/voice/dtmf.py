"""DTMF three ways: RFC 4733 telephone events, in-band tones, and SIP INFO bodies.

Audio is pcm (8 kHz mono signed 16-bit little-endian); RFC 4733 durations count
8 kHz timestamp units, and the sender is paced by the RTP stream's 20 ms clock.
A dial string holds the sixteen DTMF digits and ',' for a 500 ms pause (the
dialler convention), so an IVR scenario can wait for a menu between digits.

In-band detection follows ITU-T Q.24 and the common Goertzel detector design:
per 12.75 ms block, the power at the eight DTMF frequencies and at the column
tones' 2nd harmonics; level, purity, twist, tone-share-of-energy and harmonic
checks; then a debouncer that wants the digit in 3 blocks in a row (10 ms apart)
before it counts and missing from 3 before it ends.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from dataclasses import dataclass

import numpy as np

from probes.voice.audio import FRAME_SAMPLES, FULL_SCALE, SAMPLE_RATE

DIGITS = "0123456789*#ABCD"
EVENT_CODES = {digit: code for code, digit in enumerate(DIGITS)}  # RFC 4733 §3.2: 0-9, * 10, # 11, A-D 12-15
PAUSE = ","
PAUSE_MS = 500
TICK_MS = 1000 * FRAME_SAMPLES // SAMPLE_RATE

ROW_HZ = (697.0, 770.0, 852.0, 941.0)
COLUMN_HZ = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")
_KEY_POSITIONS = {key: (row, column) for row, keys in enumerate(KEYPAD) for column, key in enumerate(keys)}

_DIAL_CHARACTERS = frozenset(DIGITS + PAUSE)


def validate_digits(text: str) -> str:
    """The dial string in upper case; ',' is a 500 ms pause. ValueError names the first bad character."""
    for position, char in enumerate(text):
        if char.upper() not in _DIAL_CHARACTERS:
            raise ValueError(f"{char!r} at position {position} of {text!r} is not a DTMF digit (0-9 * # A-D) or ','")
    return text.upper()


def _single_digit(digit: str) -> str:
    if len(digit) != 1 or digit.upper() not in DIGITS:
        raise ValueError(f"{digit!r} is not one DTMF digit (0-9 * # A-D)")
    return digit.upper()


def ticks_for(ms: float) -> int:
    """How many 20 ms clock ticks cover ms, rounded up."""
    return math.ceil(ms / TICK_MS)


def samples_for(ms: float) -> int:
    return round(ms * SAMPLE_RATE / 1000)


# =========================================================================== RFC 4733 events


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 event payload: digit, end bit, volume (-dBm0, 0-63), duration in 8 kHz units."""

    digit: str
    end: bool
    volume: int
    duration: int

    def encode(self) -> bytes:
        return struct.pack("!BBH", EVENT_CODES[self.digit], (0x80 if self.end else 0) | self.volume, self.duration)

    @classmethod
    def decode(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) != 4:
            raise ValueError(f"an RFC 4733 event payload is 4 bytes, got {len(payload)}")
        code, flags, duration = struct.unpack("!BBH", payload)
        if code >= len(DIGITS):
            raise ValueError(f"RFC 4733 event code {code} is not a DTMF digit")
        return cls(DIGITS[code], bool(flags & 0x80), flags & 0x3F, duration)  # the R bit (0x40) is ignored, §2.3.4


@dataclass(frozen=True, slots=True)
class EventPacket:
    """What the RTP stream sends on one tick instead of audio.

    marker is the RTP marker bit; new_event tells the stream to take the current
    media timestamp as this event's RTP timestamp and hold it until the next event.
    """

    payload: bytes
    marker: bool
    new_event: bool


class EventSender:
    """Sends a dial string as RFC 4733 events, one call of tick() per 20 ms media clock tick.

    Each digit: a first packet (marker, duration 160), one update per tick growing by
    160, and on the tick the tone reaches tone_ms the end packet, sent three times on
    three consecutive ticks. RFC 4733 §2.5.1.4 asks for the three copies "at the
    interval used by the source for updates", as pjmedia does: a burst of loss then
    cannot take all three. gap_ms counts from the first end packet to the next digit,
    so digits start every tone_ms + gap_ms, like the in-band tones of tones_pcm().
    A ',' adds PAUSE_MS of silence; tick() returns None when audio should flow.
    """

    END_COPIES = 3

    def __init__(self, digits: str, tone_ms: int = 100, gap_ms: int = 100, volume: int = 10):
        if not 0 < tone_ms <= 8000:
            raise ValueError(f"tone_ms must be 1-8000, got {tone_ms}")  # the 16-bit duration; longer needs segments
        if gap_ms < 0:
            raise ValueError(f"gap_ms must not be negative, got {gap_ms}")
        if not 0 <= volume <= 63:
            raise ValueError(f"volume is 0-63 (-dBm0), got {volume}")
        self.digits = validate_digits(digits)
        self._ticks = self._schedule(ticks_for(tone_ms), ticks_for(gap_ms), volume)
        self._next = 0

    def _schedule(self, tone_ticks: int, gap_ticks: int, volume: int) -> list[list[EventPacket] | None]:
        silent_ticks_between = max(0, gap_ticks - (self.END_COPIES - 1))  # the last end copies fall in the gap
        ticks: list[list[EventPacket] | None] = []
        sent_a_digit = False
        for char in self.digits:
            if char == PAUSE:
                ticks.extend([None] * ticks_for(PAUSE_MS))
                continue
            if sent_a_digit:
                ticks.extend([None] * silent_ticks_between)
            ticks.extend([packet] for packet in self._event_packets(char, tone_ticks, volume))
            sent_a_digit = True
        return ticks

    def _event_packets(self, digit: str, tone_ticks: int, volume: int) -> list[EventPacket]:
        packets = []
        for tick in range(1, tone_ticks + 1):
            event = TelephoneEvent(digit, tick == tone_ticks, volume, tick * FRAME_SAMPLES)
            packets.append(EventPacket(event.encode(), marker=tick == 1, new_event=tick == 1))
        end_copy = EventPacket(packets[-1].payload, marker=False, new_event=False)
        return packets + [end_copy] * (self.END_COPIES - 1)

    @property
    def total_ticks(self) -> int:
        """How many ticks sending the whole string takes."""
        return len(self._ticks)

    @property
    def done(self) -> bool:
        """True once the last end packet (or a trailing pause) has been handed out."""
        return self._next >= len(self._ticks)

    def tick(self) -> list[EventPacket] | None:
        """The packets to send on this tick instead of audio, or None to send audio as usual."""
        if self.done:
            return None
        packets = self._ticks[self._next]
        self._next += 1
        return packets


@dataclass(frozen=True, slots=True)
class ReceivedDigit:
    """A digit received as RFC 4733 events; started_at is the arrival time of its first packet seen."""

    digit: str
    duration_ms: int
    started_at: float


@dataclass(slots=True)
class _ReceivingEvent:
    timestamp: int
    digit: str
    started_at: float
    last_arrival: float
    duration: int
    ended: bool
    reported: bool = False


class EventReceiver:
    """Turns RFC 4733 event packets into digits, one per event.

    An event is identified by its RTP timestamp. Its digit is reported on its first
    end packet; when the end packets are lost, when a packet of a newer event arrives
    or, if none does, by flush() once FLUSH_AFTER_S passed without a packet. Copies
    of end packets, retransmitted updates and late packets of an event already
    reported are ignored.
    """

    FLUSH_AFTER_S = 0.2
    _REMEMBERED_EVENTS = 8  # enough to recognise late packets of recent events after reordering

    def __init__(self) -> None:
        self._current: _ReceivingEvent | None = None
        self._finished: deque[int] = deque(maxlen=self._REMEMBERED_EVENTS)

    def feed(self, payload: bytes, rtp_timestamp: int, arrival: float) -> ReceivedDigit | None:
        """The digit this packet completes, if any. ValueError for a payload that is not a DTMF event."""
        event = TelephoneEvent.decode(payload)
        if rtp_timestamp in self._finished:
            return None  # a late packet of an event already over
        current = self._current
        if current is not None and current.timestamp == rtp_timestamp:
            current.duration = max(current.duration, event.duration)
            current.last_arrival = arrival
            current.ended = current.ended or event.end
            return self._report(current) if current.ended else None
        # A packet of a new event: the previous one is over, whether or not its end arrived.
        previous = None
        if current is not None:
            previous = self._report(current)
            self._finished.append(current.timestamp)
        self._current = _ReceivingEvent(rtp_timestamp, event.digit, arrival, arrival, event.duration, event.end)
        if previous is not None:
            return previous  # one digit per call: a new event already over waits for its next end copy or flush()
        return self._report(self._current) if event.end else None

    def flush(self, now: float) -> ReceivedDigit | None:
        """The digit of an event that went quiet FLUSH_AFTER_S ago without its end packet."""
        current = self._current
        if current is None:
            return None
        if current.ended or now - current.last_arrival >= self.FLUSH_AFTER_S:
            return self._report(current)
        return None

    @staticmethod
    def _report(event: _ReceivingEvent) -> ReceivedDigit | None:
        if event.reported:
            return None
        event.reported = True
        return ReceivedDigit(event.digit, round(event.duration * 1000 / SAMPLE_RATE), event.started_at)


# =========================================================================== in-band tones


def _amplitude(level_dbfs: float) -> float:
    return FULL_SCALE * 10 ** (level_dbfs / 20)


def tone_pcm(digit: str, duration_ms: float = 100, level_dbfs: float = -10.0, twist_db: float = 0.0) -> bytes:
    """One digit's two sines as pcm, each at level_dbfs (a sine's peak relative to full scale).

    twist_db > 0 makes the row tone louder than the column tone by that much (normal
    twist), < 0 the column louder (reverse twist); the louder one stays at level_dbfs.
    """
    row, column = _KEY_POSITIONS[_single_digit(digit)]
    row_level = level_dbfs + min(0.0, twist_db)
    column_level = level_dbfs - max(0.0, twist_db)
    t = np.arange(samples_for(duration_ms)) / SAMPLE_RATE
    wave = _amplitude(row_level) * np.sin(2 * np.pi * ROW_HZ[row] * t)
    wave += _amplitude(column_level) * np.sin(2 * np.pi * COLUMN_HZ[column] * t)
    return np.round(wave).astype("<i2").tobytes()


def tones_pcm(digits: str, tone_ms: float = 100, gap_ms: float = 100, level_dbfs: float = -10.0) -> bytes:
    """A dial string as in-band tones: tone_ms of each digit, gap_ms of silence between, PAUSE_MS for ','."""
    pieces = []
    placed_a_digit = False
    for char in validate_digits(digits):
        if char == PAUSE:
            pieces.append(bytes(2 * samples_for(PAUSE_MS)))
            continue
        if placed_a_digit:
            pieces.append(bytes(2 * samples_for(gap_ms)))
        pieces.append(tone_pcm(char, tone_ms, level_dbfs))
        placed_a_digit = True
    return b"".join(pieces)


# =========================================================================== in-band detection

# Blocks of 102 samples (12.75 ms, the common half of the classic 205): their 78 Hz wide
# bins lose at most 1.4 dB on a tone 1.5% off frequency, which Q.24 says must still be
# detected; 205-sample bins lose 6.6 dB there and fail the share and twist checks.
BLOCK_SAMPLES = 102
HOP_SAMPLES = 80  # a block starts every 10 ms, two per 20 ms frame: the debouncer's time step
BATCH_BLOCKS = 10  # a live detector analyses 100 ms at a time: numpy's per-call cost dominates smaller batches

# Goertzel power at frequency f over a block is |sum x[n] e^(-j 2 pi f n / fs)|^2; one matrix
# product against these cosines and sines computes it for every block and frequency at
# once, which in numpy is far cheaper than running the recurrence sample by sample.
# Only the column tones' 2nd harmonics (2.4-3.3 kHz) are measured: the rows' (1.4-1.9 kHz)
# lie within a bin of the column tones, whose leakage would make real DTMF fail the check.
_FREQUENCIES_HZ = np.array(ROW_HZ + COLUMN_HZ + tuple(2 * hz for hz in COLUMN_HZ))
_PHASES = 2 * np.pi * np.outer(np.arange(BLOCK_SAMPLES), _FREQUENCIES_HZ) / SAMPLE_RATE
_BASIS = np.hstack((np.cos(_PHASES), np.sin(_PHASES)))
_BANDS = _FREQUENCIES_HZ.size
_DIGIT_AT = np.array([[DIGITS.index(key) for key in keys] for keys in KEYPAD]).ravel()  # 4 * row + column

# A block's twist reading swings up to 1.6 dB around the true twist (the louder tone's
# leakage into the other's bin), 2.4 dB for tones 1.5% off: a block may exceed the
# limits by this much, so that tones within them are not lost to the swing.
TWIST_RIPPLE_DB = 2.0


@dataclass(frozen=True, slots=True)
class DetectorLimits:
    """What a block must show to start a digit. Defaults follow ITU-T Q.24 and common detectors."""

    min_level_dbfs: float = -36.0  # each tone (sine peak); far above line noise, 11 dB under the -25 dBFS tested
    normal_twist_db: float = 8.0  # accepted: row tone louder than the column tone by this much
    reverse_twist_db: float = 4.0  # accepted: column tone louder than the row tone by this much
    purity_db: float = 6.0  # the strongest row (column) above the next strongest row (column)
    min_tone_share: float = 0.6  # of the block's energy in the two tones; speech stays under 0.4
    harmonic_db: float = 10.0  # the column tone above its 2nd harmonic; voiced speech is rich in harmonics


def _ratio(db: float) -> float:
    return 10 ** (db / 10)


def _block_digits(samples: np.ndarray, count: int, limits: DetectorLimits) -> tuple[np.ndarray, np.ndarray]:
    """For the first count blocks (one every HOP_SAMPLES): the index into DIGITS of the
    digit each could start (every check passed) and of the digit each sustains (its
    strongest row and column with enough level and share), -1 for none.

    Sustaining asks less so that a digit already sounding is not cut in two by one
    block's twist or purity reading dipping past a limit.
    """
    step = samples.strides[0]
    blocks = np.lib.stride_tricks.as_strided(
        samples, shape=(count, BLOCK_SAMPLES), strides=(HOP_SAMPLES * step, step), writeable=False
    )
    parts = blocks @ _BASIS
    parts *= parts
    power = parts[:, :_BANDS] + parts[:, _BANDS:]
    energy = np.einsum("ij,ij->i", blocks, blocks)
    groups = power[:, :8].reshape(count, 2, 4)  # [block, row or column group, frequency]
    best = groups.argmax(axis=2)
    ranked = np.sort(groups, axis=2)
    top, runner_up = ranked[:, :, 3], ranked[:, :, 2]
    row, column = top[:, 0], top[:, 1]
    harmonic = power[np.arange(count), 8 + best[:, 1]]
    pair = _DIGIT_AT[best[:, 0] * 4 + best[:, 1]]

    min_power = (_amplitude(limits.min_level_dbfs) * BLOCK_SAMPLES / 2) ** 2  # a sine of amplitude A: (A N / 2)^2
    sustains = (top >= min_power).all(axis=1)
    # A sine's (2 / N) |X|^2 equals its energy over the block, so this is the tones' share.
    sustains &= (row + column) * (2 / BLOCK_SAMPLES) >= limits.min_tone_share * energy
    starts = sustains & (top >= runner_up * _ratio(limits.purity_db)).all(axis=1)
    starts &= row <= column * _ratio(limits.normal_twist_db + TWIST_RIPPLE_DB)
    starts &= column <= row * _ratio(limits.reverse_twist_db + TWIST_RIPPLE_DB)
    starts &= column >= harmonic * _ratio(limits.harmonic_db)
    return np.where(starts, pair, -1), np.where(sustains, pair, -1)


@dataclass(frozen=True, slots=True)
class DetectedDigit:
    """A digit heard in-band; times in seconds from the first sample fed (the blocks that held it)."""

    digit: str
    start_s: float
    end_s: float


class ToneDetector:
    """Streaming in-band DTMF detection: feed pcm of any length (20 ms frames of a live call).

    A block holds a digit only when ~60% or more of it is tone, so with a block every
    10 ms, ON_BLOCKS in a row come from any tone of 33 ms or more and from none under
    22 ms (Q.24: accept 40 ms); OFF_BLOCKS in a row without the digit come from any
    pause of 30 ms or more and from no drop-out of 10 ms, so a held key is one digit
    and the same key pressed twice with a 40 ms pause is two. feed() returns digits
    once they have ended, up to BATCH_BLOCKS later; finish() ends the audio.
    """

    ON_BLOCKS = 3
    OFF_BLOCKS = 3

    def __init__(self, limits: DetectorLimits = DetectorLimits()):
        self.limits = limits
        self._pending = bytearray()  # pcm from the start of the next block on
        self._next_block = 0  # index of the block that starts at _pending[0]
        self._run_digit = -1  # the digit (DIGITS index) of the latest run of equal blocks
        self._run_start = 0
        self._run_blocks = 0
        self._digit = -1  # the digit sounding now, once a run confirmed it
        self._digit_start = 0
        self._last_held = 0

    def feed(self, pcm: bytes) -> list[DetectedDigit]:
        """Digits that ended within the audio fed so far."""
        if len(pcm) % 2:
            raise ValueError(f"pcm must be whole 16-bit samples, got {len(pcm)} bytes")
        self._pending += pcm
        if len(self._pending) < 2 * (BLOCK_SAMPLES + (BATCH_BLOCKS - 1) * HOP_SAMPLES):
            return []
        return self._analyse()

    def finish(self) -> list[DetectedDigit]:
        """At the end of the audio, which counts as followed by silence: the digits not yet returned."""
        self._pending += bytes(2 * BLOCK_SAMPLES)
        ended = self._analyse()
        if self._digit >= 0:
            ended.append(self._close())
        return ended

    def _analyse(self) -> list[DetectedDigit]:
        count = (len(self._pending) // 2 - BLOCK_SAMPLES) // HOP_SAMPLES + 1  # feed() and finish() make it >= 1
        samples = np.frombuffer(self._pending, dtype="<i2").astype(np.float64)
        starts, sustains = _block_digits(samples, count, self.limits)
        del self._pending[: 2 * count * HOP_SAMPLES]
        first = self._next_block
        self._next_block += count
        if self._digit < 0 and not (starts >= 0).any():
            self._run_digit = -1  # silence or speech: nothing to track
            return []
        return self._debounce(first, starts.tolist(), sustains.tolist())

    def _debounce(self, first: int, starts: list[int], sustains: list[int]) -> list[DetectedDigit]:
        ended = []
        for block, (start, sustain) in enumerate(zip(starts, sustains), start=first):
            if start >= 0 and start == self._run_digit:
                self._run_blocks += 1
            else:
                self._run_digit, self._run_start, self._run_blocks = start, block, 1
            if self._digit >= 0:
                if sustain == self._digit:
                    self._last_held = block
                elif block - self._last_held >= self.OFF_BLOCKS:
                    ended.append(self._close())
            if self._digit < 0 and start >= 0 and self._run_blocks >= self.ON_BLOCKS:
                self._digit, self._digit_start, self._last_held = start, self._run_start, block
        return ended

    def _close(self) -> DetectedDigit:
        digit = DetectedDigit(
            DIGITS[self._digit],
            self._digit_start * HOP_SAMPLES / SAMPLE_RATE,
            (self._last_held * HOP_SAMPLES + BLOCK_SAMPLES) / SAMPLE_RATE,
        )
        self._digit = -1
        return digit


def detect_digits(pcm: bytes, limits: DetectorLimits = DetectorLimits()) -> list[DetectedDigit]:
    """Every DTMF digit in a whole recording."""
    detector = ToneDetector(limits)
    return detector.feed(pcm) + detector.finish()


# =========================================================================== SIP INFO

DTMF_RELAY = "application/dtmf-relay"
DTMF_PLAIN = "application/dtmf"


def info_body(digit: str, duration_ms: int = 100) -> tuple[str, bytes]:
    """The Content-Type and body of a SIP INFO carrying one digit, in the common dtmf-relay form."""
    if duration_ms <= 0:
        raise ValueError(f"duration_ms must be positive, got {duration_ms}")
    return DTMF_RELAY, f"Signal={_single_digit(digit)}\r\nDuration={int(duration_ms)}\r\n".encode("ascii")


def parse_info_body(content_type: str, body: bytes) -> str | None:
    """The digit a SIP INFO carries, or None when it carries no DTMF digit.

    application/dtmf-relay has a "Signal=" line; application/dtmf is just the digit.
    Some UAs write * and # as their event codes 10 and 11, so codes are accepted too.
    """
    media_type = content_type.partition(";")[0].strip().lower()
    text = body.decode("latin-1")
    if media_type == DTMF_RELAY:
        for line in text.splitlines():
            name, equals, value = line.partition("=")
            if equals and name.strip().lower() == "signal":
                return _signal_digit(value.strip())
        return None
    if media_type == DTMF_PLAIN:
        return _signal_digit(text.strip())
    return None


def _signal_digit(value: str) -> str | None:
    if len(value) == 1 and value.upper() in DIGITS:
        return value.upper()
    if value.isascii() and value.isdigit() and int(value) < len(DIGITS):
        return DIGITS[int(value)]
    return None
