"""Listening to what a call heard: speech and tones, where a prompt ends, how it sounded.

Everything takes pcm (8 kHz mono signed 16-bit little-endian, see audio.py) and works on
20 ms frames of 160 samples (a last partial frame is padded with silence); times are
seconds from the start of the pcm given.

Each frame gets one label:
  silent  below the energy floor (-50 dBFS by default): digital silence, comfort noise, a quiet line;
  tone    part of a steady tone lasting 300 ms or more (ringback, busy, SIT, a long beep): in the
          60 ms ending at the frame, 95% of the energy lies within 33 Hz of one or two frequencies;
  speech  webrtcvad hears a voice in it, it is above the floor and not part of a tone;
  noise   anything else above the floor: line noise, hum, the tail of a click.
"Sound" is every frame above the floor, tones included: that is what "time to first audio"
and "dead air" care about. "Speech" is what a prompt is made of. Music is not told apart:
webrtcvad mostly calls it speech, so a prompt over music ends when the music does. Nor is
loud noise: webrtcvad takes steady broadband noise above about -30 dBFS for a voice (line
noise on a working telephone line is far quieter).

Levels are dBFS as AES17 has it: a full-scale sine reads 0 dBFS, so audio.tone(f, s, -20)
reads -20 both as RMS level and as peak.

Also here: audio fingerprints to notice that a prompt changed since its baseline, and PESQ
(ITU-T P.862) when the optional `pesq` package is installed.
"""

from __future__ import annotations

import base64
import math
import warnings
from collections import deque
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import numpy as np
import webrtcvad

from probes.voice.audio import FRAME_BYTES, FRAME_SAMPLES, FULL_SCALE, SAMPLE_RATE

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Python 3.11-3.12 warn that audioop leaves the stdlib in 3.13
    import audioop

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE

_SILENT, _NOISE, _SPEECH, _TONE = range(4)

# Tones. A 60 ms window resolves tones 40 Hz apart (ringback is 440 + 480 Hz) and keeps the
# DTMF and call-progress pairs at two peaks. Speech has near-pure stretches too (a hummed
# nasal, a female "oo" that is all F0 and 2F0): flite voices hold one for up to 220 ms, so
# only a run of 300 ms makes a tone.
_TONE_WINDOW = 3 * FRAME_SAMPLES
_TONE_HANN = np.hanning(_TONE_WINDOW)
_TONE_PEAK_BINS = 2  # either side of a peak: 2 bins of 16.7 Hz hold a Hann-windowed sine
_TONE_SHARE = 0.95
_TONE_MIN_FRAMES = 15
_ONSET_FRAMES = 2  # frames a tone takes to fill the 60 ms window and look pure

# A burst of sound this short (a click, a blip of line noise and webrtcvad's hangover after
# it) does not break a silence, nor begin or end the audio a fingerprint covers.
_BLIP_FRAMES = 5

# G.711 decoders top out below 32767 (mu-law at 32124, A-law at 32256, the next steps down
# are 31100 and 31232), so a clipped signal that went through a codec sits at or above this.
_NEAR_FULL_SCALE = 32000
_CLIP_RUN = 3  # loud unclipped audio puts 2 samples in a row near a peak often enough; 3 means a plateau


def _time(frame: int) -> float:
    """Seconds at the start of a frame (computed so 140 frames are 2.8 s, not 2.8000000000000003)."""
    return frame * FRAME_SAMPLES / SAMPLE_RATE


def _frames_for(ms: float) -> int:
    """How many frames cover ms, rounded up."""
    return math.ceil(ms * SAMPLE_RATE / (1000 * FRAME_SAMPLES))


def _rms_at(dbfs: float) -> float:
    return FULL_SCALE * 10 ** (dbfs / 20) / math.sqrt(2)


def _dbfs(rms: float) -> float:
    return 20 * math.log10(rms * math.sqrt(2) / FULL_SCALE)


def _frames(pcm: bytes) -> np.ndarray:
    """pcm as float samples, one row per frame, the last one padded with silence."""
    if len(pcm) % 2:
        raise ValueError(f"pcm must be whole 16-bit samples, got {len(pcm)} bytes")
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    padded = np.zeros(-(-samples.size // FRAME_SAMPLES) * FRAME_SAMPLES)
    padded[: samples.size] = samples
    return padded.reshape(-1, FRAME_SAMPLES)


def _is_tonal(window: bytes) -> bool:
    power = np.abs(np.fft.rfft(np.frombuffer(window, dtype="<i2") * _TONE_HANN)) ** 2
    total = power.sum()
    held = 0.0
    for _ in range(2):
        peak = int(power.argmax())
        around = power[max(0, peak - _TONE_PEAK_BINS) : peak + _TONE_PEAK_BINS + 1]
        held += around.sum()
        around[:] = 0.0  # a view: the second peak is looked for elsewhere
    return held >= _TONE_SHARE * total


class _FrameLabeller:
    """Labels frames in order. The frames of a tonal run wait until the run is long enough
    to be a tone or ends short of one (then each gets the label it would have had).

    Every label is also held back two frames: a tone's first 40 ms do not look pure yet (the
    window still holds its onset), and a run that starts right after them takes them in.
    """

    def __init__(self, aggressiveness: int, floor_dbfs: float):
        self._vad = webrtcvad.Vad(aggressiveness)
        self._floor_rms = _rms_at(floor_dbfs)
        self._window = bytes(2 * _TONE_WINDOW)
        self._held: list[int] = []  # the latest settled labels, _ONSET_FRAMES of them at most
        self._tonal_run: list[int] = []  # labels the run's frames keep if it ends short of a tone
        self._tonal_frames = 0  # frames of the run that looked pure, the onset left out
        self._in_tone = False

    def label(self, frame: bytes) -> list[int]:
        """The labels settled by this frame, oldest first; none while a tone may be starting."""
        fresh = self._settle(frame)  # may move held labels into a tonal run
        settled = self._held + fresh
        self._held = settled[-_ONSET_FRAMES:]
        return settled[:-_ONSET_FRAMES]

    def flush(self) -> list[int]:
        """At the end of the audio: the rest, a tonal run too short to be a tone keeping its own labels."""
        settled = self._held + self._end_tonal_run()
        self._held = []
        return settled

    def _settle(self, frame: bytes) -> list[int]:
        self._window = self._window[FRAME_BYTES:] + frame
        # Every frame goes to webrtcvad, silent ones too: it adapts its noise model as it goes.
        voice = self._vad.is_speech(frame, SAMPLE_RATE)
        if audioop.rms(frame, 2) < self._floor_rms:
            return self._end_tonal_run() + [_SILENT]
        label = _SPEECH if voice else _NOISE
        # The spectrum costs more than the rest together, so only a voice or a tone under way
        # gets one; webrtcvad takes the first 80 ms of any tone for a voice.
        if not (voice or self._tonal_run or self._in_tone) or not _is_tonal(self._window):
            return self._end_tonal_run() + [label]
        if self._in_tone:
            return [_TONE]
        if not self._tonal_run:
            while self._held and self._held[-1] != _SILENT:
                self._tonal_run.insert(0, self._held.pop())
        self._tonal_run.append(label)
        self._tonal_frames += 1
        if self._tonal_frames < _TONE_MIN_FRAMES:
            return []
        self._in_tone = True
        settled = [_TONE] * len(self._tonal_run)
        self._tonal_run = []
        self._tonal_frames = 0
        return settled

    def _end_tonal_run(self) -> list[int]:
        settled = self._tonal_run
        self._tonal_run = []
        self._tonal_frames = 0
        self._in_tone = False
        return settled


def _labels(pcm: bytes, aggressiveness: int = 2, floor_dbfs: float = -50.0) -> np.ndarray:
    frames = _frames(pcm).astype("<i2")
    labeller = _FrameLabeller(aggressiveness, floor_dbfs)
    labels: list[int] = []
    for frame in frames:
        labels += labeller.label(frame.tobytes())
    labels += labeller.flush()
    return np.array(labels, dtype=np.int8)


def speech_frames(pcm: bytes, aggressiveness: int = 2, floor_dbfs: float = -50.0) -> np.ndarray:
    """Per 20 ms frame, True where someone speaks (webrtcvad at `aggressiveness` 0-3, above the floor, not a tone)."""
    return _labels(pcm, aggressiveness, floor_dbfs) == _SPEECH


def sound_frames(pcm: bytes, floor_dbfs: float = -50.0) -> np.ndarray:
    """Per 20 ms frame, True where anything is heard: its RMS level is at or above floor_dbfs."""
    return np.sqrt((_frames(pcm) ** 2).mean(axis=1)) >= _rms_at(floor_dbfs)


class PromptListener:
    """Hears a prompt out on a live call: feed() it what the call receives, in chunks of any size.

    started_at  the first speech of a prompt: min_speech_ms of speech frames within twice
                that, so a click or a cough does not start one;
    ended_at    the end of its last speech, once end_silence_ms without speech followed
                (pauses between sentences are shorter); tones and noise are not speech,
                so a beep after the prompt does not make it longer;
    sound_at    the first frame above the energy floor, speech or not;
    timed_out   no prompt started within start_timeout_s of audio.
    Times are seconds of the audio fed; the caller maps them to the call's clock. Frames
    are judged 40 ms late (a tone's onset is told apart once the tone is seen), so feed()
    says the prompt ended end_silence_ms + 40 ms after its last speech. After the prompt
    ended or timed out, feed() ignores what comes.
    """

    def __init__(
        self,
        end_silence_ms: float = 700,
        min_speech_ms: float = 200,
        start_timeout_s: float | None = None,
        aggressiveness: int = 2,
        floor_dbfs: float = -50.0,
    ):
        if end_silence_ms < 1000 * FRAME_S or min_speech_ms < 1000 * FRAME_S:
            raise ValueError(f"end_silence_ms and min_speech_ms must be at least one frame ({1000 * FRAME_S:g} ms)")
        self._end_frames = _frames_for(end_silence_ms)
        self._min_speech_frames = _frames_for(min_speech_ms)
        self._onset_frames = 2 * self._min_speech_frames
        self._timeout_frames = None if start_timeout_s is None else _frames_for(1000 * start_timeout_s)
        self._labeller = _FrameLabeller(aggressiveness, floor_dbfs)
        self._partial = b""  # received audio short of a whole frame
        self._labelled = 0
        self._recent_speech: deque[int] = deque()  # speech frames within the onset window, before the start
        self._last_speech = -1
        self.sound_at: float | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.timed_out = False

    @property
    def done(self) -> bool:
        """The prompt ended, or none started in time."""
        return self.ended_at is not None or self.timed_out

    def feed(self, pcm: bytes) -> bool:
        """Listen to more received audio; returns done."""
        if self.done:
            return True
        if len(pcm) % 2:
            raise ValueError(f"pcm must be whole 16-bit samples, got {len(pcm)} bytes")
        data = self._partial + pcm if self._partial else pcm
        whole = len(data) - len(data) % FRAME_BYTES
        for at in range(0, whole, FRAME_BYTES):
            labels = self._labeller.label(data[at : at + FRAME_BYTES])
            if labels and self._take(labels):
                break
        self._partial = data[whole:]
        return self.done

    def finish(self) -> None:
        """The audio stopped (hang-up, the step's time ran out): a prompt still playing ends at its last speech."""
        if self.done:
            return
        labels = self._labeller.label(self._partial.ljust(FRAME_BYTES, b"\0")) if self._partial else []
        self._partial = b""
        self._take(labels + self._labeller.flush())
        if self.started_at is not None and self.ended_at is None:
            self.ended_at = _time(self._last_speech + 1)

    def _take(self, labels: list[int]) -> bool:
        """Follow the prompt through settled labels; True once done."""
        for label in labels:
            index = self._labelled
            self._labelled += 1
            if label != _SILENT and self.sound_at is None:
                self.sound_at = _time(index)
            if label == _SPEECH:
                self._last_speech = index
                if self.started_at is None:
                    recent = self._recent_speech
                    recent.append(index)
                    while recent[0] <= index - self._onset_frames:
                        recent.popleft()
                    if len(recent) >= self._min_speech_frames:
                        self.started_at = _time(recent[0])
            elif self.started_at is not None and index - self._last_speech >= self._end_frames:
                self.ended_at = _time(self._last_speech + 1)
                return True
            if self.started_at is None and self._timeout_frames is not None and self._labelled >= self._timeout_frames:
                self.timed_out = True
                return True
        return False


def _prompt_bounds(labels: np.ndarray, end_silence_ms: float, min_speech_ms: float) -> tuple[float, float] | None:
    listener = PromptListener(end_silence_ms, min_speech_ms)
    listener._take(labels.tolist())
    listener.finish()
    if listener.started_at is None or listener.ended_at is None:
        return None
    return listener.started_at, listener.ended_at


def prompt_bounds(pcm: bytes, end_silence_ms: float = 700, min_speech_ms: float = 200) -> tuple[float, float] | None:
    """(start, end) of the first prompt in a recording, as PromptListener finds it; None when nobody speaks.

    A prompt still playing when the recording stops ends at its last speech.
    """
    return _prompt_bounds(_labels(pcm), end_silence_ms, min_speech_ms)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, one past the last) frame of each run of True."""
    edges = np.diff(np.concatenate(([False], mask, [False])).astype(np.int8))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _content(labels: np.ndarray) -> np.ndarray:
    """Speech or tone, without bursts of _BLIP_FRAMES or fewer."""
    content = (labels == _SPEECH) | (labels == _TONE)
    for first, end in _runs(content):
        if end - first <= _BLIP_FRAMES:
            content[first:end] = False
    return content


def _silences(labels: np.ndarray, min_ms: float) -> list[tuple[float, float]]:
    min_frames = _frames_for(min_ms)
    return [(_time(first), _time(end)) for first, end in _runs(~_content(labels)) if end - first >= min_frames]


def silences(pcm: bytes, min_ms: float, floor_dbfs: float = -50.0) -> list[tuple[float, float]]:
    """(start, end) of each stretch of min_ms or more with neither speech nor tone in it.

    Line noise, comfort noise and clicks of 100 ms or less are silence here: nothing is being said.
    """
    return _silences(_labels(pcm, floor_dbfs=floor_dbfs), min_ms)


def dead_air(pcm: bytes, threshold_ms: float = 2000, floor_dbfs: float = -50.0) -> list[tuple[float, float]]:
    """(start, end) of each silence (as silences() has it) of threshold_ms or more: the caller hears nothing happen."""
    return silences(pcm, threshold_ms, floor_dbfs)


def _level_dbfs(frames: np.ndarray, labels: np.ndarray) -> float | None:
    heard = frames[(labels == _SPEECH) | (labels == _TONE)]
    if not heard.size:
        return None
    return _dbfs(math.sqrt(float((heard**2).mean())))


def level_dbfs(pcm: bytes, floor_dbfs: float = -50.0) -> float | None:
    """RMS level of the speech and tones, pauses and noise left out; None when there are none."""
    return _level_dbfs(_frames(pcm), _labels(pcm, floor_dbfs=floor_dbfs))


def peak_dbfs(pcm: bytes) -> float | None:
    """The loudest sample, in dBFS; None for digital silence."""
    peak = int(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32)).max(initial=0))
    return 20 * math.log10(peak / FULL_SCALE) if peak else None


def clipping(pcm: bytes) -> float:
    """Share of samples (0-1) in runs of 3 or more at full scale, G.711's lower full scale included."""
    samples = np.frombuffer(pcm, dtype="<i2")
    if not samples.size:
        return 0.0
    at_full_scale = np.abs(samples.astype(np.int32)) >= _NEAR_FULL_SCALE
    clipped = sum(end - first for first, end in _runs(at_full_scale) if end - first >= _CLIP_RUN)
    return clipped / samples.size


@dataclass(frozen=True)
class AudioMeasures:
    """How a stretch of received audio sounded; times are seconds from its start.

    Measured from answer, first_sound_s is the time to first audio; measured from our
    input (digits, speech), prompt_start_s is the prompt's latency.
    """

    first_sound_s: float | None
    prompt_start_s: float | None
    prompt_end_s: float | None
    level_dbfs: float | None
    peak_dbfs: float | None
    clipping: float
    dead_air: tuple[tuple[float, float], ...]

    @property
    def prompt_duration_s(self) -> float | None:
        if self.prompt_start_s is None or self.prompt_end_s is None:
            return None
        return self.prompt_end_s - self.prompt_start_s


def measure(
    pcm: bytes,
    end_silence_ms: float = 700,
    min_speech_ms: float = 200,
    dead_air_ms: float = 2000,
    floor_dbfs: float = -50.0,
) -> AudioMeasures:
    """Every license-free measure of a stretch of received audio, from one pass of labelling."""
    labels = _labels(pcm, floor_dbfs=floor_dbfs)
    sound = np.flatnonzero(labels != _SILENT)
    bounds = _prompt_bounds(labels, end_silence_ms, min_speech_ms)
    return AudioMeasures(
        first_sound_s=_time(int(sound[0])) if sound.size else None,
        prompt_start_s=bounds[0] if bounds else None,
        prompt_end_s=bounds[1] if bounds else None,
        level_dbfs=_level_dbfs(_frames(pcm), labels),
        peak_dbfs=peak_dbfs(pcm),
        clipping=clipping(pcm),
        dead_air=tuple(_silences(labels, dead_air_ms)),
    )


# =========================================================================== fingerprints
# Per 20 ms, the energy in 16 mel-spaced bands from 150 to 3700 Hz (a 50 ms Hann window),
# from the first to the last speech or tone (so the prompt's latency does not matter), in
# half-dB steps over the 40 dB below the loudest band: 16 bytes per frame, 0.8 kB per
# second (1.1 kB as base64 text). Comparing takes out each band's average over time, so a level change, a
# different handset's colouring or G.711 leave the score alone, and what is compared is
# how the spectrum moves: the words and their timing.

_FINGERPRINT_FORMAT = "fp1:"
_FP_BANDS = 16
_FP_WINDOW = 400
_FP_RANGE_DB = 40
_FP_STEPS_PER_DB = 2


def _band_matrix() -> np.ndarray:
    mel = np.linspace(2595 * math.log10(1 + 150 / 700), 2595 * math.log10(1 + 3700 / 700), _FP_BANDS + 1)
    edges = 700 * (10 ** (mel / 2595) - 1)
    bins_hz = np.fft.rfftfreq(_FP_WINDOW, 1 / SAMPLE_RATE)
    return np.stack([(bins_hz >= lo) & (bins_hz < hi) for lo, hi in zip(edges[:-1], edges[1:])], axis=1).astype(np.float64)


_FP_BANDS_OF_BINS = _band_matrix()
_FP_HANN = np.hanning(_FP_WINDOW)


def fingerprint(pcm: bytes) -> str:
    """A compact, JSON-ready text describing how the speech (and tones) in pcm sound, for audio_similarity()."""
    content = np.flatnonzero(_content(_labels(pcm)))
    if not content.size:
        return _FINGERPRINT_FORMAT
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    first = content[0] * FRAME_SAMPLES
    last = min(samples.size, (content[-1] + 1) * FRAME_SAMPLES)
    span = np.zeros(last - first + _FP_WINDOW - FRAME_SAMPLES)
    span[: last - first] = samples[first:last]
    windows = np.lib.stride_tricks.sliding_window_view(span, _FP_WINDOW)[::FRAME_SAMPLES]
    bands = (np.abs(np.fft.rfft(windows * _FP_HANN, axis=1)) ** 2) @ _FP_BANDS_OF_BINS
    db = 10 * np.log10(bands + 1e-3)
    steps = np.clip(np.round((db - db.max() + _FP_RANGE_DB) * _FP_STEPS_PER_DB), 0, _FP_RANGE_DB * _FP_STEPS_PER_DB)
    return _FINGERPRINT_FORMAT + base64.b64encode(steps.astype(np.uint8).tobytes()).decode("ascii")


def _decode_fingerprint(text: str) -> np.ndarray:
    if not text.startswith(_FINGERPRINT_FORMAT):
        raise ValueError(f"not an audio fingerprint of this version (want the {_FINGERPRINT_FORMAT!r} prefix): {text[:20]!r}")
    raw = np.frombuffer(base64.b64decode(text[len(_FINGERPRINT_FORMAT) :]), dtype=np.uint8)
    if raw.size % _FP_BANDS:
        raise ValueError(f"a fingerprint holds {_FP_BANDS} bands per frame; this one has {raw.size} values")
    return raw.reshape(-1, _FP_BANDS).astype(np.float64)


def audio_similarity(a: str, b: str, max_offset_s: float = 0.5) -> float:
    """0-1: how alike two fingerprints sound, at their best alignment within max_offset_s.

    Fingerprints start where speech detection first hears something, which can differ by
    a few hundred ms between two recordings of one prompt; hence the 0.5 s default.
    Measured with flite prompts: the same prompt through G.711, shifted, 6 dB quieter or
    louder, on a clean or 20 dB SNR line, scores 0.93-0.99; other words or another voice
    score 0.07-0.46. Small edits score high: one word changed in a 6 s prompt 0.92,
    a sentence added 0.81, so a transcript diff is what catches those. Two fingerprints
    of no speech at all are alike.
    """
    first, second = _decode_fingerprint(a), _decode_fingerprint(b)
    if not first.size or not second.size:
        return float(first.size == second.size)
    first -= first.mean(axis=0)
    second -= second.mean(axis=0)
    norms = math.sqrt(float((first**2).sum()) * float((second**2).sum()))
    if norms == 0:
        return 0.0
    best = 0.0
    most = _frames_for(1000 * max_offset_s)
    for lag in range(-min(most, len(second) - 1), min(most, len(first) - 1) + 1):
        if lag >= 0:
            overlap = min(len(first) - lag, len(second))
            score = float((first[lag : lag + overlap] * second[:overlap]).sum())
        else:
            overlap = min(len(first), len(second) + lag)
            score = float((first[:overlap] * second[-lag : -lag + overlap]).sum())
        best = max(best, score)
    return best / norms


# =========================================================================== PESQ
# ITU-T P.862 narrowband through the `pesq` package, an optional extra
# (pip install 'cxtest[pesq]'): the algorithm is ITU-T's and OPTICOM's and needs their
# licence for commercial use, so nothing else here depends on it.


@cache
def _pesq() -> ModuleType | None:
    try:
        import pesq
    except ImportError:
        return None
    return pesq


def pesq_unavailable() -> str | None:
    """Why pesq_mos() returns None, or None when it works."""
    if _pesq() is not None:
        return None
    return (
        "PESQ needs the optional `pesq` package (pip install 'cxtest[pesq]'); "
        "ITU-T P.862 is licensed by ITU-T and OPTICOM, so it is not installed by default"
    )


def _aligned(reference: np.ndarray, degraded: np.ndarray) -> np.ndarray:
    """degraded shifted onto reference by cross-correlation and cut or padded to its length."""
    size = 1 << (reference.size + degraded.size - 1).bit_length()
    correlation = np.fft.irfft(np.fft.rfft(degraded, size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(correlation.argmax())
    if lag > size // 2:
        lag -= size  # degraded starts before the reference
    shifted = degraded[lag:] if lag >= 0 else np.concatenate((np.zeros(-lag), degraded))
    out = np.zeros(reference.size)
    out[: min(reference.size, shifted.size)] = shifted[: reference.size]
    return out


def pesq_mos(reference_pcm: bytes, degraded_pcm: bytes) -> float | None:
    """PESQ MOS-LQO (about 1-4.5) of degraded against reference, narrowband at 8 kHz; None without `pesq`.

    The degraded audio is aligned on the reference first, so the leading silence of a
    recording does not matter. ValueError when PESQ finds no speech to compare.
    """
    pesq = _pesq()
    if pesq is None:
        return None
    reference = np.frombuffer(reference_pcm, dtype="<i2").astype(np.float64)
    degraded = _aligned(reference, np.frombuffer(degraded_pcm, dtype="<i2").astype(np.float64))
    if not reference.any() or not degraded.any():
        raise ValueError("PESQ needs speech in both the reference and the degraded audio; one of them is silent")
    try:
        return float(pesq.pesq(SAMPLE_RATE, reference, degraded, "nb"))
    except pesq.PesqError as exc:  # no utterances found, too short
        raise ValueError(f"PESQ could not compare the audio: {exc}") from exc


# =========================================================================== E-model
# ITU-T G.107's E-model, reduced to what a G.711 call we received tells us: no library on
# PyPI implements it in a kept-up form, and for G.711 it is a few lines. The delay impairment
# uses the jitter buffer a receiver would need (twice the jitter, plus a 10 ms frame); the
# network's one-way delay is unknown to a receiver, so it is left out.

_R_DEFAULT = 93.2  # G.107 with every default parameter
_G711_BPL = 25.1  # packet-loss robustness of G.711 with packet loss concealment (G.113 Appendix I)


def estimated_mos(loss_fraction: float, jitter_s: float, delay_s: float = 0.0) -> float:
    """Estimated MOS-CQE (1-4.41) of a G.711 call with this random packet loss and jitter (ITU-T G.107)."""
    delay_ms = 1000 * (delay_s + 2 * jitter_s) + 10
    impairment_delay = 0.024 * delay_ms + (0.11 * (delay_ms - 177.3) if delay_ms > 177.3 else 0.0)
    loss_percent = 100 * max(0.0, min(1.0, loss_fraction))
    impairment_loss = 95 * loss_percent / (loss_percent + _G711_BPL)
    r = _R_DEFAULT - impairment_delay - impairment_loss
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
