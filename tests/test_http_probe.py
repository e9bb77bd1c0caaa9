"""The HTTP probe against real servers on 127.0.0.1: every failure kind a clear outcome, never a traceback.

Scenarios are written as YAML into tmp_path, loaded with the real loader and run
with the real Runner; the servers are uvicorn apps in a thread (HTTP and HTTPS
with trustme certificates) and raw asyncio servers for broken peers.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import ssl
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import trustme

from cxtest.loader import load_scenario
from cxtest.model import Outcome, Project, Result, Scenario, StepResult
from cxtest.runner import Runner
from servers import PAGE, ThreadedServer, closed_port, make_app, raw_server

CERT_DAYS = 30


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Every server thread (and executor thread) started by this module is gone when it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3
    while (left := [t for t in threading.enumerate() if t not in before and t.is_alive()]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"threads left running: {left}"


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables: keep every request on 127.0.0.1.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app()) as s:
        yield s


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """HTTPS with a certificate for 127.0.0.1/localhost from the trusted CA, valid for CERT_DAYS more days."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    cert = ca.issue_cert("127.0.0.1", "localhost", not_before=now - timedelta(days=1), not_after=now + timedelta(days=CERT_DAYS))
    path = tmp_path_factory.mktemp("tls") / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    with ThreadedServer(make_app(), certfile=str(path)) as s:
        yield s


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


OK_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(root=tmp_path)


_names = itertools.count()


@pytest.fixture
def load(tmp_path: Path, project: Project):  # type: ignore[no-untyped-def]
    """Write YAML into tmp_path (with %URL% etc. filled in) and load it with the real loader."""

    def load(text: str, **values: str) -> Scenario:
        text = textwrap.dedent(text)
        for key, value in values.items():
            text = text.replace(f"%{key.upper()}%", value)
        path = tmp_path / f"scenario_{next(_names)}.yaml"
        path.write_text(text)
        return load_scenario(path, project)

    return load


@pytest.fixture
def run(tmp_path: Path, project: Project):  # type: ignore[no-untyped-def]
    async def run(scenario: Scenario) -> Result:
        async with Runner(project, artifacts_root=tmp_path / "artifacts") as runner:
            return await runner.run_scenario(scenario)

    return run


def check(step: StepResult, name: str) -> Any:
    found = [c for c in step.checks if c.name == name]
    assert len(found) == 1, f"no single check {name!r} in {[c.name for c in step.checks]}"
    return found[0]


def assert_clear(result: Result) -> None:
    """A person-readable reason, and no crash: no traceback, no 'internal error', no crash.txt."""
    assert result.message
    assert "Traceback" not in result.message
    assert "internal error" not in result.message
    assert not any(a.label.endswith("crash.txt") for a in result.artifacts)


# --------------------------------------------------------------------------- failure kinds


async def test_connection_refused_is_an_error(load, run) -> None:  # type: ignore[no-untyped-def]
    """A closed port gives outcome error 'connection refused by 127.0.0.1:PORT (URL)'."""
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}"
        s = load(
            """
            name: refused
            channel: http
            target: { url: "%URL%" }
            steps:
              - request: GET /status
            """,
            url=url,
        )
        started = time.perf_counter()
        result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[0].message == f"connection refused by 127.0.0.1:{port} ({url}/status)"
    assert result.message == f"step 1 (GET /status): connection refused by 127.0.0.1:{port} ({url}/status)"
    assert time.perf_counter() - started < 2
    assert_clear(result)


async def test_connection_refused_on_every_address_is_an_error(load, run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A name with two loopback addresses, both refusing, still says 'connection refused by NAME:PORT (URL)'."""

    def fake_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name != "two-addresses.test":
            raise socket.gaierror(-2, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port))) for ip in ("127.0.0.1", "127.0.0.2")]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with closed_port() as port:
        url = f"http://two-addresses.test:{port}/"
        s = load(
            """
            name: refused twice
            channel: http
            target: { url: "%URL%" }
            steps:
              - request: GET /
            """,
            url=url,
        )
        result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[0].message == f"connection refused by two-addresses.test:{port} ({url})"
    assert_clear(result)


async def test_dns_failure_is_an_error(load, run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A name that does not resolve gives error 'DNS lookup failed for HOST: ...' (resolver patched, nothing leaves the machine)."""
    asked: list[Any] = []
    real = socket.getaddrinfo

    def fake_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (None, "127.0.0.1", "localhost"):
            raise socket.gaierror(-2, "Name or service not known")
        return real(host, *args, **kwargs)

    # httpx -> httpcore -> anyio.getaddrinfo -> loop.getaddrinfo -> socket.getaddrinfo (looked up at call time).
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    s = load(
        """
        name: dns
        channel: http
        target: { url: "http://cxtest-no-such-host.invalid:8080" }
        steps:
          - request: GET /status
        """
    )
    result = await run(s)
    assert asked and all((h.decode() if isinstance(h, bytes) else h) == "cxtest-no-such-host.invalid" for h in asked)
    assert result.outcome is Outcome.error
    assert result.steps[0].message == "DNS lookup failed for cxtest-no-such-host.invalid: [Errno -2] Name or service not known"
    assert_clear(result)


async def test_read_timeout_fails_quickly(load, run) -> None:  # type: ignore[no-untyped-def]
    """A server that accepts and never answers fails the step with 'no answer from URL within 0.5s (waiting for the response)'."""
    async with raw_server(None) as port:
        url = f"http://127.0.0.1:{port}/"
        s = load(
            """
            name: silent
            channel: http
            target: { url: "%URL%" }
            steps:
              - request: GET /
                timeout: 0.5s
              - request: GET /never
            """,
            url=url,
        )
        started = time.perf_counter()
        result = await run(s)
        elapsed = time.perf_counter() - started
    assert result.outcome is Outcome.failed
    assert result.steps[0].outcome is Outcome.failed
    assert result.steps[0].message == f"no answer from {url} within 0.5s (waiting for the response)"
    assert result.steps[1].outcome is Outcome.skipped
    assert 0.45 < elapsed < 1.5
    assert_clear(result)


async def test_garbage_reply_is_malformed_http(load, run) -> None:  # type: ignore[no-untyped-def]
    """Bytes that are not HTTP give error 'malformed HTTP response from URL: ...'."""
    async with raw_server(b"\x00\xffSPLAT this is not http\r\n\r\n") as port:
        url = f"http://127.0.0.1:{port}/"
        s = load(
            """
            name: garbage
            channel: http
            target: { url: "%URL%" }
            steps:
              - request: GET /
            """,
            url=url,
        )
        result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[0].message.startswith(f"malformed HTTP response from {url}: ")
    assert_clear(result)


async def test_hang_up_without_reply_is_an_error(load, run) -> None:  # type: ignore[no-untyped-def]
    """A server that closes the connection without answering gives error naming the disconnect."""
    async with raw_server(None, hang_up=True) as port:
        url = f"http://127.0.0.1:{port}/"
        s = load(
            """
            name: hang up
            channel: http
            target: { url: "%URL%" }
            steps:
              - request: GET /
            """,
            url=url,
        )
        result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[0].message == f"127.0.0.1 closed the connection without answering ({url})"
    assert_clear(result)


async def test_untrusted_ca_is_a_tls_error(load, run, ca_file: str) -> None:  # type: ignore[no-untyped-def]
    """A certificate from a CA we do not trust gives error 'TLS certificate of 127.0.0.1 rejected: <reason>'."""
    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    async with raw_server(OK_REPLY, ssl_context=_server_context(cert)) as port:
        s = load(
            """
            name: untrusted
            channel: http
            target: { url: "https://127.0.0.1:%PORT%", verify: "%CA%" }
            steps:
              - request: GET /
            """,
            port=str(port),
            ca=ca_file,
        )
        result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[0].message == "TLS certificate of 127.0.0.1 rejected: unable to get local issuer certificate"
    assert_clear(result)


async def test_expired_certificate_is_a_tls_error(load, run, ca: trustme.CA, ca_file: str) -> None:  # type: ignore[no-untyped-def]
    """An expired certificate from a trusted CA gives error '... rejected: certificate has expired'."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    cert = ca.issue_cert("127.0.0.1", not_before=now - timedelta(days=20), not_after=now - timedelta(days=1))
    async with raw_server(OK_REPLY, ssl_context=_server_context(cert)) as port:
        s = load(
            """
            name: expired
            channel: http
            target: { url: "https://127.0.0.1:%PORT%", verify: "%CA%" }
            steps:
              - request: GET /
            """,
            port=str(port),
            ca=ca_file,
        )
        result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[0].message == "TLS certificate of 127.0.0.1 rejected: certificate has expired"
    assert_clear(result)


async def test_certificate_for_another_host_is_a_tls_error(load, run, ca: trustme.CA, ca_file: str) -> None:  # type: ignore[no-untyped-def]
    """A trusted certificate naming another host gives error '... rejected: IP address mismatch ...'."""
    cert = ca.issue_cert("elsewhere.test")
    async with raw_server(OK_REPLY, ssl_context=_server_context(cert)) as port:
        s = load(
            """
            name: wrong host
            channel: http
            target: { url: "https://127.0.0.1:%PORT%", verify: "%CA%" }
            steps:
              - request: GET /
            """,
            port=str(port),
            ca=ca_file,
        )
        result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[0].message.startswith("TLS certificate of 127.0.0.1 rejected: IP address mismatch")
    assert_clear(result)


async def test_plain_http_to_a_tls_port_is_an_error(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """https:// against a plain-HTTP server gives error 'TLS handshake with 127.0.0.1 failed: ...' at once."""
    s = load(
        """
        name: not tls
        channel: http
        target: { url: "https://127.0.0.1:%PORT%" }
        steps:
          - request: GET /json
        """,
        port=str(server.port),
    )
    started = time.perf_counter()
    result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[0].message.startswith("TLS handshake with 127.0.0.1 failed: [SSL")
    assert time.perf_counter() - started < 2
    assert_clear(result)


async def test_missing_ca_bundle_is_an_error(load, run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`verify:` naming a file that does not exist gives error naming the file, not an internal error."""
    missing = tmp_path / "no-such-ca.pem"
    with closed_port() as port:
        s = load(
            """
            name: missing ca
            channel: http
            target: { url: "https://127.0.0.1:%PORT%", verify: "%CA%" }
            steps:
              - request: GET /
            """,
            port=str(port),
            ca=str(missing),
        )
        result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[0].message.startswith(f"cannot load the CA bundle {str(missing)!r}: ")
    assert_clear(result)


async def test_html_where_json_expected_fails_with_reason(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """json_path on an HTML body fails with '$.status: body is not JSON (text/html...): ...' in the check text."""
    s = load(
        """
        name: html
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /html
            expect: { json_path: { $.status: up } }
        """,
        url=server.url,
    )
    result = await run(s)
    assert result.outcome is Outcome.failed
    c = check(result.steps[0], "$.status")
    assert c.outcome is Outcome.failed
    assert c.text.startswith("$.status: body is not JSON (text/html; charset=utf-8): '<html><head><title>Acme")
    assert c.expected == {"equals": "up"}
    assert check(result.steps[0], "status").outcome is Outcome.passed
    assert_clear(result)


async def test_server_error_fails_default_status_expectation(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """A 500 with no status expectation fails 'status (500) < 400' and keeps the response as evidence and artifact."""
    s = load(
        """
        name: five hundred
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /error
        """,
        url=server.url,
    )
    result = await run(s)
    assert result.outcome is Outcome.failed
    step = result.steps[0]
    c = check(step, "status")
    assert (c.outcome, c.expected, c.actual, c.text) == (Outcome.failed, 400, 500, "status (500) < 400")
    assert result.message == "step 1 (GET /error): status (500) < 400"
    assert step.evidence["request"].startswith(f"GET {server.url}/error\n")
    assert step.evidence["response"].startswith("HTTP 500 Internal Server Error\n")
    assert step.evidence["response"].endswith("boom: billing backend down")
    [artifact] = [a for a in result.artifacts if a.label == "step-1-response.txt"]
    assert Path(artifact.path).read_text() == step.evidence["response"]
    assert_clear(result)


# --------------------------------------------------------------------------- expectations


async def test_passing_step_has_measures_and_no_evidence(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """A passing step records latency (and no tls_days_left over plain HTTP) but keeps no evidence or artifacts."""
    s = load(
        """
        name: ok
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /json
            expect: { status: 2xx }
        """,
        url=server.url,
    )
    result = await run(s)
    assert result.outcome is Outcome.passed, result.message
    step = result.steps[0]
    assert 0 < step.measures["latency"] < 2
    assert "tls_days_left" not in step.measures
    assert set(result.measures) == {"latency", "duration"}
    assert step.evidence == {} and result.artifacts == ()
    assert result.message == ""


async def test_status_expectations(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """status: a code, a list and a class each pass when met; a wrong code fails with 'status (200) == 404'."""
    s = load(
        """
        name: statuses
        channel: http
        target: { url: "%URL%" }
        steps:
          - { request: GET /json, expect: { status: 200 } }
          - { request: GET /json, expect: { status: [200, 201] } }
          - { request: GET /error, expect: { status: 5xx } }
          - { request: GET /json, expect: { status: 404 } }
        """,
        url=server.url,
    )
    result = await run(s)
    assert [st.outcome for st in result.steps] == [Outcome.passed, Outcome.passed, Outcome.passed, Outcome.failed]
    assert result.steps[3].message == "status (200) == 404"
    assert result.outcome is Outcome.failed


async def test_header_expectations(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """headers: contains, matches and exists: false pass when met, and each fails with its own sentence when not."""
    good = load(
        """
        name: headers ok
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /json
            expect:
              headers:
                content-type: { contains: application/json }
                X-Request-Id: { matches: "^req-\\\\d+$" }
                x-not-sent: { exists: false }
        """,
        url=server.url,
    )
    result = await run(good)
    assert result.outcome is Outcome.passed, result.message
    assert check(result.steps[0], "header x-not-sent").text == "header x-not-sent is absent"

    bad = load(
        """
        name: headers bad
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /json
            expect:
              headers:
                content-type: { contains: text/html }
                x-request-id: { exists: false }
                x-trace: { exists: true }
        """,
        url=server.url,
    )
    result = await run(bad)
    step = result.steps[0]
    assert result.outcome is Outcome.failed
    assert check(step, "header content-type").text == "header content-type ('application/json') contains 'text/html'"
    assert check(step, "header x-request-id").text == "header x-request-id is absent ('req-42')"
    assert check(step, "header x-trace").text == "header x-trace exists (absent)"
    assert all(c.outcome is Outcome.failed for c in step.checks if c.name.startswith("header"))


async def test_json_path_expectations(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """json_path: equals, one_of, gt, length and exists pass when met; a miss fails naming path, actual and expected."""
    s = load(
        """
        name: json
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /json
            expect:
              json_path:
                $.status: up
                $.kind: { one_of: [a, b] }
                $.count: { gt: 2 }
                $.items: { length: 3 }
                $.token: { exists: true }
                $.missing: { exists: false }
          - request: GET /json
            expect:
              json_path:
                $.status: down
                $.count: { gt: 5 }
                $.kind: [x, y]
                $.items: { length: 2 }
                $.missing: { exists: true }
        """,
        url=server.url,
    )
    result = await run(s)
    first, second = result.steps
    assert first.outcome is Outcome.passed, first.message
    assert len(first.checks) == 7  # status + six json_path checks
    assert second.outcome is Outcome.failed
    texts = {c.name: c.text for c in second.checks if c.outcome is Outcome.failed}
    assert texts == {
        "$.status": "$.status ('up') == 'down'",
        "$.count": "$.count (3) > 5",
        "$.kind": "$.kind ('b') in ['x', 'y']",
        "len($.items)": "len($.items) (3) == 2",
        "$.missing": "$.missing exists (absent)",
    }
    c = check(second, "$.count")
    assert (c.expected, c.actual) == (5, 3)


async def test_body_contains_and_matches(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """body_contains (a list) and body_matches pass when met; a missing text fails 'body (...) contains ...'."""
    s = load(
        """
        name: body
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /html
            expect:
              body_contains: [Welcome, Acme]
              body_matches: "<title>Acme \\\\w+</title>"
          - request: GET /html
            expect:
              body_contains: Goodbye
              body_matches: "^\\\\d+$"
        """,
        url=server.url,
    )
    result = await run(s)
    first, second = result.steps
    assert first.outcome is Outcome.passed, first.message
    assert [c.name for c in first.checks] == ["status", "body", "body", "body"]
    assert second.outcome is Outcome.failed
    failed = [c for c in second.checks if c.outcome is Outcome.failed]
    assert [c.expected for c in failed] == ["Goodbye", "^\\d+$"]
    assert failed[0].text.startswith("body ('<html>") and failed[0].text.endswith(" contains 'Goodbye'")
    assert failed[1].text.endswith(" matches '^\\\\d+$'")
    assert failed[0].actual == PAGE


async def test_latency_degraded_and_failed_levels(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """A 200 ms answer is degraded past a 50 ms degraded level and failed past a 100 ms failed level."""
    degraded = load(
        """
        name: slowish
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /slow?ms=200
            expect: { latency: { degraded: 50ms, failed: 5s } }
        """,
        url=server.url,
    )
    result = await run(degraded)
    assert result.outcome is Outcome.degraded
    c = check(result.steps[0], "latency")
    assert c.outcome is Outcome.degraded
    assert c.expected == {"degraded": 0.05, "failed": 5.0}
    assert 0.2 <= c.actual < 1.5
    assert re.fullmatch(r"latency \(\d+ms\) > 50ms \(degraded level\)", c.text)
    assert re.fullmatch(r"step 1 \(GET /slow\?ms=200\): latency \(\d+ms\) > 50ms \(degraded level\)", result.message)
    assert result.steps[0].evidence  # degraded keeps the evidence too

    failed = load(
        """
        name: slow
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /slow?ms=200
            expect: { latency: 100ms }
        """,
        url=server.url,
    )
    result = await run(failed)
    assert result.outcome is Outcome.failed
    c = check(result.steps[0], "latency")
    assert c.outcome is Outcome.failed
    assert re.fullmatch(r"latency \(\d+ms\) > 100ms", c.text)


async def test_tls_days_left(load, run, tls_server: ThreadedServer, ca_file: str) -> None:  # type: ignore[no-untyped-def]
    """Over verified HTTPS the step measures tls_days_left (~the cert's real lifetime) and judges it against its levels."""
    s = load(
        """
        name: tls
        channel: http
        target: { url: "%URL%", verify: "%CA%" }
        steps:
          - request: GET /json
            expect: { tls_days_left: { degraded: 14, failed: 7 } }
          - request: GET /json
            expect: { tls_days_left: { failed: 100000 } }
        """,
        url=tls_server.url,
        ca=ca_file,
    )
    result = await run(s)
    first, second = result.steps
    assert first.outcome is Outcome.passed, first.message
    assert CERT_DAYS - 0.1 < first.measures["tls_days_left"] <= CERT_DAYS
    assert CERT_DAYS - 0.1 < result.measures["tls_days_left"] <= CERT_DAYS
    assert second.outcome is Outcome.failed
    c = check(second, "tls_days_left")
    assert re.fullmatch(r"tls_days_left \(\d+(\.\d+)?\) < 100000", c.text)
    assert c.expected == {"failed": 100000.0}


async def test_tls_days_left_without_verification_fails(load, run, tls_server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """With verify: false the response still passes, but a tls_days_left check fails 'no verified TLS certificate'."""
    s = load(
        """
        name: unverified
        channel: http
        target: { url: "%URL%", verify: false }
        steps:
          - request: GET /json
            expect: { status: 200, tls_days_left: 7 }
        """,
        url=tls_server.url,
    )
    result = await run(s)
    step = result.steps[0]
    assert check(step, "status").outcome is Outcome.passed
    assert check(step, "tls_days_left").text == "tls_days_left: no verified TLS certificate on this response"
    assert result.outcome is Outcome.failed
    assert "tls_days_left" not in step.measures


# --------------------------------------------------------------------------- saved values


async def test_saved_token_is_reused_in_the_next_step(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """`save: {token: $.token}` then `Bearer {{ token }}` in a header signs the second request in."""
    s = load(
        """
        name: sign in
        channel: http
        target: { url: "%URL%" }
        steps:
          - name: sign in
            request: { method: post, url: /login, json: { user: demo } }
            expect: { json_path: { $.expires_in: { ge: 60 } } }
            save: { token: $.token }
          - name: who am I
            request:
              url: /me
              headers: { authorization: "Bearer {{ token }}" }
            expect: { status: 200, json_path: { $.user: demo } }
        """,
        url=server.url,
    )
    result = await run(s)
    assert result.outcome is Outcome.passed, result.message
    assert [st.name for st in result.steps] == ["sign in", "who am I"]


async def test_save_from_header_regex_and_status(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """save from header:NAME, regex:PATTERN and status fills {{ }} in params and headers of the next step."""
    s = load(
        """
        name: save kinds
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /json
            save: { rid: "header:x-request-id", kind: 'regex:"kind": ?"(\\w+)"', code: status }
          - request:
              url: /echo
              params: { rid: "{{ rid }}" }
              headers: { x-kind: "{{ kind }}", x-code: "{{ code }}" }
            expect:
              json_path:
                $.params.rid: req-42
                "$.headers['x-kind']": b
                "$.headers['x-code']": "200"
        """,
        url=server.url,
    )
    result = await run(s)
    assert result.outcome is Outcome.passed, result.message


async def test_undefined_placeholder_is_an_error(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """`{{ undefined }}` gives error naming the variable and listing the values saved so far; nothing is sent."""
    before = server.app.state.hits["/me"]
    s = load(
        """
        name: undefined
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: { method: POST, url: /login }
            save: { token: $.token }
          - request:
              url: /me
              headers: { authorization: "Bearer {{ tokn }}" }
        """,
        url=server.url,
    )
    result = await run(s)
    assert result.outcome is Outcome.error
    assert result.steps[1].outcome is Outcome.error
    assert result.steps[1].message == "'tokn' is undefined in 'Bearer {{ tokn }}' (saved values: token)"
    assert server.app.state.hits["/me"] == before
    assert_clear(result)


async def test_save_of_a_missing_path_fails_the_step(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """save of a JSONPath the body lacks fails 'save token: $.nope not found in the response'; on HTML it says why."""
    s = load(
        """
        name: missing save
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /json
            save: { token: $.nope }
          - request: GET /json
        """,
        url=server.url,
    )
    result = await run(s)
    assert result.outcome is Outcome.failed
    c = check(result.steps[0], "save token")
    assert (c.outcome, c.expected, c.text) == (Outcome.failed, "$.nope", "save token: $.nope not found in the response")
    assert result.steps[1].outcome is Outcome.skipped

    html = load(
        """
        name: save from html
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /html
            save: { token: $.token }
        """,
        url=server.url,
    )
    result = await run(html)
    c = check(result.steps[0], "save token")
    assert c.text.startswith("save token: $.token not found in the response: body is not JSON (text/html")


# --------------------------------------------------------------------------- the run around the steps


async def test_failed_step_stops_the_scenario(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """After a failed step the later steps are reported skipped and never reach the server."""
    before = server.app.state.hits["/echo"]
    s = load(
        """
        name: stops
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /json
          - request: GET /error
          - request: GET /echo
          - name: last
            request: GET /echo
        """,
        url=server.url,
    )
    result = await run(s)
    assert [st.outcome for st in result.steps] == [Outcome.passed, Outcome.failed, Outcome.skipped, Outcome.skipped]
    assert [st.name for st in result.steps] == ["GET /json", "GET /error", "GET /echo", "last"]
    assert result.outcome is Outcome.failed
    assert result.message == "step 2 (GET /error): status (500) < 400"
    assert server.app.state.hits["/echo"] == before


async def test_retry_after_a_flaky_failure_passes_and_is_marked_flaky(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """With retries: 1, an endpoint failing once then passing gives passed, flaky=True, attempts=2."""
    s = load(
        """
        name: flaky
        channel: http
        target: { url: "%URL%" }
        retries: 1
        steps:
          - request: GET /flaky?key=%KEY%
            expect: { status: 200 }
        """,
        url=server.url,
        key=uuid.uuid4().hex,
    )
    result = await run(s)
    assert (result.outcome, result.flaky, result.attempts) == (Outcome.passed, True, 2)
    assert result.message == ""


async def test_retries_exhausted_stay_failed(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """A step failing on every attempt stays failed after its retries, attempts counted, not flaky."""
    s = load(
        """
        name: always down
        channel: http
        target: { url: "%URL%" }
        retries: 2
        steps:
          - request: GET /error
        """,
        url=server.url,
    )
    result = await run(s)
    assert (result.outcome, result.flaky, result.attempts) == (Outcome.failed, False, 3)


async def test_scenario_timeout_stops_a_slow_step(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """`timeout: 1s` with a 3 s step fails 'scenario timeout (1s) reached during this step' within ~1.5 s."""
    s = load(
        """
        name: too slow
        channel: http
        target: { url: "%URL%" }
        timeout: 1s
        steps:
          - request: GET /slow?ms=3000
          - request: GET /json
        """,
        url=server.url,
    )
    started = time.perf_counter()
    result = await run(s)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.5
    assert result.outcome is Outcome.failed
    assert result.steps[0].message == "scenario timeout (1s) reached during this step"
    assert result.steps[1].outcome is Outcome.skipped
    assert "scenario timeout" in result.message
    assert_clear(result)


async def test_duration_threshold_fails_a_slow_run(load, run, server: ThreadedServer) -> None:  # type: ignore[no-untyped-def]
    """thresholds: {duration: {failed: 10ms}} fails a run whose step takes 100 ms, with 'duration (...) > 10ms'."""
    s = load(
        """
        name: threshold
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /slow?ms=100
        thresholds: { duration: { failed: 10ms }, latency: 5s }
        """,
        url=server.url,
    )
    result = await run(s)
    assert result.steps[0].outcome is Outcome.passed
    assert result.outcome is Outcome.failed
    duration, latency = result.checks
    assert duration.outcome is Outcome.failed and latency.outcome is Outcome.passed
    assert re.fullmatch(r"duration \(\d+ms\) > 10ms", duration.text)
    assert result.message == duration.text


async def test_secrets_never_reach_evidence(load, run, server: ThreadedServer, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A ${env:...} secret sent in a header never reaches the evidence or its artifact file: its placeholder does."""
    secret = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("CXTEST_TEST_API_KEY", secret)
    s = load(
        """
        name: secret
        channel: http
        target: { url: "%URL%", headers: { x-api-key: "${env:CXTEST_TEST_API_KEY}" } }
        steps:
          - request: GET /echo
            expect: { status: 201 }
        """,
        url=server.url,
    )
    result = await run(s)
    evidence = result.steps[0].evidence
    artifact = Path(result.artifacts[0].path).read_text()
    for text in (evidence["request"], evidence["response"], result.message, artifact):
        assert secret not in text
    assert "x-api-key: ${env:CXTEST_TEST_API_KEY}" in evidence["request"]


# --------------------------------------------------------------------------- shared resources


async def test_one_client_serves_many_concurrent_runs(load, tmp_path: Path, project: Project, server: ThreadedServer) -> None:
    """50 concurrent runs share one httpx client, whose pool keeps connections to at most `concurrency`."""
    tag = uuid.uuid4().hex
    base = load(
        """
        name: many
        channel: http
        target: { url: "%URL%" }
        steps:
          - request: GET /json?tag=%TAG%
            expect: { json_path: { $.status: up } }
        """,
        url=server.url,
        tag=tag,
    )
    scenarios = [base.model_copy(update={"id": f"many-{i}", "name": f"many {i}"}) for i in range(50)]
    async with Runner(project, artifacts_root=tmp_path / "artifacts", concurrency=10) as runner:
        results = await runner.run_many(scenarios)
        probe = runner.probe("http")
        assert len(probe._clients) == 1
        [client] = probe._clients.values()
        await runner.run_many(scenarios[:5])
        assert list(probe._clients.values()) == [client]
    assert [r.outcome for r in results] == [Outcome.passed] * 50
    assert len(server.app.state.peers[tag]) <= 10
    assert client.is_closed and not probe._clients


async def test_server_helpers_stop_cleanly() -> None:
    """The test servers free their ports and threads when their context ends."""
    with ThreadedServer(make_app()) as s:
        port, thread = s.port, s._thread
        assert thread is not None and thread.is_alive()
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not thread.is_alive() and not s.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    async with raw_server(None) as raw_port:
        _, writer = await asyncio.open_connection("127.0.0.1", raw_port)
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", raw_port), timeout=1).close()
