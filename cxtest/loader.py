"""YAML files -> Scenario and Project models, with every problem located.

PyYAML's composer gives each node its line and column; we keep a map from data
path to position while turning nodes into plain values, then let pydantic
validate and translate each of its errors into `file:line:col path: message`.
All problems in a file are reported at once, not just the first.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError, create_model
from pydantic import Field as PydanticField

from cxtest import logs
from cxtest.errors import Problem, ScenarioError
from cxtest.model import Project, Scenario, Source

PROJECT_FILE = "cxtest.yaml"
SCENARIO_SUFFIXES = (".yaml", ".yml")

_SUBSTITUTION = re.compile(r"\$\{(\w+):([^}]*)\}")
Path_ = tuple[Any, ...]


# --------------------------------------------------------------------------- YAML with positions


@dataclass
class _Document:
    """One YAML file as plain data plus where each value and key stood."""

    file: str
    base_dir: Path
    problems: list[Problem] = field(default_factory=list)
    value_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    _constructor: yaml.constructor.SafeConstructor = field(default_factory=yaml.constructor.SafeConstructor)

    def problem(self, path: Path_, message: str, *, at_key: bool = False) -> None:
        line, col = self.position(path, at_key=at_key)
        self.problems.append(Problem(self.file, line, col, format_path(path), message))

    def position(self, path: Path_, *, at_key: bool = False) -> tuple[int, int]:
        marks = (self.key_marks, self.value_marks) if at_key else (self.value_marks,)
        probe = tuple(path)
        while True:
            for table in marks:
                if probe in table:
                    return table[probe]
            if not probe:
                return (1, 1)
            probe = probe[:-1]

    def build(self, node: yaml.Node, path: Path_ = ()) -> Any:
        self.value_marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        value = self._constructor.construct_object(node)
        if isinstance(value, str):
            value = self._substitute(value, path)
        return value

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = self.build(value_node, path)
                for k, v in (merged.items() if isinstance(merged, dict) else ()):
                    result.setdefault(k, v)
                continue
            key = self._constructor.construct_object(key_node)
            key = str(key) if not isinstance(key, str) else key
            child = path + (key,)
            position = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in result:
                first_line = self.key_marks[child][0]
                self.problems.append(
                    Problem(self.file, *position, format_path(child), f"duplicate key '{key}' (first at line {first_line})")
                )
                continue
            self.key_marks[child] = position
            result[key] = self.build(value_node, child)
        return result

    def _substitute(self, text: str, path: Path_) -> str:
        def replace(match: re.Match[str]) -> str:
            kind, arg = match.group(1), match.group(2)
            if kind == "env":
                name, has_default, default = arg.partition(":-")
                value = os.environ.get(name)
                if value is None:
                    if has_default:
                        return default
                    self.problem(path, f"environment variable {name} is not set (used as ${{env:{name}}})")
                    return match.group(0)
                logs.register_secret(value, match.group(0))
                return value
            if kind == "file":
                file = (self.base_dir / arg).resolve()
                try:
                    value = file.read_text().rstrip("\n")
                except OSError as exc:
                    self.problem(path, f"cannot read ${{file:{arg}}}: {exc.strerror or exc} ({file})")
                    return match.group(0)
                logs.register_secret(value, match.group(0))
                return value
            self.problem(path, f"unknown substitution '{match.group(0)}': use ${{env:NAME}} or ${{file:PATH}}")
            return match.group(0)

        return _SUBSTITUTION.sub(replace, text) if "${" in text else text


def _read(path: Path, display: str) -> tuple[_Document, Any]:
    doc = _Document(file=display, base_dir=path.parent)
    try:
        text = path.read_text()
    except OSError as exc:
        doc.problems.append(Problem(display, 1, 1, "", f"cannot read file: {exc.strerror or exc}"))
        return doc, None
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        doc.problems.append(_syntax_problem(display, exc))
        return doc, None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        doc.problems.append(Problem(display, 1, 1, "", "file is empty"))
        return doc, None
    if len(nodes) > 1:
        line = nodes[1].start_mark.line + 1
        doc.problems.append(Problem(display, line, 1, "", "one scenario per file: found a second YAML document here"))
    return doc, doc.build(nodes[0])


_YAML_NOUNS = {
    "quoted scalar": "quoted string",
    "flow sequence": "[ list",
    "flow mapping": "{ mapping",
    "block mapping": "mapping",
    "block collection": "list or mapping",
}


def _syntax_problem(display: str, exc: yaml.MarkedYAMLError) -> Problem:
    """PyYAML's error at the place a person must edit.

    When the file ends inside a quoted string or a [ list / { mapping, PyYAML marks
    the end of the file; the line to fix is where that construct was opened.
    """
    problem, context = exc.problem or "", exc.context or ""
    problem_mark, context_mark = exc.problem_mark, exc.context_mark
    noun = re.sub(r"^while (scanning|parsing) (a|an|the) ", "", context)
    noun = _YAML_NOUNS.get(noun, noun)
    opened_before = context_mark is not None and (problem_mark is None or context_mark.index < problem_mark.index)
    if opened_before and ("end of stream" in problem or "<stream end>" in problem):
        mark, message = context_mark, f"this {noun} is never closed (the file ends first)"
    else:
        mark = problem_mark or context_mark
        message = problem or context
        if message == "mapping values are not allowed here":
            message += " (check this line's indentation, or quote a value that contains ': ')"
        if opened_before and problem_mark is not None:
            where = f"line {context_mark.line + 1}, column {context_mark.column + 1}"
            if problem.startswith("expected <block end>"):
                message = f"bad indentation: this line does not line up with the {noun} that starts at {where}"
            else:
                message += f" (in the {noun} at {where})"
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return Problem(display, line, col, "", f"YAML syntax error: {message}")


# --------------------------------------------------------------------------- pydantic errors -> problems


def format_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[Path_, Path_]:
    """Split a pydantic loc into the path that exists in the data and the model path.

    Union members add tags to a loc (e.g. 'function-before[...]' or a step kind);
    they are dropped from the data path but kept for finding the model.
    """
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and not _looks_like_tag(part):
            path.append(part)  # a missing or unknown key
            node = None
    return tuple(path), tuple(loc)


def _looks_like_tag(part: str) -> bool:
    return "[" in part or part[:1].isupper()


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            members = [_unwrap(m) for m in typing.get_args(tp) if m is not type(None)]
            named = [m for m in members if getattr(m, "__name__", None) == part or _tag_of(m) == part]
            if named:
                tp = named[0]
                continue
            models = [m for m in members if inspect.isclass(m) and issubclass(m, BaseModel)]
            if len(models) != 1:
                return None
            tp = models[0]
        if inspect.isclass(tp) and issubclass(tp, BaseModel):
            info = tp.model_fields.get(part)
            if info is None:
                return None
            tp = info.annotation
        elif origin in (list, tuple, typing.Sequence) and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        models = [m for m in map(_unwrap, typing.get_args(tp)) if inspect.isclass(m) and issubclass(m, BaseModel)]
        tp = models[0] if len(models) == 1 else None
    return tp if inspect.isclass(tp) and issubclass(tp, BaseModel) else None


def _tag_of(member: Any) -> str | None:
    for meta in getattr(member, "__metadata__", ()):
        if hasattr(meta, "tag"):
            return meta.tag
    return None


def closest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(word: str, choices: Iterable[str]) -> str:
    choices = sorted(set(choices))
    close = closest(word, choices)
    if close:
        return f"; did you mean '{close}'?"
    return f"; expected one of: {', '.join(choices)}" if choices else ""


def _keys_of(model: type[BaseModel]) -> list[str]:
    """The keys a user may write for a model: aliases where set, without keys the loader fills in."""
    internal = {"source"} if issubclass(model, Scenario) else {"root"} if issubclass(model, Project) else set()
    return [info.alias or name for name, info in model.model_fields.items() if name not in internal]


def _at(data: Any, path: Path_) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _narrow(data: Any, path: Path_, message: str) -> tuple[Path_, bool]:
    """A check on a whole mapping (a model or dict validator) that names exactly one of its
    keys or text values in its message is located at that entry, not at the mapping."""
    node = _at(data, path)
    if not isinstance(node, dict):
        return path, False
    hits = [(k, True) for k in node if isinstance(k, str) and repr(k) in message]
    hits += [(k, False) for k, v in node.items() if isinstance(v, str) and len(v) > 1 and repr(v) in message]
    if len({k for k, _ in hits}) != 1:
        return path, False
    return path + (hits[0][0],), hits[0][1]


_TYPE_WORDS = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected text",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "dict_type": "expected a mapping of keys",
    "model_type": "expected a mapping of keys",
    "model_attributes_type": "expected a mapping of keys",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
}


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems_from(doc: _Document, exc: ValidationError, model: type[BaseModel], data: Any, prefix: Path_ = ()) -> None:
    seen: set[tuple[Path_, str]] = set()
    found: list[tuple[Path_, str, bool]] = []
    misspelt: set[tuple[Path_, str]] = set()  # (mapping, key it probably meant)
    for err in exc.errors(include_url=False):
        path, loc = _data_path(data, tuple(err["loc"]))
        kind = err["type"]
        at_key = False
        if kind == "too_short" and err.get("input"):
            continue  # pydantic counts only the items that validated; those items have their own errors
        if kind == "missing":
            message = f"missing required key '{path[-1]}'"
            path = path[:-1]
        elif kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = _keys_of(parent) if parent else ()
            message = f"unknown key '{path[-1]}'" + suggest(str(path[-1]), allowed)
            meant = closest(str(path[-1]), allowed)
            if meant:
                misspelt.add((prefix + path[:-1], meant))
            at_key = True
        elif kind in _TYPE_WORDS:
            message = f"{_TYPE_WORDS[kind]}, got {_describe(err.get('input'))}"
        elif kind == "too_short" and err.get("ctx", {}).get("min_length") == 1:
            message = "must not be empty"
        else:
            message = err["msg"].removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
            if kind not in ("value_error", "assertion_error") and not isinstance(err.get("input"), (dict, list)):
                message += f", got {_describe(err.get('input'))}"
            else:
                path, at_key = _narrow(data, path, message)
        full = prefix + path
        if (full, message) in seen:
            continue
        seen.add((full, message))
        found.append((full, message, at_key))
    for full, message, at_key in found:
        if message.startswith("missing required key '") and (full, message.split("'")[1]) in misspelt:
            continue  # the unknown key next to it already says "did you mean ...?"
        doc.problem(full, message, at_key=at_key)


# --------------------------------------------------------------------------- projects


def find_project_file(start: Path) -> Path | None:
    start = start.resolve()
    for folder in [start if start.is_dir() else start.parent, *(start if start.is_dir() else start.parent).parents]:
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


def load_project(path: Path | None) -> Project:
    """Project settings from cxtest.yaml (or defaults rooted at the working folder)."""
    if path is None:
        return Project(root=Path.cwd())
    doc, data = _read(path, _display(path))
    if data is not None and not isinstance(data, dict):
        doc.problem((), f"{PROJECT_FILE} must be a mapping of settings, got {_describe(data)}")
    if doc.problems or data is None:
        raise ScenarioError(doc.problems)
    project: Project | None = None
    try:
        project = Project.model_validate({**data, "root": path.parent.resolve()})
    except ValidationError as exc:
        _problems_from(doc, exc, Project, data)
    _check_notifiers(doc, data)
    if doc.problems:
        doc.problems.sort(key=lambda p: (p.line, p.column))
        raise ScenarioError(doc.problems)
    assert project is not None
    return project


def _check_notifiers(doc: _Document, data: dict[str, Any]) -> None:
    """Each `notifiers.<name>` against its type's settings, and `defaults.alert.notify` against the names."""
    from alerts.notifiers import settings_problems

    for problem in settings_problems(data.get("notifiers")):
        where = ("notifiers", problem.name)
        if problem.error is None:
            doc.problem(where + ("type",), problem.message)
        else:
            assert problem.model is not None
            _problems_from(doc, problem.error, problem.model, dict(problem.values), prefix=where)
    defaults = data.get("defaults")
    alert = defaults.get("alert") if isinstance(defaults, dict) else None
    if isinstance(alert, dict):
        notifiers = data.get("notifiers")
        _check_notify(doc, ("defaults", "alert"), alert, notifiers if isinstance(notifiers, dict) else {})


def _check_notify(doc: _Document, at: Path_, alert: dict[str, Any], notifiers: Iterable[str]) -> None:
    """Every name in `alert.notify` must be a notifier defined in cxtest.yaml."""
    names = alert.get("notify")
    if not isinstance(names, list):
        return  # the model reports a notify that is not a list
    known = set(notifiers)
    for i, name in enumerate(names):
        if isinstance(name, str) and name not in known:
            hint = suggest(name, known) if known else f"; {PROJECT_FILE} defines no notifiers"
            doc.problem(at + ("notify", i), f"unknown notifier '{name}'" + hint)


# --------------------------------------------------------------------------- scenarios


@cache
def _scenario_model(channel: str) -> type[Scenario]:
    """Scenario with this channel's target and step models, so one validation sees everything."""
    from probes import probe_class

    probe = probe_class(channel)
    # A probe that expands a scenario (one per phone number) writes the steps itself.
    steps = PydanticField(()) if hasattr(probe, "expand") else PydanticField(min_length=1)
    return create_model(
        f"{channel.title()}Scenario",
        __base__=Scenario,
        target=(probe.target_model, ...),
        steps=(tuple[probe.step_model, ...], steps),
        **getattr(probe, "scenario_fields", {}),
    )


def expand_scenario(scenario: Scenario) -> list[Scenario]:
    """The scenarios one loaded scenario stands for: itself, or one per number of a phone inventory (ScenarioError)."""
    from probes import probe_class

    expand = getattr(probe_class(scenario.channel), "expand", None)
    return expand(scenario) if expand else [scenario]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _scenario_id(path: Path, project: Project) -> str:
    try:
        relative = path.resolve().relative_to(project.root.resolve())
    except ValueError:
        relative = Path(path.name)
    return relative.with_suffix("").as_posix()


def load_scenario(path: Path, project: Project | None = None) -> Scenario:
    """One scenario file -> Scenario, or ScenarioError with every problem in the file."""
    return _load_scenario(path, project)[0]


def _load_scenario(path: Path, project: Project | None = None, *, check_notify: bool = True) -> tuple[Scenario, _Document]:
    """`check_notify=False` when `project` stands in for a cxtest.yaml that did not load (its names are unknown)."""
    project = project or load_project(find_project_file(path))
    doc, data = _read(path, _display(path))
    if data is None:
        raise ScenarioError(doc.problems)
    return _scenario_from(doc, data, _scenario_id(path, project), project, check_notify)


def _load_botium(converted: Any, folder: Path, project: Project, check_notify: bool) -> tuple[Scenario, _Document]:
    """A BotiumScript convo converted in memory (probes.chat.botium), validated like a file; problems point at the convo."""
    doc = _Document(file=_display(converted.source), base_dir=converted.source.parent)
    data = doc.build(yaml.compose(yaml.safe_dump(converted.data, sort_keys=False)))  # ${env:...} filled in as in files
    for marks in (doc.value_marks, doc.key_marks):
        for key in marks:
            marks[key] = (converted.line, 1)
    return _scenario_from(doc, data, _scenario_id(folder / converted.output, project), project, check_notify)


def _scenario_from(doc: _Document, data: Any, scenario_id: str, project: Project, check_notify: bool) -> tuple[Scenario, _Document]:
    from probes import channels

    if not isinstance(data, dict):
        doc.problem((), f"a scenario must be a mapping of keys (name, channel, steps...), got {_describe(data)}")
        raise ScenarioError(doc.problems)

    values = dict(data)
    defaults = project.defaults
    for key in ("timeout", "step_timeout", "retries", "retry_delay", "alert"):
        default = getattr(defaults, key)
        if key not in values and default is not None:
            values[key] = default
    values.setdefault("id", scenario_id)
    values["source"] = Source(file=doc.file, line=doc.value_marks.get((), (1, 1))[0])

    channel = data.get("channel")
    model: type[Scenario] = Scenario
    known = channels()
    if isinstance(channel, str) and channel in known:
        model = _scenario_model(channel)
    elif "channel" in data:
        doc.problem(("channel",), f"unknown channel {_describe(channel)}" + suggest(str(channel), known))
    try:
        scenario = model.model_validate(values)
    except ValidationError as exc:
        reported = len(doc.problems)
        _problems_from(doc, exc, model, values)
        if model is Scenario and "channel" in data:  # the unknown channel is already reported
            doc.problems[reported:] = [p for p in doc.problems[reported:] if p.path != "channel"]
        scenario = None
    if model is not Scenario and isinstance(data.get("thresholds"), dict):
        _check_thresholds(doc, channel, data["thresholds"])
    if check_notify and isinstance(data.get("alert"), dict):
        _check_notify(doc, ("alert",), data["alert"], project.notifiers)
    if doc.problems:
        doc.problems.sort(key=lambda p: (p.line, p.column))
        raise ScenarioError(doc.problems)
    assert scenario is not None
    return scenario, doc


def _check_thresholds(doc: _Document, channel: str, thresholds: dict[str, Any]) -> None:
    from probes import probe_class

    measures = {"duration", *probe_class(channel).measures}
    for name in thresholds:
        if name not in measures:
            doc.problem(("thresholds", name), f"unknown measure '{name}'" + suggest(name, measures), at_key=True)


def _has_botium_files(folder: Path) -> bool:
    """BotiumScript convos below the folder: `cxtest run` converts them in memory (the chat probe's importer)."""
    return any(True for _ in folder.rglob("*.convo.txt"))


def scenario_files(paths: Iterable[Path]) -> list[Path]:
    """Scenario files named directly or found below folders, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                parts = file.relative_to(path).parts
                if (
                    file.suffix in SCENARIO_SUFFIXES
                    and file.name != PROJECT_FILE
                    and not any(p.startswith((".", "_")) for p in parts)
                ):
                    found.append(file)
        else:
            found.append(path)
    return found


def load_scenarios(paths: Iterable[Path], project: Project | None = None) -> tuple[Project, list[Scenario]]:
    """Every scenario below `paths`; ScenarioError lists the problems of all files together."""
    paths = list(paths)
    problems: list[Problem] = []
    check_notify = True
    if project is None:
        project_file = find_project_file(paths[0] if paths else Path.cwd())
        try:
            project = load_project(project_file)
        except ScenarioError as exc:
            # Report cxtest.yaml's problems and still check the scenarios, against default settings.
            problems.extend(exc.problems)
            project = Project(root=project_file.parent.resolve() if project_file else Path.cwd())
            check_notify = False
    files = scenario_files(paths)
    loads: list[Any] = [lambda file=file: _load_scenario(file, project, check_notify=check_notify) for file in files]
    for path in paths:
        if not path.exists():
            problems.append(Problem(str(path), 1, 1, "", "no such file or folder"))
        elif path.is_dir() and _has_botium_files(path):
            from probes.chat.botium import convert_folder

            conversion = convert_folder(path)
            problems.extend(conversion.problems)
            loads += [lambda c=c, path=path: _load_botium(c, path, project, check_notify) for c in conversion.scenarios]
    if not loads and not problems:
        problems.append(Problem(str(paths[0]) if paths else ".", 1, 1, "", "no scenario files (*.yaml, BotiumScript *.convo.txt) found"))
    scenarios: list[Scenario] = []
    by_name: dict[str, tuple[str, int, int]] = {}  # name -> where it was first seen
    by_id: dict[str, tuple[str, int, int]] = {}
    for load in loads:
        try:
            loaded, doc = load()
            expanded = expand_scenario(loaded)
        except ScenarioError as exc:
            problems.extend(exc.problems)
            continue
        for scenario in expanded:
            for table, key, what in ((by_name, scenario.name, "name"), (by_id, scenario.id, "id")):
                # An id derived from the path has no key in the file: the mapping's start stands in.
                here = (doc.file, *doc.position((what,), at_key=True))
                other = table.get(key)
                if other is not None:
                    where = ":".join(map(str, other))
                    problems.append(Problem(*here, what, f"duplicate scenario {what} '{key}' (also in {where})"))
                else:
                    table[key] = here
            scenarios.append(scenario)
    if problems:
        raise ScenarioError(problems)
    return project, scenarios
