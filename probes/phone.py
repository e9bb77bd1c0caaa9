"""Phone numbers: dial every number of an inventory, class how each one answers, hear its greeting.

    channel: phone
    target:
      dial: "sip:{number}@trunk.example.net"
      trunk: { registrar: "sip:trunk.example.net", user: acme, password: "${env:TRUNK_PASSWORD}" }
      calls_per_second: 20        # call attempts, evenly spaced
      concurrency: 100            # calls up at once
      hold: 5s                    # stay connected after the greeting
      retest_after: 2m            # a failed number is called again before its failure counts
    inventory: numbers.csv        # number, name, expected_greeting, expect, max_pdd, min_quality, tags
    expect: { outcome: answered, max_pdd: 3s }

The loader expands the scenario into one scenario per number (id `<scenario id>/<number>`),
so every number has its own result, history and incident. Each number's steps: `connect`
(the outcome class from the SIP responses and early audio, post-dial delay), then for
answered numbers `greeting` (the expected words fitted to the audio, or the audio against
the number's baseline fingerprint, or at least audio) and `hold` (no drop, RTP quality).
The probe admits the calls: at most `concurrency` up and `calls_per_second` attempts per
trunk, waiting outside the scenario's clock.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, AsyncIterator, ClassVar, Literal, Union

import yaml
from pydantic import BeforeValidator, Discriminator, Field, Tag, ValidationError, field_validator

from cxtest.checks import judge_levels
from cxtest.errors import Problem, ProbeError, ScenarioError
from cxtest.model import CheckResult, Duration, Frozen, Levels, Observation, Outcome, Scenario, Step
from probes.base import RunContext
from probes.ivr import ExpectPrompt, IvrProbe, IvrSession, baseline_path

if TYPE_CHECKING:
    from probes.voice import Call

CLASSES = ("answered", "busy", "not_found", "unavailable", "no_answer", "rejected", "announcement")
# Classes that mean we could not test the number: the run is `error`, not `failed`.
UNTESTED = ("auth_failed", "unreachable")
OutcomeClass = Literal["answered", "busy", "not_found", "unavailable", "no_answer", "rejected", "announcement"]

_BUSY = {486, 600}
_NOT_FOUND = {404, 410, 484, 604}
_UNAVAILABLE = {480, 500, 502, 503, 504}
GREETING_MAX_S = 30.0  # a greeting still playing after this is cut and judged on what was heard
BASELINE_AUDIO_SIMILARITY = 0.75
REGISTRATION_RETRY_S = 30.0  # a refused registration is not tried again sooner, so 500 numbers make one REGISTER


def _outcome_class(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip().lower().replace(" ", "_").replace("-", "_")
        return {"answer": "answered", "notfound": "not_found", "noanswer": "no_answer"}.get(value, value)
    return value


Class = Annotated[OutcomeClass, BeforeValidator(_outcome_class)]


def _words(value: Any) -> Any:
    """Tags as a list, or one CSV cell separated by spaces or semicolons."""
    if isinstance(value, str):
        return tuple(part for part in value.replace(";", " ").split() if part)
    return value


# --------------------------------------------------------------------------- what users write


class Trunk(Frozen):
    """A SIP trunk: digest credentials for its challenges, and a registrar to REGISTER with first."""

    user: str
    password: str
    realm: str | None = None
    registrar: str | None = None  # REGISTER here once per run (refreshed) before the first call
    expires: Duration = 300.0


class PhoneTarget(Frozen):
    dial: str  # a SIP URI with {number}: "sip:{number}@trunk.example.net"
    trunk: Trunk | None = None
    proxy: str | None = None  # the first hop for every INVITE, when not the dial URI's host
    calls_per_second: float = Field(5.0, gt=0, le=1000)
    concurrency: int = Field(20, ge=1, le=5000)
    from_user: str = "cxtest"
    codecs: list[Literal["PCMU", "PCMA"]] = ["PCMU", "PCMA"]
    no_answer_timeout: Duration = 30.0
    greeting_within: Duration = 5.0  # the greeting must start this soon after the answer
    hold: Duration = 5.0  # stay connected this long after the greeting
    retest_after: Duration = 0.0  # a failed number is called once more after this; 0: no retest
    reference: str | None = None  # a WAV the greeting should sound like: PESQ `quality` (pesq extra)
    stt: Literal["whisper", "sphinx"] = "whisper"
    end_silence: Duration = 0.7
    dead_air: Duration = 2.0
    local_host: str = "127.0.0.1"

    @field_validator("dial")
    @classmethod
    def _template(cls, value: str) -> str:
        from probes.voice.sip import sip_uri

        if "{number}" not in value:
            raise ValueError(f"dial {value!r} has no {{number}}: e.g. sip:{{number}}@trunk.example.net")
        if "${" not in value:
            sip_uri(value.replace("{number}", "0"))
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        from probes.voice.sip import sip_uri

        if value is not None and "${" not in value:
            sip_uri(value)
        return value


class NumberExpect(Frozen):
    """What every number of the inventory should do, unless its row says otherwise."""

    outcome: Class = "answered"
    max_pdd: Duration | None = None
    min_quality: float | None = Field(None, ge=1, le=5)
    min_confidence: float = Field(0.8, ge=0, le=1)  # how well the expected greeting must fit


class InventoryRow(Frozen):
    number: str
    name: str = ""
    expected_greeting: str | None = None
    expect: Class | None = None
    max_pdd: Duration | None = None
    min_quality: float | None = Field(None, ge=1, le=5)
    tags: Annotated[tuple[str, ...], BeforeValidator(_words)] = ()

    @field_validator("number", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        text = str(value).strip() if value is not None else ""
        if not text or any(c in text for c in " @:;/{}"):
            raise ValueError(f"bad number {value!r}: digits, maybe with a leading +, as dialled")
        return text

    @field_validator("expected_greeting", "expect", "max_pdd", "min_quality", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


# --------------------------------------------------------------------------- the steps the expansion writes


class Connect(Step):
    connect: str  # the number
    expect: Class = "answered"
    max_pdd: Duration | None = None

    def describe(self) -> str:
        return self.name or "connect"


class Greeting(Step):
    greeting: str | None = None  # the expected words; None: the baseline's fingerprint, or any audio
    min_confidence: float = 0.8
    early: bool = False  # an announcement: heard in early media, before any answer

    def describe(self) -> str:
        return self.name or ("announcement" if self.early else "greeting")


class Hold(Step):
    hold: Duration
    min_quality: float | None = None

    def describe(self) -> str:
        return self.name or "hold"


_KINDS = {"connect": Connect, "greeting": Greeting, "hold": Hold}

PhoneStep = Annotated[
    Union[tuple(Annotated[model, Tag(model.__name__)] for model in _KINDS.values())],  # type: ignore[misc]
    Discriminator(
        lambda v: next((m.__name__ for k, m in _KINDS.items() if k in v), None) if isinstance(v, dict) else type(v).__name__,
        custom_error_type="phone_step",
        custom_error_message="phone scenarios have no steps to write: each number's steps come from the inventory",
    ),
]


# --------------------------------------------------------------------------- inventory -> one scenario per number


def _inventory_path(scenario: Scenario) -> Path:
    path = Path(scenario.inventory)
    if not path.is_absolute() and scenario.source.file not in ("", "<memory>"):
        path = Path(scenario.source.file).parent / path
    return path


def _read_rows(scenario: Scenario) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """(file for messages, [(line, row)]) from the inline list, a CSV file or a YAML list."""
    if not isinstance(scenario.inventory, str):
        return scenario.source.file, [(scenario.source.line, dict(row)) for row in scenario.inventory]
    path = _inventory_path(scenario)
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets write a byte-order mark
    except OSError as exc:
        raise ScenarioError([Problem(scenario.source.file, scenario.source.line, 1, "inventory", f"cannot read {shown}: {exc.strerror or exc}")]) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            node = yaml.compose(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ScenarioError([Problem(shown, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, "", f"bad YAML: {exc}")]) from None
        if not isinstance(node, yaml.SequenceNode):
            raise ScenarioError([Problem(shown, 1, 1, "", "an inventory is a list of numbers, each a mapping (number: ..., expect: ...)")])
        loader = yaml.SafeLoader("")
        return shown, [(item.start_mark.line + 1, loader.construct_object(item, deep=True)) for item in node.value]
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "number" not in [f.strip() for f in reader.fieldnames]:
        raise ScenarioError([Problem(shown, 1, 1, "", f"the CSV needs a header with a `number` column, got {reader.fieldnames}")])
    rows = []
    for row in reader:
        extra = row.pop(None, None)  # cells past the header
        if extra and any(cell.strip() for cell in extra):
            raise ScenarioError([Problem(shown, reader.line_num, 1, "", f"more cells than the header has columns: {extra}")])
        rows.append((reader.line_num, {k.strip(): v for k, v in row.items() if k is not None and v is not None}))
    return shown, rows


def expand(scenario: Scenario) -> list[Scenario]:
    """One scenario per inventory row, with the steps that test it; every bad row reported at its line."""
    target: PhoneTarget = scenario.target
    defaults: NumberExpect = scenario.expect
    shown, raw = _read_rows(scenario)
    problems: list[Problem] = []
    rows: list[tuple[int, InventoryRow]] = []
    seen: dict[str, int] = {}
    for line, data in raw:
        if not isinstance(data, dict):
            problems.append(Problem(shown, line, 1, "", f"a row is a mapping (number: ..., expect: ...), got {data!r}"))
            continue
        number = str(data.get("number", "")).strip()
        if number and number in seen:
            problems.append(Problem(shown, line, 1, "number", f"{number} is listed twice (also on line {seen[number]})"))
            continue
        seen[number] = line
        try:
            rows.append((line, InventoryRow.model_validate({k: v for k, v in data.items() if v is not None})))
        except ValidationError as exc:
            for error in exc.errors():
                field = ".".join(str(part) for part in error["loc"])
                problems.append(Problem(shown, line, 1, field, error["msg"].removeprefix("Value error, ")))
    if not rows and not problems:
        problems.append(Problem(shown, 1, 1, "", "the inventory lists no numbers"))
    if problems:
        raise ScenarioError(problems)
    # The scenario clock must cover ringing, the greeting and the hold; admission waits are outside it.
    timeout = max(scenario.timeout, _connect_timeout(target) + target.greeting_within + GREETING_MAX_S + target.hold + 10)
    return [_number_scenario(scenario, row, defaults, timeout) for _, row in rows]


def _connect_timeout(target: PhoneTarget) -> float:
    """Ringing, then our CANCEL's wait for the far end's 487 (Timer B, 32 s), then a little."""
    from probes.voice import Timers

    return target.no_answer_timeout + Timers().b + 5


def _number_scenario(scenario: Scenario, row: InventoryRow, defaults: NumberExpect, timeout: float) -> Scenario:
    target: PhoneTarget = scenario.target
    expect = row.expect or defaults.outcome
    steps: list[Any] = [
        Connect(connect=row.number, expect=expect, max_pdd=row.max_pdd or defaults.max_pdd, timeout=_connect_timeout(target))
    ]
    greeting_timeout = target.greeting_within + GREETING_MAX_S
    if expect == "answered":
        steps.append(Greeting(greeting=row.expected_greeting, min_confidence=defaults.min_confidence, timeout=greeting_timeout))
        if target.hold > 0:
            min_quality = row.min_quality if row.min_quality is not None else defaults.min_quality
            steps.append(Hold(hold=target.hold, min_quality=min_quality, timeout=target.hold + 5))
    elif expect == "announcement" and row.expected_greeting:
        steps.append(Greeting(greeting=row.expected_greeting, min_confidence=defaults.min_confidence, early=True, timeout=greeting_timeout))
    retest = target.retest_after > 0
    return scenario.model_copy(
        update={
            "id": f"{scenario.id}/{row.number}",
            "name": f"{scenario.name}: {row.name or row.number}",
            "steps": tuple(steps),
            "tags": tuple(dict.fromkeys((*scenario.tags, *row.tags))),
            "timeout": timeout,
            "retries": max(scenario.retries, 1) if retest else scenario.retries,
            "retry_delay": target.retest_after if retest else scenario.retry_delay,
        }
    )


def inventory_of(scenario_id: str) -> str:
    """The inventory scenario a number's scenario id belongs to."""
    return scenario_id.rpartition("/")[0]


# --------------------------------------------------------------------------- how a call ended, in one word


def classify(call: Call) -> tuple[str, str]:
    """(outcome class, the SIP evidence for it) of a finished INVITE."""
    status, reason = call.status or 0, call.reason
    said = f"{status} {reason}".strip()
    if call.answered:
        return "answered", said
    heard_anything = any(entry.direction == "received" for entry in call.trace)
    ringing = any(p.status in (180, 181, 182, 183) for p in call.progress)
    if call.early_media and _speech_in(call):
        return "announcement", f"speech in early media, then {said}"
    if not heard_anything:
        return "unreachable", f"no response at all ({said})"
    if status in (401, 407) or (status == 403 and call._auth_header is not None):
        return "auth_failed", f"credentials refused: {said}"
    if call.cancelled or status == 487:
        return "no_answer", f"rang {'with no answer' if ringing else 'without ringing'} for the no-answer timeout, then cancelled"
    if status == 408:
        return ("no_answer" if ringing else "unavailable"), said
    if status in _BUSY:
        return "busy", said
    if status in _NOT_FOUND:
        return "not_found", said
    if status in _UNAVAILABLE:
        return "unavailable", said
    return "rejected", said


def _speech_in(call: Call) -> bool:
    from probes.voice import analysis

    recording = call.media.recording if call.media is not None else None
    if recording is None or recording.started_at is None:
        return False
    return bool(analysis.speech_frames(recording.pcm()).any())


# --------------------------------------------------------------------------- one number's call


class PhoneSession(IvrSession):
    """One number: the call placed by `connect`, heard by `greeting`, kept up by `hold`."""

    far_end = "the number"
    heard_as = "greeting"

    def __init__(self, probe: PhoneProbe, scenario: Scenario, ctx: RunContext):
        self.number = next(step.connect for step in scenario.steps if isinstance(step, Connect))
        self.greeting_started: float | None = None
        self.greeting_ended: float | None = None
        super().__init__(probe, scenario, ctx)

    async def step(self, index: int, step: Step, timeout: float) -> Observation:
        if isinstance(step, Connect):
            if any(isinstance(each, Greeting) and each.greeting for each in self.scenario.steps):
                self._speech_engine()  # loads while the number rings
            return await self._connect(step)
        if self.call is None:
            raise ProbeError("no call: the connect step did not run")
        if isinstance(step, Greeting):
            observation = await self._greeting(index, step, timeout)
        else:
            observation = await self._hold(step)
        return Observation(observation.checks, {**observation.measures, **self._media_measures()}, observation.evidence)

    # -- connect

    async def _connect(self, step: Connect) -> Observation:
        from probes.voice import Credentials

        target: PhoneTarget = self.target
        trunk = target.trunk
        ua = await self.probe.user_agent(target.local_host)
        if trunk is not None and trunk.registrar:
            await self.probe.registered(ua, trunk)
        uri = target.dial.replace("{number}", step.connect)
        self.call = call = await ua.dial(
            uri,
            auth=Credentials(trunk.user, trunk.password, trunk.realm) if trunk else None,
            from_user=trunk.user if trunk else target.from_user,
            codecs=tuple(target.codecs),
            no_answer_timeout=target.no_answer_timeout,
            proxy=target.proxy,
        )
        seen, evidence = await asyncio.to_thread(classify, call)
        measures: dict[str, float] = {}
        if call.pdd is not None:
            measures["post_dial_delay"] = call.pdd
        if call.answered:
            measures["time_to_answer"] = call.time_to_answer
            self.cursor = call.answered_at
        elif call.media is not None and call.media.recording.started_at is not None:
            self.cursor = call.media.recording.started_at  # an announcement in early media
        if seen in UNTESTED:
            where = f" by the trunk ({trunk.user}@{_host(uri, target.proxy)})" if trunk and seen == "auth_failed" else ""
            raise ProbeError(f"{step.connect}: {seen.replace('_', ' ')}{where}: {evidence}")
        outcome = Outcome.passed if seen == step.expect else Outcome.failed
        text = f"{seen} ({evidence})" + ("" if outcome is Outcome.passed else f", expected {step.expect}")
        checks = [CheckResult("outcome", outcome, step.expect, seen, text)]
        if step.max_pdd is not None and "post_dial_delay" in measures:
            checks.append(judge_levels("post_dial_delay", measures["post_dial_delay"], Levels(failed=step.max_pdd)))
        return Observation(checks=tuple(checks), measures=measures)

    # -- greeting

    async def _greeting(self, index: int, step: Greeting, timeout: float) -> Observation:
        target: PhoneTarget = self.target
        if step.greeting:
            prompt = ExpectPrompt(expect_prompt=step.greeting, min_confidence=step.min_confidence, within=target.greeting_within)
            observation = await self._expect_prompt(index, prompt, timeout)
            if self.prompts:
                heard = self.prompts[-1]
                self.greeting_started = self.call.media.recording.started_at + heard["at"]
                self.greeting_ended = self.greeting_started + heard["duration"]
            renamed = {"prompt_latency": "greeting_latency", "prompt_duration": "greeting_duration", "time_to_first_audio": None}
            measures = {renamed.get(k, k): v for k, v in observation.measures.items() if renamed.get(k, k) is not None}
            return Observation(observation.checks, measures, observation.evidence)
        return await self._audio_present(step, timeout)

    async def _audio_present(self, step: Greeting, timeout: float) -> Observation:
        """No expected words: the greeting is the first speech, compared with the number's baseline fingerprint if it has one."""
        from probes.voice import analysis

        call, target = self.call, self.target
        recording = call.media.recording
        begin = self.cursor
        deadline = time.monotonic() + min(timeout - 1, target.greeting_within + GREETING_MAX_S)
        listener = analysis.PromptListener(end_silence_ms=int(target.end_silence * 1000))
        fed_until: float | None = None
        while time.monotonic() < deadline and not call.is_over and listener.ended_at is None:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if recording.started_at is None:
                if now - begin > target.greeting_within:
                    break
                continue
            if fed_until is None:
                begin = fed_until = max(begin, recording.started_at)  # the listener counts from the first sample fed
            heard_until = recording.started_at + recording.duration
            # No packets for a while is silence too (the far end stopped sending), or a greeting would never end.
            available = max(heard_until, now - target.end_silence - 0.5)
            if available > fed_until:
                pcm = recording.pcm(start=fed_until, end=heard_until) if heard_until > fed_until else b""
                missing = int((available - fed_until) * 8000) - len(pcm) // 2
                listener.feed(pcm + bytes(2 * max(0, missing)))
                fed_until = available
            if listener.started_at is None and now - self.cursor > target.greeting_within:
                break
        pcm = recording.pcm(start=begin) if recording.started_at is not None else b""
        measures: dict[str, float] = {}
        gaps = analysis.dead_air(pcm, threshold_ms=int(target.dead_air * 1000))
        measures["dead_air"] = max((end - start for start, end in gaps), default=0.0)
        level = analysis.level_dbfs(pcm)
        if level is not None:
            measures["level"] = level
        if listener.started_at is None:
            sound = analysis.sound_frames(pcm).any() if pcm else False
            what = "only non-speech audio (music or tones)" if sound else "silence"
            if call.is_over:
                what = f"the call ended ({call.end_reason})"
            text = f"dead air: no greeting within {target.greeting_within:g}s of the answer, {what}"
            return Observation(checks=(CheckResult("greeting", Outcome.failed, "speech", None, text),), measures=measures)
        self.greeting_started = begin + listener.started_at
        ended = begin + (listener.ended_at if listener.ended_at is not None else len(pcm) / 16000)
        ended = min(ended, recording.started_at + recording.duration)  # silence we made up is not greeting
        self.greeting_ended = ended
        measures["greeting_latency"] = self.greeting_started - self.cursor
        measures["greeting_duration"] = ended - self.greeting_started
        fingerprint = await asyncio.to_thread(analysis.fingerprint, recording.pcm(start=self.greeting_started, end=ended))
        index = self._greeting_index()
        known = self.baseline.get(str(index + 1))
        score = analysis.audio_similarity(known["fingerprint"], fingerprint) if known and known.get("fingerprint") else None
        matched = score is None or score >= BASELINE_AUDIO_SIMILARITY
        self.prompts.append(
            {"step": index + 1, "expected": [], "heard": "", "matched": matched, "fingerprint": fingerprint,
             "at": round(recording.offset(self.greeting_started), 3), "duration": round(ended - self.greeting_started, 3)}
        )
        if score is None:
            text = f"greeting of {measures['greeting_duration']:.1f}s, {measures['greeting_latency']:.2f}s after the answer (no expected words or baseline to compare)"
            return Observation(checks=(CheckResult("greeting", Outcome.passed, "speech", "speech", text),), measures=measures)
        measures["similarity"] = score
        text = f"greeting {'sounds like' if matched else 'differs from'} its baseline (audio {score:.2f} {'>=' if matched else '<'} {BASELINE_AUDIO_SIMILARITY:g})"
        outcome = Outcome.passed if matched else Outcome.failed
        return Observation(checks=(CheckResult("greeting", outcome, "baseline", round(score, 3), text),), measures=measures)

    def _greeting_index(self) -> int:
        return next(i for i, step in enumerate(self.scenario.steps) if isinstance(step, Greeting))

    # -- hold

    async def _hold(self, step: Hold) -> Observation:
        call = self.call
        # The hold starts when the greeting ends, not when we are done judging it.
        began = self.greeting_ended or time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(call.ended.wait()), max(0.0, began + step.hold - time.monotonic()))
        except TimeoutError:
            pass
        checks: list[CheckResult] = []
        held = (call.ended_at or time.monotonic()) - began
        if call.is_over and held < step.hold:
            text = f"call dropped {max(0.0, held):.1f}s into the {step.hold:g}s hold after the greeting ({call.end_reason})"
            checks.append(CheckResult("hold", Outcome.failed, step.hold, round(held, 2), text))
        else:
            checks.append(CheckResult("hold", Outcome.passed, step.hold, round(held, 2), f"held {step.hold:g}s"))
        measures: dict[str, float] = {}
        stats = call.media.stats if call.media is not None else None
        if stats is not None and stats.received:
            measures["loss"], measures["jitter"] = stats.loss_fraction, stats.jitter_ms / 1000
        quality = await self._quality(measures)
        if quality is not None:
            measures["quality"] = quality
            if step.min_quality is not None:
                checks.append(judge_levels("quality", quality, Levels(failed=step.min_quality)))
        elif step.min_quality is not None:
            checks.append(CheckResult("quality", Outcome.failed, step.min_quality, None, "quality: no audio received to judge"))
        return Observation(checks=tuple(checks), measures=measures)

    async def _quality(self, measures: dict[str, float]) -> float | None:
        """PESQ of the greeting against the reference recording when both are there, else the E-model's estimate."""
        from probes.voice import analysis
        from probes.voice.audio import read_wav

        target: PhoneTarget = self.target
        if target.reference and self.greeting_started is not None and analysis.pesq_unavailable() is None:
            reference = await asyncio.to_thread(read_wav, self._scenario_path(target.reference))
            heard = self.call.media.recording.pcm(start=self.greeting_started - 0.2, end=self.greeting_started + len(reference) / 16000 + 0.5)
            try:
                return await asyncio.to_thread(analysis.pesq_mos, reference, heard)
            except ValueError:
                pass  # no speech to compare: the estimate below still says how the line was
        if "loss" not in measures:
            return None
        return analysis.estimated_mos(measures["loss"], measures["jitter"])

    # -- baselines and evidence

    def _load_baseline(self) -> dict[str, Any]:
        """This number's entry of the inventory's baseline file: {step number: {heard, fingerprint, duration}}."""
        path = baseline_path(self.scenario.source.file)
        try:
            return json.loads(path.read_text()).get(self.number, {})
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as e:
            raise ProbeError(f"cannot read the greeting baseline {path}: {e}") from None

    async def close(self) -> None:
        call = self.call
        if call is not None and call.media is None:
            if self.ctx.wants_evidence:
                self.ctx.write_text("sip-trace.txt", call.trace_text())  # no audio: only the signalling to keep
            return
        await super().close()


def _host(uri: str, proxy: str | None) -> str:
    from probes.voice.sip import sip_uri

    parsed = sip_uri(proxy or uri)
    return f"{parsed.host}:{parsed.port}" if parsed.port else str(parsed.host)


# --------------------------------------------------------------------------- the probe


class Pacer:
    """Call attempts on a fixed grid, `rate` a second: attempt n goes at start + n / rate.

    aiolimiter's leaky bucket spaced each attempt from when the previous one really went,
    so every late wake-up of a busy event loop pushed all later calls back (17.4 instead
    of 20 a second in bench/number_sweep.py). On a grid a late attempt does not move the
    next ones; after a stall at most `catch_up` overdue attempts go at once, the others
    move on with the grid, as a caller would redial.
    """

    def __init__(self, rate: float, catch_up: int = 3):
        self.interval = 1 / rate
        self.catch_up = catch_up
        self._next: float | None = None

    async def wait(self) -> None:
        now = time.monotonic()
        if self._next is None or self._next < now - self.catch_up * self.interval:
            self._next = now if self._next is None else now - self.catch_up * self.interval
        slot = self._next
        self._next += self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class _Trunk:
    """What the calls of one trunk share: the call slots and the attempt pacer."""

    def __init__(self, target: PhoneTarget):
        self.slots = asyncio.Semaphore(target.concurrency)
        self.pacer = Pacer(target.calls_per_second)


class PhoneProbe(IvrProbe):
    channel: ClassVar[str] = "phone"
    target_model: ClassVar[type] = PhoneTarget
    step_model: ClassVar[Any] = PhoneStep
    scenario_fields: ClassVar[dict[str, Any]] = {
        "inventory": (Union[str, list[dict[str, Any]]], ...),
        "expect": (NumberExpect, NumberExpect()),
    }
    measures: ClassVar[frozenset[str]] = frozenset(
        {
            "post_dial_delay", "time_to_answer", "greeting_latency", "greeting_duration", "similarity", "confidence",
            "dead_air", "level", "clipping", "loss", "jitter", "quality",
        }
    )
    expand = staticmethod(expand)

    def __init__(self) -> None:
        super().__init__()
        self._trunks: dict[str, _Trunk] = {}
        self._registrations: dict[str, _Registration] = {}

    def _trunk(self, target: PhoneTarget) -> _Trunk:
        key = target.model_dump_json(include={"dial", "trunk", "proxy", "local_host"})
        trunk = self._trunks.get(key)
        if trunk is None:
            trunk = self._trunks[key] = _Trunk(target)
        return trunk

    @asynccontextmanager
    async def admission(self, scenario: Scenario) -> AsyncIterator[None]:
        """A call slot of the number's trunk, then its turn in the attempt pacing."""
        trunk = self._trunk(scenario.target)
        async with trunk.slots:
            await trunk.pacer.wait()
            yield

    async def registered(self, ua: Any, trunk_settings: Trunk) -> None:
        """REGISTER with the trunk once for every call (refreshed by the user agent); ProbeError when refused."""
        from probes.voice import Credentials

        state = self._registrations.setdefault(trunk_settings.model_dump_json(), _Registration())
        async with state.lock:
            fresh = time.monotonic() - state.at < REGISTRATION_RETRY_S
            if state.registration is None or (not state.registration.ok and not fresh):
                state.at = time.monotonic()
                try:
                    state.registration = await ua.register(
                        trunk_settings.registrar, user=trunk_settings.user,
                        auth=Credentials(trunk_settings.user, trunk_settings.password, trunk_settings.realm),
                        expires=int(trunk_settings.expires),
                    )
                except ValueError as exc:
                    raise ProbeError(f"trunk registrar: {exc}") from None
        registration = state.registration
        if not registration.ok:
            raise ProbeError(
                f"the trunk refused registration of {trunk_settings.user} at {trunk_settings.registrar}: "
                f"{registration.status} {registration.reason}"
            )

    @asynccontextmanager
    async def session(self, scenario: Scenario, ctx: RunContext) -> AsyncIterator[PhoneSession]:
        session = PhoneSession(self, scenario, ctx)
        try:
            yield session
        finally:
            await session.close()

    async def aclose(self) -> None:
        """Unregister from the trunks (bounded), then close the user agents."""
        registered = [state.registration for state in self._registrations.values() if state.registration is not None]
        if registered:
            await asyncio.wait([asyncio.ensure_future(r.unregister()) for r in registered], timeout=5)
        self._registrations.clear()
        await super().aclose()


class _Registration:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.registration: Any = None
        self.at = 0.0
