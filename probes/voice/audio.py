"""Audio in and out of a call: what a call plays (sources) and what it heard (Recording).

Everything here is "pcm": 8 kHz mono signed 16-bit little-endian samples, sent and
received in 20 ms frames of 160 samples.
"""

from __future__ import annotations

import bisect
import wave
import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from probes.voice.g711 import Codec

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydub warns at import when ffmpeg is absent; WAV needs no ffmpeg
    from pydub import AudioSegment

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160
FRAME_BYTES = FRAME_SAMPLES * 2
FULL_SCALE = 32767
_RTP_TIMESTAMP_MOD = 1 << 32
_REANCHOR_S = 10


class Source(Protocol):
    """What a call plays: one frame per 20 ms tick."""

    def read_frame(self) -> bytes | None:
        """The next FRAME_BYTES of pcm (the last frame padded with silence), or None when finished."""
        ...


class PcmSource:
    """Plays a pcm buffer once. Several sources may share one buffer: none of them copies it."""

    __slots__ = ("_pcm", "_at")

    def __init__(self, pcm: bytes):
        if len(pcm) % 2:
            raise ValueError(f"pcm must be whole 16-bit samples, got {len(pcm)} bytes")
        self._pcm = pcm
        self._at = 0

    def read_frame(self) -> bytes | None:
        at = self._at
        frame = self._pcm[at : at + FRAME_BYTES]
        if not frame:
            return None
        self._at = at + FRAME_BYTES
        if len(frame) < FRAME_BYTES:
            frame += bytes(FRAME_BYTES - len(frame))
        return frame


def read_wav(path: str | Path) -> bytes:
    """Any PCM WAV file as pcm (resampled to 8 kHz, mixed down to mono, 16-bit)."""
    try:
        # The constructor parses WAV itself; AudioSegment.from_file would fall back to ffmpeg.
        segment = AudioSegment(data=Path(path).read_bytes())
        segment = segment.set_channels(1).set_frame_rate(SAMPLE_RATE).set_sample_width(2)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable WAV file ({exc})") from exc
    return segment.raw_data


def wav_source(path: str | Path) -> PcmSource:
    return PcmSource(read_wav(path))


def tone(freq_hz: float, duration_s: float, level_dbfs: float = -12.0) -> bytes:
    """A sine as pcm; the level is its peak relative to full scale (0 dBFS peaks at 32767)."""
    t = np.arange(round(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    amplitude = FULL_SCALE * 10 ** (level_dbfs / 20)
    return np.round(amplitude * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes()


def silence(duration_s: float) -> bytes:
    return bytes(2 * round(duration_s * SAMPLE_RATE))


class Recording:
    """What the far end sent, placed on a timeline that starts when its first packet arrived.

    A packet's place is its RTP timestamp's distance from the previous packet's, so
    network jitter does not move audio and a silent gap in timestamps stays silent.
    When a timestamp jump disagrees with the arrival times by more than ten seconds (a new
    SSRC, a sender that restarts its clock) the packet is placed by its arrival time. Less
    than that is our own stall: a busy event loop reads a second of packets late, in a
    burst, and placing them by arrival would cut a hole into the prompt.
    Payloads are kept as they came and decoded only when pcm is asked for.
    """

    def __init__(self) -> None:
        self.started_at: float | None = None  # time.monotonic() at sample 0
        self._packets: list[tuple[int, bytes, Callable[[bytes], bytes]]] = []
        # _reach[i]: the furthest sample any of the first i+1 packets covers; never decreases,
        # so pcm() finds where a window starts by bisection instead of walking the whole call.
        self._reach: list[int] = []
        self._last_timestamp = 0
        self._last_arrival = 0.0
        self._last_position = 0
        self._end = 0  # one past the last sample heard

    def add(self, rtp_timestamp: int, arrival: float, payload: bytes, codec: Codec) -> None:
        """Keep one received audio packet (G.711: one payload byte per sample)."""
        if self.started_at is None:
            self.started_at = arrival
            position = 0
        else:
            jump = (rtp_timestamp - self._last_timestamp) % _RTP_TIMESTAMP_MOD
            if jump >= _RTP_TIMESTAMP_MOD // 2:
                jump -= _RTP_TIMESTAMP_MOD
            waited = (arrival - self._last_arrival) * SAMPLE_RATE
            if abs(jump - waited) > _REANCHOR_S * SAMPLE_RATE:
                jump = round(waited)
            position = self._last_position + jump
            if position < 0:
                return  # arrived late and belongs before the first packet
        self._last_timestamp = rtp_timestamp
        self._last_arrival = arrival
        self._last_position = position
        self._packets.append((position, payload, codec.decode))
        end = position + len(payload)
        if end > self._end:
            self._end = end
        self._reach.append(self._end)

    @property
    def duration(self) -> float:
        return self._end / SAMPLE_RATE

    def offset(self, monotonic_time: float) -> float:
        """Seconds into the recording at a time.monotonic() value."""
        if self.started_at is None:
            raise ValueError("nothing heard yet: the recording has no start")
        return monotonic_time - self.started_at

    def pcm(self, start: float | None = None, end: float | None = None) -> bytes:
        """What was heard between two time.monotonic() values (default: all), gaps as silence."""
        first = self._sample_at(start, 0)
        last = max(first, self._sample_at(end, self._end))
        heard = bytearray(2 * (last - first))
        for index in range(bisect.bisect_right(self._reach, first), len(self._packets)):
            position, payload, decode = self._packets[index]
            if position >= last + SAMPLE_RATE:
                break  # packets arrive in order, give or take reordering well under a second
            lo = max(position, first)
            hi = min(position + len(payload), last)
            if lo < hi:
                pcm = decode(payload)
                heard[2 * (lo - first) : 2 * (hi - first)] = pcm[2 * (lo - position) : 2 * (hi - position)]
        return bytes(heard)

    def _sample_at(self, monotonic_time: float | None, default: int) -> int:
        if monotonic_time is None or self.started_at is None:
            return default
        return min(self._end, max(0, round((monotonic_time - self.started_at) * SAMPLE_RATE)))

    def write_wav(self, path: str | Path) -> None:
        """8 kHz mono 16-bit WAV; an empty one when nothing was heard."""
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(self.pcm())
