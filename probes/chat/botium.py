"""BotiumScript -> chat scenarios: `cxtest import botium DIR` and Botium folders given to `cxtest run`.

    conversion = convert_folder(Path("spec/convo"))
    conversion.scenarios   # Converted(name, data={name, channel: chat, target, steps}, source, line, output)
    conversion.problems    # what could not be converted, each `file:line:col path: message`
    conversion.warnings    # said, but converted anyway (no botium.json, a skipped file...)

What is read, as Botium reads it (botium-core's CompilerTxt, Convo, ScriptingProvider):
every `*.convo.txt`, `*.pconvo.txt` and `*.utterances.txt` below the folder (partial
convos and utterance lists are one namespace for the whole folder), and the nearest
botium.json in the folder or above it. Each convo becomes one scenario, or one per
utterance when a `#me` names an utterance list (Botium's SCRIPTING_UTTEXPANSION_MODE
`all`, its default; `first` in botium.json keeps the first utterance only).

How Botium's meaning is kept:
- `#bot` text is matched like Botium's default `wildcardIgnoreCase`, which searches
  the text (it is not anchored): text without `*` becomes `contains:`, text with `*`
  becomes `wildcard: "*...*"`. Another SCRIPTING_MATCHING_MODE maps to `equals`,
  `wildcard` or `matches`. Our matchers fold case, so case-sensitive Botium modes
  and asserters are checked without case.
- `!` is `not:`; a `?` optional bot step followed by another bot step has no
  equivalent yet (it is reported and left out); followed by anything else Botium
  runs it as a required step, and so do we.
- Scripting memory (on unless botium.json sets SCRIPTING_ENABLE_MEMORY false; Botium's
  own default is off, but a convo that writes `$name` means it on): a `$name` in a
  `#bot` text is captured with `save: {name: "regex:..."}` and sent back as
  `{{ name }}`; SET_SCRIPTING_MEMORY values are filled in as text; ASSIGN_SCRIPTING_MEMORY
  becomes a JSONPath `save`. Memory functions ($now, $random...) are reported.
- PAUSE becomes a `wait` step (before the message in #me, before the check in #bot).
  WAITFORBOT becomes `wait_for_bot` (which fails when nothing comes; Botium's goes on).
- Whatever has no equivalent (MEDIA, CARDS, FORMS, entities, custom asserters...) is
  reported where it stands; the rest of the convo is still converted.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxtest.errors import Problem

CONVO, PARTIAL, UTTERANCES = ".convo.txt", ".pconvo.txt", ".utterances.txt"
NOT_READ = (".convo.csv", ".pconvo.csv", ".xlsx", ".xlsm", ".scriptingmemory.txt")  # Botium reads these; we do not
CONFIG = "botium.json"
SKIP = re.compile(r"^skip[.\-_]", re.IGNORECASE)  # Botium skips files and convos named so
SECTIONS = ("begin", "include", "me", "bot", "end")
MAX_VARIANTS = 1000  # utterance expansion multiplies: stop before it floods the disk
DEFAULT_WAIT_MS = 60_000  # WAITFORBOT without a timeout waits forever in Botium
FALLBACK_TARGET = {"connector": "rest", "url": "${env:BOT_URL}"}

ASSERTERS = {
    "BUTTONS", "BUTTONS_COUNT", "BUTTONS_COUNT_REC", "MEDIA", "MEDIA_COUNT", "MEDIA_COUNT_REC",
    "CARDS", "CARDS_COUNT", "CARDS_COUNT_REC", "PAUSE_ASSERTER", "JSON_PATH", "JSON_PATH_COUNT",
    "RESPONSE_LENGTH", "FORMS", "ENTITIES", "ENTITY_VALUES", "ENTITY_CONTENT", "INTENT", "INTENT_UNIQUE",
    "INTENT_CONFIDENCE", "TEXT_CONTAINS_ANY", "TEXT_CONTAINS_ANY_IC", "TEXT_CONTAINS_ALL", "TEXT_CONTAINS_ALL_IC",
    "TEXT_WILDCARD_ANY", "TEXT_WILDCARD_ANY_IC", "TEXT_WILDCARD_ALL", "TEXT_WILDCARD_ALL_IC",
    "TEXT_WILDCARDEXACT_ANY", "TEXT_WILDCARDEXACT_ANY_IC", "TEXT_WILDCARDEXACT_ALL", "TEXT_WILDCARDEXACT_ALL_IC",
    "TEXT_REGEXP_ANY", "TEXT_REGEXP_ANY_IC", "TEXT_REGEXP_ALL", "TEXT_REGEXP_ALL_IC",
    "TEXT_EQUALS", "TEXT_EQUALS_IC", "TEXT", "TEXT_IC", "BOT_CONSUMED", "BOT_UNCONSUMED_COUNT", "WER",
}
LOGIC_HOOKS = {
    "PAUSE", "WAITFORBOT", "SET_SCRIPTING_MEMORY", "CLEAR_SCRIPTING_MEMORY", "ASSIGN_SCRIPTING_MEMORY",
    "UPDATE_CUSTOM", "SKIP_BOT_UNCONSUMED", "INCLUDE", "CONVO_STEP_PARAMETERS", "ORDERED_LIST_TO_BUTTON",
    "CONDITIONAL_STEP_TIME_BASED", "CONDITIONAL_STEP_BUSINESS_HOURS", "CONDITIONAL_STEP_CAPABILITY_VALUE_BASED",
    "CONDITIONAL_STEP_JSON_PATH_BASED",
}
USER_INPUTS = {"BUTTON", "MEDIA", "FORM"}

# Text asserters: the Botium match function each uses, and whether all arguments must match (else any).
TEXT_ASSERTERS = {
    **{f"TEXT_CONTAINS_{n}{ic}": ("include", n == "ALL") for n in ("ANY", "ALL") for ic in ("", "_IC")},
    **{f"TEXT_WILDCARD_{n}{ic}": ("wildcard", n == "ALL") for n in ("ANY", "ALL") for ic in ("", "_IC")},
    **{f"TEXT_WILDCARDEXACT_{n}{ic}": ("wildcardExact", n == "ALL") for n in ("ANY", "ALL") for ic in ("", "_IC")},
    **{f"TEXT_REGEXP_{n}{ic}": ("regexp", n == "ALL") for n in ("ANY", "ALL") for ic in ("", "_IC")},
    "TEXT_EQUALS": ("equals", False), "TEXT_EQUALS_IC": ("equals", False),
    "TEXT": (None, False), "TEXT_IC": (None, False),  # None: the convo's matching mode
}
MATCHING_MODES = ("wildcard", "wildcardIgnoreCase", "wildcardLowerCase", "wildcardExact", "wildcardExactIgnoreCase",
                  "include", "includeIgnoreCase", "includeLowerCase", "regexp", "regexpIgnoreCase", "equals", "equalsIgnoreCase")
MEMORY_FUNCTIONS = {  # Botium's scripting memory functions: values computed when the convo runs
    "$now", "$now_EN", "$now_DE", "$now_ISO", "$date", "$date_EN", "$date_DE", "$date_ISO", "$time", "$time_EN",
    "$time_DE", "$time_ISO", "$time_HH_MM", "$time_HH", "$time_H_A", "$timestamp", "$year", "$month", "$month_MM",
    "$day_of_month", "$day_of_week", "$random", "$random10", "$uniqid", "$env", "$func", "$cap", "$msg",
}
_VARIABLE = re.compile(r"\$[A-Za-z]\w*(?:\((?:[^)\\]|\\.)*\))?")  # $name, $name(args)
_EOL = re.compile(r"\r\n|\r|\n")
_REGEX_SPECIAL = re.compile(r"([.^$*+?{}\[\]\\|()])")


# --------------------------------------------------------------------------- what the conversion gives


@dataclass(frozen=True)
class Converted:
    """One scenario: `data` validates as a chat scenario once the loader adds `id` and `source`."""

    name: str
    data: dict[str, Any]
    source: Path  # the .convo.txt file
    line: int  # where its name stands
    output: Path  # the YAML file's path relative to the output folder


@dataclass
class Conversion:
    scenarios: list[Converted] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # not converted, or broken as Botium would refuse it
    warnings: list[Problem] = field(default_factory=list)  # converted, but worth saying


def convert_folder(folder: Path, target: dict[str, Any] | None = None) -> Conversion:
    """Every convo below `folder` as chat scenario data; `target` replaces the one botium.json gives."""
    return _Importer(folder, target).run()


def write_scenarios(conversion: Conversion, out: Path) -> list[Path]:
    """Each converted scenario as a YAML file below `out`, saying where it came from."""
    written = []
    for scenario in conversion.scenarios:
        path = out / scenario.output
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# Converted from BotiumScript by `cxtest import botium`: {_display(scenario.source)}:{scenario.line}\n"
        path.write_text(header + yaml.dump(scenario.data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120))
        written.append(path)
    return written


class _Dumper(yaml.SafeDumper):
    """Multi-line texts as `|` blocks, as they stood in the convo; no &anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text and not any(line != line.rstrip() for line in text.split("\n")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_text)


# --------------------------------------------------------------------------- reading BotiumScript


@dataclass(frozen=True)
class Line:
    text: str
    number: int


@dataclass(frozen=True)
class Call:
    """An asserter, logic hook or user input line: `?!NAME arg1|arg2`."""

    name: str
    args: tuple[str, ...]
    line: int
    negated: bool = False
    optional: bool = False


@dataclass(frozen=True)
class BotiumStep:
    """One section (#me, #bot, #begin, #end, #include) as Botium's linesToConvoStep reads it."""

    sender: str
    file: str
    line: int
    channel: str | None = None
    text: str | None = None  # None: no text at all ("" is an empty message)
    text_line: int = 0
    negated: bool = False
    optional: bool = False
    json: Any = None  # a JSON message (Botium's sourceData)
    asserters: tuple[Call, ...] = ()
    hooks: tuple[Call, ...] = ()
    inputs: tuple[Call, ...] = ()
    includes: tuple[tuple[str, int], ...] = ()  # (partial convo name, line)

    def interacts(self) -> bool:
        return bool(self.text) or self.json is not None or bool(self.asserters or self.hooks or self.inputs)


@dataclass
class Script:
    path: Path
    file: str
    name: str | None
    name_line: int
    description: str
    steps: list[BotiumStep]


def _args(text: str) -> tuple[str, ...]:
    """Botium's argument list: `a|b`, with `\\|` for a literal bar."""
    if not text:
        return ()
    return tuple(part.replace("\0", "|").strip() for part in text.replace("\\|", "\0").split("|"))


def _strip_flags(text: str) -> tuple[str, bool, bool]:
    """`?` optional and `!` negated prefixes; `??` and `!!` stand for a literal `?` and `!`."""
    optional = negated = False
    if text.startswith("?"):
        optional = not text.startswith("??")
        text = text[1:]
    if text.startswith("!"):
        negated = not text.startswith("!!")
        text = text[1:]
    return text, optional, negated


def _is_json(content: str) -> bool:
    """Botium (is-json) sends or compares a section as JSON when it is an object, or a list of them."""
    try:
        value = json.loads(content)
    except ValueError:
        return False
    return (isinstance(value, dict) and bool(value)) or (isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value))


class _Registry:
    """The names Botium recognises at the start of a line; custom ones come from botium.json."""

    def __init__(self, caps: dict[str, Any]):
        def refs(key: str) -> set[str]:
            return {item["ref"] for item in caps.get(key) or () if isinstance(item, dict) and isinstance(item.get("ref"), str)}

        self.custom = refs("ASSERTERS") | refs("LOGIC_HOOKS") | refs("USER_INPUTS")
        self.asserters = ASSERTERS | refs("ASSERTERS")
        self.hooks = LOGIC_HOOKS | refs("LOGIC_HOOKS")
        self.inputs = USER_INPUTS | refs("USER_INPUTS")


def parse_script(path: Path, registry: _Registry, problems: list[Problem]) -> Script:
    """A .convo.txt or .pconvo.txt file: its name, description and sections."""
    file = _display(path)
    lines = [Line(text, number) for number, text in enumerate(_EOL.split(path.read_text(encoding="utf-8-sig")), 1)]
    header: list[Line] = []
    sections: list[tuple[Line, list[Line]]] = []
    for line in lines:
        stripped = line.text.strip()
        word = stripped[1:].split(" ")[0] if stripped.startswith("#") else ""
        if word in SECTIONS:
            sections.append((line, []))
            continue
        if re.fullmatch(r"[A-Za-z]\w*", word):
            known = ", ".join("#" + section for section in SECTIONS)
            problems.append(Problem(file, line.number, 1, stripped, f"unknown section: Botium reads this line as text (sections: {known})"))
        (sections[-1][1] if sections else header).append(line)
    name = header[0].text.strip() if header else None
    description = "\n".join(line.text.strip() for line in header[1:]).strip()
    steps = [_parse_section(file, tag, body, registry, problems) for tag, body in sections]
    return Script(path, file, name or None, header[0].number if header else 1, description, steps)


def _parse_section(file: str, tag: Line, body: list[Line], registry: _Registry, problems: list[Problem]) -> BotiumStep:
    """Botium's linesToConvoStep: asserters, logic hooks, user inputs and the text lines around them."""
    sender, _, channel = tag.text.strip()[1:].partition(" ")
    channel = channel.strip() or None
    if sender == "include":
        names = [channel] if channel else []
        names_lines = [(name, tag.number) for name in names] + [(line.text.strip(), line.number) for line in body if line.text.strip()]
        return BotiumStep("include", file, tag.number, includes=tuple(names_lines))
    asserters: list[Call] = []
    hooks: list[Call] = []
    inputs: list[Call] = []
    pending: list[Line] = []  # text lines not yet known to be followed by more text
    text_lines: list[Line] = []
    accepting_text = True  # a #me section takes no text after a user input or logic hook
    for line in body:
        raw = line.text.strip()
        logic, optional, negated = _strip_flags(raw)
        name = logic.split(" ")[0]
        call = Call(name, _args(logic[len(name) + 1:]), line.number, negated, optional)
        if sender != "me" and name in registry.asserters:
            asserters.append(call)
        elif sender == "me" and name in registry.inputs:
            inputs.append(call)
            accepting_text = False
        elif name in registry.hooks:
            hooks.append(call)
            accepting_text = False
        elif sender == "me" and not accepting_text:
            if raw:
                problems.append(Problem(file, line.number, 1, "#me", f"no text expected after {(inputs or hooks)[-1].name}: {raw!r} (Botium refuses this convo)"))
        else:
            pending.append(line)
        if pending and raw:
            text_lines += pending
            pending = []
    if pending and not text_lines:
        text_lines = pending
    includes = [_include_name(file, hook, problems) for hook in hooks if hook.name == "INCLUDE"]
    step = BotiumStep(
        sender, file, tag.number, channel, asserters=tuple(asserters),
        hooks=tuple(hook for hook in hooks if hook.name != "INCLUDE"), inputs=tuple(inputs),
        includes=tuple(include for include in includes if include is not None),
    )
    if text_lines:
        first, optional, negated = _strip_flags(text_lines[0].text.strip())
        texts = [first] + [line.text.strip() for line in text_lines[1:]]
        content = " ".join(texts)
        where = next((line.number for line in text_lines if line.text.strip()), text_lines[0].number)
        if _is_json(content):
            step = dataclasses.replace(step, json=json.loads(content), text_line=where, negated=negated, optional=optional)
        else:
            step = dataclasses.replace(step, text="\n".join(texts).strip(), text_line=where, negated=negated, optional=optional)
    flags = ({step.optional} if step.text else set()) | {a.optional for a in step.asserters}
    if len(flags) > 1:
        message = "a step is optional (?) as a whole: mark its text and all its asserters, or none (Botium refuses this convo)"
        problems.append(Problem(file, tag.number, 1, f"#{sender}", message))
    return step


def _include_name(file: str, hook: Call, problems: list[Problem]) -> tuple[str, int] | None:
    if len(hook.args) != 1 or not hook.args[0]:
        message = f"INCLUDE takes the name of one partial convo, got {len(hook.args)} argument(s): {'|'.join(hook.args)!r}"
        problems.append(Problem(file, hook.line, 1, "INCLUDE", message))
        return None
    return hook.args[0], hook.line


# --------------------------------------------------------------------------- the folder


def _files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    return [
        path for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _line_of(text: str, key: str) -> int:
    """The line where a key of botium.json stands (json gives no positions)."""
    found = text.find(f'"{key}"')
    return text.count("\n", 0, found) + 1 if found >= 0 else 1


class _Importer:
    def __init__(self, folder: Path, target: dict[str, Any] | None):
        self.folder = folder
        self.base = folder if folder.is_dir() else folder.parent
        self.result = Conversion()
        self.problems: dict[Problem, None] = {}  # ordered and without repeats: a partial convo's problem shows once
        self.caps, self.config_file, self.config_text = self._config()
        self.target = target if target is not None else self._target()
        self.registry = _Registry(self.caps)
        self.partials: dict[str, Script] = {}
        self.utterances: dict[str, list[str]] = {}
        self.matching_mode = self.caps.get("SCRIPTING_MATCHING_MODE") or "wildcardIgnoreCase"
        self.memory = str(self.caps.get("SCRIPTING_ENABLE_MEMORY")).lower() != "false"
        self.expansion = self.caps.get("SCRIPTING_UTTEXPANSION_MODE") or "all"

    def problem(self, file: str, line: int, path: str, message: str, column: int = 1) -> None:
        self.problems[Problem(file, line, column, path, message)] = None

    def warn(self, file: str, line: int, path: str, message: str) -> None:
        self.result.warnings.append(Problem(file, line, 1, path, message))

    # ----------------------------------------------------------------- botium.json and the target

    def _config(self) -> tuple[dict[str, Any], str, str]:
        for folder in [self.base.resolve(), *self.base.resolve().parents]:
            path = folder / CONFIG
            if path.is_file():
                file, text = _display(path), path.read_text()
                try:
                    config = json.loads(text)
                except ValueError as exc:
                    self.problem(file, getattr(exc, "lineno", 1), "", f"not JSON: {exc}")
                    return {}, file, text
                caps = config.get("botium", {}).get("Capabilities") if isinstance(config, dict) and isinstance(config.get("botium"), dict) else None
                if not isinstance(caps, dict):
                    self.problem(file, 1, "botium.Capabilities", "expected Botium's settings under botium.Capabilities")
                    return {}, file, text
                mode = caps.get("SCRIPTING_MATCHING_MODE")
                if mode is not None and mode not in MATCHING_MODES:
                    message = f"matching mode {mode!r} has no equivalent; bot texts are matched as wildcardIgnoreCase"
                    self.problem(file, _line_of(text, "SCRIPTING_MATCHING_MODE"), "SCRIPTING_MATCHING_MODE", message)
                    caps = {**caps, "SCRIPTING_MATCHING_MODE": None}
                return caps, file, text
        return {}, "", ""

    def _target(self) -> dict[str, Any]:
        mode = self.caps.get("CONTAINERMODE")
        where = self.config_file or _display(self.base)
        if mode == "simplerest":
            target = self._simplerest()
            if target is not None:
                return target
        elif mode == "rasa" and (self.caps.get("RASA_MODE") or "REST_INPUT") == "REST_INPUT" and self.caps.get("RASA_ENDPOINT_URL"):
            return {"connector": "rasa", "url": self.caps["RASA_ENDPOINT_URL"]}
        elif mode is not None:
            message = f"Botium connector {mode!r} has no converter: the scenarios talk to ${{env:BOT_URL}} with the rest connector; give --target"
            self.problem(where, _line_of(self.config_text, "CONTAINERMODE"), "CONTAINERMODE", message)
            return dict(FALLBACK_TARGET)
        message = "no botium.json with CONTAINERMODE simplerest: the scenarios talk to ${env:BOT_URL} with the rest connector; give --target to choose"
        self.warn(where, 1, "target", message)
        return dict(FALLBACK_TARGET)

    def _simplerest(self) -> dict[str, Any] | None:
        caps, file, text = self.caps, self.config_file, self.config_text
        handled = {"SIMPLEREST_URL", "SIMPLEREST_METHOD", "SIMPLEREST_VERB", "SIMPLEREST_BODY_TEMPLATE", "SIMPLEREST_HEADERS_TEMPLATE",
                   "SIMPLEREST_BODY_JSONPATH", "SIMPLEREST_BUTTONS_JSONPATH", "SIMPLEREST_INTENT_JSONPATH",
                   "SIMPLEREST_INTENT_CONFIDENCE_JSONPATH", "SIMPLEREST_TIMEOUT"}

        def problem(key: str, message: str) -> None:
            self.problem(file, _line_of(text, key), key, message)

        for key in sorted(caps):
            if key.startswith("SIMPLEREST_") and key not in handled and not key.startswith("SIMPLEREST_RESPONSE_JSONPATH") and caps[key] not in (None, "", [], {}):
                problem(key, f"{key} is not converted")
        url = caps.get("SIMPLEREST_URL")
        if not isinstance(url, str) or not url:
            problem("SIMPLEREST_URL", "SIMPLEREST_URL is required")
            return None
        target: dict[str, Any] = {"connector": "rest", "url": url}
        method = str(caps.get("SIMPLEREST_VERB") or caps.get("SIMPLEREST_METHOD") or "GET").upper()
        if method not in ("GET", "POST", "PUT"):
            problem("SIMPLEREST_METHOD", f"method {method} is not supported by the rest connector (GET, POST, PUT)")
        target["method"] = method
        body = caps.get("SIMPLEREST_BODY_TEMPLATE")
        if "{{" in url:  # the message in the URL (GET ...?q={{msg.messageText}}): the rest connector sends it as a parameter
            base, _, query = url.partition("?")
            if "{{" in base or body:
                problem("SIMPLEREST_URL", "a template in the URL's path is not supported; only query parameters")
            params = {key: value for key, _, value in (part.partition("=") for part in query.split("&") if part)}
            target["url"], body = base, params
        if body is not None:
            if isinstance(body, str):
                try:
                    body = json.loads(body)
                except ValueError:
                    pass  # a raw body stays a text template
            target["body"] = _templates(body, lambda message: problem("SIMPLEREST_BODY_TEMPLATE", message))
        headers = caps.get("SIMPLEREST_HEADERS_TEMPLATE")
        if headers:
            if isinstance(headers, str):
                try:
                    headers = json.loads(headers)
                except ValueError:
                    headers = None
            if not isinstance(headers, dict):
                problem("SIMPLEREST_HEADERS_TEMPLATE", "expected a JSON object of headers")
            elif any("{{" in str(value) for value in headers.values()):
                problem("SIMPLEREST_HEADERS_TEMPLATE", "headers are sent as written: templates in them are not supported")
            else:
                target["headers"] = {str(k): str(v) for k, v in headers.items()}
        target["messages"] = caps.get("SIMPLEREST_BODY_JSONPATH") or "$"
        texts = [caps[key] for key in sorted(caps) if key.startswith("SIMPLEREST_RESPONSE_JSONPATH") and caps[key]]
        texts = [path for value in texts for path in (value if isinstance(value, list) else [value])]
        if not texts:
            problem("SIMPLEREST_RESPONSE_JSONPATH", "SIMPLEREST_RESPONSE_JSONPATH is required (where the bot's text is)")
        else:
            target["text"] = texts[0]
            if len(texts) > 1:
                problem("SIMPLEREST_RESPONSE_JSONPATH", f"only one text JSONPath is taken ({texts[0]}): {', '.join(texts[1:])} left out")
        for key, name in (("SIMPLEREST_BUTTONS_JSONPATH", "buttons"), ("SIMPLEREST_INTENT_JSONPATH", "intent"), ("SIMPLEREST_INTENT_CONFIDENCE_JSONPATH", "confidence")):
            if caps.get(key):
                target[name] = caps[key]
        return target

    # ----------------------------------------------------------------- the convos

    def run(self) -> Conversion:
        if not self.folder.exists():
            self.problem(str(self.folder), 1, "", "no such file or folder")
            return self._done()
        files = _files(self.folder)
        for path in files:
            if path.name.endswith(NOT_READ):
                self.problem(_display(path), 1, "", f"{path.name}: this BotiumScript format is not converted (only .convo.txt, .pconvo.txt and .utterances.txt)")
            elif path.name.endswith((CONVO, PARTIAL, UTTERANCES)) and SKIP.match(path.name):
                self.warn(_display(path), 1, "", "skipped: Botium skips files named skip.*")
        files = [path for path in files if not SKIP.match(path.name)]
        for path in files:
            if path.name.endswith(UTTERANCES):
                self._read_utterances(path)
            elif path.name.endswith(PARTIAL):
                self._read_partial(path)
        convos = [path for path in files if path.name.endswith(CONVO)]
        if not convos:
            self.problem(_display(self.folder), 1, "", "no BotiumScript convos (*.convo.txt) here")
        for path in convos:
            problems: list[Problem] = []
            script = parse_script(path, self.registry, problems)
            self.problems.update(dict.fromkeys(problems))
            if script.name and SKIP.match(script.name):
                self.warn(script.file, script.name_line, "", f"skipped: Botium skips convos named {script.name!r}")
                continue
            self._convert(script)
        self._unique_names()
        return self._done()

    def _done(self) -> Conversion:
        self.result.problems = sorted(self.problems, key=lambda p: (p.file, p.line, p.column))
        return self.result

    def _read_utterances(self, path: Path) -> None:
        lines = [line.strip() for line in _EOL.split(path.read_text(encoding="utf-8-sig"))]
        if not lines or not lines[0]:
            self.problem(_display(path), 1, "", "an utterances file starts with its name")
            return
        known = self.utterances.setdefault(lines[0], [])
        known += [line for line in lines[1:] if line and line not in known]

    def _read_partial(self, path: Path) -> None:
        problems: list[Problem] = []
        script = parse_script(path, self.registry, problems)
        self.problems.update(dict.fromkeys(problems))
        if not script.name:
            self.problem(script.file, 1, "", "a partial convo needs a name on its first line (INCLUDE refers to it)")
        elif "|" in script.name:
            self.problem(script.file, script.name_line, "", f"partial convo name {script.name!r} must not contain '|'")
        elif script.name in self.partials:
            first = self.partials[script.name].file
            self.problem(script.file, script.name_line, "", f"partial convo {script.name!r} is defined twice (also in {first}): this one is left out")
        else:
            self.partials[script.name] = script

    def _flatten(self, steps: list[BotiumStep], chain: tuple[str, ...], out: list[BotiumStep], root: bool) -> list[BotiumStep]:
        """Botium's expandPartialConvos: INCLUDEs replaced by the partial convo's steps, recursively."""
        for step in steps:
            if step.sender != "include" and (not step.includes or step.interacts()) and (root or step.sender not in ("begin", "end")):
                out.append(step)
            for name, line in step.includes:
                if name in chain:
                    cycle = " -> ".join(chain[chain.index(name):] + (name,))
                    self.problem(step.file, line, "INCLUDE", f"partial convos include each other in a circle: {cycle}")
                elif name not in self.partials:
                    known = ", ".join(sorted(self.partials)) or "none in this folder"
                    self.problem(step.file, line, "INCLUDE", f"no partial convo named {name!r} (partial convos: {known})")
                else:
                    self._flatten(self.partials[name].steps, chain + (name,), out, root=False)
        return out

    def _variants(self, steps: list[BotiumStep]) -> list[tuple[list[tuple[str, int, str]], list[BotiumStep]]]:
        """One step list per utterance of each #me that names an utterance list (all combinations, like Botium)."""
        variants: list[tuple[list[tuple[str, int, str]], list[BotiumStep]]] = [([], [])]
        for step in steps:
            choices = self.resolve(step.text) if step.sender == "me" and step.text and step.json is None else None
            if choices is None:
                for _, chosen in variants:
                    chosen.append(step)
                continue
            name, texts = choices
            if self.expansion == "first":
                texts = texts[:1]
            if len(variants) * len(texts) > MAX_VARIANTS:
                self.problem(step.file, step.text_line, "#me", f"utterance expansion stops at {MAX_VARIANTS} scenarios: {name} is sent as its first utterance")
                texts = texts[:1]
            variants = [
                (labels + [(name, index, text)], chosen + [dataclasses.replace(step, text=text)])
                for labels, chosen in variants
                for index, text in enumerate(texts, 1)
            ]
        return variants

    def resolve(self, text: str | None) -> tuple[str, list[str]] | None:
        """Botium's resolveUtterance: a list's name, or its name followed by arguments for %s."""
        if not text:
            return None
        if text in self.utterances:
            return text, list(self.utterances[text])
        name, _, rest = text.partition(" ")
        if rest and name in self.utterances:
            return name, [_format(utterance, rest.split(" ")) for utterance in self.utterances[name]]
        return None

    def _convert(self, script: Script) -> None:
        steps = self._flatten(script.steps, (), [], root=True)
        relative = script.path.relative_to(self.base)
        stem = relative.name[: -len(CONVO)]
        name = script.name or script.path.name
        variants = self._variants(steps)
        for labels, chosen in variants:
            suffix = "".join(f"/{utt}-L{str(index).zfill(len(str(len(self.utterances[utt]))))}-{text}" for utt, index, text in labels)
            file_suffix = "".join(f"-{utt}-{index}" for utt, index, _ in labels)
            data = _ScenarioBuilder(self, script).build(chosen)
            if data is None:
                continue
            scenario = {"name": name + suffix}
            if script.description:
                scenario["description"] = script.description
            scenario.update(data)
            output = relative.with_name(re.sub(r"[^\w.\-]+", "_", stem + file_suffix) + ".yaml")
            self.result.scenarios.append(Converted(name + suffix, scenario, script.path, script.name_line, output))

    def _unique_names(self) -> None:
        """Botium allows two convos of one name; cxtest does not: the same names get their file in brackets."""
        counts: dict[str, int] = {}
        for scenario in self.result.scenarios:
            counts[scenario.name] = counts.get(scenario.name, 0) + 1
        renamed = []
        for scenario in self.result.scenarios:
            if counts[scenario.name] > 1:
                where = scenario.output.with_suffix("").as_posix()
                name = f"{scenario.name} ({where})"
                scenario = dataclasses.replace(scenario, name=name, data={**scenario.data, "name": name})
            renamed.append(scenario)
        self.result.scenarios = renamed


def _format(template: str, args: list[str]) -> str:
    """Node's util.format, as Botium fills utterance arguments: %s %d %i %f %j %o %O in turn, the rest appended."""
    rest = list(args)

    def fill(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        return rest.pop(0) if rest else match.group(0)

    text = re.sub(r"%[sdifjoOc%]", fill, template)
    return " ".join([text, *rest])


def _templates(value: Any, problem: Any) -> Any:
    """Botium's Mustache request templates as our Jinja2 ones: {{msg.messageText}} is {{ text }}."""
    names = {"msg.messageText": "text", "botium.conversationId": "conversation_id"}
    if isinstance(value, dict):
        return {key: _templates(item, problem) for key, item in value.items()}
    if isinstance(value, list):
        return [_templates(item, problem) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name in names:
            return "{{ " + names[name] + " }}"
        problem(f"template value {{{{{name}}}}} has no equivalent (ours: text, conversation_id, user)")
        return match.group(0)

    return re.sub(r"\{\{\{?\s*([^{}]+?)\s*\}?\}\}", replace, value)


# --------------------------------------------------------------------------- one scenario


def _regex_escape(text: str) -> str:
    """Like re.escape, but only the characters regular expressions give a meaning (spaces stay readable)."""
    return _REGEX_SPECIAL.sub(r"\\\1", text)


def _wild(text: str) -> str:
    return ".*".join(_regex_escape(part) for part in text.split("*"))


def _loose(text: str) -> str:
    """A wildcard text as a regular expression for a reply that may wrap lines differently."""
    return "".join(r"\s+" if part.isspace() else _wild(part) for part in re.split(r"(\s+)", text) if part)


def _search_regex(text: str, mode: str) -> str:
    """A regular expression that re.search finds where Botium's match function would match."""
    if mode.startswith("regexp"):
        return text
    if mode.startswith("wildcardExact"):
        return f"^{_wild(text)}$"
    if mode.startswith("wildcard"):
        return _wild(text)
    if mode.startswith("include"):
        return _regex_escape(text)
    return f"^{_regex_escape(text)}$"


def _text_check(text: str, mode: str) -> tuple[str, Any]:
    """The readable expectation for one text in a Botium matching mode."""
    if mode.startswith("regexp"):
        return "matches", text
    if mode.startswith("equals"):
        return "equals", text
    if mode.startswith("wildcardExact"):
        return "wildcard", text
    if mode.startswith("wildcard") and "*" in text:
        return "wildcard", re.sub(r"\*+", "*", f"*{text}*")  # Botium's wildcard searches: it is not anchored
    return "contains", text


def _hole_check(text: str, mode: str) -> tuple[str, Any]:
    """A text with `*` standing for values only known when the convo runs (memory variables)."""
    if mode.startswith(("equals", "wildcardExact")):
        return "wildcard", re.sub(r"\*+", "*", text)
    return "wildcard", re.sub(r"\*+", "*", f"*{text}*")


def _json_path(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_]\w*", key):
        return f"{path}.{key}"
    return path + "['" + key.replace("\\", "\\\\").replace("'", "\\'") + "']"


def _json_checks(expected: Any, mode: str, path: str = "$") -> dict[str, Any]:
    """Botium's comparison of a JSON #bot section with the reply: every key there, every leaf matching."""
    checks: dict[str, Any] = {}
    if isinstance(expected, dict):
        if not expected and path != "$":
            checks[path] = {"exists": True}
        for key, value in expected.items():
            checks.update(_json_checks(value, mode, _json_path(path, key)))
    elif isinstance(expected, list):
        checks[path] = {"length": len(expected)}
        for index, value in enumerate(expected):
            checks.update(_json_checks(value, mode, _json_path(path, index)))
    elif expected is None or expected == "":
        checks[path] = {"exists": True}  # Botium checks only that the key is there
    elif isinstance(expected, str):
        checks[path] = {"matches": "(?i)" + _search_regex(expected, mode)}
    else:
        checks[path] = {"equals": expected}
    return checks


class _Checks:
    """The expectations of one bot step, merged the way each key allows; `not` holds when none of its checks does."""

    def __init__(self) -> None:
        self.positive: dict[str, Any] = {}
        self.negative: dict[str, Any] = {}

    def add(self, key: str, value: Any, negated: bool = False) -> str | None:
        """Adds one expectation; returns why it cannot be added to the others, if so."""
        into = self.negative if negated else self.positive
        if key == "contains":
            into.setdefault("contains", []).append(value)
        elif key == "matches":
            into.setdefault("matches", []).append(value)
        elif key == "json_path":
            for path, match in value.items():
                if path in into.setdefault("json_path", {}):
                    return f"two checks of {path} in one step"
                into["json_path"][path] = match
        elif key in into:
            if negated and key in ("equals", "one_of"):
                into.setdefault("one_of", []).extend([value] if key == "equals" else value)
            elif key in ("equals", "one_of", "wildcard"):
                options = [value] if key != "one_of" else value
                regex = "|".join(_wild(o) if key == "wildcard" else _regex_escape(o) for o in options)
                into.setdefault("matches", []).append(f"^(?:{regex})$")
            elif key == "buttons" and not negated and "contains" in value and "contains" in into["buttons"]:
                into["buttons"]["contains"] += value["contains"]
            elif into[key] != value:
                return f"two {key} checks in one step"
        else:
            into[key] = value
        return None

    def build(self) -> dict[str, Any]:
        expect = self._finish(self.positive, both=True)
        if self.negative:
            expect["not"] = self._finish(self.negative, both=False)
        return expect or {"wildcard": "*"}  # any message: Botium's empty #bot still waits for one

    @staticmethod
    def _finish(checks: dict[str, Any], both: bool) -> dict[str, Any]:
        done = dict(checks)
        if "contains" in done and len(done["contains"]) == 1:
            done["contains"] = done["contains"][0]
        if "matches" in done:
            regexes = done["matches"]
            if len(regexes) == 1:
                done["matches"] = regexes[0]
            elif both:  # every one must match
                done["matches"] = "(?s)^" + "".join(f"(?=.*?(?:{r}))" for r in regexes)
            else:  # none may match
                done["matches"] = "|".join(f"(?:{r})" for r in regexes)
        if "one_of" in done and "equals" in done:
            done["one_of"] = [done.pop("equals"), *done["one_of"]]
        return done


class _ScenarioBuilder:
    """Botium steps (includes and utterances already expanded) -> {target, steps} of one scenario."""

    def __init__(self, importer: _Importer, script: Script):
        self.importer, self.script = importer, script
        self.steps: list[dict[str, Any]] = []
        self.values: dict[str, str] = {}  # $name -> text set by SET_SCRIPTING_MEMORY
        self.saved: set[str] = set()  # $name captured from the bot by an earlier step
        self.bot_spoke = False  # a button can only be clicked once the bot offered it
        self.step_timeout: float | None = None

    def problem(self, file: str, line: int, path: str, message: str) -> None:
        self.importer.problem(file, line, path, message)

    def build(self, steps: list[BotiumStep]) -> dict[str, Any] | None:
        """The scenario's channel, target and steps; None (reported) when nothing is left to run."""
        conversation = [s for s in steps if s.sender in ("me", "bot")]
        for step in (s for s in steps if s.sender == "begin"):
            self._edge(step, at_begin=True)
        for index, step in enumerate(conversation):
            if step.channel:
                self.problem(step.file, step.line, f"#{step.sender}", f"channel {step.channel!r} is ignored: a scenario talks on one channel")
            if step.sender == "me":
                self._me(step)
            else:
                following = conversation[index + 1] if index + 1 < len(conversation) else None
                self._bot(step, following)
        for step in (s for s in steps if s.sender == "end"):
            self._edge(step, at_begin=False)
        if not self.steps:
            self.problem(self.script.file, self.script.name_line, "", "nothing to convert: the convo has no #me or #bot step")
            return None
        built: dict[str, Any] = {"channel": "chat", "target": copy.deepcopy(self.importer.target)}
        if self.step_timeout is not None:
            built["step_timeout"] = _seconds(self.step_timeout)
        built["steps"] = self.steps
        return built

    # ----------------------------------------------------------------- #begin, #end

    def _edge(self, step: BotiumStep, at_begin: bool) -> None:
        section = "#begin" if at_begin else "#end"
        for hook in step.hooks:
            if hook.name == "WAITFORBOT":
                self.steps.append({"wait_for_bot": self._wait(step, hook)})
                self.bot_spoke = True
            elif hook.name == "PAUSE":
                self.steps.append({"wait": self._pause(step, hook)})
            elif hook.name in ("SET_SCRIPTING_MEMORY", "CLEAR_SCRIPTING_MEMORY"):
                if at_begin:  # at the end nothing is left to use the value
                    self._memory_hook(step, hook)
            elif hook.name == "CONVO_STEP_PARAMETERS" and at_begin:
                self.step_timeout = self._step_parameters(step, hook).get("timeout", self.step_timeout)
            else:
                self._unsupported(step, hook, section)
        for asserter in step.asserters:
            self._unsupported(step, asserter, section)

    def _unsupported(self, step: BotiumStep, call: Call, section: str) -> None:
        if call.name in self.importer.registry.custom:
            message = f"custom {call.name} from botium.json is not converted"
        else:
            message = f"{call.name} is not converted in {section}"
        self.problem(step.file, call.line, call.name, message)

    def _pause(self, step: BotiumStep, hook: Call) -> str:
        """PAUSE ms: a `wait` step of that long."""
        if len(hook.args) == 1 and hook.args[0].strip().isdigit():
            return _milliseconds(int(hook.args[0]))
        self.problem(step.file, hook.line, "PAUSE", f"PAUSE takes milliseconds, got {'|'.join(hook.args)!r}")
        return "0s"

    def _wait(self, step: BotiumStep, hook: Call) -> str:
        try:
            millis = int(hook.args[0]) if hook.args else 0
        except ValueError:
            millis = -1
        if millis < 0 or len(hook.args) > 1:
            self.problem(step.file, hook.line, "WAITFORBOT", f"WAITFORBOT takes a timeout in milliseconds, got {'|'.join(hook.args)!r}")
            millis = 0
        return _milliseconds(millis or DEFAULT_WAIT_MS)

    def _step_parameters(self, step: BotiumStep, hook: Call) -> dict[str, Any]:
        """CONVO_STEP_PARAMETERS {"stepTimeout": ms, "matchingMode": ...}: what we have of them."""
        try:
            parameters = json.loads("|".join(hook.args))
        except ValueError:
            parameters = None
        if not isinstance(parameters, dict):
            self.problem(step.file, hook.line, hook.name, "expected a JSON object of step parameters")
            return {}
        found: dict[str, Any] = {}
        for key, value in parameters.items():
            if key == "stepTimeout" and isinstance(value, (int, float)) and value > 0:
                found["timeout"] = value / 1000
            elif key == "matchingMode" and value in MATCHING_MODES and step.sender == "bot":
                found["mode"] = value
            else:
                self.problem(step.file, hook.line, hook.name, f"step parameter {key!r} is not converted")
        return found

    # ----------------------------------------------------------------- scripting memory

    def _memory_hook(self, step: BotiumStep, hook: Call) -> None:
        name = "$" + (hook.args[0] if hook.args else "")
        if hook.name == "CLEAR_SCRIPTING_MEMORY" and len(hook.args) == 1:
            self.values.pop(name, None)
            self.saved.discard(name)
        elif hook.name == "SET_SCRIPTING_MEMORY" and len(hook.args) == 2:
            value = self._static(step, hook.line, hook.args[1])
            if value is not None:
                self.values[name] = value
                self.saved.discard(name)
        else:
            self.problem(step.file, hook.line, hook.name, f"{hook.name} takes a name and a value: {'|'.join(hook.args)!r}")

    def _static(self, step: BotiumStep, line: int, text: str) -> str | None:
        """A text with memory filled in now; None (reported) when it needs a value known only at run time."""
        if not self.importer.memory:
            return text
        parts = []
        for kind, value in self._memory_parts(text):
            if kind in ("text", "value", "unknown"):  # Botium leaves an unknown $name as it is
                parts.append(value)
            elif kind == "env":
                parts.append("${env:" + value + "}")
            else:
                self.problem(step.file, line, "memory", f"{value} is known only when the convo runs: not supported here")
                return None
        return "".join(parts)

    def _memory_parts(self, text: str) -> list[tuple[str, str]]:
        """Text split into ("text", s), ("value", set value), ("saved", $name), ("env", NAME), ("function", $f), ("unknown", $name)."""
        parts: list[tuple[str, str]] = []
        position = 0
        known = sorted([*self.values, *self.saved], key=len, reverse=True)
        for match in _VARIABLE.finditer(text):
            token = match.group(0)
            variable = next((k for k in known if token.startswith(k)), None)
            function = next((f for f in sorted(MEMORY_FUNCTIONS, key=len, reverse=True) if token.split("(")[0] == f), None)
            if variable is None and function is None:
                variable_token = token.split("(")[0]
                parts += [("text", text[position:match.start()]), ("unknown", variable_token)]
                position = match.start() + len(variable_token)
                continue
            parts.append(("text", text[position:match.start()]))
            if variable is not None:
                kind = "value" if variable in self.values else "saved"
                parts.append((kind, self.values.get(variable, variable)))
                position = match.start() + len(variable)
            else:
                argument = token[len(function) + 1 : -1] if "(" in token else ""
                if function == "$env" and argument:
                    parts.append(("env", argument))
                elif function == "$cap" and isinstance(self.importer.caps.get(argument), (str, int, float)):
                    parts.append(("value", str(self.importer.caps[argument])))
                else:
                    parts.append(("function", token))
                position = match.end()
        parts.append(("text", text[position:]))
        return [(kind, value) for kind, value in parts if value or kind != "text"]

    # ----------------------------------------------------------------- #me

    def _me(self, step: BotiumStep) -> None:
        said: str | dict[str, str] | None = None
        for call in step.inputs:
            if call.name == "BUTTON" and 1 <= len(call.args) <= 2 and call.args[-1]:
                if self.bot_spoke:  # BUTTON payload|text: the text is what our click looks for
                    said = {"button": self._user_text(step, call.line, call.args[-1])}
                else:  # nothing offered yet, so no button to click: Botium then just sends the text
                    said = self._user_text(step, call.line, call.args[0])
            elif call.name == "BUTTON":
                self.problem(step.file, call.line, "BUTTON", "BUTTON takes the button's text (or payload|text)")
            else:
                self._unsupported(step, call, "#me")
        if step.json is not None:
            self.problem(step.file, step.text_line, "#me", "a JSON message (Botium's sourceData) is not converted: chat steps send text")
        elif said is None and step.text is not None:
            said = self._user_text(step, step.text_line, step.text)
        timeout = None
        for hook in step.hooks:
            if hook.name in ("SET_SCRIPTING_MEMORY", "CLEAR_SCRIPTING_MEMORY"):
                self._memory_hook(step, hook)
            elif hook.name == "CONVO_STEP_PARAMETERS":
                timeout = self._step_parameters(step, hook).get("timeout")
            elif hook.name == "WAITFORBOT":
                self.importer.warn(step.file, hook.line, hook.name, "WAITFORBOT in #me does nothing in Botium: ignored (put it in the #bot section)")
            elif hook.name == "PAUSE":
                self.steps.append({"wait": self._pause(step, hook)})  # before the message: the user step comes after
            else:
                self._unsupported(step, hook, "#me")
        if said is not None:
            self.steps.append({"user": said, **({"timeout": _seconds(timeout)} if timeout else {})})

    def _user_text(self, step: BotiumStep, line: int, text: str) -> str:
        """What the user says as a Jinja2 template: set values written in, captured ones as {{ name }}."""
        if not self.importer.memory:
            return _literal(text)
        out = []
        parts = self._memory_parts(text)
        templated = any(kind == "saved" for kind, _ in parts)
        for kind, value in parts:
            if kind == "saved":
                out.append("{{ " + value[1:] + " }}")
            elif kind == "env":
                out.append("${env:" + value + "}")
            elif kind == "function":
                self.problem(step.file, line, "memory", f"memory function {value} is not converted: sent as written")
                out.append(_literal(value, templated))
            else:
                out.append(_literal(value, templated))
        return "".join(out)

    # ----------------------------------------------------------------- #bot

    def _bot(self, step: BotiumStep, following: BotiumStep | None) -> None:
        # Botium skips a failing optional step only when a bot step follows (it checks that step's message instead).
        if step.optional and following is not None and following.sender == "bot":
            message = "an optional bot step (?) followed by another bot step is not converted: chat scenarios have no optional step yet"
            self.problem(step.file, step.line, "#bot", message)
            return
        parameters: dict[str, Any] = {}
        for hook in step.hooks:
            if hook.name == "CONVO_STEP_PARAMETERS":
                parameters = self._step_parameters(step, hook)
        mode = parameters.get("mode", self.importer.matching_mode)
        checks = _Checks()
        save: dict[str, str] = {}

        def add(key: str, value: Any, negated: bool, where: int, name: str) -> None:
            trouble = checks.add(key, value, negated)
            if trouble:
                self.problem(step.file, where, name, f"{trouble}: not converted")

        if step.json is not None:
            add("json_path", _json_checks(step.json, mode), False, step.text_line, "#bot")
        elif step.text:
            self._bot_text(step, mode, add, save)
        for asserter in step.asserters:
            self._asserter(step, asserter, mode, add)
        before: list[dict[str, Any]] = []
        for hook in step.hooks:
            if hook.name == "WAITFORBOT":
                before.append({"wait_for_bot": self._wait(step, hook)})
            elif hook.name == "PAUSE":
                before.append({"wait": self._pause(step, hook)})
            elif hook.name == "ASSIGN_SCRIPTING_MEMORY":
                self._assign(step, hook, save)
            elif hook.name in ("SET_SCRIPTING_MEMORY", "CLEAR_SCRIPTING_MEMORY", "CONVO_STEP_PARAMETERS"):
                continue  # step parameters are read above; memory hooks run after the checks, below
            else:
                self._unsupported(step, hook, "#bot")
        expect = checks.build()
        if save:
            expect["save"] = save
        self.steps += before
        self.steps.append({"bot": expect, **({"timeout": _seconds(parameters["timeout"])} if "timeout" in parameters else {})})
        self.bot_spoke = True
        self.saved.update("$" + name for name in save)
        for name in save:
            self.values.pop("$" + name, None)
        for hook in step.hooks:
            if hook.name in ("SET_SCRIPTING_MEMORY", "CLEAR_SCRIPTING_MEMORY"):
                self._memory_hook(step, hook)

    def _bot_text(self, step: BotiumStep, mode: str, add: Any, save: dict[str, str]) -> None:
        assert step.text
        utterances, texts = self.importer.resolve(step.text) or (None, [step.text])
        if not texts:
            self.problem(step.file, step.text_line, "#bot", f"utterance list {utterances} is empty")
            return
        memory = self.importer.memory and not mode.startswith("regexp")
        if len(texts) > 1:  # an utterance list: any of its texts
            if memory and any(_VARIABLE.search(text) for text in texts):
                message = f"memory variables in the utterances of {utterances} are not captured: checked as any text"
                self.problem(step.file, step.text_line, "memory", message)
                texts = [_VARIABLE.sub("*", text) for text in texts]
                mode = "wildcardIgnoreCase" if mode.startswith(("include", "wildcard")) else "wildcardExactIgnoreCase"
            if step.negated:
                for text in texts:
                    add(*_text_check(text, mode), True, step.text_line, "#bot")
            elif mode.startswith("equals"):
                add("one_of", texts, False, step.text_line, "#bot")
            else:
                add("matches", "|".join(f"(?:{_search_regex(text, mode)})" for text in texts), False, step.text_line, "#bot")
            return
        text = texts[0]
        parts = self._memory_parts(text) if memory else [("text", text)]
        if all(kind in ("text", "value") for kind, _ in parts):
            add(*_text_check("".join(value for _, value in parts), mode), step.negated, step.text_line, "#bot")
            return
        # Each unknown $name is captured from the reply (Botium's fill: a run of non-space characters).
        capture = {"word": r"(\w+)", "joker": r"([\w\W]+)"}.get(self.importer.caps.get("SCRIPTING_MEMORY_MATCHING_MODE") or "", r"(\S+)")
        unknowable = [(kind, value) for kind, value in parts if kind in ("function", "saved")]
        for kind, value in unknowable:
            what = "memory function" if kind == "function" else "a value saved earlier"
            done = "this negated check is left out" if step.negated else "checked as any text"
            self.problem(step.file, step.text_line, "memory", f"{value} ({what}) in a bot text is not converted: {done}")
        if step.negated:
            if not unknowable:  # a captured value is whatever the reply holds there: only the rest must not match
                add(*_hole_check("".join("*" if kind == "unknown" else value for kind, value in parts), mode), True, step.text_line, "#bot")
            return
        holes = "".join("*" if kind not in ("text", "value") else value for kind, value in parts)
        add(*_hole_check(holes, mode), False, step.text_line, "#bot")
        for index, (kind, value) in enumerate(parts):
            if kind != "unknown" or value[1:] in save:
                continue
            regex = "".join(
                capture if i == index else _loose(v) if k in ("text", "value") else r"\S+" if k == "unknown" else ".*?"
                for i, (k, v) in enumerate(parts)
            )
            save[value[1:]] = "regex:(?i)" + regex

    def _asserter(self, step: BotiumStep, asserter: Call, mode: str, add: Any) -> None:
        name, args, negated, where = asserter.name, list(asserter.args), asserter.negated, asserter.line
        if name in TEXT_ASSERTERS:
            own_mode, all_needed = TEXT_ASSERTERS[name]
            own_mode = own_mode or mode
            texts = [text for arg in args for text in (self.importer.resolve(arg) or (None, [arg]))[1]]
            if not texts:
                return  # Botium checks nothing without arguments
            if len(texts) == 1:
                add(*_text_check(texts[0], own_mode), negated, where, name)
            elif not all_needed and not negated:
                if own_mode.startswith("equals"):
                    add("one_of", texts, False, where, name)
                else:
                    add("matches", "|".join(f"(?:{_search_regex(t, own_mode)})" for t in texts), False, where, name)
            elif all_needed and negated:  # not all of them: one missing is enough
                add("matches", "(?s)^" + "".join(f"(?=.*?(?:{_search_regex(t, own_mode)}))" for t in texts), True, where, name)
            else:  # all of them, or none of them
                for text in texts:
                    add(*_text_check(text, own_mode), negated, where, name)
        elif name == "BUTTONS":
            if not args:  # some buttons; negated: none
                add("buttons", {"equals": []}, not negated, where, name)
            elif negated and len(args) > 1:
                self.problem(step.file, where, name, "!BUTTONS with several buttons (none of them offered) is not converted: give one per step")
            else:
                add("buttons", {"contains": args}, negated, where, name)
        elif name == "INTENT":
            if len(args) != 1:
                self.problem(step.file, where, name, f"INTENT takes one intent name, got {'|'.join(args)!r}")
            else:
                add("intent", args[0], negated, where, name)
        elif name == "INTENT_CONFIDENCE":
            try:
                least = float(args[0]) / 100 if len(args) == 1 else None
            except ValueError:
                least = None
            if least is None or not 0 <= least <= 1:
                self.problem(step.file, where, name, f"INTENT_CONFIDENCE takes a percentage, got {'|'.join(args)!r}")
            else:
                add("confidence", least, negated, where, name)
        elif name == "JSON_PATH":
            self._json_path_asserter(step, asserter, mode, add)
        else:
            self._unsupported(step, asserter, "#bot")

    def _json_path_asserter(self, step: BotiumStep, asserter: Call, mode: str, add: Any) -> None:
        from probes.http import _compiled

        args, where = asserter.args, asserter.line
        if not 1 <= len(args) <= 2:
            self.problem(step.file, where, "JSON_PATH", f"JSON_PATH takes a JSONPath and perhaps a value, got {'|'.join(args)!r}")
            return
        try:
            _compiled(args[0])
        except ValueError as exc:
            self.problem(step.file, where, "JSON_PATH", str(exc))
            return
        if len(args) == 1:  # the path finds something; negated: nothing
            add("json_path", {args[0]: {"exists": not asserter.negated}}, False, where, "JSON_PATH")
        else:
            add("json_path", {args[0]: {"matches": "(?i)" + _search_regex(args[1], mode)}}, asserter.negated, where, "JSON_PATH")

    def _assign(self, step: BotiumStep, hook: Call, save: dict[str, str]) -> None:
        """ASSIGN_SCRIPTING_MEMORY name|$.path: the path is in Botium's message object; ours look in the reply."""
        if len(hook.args) != 2:
            self.problem(step.file, hook.line, hook.name, f"{hook.name} takes a name and a JSONPath, got {'|'.join(hook.args)!r}")
            return
        name, path = hook.args
        if path in ("$.messageText", "$.nlp.intent.name"):
            save[name] = "text" if path == "$.messageText" else "intent"
        elif path.startswith("$.sourceData"):
            save[name] = "$" + path[len("$.sourceData"):]
        else:
            self.problem(step.file, hook.line, hook.name, f"{path}: only $.messageText, $.nlp.intent.name and $.sourceData... can be saved")


def _literal(text: str, beside_templates: bool = False) -> str:
    """Text sent as it is, even where it looks like a Jinja2 template (or would, next to a `{{ name }}`)."""
    marks = ("{", "}") if beside_templates else ("{{", "{%", "{#")
    if any(mark in text for mark in marks):
        return "{% raw %}" + text + "{% endraw %}"
    return text


def _seconds(value: float) -> str:
    return _milliseconds(round(value * 1000))


def _milliseconds(millis: int) -> str:
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"

