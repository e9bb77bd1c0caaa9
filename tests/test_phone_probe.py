"""The phone probe: inventory expansion, outcome classes, admission (pacing and cap), greeting and hold.

The calls go to a callee user agent of our own voice engine on 127.0.0.1 that behaves per
dialled number; tests/test_phone_peers.py covers the same against Kamailio, baresip and SIPp.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cxtest.errors import ScenarioError
from cxtest.loader import load_scenarios
from cxtest.model import Outcome, Project, Result
from cxtest.runner import Runner
from probes.phone import Connect, Greeting, Hold, Pacer, PhoneProbe
from probes.voice import UserAgent
from probes.voice.audio import silence
from probes.voice.speech import synthesise

GREETING = "Thank you for calling Acme Bank."


def write_inventory(folder: Path, csv_text: str, target: str = "", extra: str = "") -> Path:
    (folder / "numbers.csv").write_text(csv_text)
    scenario = folder / "numbers.yaml"
    scenario.write_text(
        "name: Acme numbers\nchannel: phone\n"
        f"target: {{ dial: 'sip:{{number}}@127.0.0.1:9', hold: 1s {target} }}\n"
        f"inventory: numbers.csv\n{extra}"
    )
    return scenario


def load(folder: Path, csv_text: str, target: str = "", extra: str = "") -> list[Any]:
    scenario = write_inventory(folder, csv_text, target, extra)
    return load_scenarios([scenario], Project(root=folder))[1]


# --------------------------------------------------------------------------- expansion


def test_each_row_becomes_a_scenario_with_its_own_id_name_tags_and_steps(tmp_path: Path) -> None:
    """An inventory of three rows loads as three scenarios, id <scenario>/<number>, steps chosen by what is expected."""
    scenarios = load(
        tmp_path,
        "number,name,expected_greeting,expect,max_pdd,tags\n"
        "+15550001,Sales,Welcome to sales,,2s,sales uk\n"
        "+15550002,,,busy,,\n"
        "+15550003,Retired,This number is not in service,announcement,,\n",
        extra="expect: { max_pdd: 3s, min_quality: 3.8 }\ntags: [numbers]\n",
    )
    assert [s.id for s in scenarios] == ["numbers/+15550001", "numbers/+15550002", "numbers/+15550003"]
    assert [s.name for s in scenarios] == ["Acme numbers: Sales", "Acme numbers: +15550002", "Acme numbers: Retired"]
    assert scenarios[0].tags == ("numbers", "sales", "uk")
    sales, busy, retired = (s.steps for s in scenarios)
    assert [type(s) for s in sales] == [Connect, Greeting, Hold]
    assert (sales[0].connect, sales[0].expect, sales[0].max_pdd) == ("+15550001", "answered", 2.0)
    assert (sales[1].greeting, sales[2].hold, sales[2].min_quality) == ("Welcome to sales", 1.0, 3.8)
    assert [(type(s), s.expect, s.max_pdd) for s in busy] == [(Connect, "busy", 3.0)]
    assert [type(s) for s in retired] == [Connect, Greeting] and retired[1].early


def test_a_yaml_inventory_and_an_inline_list_load_alike(tmp_path: Path) -> None:
    """The same rows as a YAML file or inline under `inventory:` give the same scenarios."""
    (tmp_path / "numbers.yaml").write_text("- {number: '+15550001', expect: answer}\n- number: '+15550002'\n  expect: no answer\n")
    (tmp_path / "from_file.yaml").write_text(
        "name: A\nchannel: phone\ntarget: {dial: 'sip:{number}@127.0.0.1:9'}\ninventory: numbers.yaml\n"
    )
    (tmp_path / "inline.yaml").write_text(
        "name: B\nchannel: phone\ntarget: {dial: 'sip:{number}@127.0.0.1:9'}\n"
        "inventory:\n  - {number: '+15550001', expect: answer}\n  - {number: '+15550002', expect: no_answer}\n"
    )
    _, scenarios = load_scenarios([tmp_path / "from_file.yaml", tmp_path / "inline.yaml"], Project(root=tmp_path))
    expects = [(s.id, s.steps[0].expect) for s in scenarios]
    assert expects == [
        ("from_file/+15550001", "answered"), ("from_file/+15550002", "no_answer"),
        ("inline/+15550001", "answered"), ("inline/+15550002", "no_answer"),
    ]


def test_bad_rows_are_reported_at_their_lines_all_at_once(tmp_path: Path) -> None:
    """A bad class, a bad PDD and a duplicate number are each reported as inventory file:line field: message."""
    with pytest.raises(ScenarioError) as caught:
        load(tmp_path, "number,expect,max_pdd\n+15550001,ringing,\n+15550002,,soon\n+15550002,,\n")
    lines = [str(p) for p in caught.value.problems]
    csv = str(tmp_path / "numbers.csv")
    assert any(line.startswith(f"{csv}:2:1 expect:") and "answered" in line for line in lines), lines
    assert any(line.startswith(f"{csv}:3:1 max_pdd: bad duration 'soon'") for line in lines), lines
    assert f"{csv}:4:1 number: +15550002 is listed twice (also on line 3)" in lines


def test_an_inventory_without_a_number_column_or_rows_is_refused(tmp_path: Path) -> None:
    """No `number` header, or a header and no rows, is a problem that says what is missing."""
    with pytest.raises(ScenarioError, match="needs a header with a `number` column"):
        load(tmp_path, "phone,expect\n+15550001,busy\n")
    with pytest.raises(ScenarioError, match="lists no numbers"):
        load(tmp_path, "number,expect\n")


def test_a_dial_uri_without_the_number_placeholder_is_refused(tmp_path: Path) -> None:
    """`dial` must say where the number goes."""
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: A\nchannel: phone\ntarget: {dial: 'sip:sales@127.0.0.1'}\ninventory: [{number: '1'}]\n")
    with pytest.raises(ScenarioError, match=r"has no \{number\}"):
        load_scenarios([scenario], Project(root=tmp_path))


def test_retest_after_means_one_retry_after_that_delay(tmp_path: Path) -> None:
    """`retest_after: 30s` gives every number one retry, 30 s after its failed attempt; the default is none."""
    [retested] = load(tmp_path, "number\n1\n", target=", retest_after: 30s")
    assert (retested.retries, retested.retry_delay) == (1, 30.0)
    [plain] = load(tmp_path, "number\n1\n")
    assert (plain.retries, plain.retry_delay) == (0, 0.0)


# --------------------------------------------------------------------------- admission


async def test_admission_spaces_attempts_by_the_calls_per_second_limit(tmp_path: Path) -> None:
    """Ten numbers at 20 calls per second are admitted on a 50 ms grid: never ahead of it, all in about 0.45 s."""
    scenarios = load(tmp_path, "number\n" + "".join(f"{i}\n" for i in range(10)), target=", calls_per_second: 20")
    probe = PhoneProbe()
    times: list[float] = []

    async def admit(scenario: Any) -> None:
        async with probe.admission(scenario):
            times.append(time.monotonic())

    await asyncio.gather(*(admit(s) for s in scenarios))
    # A late wake-up shortens the next gap (the grid catches up), so it is the grid that is checked, not each gap.
    ahead = [round(k * 0.05 - (at - times[0]), 4) for k, at in enumerate(times)]
    assert max(ahead) <= 0.002, ahead
    assert 0.448 <= times[-1] - times[0] <= 0.6


async def test_the_pacer_keeps_its_grid_after_a_stall() -> None:
    """After a 0.3 s stall at 20 a second, three overdue attempts go at once and the rest follow the grid: the rate holds."""
    pacer = Pacer(20)
    times = []
    for _ in range(4):
        await pacer.wait()
        times.append(time.monotonic())
    time.sleep(0.3)  # the event loop is busy elsewhere: six slots pass
    for _ in range(8):
        await pacer.wait()
        times.append(time.monotonic())
    after = times[4:]
    assert after[3] - after[0] < 0.02  # the catch-up: the stall's attempts go back to back, at most 3 + 1
    assert 0.04 <= after[4] - after[3] <= 0.07  # then on the grid again
    # Slots 0-3, the stall, slots 6-9 at once (two older ones dropped), slots 10-13: the last at 13 / 20 s.
    assert times[-1] - times[0] == pytest.approx(0.65, abs=0.03)


async def test_admission_caps_the_calls_up_at_once(tmp_path: Path) -> None:
    """With concurrency 3, a fourth call waits until one of the three is over."""
    scenarios = load(tmp_path, "number\n1\n2\n3\n4\n", target=", concurrency: 3, calls_per_second: 1000")
    probe = PhoneProbe()
    up, peak = 0, 0

    async def call(scenario: Any) -> None:
        nonlocal up, peak
        async with probe.admission(scenario):
            up += 1
            peak = max(peak, up)
            await asyncio.sleep(0.05)
            up -= 1

    await asyncio.gather(*(call(s) for s in scenarios))
    assert peak == 3


# --------------------------------------------------------------------------- calls to a callee that behaves per number


class Callee:
    """Our own user agent answering by dialled number: the behaviours number testing must tell apart."""

    def __init__(self) -> None:
        self.greeting = synthesise(GREETING)
        self.ua = UserAgent("127.0.0.1")

    async def __aenter__(self) -> "Callee":
        await self.ua.start()
        self.ua.on_invite = self.behave
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ua.aclose()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ua.port}"

    async def behave(self, call: Any) -> None:
        number = call.dialled_user
        codes = {"busy": (486, "Busy Here"), "gone": (404, "Not Found"), "away": (480, "Temporarily Unavailable"),
                 "declined": (603, "Decline"), "forbidden": (403, "Forbidden")}
        if number in codes:
            await call.reject(*codes[number])
            return
        await call.ring()
        if number == "ringing":
            await call.ended.wait()
            return
        if number == "announcement":
            await call.progress_media()
            await call.play(self.greeting)
            await call.reject(404, "Not Found")
            return
        await asyncio.sleep(0.3)
        await call.answer()
        if number == "deadair":
            await call.play(silence(8))
            return
        if number == "drops":
            await call.play(self.greeting[:16000])  # a second of it, then the line drops during the hold
            await call.hangup()
            return
        await call.play(self.greeting)
        await call.play(silence(10))


async def run_scenarios(tmp_path: Path, scenario: Path) -> dict[str, Result]:
    project, scenarios = load_scenarios([scenario], Project(root=tmp_path))
    async with Runner(project, artifacts_root=tmp_path / "artifacts") as runner:
        results = await runner.run_many(scenarios)
    return {r.scenario_id.rpartition("/")[2]: r for r in results}


async def run_inventory(tmp_path: Path, csv_text: str, target: str = "") -> dict[str, Result]:
    async with Callee() as callee:
        scenario = write_inventory(tmp_path, csv_text, target)
        scenario.write_text(scenario.read_text().replace("127.0.0.1:9", callee.address))
        return await run_scenarios(tmp_path, scenario)


def seen_class(result: Result) -> str:
    return next(c.actual for c in result.steps[0].checks if c.name == "outcome")


async def test_every_failure_class_from_the_callees_answers(tmp_path: Path) -> None:
    """Busy, not found, unavailable, rejected, no answer and announcement are told apart and pass when expected."""
    results = await run_inventory(
        tmp_path,
        "number,expect\nbusy,busy\ngone,not_found\naway,unavailable\ndeclined,rejected\nringing,no_answer\nannouncement,announcement\n",
        target=", no_answer_timeout: 2s, calls_per_second: 50",
    )
    assert {n: seen_class(r) for n, r in results.items()} == {
        "busy": "busy", "gone": "not_found", "away": "unavailable", "declined": "rejected",
        "ringing": "no_answer", "announcement": "announcement",
    }
    assert all(r.outcome is Outcome.passed for r in results.values()), {n: r.message for n, r in results.items()}
    assert results["ringing"].measures["post_dial_delay"] < 0.5  # the 180 came at once


async def test_a_number_that_answers_otherwise_fails_saying_what_it_did(tmp_path: Path) -> None:
    """A busy number expected to answer fails with the class, the SIP status and the expectation."""
    results = await run_inventory(tmp_path, "number\nbusy\n")
    result = results["busy"]
    assert result.outcome is Outcome.failed
    assert "busy (486 Busy Here), expected answered" in result.message
    assert [s.outcome for s in result.steps] == [Outcome.failed, Outcome.skipped, Outcome.skipped]


async def test_answered_with_the_greeting_and_held_passes_with_its_measures(tmp_path: Path) -> None:
    """The right greeting is fitted, the call is held, and PDD, answer time, greeting latency and quality are measured."""
    results = await run_inventory(tmp_path, f"number,expected_greeting,min_quality\ngood,{GREETING},4\n")
    result = results["good"]
    assert result.outcome is Outcome.passed, result.message
    measures = result.measures
    assert measures["post_dial_delay"] < 0.2 and 0.25 < measures["time_to_answer"] < 1.0
    assert measures["similarity"] >= 0.8 and measures["greeting_latency"] < 1.0
    assert measures["quality"] > 4.0 and measures["loss"] == 0
    assert {a.label for a in result.artifacts} >= {"call.wav", "sip-trace.txt", "call.json"}


async def test_wrong_greeting_dead_air_and_a_drop_fail_with_what_was_heard(tmp_path: Path) -> None:
    """Another company's greeting, silence after the answer, and a hang-up during the hold each fail, saying so."""
    results = await run_inventory(
        tmp_path,
        "number,expected_greeting\ngood,Welcome to Globex Corporation\ndeadair,\ndrops,\n",
        target=", greeting_within: 2s",
    )
    wrong, dead, dropped = results["good"], results["deadair"], results["drops"]
    assert wrong.outcome is Outcome.failed and "expected 'Welcome to Globex Corporation', heard" in wrong.message
    assert "thank you for calling" in wrong.message.lower()
    assert dead.outcome is Outcome.failed
    assert "dead air: no greeting within 2s of the answer, silence" in dead.message
    assert dropped.outcome is Outcome.failed
    assert "call dropped" in dropped.message and "(remote bye)" in dropped.message


async def test_403_after_our_credentials_is_an_untested_number_not_a_failure(tmp_path: Path) -> None:
    """A 403 to an INVITE that carried no credentials is `rejected`; the probe never calls it an auth failure then."""
    results = await run_inventory(tmp_path, "number,expect\nforbidden,rejected\n")
    assert seen_class(results["forbidden"]) == "rejected"
    assert results["forbidden"].outcome is Outcome.passed


async def test_a_number_nobody_answers_at_all_is_an_error(tmp_path: Path) -> None:
    """No SIP response at all (nothing listening) is `unreachable`: the run is error, we could not test."""
    scenario = write_inventory(tmp_path, "number\n1\n", target=", no_answer_timeout: 1s")
    project, scenarios = load_scenarios([scenario], Project(root=tmp_path))
    async with Runner(project, artifacts_root=tmp_path / "artifacts") as runner:
        [result] = await runner.run_many(scenarios)
    assert result.outcome is Outcome.error
    assert "1: unreachable: no response at all" in result.message


async def test_baseline_records_each_numbers_greeting_and_a_changed_one_fails(tmp_path: Path) -> None:
    """`cxtest baseline` keeps each number's greeting fingerprint; the same greeting passes later, another one fails."""
    async with Callee() as callee:
        scenario = write_inventory(tmp_path, "number\ngood\nbusy\n", target=", greeting_within: 2s")
        scenario.write_text(scenario.read_text().replace("127.0.0.1:9", callee.address).replace("hold: 1s", "hold: 0s"))
        cli = Path(sys.executable).parent / "cxtest"
        process = await asyncio.create_subprocess_exec(
            str(cli), "baseline", str(scenario), cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
        recorded = json.loads((tmp_path / "baselines" / "numbers.json").read_text())
        assert list(recorded) == ["good"] and recorded["good"]["2"]["fingerprint"], output  # busy has no greeting

        same = (await run_scenarios(tmp_path, scenario))["good"]
        assert same.outcome is Outcome.passed and "sounds like its baseline" in same.steps[1].checks[0].text, same.message

        callee.greeting = synthesise("Welcome to Globex Insurance, the claims department.")
        changed = (await run_scenarios(tmp_path, scenario))["good"]
    assert changed.outcome is Outcome.failed
    assert "greeting differs from its baseline (audio" in changed.message
