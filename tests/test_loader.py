"""The loader's messages for bad scenario and project files, pinned as exact `file:line:col path: message` text.

Every test writes its YAML into tmp_path and runs from there, so file names show relative
to the working folder (`bad.yaml:5:7 ...`), as a user in their project folder would see them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from cxtest import logs
from cxtest.cli import app
from cxtest.errors import ScenarioError
from cxtest.loader import load_scenario, load_scenarios
from cxtest.model import Levels, Source

# A scenario that loads: tests add or change a line or two to break it in one way.
HEADER = """\
name: Status is up
channel: http
target: {url: "http://127.0.0.1:9"}
"""
ONE_STEP = """\
steps:
  - request: GET /api/status
"""
GOOD = HEADER + ONE_STEP


@pytest.fixture(autouse=True)
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own project folder, with a plain cxtest.yaml, and forgets secrets after."""
    (tmp_path / "cxtest.yaml").write_text("store: sqlite:///cxtest.db\n")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    logs.forget_secrets()


def write(name: str, text: str) -> Path:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(*names: str) -> list[str]:
    """The problems load_scenarios reports for these files or folders, as the user reads them."""
    with pytest.raises(ScenarioError) as caught:
        load_scenarios([Path(n) for n in names])
    return [str(p) for p in caught.value.problems]


def problems_in(text: str, name: str = "bad.yaml") -> list[str]:
    write(name, text)
    return problems(name)


# --------------------------------------------------------------------------- YAML itself


def test_bad_indentation_points_at_the_misindented_line() -> None:
    """A key indented further than its siblings is reported at that line, in words, naming the mapping it breaks."""
    text = HEADER + "  steps:\n    - request: GET /\n"
    assert problems_in(text) == [
        "bad.yaml:4:3 YAML syntax error: bad indentation: this line does not line up"
        " with the mapping that starts at line 1, column 1"
    ]


def test_key_indented_under_a_plain_value_hints_at_indentation() -> None:
    """A key indented under a plain value (PyYAML: 'mapping values are not allowed here') gets the two usual causes."""
    text = "name: Status is up\n  channel: http\n" + ONE_STEP
    assert problems_in(text) == [
        "bad.yaml:2:10 YAML syntax error: mapping values are not allowed here"
        " (check this line's indentation, or quote a value that contains ': ')"
    ]


def test_unclosed_quote_points_at_the_opening_quote() -> None:
    """An unclosed quote is reported where the quote opens, not at the end of the file."""
    text = 'name: "Status is up\nchannel: http\nsteps:\n  - request: GET /\n'
    assert problems_in(text) == ["bad.yaml:1:7 YAML syntax error: this quoted string is never closed (the file ends first)"]


def test_unclosed_bracket_mid_file_names_where_the_list_opened() -> None:
    """A [ list left open runs into the next key: the error is there and names the list's start."""
    text = "name: x\ntags: [smoke, billing\nchannel: http\n"
    assert problems_in(text) == [
        "bad.yaml:3:8 YAML syntax error: expected ',' or ']', but got ':' (in the [ list at line 2, column 7)"
    ]


def test_unclosed_bracket_at_end_of_file_points_at_the_bracket() -> None:
    """A [ list still open when the file ends is reported at its opening bracket."""
    text = GOOD + "tags: [smoke, billing\n"
    assert problems_in(text) == ["bad.yaml:6:7 YAML syntax error: this [ list is never closed (the file ends first)"]


@pytest.mark.parametrize("text", ["", "# just a comment\n\n"], ids=["empty", "comments-only"])
def test_empty_file(text: str) -> None:
    """A file with nothing in it (or only comments) says so, at 1:1."""
    assert problems_in(text) == ["bad.yaml:1:1 file is empty"]


def test_top_level_list() -> None:
    """A list at the top level asks for a mapping of scenario keys."""
    text = "- name: one\n- name: two\n"
    assert problems_in(text) == [
        "bad.yaml:1:1 a scenario must be a mapping of keys (name, channel, steps...), got a list"
    ]


def test_two_documents_in_one_file() -> None:
    """A second YAML document is refused at its first line (just after `---`); the first one is still checked."""
    text = GOOD + "---\nname: Another journey\nchannel: http\n"
    assert problems_in(text) == ["bad.yaml:7:1 one scenario per file: found a second YAML document here"]


def test_duplicate_key_in_one_mapping() -> None:
    """A key written twice in one mapping is reported at the second, naming the line of the first."""
    text = HEADER + "name: Status is still up\n" + ONE_STEP
    assert problems_in(text) == ["bad.yaml:4:1 name: duplicate key 'name' (first at line 1)"]


# --------------------------------------------------------------------------- types


def test_text_where_a_whole_number_is_expected() -> None:
    """`retries: many` is located at the value and quotes it."""
    assert problems_in(GOOD + "retries: many\n") == ["bad.yaml:6:10 retries: expected a whole number, got 'many'"]


def test_mapping_where_the_steps_list_is_expected() -> None:
    """Steps written as a mapping instead of a list of steps say a list was expected."""
    text = HEADER + "steps:\n  request: GET /api/status\n"
    assert problems_in(text) == ["bad.yaml:5:3 steps: expected a list, got a mapping"]


def test_number_where_tags_list_is_expected() -> None:
    """`tags: 5` says a list was expected and shows the number."""
    assert problems_in(GOOD + "tags: 5\n") == ["bad.yaml:6:7 tags: expected a list, got 5"]


def test_step_written_as_text() -> None:
    """A step that is a bare string asks for a mapping, at that list item."""
    text = HEADER + "steps:\n  - GET /api/status\n"
    assert problems_in(text) == ["bad.yaml:5:5 steps[0]: expected a mapping of keys, got 'GET /api/status'"]


def test_retries_out_of_range() -> None:
    """A number past the allowed range names the limit and the value."""
    assert problems_in(GOOD + "retries: 20\n") == [
        "bad.yaml:6:10 retries: input should be less than or equal to 10, got 20"
    ]


# --------------------------------------------------------------------------- unknown and missing keys


def test_unknown_top_level_key_suggests_the_close_one_and_is_not_also_missing() -> None:
    """`stpes` suggests 'steps' and does not also report 'steps' as missing."""
    text = HEADER + "stpes:\n  - request: GET /api/status\n"
    assert problems_in(text) == ["bad.yaml:4:1 stpes: unknown key 'stpes'; did you mean 'steps'?"]


def test_misspelt_required_step_key_is_reported_once() -> None:
    """`reqest` in a step is one problem with a suggestion, not also "missing required key 'request'"."""
    text = HEADER + "steps:\n  - name: status\n    reqest: GET /api/status\n"
    assert problems_in(text) == ["bad.yaml:6:5 steps[0].reqest: unknown key 'reqest'; did you mean 'request'?"]


def test_unknown_nested_key_suggests_the_close_one() -> None:
    """`expect: {stauts: 200}` points at the key inside the flow mapping and suggests 'status'."""
    text = HEADER + "steps:\n  - request: GET /api/status\n    expect: {stauts: 200}\n"
    assert problems_in(text) == ["bad.yaml:6:14 steps[0].expect.stauts: unknown key 'stauts'; did you mean 'status'?"]


def test_unknown_key_without_close_match_lists_the_keys_a_user_may_write() -> None:
    """With no close match the allowed keys are listed, without keys the loader fills in itself (source)."""
    assert problems_in(GOOD + "owner: billing-team\n") == [
        "bad.yaml:6:1 owner: unknown key 'owner'; expected one of: alert, channel, description, id, name,"
        " retries, retry_delay, schedule, step_timeout, steps, stress, tags, target, thresholds, timeout"
    ]


def test_unknown_key_suggests_the_yaml_name_not_the_python_field() -> None:
    """Request keys are suggested as written in YAML: `jsno` -> 'json' (the field is json_body)."""
    text = HEADER + "steps:\n  - request: {method: POST, url: /api/login, jsno: {user: demo}}\n  - request: {url: /, bdy: x, xyz: 1}\n"
    assert problems_in(text) == [
        "bad.yaml:5:46 steps[0].request.jsno: unknown key 'jsno'; did you mean 'json'?",
        "bad.yaml:6:23 steps[1].request.bdy: unknown key 'bdy'; did you mean 'body'?",
        "bad.yaml:6:31 steps[1].request.xyz: unknown key 'xyz';"
        " expected one of: body, form, headers, json, method, params, url",
    ]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("channel: http\ntarget: {}\n" + ONE_STEP, "name"),
        ("name: Status is up\n" + ONE_STEP, "channel"),
        (HEADER, "steps"),
    ],
    ids=["name", "channel", "steps"],
)
def test_missing_required_key(text: str, key: str) -> None:
    """A missing required top-level key is named, at the start of the scenario."""
    assert problems_in(text) == [f"bad.yaml:1:1 missing required key '{key}'"]


def test_missing_required_nested_key() -> None:
    """A request without a url is located at that request."""
    text = HEADER + "steps:\n  - request: {method: GET}\n"
    assert problems_in(text) == ["bad.yaml:5:14 steps[0].request: missing required key 'url'"]


def test_unknown_channel_suggests_the_close_one() -> None:
    """`channel: htp` suggests 'http' and stops there (no cascade of step errors)."""
    text = "name: x\nchannel: htp\n" + ONE_STEP
    assert problems_in(text) == ["bad.yaml:2:10 channel: unknown channel 'htp'; did you mean 'http'?"]


def test_channel_that_is_not_text_is_reported_once() -> None:
    """`channel: 5` is one problem listing the channels, not also "expected text"."""
    text = "name: x\nchannel: 5\n" + ONE_STEP
    assert problems_in(text) == ["bad.yaml:2:10 channel: unknown channel 5; expected one of: chat, http, ivr, phone, web"]


# --------------------------------------------------------------------------- substitutions


def test_missing_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset ${env:NAME} names the variable, at the value that uses it."""
    monkeypatch.delenv("CXT_TEST_SANDBOX", raising=False)
    text = 'name: x\nchannel: http\ntarget: {url: "${env:CXT_TEST_SANDBOX}/v1"}\n' + ONE_STEP
    assert problems_in(text) == [
        "bad.yaml:3:15 target.url: environment variable CXT_TEST_SANDBOX is not set (used as ${env:CXT_TEST_SANDBOX})"
    ]


def test_environment_default_is_used_without_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """${env:NAME:-default} falls back to the default when NAME is unset, and to NAME when set."""
    monkeypatch.delenv("CXT_TEST_SANDBOX", raising=False)
    text = 'name: x\nchannel: http\ntarget: {url: "${env:CXT_TEST_SANDBOX:-http://127.0.0.1:8480}"}\n' + ONE_STEP
    path = write("ok.yaml", text)
    assert load_scenario(path).target.url == "http://127.0.0.1:8480"
    monkeypatch.setenv("CXT_TEST_SANDBOX", "http://sandbox.test")
    assert load_scenario(path).target.url == "http://sandbox.test"


def test_missing_file_substitution(tmp_path: Path) -> None:
    """An unreadable ${file:PATH} says why and shows the full path it tried (beside the scenario)."""
    text = HEADER + "steps:\n  - request:\n      url: /api/login\n      body: ${file:secrets/password.txt}\n"
    assert problems_in(text, "journeys/bad.yaml") == [
        "journeys/bad.yaml:7:13 steps[0].request.body: cannot read ${file:secrets/password.txt}:"
        f" No such file or directory ({tmp_path.resolve()}/journeys/secrets/password.txt)"
    ]


def test_unknown_substitution_kind() -> None:
    """${evn:X} is refused with the two kinds that exist."""
    text = 'name: x\nchannel: http\ntarget: {url: "${evn:SANDBOX}"}\n' + ONE_STEP
    assert problems_in(text) == [
        "bad.yaml:3:15 target.url: unknown substitution '${evn:SANDBOX}': use ${env:NAME} or ${file:PATH}"
    ]


def test_substituted_values_are_registered_as_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values from ${env:...} and ${file:...} are redacted to their placeholder in logs and reports."""
    monkeypatch.setenv("CXT_TEST_TOKEN", "tok-3f9a2c")
    write("secrets/password.txt", "hunter2-sandbox\n")
    text = HEADER + (
        "steps:\n"
        "  - request:\n"
        "      url: /api/login\n"
        '      headers: {authorization: "Bearer ${env:CXT_TEST_TOKEN}"}\n'
        '      json: {password: "${file:secrets/password.txt}"}\n'
    )
    scenario = load_scenario(write("login.yaml", text))
    request = scenario.steps[0].request
    assert request.headers == {"authorization": "Bearer tok-3f9a2c"}
    assert request.json_body == {"password": "hunter2-sandbox"}
    assert logs.redact("sent Bearer tok-3f9a2c with hunter2-sandbox") == (
        "sent Bearer ${env:CXT_TEST_TOKEN} with ${file:secrets/password.txt}"
    )


# --------------------------------------------------------------------------- values


def test_bad_duration() -> None:
    """`timeout: 5 sec` shows the value and the units that work."""
    assert problems_in(GOOD + "timeout: 5 sec\n") == [
        "bad.yaml:6:10 timeout: bad duration '5 sec': use a number with ms, s, m or h, e.g. 1.5s"
    ]


def test_negative_duration() -> None:
    """A negative number of seconds is refused as negative."""
    assert problems_in(GOOD + "step_timeout: -5\n") == ["bad.yaml:6:15 step_timeout: bad duration -5: must not be negative"]


def test_empty_steps_list() -> None:
    """`steps: []` must not be empty, located at the brackets."""
    assert problems_in(HEADER + "steps: []\n") == ["bad.yaml:4:8 steps: must not be empty"]


def test_bad_regex_in_body_matches() -> None:
    """A regular expression that does not compile is shown with Python's reason."""
    text = HEADER + 'steps:\n  - request: GET /\n    expect:\n      body_matches: "(unclosed"\n'
    assert problems_in(text) == [
        "bad.yaml:7:21 steps[0].expect.body_matches: bad regular expression '(unclosed':"
        " missing ), unterminated subpattern at position 0"
    ]


def test_bad_jsonpath_points_at_the_path_key() -> None:
    """A JSONPath that does not parse is located at that key, not at the whole json_path mapping."""
    text = HEADER + 'steps:\n  - request: GET /\n    expect:\n      json_path:\n        $.status: up\n        "$..[": 1\n'
    assert problems_in(text) == [
        "bad.yaml:9:9 steps[0].expect.json_path.$..[: bad JSONPath '$..[': unexpected end of query"
    ]


def test_bad_save_source_points_at_its_entry() -> None:
    """A `save` source that is not a JSONPath, header:, regex:, status or body is located at that entry."""
    text = HEADER + "steps:\n  - request: GET /\n    save:\n      token: $.token\n      user: username\n"
    assert problems_in(text) == [
        "bad.yaml:8:13 steps[0].save.user: cannot save from 'username':"
        " use a JSONPath ($.token), header:NAME, regex:PATTERN, status or body"
    ]


def test_bad_http_method() -> None:
    """An unknown method lists the methods, in the mapping form and in the `METHOD URL` shorthand."""
    text = HEADER + "steps:\n  - request: {method: FETCH, url: /}\n  - request: FETCH /api/status\n"
    allowed = "'GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD' or 'OPTIONS'"
    assert problems_in(text) == [
        f"bad.yaml:5:23 steps[0].request.method: input should be {allowed}, got 'FETCH'",
        f"bad.yaml:6:14 steps[1].request: input should be {allowed}, got 'FETCH'",
    ]


@pytest.mark.parametrize(("status", "shown", "col"), [("999", "999", 15), ("ok", "'ok'", 15)])
def test_bad_status(status: str, shown: str, col: int) -> None:
    """A status that is not a code, a list of codes or a class shows the three forms that work."""
    text = HEADER + f"steps:\n  - request: GET /\n    expect:\n      status: {status}\n"
    assert problems_in(text) == [
        f"bad.yaml:7:{col} steps[0].expect.status: expected a status code like 200,"
        f" a list like [200, 201] or a class like 2xx, got {shown}"
    ]


def test_unknown_threshold_measure_suggests_the_close_one() -> None:
    """An unknown measure in thresholds is located at its key and suggests the channel's measure."""
    assert problems_in(GOOD + "thresholds: {duration: 2s, latncy: 500ms}\n") == [
        "bad.yaml:6:28 thresholds.latncy: unknown measure 'latncy'; did you mean 'latency'?"
    ]


# --------------------------------------------------------------------------- cxtest.yaml


def test_project_unknown_key_is_reported_against_cxtest_yaml() -> None:
    """A misspelt setting in cxtest.yaml is located there, with a suggestion, nested ones too."""
    write("cxtest.yaml", "store: sqlite:///cxtest.db\nlocaton: eu-1\ndefaults:\n  step_timout: 2s\n")
    write("ok.yaml", GOOD)
    assert problems("ok.yaml") == [
        "cxtest.yaml:2:1 locaton: unknown key 'locaton'; did you mean 'location'?",
        "cxtest.yaml:4:3 defaults.step_timout: unknown key 'step_timout'; did you mean 'step_timeout'?",
    ]


def test_project_bad_store_url_points_at_the_store_value() -> None:
    """A store that is not a URL is located at its value in cxtest.yaml, not at 1:1."""
    write("cxtest.yaml", "# settings\nlocation: eu-1\nstore: cxtest.db\n")
    write("ok.yaml", GOOD)
    assert problems("ok.yaml") == [
        "cxtest.yaml:3:8 store: 'cxtest.db' is not a URL: use sqlite:///FILE or postgresql://USER@HOST/DB"
    ]


def test_bad_project_file_does_not_hide_scenario_problems() -> None:
    """Problems in cxtest.yaml and in the scenarios are reported together."""
    write("cxtest.yaml", "store: sqlite:///cxtest.db\nconcurrency: 0\n")
    write("bad.yaml", GOOD + "retries: many\n")
    assert problems("bad.yaml") == [
        "cxtest.yaml:2:14 concurrency: input should be greater than or equal to 1, got 0",
        "bad.yaml:6:10 retries: expected a whole number, got 'many'",
    ]


# --------------------------------------------------------------------------- many problems, many files


def test_every_problem_in_a_file_is_reported_sorted_by_line() -> None:
    """All problems of one file come at once, in line order, whatever the order pydantic found them."""
    text = """\
    zzz: 1
    name: Status is up
    channel: http
    target: {url: "http://127.0.0.1:9"}
    retries: many
    steps:
      - request: GET /api/status
        expect: {stauts: 200}
    timeout: 5 sec
    thresholds: {latncy: 1s}
    """
    assert problems_in(text) == [
        "bad.yaml:1:1 zzz: unknown key 'zzz'; expected one of: alert, channel, description, id, name,"
        " retries, retry_delay, schedule, step_timeout, steps, stress, tags, target, thresholds, timeout",
        "bad.yaml:5:10 retries: expected a whole number, got 'many'",
        "bad.yaml:8:14 steps[0].expect.stauts: unknown key 'stauts'; did you mean 'status'?",
        "bad.yaml:9:10 timeout: bad duration '5 sec': use a number with ms, s, m or h, e.g. 1.5s",
        "bad.yaml:10:14 thresholds.latncy: unknown measure 'latncy'; did you mean 'latency'?",
    ]


def test_a_problem_in_one_file_does_not_hide_problems_in_another() -> None:
    """Every file in a folder is checked; each file's problems are listed, files in name order."""
    write("journeys/a_syntax.yaml", 'name: "x\n')
    write("journeys/b_fine.yaml", GOOD)
    write("journeys/c_types.yaml", GOOD.replace("Status is up", "Other") + "tags: 5\n")
    assert problems("journeys") == [
        "journeys/a_syntax.yaml:1:7 YAML syntax error: this quoted string is never closed (the file ends first)",
        "journeys/c_types.yaml:6:7 tags: expected a list, got 5",
    ]


def test_duplicate_scenario_names_across_files_give_both_locations() -> None:
    """Two files with one name: the second is reported at its `name:` key, naming the first's `name:` key."""
    write("journeys/a.yaml", "# the first\n" + GOOD)
    write("journeys/b.yaml", "channel: http\ntarget: {}\nname: Status is up\n" + ONE_STEP)
    assert problems("journeys") == [
        "journeys/b.yaml:3:1 name: duplicate scenario name 'Status is up' (also in journeys/a.yaml:2:1)"
    ]


def test_duplicate_scenario_ids_across_files() -> None:
    """An explicit id that collides with another file's id is reported at the `id:` key."""
    write("a.yaml", GOOD + "id: status\n")
    write("b.yaml", GOOD.replace("Status is up", "Other") + "id: status\n")
    assert problems("a.yaml", "b.yaml") == ["b.yaml:6:1 id: duplicate scenario id 'status' (also in a.yaml:6:1)"]


# --------------------------------------------------------------------------- what loads


def test_valid_scenario_loads_with_project_defaults_and_an_id_from_its_path() -> None:
    """A full HTTP scenario loads; cxtest.yaml defaults fill timeout, step_timeout and retries; id is its path."""
    write("cxtest.yaml", "store: sqlite:///cxtest.db\ndefaults:\n  timeout: 45s\n  step_timeout: 3s\n  retries: 2\n")
    write(
        "journeys/billing/login.yaml",
        """\
        # Sign in and read the account.
        name: Customer signs in
        channel: http
        target: {url: "http://127.0.0.1:8480", headers: {x-test: "1"}}
        steps:
          - name: sign in
            request:
              method: post
              url: /api/login
              json: {user: demo}
            expect:
              status: 200
              json_path: {$.token: {exists: true}}
              latency: 1s
            save: {token: $.token}
          - request: GET /api/accounts/1001
            expect: {status: 2xx, body_contains: active}
        thresholds: {duration: 2s, latency: {degraded: 300ms, failed: 1s}}
        tags: [smoke, billing]
        """,
    )
    project, [scenario] = load_scenarios([Path("journeys")])
    assert project.root == Path.cwd()
    assert scenario.id == "journeys/billing/login"
    assert scenario.source == Source(file="journeys/billing/login.yaml", line=2)
    assert (scenario.timeout, scenario.step_timeout, scenario.retries) == (45.0, 3.0, 2)
    assert scenario.tags == ("smoke", "billing")
    assert scenario.thresholds == {"duration": Levels(degraded=2.0), "latency": Levels(degraded=0.3, failed=1.0)}
    first, second = scenario.steps
    assert (first.request.method, first.request.json_body) == ("POST", {"user": "demo"})
    assert first.expect.latency == Levels(failed=1.0)
    assert (second.describe(), second.expect.status.matches) == ("GET /api/accounts/1001", r"^2\d\d$")


def test_values_in_the_file_win_over_project_defaults() -> None:
    """A timeout written in the scenario is kept; only the keys it leaves out come from defaults."""
    write("cxtest.yaml", "store: sqlite:///cxtest.db\ndefaults: {timeout: 45s, retries: 2}\n")
    scenario = load_scenario(write("ok.yaml", GOOD + "timeout: 500ms\n"))
    assert (scenario.timeout, scenario.step_timeout, scenario.retries) == (0.5, 10.0, 2)


def test_the_demo_scenarios_load() -> None:
    """The shipped demo scenarios are valid: one scenario per file, or per number of a phone inventory."""
    demo = Path(__file__).resolve().parents[1] / "scenarios" / "demo"
    _, scenarios = load_scenarios([demo])
    assert {s.source.file for s in scenarios} == {str(p) for p in demo.glob("*.yaml")}
    numbers = [s for s in scenarios if s.channel == "phone"]
    assert numbers and len(scenarios) - len(numbers) == len(list(demo.glob("*.yaml"))) - len({s.source.file for s in numbers})


# --------------------------------------------------------------------------- cxtest validate


@pytest.fixture
def cli() -> CliRunner:
    """A CliRunner; structlog's set-up is restored after, as the app points it at the runner's (then closed) stderr."""
    saved = structlog.get_config()
    yield CliRunner()
    structlog.configure(**saved)


def test_validate_prints_every_problem_and_exits_2(cli: CliRunner) -> None:
    """`cxtest validate` prints each problem on its own line, a count, and exits 2."""
    write("journeys/bad.yaml", GOOD + "retries: many\ntimeout: 5 sec\n")
    write("journeys/ok.yaml", GOOD.replace("Status is up", "Other"))
    result = cli.invoke(app, ["validate", "journeys"])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "journeys/bad.yaml:6:10 retries: expected a whole number, got 'many'",
        "journeys/bad.yaml:7:10 timeout: bad duration '5 sec': use a number with ms, s, m or h, e.g. 1.5s",
        "2 problem(s) in 1 file(s)",
    ]


def test_validate_exits_0_on_a_valid_folder(cli: CliRunner) -> None:
    """`cxtest validate` on good files says how many it checked and exits 0."""
    write("journeys/a.yaml", GOOD)
    write("journeys/b.yaml", GOOD.replace("Status is up", "Other"))
    result = cli.invoke(app, ["validate", "journeys"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["ok: 2 scenario(s) in 2 file(s)"]


def test_misspelled_matcher_is_refused_with_a_suggestion() -> None:
    """A mapping whose key looks like a misspelled matcher is a problem, not a silent `equals` against that mapping."""
    text = GOOD + "    expect: {headers: {x-id: {containz: a}}}\n"
    assert problems_in(text) == [
        "bad.yaml:6:31 steps[0].expect.headers.x-id.containz: unknown matcher 'containz'; did you mean 'contains'?"
        " (to compare with a mapping, write equals: {...})"
    ]


def test_bad_regex_in_save_is_a_problem() -> None:
    """A `save: regex:` with a broken pattern is reported at that entry, never a traceback."""
    text = GOOD + "    save: {t: \"regex:(\"}\n"
    [problem] = problems_in(text)
    assert problem.startswith("bad.yaml:6:") and "bad regular expression '('" in problem


def test_negative_duration_with_unit_says_negative() -> None:
    """`timeout: -5s` says the duration must not be negative."""
    assert problems_in(GOOD + "timeout: -5s\n") == ["bad.yaml:6:10 timeout: bad duration '-5s': must not be negative"]


def test_notifier_fallback_must_name_another_notifier() -> None:
    """A `fallback:` that names no other notifier is reported at that notifier's entry."""
    Path("cxtest.yaml").write_text(
        'notifiers:\n  a: { type: webhook, url: "http://127.0.0.1:1/x", fallback: b }\n'
        '  b: { type: webhook, url: "http://127.0.0.1:1/y", fallback: c }\n'
    )
    write("ok.yaml", GOOD)
    assert problems("ok.yaml") == ["cxtest.yaml:3:3 notifiers.b: 'b' falls back to 'c', which is not another notifier here"]


def test_notifier_fallback_is_not_a_type_setting() -> None:
    """`fallback:` is shared by every notifier type, so building the notifiers accepts it."""
    from alerts.notifiers import build_notifiers
    from cxtest.loader import load_project

    Path("cxtest.yaml").write_text(
        'notifiers:\n  a: { type: webhook, url: "http://127.0.0.1:1/x", fallback: b }\n'
        '  b: { type: webhook, url: "http://127.0.0.1:1/y" }\n'
    )
    project = load_project(Path("cxtest.yaml"))
    assert sorted(build_notifiers(project.notifiers)) == ["a", "b"]
    assert project.notifiers["a"].fallback == "b"


def test_a_scenario_error_survives_pickling() -> None:
    """A ScenarioError crosses to a worker process or a Ray actor with its problems, not as one string."""
    import pickle

    from cxtest.errors import Problem, ScenarioError

    error = pickle.loads(pickle.dumps(ScenarioError([Problem("a.yaml", 3, 5, "steps", "bad")])))
    assert error.problems == [Problem("a.yaml", 3, 5, "steps", "bad")]
    assert str(error) == "a.yaml:3:5 steps: bad"
