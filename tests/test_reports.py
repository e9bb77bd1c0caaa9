"""Report writers: JUnit XML, JSON and the self-contained HTML report."""

from __future__ import annotations

import json
import re
import struct
import time
import xml.etree.ElementTree as ET
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import cxtest.logs
from cxtest.model import Artifact, CheckResult, Outcome, Result, StepResult
from cxtest.reports import results_to_dict, write_html, write_json, write_junit
from cxtest.reports.html import render_html
from cxtest.reports.junit import classname, junit_xml

T0 = datetime(2025, 3, 1, 9, 30, tzinfo=timezone.utc)


def tiny_png() -> bytes:
    """A valid 2x2 red PNG, built by hand so the test needs no image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def check(outcome: Outcome, text: str, expected=None, actual=None, name: str = "check") -> CheckResult:
    return CheckResult(name=name, outcome=outcome, expected=expected, actual=actual, text=text)


def step(index: int, name: str, outcome: Outcome, started: float, duration: float, **kw) -> StepResult:
    return StepResult(index=index, name=name, outcome=outcome, started=started, duration=duration, **kw)


@pytest.fixture(autouse=True)
def clean_secrets():
    cxtest.logs.forget_secrets()
    yield
    cxtest.logs.forget_secrets()


@pytest.fixture
def results(tmp_path: Path) -> list[Result]:
    return sample_results(tmp_path)


def sample_results(tmp_path: Path) -> list[Result]:
    """A passed, a degraded, a failed (checks, evidence, screenshot, page source), an error and a flaky run."""
    shot = tmp_path / "artifacts" / "login.png"
    shot.parent.mkdir()
    shot.write_bytes(tiny_png())
    page = tmp_path / "artifacts" / "page.html"
    page.write_text("<html><body>Service unavailable</body></html>")
    common = dict(location="eu-1", run_id="run-42")
    passed = Result(
        scenario_id="api-health", scenario_name="API health", channel="http", file="scenarios/demo/api.yaml",
        outcome=Outcome.passed, started_at=T0, duration=0.42,
        steps=(step(0, "get /health", Outcome.passed, 0.0, 0.12,
                    checks=(check(Outcome.passed, "status is 200", 200, 200),)),),
        **common,
    )
    degraded = Result(
        scenario_id="billing-ivr", scenario_name="Billing line reaches billing queue", channel="ivr",
        file="scenarios/demo/billing.yaml", outcome=Outcome.degraded, started_at=T0 + timedelta(seconds=1),
        duration=41.5, message="duration 41.5s above the 40s threshold",
        steps=(
            step(0, "welcome", Outcome.passed, 0.0, 3.2, checks=(check(Outcome.passed, "prompt matched 'Welcome'"),)),
            step(1, "", Outcome.degraded, 3.2, 2.0,
                 checks=(check(Outcome.degraded, "MOS 3.4 below 3.6", 3.6, 3.4, "mos"),), measures={"mos": 3.4}),
        ),
        checks=(check(Outcome.degraded, "run took 41.5s, degraded above 40s", 40.0, 41.5, "duration"),),
        **common,
    )
    failed = Result(
        scenario_id="web-login", scenario_name="Customer logs in", channel="web", file="scenarios/demo/login.yaml",
        outcome=Outcome.failed, started_at=T0 + timedelta(seconds=2), duration=6.3,
        message="step 2 (login): expected text 'Welcome back' not found",
        steps=(
            step(0, "open", Outcome.passed, 0.0, 1.1),
            step(1, "login", Outcome.failed, 1.1, 0.12,
                 checks=(
                     check(Outcome.passed, "status is 200", 200, 200),
                     check(Outcome.failed, "expected text 'Welcome back' not found", "Welcome back",
                           {"title": "Error", "codes": [503]}),
                 ),
                 evidence={"page text": "Service unavailable, try later"}),
        ),
        artifacts=(
            Artifact(label="login page", path=str(shot), kind="screenshot"),
            Artifact(label="page source", path=str(page), kind="html"),
        ),
        **common,
    )
    error = Result(
        scenario_id="chat-bot", scenario_name="Bot answers balance", channel="chat", file="scenarios/demo/bot.yaml",
        outcome=Outcome.error, started_at=T0 + timedelta(seconds=3), duration=10.0,
        message="target unreachable: connection refused at 127.0.0.1:5005",
        steps=(step(0, "hello", Outcome.error, 0.0, 10.0, message="connection refused"),),
        **common,
    )
    flaky = Result(
        scenario_id="api-orders", scenario_name="Orders API", channel="http", file="scenarios/demo/orders.yaml",
        outcome=Outcome.passed, started_at=T0 + timedelta(seconds=4), duration=0.8, attempts=2, flaky=True,
        steps=(step(0, "list", Outcome.passed, 0.0, 0.3),),
        **common,
    )
    return [passed, degraded, failed, error, flaky]


def by_name(root: ET.Element) -> dict[str, ET.Element]:
    return {case.get("name"): case for case in root.iter("testcase")}


# --------------------------------------------------------------------------- JUnit


def test_junit_totals_and_suites(results, tmp_path):
    """JUnit has overall totals on <testsuites> and one <testsuite> per channel with its own totals."""
    path = tmp_path / "out" / "junit.xml"
    write_junit(results, path)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "1", "0")
    assert float(root.get("time")) == pytest.approx(0.42 + 41.5 + 6.3 + 10.0 + 0.8, abs=0.01)
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"http", "ivr", "web", "chat"}
    assert suites["http"].get("tests") == "2"
    assert suites["web"].get("failures") == "1" and suites["chat"].get("errors") == "1"
    assert suites["http"].get("timestamp") == T0.isoformat(timespec="seconds")


def test_junit_testcase_names_classnames_and_time(results):
    """Each testcase is named after the scenario, classname is the file path in dots, time is the duration."""
    cases = by_name(ET.fromstring(junit_xml(results)))
    case = cases["Customer logs in"]
    assert case.get("classname") == "scenarios.demo.login"
    assert case.get("time") == "6.300"


def test_junit_failure_carries_message_and_failed_check_texts(results):
    """A failed result becomes <failure type="failed"> with its message and every failed check's text."""
    case = by_name(ET.fromstring(junit_xml(results)))["Customer logs in"]
    failure = case.find("failure")
    assert failure is not None and failure.get("type") == "failed"
    assert failure.get("message") == "step 2 (login): expected text 'Welcome back' not found"
    assert "step 2 (login): expected text 'Welcome back' not found" in failure.text
    assert "status is 200" not in failure.text  # passed checks are not failure reasons
    out = case.find("system-out").text
    assert "step 2 (login) failed 120ms" in out
    assert "[failed] expected text 'Welcome back' not found" in out
    assert re.search(r"^\[\[ATTACHMENT\|.*login\.png\]\]$", out, re.M)


def test_junit_error_and_degraded(results):
    """error -> <error>; degraded passes with property outcome=degraded and the reasons in system-out."""
    cases = by_name(ET.fromstring(junit_xml(results)))
    error = cases["Bot answers balance"].find("error")
    assert error is not None and "connection refused at 127.0.0.1:5005" in error.get("message")
    degraded = cases["Billing line reaches billing queue"]
    assert degraded.find("failure") is None and degraded.find("error") is None
    props = {p.get("name"): p.get("value") for p in degraded.iter("property")}
    assert props["outcome"] == "degraded"
    out = degraded.find("system-out").text
    assert "degraded: duration 41.5s above the 40s threshold" in out
    assert "step 2: MOS 3.4 below 3.6" in out  # unnamed step: just its number
    assert "run took 41.5s, degraded above 40s" in out


def test_junit_flaky_property_and_attempts(results):
    """A flaky pass carries flaky=true, the attempts count and 'flaky: passed on attempt N'."""
    case = by_name(ET.fromstring(junit_xml(results)))["Orders API"]
    assert case.find("failure") is None
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props == {"flaky": "true", "attempts": "2"}
    assert "flaky: passed on attempt 2" in case.find("system-out").text


def test_junit_strips_characters_xml_forbids():
    """Control characters from a garbage reply never make the XML unparsable."""
    r = Result(scenario_id="x", scenario_name="bad\x00name", channel="http", file="a.yaml",
               outcome=Outcome.failed, started_at=T0, duration=1.0, message="got \x1b[31mred\x1b[0m")
    root = ET.fromstring(junit_xml([r]))
    assert "red" in root.find(".//failure").get("message")


def test_junit_classname_forms():
    """Classnames come from the file path: suffix dropped, separators and inner dots become dots/underscores."""
    def r(file):
        return Result(scenario_id="x", scenario_name="x", channel="ivr", file=file,
                      outcome=Outcome.passed, started_at=T0, duration=0.0)

    assert classname(r("scenarios/demo/billing.yaml")) == "scenarios.demo.billing"
    assert classname(r("./scenarios/billing.v2.yml")) == "scenarios.billing_v2"
    assert classname(r("scenarios\\win\\x.yaml")) == "scenarios.win.x"
    assert classname(r("<memory>")) == "cxtest.ivr"


def test_all_writers_accept_no_results(tmp_path):
    """An empty run still produces a valid JUnit file, JSON document and HTML page."""
    write_junit([], tmp_path / "j.xml")
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("tests") == "0" and root.find("testsuite") is not None
    write_json([], tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["total"] == 0
    write_html([], tmp_path / "r.html")
    assert "No results" in (tmp_path / "r.html").read_text()


# --------------------------------------------------------------------------- JSON


def test_json_round_trips_with_summary(results, tmp_path):
    """The JSON report loads back with per-outcome counts, totals, ISO datetimes and enum values."""
    path = tmp_path / "report.json"
    write_json(results, path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    summary = doc["summary"]
    assert summary["total"] == 5
    assert (summary["passed"], summary["degraded"], summary["failed"], summary["error"], summary["skipped"]) == (
        2, 1, 1, 1, 0)
    assert summary["flaky"] == 1 and summary["ok"] is False
    assert summary["duration"] == pytest.approx(59.02)
    assert summary["run_ids"] == ["run-42"] and summary["locations"] == ["eu-1"]
    assert datetime.fromisoformat(doc["generated_at"]).tzinfo is not None
    failed = doc["results"][2]
    assert failed["outcome"] == "failed"
    assert datetime.fromisoformat(failed["started_at"]) == T0 + timedelta(seconds=2)
    login = failed["steps"][1]
    assert login["label"] == "step 2 (login)"
    assert login["checks"][1]["actual"] == {"title": "Error", "codes": [503]}
    assert login["evidence"] == {"page text": "Service unavailable, try later"}
    assert failed["artifacts"][0]["kind"] == "screenshot"
    assert doc["results"][1]["steps"][1]["measures"] == {"mos": 3.4}


def test_json_keeps_odd_check_values_safe():
    """Expected/actual of any type serialise: datetimes ISO, sets as lists, inf as null, objects via str()."""

    class Opaque:
        def __str__(self) -> str:
            return "opaque-thing"

    odd = check(Outcome.failed, "odd", expected={"when": T0, "set": {3, 1}, "inf": float("inf")},
                actual=(Opaque(), b"bytes", Path("/tmp/x"), Outcome.failed))
    r = Result(scenario_id="x", scenario_name="x", channel="http", file="x.yaml", outcome=Outcome.failed,
               started_at=T0, duration=1.0, checks=(odd,), measures={"latency": float("nan")})
    doc = json.loads(json.dumps(results_to_dict([r]), allow_nan=False))
    c = doc["results"][0]["checks"][0]
    assert c["expected"] == {"when": T0.isoformat(), "set": [1, 3], "inf": None}
    assert c["actual"] == ["opaque-thing", "bytes", "/tmp/x", "failed"]
    assert doc["results"][0]["measures"] == {"latency": None}


# --------------------------------------------------------------------------- HTML


def test_html_contains_failure_details_chart_and_screenshot(results, tmp_path):
    """The HTML shows the failed check text, evidence, an inline SVG chart and the screenshot as base64."""
    path = tmp_path / "report.html"
    write_html(results, path, title="Nightly CX")
    html = path.read_text(encoding="utf-8")
    assert "<title>Nightly CX</title>" in html
    assert "expected text &#39;Welcome back&#39; not found" in html
    assert "Service unavailable, try later" in html
    assert re.search(r"<details><summary>evidence: page text", html)
    assert "<svg" in html and "</svg>" in html and "<?xml" not in html
    import base64

    assert "data:image/png;base64," + base64.b64encode(tiny_png()).decode() in html
    assert "&lt;html&gt;&lt;body&gt;Service unavailable" in html  # html artifact inlined as escaped text
    assert 'id="r3"' in html and 'href="#r3"' in html  # table row links to its failure write-up
    assert 'id="r5"' not in html  # the flaky pass is not a failure


def test_html_has_no_external_resources(results, tmp_path):
    """Nothing in the page is loaded from the network: no src/href/url() to http(s) or //host."""
    write_html(results, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"<link\b|@import", html, re.I)


def test_html_escapes_markup_in_messages(tmp_path):
    """A <script> in a message, name or evidence is shown as text, never run."""
    payload = "<script>alert('pwned')</script>"
    r = Result(scenario_id="x", scenario_name=f"name {payload}", channel="chat", file="x.yaml",
               outcome=Outcome.failed, started_at=T0, duration=1.0, message=f"bot said {payload}",
               steps=(step(0, "ask", Outcome.failed, 0.0, 1.0, checks=(check(Outcome.failed, payload, payload, payload),),
                           evidence={"reply": payload}),))
    html = render_html([r])
    assert payload not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html


def test_html_artifacts_missing_text_and_recordings(tmp_path, monkeypatch):
    """Missing files are noted; long text is cut at 64 KB; small WAVs inline as <audio>, large ones are linked."""
    import cxtest.reports.html as html_mod

    (tmp_path / "log.txt").write_text("x" * 70_000 + "TAIL-MARKER")
    (tmp_path / "small.wav").write_bytes(b"RIFF" + b"\x00" * 100)
    (tmp_path / "big.wav").write_bytes(b"RIFF" + b"\x00" * 2000)
    monkeypatch.setattr(html_mod, "AUDIO_INLINE_LIMIT", 1000)
    r = Result(scenario_id="x", scenario_name="x", channel="ivr", file="x.yaml", outcome=Outcome.failed,
               started_at=T0, duration=1.0, message="m",
               artifacts=(Artifact("gone", str(tmp_path / "nope.png"), "screenshot"),
                          Artifact("log", str(tmp_path / "log.txt"), "text"),
                          Artifact("greeting", str(tmp_path / "small.wav"), "recording"),
                          Artifact("whole call", str(tmp_path / "big.wav"), "recording")))
    out = tmp_path / "reports" / "r.html"
    write_html([r], out)
    html = out.read_text()
    assert "nope.png" in html and "file not found" in html
    assert "TAIL-MARKER" not in html and "truncated to 64 KB" in html
    assert '<audio controls preload="none" src="data:audio/wav;base64,' in html
    assert 'href="../big.wav"' in html  # linked relative to the report, so the folder can move


def test_html_chart_falls_back_to_slowest_50(tmp_path):
    """With more than 50 results the chart shows the 50 slowest and says so."""
    many = [Result(scenario_id=f"s{i}", scenario_name=f"scenario {i:03d}", channel="http", file="x.yaml",
                   outcome=Outcome.passed, started_at=T0, duration=float(i),
                   steps=(step(0, "a", Outcome.passed, 0.0, i / 2),)) for i in range(60)]
    html = render_html(many)
    assert "Showing the 50 slowest of 60 scenarios" in html
    svg = html[html.index("<svg"): html.index("</svg>")]
    assert "scenario 059" in svg and "scenario 010" in svg and "scenario 009" not in svg


def test_secret_never_reaches_any_report(results, tmp_path):
    """A registered secret is replaced by its placeholder in the JUnit, JSON and HTML outputs."""
    cxtest.logs.register_secret("s3cr3tvalue", "${env:TOKEN}")
    leaky = Result(
        scenario_id="leak", scenario_name="Token s3cr3tvalue in name", channel="http", file="scenarios/leak.yaml",
        outcome=Outcome.failed, started_at=T0, duration=1.0, message="401 with Bearer s3cr3tvalue",
        steps=(step(0, "call s3cr3tvalue", Outcome.failed, 0.0, 1.0, message="sent s3cr3tvalue",
                    checks=(check(Outcome.failed, "header was s3cr3tvalue", "s3cr3tvalue", {"auth": "s3cr3tvalue"}),),
                    evidence={"request": "Authorization: Bearer s3cr3tvalue"}, measures={"s3cr3tvalue": 1.0}),),
        checks=(check(Outcome.failed, "s3cr3tvalue", ["s3cr3tvalue"], "s3cr3tvalue"),),
        artifacts=(Artifact("dump s3cr3tvalue", str(tmp_path / "dump.txt"), "text"),),
        tags=("s3cr3tvalue",), run_id="s3cr3tvalue", location="s3cr3tvalue",
    )
    (tmp_path / "dump.txt").write_text("token=s3cr3tvalue\n")
    everything = [*results, leaky]
    write_junit(everything, tmp_path / "j.xml")
    write_json(everything, tmp_path / "r.json")
    write_html(everything, tmp_path / "r.html", title="run with s3cr3tvalue")
    for name in ("j.xml", "r.json", "r.html"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert "s3cr3tvalue" not in text, name
        assert "${env:TOKEN}" in text, name


def test_html_renders_1000_results_quickly(tmp_path):
    """1,000 results (a tenth failing, five steps each) render to HTML in under 5 seconds."""
    outcomes = [Outcome.passed] * 8 + [Outcome.degraded, Outcome.failed]
    many = []
    for i in range(1000):
        outcome = outcomes[i % len(outcomes)]
        steps = tuple(
            step(k, f"s{k}", outcome if k == 4 else Outcome.passed, k * 0.5, 0.4,
                 checks=(check(outcome if k == 4 else Outcome.passed, f"check {k} of {i}", 1, 2),),
                 evidence={"transcript": "hello " * 50} if k == 4 else {})
            for k in range(5)
        )
        many.append(Result(scenario_id=f"s{i}", scenario_name=f"Scenario {i}", channel="chat", file=f"s/{i}.yaml",
                           outcome=outcome, started_at=T0 + timedelta(seconds=i), duration=2.5 + (i % 7),
                           message="" if outcome is Outcome.passed else f"problem in {i}", steps=steps))
    render_html(many[:2])  # warm imports (matplotlib) so the figure measures rendering, not start-up
    start = time.perf_counter()
    write_html(many, tmp_path / "big.html")
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"{elapsed:.2f}s"
    html = (tmp_path / "big.html").read_text()
    assert html.count("<svg") == 1 and "Showing the 50 slowest of 1000" in html
