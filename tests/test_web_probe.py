"""The web probe end to end: scenarios loaded by the real loader, run by the runner in Debian's
Chromium against pages served on 127.0.0.1 (tests/web_pages.py).

One runner, and so one shared browser, serves the whole module. Every scenario adds
host-resolver rules that resolve no name but 127.0.0.1: whatever the browser tries,
nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import textwrap
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from cxtest.errors import ScenarioError
from cxtest.loader import load_scenario
from cxtest.model import Outcome, Project, Result
from cxtest.runner import Runner
from servers import ThreadedServer, closed_port, raw_server
from web_pages import pages_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
_names = itertools.count()


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with ThreadedServer(pages_app()) as server:
        yield server.url


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runner(folder: Path) -> AsyncIterator[Runner]:
    async with Runner(Project(root=folder), artifacts_root=folder / "artifacts") as runner:
        yield runner


def scenario_file(folder: Path, site: str, steps: str, target: str = "", head: str = "step_timeout: 5s", args: str = "") -> Path:
    text = (
        f"name: web\nchannel: web\n{head}\n"
        f"target:\n  url: {site}\n  browser: {{args: [\"{LOOPBACK_ONLY}\"{args}]}}\n"
        + textwrap.indent(textwrap.dedent(target), "  ")
        + "steps:\n"
        + textwrap.indent(textwrap.dedent(steps), "  ")
    )
    path = folder / f"web_{next(_names)}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def run(runner: Runner, folder: Path, site: str):  # type: ignore[no-untyped-def]
    async def run(steps: str, target: str = "", head: str = "step_timeout: 5s") -> Result:
        path = scenario_file(folder, site, steps, target, head)
        return await runner.run_scenario(load_scenario(path, Project(root=folder)))

    return run


def texts(result: Result) -> list[str]:
    return [check.text for step in result.steps for check in step.checks]


def chromium_processes(kind: str | None = None) -> list[int]:
    """Chromium processes started by this test process: the browser (kind None) or its children of a --type."""
    parents: dict[int, int] = {}
    argv: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        argv[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace").split()  # zygote children rewrite theirs

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    found = []
    for pid, args in argv.items():
        if args and args[0].endswith("/chromium") and ours(pid):
            process_type = next((arg.split("=", 1)[1] for arg in args if arg.startswith("--type=")), None)
            if process_type == kind:
                found.append(pid)
    return found


async def kill_after(delay: float, kind: str | None) -> list[int]:
    await asyncio.sleep(delay)
    pids = chromium_processes(kind)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


# --------------------------------------------------------------------------- journeys


async def test_a_journey_with_every_step_kind_passes_and_measures_navigation(run, site: str) -> None:  # type: ignore[no-untyped-def]
    """Each step kind works in the browser; a saved value fills a later step; timing and a screenshot are kept."""
    result = await run(
        """
        - goto: /contact
        - expect_title: Contact Acme
        - fill: {selector: "role=textbox[name='Your name']", value: Ada}
        - select: {selector: "#topic", label: Billing questions}
        - fill: {selector: "#message", value: "My bill is wrong"}
        - click: "role=button[name='Send']"
        - wait_for: {url: "**/thanks"}
        - expect_text: {selector: ".result", contains: "Thank you, Ada", matches: "billing"}
        - expect_visible: "data-testid=ticket"
        - save: {ticket: "data-testid=ticket", back: {selector: "#home", attribute: data-kind}, here: {url: true}, forms: {evaluate: "document.forms.length"}}
        - expect_text: {selector: "data-testid=ticket", equals: "{{ ticket }}"}
        - evaluate: {expression: "document.title + ' ' + '{{ back }}'", expect: "Thank you home"}
        - evaluate: {expression: "() => document.querySelectorAll('form').length", expect: {equals: "{{ forms }}", lt: 1}}
        - expect_url: "**/thanks"
        - expect_url: {matches: "/thanks$"}
        - expect_url: "{{ here }}"
        - expect_title: {contains: Thank}
        - screenshot: after send
        - goto: /search
        - press: {selector: "#q", key: Enter}
        - expect_text: {selector: "#results li >> nth=0", equals: "Opening hours: 8 to 18"}
        - expect_text: Lost card
        - goto: {url: /late, wait_until: domcontentloaded}
        - wait_for: {load_state: load}
        - wait_for: "#banner"
        - wait_for: {selector: "text=Nothing", state: detached}
        - press: End
        """
    )
    assert result.outcome is Outcome.passed, result.message
    assert "text of '.result' ('Thank you, Ada! We got your billing question.') contains 'Thank you, Ada'" in texts(result)
    ticket = next(c.actual for s in result.steps for c in s.checks if c.name == "text of 'data-testid=ticket'")
    assert ticket.startswith("T-10")
    assert f"url ('{site}/thanks') matches glob '**/thanks'" in texts(result)
    assert f"url ('{site}/thanks') matches glob '{site}/thanks'" in texts(result)
    assert {"ttfb", "dom_content_loaded", "load"} <= set(result.measures)
    assert 0 < result.measures["ttfb"] <= result.measures["dom_content_loaded"] <= result.measures["load"] < 5
    assert sum("ttfb" in step.measures for step in result.steps) == 4  # the contact, thanks, search and late pages
    shot = next(a for a in result.artifacts if a.label.endswith("after_send.png"))
    assert shot.kind == "screenshot" and Path(shot.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(a.label == "trace.zip" for a in result.artifacts)  # retain-on-failure, and nothing failed


async def test_failed_expectations_say_what_was_seen_and_keep_the_evidence(run, site: str) -> None:  # type: ignore[no-untyped-def]
    """A wrong text, title and URL fail with the values seen; a screenshot, the HTML and (unless off) a trace are kept."""
    result = await run(
        """
        - goto: /contact
        - expect_text: {selector: h1, contains: "Contact", equals: "Write to us"}
          timeout: 1s
        """
    )
    assert result.outcome is Outcome.failed
    assert result.steps[1].message == "text of 'h1' ('Contact us') == 'Write to us'"
    kinds = {a.label: a.kind for a in result.artifacts}
    assert kinds == {"failure.png": "screenshot", "failure.html": "html", "trace.zip": "trace"}
    html = Path(next(a.path for a in result.artifacts if a.label == "failure.html")).read_text()
    assert "<h1>Contact us</h1>" in html

    title = await run("- goto: /contact\n- expect_title: {matches: '^Help'}\n  timeout: 500ms\n", target="trace: off\n")
    assert title.outcome is Outcome.failed
    assert title.steps[1].message == "title ('Contact Acme') matches '^Help'"
    assert {a.label for a in title.artifacts} == {"failure.png", "failure.html"}  # trace: off
    url = await run("- goto: /contact\n- expect_url: '**/help'\n  timeout: 500ms\n")
    assert url.steps[1].message == f"url ('{site}/contact') matches glob '**/help'"


async def test_evaluate_and_visibility_failures_are_checks(run) -> None:  # type: ignore[no-untyped-def]
    """An evaluate result off its matcher and an element that stays hidden fail as checks naming what was seen."""
    result = await run(
        """
        - goto: /late
        - evaluate: {expression: "document.querySelectorAll('div').length", expect: {gt: 3}}
        """
    )
    assert result.steps[1].message == "evaluate \"document.querySelectorAll('div').lengt…\" (1) > 3"
    hidden = await run(
        """
        - goto: /contact
        - evaluate: "document.querySelector('h1').hidden = true"
        - expect_visible: h1
          timeout: 500ms
        """
    )
    assert hidden.steps[2].message == "'h1' is visible (found but hidden)"


async def test_trace_on_keeps_a_trace_of_a_passing_run(run) -> None:  # type: ignore[no-untyped-def]
    """`trace: on` keeps trace.zip even when the journey passes."""
    result = await run("- goto: /blank\n", target="trace: on\n")
    assert result.outcome is Outcome.passed
    assert [(a.label, a.kind) for a in result.artifacts] == [("trace.zip", "trace")]


# --------------------------------------------------------------------------- step failures


async def test_a_selector_that_never_appears_fails_at_the_step_timeout_naming_it(run) -> None:  # type: ignore[no-untyped-def]
    """The click waits the whole step timeout, then fails with the selector in the message."""
    result = await run(
        """
        - goto: /blank
        - click: "role=button[name='Send']"
          timeout: 1s
        """
    )
    assert result.outcome is Outcome.failed
    step = result.steps[1]
    assert step.message == "selector \"role=button[name='Send']\" did not appear within 1s"
    assert 1.0 <= step.duration < 1.5


async def test_a_disabled_element_is_found_but_not_ready(run) -> None:  # type: ignore[no-untyped-def]
    """An element that exists but never becomes clickable says so, not that it is missing."""
    result = await run(
        """
        - goto: /contact
        - evaluate: "document.querySelector('button').disabled = true"
        - click: button
          timeout: 500ms
        """
    )
    assert result.steps[2].message.startswith("selector 'button' was found but not ready within 500ms: ")
    assert "not enabled" in result.steps[2].message


async def test_a_throwing_expression_an_ambiguous_and_a_bad_selector(run) -> None:  # type: ignore[no-untyped-def]
    """A script error in evaluate and a selector matching two elements fail the step; a selector that does not parse is an error."""
    result = await run("- goto: /search\n- evaluate: \"nothing.here\"\n")
    assert result.outcome is Outcome.failed
    assert result.steps[1].message.startswith("the expression threw ReferenceError: nothing is not defined")
    result = await run("- goto: /contact\n- click: label\n")
    assert result.steps[1].message.startswith("selector 'label' matches more than one element; make it match one")
    result = await run("- goto: /contact\n- click: 'role=button['\n")
    assert result.outcome is Outcome.error
    assert result.steps[1].message.startswith("bad selector 'role=button[': InvalidSelectorError: Unexpected end of selector")


async def test_a_navigation_that_hangs_is_a_step_timeout(run) -> None:  # type: ignore[no-untyped-def]
    """A server that accepts and never answers: goto fails at the step timeout, naming the URL."""
    async with raw_server(reply=None) as port:
        result = await run(f"- goto: http://127.0.0.1:{port}/home\n  timeout: 1s\n")
    assert result.outcome is Outcome.failed
    assert result.steps[0].message == f"http://127.0.0.1:{port}/home did not load within 1s (waiting for load)"
    assert result.steps[0].duration < 1.5


async def test_unreachable_sites_are_errors(run) -> None:  # type: ignore[no-untyped-def]
    """Connection refused and a name that does not resolve mean the harness could not test."""
    with closed_port() as port:
        refused = await run(f"- goto: http://127.0.0.1:{port}/\n")
    assert refused.outcome is Outcome.error
    assert refused.steps[0].message == f"connection refused by 127.0.0.1:{port} (http://127.0.0.1:{port}/)"
    unknown = await run("- goto: http://help.acme.invalid/\n")
    assert unknown.outcome is Outcome.error
    assert unknown.steps[0].message == "DNS lookup failed for help.acme.invalid (http://help.acme.invalid/)"


async def test_an_unknown_saved_value_is_an_error(run) -> None:  # type: ignore[no-untyped-def]
    """A step using a value never saved cannot be tested, and says which values exist."""
    result = await run("- goto: /blank\n- fill: {selector: '#q', value: '{{ ticket }}'}\n")
    assert result.outcome is Outcome.error
    assert "'ticket' is undefined" in result.steps[1].message and "nothing saved yet" in result.steps[1].message


# --------------------------------------------------------------------------- built-in checks


async def test_a_page_that_throws_fails_the_page_error_check_unless_allowed(run) -> None:  # type: ignore[no-untyped-def]
    """An uncaught error fails its step with the error and where it was thrown; an allow regex lets it pass."""
    result = await run("- goto: /throws\n")
    assert result.outcome is Outcome.failed
    assert result.steps[0].message == "page error (ReferenceError: widget is not defined at /app.js:3)"
    allowed = await run("- goto: /throws\n", target="allow_page_errors: ['widget is not']\n")
    assert allowed.outcome is Outcome.passed
    assert texts(allowed) == ["page error (ReferenceError: widget is not defined at /app.js:3), allowed by allow_page_errors"]


async def test_a_missing_resource_fails_the_http_error_check_unless_allowed(run) -> None:  # type: ignore[no-untyped-def]
    """A 404 image is an http error (and not a console error too); allow_http_errors matches its URL."""
    result = await run("- goto: /missing\n")
    assert result.outcome is Outcome.failed
    assert texts(result) == ["http error (404 /team.png)"]
    allowed = await run("- goto: /missing\n", target="allow_http_errors: ['/team\\.png$']\n")
    assert allowed.outcome is Outcome.passed


async def test_console_errors_and_failed_requests_are_their_own_checks(run) -> None:  # type: ignore[no-untyped-def]
    """A console.error and a refused fetch fail two checks, each naming what it saw, each allowed on its own."""
    with closed_port() as port:
        steps = f"- goto: /console?refused={port}\n- expect_text: No agents available\n"
        result = await run(steps)
        allowed = await run(steps, target="allow_console_errors: ['no agents']\nallow_failed_requests: ['ERR_CONNECTION_REFUSED']\n")
    assert result.outcome is Outcome.failed
    seen = {c.name: c.text for s in result.steps for c in s.checks}
    assert seen["console errors"] == "console error (chat widget: no agents online at /console?refused=%d:1)" % port
    assert seen["failed requests"] == f"failed request (net::ERR_CONNECTION_REFUSED for http://127.0.0.1:{port}/api/agents)"
    assert allowed.outcome is Outcome.passed, allowed.message


async def test_navigation_timing_meets_scenario_thresholds(run) -> None:  # type: ignore[no-untyped-def]
    """A slow first byte crosses the ttfb level and degrades the run; load has its own level."""
    result = await run("- goto: /slow?ms=300\n", head="thresholds: {ttfb: 200ms, load: {failed: 10s}}")
    assert result.outcome is Outcome.degraded, result.message
    assert result.measures["ttfb"] >= 0.3
    assert [c.outcome for c in result.checks] == [Outcome.degraded, Outcome.passed]
    assert re.fullmatch(r"ttfb \(\d+ms\) > 200ms \(degraded level\)", result.checks[0].text)


# --------------------------------------------------------------------------- the shared browser


async def test_concurrent_runs_share_one_browser_process(runner: Runner, folder: Path, site: str) -> None:
    """Four runs at once each get their own context in the one browser process."""
    paths = [scenario_file(folder, site, "- goto: /slow?ms=600\n- expect_text: Finally\n") for _ in range(4)]
    scenarios = [load_scenario(path, Project(root=folder)) for path in paths]
    await runner.run_scenario(load_scenario(scenario_file(folder, site, "- goto: /blank\n"), Project(root=folder)))
    before = chromium_processes()
    runs = asyncio.ensure_future(runner.run_many(scenarios))
    await asyncio.sleep(0.4)
    during = chromium_processes()
    results = await runs
    assert [r.outcome for r in results] == [Outcome.passed] * 4
    assert len(before) == 1 and during == before
    starts = [r.started_at.timestamp() for r in results]
    ends = [s + r.duration for s, r in zip(starts, results)]
    assert max(starts) < min(ends)  # all four were open at once


@pytest.mark.parametrize("page", ["/blank", "/slow?ms=3000"], ids=["mid-wait", "mid-navigation"])
async def test_a_renderer_crash_fails_the_run_at_once(run, page: str) -> None:  # type: ignore[no-untyped-def]
    """Killing the page's renderer mid-step (a wait, or a navigation still loading) fails the run with 'the page crashed', long before the step timeout."""
    await run("- goto: /blank\n")  # the browser is up, so the kill below lands mid-step
    killer = asyncio.ensure_future(kill_after(1.0, "renderer"))
    result = await run(f"- goto: '{page}'\n- wait_for: '#never'\n  timeout: 10s\n")
    assert await killer
    assert result.outcome is Outcome.failed, result.message
    assert result.message.endswith(": the page crashed (its renderer process died)"), result.message
    assert result.duration < 4


async def test_a_browser_crash_is_an_error_and_the_next_run_gets_a_new_browser(run) -> None:  # type: ignore[no-untyped-def]
    """Killing the browser mid-step ends that run as `error` at once; the next run passes in a relaunched browser."""
    await run("- goto: /blank\n")
    killer = asyncio.ensure_future(kill_after(0.5, None))
    result = await run("- goto: /blank\n- wait_for: '#never'\n  timeout: 10s\n")
    killed = await killer
    assert len(killed) == 1
    assert result.outcome is Outcome.error
    assert result.message.endswith(": the browser closed or crashed during the step; the next run starts a new one")
    assert result.duration < 3
    again = await run("- goto: /contact\n- expect_title: Contact Acme\n")
    assert again.outcome is Outcome.passed, again.message
    assert chromium_processes() not in ([], killed)


# --------------------------------------------------------------------------- the browser itself


async def test_the_browser_talks_to_nothing_but_the_site(folder: Path, site: str) -> None:
    """Chromium's own net log of a journey names no host but 127.0.0.1: cxtest's switches keep it off the network."""
    net_log = folder / "net-log.json"
    path = scenario_file(folder, site, "- goto: /contact\n- fill: {selector: '#message', value: hi}\n",
                         args=f', "--log-net-log={net_log}"')
    async with Runner(Project(root=folder), artifacts_root=folder / "artifacts") as own:
        result = await own.run_scenario(load_scenario(path, Project(root=folder)))
        await asyncio.sleep(0.3)  # the start-up requests the switches redirect come within the first 100 ms
    assert result.outcome is Outcome.passed, result.message
    events = json.loads(net_log.read_text())["events"]
    urls = {event["params"]["url"] for event in events if isinstance(event.get("params", {}).get("url"), str)}
    hosts = {url.split("/")[2] for url in urls if "://" in url and not url.startswith(("data:", "about:"))}
    assert hosts and {host.rsplit(":", 1)[0] for host in hosts} == {"127.0.0.1"}, sorted(urls)


async def test_a_missing_browser_executable_is_an_error_with_the_fix(runner: Runner, folder: Path, site: str) -> None:
    """A browser that is not installed makes every run `error`, saying how to install or choose one."""
    path = folder / "no_browser.yaml"
    path.write_text(f"name: web\nchannel: web\ntarget: {{url: '{site}', browser: {{executable: /opt/none/chromium}}}}\nsteps:\n  - goto: /blank\n")
    result = await runner.run_scenario(load_scenario(path, Project(root=folder)))
    assert result.outcome is Outcome.error
    assert result.steps[0].message.startswith("browser /opt/none/chromium not found: install Debian's chromium (scripts/setup.sh)")


async def test_the_browser_defaults_to_debians_chromium_or_cxtest_browser(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No browser settings mean /usr/bin/chromium; CXTEST_BROWSER picks another, `playwright` means Playwright's own."""
    from probes.web.model import BrowserSettings

    assert BrowserSettings().executable == "/usr/bin/chromium"
    monkeypatch.setenv("CXTEST_BROWSER", "/opt/chrome/chrome")
    assert BrowserSettings().executable == "/opt/chrome/chrome"
    monkeypatch.setenv("CXTEST_BROWSER", "playwright")
    assert BrowserSettings().executable is None
    assert BrowserSettings(executable="/usr/bin/chromium").executable == "/usr/bin/chromium"


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ("- fill: '#name'", "steps[0].fill"),
        ("- select: {selector: '#topic'}", "give either value (the option's value) or label (its visible text)"),
        ("- wait_for: {url: '**/x', load_state: load}", "wait for one thing"),
        ("- expect_url: {}", "expect_url needs a glob"),
        ("- expect_text: {selector: h1}", "expect_text needs contains, equals or matches"),
        ("- save: {x: {url: true, title: true}}", "save from one of"),
        ("- scroll: down", "a web step needs one of: goto, click"),
    ],
)
async def test_malformed_steps_are_rejected_when_loading(folder: Path, step: str, problem: str) -> None:
    """A step of the wrong shape is a scenario error naming the step, before any browser starts."""
    path = folder / f"bad_{next(_names)}.yaml"
    path.write_text(f"name: web\nchannel: web\ntarget: {{url: 'http://127.0.0.1:1'}}\nsteps:\n  {step}\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, Project(root=folder))
    assert problem in str(caught.value)
