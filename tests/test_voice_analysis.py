"""Voice analysis: speech and tone labels, live end-of-prompt detection, audio measures, fingerprints, PESQ.

Prompts are synthesised with the flite command (8 kHz after resampling), sent through
G.711 mu-law and placed in digital silence, in -60 dBFS noise or in noise 20 dB below the
speech. Where a prompt truly starts and ends is taken from the clean synthesised audio:
its first and last 10 ms within 35 dB of its loudest 10 ms.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import warnings
import wave

import numpy as np
import pytest

from probes.voice import analysis
from probes.voice.analysis import (
    AudioMeasures,
    PromptListener,
    audio_similarity,
    clipping,
    dead_air,
    fingerprint,
    level_dbfs,
    measure,
    peak_dbfs,
    pesq_mos,
    pesq_unavailable,
    prompt_bounds,
    silences,
    sound_frames,
    speech_frames,
)
from probes.voice.audio import tone
from probes.voice.dtmf import tone_pcm

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Python 3.11-3.12 warn that audioop leaves the stdlib in 3.13
    import audioop

RATE = 8000
FRAME_BYTES = 320
LEAD_S = 1.234  # not a whole number of frames, so the frame grid does not line up with the speech

MENU = "Welcome to Example Bank. For account balances, press one. For card services, press two."
HOLD = "Thank you for calling. Please hold while we connect you to the next available agent."
ENTER = "Please enter your account number."
CONFIRM = "Then press the hash key."
ENTER_CARD = "Please enter your card number."

# =========================================================================== helpers


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def to_pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def ulaw(pcm: bytes) -> bytes:
    """pcm as it arrives over a PCMU call."""
    return audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)


def gap(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE))


def noise(count: int, dbfs: float, seed: int = 7) -> np.ndarray:
    """White noise at an RMS level in dBFS (AES17: a full-scale sine is 0 dBFS)."""
    return np.random.default_rng(seed).standard_normal(count) * 32767 * 10 ** (dbfs / 20) / np.sqrt(2)


def speech_bounds(pcm: bytes) -> tuple[float, float]:
    """(start, end) of clean speech: its first and last 10 ms within 35 dB of its loudest 10 ms."""
    x = samples(pcm)
    blocks = 10 * np.log10((x[: x.size // 80 * 80].reshape(-1, 80) ** 2).mean(axis=1) + 1e-9)
    loud = np.flatnonzero(blocks >= blocks.max() - 35)
    return loud[0] / 100, (loud[-1] + 1) / 100


def trimmed(pcm: bytes) -> np.ndarray:
    """Clean speech cut to its bounds."""
    start, end = speech_bounds(pcm)
    return samples(pcm)[round(start * RATE) : round(end * RATE)]


def speech_rms_dbfs(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt((x**2).mean()) * np.sqrt(2) / 32767)


def on_line(speech: np.ndarray, line: str, lead_s: float = LEAD_S, tail_s: float = 2.0) -> bytes:
    """Speech placed after lead_s on a line that is silent, 'quiet' (-60 dBFS noise) or 'noisy' (20 dB SNR), through mu-law."""
    x = np.concatenate((gap(lead_s), speech, gap(tail_s)))
    if line == "quiet":
        x += noise(x.size, -60.0)
    elif line == "noisy":
        x += noise(x.size, speech_rms_dbfs(speech) - 20)
    return ulaw(to_pcm(x))


def listen(pcm: bytes, chunk: int = FRAME_BYTES, **options) -> PromptListener:
    listener = PromptListener(**options)
    for at in range(0, len(pcm), chunk):
        if listener.feed(pcm[at : at + chunk]):
            break
    else:
        listener.finish()
    return listener


@pytest.fixture(scope="module")
def say(tmp_path_factory):
    """say(text, voice="rms") -> the text spoken by flite, as clean 8 kHz pcm (cached per module)."""
    if shutil.which("flite") is None:
        pytest.skip("flite (Debian package flite) is needed to synthesise speech")
    folder = tmp_path_factory.mktemp("flite")
    spoken: dict[tuple[str, str], bytes] = {}

    def synthesise(text: str, voice: str = "rms") -> bytes:
        if (text, voice) not in spoken:
            path = folder / f"{len(spoken)}.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, timeout=60)
            with wave.open(str(path)) as wav:
                rate, frames = wav.getframerate(), wav.readframes(wav.getnframes())
            spoken[text, voice] = audioop.ratecv(frames, 2, 1, rate, RATE, None)[0] if rate != RATE else frames
        return spoken[text, voice]

    return synthesise


# =========================================================================== frames


def test_silence_comfort_noise_and_hum_are_neither_sound_nor_speech():
    """Digital silence, -60 dBFS noise and -55 dBFS mains hum are below the -50 dBFS floor: no sound, no speech."""
    hum = samples(tone(50, 2.0, -55.0)) + samples(tone(150, 2.0, -60.0))
    for pcm in (bytes(2 * 2 * RATE), to_pcm(noise(2 * RATE, -60.0)), ulaw(to_pcm(hum))):
        assert not sound_frames(pcm).any()
        assert not speech_frames(pcm).any()


def test_line_noise_is_sound_but_not_speech():
    """Steady -40 dBFS noise is sound; webrtcvad's first 80 ms of it are the only "speech" and no prompt starts."""
    pcm = ulaw(to_pcm(noise(3 * RATE, -40.0)))
    assert sound_frames(pcm).all()
    assert speech_frames(pcm).sum() <= 5
    assert prompt_bounds(pcm) is None


def test_steady_tones_are_sound_not_speech():
    """Ringback, DTMF, a quiet tone and a beep of 300 ms or more are sound and not speech."""
    ringback = to_pcm(samples(tone(440, 2.0, -16.0)) + samples(tone(480, 2.0, -16.0)))
    for pcm in (ringback, tone_pcm("5", 1000), tone(1000, 0.5, -10.0), tone(440, 2.0, -30.0)):
        pcm = ulaw(pcm)
        assert sound_frames(pcm).all()
        assert not speech_frames(pcm).any()
        assert prompt_bounds(pcm) is None


def test_speech_frames_follow_the_speech(say):
    """Speech frames cover the spoken part of a prompt and nothing of the silence around it."""
    speech = trimmed(say(ENTER))
    pcm = on_line(speech, "silent", lead_s=1.0, tail_s=1.0)
    frames = speech_frames(pcm)
    assert frames.size == -(-len(pcm) // FRAME_BYTES)  # a last partial frame counts
    spoken = slice(50, 50 + speech.size // 160)
    assert frames[spoken].mean() > 0.8
    assert not frames[:49].any() and not frames[spoken.stop + 5 :].any()


# =========================================================================== PromptListener


@pytest.mark.parametrize("voice", ["rms", "slt"])
@pytest.mark.parametrize("line", ["silent", "quiet", "noisy"])
def test_listener_finds_start_and_end(say, voice, line):
    """Through mu-law, on a silent, quiet or noisy line, the start is within 100 ms of the truth and the end within 300 ms."""
    clean = say(MENU, voice)
    start, end = speech_bounds(clean)
    pcm = on_line(samples(clean), line)
    listener = listen(pcm)
    assert listener.done and not listener.timed_out
    assert listener.started_at == pytest.approx(LEAD_S + start, abs=0.1)
    assert listener.ended_at == pytest.approx(LEAD_S + end, abs=0.3)


def test_listener_reports_once_the_end_silence_has_passed(say):
    """feed() turns True end_silence_ms (plus the 40 ms labels are held back) after the last speech, and ignores audio after that."""
    speech = trimmed(say(ENTER))
    pcm = on_line(speech, "silent", lead_s=1.0, tail_s=3.0)
    listener = PromptListener(end_silence_ms=700)
    fed = 0
    while not listener.feed(pcm[fed : fed + FRAME_BYTES]):
        fed += FRAME_BYTES
    heard_s = (fed + FRAME_BYTES) / 2 / RATE
    assert heard_s - listener.ended_at == pytest.approx(0.74, abs=0.021)
    ended_at = listener.ended_at
    assert listener.feed(pcm[fed:]) is True
    assert listener.ended_at == ended_at


def test_chunk_size_does_not_change_what_is_heard(say):
    """Fed in odd-sized chunks or all at once, the listener finds what it finds frame by frame."""
    pcm = on_line(samples(say(HOLD)), "noisy")
    by_frame = listen(pcm)
    for chunk in (1234, 4002, len(pcm)):
        other = listen(pcm, chunk=chunk)
        assert (other.sound_at, other.started_at, other.ended_at) == (by_frame.sound_at, by_frame.started_at, by_frame.ended_at)


@pytest.mark.parametrize("line", ["silent", "noisy"])
def test_pause_between_sentences_shorter_than_end_silence_is_one_prompt(say, line):
    """Two sentences 400 ms apart are one prompt with end_silence_ms=700; 1 s apart, the first ends alone."""
    first, second = trimmed(say(ENTER)), trimmed(say(CONFIRM))
    for pause_s, end in ((0.4, LEAD_S + (first.size + second.size) / RATE + 0.4), (1.0, LEAD_S + first.size / RATE)):
        pcm = on_line(np.concatenate((first, gap(pause_s), second)), line)
        listener = listen(pcm, end_silence_ms=700)
        assert listener.started_at == pytest.approx(LEAD_S, abs=0.1)
        assert listener.ended_at == pytest.approx(end, abs=0.3)


@pytest.mark.parametrize("line", ["silent", "noisy"])
def test_click_is_not_a_prompt_start(line):
    """A loud 2 ms click is sound but starts no prompt, on a silent line or a noisy one."""
    x = gap(3.0) + (noise(3 * RATE, -40.0) if line == "noisy" else 0)
    x[RATE : RATE + 8] += 30000
    x[RATE + 8 : RATE + 16] -= 30000
    listener = listen(ulaw(to_pcm(x)))
    assert listener.started_at is None and listener.ended_at is None
    assert listener.sound_at == (1.0 if line == "silent" else 0.0)


def test_start_timeout_ends_listening_without_a_prompt():
    """With start_timeout_s=2, silence times out after 2 s (and the 40 ms labels are held back), and feed() says so."""
    listener = PromptListener(start_timeout_s=2.0)
    fed = 0
    while not listener.feed(bytes(FRAME_BYTES)):
        fed += 1
    assert listener.timed_out and listener.started_at is None
    assert fed + 1 == 102


def test_beep_after_the_prompt_does_not_lengthen_it(say):
    """A 600 ms beep 300 ms after the last word is not speech: the prompt still ends at its last word."""
    speech = trimmed(say(ENTER))
    beep = samples(tone(1000, 0.6, -12.0))
    listener = listen(on_line(np.concatenate((speech, gap(0.3), beep)), "silent"))
    assert listener.ended_at == pytest.approx(LEAD_S + speech.size / RATE, abs=0.3)


def test_ringback_is_not_a_prompt(say):
    """Ringback (2 s on, 4 s off) then a prompt: the prompt is what starts, not the ringing."""
    ring = samples(tone(440, 2.0, -16.0)) + samples(tone(480, 2.0, -16.0))
    speech = trimmed(say(ENTER))
    listener = listen(ulaw(to_pcm(np.concatenate((ring, gap(1.0), speech, gap(1.0))))))
    assert listener.sound_at == 0.0
    assert listener.started_at == pytest.approx(3.0, abs=0.1)


def test_prompt_cut_off_by_the_end_of_audio_ends_at_its_last_speech(say):
    """finish() before the end silence passed: the prompt ends where its speech stopped."""
    speech = trimmed(say(ENTER))
    pcm = on_line(speech, "silent", tail_s=0.3)
    listener = PromptListener()
    assert listener.feed(pcm) is False
    listener.finish()
    assert listener.ended_at == pytest.approx(LEAD_S + speech.size / RATE, abs=0.3)
    assert prompt_bounds(pcm) == (listener.started_at, listener.ended_at)


def test_listener_costs_under_50_microseconds_per_frame(say):
    """A listener fed 20 ms frames of a noisy line (every frame above the floor) spends < 50 us on each."""
    pcm = on_line(np.concatenate([samples(say(MENU)), gap(0.5), samples(say(HOLD))]), "noisy")
    frames = [pcm[at : at + FRAME_BYTES] for at in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
    best = float("inf")
    for _ in range(3):
        listener = PromptListener(end_silence_ms=60_000)  # never done: every frame is analysed
        started = time.perf_counter()
        for frame in frames:
            listener.feed(frame)
        best = min(best, (time.perf_counter() - started) / len(frames))
    print(f"PromptListener: {best * 1e6:.1f} us per 20 ms frame over {len(frames)} frames")
    assert best < 50e-6


# =========================================================================== offline measures


@pytest.mark.parametrize("line", ["silent", "quiet", "noisy"])
def test_dead_air_is_silence_over_the_threshold(say, line):
    """A 3 s gap between two prompts is dead air (within 300 ms); a 1.5 s gap is not."""
    first, second = trimmed(say(ENTER)), trimmed(say(CONFIRM))
    start = LEAD_S + first.size / RATE
    long_gap = on_line(np.concatenate((first, gap(3.0), second)), line, tail_s=0.5)
    found = dead_air(long_gap, threshold_ms=2000)
    assert len(found) == 1
    assert found[0] == pytest.approx((start, start + 3.0), abs=0.3)
    short_gap = on_line(np.concatenate((first, gap(1.5), second)), line, tail_s=0.5)
    assert dead_air(short_gap, threshold_ms=2000) == []


def test_silences_ignore_a_click(say):
    """A click in the middle of a 3 s pause does not split the silence."""
    first, second = trimmed(say(ENTER)), trimmed(say(CONFIRM))
    pause = gap(3.0)
    pause[RATE : RATE + 8] = 30000
    pcm = on_line(np.concatenate((first, pause, second)), "noisy", tail_s=0.5)
    assert [end - start for start, end in silences(pcm, 2000)] == [pytest.approx(3.0, abs=0.3)]


@pytest.mark.parametrize("codec", ["linear", "mu-law"])
def test_level_of_a_tone_at_minus_20_dbfs(codec):
    """A -20 dBFS tone with silence around it reads -20 dBFS within 1 dB, RMS and peak."""
    pcm = bytes(RATE) + tone(1000, 1.5, -20.0) + bytes(2 * RATE)
    if codec == "mu-law":
        pcm = ulaw(pcm)
    assert level_dbfs(pcm) == pytest.approx(-20.0, abs=1.0)
    assert peak_dbfs(pcm) == pytest.approx(-20.0, abs=1.0)


def test_level_of_silence_is_none():
    """Nothing heard, no level."""
    assert level_dbfs(bytes(RATE)) is None
    assert peak_dbfs(bytes(RATE)) is None


def test_level_leaves_pauses_out(say):
    """Padding a prompt with silence or -60 dBFS noise changes its level by under 0.5 dB."""
    speech = trimmed(say(MENU))
    alone = level_dbfs(to_pcm(speech))
    assert level_dbfs(on_line(speech, "quiet", lead_s=3.0, tail_s=3.0)) == pytest.approx(alone, abs=0.5)


def test_clipping_found_on_clipped_speech_and_not_on_normal_speech(say):
    """Speech driven 12 dB into clipping shows clipped samples, linear or after G.711; normal and loud speech show none."""
    speech = samples(say(HOLD))
    driven = to_pcm(speech * 4)
    for pcm in (driven, ulaw(driven), audioop.alaw2lin(audioop.lin2alaw(driven, 2), 2)):
        assert clipping(pcm) > 0.01
    loud = speech * 32000 / np.abs(speech).max()  # peaks at -0.2 dBFS, not clipped
    for pcm in (to_pcm(speech), ulaw(to_pcm(speech)), to_pcm(loud), ulaw(to_pcm(loud))):
        assert clipping(pcm) < 0.0005


def test_measure_gathers_every_measure(say):
    """measure() of a stretch after our input: first sound, prompt start and end, level, peak, clipping, dead air."""
    clean = say(ENTER)
    start, end = speech_bounds(clean)
    pcm = on_line(np.concatenate((samples(clean), gap(2.5))), "quiet")
    measures = measure(pcm)
    assert isinstance(measures, AudioMeasures)
    assert measures.first_sound_s == pytest.approx(LEAD_S + start, abs=0.1)
    assert measures.prompt_start_s == pytest.approx(LEAD_S + start, abs=0.1)
    assert measures.prompt_end_s == pytest.approx(LEAD_S + end, abs=0.3)
    assert measures.prompt_duration_s == pytest.approx(end - start, abs=0.3)
    assert measures.level_dbfs == pytest.approx(level_dbfs(pcm))
    assert measures.clipping == 0.0
    assert measures.dead_air == ((pytest.approx(LEAD_S + end, abs=0.3), pytest.approx(len(pcm) / 2 / RATE, abs=0.02)),)


# =========================================================================== fingerprints


def similarity_after_the_line(say, text: str, voice: str, line: str, offset_s: float, gain_db: float, baseline_voice: str = "rms") -> float:
    """Similarity of the clean MENU baseline to text as heard on a line (offset_s later than LEAD_S, gain_db louder)."""
    baseline = fingerprint(say(MENU, baseline_voice))
    heard = on_line(samples(say(text, voice)) * 10 ** (gain_db / 20), line, lead_s=LEAD_S + offset_s)
    return audio_similarity(baseline, fingerprint(heard))


@pytest.mark.parametrize("voice", ["rms", "kal"])
@pytest.mark.parametrize("gain_db", [-6.0, 6.0])
@pytest.mark.parametrize("line", ["silent", "quiet", "noisy"])
@pytest.mark.parametrize("offset_s", [0.06, -0.05, 0.09])
def test_same_prompt_through_the_line_is_similar(say, voice, gain_db, line, offset_s):
    """The same prompt through mu-law, shifted, 6 dB quieter or louder, on any line, scores 0.9 or more."""
    score = similarity_after_the_line(say, MENU, voice, line, offset_s, gain_db, baseline_voice=voice)
    print(f"same prompt, {voice}, {line}, {offset_s * 1000:+.0f} ms, {gain_db:+.0f} dB: {score:.3f}")
    assert score >= 0.9


@pytest.mark.parametrize(
    ("text", "voice"),
    [(HOLD, "rms"), (ENTER, "rms"), (MENU, "slt"), (MENU, "kal"), (MENU, "awb")],
    ids=["other text", "short other text", "voice slt", "voice kal", "voice awb"],
)
def test_other_words_or_another_voice_are_not_similar(say, text, voice):
    """Another prompt text, or the same text in another voice, scores 0.5 or less."""
    score = similarity_after_the_line(say, text, voice, "silent", 0.0, 0.0)
    print(f"{voice}: {text[:30]!r}: {score:.3f}")
    assert score <= 0.5


def test_similar_sentences_apart(say):
    """'enter your account number' against 'enter your card number' scores 0.5 or less."""
    score = audio_similarity(fingerprint(say(ENTER)), fingerprint(say(ENTER_CARD)))
    print(f"account number / card number: {score:.3f}")
    assert score <= 0.5


def test_fingerprint_is_compact_json_text(say):
    """A fingerprint is ASCII text that survives JSON, about 1.1 kB per second of speech, equal to itself."""
    speech = say(MENU)
    text = fingerprint(speech)
    assert json.loads(json.dumps({"fingerprint": text}))["fingerprint"] == text
    assert len(text) < 1.2 * 1100 * len(speech) / 2 / RATE
    assert audio_similarity(text, text) == pytest.approx(1.0)


def test_fingerprint_of_silence_matches_only_silence(say):
    """No speech gives an empty fingerprint: alike to another empty one, not to a prompt."""
    empty = fingerprint(to_pcm(noise(2 * RATE, -60.0)))
    assert audio_similarity(empty, fingerprint(bytes(RATE))) == 1.0
    assert audio_similarity(empty, fingerprint(say(ENTER))) == 0.0


def test_foreign_fingerprint_text_is_refused():
    """Text that is not a fingerprint of this version is a ValueError naming the prefix it wants."""
    with pytest.raises(ValueError, match="fp1:"):
        audio_similarity("AAAA", "AAAA")


def test_fingerprint_of_10_seconds_is_fast(say):
    """Fingerprinting 10 s of speech takes under 250 ms; comparing two under 10 ms."""
    pcm = (say(MENU) + say(HOLD))[: 2 * 10 * RATE]
    started = time.perf_counter()
    text = fingerprint(pcm)
    made = time.perf_counter() - started
    started = time.perf_counter()
    audio_similarity(text, text)
    compared = time.perf_counter() - started
    print(f"fingerprint of 10 s: {made * 1000:.1f} ms, comparison: {compared * 1000:.2f} ms")
    assert made < 0.25 and compared < 0.01


# =========================================================================== PESQ


def test_pesq_missing_is_none_with_a_reason(monkeypatch):
    """Without the pesq package, pesq_mos() is None and pesq_unavailable() says how to get it."""
    monkeypatch.setattr(analysis, "_pesq", lambda: None)
    assert pesq_mos(tone(440, 1.0), tone(440, 1.0)) is None
    assert "pip install 'cxtest[pesq]'" in pesq_unavailable()


def test_pesq_scores_the_line(say):
    """PESQ: a prompt against itself ~4.5; delayed, halved and through mu-law still > 3.5; with loud noise < 2.5."""
    pytest.importorskip("pesq", reason="the optional pesq package (pip install 'cxtest[pesq]') is not installed")
    assert pesq_unavailable() is None
    reference = say(MENU)
    x = samples(reference) * 0.5
    assert pesq_mos(reference, reference) > 4.4
    assert pesq_mos(reference, ulaw(to_pcm(np.concatenate((gap(0.3), x, gap(0.1)))))) > 3.5
    noisy = ulaw(to_pcm(np.concatenate((gap(0.3), x + noise(x.size, speech_rms_dbfs(x) - 5), gap(0.1)))))
    assert pesq_mos(reference, noisy) < 2.5
    with pytest.raises(ValueError, match="silent"):
        pesq_mos(reference, bytes(RATE))
