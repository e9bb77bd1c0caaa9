"""IVR paths: call, hear each prompt, check its words, answer with DTMF or speech, measure the experience.

    channel: ivr
    target: { uri: "sip:ivr@127.0.0.1:5080" }
    steps:
      - expect_prompt: "Welcome to Acme Bank"        # speech-to-text, fuzzy match
        min_confidence: 0.8
        within: 3s                                   # the prompt must start within 3 s
      - send_dtmf: "1"
      - expect_prompt: ["Billing", "Accounts"]       # one of several wordings
      - expect_hangup: 20s

The session places the call on its first step and keeps a listening cursor: the
moment after which the next prompt is looked for (the end of the last prompt
heard, or the moment our last input was sent). Every run keeps the call
recording, the transcript of each prompt with its timings, and the SIP trace.

`transcribe: 0.05` in the target transcribes only a share of the calls (the
first, then one in 20): speech-to-text cannot keep up with hundreds of calls at
once. Every call then checks each prompt's sound against its baseline
(`cxtest baseline`), the transcribed ones their words as well.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, AsyncIterator, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator

from cxtest.checks import judge_levels
from cxtest.errors import ProbeError, StepFailed
from cxtest.model import CheckResult, Duration, ExpectLevels, Frozen, Observation, Outcome, Scenario, Step
from probes.base import RunContext

if TYPE_CHECKING:  # the voice engine loads only when an IVR scenario runs
    from probes.voice import Call, UserAgent

POLL_S = 0.1  # how often a listening step looks at newly received audio
TAIL_PAUSE_S = 0.12  # a pause this long, after we answered over a prompt, is where that prompt stopped
TAIL_REACT_S = 0.1  # how much of our input (a key's tone) the far end hears before it can act on it
# A prompt differs from its baseline below these: its words (after speech-to-text) or its sound.
# With `transcribe` under 1, a prompt that sounds less like its baseline than BASELINE_AUDIO_SIMILARITY
# fails. Sandbox prompts through G.711 (shifted, 6 dB quieter, 20 dB SNR) score 0.88-1.0, and 0.76-0.79
# with a 40 ms hole from the IVR's media clock running late; another prompt <= 0.32, another voice
# <= 0.54, a dropped sentence 0.61, two options swapped 0.66; a changed number or word in a long
# prompt 0.79-0.94, which only the words catch (on the transcribed calls).
BASELINE_TEXT_SIMILARITY = 0.9
BASELINE_AUDIO_SIMILARITY = 0.75


def baseline_path(scenario_file: str | Path) -> Path:
    """Where `cxtest baseline` keeps a scenario's prompts: baselines/<scenario file stem>.json beside it."""
    path = Path(scenario_file)
    return path.parent / "baselines" / f"{path.stem}.json"


class IvrAuth(Frozen):
    user: str
    password: str
    realm: str | None = None


class IvrTarget(Frozen):
    uri: str
    auth: IvrAuth | None = None
    from_user: str = "cxtest"
    display_name: str = ""
    codecs: list[Literal["PCMU", "PCMA"]] = ["PCMU", "PCMA"]
    no_answer_timeout: Duration = 30.0
    dtmf_method: Literal["rfc4733", "info", "inband"] = "rfc4733"
    stt: Literal["whisper", "sphinx"] = "whisper"
    end_silence: Duration = 0.7  # silence after speech that ends a prompt
    dead_air: Duration = 2.0  # silence longer than this, where a prompt was expected, is dead air
    voice: str = "rms"  # flite voice for `say` steps
    local_host: str = "127.0.0.1"
    # The share of calls whose prompts are transcribed and their words fitted (the first call, then
    # evenly spread); the others only compare each prompt's sound with its baseline.
    transcribe: float = Field(1.0, gt=0, le=1)

    @field_validator("uri")
    @classmethod
    def _sip(cls, value: str) -> str:
        from probes.voice.sip import sip_uri

        if "${" not in value:
            sip_uri(value)
        return value


class ExpectPrompt(Step):
    expect_prompt: str | list[str]  # a list: any one of these wordings
    min_confidence: float = Field(0.8, ge=0, le=1)  # similarity between expected and heard words
    within: Duration = 10.0  # the prompt must start this soon after listening begins
    whole: bool = False  # the whole prompt must match, not just contain the expected words
    barge_in: bool = False  # done as soon as the words are heard; the prompt may play on under the next step
    optional: bool = False  # not heard or not matching: passed, and the listening cursor stays
    latency: ExpectLevels | None = None  # limits on prompt_latency
    duration: ExpectLevels | None = None  # limits on prompt_duration
    reference: str | None = None  # a WAV of the prompt as it should sound: PESQ `mos` (needs the pesq extra)
    mos: ExpectLevels | None = None  # limits on mos

    def describe(self) -> str:
        words = self.expect_prompt if isinstance(self.expect_prompt, str) else " | ".join(self.expect_prompt)
        return self.name or f"hear {words!r}"

    @property
    def wordings(self) -> list[str]:
        return [self.expect_prompt] if isinstance(self.expect_prompt, str) else list(self.expect_prompt)


class SendDtmf(Step):
    send_dtmf: str
    method: Literal["rfc4733", "info", "inband"] | None = None  # default: the target's dtmf_method
    tone: Duration = 0.1
    gap: Duration = 0.1

    @field_validator("send_dtmf")
    @classmethod
    def _digits(cls, value: str) -> str:
        from probes.voice.dtmf import validate_digits

        return validate_digits(value)

    def describe(self) -> str:
        return self.name or f"press {self.send_dtmf}"


class Say(Step):
    say: str
    voice: str | None = None

    def describe(self) -> str:
        return self.name or f"say {self.say!r}"


class Play(Step):
    play: str  # a WAV file, relative to the scenario file

    def describe(self) -> str:
        return self.name or f"play {self.play}"


class Wait(Step):
    wait: Duration

    def describe(self) -> str:
        return self.name or f"wait {self.wait:g}s"


class ExpectSilence(Step):
    expect_silence: Duration

    def describe(self) -> str:
        return self.name or f"silence for {self.expect_silence:g}s"


class ExpectTransfer(Step):
    expect_transfer: Duration  # within

    def describe(self) -> str:
        return self.name or "transferred"


class ExpectHangup(Step):
    expect_hangup: Duration  # within

    def describe(self) -> str:
        return self.name or "IVR hangs up"


class Hangup(Step):
    hangup: Literal[True]

    def describe(self) -> str:
        return self.name or "hang up"


_KINDS = {
    "expect_prompt": ExpectPrompt,
    "send_dtmf": SendDtmf,
    "say": Say,
    "play": Play,
    "wait": Wait,
    "expect_silence": ExpectSilence,
    "expect_transfer": ExpectTransfer,
    "expect_hangup": ExpectHangup,
    "hangup": Hangup,
}


def _kind(value: Any) -> str | None:
    # Tags are the class names: the loader tells a union tag from a YAML key by its capital.
    if isinstance(value, dict):
        return next((model.__name__ for key, model in _KINDS.items() if key in value), None)
    return type(value).__name__ if type(value) in _KINDS.values() else None


IvrStep = Annotated[
    Union[tuple(Annotated[model, Tag(model.__name__)] for model in _KINDS.values())],  # type: ignore[misc]
    Discriminator(
        _kind,
        custom_error_type="ivr_step",
        custom_error_message=f"an IVR step needs one of: {', '.join(_KINDS)}",
    ),
]


class IvrSession:
    """One call through the IVR: placed on the first step, hung up when the run ends."""

    far_end = "the IVR"  # who ends calls, in messages
    heard_as = "prompt"  # what expect_prompt listens for, in messages and its check's name

    def __init__(self, probe: IvrProbe, scenario: Scenario, ctx: RunContext):
        self.probe, self.scenario, self.ctx = probe, scenario, ctx
        self.target: IvrTarget = scenario.target
        self.call: Call | None = None
        self.cursor = 0.0  # monotonic time from which the next prompt is looked for
        self.interrupted = False  # we answered over a prompt (barge-in): its tail may still be playing
        self.input_began: float | None = None  # monotonic time our last input started
        self.prompts: list[dict[str, Any]] = []  # what each expect_prompt heard, for call.json
        self.inputs: list[dict[str, Any]] = []  # what we sent and when, for call.json
        self.baseline = self._load_baseline()
        self._engine: asyncio.Future | None = None
        share = getattr(self.target, "transcribe", 1.0)  # the phone probe's target has no such setting
        self.by_sound = share < 1.0  # every prompt is checked against its baseline's sound
        self.transcribing = share >= 1.0 or probe.transcribes(scenario.id, share)

    def _speech_engine(self) -> asyncio.Future:
        """The speech-to-text engine, loading in a thread from the first call on (a cold load takes seconds)."""
        from probes.voice import speech

        if self._engine is None:
            self._engine = asyncio.ensure_future(asyncio.to_thread(speech.stt_engine, self.target.stt))
        return self._engine

    async def step(self, index: int, step: Step, timeout: float) -> Observation:
        measures: dict[str, float] = {}
        if self.call is None:
            if not self.transcribing:
                self._require_baselines()  # before dialling: an untestable call would only load the IVR
            elif any(isinstance(each, ExpectPrompt) for each in self.scenario.steps):
                self._speech_engine()  # loads while the call is placed and the first prompt plays
            measures.update(await self._place_call())
        call = self.call
        assert call is not None
        if isinstance(step, ExpectPrompt):
            observation = await self._expect_prompt(index, step, timeout)
        elif isinstance(step, SendDtmf):
            observation = await self._send_dtmf(step)
        elif isinstance(step, Say):
            observation = await self._say(step)
        elif isinstance(step, Play):
            observation = await self._play(step)
        elif isinstance(step, Wait):
            await self._live(asyncio.sleep(step.wait))
            observation = Observation()
        elif isinstance(step, ExpectSilence):
            observation = await self._expect_silence(step)
        elif isinstance(step, ExpectTransfer):
            observation = await self._expect_transfer(step)
        elif isinstance(step, ExpectHangup):
            observation = await self._expect_hangup(step)
        else:
            await call.hangup()
            observation = Observation(checks=(CheckResult("hangup", Outcome.passed, None, call.end_reason, f"hung up ({call.end_reason})"),))
        return Observation(
            checks=observation.checks,
            measures={**measures, **observation.measures, **self._media_measures()},
            evidence=observation.evidence,
        )

    # -- the call

    async def _place_call(self) -> dict[str, float]:
        from probes.voice import Credentials

        target = self.target
        ua = await self.probe.user_agent(target.local_host)
        auth = Credentials(target.auth.user, target.auth.password, target.auth.realm) if target.auth else None
        self.call = call = await ua.dial(
            target.uri, auth=auth, from_user=target.from_user, display_name=target.display_name,
            codecs=tuple(target.codecs), no_answer_timeout=target.no_answer_timeout,
        )
        measures = {}
        if call.pdd is not None:
            measures["post_dial_delay"] = call.pdd
        if not call.answered:
            raise StepFailed(f"call to {target.uri} not answered: {call.status} {call.reason}".rstrip())
        measures["time_to_answer"] = call.time_to_answer
        self.cursor = call.answered_at
        return measures

    def _media_measures(self) -> dict[str, float]:
        media = self.call.media if self.call is not None else None
        if media is None or not media.stats.received:
            return {}
        return {"loss": media.stats.loss_fraction, "jitter": media.stats.jitter_ms / 1000}

    async def _live(self, work) -> Any:
        """Run `work` unless the far end hangs up first: then the step fails saying so."""
        call = self.call
        task = asyncio.ensure_future(work)
        ended = asyncio.ensure_future(call.ended.wait())
        try:
            await asyncio.wait([task, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if not task.done():
            task.cancel()
            raise StepFailed(f"{self.far_end} ended the call ({call.end_reason}) {self._since_answer()}")
        return task.result()

    def _since_answer(self) -> str:
        call = self.call
        return f"{time.monotonic() - call.answered_at:.1f}s after answer" if call.answered_at else ""

    # -- our input

    async def _send_dtmf(self, step: SendDtmf) -> Observation:
        from probes.voice import CallEnded

        method = step.method or self.target.dtmf_method
        began = time.monotonic()
        try:
            await self.call.send_dtmf(step.send_dtmf, method=method, tone_ms=int(step.tone * 1000), gap_ms=int(step.gap * 1000))
        except CallEnded as e:
            raise StepFailed(str(e)) from None
        except ValueError as e:  # the far end offered no telephone-event
            raise ProbeError(str(e)) from None
        self._sent(began, f"DTMF {step.send_dtmf}")
        return Observation(checks=(CheckResult("dtmf", Outcome.passed, step.send_dtmf, method, f"sent {step.send_dtmf} ({method})"),))

    async def _say(self, step: Say) -> Observation:
        from probes.voice.speech import synthesise

        pcm = await asyncio.to_thread(synthesise, step.say, step.voice or self.target.voice)
        began = time.monotonic()
        await self._live(self.call.play(pcm))
        self._sent(began, f"said {step.say!r}")
        return Observation(checks=(CheckResult("say", Outcome.passed, step.say, len(pcm) / 16000, f"said {step.say!r}"),))

    async def _play(self, step: Play) -> Observation:
        from probes.voice.audio import read_wav

        path = self._scenario_path(step.play)
        try:
            pcm = await asyncio.to_thread(read_wav, path)
        except ValueError as e:
            raise ProbeError(str(e)) from None
        began = time.monotonic()
        await self._live(self.call.play(pcm))
        self._sent(began, f"played {path.name}")
        return Observation(checks=(CheckResult("play", Outcome.passed, str(path), len(pcm) / 16000, f"played {path.name}"),))

    def _sent(self, began: float, what: str) -> None:
        """Our input is over: listening for the next prompt starts now; the timeline keeps when it began."""
        self.cursor = time.monotonic()
        self.input_began = began
        recording = self.call.media.recording
        if recording.started_at is not None:
            self.inputs.append({"what": what, "at": round(recording.offset(began), 3), "until": round(recording.offset(self.cursor), 3)})

    # -- what the IVR does

    async def _expect_hangup(self, step: ExpectHangup) -> Observation:
        call = self.call
        try:
            await asyncio.wait_for(call.ended.wait(), step.expect_hangup)
        except TimeoutError:
            text = f"the IVR did not hang up within {step.expect_hangup:g}s"
            return Observation(checks=(CheckResult("hangup", Outcome.failed, "remote bye", "still connected", text),))
        outcome = Outcome.passed if call.end_reason == "remote bye" else Outcome.failed
        return Observation(checks=(CheckResult("hangup", outcome, "remote bye", call.end_reason, f"call ended: {call.end_reason}"),))

    async def _expect_transfer(self, step: ExpectTransfer) -> Observation:
        call = self.call
        since = self.cursor - call.started_at
        deadline = time.monotonic() + step.expect_transfer
        while time.monotonic() < deadline and not call.is_over:
            for at, what, detail in call.events:
                if at >= since and what in ("re-INVITE", "REFER", "UPDATE"):
                    text = f"transferred: {what} {detail}".rstrip()
                    return Observation(checks=(CheckResult("transfer", Outcome.passed, "re-INVITE or REFER", what, text),))
            await asyncio.sleep(POLL_S)
        seen = "the call ended" if call.is_over else f"no re-INVITE or REFER within {step.expect_transfer:g}s"
        return Observation(checks=(CheckResult("transfer", Outcome.failed, "re-INVITE or REFER", None, f"not transferred: {seen}"),))

    async def _expect_silence(self, step: ExpectSilence) -> Observation:
        from probes.voice import analysis

        started = time.monotonic()
        await self._live(asyncio.sleep(step.expect_silence))
        pcm = self.call.media.recording.pcm(start=started)
        frames = analysis.speech_frames(pcm)
        if frames.any():
            at = float(frames.argmax()) * 0.02
            text = f"expected {step.expect_silence:g}s of silence, heard speech {at:.2f}s in"
            return Observation(checks=(CheckResult("silence", Outcome.failed, step.expect_silence, at, text),))
        return Observation(checks=(CheckResult("silence", Outcome.passed, step.expect_silence, None, f"{step.expect_silence:g}s of silence"),))

    async def _expect_prompt(self, index: int, step: ExpectPrompt, timeout: float) -> Observation:
        if not self.transcribing:
            return await self._expect_prompt_by_sound(index, step, timeout)
        from probes.voice import analysis, speech

        call = self.call
        begin = self.cursor
        transcriber = _Transcriber(self._speech_engine(), call.media.recording, step.barge_in)
        try:
            heard = await self._listen(step, timeout, transcriber)
            if heard is None:
                return self._not_heard(step, begin)
            started, ended, still_playing = heard
            pcm = call.media.recording.pcm(start=started, end=ended)
            early = self._fit_early(step, pcm, transcriber.text_so_far())
            try:
                transcript = await transcriber.finish(started, ended)
            except BaseException:
                if early is not None:
                    early.cancel()
                raise
        finally:
            transcriber.cancel()
        score, wording, fit = await self._match(step, pcm, transcript.text, early)
        measures, fingerprint = await self._prompt_measures(begin, started, ended, pcm)
        measures["similarity"] = score
        measures["confidence"] = transcript.confidence
        matched = score >= step.min_confidence
        shown = _short(transcript.text)
        how = "similarity" if fit is None else "fit"
        if matched:
            text = f"heard {shown} ({how} {score:.2f} >= {step.min_confidence:g})"
        else:
            text = (
                f"expected {_short(wording)}, heard {shown} ({how} {score:.2f} < {step.min_confidence:g}): "
                f"{speech.word_diff(wording, transcript.text)}"
            )
            if fit is not None and fit.worst():
                text += f"; fitting worst: {fit.worst()}"
        text += self._cut_short(still_playing, timeout)
        outcome = Outcome.passed if matched else (Outcome.passed if step.optional else Outcome.failed)
        if step.optional and not matched:
            text = f"optional {self.heard_as} not heard: {text}"
        checks = [CheckResult(self.heard_as, outcome, wording, transcript.text, text)]
        known = self._baseline_of(index)
        sound = fingerprint
        if known is not None and step.barge_in:  # cut where its words were recognised: compare as much as the baseline has
            sound = await asyncio.to_thread(analysis.fingerprint, await self._as_far_as_the_baseline(known, started))
        if known is not None and self.by_sound:  # judged by its sound too, like the calls not transcribed
            checks.append(self._sounds_like_baseline(step, known, sound, measures)[0])
        if matched:
            checks += self._against_baseline(index, step, transcript.text, sound)
        recording = call.media.recording
        entry = {
            "heard": transcript.text,
            "matched": matched,
            "similarity": round(score, 3),
            "scored_by": how,
            "transcript_similarity": round(_text_score(step, wording, transcript.text), 3),
            "confidence": round(transcript.confidence, 3),
            "engine": transcript.engine,
            "fingerprint": fingerprint,
            "words": [
                {"word": w.text, "at": round(recording.offset(started) + w.start, 3), "probability": round(w.probability, 3)}
                for w in transcript.words
            ],
        }
        if "audio_similarity" in measures:
            entry["audio_similarity"] = round(measures["audio_similarity"], 3)
        evidence = {} if matched else {"expected": " | ".join(step.wordings), "heard": transcript.text}
        return await self._prompt_done(index, step, started, ended, pcm, matched, checks, measures, entry, evidence)

    async def _expect_prompt_by_sound(self, index: int, step: ExpectPrompt, timeout: float) -> Observation:
        """A call not transcribed: the prompt heard matches when it sounds like its baseline.

        A barge-in prompt is cut where its baseline's was (where its words were recognised then).
        """
        call = self.call
        begin = self.cursor
        known = self._baseline_of(index)
        heard = await self._listen(step, timeout, None, known["duration"] if known and step.barge_in else None)
        if heard is None:
            return self._not_heard(step, begin)
        if known is None:  # an optional prompt the baseline never heard
            raise ProbeError(self._no_baseline(index))
        started, ended, still_playing = heard
        pcm = call.media.recording.pcm(start=started, end=ended)
        measures, fingerprint = await self._prompt_measures(begin, started, ended, pcm)
        check, matched = self._sounds_like_baseline(step, known, fingerprint, measures)
        if still_playing or call.is_over:
            check = CheckResult(check.name, check.outcome, check.expected, check.actual, check.text + self._cut_short(still_playing, timeout))
        entry = {
            "heard": "", "transcribed": False, "matched": matched, "scored_by": "audio",
            "audio_similarity": round(measures["audio_similarity"], 3), "fingerprint": fingerprint, "words": [],
        }
        evidence = {} if matched else {"expected": " | ".join(step.wordings), "baseline": known["heard"]}
        return await self._prompt_done(index, step, started, ended, pcm, matched, [check], measures, entry, evidence)

    async def _prompt_measures(self, begin: float, started: float, ended: float, pcm: bytes) -> tuple[dict[str, float], str]:
        """What every prompt heard measures, transcribed or not, and its audio fingerprint.

        Worked out in a thread: ~20 ms of voice activity detection and FFTs a prompt, which
        for a hundred calls whose prompts end together would stall every other call's loop.
        """
        from probes.voice import analysis

        call = self.call
        since_listening = call.media.recording.pcm(start=begin, end=ended)
        dead_air_ms = int(self.target.dead_air * 1000)

        def work() -> tuple[dict[str, float], str]:
            measures = {"prompt_latency": started - begin, "prompt_duration": ended - started, "clipping": analysis.clipping(pcm)}
            level = analysis.level_dbfs(pcm)
            if level is not None:
                measures["level"] = level
            gaps = analysis.dead_air(since_listening, threshold_ms=dead_air_ms)
            measures["dead_air"] = max((end - start for start, end in gaps), default=0.0)
            return measures, analysis.fingerprint(pcm)

        measures, fingerprint = await asyncio.to_thread(work)
        if not self.prompts and call.answered_at is not None:
            measures["time_to_first_audio"] = started - call.answered_at
        return measures, fingerprint

    def _cut_short(self, still_playing: bool, timeout: float) -> str:
        if still_playing:
            return f"; the {self.heard_as} was still playing at the step timeout ({timeout:g}s)"
        if self.call.is_over:
            return f"; {self.far_end} ended the call ({self.call.end_reason}) during the {self.heard_as}"
        return ""

    async def _prompt_done(
        self, index: int, step: ExpectPrompt, started: float, ended: float, pcm: bytes, matched: bool,
        checks: list[CheckResult], measures: dict[str, float], entry: dict[str, Any], evidence: dict[str, str],
    ) -> Observation:
        """The checks every prompt heard gets (PESQ, latency, duration), its call.json entry, and the cursor moved on."""
        if step.reference is not None:
            mos_check = await self._mos(step, pcm, measures)
            if mos_check is not None:
                checks.append(mos_check)
        if step.latency is not None:
            checks.append(judge_levels("prompt_latency", measures["prompt_latency"], step.latency))
        if step.duration is not None:
            checks.append(judge_levels("prompt_duration", measures["prompt_duration"], step.duration))
        recording = self.call.media.recording
        self.prompts.append(
            {
                "step": index + 1, "expected": step.wordings, **entry,
                "at": round(recording.offset(started), 3), "duration": round(ended - started, 3),
            }
        )
        if matched or not step.optional:
            self.cursor = time.monotonic() if step.barge_in else ended
            self.interrupted = step.barge_in
        return Observation(checks=tuple(checks), measures=measures, evidence=evidence)

    def _fit_early(self, step: ExpectPrompt, pcm: bytes, so_far: str) -> asyncio.Future | None:
        """Fitting started beside the last piece's transcription, when nothing of it is needed: for a whole prompt,
        or when the expected words are already in what was transcribed (the words before them are then known)."""
        from probes.voice import speech

        engine = self._speech_engine()
        if not engine.done() or engine.exception() is not None or not hasattr(engine.result(), "fit"):
            return None
        if not step.whole and not all(speech.contains_similarity(w, so_far) >= step.min_confidence for w in step.wordings):
            return None
        return asyncio.ensure_future(asyncio.to_thread(engine.result().fit, pcm, step.wordings, so_far, step.whole))

    async def _match(self, step: ExpectPrompt, pcm: bytes, heard: str, early: asyncio.Future | None = None) -> tuple[float, str, Any]:
        """(score, the wording scored best, its Fit or None): the expected words fitted to the audio where the
        engine can (whisper), else the transcript's similarity to them."""

        engine = await asyncio.shield(self._speech_engine())
        if early is not None:
            fits = await early
        elif hasattr(engine, "fit"):
            fits = await asyncio.to_thread(engine.fit, pcm, step.wordings, heard, step.whole)
        else:
            fits = []
        if fits:
            best = max(fits, key=lambda fit: fit.score)
            return best.score, best.expected, best
        score, wording = max((_text_score(step, wording, heard), wording) for wording in step.wordings)
        return score, wording, None

    async def _mos(self, step: ExpectPrompt, pcm: bytes, measures: dict[str, float]) -> CheckResult | None:
        """PESQ of the prompt heard against its reference recording, into `measures`; the check on its limits."""
        from probes.voice import analysis
        from probes.voice.audio import read_wav

        reason = analysis.pesq_unavailable()
        if reason is not None:
            raise ProbeError(f"reference: {reason}")
        try:
            reference = await asyncio.to_thread(read_wav, self._scenario_path(step.reference))
            measures["mos"] = await asyncio.to_thread(analysis.pesq_mos, reference, pcm)
        except ValueError as e:
            return CheckResult("mos", Outcome.failed, step.reference, None, f"PESQ against {step.reference}: {e}")
        return judge_levels("mos", measures["mos"], step.mos) if step.mos is not None else None

    def _scenario_path(self, name: str) -> Path:
        path = Path(name)
        if not path.is_absolute() and self.scenario.source.file not in ("", "<memory>"):
            path = Path(self.scenario.source.file).parent / path
        return path

    async def _after_the_tail(self, began: float, since: float, limit: float = 2.0) -> float:
        """Where the prompt we answered over stopped: the start of the first pause after the far end could act
        on our input (which `began`, and ended at `since`); `since` if none shows within `limit` s.

        A pause that ended before the far end could hear ~0.1 s of our input (a key's tone) is the
        prompt's own: it went on after it. Pauses are looked for from the input's start, not from
        `since`: a DTMF send that took 0.3-1.3 s under load returned after the next prompt had
        begun, whose first sentence was then taken for the old prompt's tail.
        The sandbox IVR leaves 140-160 ms between the prompt it cuts and the next; words are < 100 ms apart.
        """
        from probes.voice import analysis

        recording = self.call.media.recording
        earliest = began + min(since - began, TAIL_REACT_S)
        look_from: float | None = None
        while time.monotonic() - since < limit and not self.call.is_over:
            await asyncio.sleep(POLL_S)
            if recording.started_at is None:
                continue
            if look_from is None:
                look_from = max(began - 0.5, recording.started_at)  # the pause we answered in may have begun before
            for gap_start, gap_end in analysis.silences(recording.pcm(start=look_from), 100):
                start, end = look_from + gap_start, look_from + gap_end
                if end < earliest:
                    continue  # the prompt went on after this pause
                if start <= began:
                    return began  # we answered in a pause that lasted: nothing was playing
                if end - start >= TAIL_PAUSE_S:  # speech was going when we answered; it has now stopped
                    return start
            # Only the last moments can still hold the pause: looking at the whole tail again on every poll
            # cost ~2 ms a call, which 150 calls ending their menus together could not afford 10 times a second.
            heard_until = recording.started_at + recording.duration
            look_from = max(look_from, heard_until - TAIL_PAUSE_S - 0.2)
        return since

    def _not_heard(self, step: ExpectPrompt, begin: float) -> Observation:
        call = self.call
        if call.is_over:
            text = f"{self.far_end} ended the call ({call.end_reason}) before a {self.heard_as} {self._since_answer()}"
        else:
            from probes.voice import analysis

            pcm = call.media.recording.pcm(start=begin)
            sound = analysis.sound_frames(pcm).any() if pcm else False
            what = "only non-speech audio (music or tones)" if sound else "silence"
            text = f"no {self.heard_as} started within {step.within:g}s: {what}"
        measures = {}
        if not call.is_over:
            gaps = analysis.dead_air(pcm, threshold_ms=int(self.target.dead_air * 1000))
            if gaps:
                measures["dead_air"] = max(end - start for start, end in gaps)
        if step.optional:
            check = CheckResult(self.heard_as, Outcome.passed, step.wordings, None, f"optional {self.heard_as} not heard: {text}")
        else:
            check = CheckResult(self.heard_as, Outcome.failed, step.wordings, None, text)
        return Observation(checks=(check,), measures=measures)

    async def _listen(
        self, step: ExpectPrompt, timeout: float, transcriber: _Transcriber | None, barge_in_after: float | None = None,
    ) -> tuple[float, float, bool] | None:
        """Wait for a prompt after the cursor: (start, end, still playing at the deadline) in monotonic time, or None.

        Finished sentences are handed to the transcriber as the prompt plays. Without one, a
        barge-in prompt ends `barge_in_after` seconds in (where its baseline's did).
        """
        from probes.voice import analysis, speech

        call = self.call
        recording = call.media.recording
        listener = analysis.PromptListener(end_silence_ms=int(self.target.end_silence * 1000))
        if self.interrupted:
            # The prompt we answered over plays on until the IVR acts on our input: its tail is not the next prompt.
            self.cursor = await self._after_the_tail(self.input_began or self.cursor, self.cursor)
            self.interrupted = False
        begin = self.cursor
        origin: float | None = None  # monotonic time of the first sample fed to the listener
        fed_until = begin
        # Leave time to transcribe before the runner's step timeout.
        deadline = time.monotonic() + max(0.5, timeout - 1.5)
        while True:
            now = time.monotonic()
            if recording.started_at is not None:
                heard_until = recording.started_at + recording.duration
                # No packets for a while (RTP stopped, silence suppression) is silence too, or a prompt
                # would never end; a shorter gap may be packets that are merely late, so wait for them.
                available = max(heard_until, now - self.target.end_silence - 0.5)
                if available > fed_until:
                    if origin is None:
                        origin = max(begin, recording.started_at)
                        fed_until = origin
                    pcm = recording.pcm(start=fed_until, end=heard_until) if heard_until > fed_until else b""
                    missing = int((available - fed_until) * 8000) - len(pcm) // 2
                    listener.feed(pcm + bytes(2 * max(0, missing)))
                    fed_until = available
            started = None if listener.started_at is None else origin + listener.started_at
            if started is None:
                if now - begin > step.within or call.is_over or now > deadline:
                    return None
            else:
                if listener.ended_at is not None:
                    return started, origin + listener.ended_at, False
                if call.is_over:
                    return started, fed_until, False
                if now > deadline:
                    return started, fed_until, True
                if transcriber is None:
                    if barge_in_after is not None and fed_until - started >= barge_in_after:
                        return started, started + barge_in_after, False
                else:
                    transcriber.heard(started, fed_until)
                    if step.barge_in:
                        so_far = transcriber.text_so_far()
                        if so_far and max(speech.contains_similarity(w, so_far) for w in step.wordings) >= step.min_confidence:
                            return started, transcriber.done_until, False
            await asyncio.sleep(POLL_S)

    # -- baselines

    def _load_baseline(self) -> dict[str, Any]:
        path = baseline_path(self.scenario.source.file)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ProbeError(f"cannot read the prompt baseline {path}: {e}") from None

    def _baseline_of(self, index: int) -> dict[str, Any] | None:
        """The baseline's record of step `index`'s prompt, if it has one with an audio fingerprint."""
        known = self.baseline.get(str(index + 1))
        return known if known and known.get("fingerprint") else None

    def _no_baseline(self, index: int) -> str:
        return (
            f"no baseline for step {index + 1}: run cxtest baseline {self.scenario.source.file} first, "
            "or transcribe every call (transcribe: 1)"
        )

    def _require_baselines(self) -> None:
        """A call that is not transcribed can only judge prompts by their baseline: each expected one needs it."""
        for index, step in enumerate(self.scenario.steps):
            if isinstance(step, ExpectPrompt) and not step.optional and self._baseline_of(index) is None:
                raise ProbeError(self._no_baseline(index))

    async def _as_far_as_the_baseline(self, known: dict[str, Any], started: float) -> bytes:
        """A barge-in prompt's audio as far as its baseline's went (waiting for it, bounded: it may still be playing)."""
        recording = self.call.media.recording
        until = started + known["duration"]
        deadline = time.monotonic() + known["duration"] + 1.0
        while recording.started_at + recording.duration < until and time.monotonic() < deadline and not self.call.is_over:
            await asyncio.sleep(POLL_S)
        return recording.pcm(start=started, end=until)

    def _sounds_like_baseline(
        self, step: ExpectPrompt, known: dict[str, Any], fingerprint: str, measures: dict[str, float],
    ) -> tuple[CheckResult, bool]:
        """(the check, whether it matched): the prompt's sound against its baseline's; the score goes in `measures`."""
        from probes.voice import analysis

        score = analysis.audio_similarity(known["fingerprint"], fingerprint)
        measures["audio_similarity"] = score
        name = f"{self.heard_as}_audio"
        if score >= BASELINE_AUDIO_SIMILARITY:
            text = f"sounds like its baseline (audio {score:.2f} >= {BASELINE_AUDIO_SIMILARITY:g})"
            return CheckResult(name, Outcome.passed, known["heard"], round(score, 3), text), True
        text = f"{self.heard_as} differs from its baseline (audio {score:.2f} < {BASELINE_AUDIO_SIMILARITY:g}); the baseline said {_short(known['heard'])}"
        if step.optional:
            return CheckResult(name, Outcome.passed, known["heard"], round(score, 3), f"optional {self.heard_as} not heard: {text}"), False
        return CheckResult(name, Outcome.failed, known["heard"], round(score, 3), text), False

    def _against_baseline(self, index: int, step: ExpectPrompt, heard: str, fingerprint: str) -> list[CheckResult]:
        """A prompt that changed since `cxtest baseline` recorded it: degraded, with what changed.

        A barge-in prompt is cut where its words were recognised, earlier or later from call to
        call: its words need only hold the baseline's, or be held by them.
        """
        from probes.voice import analysis, speech

        known = self.baseline.get(str(index + 1))
        if known is None:
            return []
        if step.barge_in:
            text_score = max(speech.contains_similarity(known["heard"], heard), speech.contains_similarity(heard, known["heard"]))
        else:
            text_score = speech.similarity(known["heard"], heard)
        audio_score = analysis.audio_similarity(known["fingerprint"], fingerprint) if known.get("fingerprint") else 1.0
        if text_score >= BASELINE_TEXT_SIMILARITY and audio_score >= BASELINE_AUDIO_SIMILARITY:
            text = f"same as the baseline (words {text_score:.2f}, audio {audio_score:.2f})"
            return [CheckResult("baseline", Outcome.passed, known["heard"], heard, text)]
        text = (
            f"prompt changed since the baseline (words {text_score:.2f}, audio {audio_score:.2f}): "
            f"{speech.word_diff(known['heard'], heard)}"
        )
        return [CheckResult("baseline", Outcome.degraded, known["heard"], heard, text)]

    # -- evidence

    async def close(self) -> None:
        call = self.call
        if call is None:
            return
        if not call.is_over:
            await call.hangup()
        if not self.ctx.wants_evidence:
            return
        if call.media is not None:
            call.media.recording.write_wav(self.ctx.artifact_path("call.wav"))
        self.ctx.write_text("sip-trace.txt", call.trace_text())
        timeline = {"prompts": self.prompts, "inputs": self.inputs, "end_reason": call.end_reason}
        self.ctx.write_text("call.json", json.dumps(timeline, indent=2))


def _text_score(step: ExpectPrompt, wording: str, heard: str) -> float:
    from probes.voice import speech

    return speech.similarity(wording, heard) if step.whole else speech.contains_similarity(wording, heard)


def _short(text: str, limit: int = 120) -> str:
    return "'" + (text if len(text) <= limit else text[: limit - 1] + "…") + "'"


@dataclass
class _Piece:
    at: float  # monotonic time of the piece's first sample (its lead-in of silence included)
    keep_from: float  # seconds into the piece where its own words start (before: context)
    task: asyncio.Task

    def words(self) -> list[Any]:
        if self.task.cancelled():
            return []
        # By each word's middle: recognisers stretch a word's edges into the silence around it.
        return [w for w in self.task.result().words if (w.start + w.end) / 2 >= self.keep_from]


class _Transcriber:
    """Transcribes a prompt sentence by sentence while it plays.

    Waiting for the end of a 10 s menu before transcribing it would put seconds of
    speech-to-text between the prompt's end and our key press, and an IVR's
    no-input timer may run out; cut at each pause, only the last sentence is left.
    """

    # Synthetic and studio prompts pause only ~150-200 ms between sentences, ~100 ms between
    # phrases: cut at a sentence pause after `speech` seconds, at a phrase pause after 1.5 times that.
    # Longer pieces are recognised better (in noise above all); barge-in wants the first words soon.
    PIECE_S = 2.0
    BARGE_IN_PIECE_S = 1.0
    PRE_ROLL_S = 0.25  # voice activity is detected a little after the first syllable starts
    CONTEXT_S = 1.0  # a short last sentence ("press 3") is misheard without the words before it
    LEAD_IN = bytes(2 * 8000 * 3 // 10)  # 300 ms of silence before the first piece: whisper hears its onset better
    EVERY_S = 0.3  # how often to look for a pause: the look costs ~20 µs per 20 ms of the piece

    def __init__(self, engine: asyncio.Future, recording: Any, barge_in: bool = False):
        self.engine, self.recording = engine, recording  # engine: still loading, perhaps
        speech = self.BARGE_IN_PIECE_S if barge_in else self.PIECE_S
        self.pauses = ((0.15, speech), (0.1, 1.5 * speech))  # (pause length s, speech before it s)
        self.cut_at: float | None = None  # monotonic: where the next piece starts
        self.pieces: list[tuple[float, asyncio.Task]] = []
        self._looked_at = 0.0

    def heard(self, started: float, until: float) -> None:
        """The prompt has played from `started` to `until`: send each finished sentence off."""
        from probes.voice import analysis

        if self.cut_at is None:
            self.cut_at = started
        if until - self._looked_at < self.EVERY_S:
            return
        self._looked_at = until
        pcm = self.recording.pcm(start=self.cut_at, end=until)
        length = len(pcm) / 16000
        for gap_start, gap_end in analysis.silences(pcm, 100):
            if gap_end >= length - 0.05:
                break  # the pause is still going on
            if any(gap_end - gap_start >= pause and gap_start >= speech for pause, speech in self.pauses):
                self._send(self.cut_at + (gap_start + gap_end) / 2)
                break

    def _send(self, cut: float) -> None:
        # Each later piece is heard with the second before it as context; the words in that
        # second belong to the piece before and are dropped (by their timings) in finish().
        if self.pieces:
            start = self._pause_near(self.cut_at - self.CONTEXT_S)
        else:
            start = self.cut_at - self.PRE_ROLL_S
        # Silence before a later piece's context made tiny.en hear "2.0. 2.0. 2.0." before "...an agent, press 0".
        lead_in = b"" if self.pieces else self.LEAD_IN
        pcm = lead_in + self.recording.pcm(start=start, end=cut)
        lead = len(lead_in) / 16000
        keep_from = 0.0 if not self.pieces else lead + (self.cut_at - start)
        task = asyncio.ensure_future(self._transcribe(pcm))
        self.pieces.append(_Piece(start - lead, keep_from, task))
        self.cut_at = cut

    async def _transcribe(self, pcm: bytes) -> Any:
        engine = await asyncio.shield(self.engine)  # a cancelled piece must not cancel the engine's loading
        return await asyncio.to_thread(engine.transcribe, pcm)

    def _pause_near(self, at: float) -> float:
        """The middle of the pause nearest `at` in the second around it, else `at`.

        Context cut in the middle of a word sent tiny.en into a loop ("2 .0. 2 .0. ...") in
        about half the calls, and decoding again at higher temperatures took 3-4 s, not 0.5.
        """
        from probes.voice import analysis

        begin = at - 0.5
        pauses = analysis.silences(self.recording.pcm(start=begin, end=min(at + 0.5, self.cut_at - 0.2)), 60)
        if not pauses:
            return at
        middle = min(((start + end) / 2 for start, end in pauses), key=lambda m: abs(begin + m - at))
        return begin + middle

    @property
    def done_until(self) -> float:
        return self.cut_at if self.cut_at is not None else time.monotonic()

    def text_so_far(self) -> str:
        return " ".join(" ".join(w.text for w in piece.words()) for piece in self.pieces if piece.task.done())

    async def finish(self, started: float, ended: float) -> Any:
        """The whole prompt's transcript: every piece, word times from the prompt's start."""
        from probes.voice.speech import Transcript, Word

        if self.cut_at is None:
            self.cut_at = started
        if ended - self.cut_at > 0.1:
            self._send(ended)
        if not self.pieces:
            return Transcript("", (), 0.0, (await asyncio.shield(self.engine)).name, 0.0)
        await asyncio.gather(*(piece.task for piece in self.pieces))
        words = tuple(
            Word(w.text, w.start + piece.at - started, w.end + piece.at - started, w.probability)
            for piece in self.pieces
            for w in piece.words()
        )
        confidence = sum(w.probability for w in words) / len(words) if words else 0.0
        seconds = sum(piece.task.result().seconds for piece in self.pieces)
        return Transcript(" ".join(w.text for w in words), words, confidence, self.pieces[0].task.result().engine, seconds)

    def cancel(self) -> None:
        for piece in self.pieces:
            piece.task.cancel()


class IvrProbe:
    channel: ClassVar[str] = "ivr"
    target_model: ClassVar[type] = IvrTarget
    step_model: ClassVar[Any] = IvrStep
    measures: ClassVar[frozenset[str]] = frozenset(
        {
            "time_to_answer", "post_dial_delay", "time_to_first_audio", "prompt_latency", "prompt_duration",
            "dead_air", "level", "clipping", "loss", "jitter", "similarity", "confidence", "mos", "audio_similarity",
        }
    )

    def __init__(self) -> None:
        self._agents: dict[str, UserAgent] = {}
        self._lock = asyncio.Lock()
        self._calls: Counter[str] = Counter()  # scenario id -> calls placed, for `transcribe`

    def transcribes(self, scenario_id: str, share: float) -> bool:
        """Whether this call of the scenario is transcribed: the first, then one in 1/share, evenly spread."""
        calls = self._calls[scenario_id]
        self._calls[scenario_id] += 1
        return math.floor(calls * share) != math.floor((calls - 1) * share)

    async def user_agent(self, host: str) -> UserAgent:
        """One user agent per local address, shared by every run of this probe."""
        from probes.voice import UserAgent

        async with self._lock:
            agent = self._agents.get(host)
            if agent is None:
                agent = self._agents[host] = await UserAgent(host).start()
            return agent

    @asynccontextmanager
    async def session(self, scenario: Scenario, ctx: RunContext) -> AsyncIterator[IvrSession]:
        session = IvrSession(self, scenario, ctx)
        try:
            yield session
        finally:
            await session.close()

    async def aclose(self) -> None:
        for agent in self._agents.values():
            await agent.aclose()
        self._agents.clear()
