"""BotiumScript import: convos, partial convos, utterances, asserters, logic hooks and botium.json as chat scenarios."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cxtest.loader import load_scenarios
from cxtest.model import Outcome, Project
from cxtest.runner import Runner
from probes.chat.botium import Conversion, convert_folder, write_scenarios
from probes.chat.connectors.base import BotMessage, Button
from probes.chat.matching import judge, negated
from probes.chat.model import ChatStep
from servers import ThreadedServer

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).parent / "data" / "botium"  # botium-core's own test convos (MIT, its LICENSE beside them)
CONVOS = SAMPLES / "test" / "convo" / "convos"
CXTEST = Path(sys.executable).with_name("cxtest")
STEP = TypeAdapter(ChatStep)



def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n") if not name.endswith(".json") else text)
    return folder


def steps(conversion: Conversion, name: str) -> list[dict[str, Any]]:
    found = [s for s in conversion.scenarios if s.name == name]
    assert len(found) == 1, [s.name for s in conversion.scenarios]
    return found[0].data["steps"]


def problems(conversion: Conversion) -> list[str]:
    return [f"{Path(p.file).name}:{p.line} {p.path}: {p.message}" for p in conversion.problems]


def simplerest(url: str, **caps: Any) -> str:
    settings = {
        "CONTAINERMODE": "simplerest", "SIMPLEREST_URL": url, "SIMPLEREST_METHOD": "POST",
        "SIMPLEREST_BODY_TEMPLATE": {"message": "{{msg.messageText}}", "session": "{{botium.conversationId}}"},
        "SIMPLEREST_RESPONSE_JSONPATH": "$.reply.text", "SIMPLEREST_BUTTONS_JSONPATH": "$.reply.buttons[*]",
        "SIMPLEREST_INTENT_JSONPATH": "$.nlu.intent", **caps,
    }
    return json.dumps({"botium": {"Capabilities": settings}}, indent=2)


# --------------------------------------------------------------------------- the samples


def test_every_sample_converts_and_loads_with_the_chat_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Botium sample folder converts without a crash and every scenario written loads with cxtest's own loader."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOT_URL", "http://127.0.0.1:9/bot")
    folders = sorted({path.parent for path in SAMPLES.rglob("*.convo.txt")})
    assert len(folders) >= 20
    loaded = converted = 0
    for index, folder in enumerate(folders):
        conversion = convert_folder(folder)
        written = write_scenarios(conversion, tmp_path / str(index))
        for scenario in conversion.scenarios:
            for step in scenario.data["steps"]:
                STEP.validate_python(step)
        converted += len(conversion.scenarios)
        if written:
            loaded += len(load_scenarios([tmp_path / str(index)])[1])
    assert loaded == converted > 60


def test_me_and_bot_sections_become_user_and_bot_steps_with_negation_and_escapes() -> None:
    """Multi-line texts stay whole, `!` is `not:`, `!!` and `??` stand for the character, a #begin/#end frame adds nothing."""
    compiler = convert_folder(SAMPLES / "test" / "compiler" / "convos" / "txt")
    assert steps(compiler, "convos_with_newlines") == [{"user": "Hallo\n\nHallo2"}, {"bot": {"contains": "Hallo\n\nHallo2"}}]
    assert steps(compiler, "!test 2 (convos_with_exclamation)")[1] == {"bot": {"not": {"contains": "test 2"}}}
    assert steps(compiler, "!!test 2")[1] == {"bot": {"contains": "!test 2"}}
    assert steps(compiler, "??test 2")[1] == {"bot": {"contains": "?test 2"}}
    assert steps(compiler, "convos + #") == [{"user": "# one hash"}, {"bot": {"contains": "## two hashes"}}]
    assert steps(compiler, "convos_args_escape.convo.txt") == [{"bot": {"buttons": {"contains": ["Test|1", "Test|2"]}}}]
    convos = convert_folder(CONVOS)
    assert steps(convos, "2 steps (2steps)") == [
        {"user": "Hello"}, {"bot": {"contains": "Hello"}}, {"user": "Hello again!"}, {"bot": {"contains": "Hello again!"}},
    ]
    assert steps(convos, "2 steps neg (2stepsneg)")[1] == {"bot": {"not": {"contains": "Hugo"}}}


def test_an_optional_bot_step_is_reported_unless_botium_would_require_it_anyway() -> None:
    """`?` before another bot step is left out and reported at its line; before #me or at the end Botium requires it, so do we."""
    convos = convert_folder(CONVOS)
    assert steps(convos, "2 steps neg (2stepsoptskip)") == [{"user": "Hello"}, {"bot": {"contains": "Hello"}}]
    assert "2stepsoptskip.convo.txt:6 #bot: an optional bot step (?) followed by another bot step is not converted: chat scenarios have no optional step yet" in problems(convos)
    assert steps(convos, "2 steps neg (2stepsoptfollowme)")[1] == {"bot": {"contains": "Hugo"}}
    assert steps(convos, "2 steps neg (2stepsoptneg)")[1] == {"bot": {"not": {"contains": "Hugo"}}}


def test_partial_convos_are_included_recursively_where_they_are_named() -> None:
    """INCLUDE and #include sections insert a partial convo's steps (its own includes too), as often as named."""
    partials = CONVOS / "partialconvo"
    depth2 = convert_folder(partials / "depth2")
    assert not depth2.problems
    assert steps(depth2, "Main") == [
        {"user": "Start depth1"}, {"bot": {"contains": "in depth1"}}, {"user": "ok"},
        {"bot": {"contains": "in depth2"}}, {"user": "in depth2"}, {"bot": {"contains": "main end"}},
    ]
    assert steps(convert_folder(partials / "includefirst"), "Main")[1] == {"bot": {"contains": "in depth2"}}
    assert steps(convert_folder(partials / "usesendermultiinclude"), "Main").count({"bot": {"contains": "in sub!"}}) == 4
    memory = convert_folder(partials / "withscriptingmemory")
    assert {"user": "123456"} in steps(memory, "Main")  # SET_SCRIPTING_MEMORY password|123456 in #begin, $password in the partial


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("circular", "second.pconvo.txt:6 INCLUDE: partial convos include each other in a circle: first -> second -> first"),
        ("wrongref", "main.convo.txt:5 INCLUDE: no partial convo named 'wrongref' (partial convos: exists)"),
        ("notfound", "main.convo.txt:5 INCLUDE: no partial convo named 'notexists' (partial convos: none in this folder)"),
        ("wrongarg", "main.convo.txt:8 INCLUDE: INCLUDE takes the name of one partial convo, got 2 argument(s): 'SUB|sdfsdfsd'"),
        ("noname", "noname.pconvo.txt:1 : a partial convo needs a name on its first line (INCLUDE refers to it)"),
        ("illegalname", "illegalname.pconvo.txt:1 : partial convo name 'illegal|name' must not contain '|'"),
    ],
)
def test_broken_partial_convos_are_located_problems_not_crashes(folder: str, expected: str) -> None:
    """The samples Botium refuses (a circle, a wrong name, two arguments...) give a problem at the guilty line."""
    assert expected in problems(convert_folder(CONVOS / "partialconvo" / folder))


def test_a_partial_convo_defined_twice_is_reported_at_the_second_file() -> None:
    """Partial convo names are one namespace per folder, as in Botium: the second definition is refused where it stands."""
    found = problems(convert_folder(CONVOS / "partialconvo" / "duplicatepconvo"))
    assert any(p.startswith("pconvosecond.pconvo.txt:1 : partial convo 'pconvo' is defined twice") for p in found)


def test_an_utterance_list_in_me_gives_one_scenario_per_utterance() -> None:
    """A #me naming UTT_AFFIRMATIVE (in an included partial) expands into a scenario per utterance; a #bot naming one accepts any."""
    expanded = convert_folder(CONVOS / "partialconvo" / "withutterances")
    assert [s.name for s in expanded.scenarios] == [f"Main/UTT_AFFIRMATIVE-L{i}-{text}" for i, text in enumerate(["yes", "sure", "do it"], 1)]
    assert [s.output.name for s in expanded.scenarios] == [f"main-UTT_AFFIRMATIVE-{i}.yaml" for i in (1, 2, 3)]
    assert steps(expanded, "Main/UTT_AFFIRMATIVE-L2-sure")[6] == {"user": "sure"}
    tree = convert_folder(CONVOS / "tree" / "withutterance")
    assert len(tree.scenarios) == 6
    assert steps(tree, "convo2")[1] == {"bot": {"matches": "(?:hello)|(?:hello1)|(?:hello2)|(?:hello3)|(?:hello4)"}}


def test_utterance_expansion_mode_first_keeps_the_first_utterance(tmp_path: Path) -> None:
    """SCRIPTING_UTTEXPANSION_MODE first in botium.json: one scenario, with the list's first utterance."""
    write(tmp_path, {
        "botium.json": json.dumps({"botium": {"Capabilities": {"SCRIPTING_UTTEXPANSION_MODE": "first"}}}),
        "greet.utterances.txt": "GREET\nhello there\nhi\n",
        "greet.convo.txt": "greet\n#me\nGREET\n#bot\nWelcome\n",
    })
    conversion = convert_folder(tmp_path)
    assert [s.name for s in conversion.scenarios] == ["greet/GREET-L1-hello there"]


def test_scripting_memory_is_saved_from_the_bot_and_sent_back() -> None:
    """`$myvar` in a #bot text is captured by a regex save; `$myvar` in a later #me is the `{{ myvar }}` template."""
    convos = convert_folder(CONVOS)
    assert steps(convos, "scripting memory (memory)") == [
        {"user": "this is a variable: VARVALUE"},
        {"bot": {"wildcard": "*this is a variable: *", "save": {"myvar": r"regex:(?i)this\s+is\s+a\s+variable:\s+(\S+)"}}},
        {"user": "show var {{ myvar }}"},
        {"bot": {"contains": "show var VARVALUE"}},
    ]
    assert "multiline.convo.txt:6 memory: memory function $year is not converted: sent as written" in problems(convos)
    assert "memory_dont_override_functions.convo.txt:7 memory: $year (memory function) in a bot text is not converted: this negated check is left out" in problems(convos)


def test_memory_turned_off_in_botium_json_keeps_dollar_words_as_text(tmp_path: Path) -> None:
    """SCRIPTING_ENABLE_MEMORY false: `$myvar` is sent and expected as written, nothing saved."""
    write(tmp_path, {
        "botium.json": json.dumps({"botium": {"Capabilities": {"SCRIPTING_ENABLE_MEMORY": False}}}),
        "memory.convo.txt": "memory\n#me\nhi\n#bot\nyou are $name\n#me\nI am $name\n",
    })
    assert steps(convert_folder(tmp_path), "memory") == [{"user": "hi"}, {"bot": {"contains": "you are $name"}}, {"user": "I am $name"}]


def test_text_that_looks_like_a_template_is_sent_as_written(tmp_path: Path) -> None:
    """A user text with `{{` is wrapped in {% raw %}, so the probe's Jinja2 rendering sends it unchanged."""
    write(tmp_path, {"t.convo.txt": "t\n#me\nmy {{ braces }}\n#bot\nok\n"})
    said = steps(convert_folder(tmp_path), "t")[0]["user"]
    from probes.http import render

    assert render(said, {}) == "my {{ braces }}"


# --------------------------------------------------------------------------- asserters: Botium's meaning, checked by our matcher


def holds(bot: dict[str, Any], message: BotMessage) -> bool:
    step = STEP.validate_python({"bot": bot})
    checks = judge(step.bot, message, step.bot.normalise)
    if step.bot.not_ is not None:
        checks.append(negated(judge(step.bot.not_, message, step.bot.normalise), "not"))
    return all(check.outcome is Outcome.passed for check in checks)


def converted_bot(tmp_path: Path, lines: str) -> dict[str, Any]:
    write(tmp_path, {"a.convo.txt": f"a\n#me\nhi\n#bot\n{lines}\n"})
    conversion = convert_folder(tmp_path)
    assert not conversion.problems, problems(conversion)
    return steps(conversion, "a")[1]["bot"]


def message(text: str = "", buttons: tuple[str, ...] = (), intent: str | None = None, confidence: float | None = None, raw: Any = None) -> BotMessage:
    return BotMessage(text, tuple(Button(b) for b in buttons), intent, confidence, raw)


@pytest.mark.parametrize(
    ("line", "passing", "failing"),
    [
        ("Your order * is ready", message("Hi! Your ORDER 12 is ready."), message("Your order is late")),
        ("!sorry", message("Welcome"), message("Sorry, what?")),
        ("TEXT_CONTAINS_ANY apple|pear", message("I like pears"), message("kiwi")),
        ("!TEXT_CONTAINS_ANY apple|pear", message("kiwi"), message("an apple")),
        ("TEXT_CONTAINS_ALL apple|pear", message("apple and pear"), message("apple")),
        ("!TEXT_CONTAINS_ALL apple|pear", message("apple"), message("pear and apple")),
        ("TEXT_EQUALS Yes|No", message("no"), message("no way")),
        ("!TEXT_EQUALS Yes|No", message("no way"), message("Yes")),
        (r"TEXT_REGEXP_ANY ^\d+$|^ok$", message("42"), message("ok then")),
        (r"TEXT_REGEXP_ALL ord\w+|\d{4}", message("order 4711"), message("order 12")),
        ("TEXT_WILDCARD_ANY order * ready|cancel*", message("Your order 12 is ready now"), message("nothing")),
        ("!TEXT_WILDCARD_ALL order *|ready", message("order 1 shipped"), message("order 1 ready")),
        ("TEXT_WILDCARDEXACT_ANY order *", message("order 1"), message("your order 1")),
        ("TEXT You said Hello1", message("You said Hello1!"), message("Hello1")),
        ("BUTTONS Billing|Support", message(buttons=("Billing", "Support", "Other")), message(buttons=("Support",))),
        ("!BUTTONS Billing", message(buttons=("Support",)), message(buttons=("Billing",))),
        ("BUTTONS", message(buttons=("Support",)), message("no buttons")),
        ("!BUTTONS", message("no buttons"), message(buttons=("Support",))),
        ("INTENT greet", message(intent="greet"), message(intent="goodbye")),
        ("!INTENT greet", message(intent="goodbye"), message(intent="greet")),
        ("INTENT_CONFIDENCE 70", message(confidence=0.8), message(confidence=0.6)),
        ("JSON_PATH $.order.id", message(raw={"order": {"id": "A1"}}), message(raw={"order": {}})),
        ("JSON_PATH $.order.id|a1*", message(raw={"order": {"id": "A123"}}), message(raw={"order": {"id": "B1"}})),
        ("!JSON_PATH $.order.id|A1*", message(raw={"order": {"id": "B1"}}), message(raw={"order": {"id": "A123"}})),
        ("!JSON_PATH $.order.id", message(raw={}), message(raw={"order": {"id": "A1"}})),
    ],
)
def test_each_asserter_keeps_botiums_meaning(tmp_path: Path, line: str, passing: BotMessage, failing: BotMessage) -> None:
    """Converted, each #bot line passes on a message Botium accepts and fails on one Botium rejects."""
    bot = converted_bot(tmp_path, line)
    assert holds(bot, passing), bot
    assert not holds(bot, failing), bot


def test_asserters_read_as_plain_expectations(tmp_path: Path) -> None:
    """The produced keys are the readable ones: contains lists, one_of, buttons, intent, confidence, json_path, not."""
    bot = converted_bot(tmp_path, "Welcome\nTEXT_CONTAINS_ALL a|b\nTEXT_EQUALS x|y\nBUTTONS Billing\nINTENT greet\nINTENT_CONFIDENCE 70\n!TEXT_CONTAINS_ANY sorry|error\nJSON_PATH $.id")
    assert bot == {
        "contains": ["Welcome", "a", "b"],
        "one_of": ["x", "y"],
        "buttons": {"contains": ["Billing"]},
        "intent": "greet",
        "confidence": 0.7,
        "json_path": {"$.id": {"exists": True}},
        "not": {"contains": ["sorry", "error"]},
    }


def test_what_has_no_equivalent_is_reported_where_it_stands_and_the_rest_converted(tmp_path: Path) -> None:
    """MEDIA, CARDS, !BUTTONS with several buttons and BOT_CONSUMED are problems at their lines; the other steps remain (PAUSE is a wait)."""
    write(tmp_path, {"a.convo.txt": """
        a
        #me
        MEDIA picture.png

        #bot
        Welcome
        CARDS Card 1
        !BUTTONS a|b

        #me
        hi
        PAUSE 500

        #end
        BOT_CONSUMED
    """})
    conversion = convert_folder(tmp_path)
    assert problems(conversion) == [
        "a.convo.txt:3 MEDIA: MEDIA is not converted in #me",
        "a.convo.txt:7 CARDS: CARDS is not converted in #bot",
        "a.convo.txt:8 BUTTONS: !BUTTONS with several buttons (none of them offered) is not converted: give one per step",
        "a.convo.txt:15 BOT_CONSUMED: BOT_CONSUMED is not converted in #end",
    ]
    assert steps(conversion, "a") == [{"bot": {"contains": "Welcome"}}, {"wait": "500ms"}, {"user": "hi"}]


def test_waitforbot_buttons_and_step_parameters(tmp_path: Path) -> None:
    """WAITFORBOT is wait_for_bot (in #begin first), BUTTON clicks once the bot spoke, CONVO_STEP_PARAMETERS stepTimeout is the step timeout."""
    write(tmp_path, {"a.convo.txt": """
        a
        #begin
        WAITFORBOT 1500
        CONVO_STEP_PARAMETERS {"stepTimeout": 3000}

        #me
        BUTTON start

        #bot
        Welcome
        WAITFORBOT

        #me
        BUTTON /billing|Billing

        #bot
        ok
        CONVO_STEP_PARAMETERS {"stepTimeout": 2500, "matchingMode": "equals"}
    """})
    conversion = convert_folder(tmp_path)
    assert not conversion.problems, problems(conversion)
    scenario = conversion.scenarios[0].data
    assert scenario["step_timeout"] == "3s"
    assert scenario["steps"] == [
        {"wait_for_bot": "1500ms"},
        {"user": {"button": "start"}},
        {"wait_for_bot": "60s"},
        {"bot": {"contains": "Welcome"}},
        {"user": {"button": "Billing"}},
        {"bot": {"equals": "ok"}, "timeout": "2500ms"},
    ]


def test_a_button_before_any_bot_message_is_sent_as_its_text(tmp_path: Path) -> None:
    """With nothing offered yet there is no button to click: Botium sends the text, and so do we."""
    write(tmp_path, {"a.convo.txt": "a\n#me\nBUTTON hello\n#bot\nhi\n"})
    assert steps(convert_folder(tmp_path), "a")[0] == {"user": "hello"}


def test_convos_of_one_name_get_their_file_in_the_name(tmp_path: Path) -> None:
    """Botium allows two convos called "greet"; cxtest scenario names are unique, so both say their file."""
    write(tmp_path, {"a.convo.txt": "greet\n#me\nhi\n", "b/c.convo.txt": "greet\n#me\nhey\n"})
    assert sorted(s.name for s in convert_folder(tmp_path).scenarios) == ["greet (a)", "greet (b/c)"]


def test_a_json_bot_section_checks_every_key_of_the_reply(tmp_path: Path) -> None:
    """A #bot JSON object becomes json_path checks: strings matched like Botium, other values equal, lists by length."""
    write(tmp_path, {"a.convo.txt": '#bot\n{"text": "Success*", "n": 1, "tags": ["x"], "none": null}\n'})
    bot = steps(convert_folder(tmp_path), "a.convo.txt")[0]["bot"]
    assert bot == {"json_path": {
        "$.text": {"matches": "(?i)Success.*"}, "$.n": {"equals": 1}, "$.tags": {"length": 1},
        "$.tags[0]": {"matches": "(?i)x"}, "$.none": {"exists": True},
    }}
    assert holds(bot, message(raw={"text": "success!", "n": 1, "tags": ["x"], "none": None}))
    assert not holds(bot, message(raw={"text": "success!", "n": 2, "tags": ["x"], "none": None}))


# --------------------------------------------------------------------------- the target


def test_simplerest_settings_become_the_rest_target(tmp_path: Path) -> None:
    """botium.json's simplerest URL, method, body template and JSONPaths become a rest target; Mustache names become ours."""
    write(tmp_path, {"botium.json": simplerest("http://127.0.0.1:8000/chat"), "convos/a.convo.txt": "a\n#me\nhi\n"})
    conversion = convert_folder(tmp_path / "convos")
    assert not conversion.problems and not conversion.warnings
    assert conversion.scenarios[0].data["target"] == {
        "connector": "rest", "url": "http://127.0.0.1:8000/chat", "method": "POST",
        "body": {"message": "{{ text }}", "session": "{{ conversation_id }}"},
        "messages": "$", "text": "$.reply.text", "buttons": "$.reply.buttons[*]", "intent": "$.nlu.intent",
    }


def test_simplerest_settings_without_equivalent_are_located_in_botium_json(tmp_path: Path) -> None:
    """A SIMPLEREST_PING_URL or a template value we cannot fill is a problem at its line of botium.json."""
    write(tmp_path, {"botium.json": simplerest("http://127.0.0.1:8000/chat?q={{msg.messageText}}", SIMPLEREST_PING_URL="http://x/ping",
                                               SIMPLEREST_METHOD="GET", SIMPLEREST_BODY_TEMPLATE=None),
                     "a.convo.txt": "a\n#me\nhi\n"})
    conversion = convert_folder(tmp_path)
    text = (tmp_path / "botium.json").read_text()
    ping_line = text[: text.index("SIMPLEREST_PING_URL")].count("\n") + 1
    assert problems(conversion) == [f"botium.json:{ping_line} SIMPLEREST_PING_URL: SIMPLEREST_PING_URL is not converted"]
    target = conversion.scenarios[0].data["target"]
    assert (target["url"], target["method"], target["body"]) == ("http://127.0.0.1:8000/chat", "GET", {"q": "{{ text }}"})


def test_without_botium_json_the_target_is_bot_url_and_a_warning_or_the_one_given(tmp_path: Path) -> None:
    """No botium.json: ${env:BOT_URL} with a warning (not a problem); --target's mapping replaces it silently."""
    write(tmp_path, {"a.convo.txt": "a\n#me\nhi\n"})
    plain = convert_folder(tmp_path)
    assert plain.scenarios[0].data["target"] == {"connector": "rest", "url": "${env:BOT_URL}"}
    assert not plain.problems and "no botium.json" in plain.warnings[0].message
    given = convert_folder(tmp_path, {"connector": "rasa", "url": "http://127.0.0.1:5005"})
    assert given.scenarios[0].data["target"] == {"connector": "rasa", "url": "http://127.0.0.1:5005"} and not given.warnings


def test_another_botium_connector_is_a_problem_with_the_fallback_target(tmp_path: Path) -> None:
    """CONTAINERMODE dialogflow has no converter: located in botium.json, scenarios still written for ${env:BOT_URL}."""
    write(tmp_path, {"botium.json": json.dumps({"botium": {"Capabilities": {"CONTAINERMODE": "dialogflow"}}}), "a.convo.txt": "a\n#me\nhi\n"})
    conversion = convert_folder(tmp_path)
    assert problems(conversion) == ["botium.json:1 CONTAINERMODE: Botium connector 'dialogflow' has no converter: the scenarios talk to ${env:BOT_URL} with the rest connector; give --target"]
    assert conversion.scenarios[0].data["target"]["url"] == "${env:BOT_URL}"


# --------------------------------------------------------------------------- the command and a real run


def test_the_import_command_writes_scenarios_and_exits_2_listing_what_it_could_not_convert(tmp_path: Path) -> None:
    """`cxtest import botium` writes YAML that loads, prints located problems and exits 2 when any, 0 when none."""
    write(tmp_path, {"bot/a.convo.txt": "a\n#me\nhi\n#bot\nWelcome\nCARDS x\n", "target.yaml": "{connector: rest, url: 'http://127.0.0.1:9/bot'}\n"})
    command = [str(CXTEST), "import", "botium", "bot", "--out", "out", "--target", "target.yaml"]
    broken = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 2, broken.stderr
    assert "a.convo.txt:6:1 CARDS: CARDS is not converted" in broken.stderr and "1 thing(s) not converted in 1 file(s)" in broken.stderr
    written = yaml.safe_load((tmp_path / "out" / "a.yaml").read_text())
    assert written["steps"] == [{"user": "hi"}, {"bot": {"contains": "Welcome"}}]
    (tmp_path / "bot" / "a.convo.txt").write_text("a\n#me\nhi\n#bot\nWelcome\n")
    clean = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stderr
    assert "wrote 1 scenario(s) to out" in clean.stderr


def botium_shaped_bot() -> Starlette:
    """A bot answering in its own JSON shape, as a Botium simplerest project describes it in botium.json."""

    async def chat(request: Request) -> Response:
        said = (await request.json())["message"]
        if said in ("hi", "hello"):
            reply = {"reply": {"text": "Welcome to Acme! Your order number is A123.", "buttons": ["Billing", "Support"]}, "nlu": {"intent": "greet"}, "order": {"id": "A123"}}
        elif said == "Billing":
            reply = {"reply": {"text": "Your balance is 120 pounds."}, "nlu": {"intent": "billing"}}
        elif said == "status A123":
            reply = {"reply": {"text": "Order A123 is on its way."}, "nlu": {"intent": "status"}}
        else:
            reply = {"reply": {"text": f"Sorry, I did not understand {said}"}, "nlu": {"intent": "fallback"}}
        return JSONResponse(reply)

    return Starlette(routes=[Route("/chat", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def bot_url() -> Iterator[str]:
    with ThreadedServer(botium_shaped_bot()) as server:
        yield server.url + "/chat"


async def test_converted_convos_run_against_the_bot_botium_json_describes(tmp_path: Path, bot_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Utterances, memory saved and sent back, a button click, asserters and an included partial pass; a wrong convo fails."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "spec", {
        "botium.json": simplerest(bot_url),
        "convo/hello.utterances.txt": "UTT_HELLO\nhi\nhello\n",
        "convo/status.pconvo.txt": """
            status
            #me
            status $order

            #bot
            Order * is on its way
            INTENT status
        """,
        "convo/order.convo.txt": """
            order status
            #me
            UTT_HELLO

            #bot
            Welcome to Acme! Your order number is $order.
            BUTTONS Billing|Support
            INTENT greet
            JSON_PATH $.order.id|A1*

            #me
            BUTTON Billing

            #bot
            !sorry
            TEXT_CONTAINS_ALL balance|pounds
            INCLUDE status
        """,
        "convo/wrong.convo.txt": "wrong answer\n#me\nhi\n#bot\n!Welcome\n",
    })
    conversion = convert_folder(tmp_path / "spec" / "convo")
    assert not conversion.problems and not conversion.warnings, problems(conversion)
    write_scenarios(conversion, tmp_path / "scenarios")
    project, scenarios = load_scenarios([tmp_path / "scenarios"], Project(root=tmp_path))
    async with Runner(project, artifacts_root=tmp_path / "artifacts") as runner:
        results = await runner.run_many(scenarios)
    outcomes = {result.scenario_name: result.outcome for result in results}
    assert outcomes == {
        "order status/UTT_HELLO-L1-hi": Outcome.passed,
        "order status/UTT_HELLO-L2-hello": Outcome.passed,
        "wrong answer": Outcome.failed,
    }, [(r.scenario_name, r.message) for r in results]
