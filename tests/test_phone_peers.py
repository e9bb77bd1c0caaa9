"""`channel: phone` against real peers: a Kamailio trunk routing each dialled number to its own endpoint.

One trunk (tests/peers/kamailio/trunk.cfg: digest auth 407/403, REGISTER 401,
numbers routed from an htable, unknown numbers 404 from the trunk itself) in
front of one endpoint per outcome class, started once for the whole module:
baresip answering with a flite greeting (right, and right then hanging up
during the hold), SIPp answering with a wrong greeting, with silence, after a
known post-dial delay, refusing with 486 / 480 / 603, ringing forever, and
playing an announcement in early media before 404. The bed is first proved
with SIPp as the caller, then the phone probe dials it through the real Runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import re
import time
import wave
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxtest.loader import load_scenarios
from cxtest.model import CheckResult, Outcome, Project, Result, StepResult
from cxtest.runner import Runner
from voice_peers import (
    HOST,
    SIPP_ALL_CALLS_OK,
    Baresip,
    KamailioTrunk,
    SippUas,
    VoicePeers,
    read_pcm,
    speech_wav,
    tone_wav,
)

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice", "secret"
GREETING = "Thank you for calling Acme Bank."
WRONG_GREETING = "You have reached Globex Pizza."
ANNOUNCEMENT = "The number you have dialled is not in service."
ANNOUNCEMENT_TAIL_S = 0.5  # the announcing SIPp sends its 404 this long after the recording ends
NO_ANSWER_TIMEOUT_S = 5.0  # longer than the announcement, which its own 404 ends, not our CANCEL
RING_DELAY_S = 0.7  # the slow number's SIPp waits this long before its 180
DROP_AFTER_GREETING_S = 1.5  # the dropping number's baresip hangs up this long after its greeting ends

ANSWERED = "+15550100"
WRONG = "+15550101"
BUSY = "+15550102"
NO_ANSWER = "+15550103"
NOT_FOUND = "+15550104"  # routed nowhere: the trunk's own 404
UNAVAILABLE = "+15550105"
REJECTED = "+15550106"
ANNOUNCED = "+15550107"
DEAD_AIR = "+15550108"
DROPPED = "+15550109"
SLOW = "+15550110"
BUSY_BUT_EXPECTED = "+15550111"  # the busy endpoint again, for a row expecting an answer
PACED = tuple(f"+1555020{i}" for i in range(10))  # the busy endpoint: quick calls to time the pacing
CAPPED = tuple(f"+1555030{i}" for i in range(6))  # the ringing endpoint: calls that stay up for the cap


@dataclass
class Bed:
    """The trunk in front of every endpoint, and the module's folder (peer logs, inventories, artifacts)."""

    trunk: KamailioTrunk
    folder: Path


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def with_silence(src: Path, dst: Path, silence_s: float) -> Path:
    """`src` as 8 kHz mono PCM with `silence_s` of silence after it."""
    pcm = read_pcm(src) + b"\0\0" * int(silence_s * 8000)
    with wave.open(str(dst), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(pcm)
    return dst


def sipp_playing(workdir: Path, scenario: str, wav: Path, **options: Any) -> SippUas:
    """A SIPp UAS whose rtp_stream plays `wav` and nothing else.

    SIPp 3.6.1's rtp_stream sends a WAV file's header as audio (ulaw_wav's 46
    bytes decode to a loud click before the first sample), so play.wav gets
    the bare mu-law samples: dead air must be silence from the first packet.
    """
    uas = SippUas(workdir, scenario, play=wav, **options)
    play = uas.dir / "play.wav"
    data = play.read_bytes()
    play.write_bytes(data[data.index(b"data") + 8:])
    return uas


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory):
    """The trunk and one endpoint per outcome class, started once for the module and stopped at its end."""
    folder = tmp_path_factory.mktemp("phone-bed")
    greeting = speech_wav(folder / "greeting.wav", GREETING)
    wrong = speech_wav(folder / "wrong.wav", WRONG_GREETING)
    announcement = speech_wav(folder / "announcement.wav", ANNOUNCEMENT)
    silence = tone_wav(folder / "silence.wav", seconds=0.0, silence_s=20.0)
    announcement_s = wav_seconds(announcement)
    # SIPp's -timeout is global: the module's SIPps must outlive every test here.
    long_lived = {"calls": None, "timeout_s": 600.0}
    with contextlib.ExitStack() as peers:
        def start(peer: Any) -> Any:
            return peers.enter_context(peer)

        busy = start(SippUas(folder, "uas_busy.xml", **long_lived))
        ringing = start(SippUas(folder, "uas_ringing.xml", **long_lived))
        endpoints = {
            ANSWERED: start(Baresip(folder, user="acme", play=greeting)),
            WRONG: start(sipp_playing(folder, "uas_play.xml", wrong, **long_lived)),
            BUSY: busy,
            NO_ANSWER: ringing,
            UNAVAILABLE: start(SippUas(folder, "uas_temporarily_unavailable.xml", **long_lived)),
            REJECTED: start(SippUas(folder, "uas_decline.xml", **long_lived)),
            ANNOUNCED: start(sipp_playing(folder, "uas_announcement.xml", announcement,
                                          duration_ms=int((announcement_s + ANNOUNCEMENT_TAIL_S) * 1000),
                                          **long_lived)),
            DEAD_AIR: start(sipp_playing(folder, "uas_play.xml", silence, **long_lived)),
            DROPPED: start(Baresip(folder, user="dropper", hangup_after_play=True,
                                   play=with_silence(greeting, folder / "greeting-then-bye.wav",
                                                     DROP_AFTER_GREETING_S))),
            SLOW: start(sipp_playing(folder, "uas_delayed_answer.xml", greeting,
                                     duration_ms=int(RING_DELAY_S * 1000), **long_lived)),
            BUSY_BUT_EXPECTED: busy,
            **{number: busy for number in PACED},
            **{number: ringing for number in CAPPED},
        }
        trunk = start(KamailioTrunk(folder, endpoints, user=USER, password=PASSWORD))
        yield Bed(trunk, folder)


# =========================================================================== the bed alone, SIPp calling


def time_to_ringing(uac: Any) -> float:
    """Seconds from the last INVITE SIPp sent to the 180 it received, from its -trace_msg log's timestamps."""
    entries = re.findall(r"^-+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n(?:UDP|TCP) message [^\n]*\n\s*(\S[^\r\n]*)",
                         uac.messages(), re.M)
    times = [(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp(), line) for stamp, line in entries]
    ringing = next(at for at, line in times if line.startswith("SIP/2.0 180"))
    return ringing - max(at for at, line in times if line.startswith("INVITE ") and at < ringing)


def test_trunk_routes_each_number_to_its_endpoint_and_refuses_the_rest(bed: Bed, voice_peers: VoicePeers) -> None:
    """Through the trunk (407 then digest): each number reaches its endpoint's final response; unknown: 404 from
    the trunk itself; a wrong password: 403 and no endpoint is tried."""
    cases = {  # number -> (SIPp scenario, password, final response expected)
        ANSWERED: ("uac_auth.xml", PASSWORD, 200),
        SLOW: ("uac_auth.xml", PASSWORD, 200),
        BUSY: ("uac_auth_refused.xml", PASSWORD, 486),
        UNAVAILABLE: ("uac_auth_refused.xml", PASSWORD, 480),
        REJECTED: ("uac_auth_refused.xml", PASSWORD, 603),
        ANNOUNCED: ("uac_auth_refused.xml", PASSWORD, 404),
        NOT_FOUND: ("uac_auth_refused.xml", PASSWORD, 404),
        WRONG: ("uac_auth_refused.xml", "wrong", 403),
    }
    uacs = {number: voice_peers.sipp_uac(bed.trunk.address, scenario, service=number, auth_user=USER,
                                         auth_password=password, duration_ms=300)
            for number, (scenario, password, _) in cases.items()}
    codes = {number: uac.wait() for number, uac in uacs.items()}

    for number, (_, _, final) in cases.items():
        uac = uacs[number]
        assert codes[number] == SIPP_ALL_CALLS_OK, f"{number}: expected final {final}\n{uac.explain()}"
        finals = [code for code in uac.responses() if code >= 200 and code != 407]
        assert finals[:1] == [final], f"{number}: expected final {final}, saw responses {uac.responses()}"
        assert uac.responses()[0] == 407, f"{number}: expected a 407 challenge first, saw {uac.responses()}"
    assert 183 in uacs[ANNOUNCED].responses()
    ring_delay = time_to_ringing(uacs[SLOW])
    assert abs(ring_delay - RING_DELAY_S) <= 0.03, \
        f"expected SIPp-as-caller to see the slow number's 180 {RING_DELAY_S}s after its INVITE, saw {ring_delay:.3f}s"
    assert "Server: cxtest-trunk" in uacs[NOT_FOUND].messages().split("SIP/2.0 404", 1)[1].split("\n\n", 1)[0]
    ours = {call_id for uac in uacs.values() for call_id in re.findall(r"^Call-ID: (\S+)", uac.messages(), re.M)}
    routed = {event["number"] for event in bed.trunk.call_log() if event["stage"] == "routed" and event["call_id"] in ours}
    assert routed == {ANSWERED, SLOW, BUSY, UNAVAILABLE, REJECTED, ANNOUNCED}, \
        f"expected the trunk to route all but the unknown number and the wrong password, it routed {sorted(routed)}"


# =========================================================================== the phone probe through the trunk


def phone_target(kamailio: KamailioTrunk, **overrides: Any) -> dict[str, Any]:
    """A phone scenario's target dialling through the trunk; short timings so a test takes seconds."""
    return {
        "dial": f"sip:{{number}}@{HOST}:{kamailio.port}",
        "trunk": {"user": USER, "password": PASSWORD},
        "calls_per_second": 20,
        "concurrency": 20,
        "no_answer_timeout": NO_ANSWER_TIMEOUT_S,
        "greeting_within": "3s",
        "hold": "3s",
        "retest_after": 0,
        **overrides,
    }


async def run_inventory(folder: Path, rows: list[dict[str, str]], target: dict[str, Any],
                        on_result: Any = None) -> dict[str, Result]:
    """Write numbers.yaml and its numbers.csv into `folder`, load them, run every number: results by number."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "numbers.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["number", "name", "expect", "expected_greeting", "max_pdd"])
        writer.writeheader()
        writer.writerows(rows)
    scenario = {"name": f"numbers in {folder.name}", "channel": "phone", "target": target, "inventory": "numbers.csv"}
    (folder / "numbers.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    project, scenarios = load_scenarios([folder / "numbers.yaml"], Project(root=folder))
    async with Runner(project, artifacts_root=folder / "artifacts") as runner:
        results = await runner.run_many(scenarios, on_result=on_result)
    return {result.scenario_id.rpartition("/")[2]: result for result in results}


def connect_check(result: Result) -> CheckResult:
    connect = result.steps[0]
    assert connect.name == "connect", f"expected the first step to be connect, saw {describe(result)}"
    checks = [check for check in connect.checks if check.name == "outcome"]
    assert checks, f"expected an 'outcome' check on the connect step, saw {describe(result)}"
    return checks[0]


def step(result: Result, name: str) -> StepResult:
    found = [each for each in result.steps if each.name == name]
    assert found, f"expected a {name} step, saw {describe(result)}"
    return found[0]


def describe(result: Result) -> str:
    steps = " | ".join(f"{s.name}: {s.outcome.value} {s.message}" for s in result.steps)
    return f"{result.scenario_id} {result.outcome.value} [{steps}] measures {dict(result.measures)}"


# One inventory with every outcome class: number, expect, expected greeting, max_pdd,
# then what must come out: the class seen, the number's outcome, words of the connect check's text.
EVERY_CLASS = [
    (ANSWERED, "answered", GREETING, "", "answered", Outcome.passed, "answered (200 "),
    (WRONG, "answered", GREETING, "", "answered", Outcome.failed, "answered (200 "),
    (BUSY, "busy", "", "", "busy", Outcome.passed, "busy (486 Busy Here)"),
    (NO_ANSWER, "no_answer", "", "", "no_answer", Outcome.passed, "cancel"),
    (NOT_FOUND, "not_found", "", "", "not_found", Outcome.passed, "not_found (404 Not Found)"),
    (UNAVAILABLE, "unavailable", "", "", "unavailable", Outcome.passed, "unavailable (480 Temporarily Unavailable)"),
    (REJECTED, "rejected", "", "", "rejected", Outcome.passed, "rejected (603 Decline)"),
    (ANNOUNCED, "announcement", ANNOUNCEMENT, "", "announcement", Outcome.passed, "404 Not Found"),
    (DEAD_AIR, "answered", GREETING, "", "answered", Outcome.failed, "answered (200 "),
    (DROPPED, "answered", GREETING, "", "answered", Outcome.failed, "answered (200 "),
    (SLOW, "answered", GREETING, "1s", "answered", Outcome.passed, "answered (200 "),
    (BUSY_BUT_EXPECTED, "answered", "", "", "busy", Outcome.failed, "busy (486 Busy Here), expected answered"),
]


@pytest.fixture(scope="module")
def every_class(bed: Bed) -> dict[str, Result]:
    """The EVERY_CLASS inventory run once through the trunk, for the tests below to read."""
    rows = [{"number": number, "name": f"{expect} {number}", "expect": expect, "expected_greeting": greeting,
             "max_pdd": max_pdd} for number, expect, greeting, max_pdd, *_ in EVERY_CLASS]
    return asyncio.run(run_inventory(bed.folder / "every-class", rows, phone_target(bed.trunk)))


@pytest.mark.parametrize(("number", "seen", "outcome", "words"),
                         [(number, seen, outcome, words) for number, _, _, _, seen, outcome, words in EVERY_CLASS])
def test_each_number_is_classed_by_how_the_far_end_answered(every_class: dict[str, Result], number: str, seen: str,
                                                             outcome: Outcome, words: str) -> None:
    """The connect step's outcome check names the class the SIP responses (and early audio) show, with its evidence."""
    result = every_class[number]
    check = connect_check(result)
    assert check.actual == seen, f"{number}: expected class {seen}, saw {check.actual}: {describe(result)}"
    assert words in check.text, f"{number}: expected {words!r} in the outcome check's text, saw {check.text!r}"
    assert result.outcome is outcome, f"{number}: expected {outcome.value}, saw {describe(result)}"
    assert result.channel == "phone" and result.scenario_id.endswith(f"/{number}")


def test_a_class_other_than_expected_fails_with_both_named(every_class: dict[str, Result]) -> None:
    """A busy number expected to answer fails at connect, the message naming what was seen and what was expected."""
    result = every_class[BUSY_BUT_EXPECTED]
    assert result.outcome is Outcome.failed, describe(result)
    assert "step 1 (connect): busy (486 Busy Here), expected answered" in result.message, result.message
    assert [s.outcome for s in result.steps[1:]] == [Outcome.skipped, Outcome.skipped], describe(result)


def test_post_dial_delay_is_the_far_ends_delay_within_50ms(every_class: dict[str, Result]) -> None:
    """The slow number's 180 comes 0.7 s after its INVITE reaches SIPp: post_dial_delay is 0.7 s +- 50 ms, and
    within its max_pdd of 1 s; a number refused at once has a PDD of a few milliseconds."""
    slow = every_class[SLOW]
    pdd = slow.measures.get("post_dial_delay")
    assert pdd is not None and abs(pdd - RING_DELAY_S) <= 0.05, \
        f"expected post_dial_delay {RING_DELAY_S}s +- 50ms, saw {pdd}: {describe(slow)}"
    [pdd_check] = [c for c in step(slow, "connect").checks if c.name == "post_dial_delay"]
    assert pdd_check.outcome is Outcome.passed, pdd_check.text
    assert slow.measures["time_to_answer"] >= RING_DELAY_S, describe(slow)
    for number in (BUSY, NOT_FOUND, UNAVAILABLE):
        quick = every_class[number].measures.get("post_dial_delay")
        assert quick is not None and quick < 0.2, f"{number}: expected a PDD under 0.2s on loopback, saw {quick}"


def test_the_right_greeting_passes_and_a_wrong_one_fails(every_class: dict[str, Result]) -> None:
    """baresip's flite greeting fits the expected words; SIPp's other recording does not, and the check says both."""
    right, wrong = every_class[ANSWERED], every_class[WRONG]
    assert step(right, "greeting").outcome is Outcome.passed, describe(right)
    assert step(right, "hold").outcome is Outcome.passed, describe(right)
    assert right.measures["similarity"] >= 0.8 and 0 <= right.measures["greeting_latency"] < 1.0, describe(right)
    greeting = step(wrong, "greeting")
    assert greeting.outcome is Outcome.failed, describe(wrong)
    assert "expected" in greeting.message and "heard" in greeting.message, greeting.message
    assert wrong.measures["similarity"] < 0.8, describe(wrong)


def test_dead_air_fails_the_greeting(every_class: dict[str, Result]) -> None:
    """An answer followed by silent RTP fails the greeting step as silence, with the dead air measured."""
    result = every_class[DEAD_AIR]
    greeting = step(result, "greeting")
    assert greeting.outcome is Outcome.failed, describe(result)
    assert "silence" in greeting.message, greeting.message
    assert result.measures.get("dead_air", 0) >= 2.0, describe(result)


def test_a_drop_during_the_hold_fails_the_hold(every_class: dict[str, Result]) -> None:
    """baresip hangs up 1.5 s after its greeting ends: the greeting passes, the 3 s hold fails as a remote BYE
    about 1.5 s into the hold, which starts when the greeting ends."""
    result = every_class[DROPPED]
    assert step(result, "greeting").outcome is Outcome.passed, describe(result)
    hold = step(result, "hold")
    assert hold.outcome is Outcome.failed, describe(result)
    assert re.search(r"call dropped \d+\.\ds into the 3s hold after the greeting \(remote bye\)", hold.message), hold.message
    [check] = [c for c in hold.checks if c.name == "hold"]
    assert abs(check.actual - DROP_AFTER_GREETING_S) <= 0.5, \
        f"expected the drop {DROP_AFTER_GREETING_S}s +- 0.5s into the hold (after the greeting), saw {check.actual}s"


def test_an_announcement_is_heard_in_early_media(every_class: dict[str, Result]) -> None:
    """Speech in the 183's early media before a 404 is an announcement, and its words are checked."""
    result = every_class[ANNOUNCED]
    assert [s.name for s in result.steps] == ["connect", "announcement"], describe(result)
    assert step(result, "announcement").outcome is Outcome.passed, describe(result)
    assert "speech in early media" in connect_check(result).text, connect_check(result).text


def first_invites(trunk: KamailioTrunk, numbers: tuple[str, ...], since: float) -> dict[str, dict[str, Any]]:
    """Each call's first INVITE at the trunk (the one it challenged) since `since`, by Call-ID."""
    first: dict[str, dict[str, Any]] = {}
    for event in trunk.call_log():
        if event["method"] == "INVITE" and event["number"] in numbers and event["at"] >= since:
            first.setdefault(event["call_id"], event)
    return first


def test_a_wrong_trunk_password_makes_every_number_an_error(bed: Bed, tmp_path: Path) -> None:
    """Wrong credentials are not a verdict on the numbers: each one is `error`, the message naming the trunk's 403,
    and the trunk routes none of them."""
    numbers = (ANSWERED, BUSY, NOT_FOUND)
    rows = [{"number": number, "expect": "answered"} for number in numbers]
    since = time.time()
    results = asyncio.run(run_inventory(tmp_path / "wrong-password", rows,
                                        phone_target(bed.trunk, trunk={"user": USER, "password": "wrong"})))

    for number in numbers:
        result = results[number]
        assert result.outcome is Outcome.error, f"{number}: expected error, saw {describe(result)}"
        assert "403 Forbidden" in result.message and "auth failed" in result.message, \
            f"{number}: expected the message to name the trunk's 403, saw {result.message!r}"
        assert [s.outcome for s in result.steps[1:]] == [Outcome.skipped] * (len(result.steps) - 1), describe(result)
    stages = {event["stage"] for event in bed.trunk.call_log() if event["number"] in numbers and event["at"] >= since}
    assert stages == {"challenged", "refused"}, f"expected the trunk to challenge then refuse only, saw {stages}"


def test_registers_with_the_trunk_registrar_before_calling(bed: Bed, tmp_path: Path) -> None:
    """With a registrar the probe REGISTERs (401, digest) first: the trunk's location table holds its contact
    while the numbers are called, and the numbers are still tested."""
    seen_in_location: list[dict[str, list[str]]] = []

    async def read_location(_result: Result) -> None:
        seen_in_location.append(await asyncio.to_thread(bed.trunk.registered))

    trunk = {"registrar": bed.trunk.uri, "user": USER, "password": PASSWORD}
    rows = [{"number": BUSY, "expect": "busy"}, {"number": REJECTED, "expect": "rejected"}]
    results = asyncio.run(run_inventory(tmp_path / "registered", rows, phone_target(bed.trunk, trunk=trunk),
                                        on_result=read_location))

    assert [r.outcome for r in results.values()] == [Outcome.passed] * 2, [describe(r) for r in results.values()]
    assert seen_in_location and all(USER in table for table in seen_in_location), \
        f"expected {USER} in the trunk's location table during the run, saw {seen_in_location}"
    contacts = seen_in_location[0][USER]
    assert len(contacts) == 1 and contacts[0].startswith("sip:") and f"@{HOST}:" in contacts[0], contacts


def test_calls_per_second_spaces_the_call_attempts(bed: Bed, tmp_path: Path) -> None:
    """10 numbers at 5 calls per second: the trunk sees their first INVITEs at least 0.18 s apart, over >= 1.8 s."""
    rows = [{"number": number, "expect": "busy"} for number in PACED]
    since = time.time()
    results = asyncio.run(run_inventory(tmp_path / "paced", rows,
                                        phone_target(bed.trunk, calls_per_second=5, concurrency=100)))

    assert all(r.outcome is Outcome.passed for r in results.values()), [describe(r) for r in results.values()]
    times = sorted(event["at"] for event in first_invites(bed.trunk, PACED, since).values())
    assert len(times) == len(PACED), f"expected {len(PACED)} calls at the trunk, saw {len(times)}"
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.18, f"expected call attempts >= 0.18s apart at 5 CAPS, saw gaps {gaps}"
    assert times[-1] - times[0] >= 1.8, f"expected 10 attempts to span >= 1.8s, saw {times[-1] - times[0]:.2f}s"


def test_concurrency_caps_the_calls_up_at_once(bed: Bed, tmp_path: Path) -> None:
    """6 ringing numbers with concurrency 2: the trunk never has more than 2 of them up (first INVITE to CANCEL),
    and does have 2 at once, so the 1 s calls take >= 3 s in all."""
    rows = [{"number": number, "expect": "no_answer"} for number in CAPPED]
    since = time.time()
    results = asyncio.run(run_inventory(tmp_path / "capped", rows, phone_target(
        bed.trunk, calls_per_second=50, concurrency=2, no_answer_timeout="1s")))

    assert all(r.outcome is Outcome.passed for r in results.values()), [describe(r) for r in results.values()]
    invites = first_invites(bed.trunk, CAPPED, since)
    cancels = {event["call_id"]: event["at"] for event in bed.trunk.call_log()
               if event["method"] == "CANCEL" and event["call_id"] in invites}
    assert set(cancels) == set(invites) and len(invites) == len(CAPPED), \
        f"expected {len(CAPPED)} calls each cancelled at the trunk, saw {len(invites)} INVITEs, {len(cancels)} CANCELs"
    edges = sorted([(invites[c]["at"], 1) for c in invites] + [(cancels[c], -1) for c in invites])
    up, most = 0, 0
    for _, change in edges:
        up += change
        most = max(most, up)
    assert most == 2, f"expected at most (and at some point) 2 calls up at once, saw {most}"
    span = max(cancels.values()) - min(event["at"] for event in invites.values())
    assert span >= 3.0, f"expected 3 rounds of 1s calls (>= 3s), saw {span:.2f}s"
