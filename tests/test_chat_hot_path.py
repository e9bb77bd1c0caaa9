"""What the chat probe's per-message shortcuts must keep: the same answers as the general machinery they skip.

JSONPath: probes.http._SimplePath against python-jsonpath. Templates: probes.http.render's
`{{ name }}` shortcut against Jinja2. HTTP: probes/chat/connectors/http1.py's keep-alive
client against uvicorn (tests/servers.py) and scripted raw peers on 127.0.0.1 for the
answers a bot should not give.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import jinja2
import jsonpath
import pytest
import trustme

from cxtest.errors import ProbeError, ProtocolError, TargetUnreachable
from probes.chat.connectors.http1 import Pool, split_url
from probes.chat import ChatProbe
from probes.chat.connectors.rest import _json, _tls
from probes.chat.model import BotExpect
from probes.http import _compiled, _SimplePath, render
from servers import ThreadedServer, closed_port, make_app, raw_server

DOCUMENTS = [
    {"messages": [{"text": "Hi", "buttons": ["A", {"title": "B"}]}, {"text": "How can I help?"}], "intent": {"name": "greet", "confidence": 0.9}},
    {"messages": {"first": {"text": "x"}, "second": {"text": "y"}}, "intent": None},
    {"a": 1}, {"a": None}, {"a": [1, 2]}, {"a": {"x": 1, "y": 2}}, {"a": "str"}, {"0": "zero"}, {"a": True},
    [1, 2], [[1], [2]], [{"text": "in a list"}], "abc", None, 5, {}, [],
]
SIMPLE_PATHS = ["$", "$.a", "$.a[*]", "$[*]", "$.*", "$.a.*", "$[0]", "$.a[0]", "$.a.x", "$[1]", "$.messages[*]",
                "$.messages[*].text", "$.messages[0].buttons[*]", "$.intent.name", "$.intent.confidence", "$.text"]


@pytest.mark.parametrize("path", SIMPLE_PATHS)
def test_simple_paths_find_what_python_jsonpath_finds(path: str) -> None:
    """Names, wildcards and indexes are resolved without python-jsonpath, with its results in its order on every shape."""
    compiled = _compiled(path)
    assert isinstance(compiled, _SimplePath), f"expected {path!r} to take the shortcut, got {type(compiled).__name__}"
    for document in DOCUMENTS:
        expected = jsonpath.compile(path).findall(document)
        assert compiled.findall(document) == expected, f"{path!r} on {document!r}: expected {expected!r}"


@pytest.mark.parametrize("path", ["$..text", "$.messages[?(@.text)]", "$['a']", "$.a[-1]", "$.true", "$.a[0:1]"])
def test_other_paths_go_to_python_jsonpath(path: str) -> None:
    """Anything beyond names, wildcards and indexes is python-jsonpath's own compiled path."""
    assert not isinstance(_compiled(path), _SimplePath), f"{path!r} took the shortcut"
    assert _compiled(path).findall(DOCUMENTS[0]) == jsonpath.compile(path).findall(DOCUMENTS[0])


JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
VALUES = {"balance": 120, "name": "Ann", "none": None, "flag": True, "ratio": 0.5, "items": [1, 2], "pair": (1, 2), "html": "<b>&</b>"}
TEMPLATES = [
    "pay {{ balance }}", "{{balance}}", "{{ name }} has {{ balance }} pounds{{ none }}", "{{ flag }} {{ ratio }} {{ items }}",
    "{{ html }}", "trailing newline {{ name }}\n", "windows\r\nline {{ name }}", "{{ name | upper }}", "{{ balance + 1 }}",
    "{% if flag %}yes{% endif %} {{ name }}", "{# note #}{{ name }}", "{{ true }} {{ None }}", "a }} b {{ name }}", "{{ name }}}}",
    "100% sure, {{ name }} %s %(x)s", "{{ pair }}", "{{ pair }} and {{ pair }}",
]


@pytest.mark.parametrize("template", TEMPLATES)
def test_rendering_gives_what_jinja2_gives(template: str) -> None:
    """Bare {{ name }} placeholders are filled without Jinja2, to the same text; everything else is still Jinja2's."""
    assert render(template, VALUES) == JINJA.from_string(template).render(VALUES)


def test_a_missing_value_is_jinja2s_error_naming_what_was_saved() -> None:
    """A placeholder with no saved value fails as before: Jinja2's message and the saved names."""
    with pytest.raises(ProbeError, match=r"'balance' is undefined in 'pay \{\{ balance \}\}' \(saved values: name\)"):
        render("pay {{ balance }}", {"name": "Ann"})


def test_filled_expectations_are_validated_once_per_set_of_values() -> None:
    """A bot step's {{ saved }} values are filled in; the same values give back the same model, new values a new one."""
    expect = BotExpect.model_validate({"contains": "payment of {{ balance }} pounds", "save": {"ref": "regex:(\\d+)"}})
    probe = ChatProbe()
    first = probe.filled(expect, {"balance": 42})
    assert (first.contains, first.save) == ("payment of 42 pounds", {"ref": "regex:(\\d+)"})
    assert probe.filled(expect, {"balance": 42}) is first
    assert probe.filled(expect, {"balance": 7}).contains == "payment of 7 pounds"
    plain = BotExpect.model_validate({"contains": "hello"})
    assert probe.filled(plain, {"balance": 42}) is plain


def test_a_bot_answer_in_utf16_is_still_read() -> None:
    """orjson reads UTF-8 answers; an answer in another encoding JSON allows is read as json did."""
    document = {"messages": [{"text": "Grüße"}]}
    assert _json(json.dumps(document).encode()) == document
    assert _json(json.dumps(document, ensure_ascii=False).encode("utf-16")) == document
    with pytest.raises(ValueError):
        _json(b"<html>")


# --------------------------------------------------------------------------- the HTTP client


@pytest.fixture(scope="module")
def app_server() -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app()) as server:
        yield server


async def test_one_connection_serves_one_request_after_another(app_server: ThreadedServer) -> None:
    """Five requests in a row reuse one keep-alive connection (the server sees one client port)."""
    pool = Pool()
    try:
        for _ in range(5):
            response = await pool.request("GET", f"{app_server.url}/json?tag=reuse", {}, None)
            assert response.status == 200 and json.loads(response.body)["status"] == "up", response
    finally:
        await pool.close()
    assert len(app_server.app.state.peers["reuse"]) == 1, app_server.app.state.peers["reuse"]


async def test_requests_in_flight_together_get_their_own_connections(app_server: ThreadedServer) -> None:
    """Three requests at once take three connections, each getting its own answer."""
    pool = Pool()
    try:
        answers = await asyncio.gather(*(pool.request("GET", f"{app_server.url}/json?tag=together", {}, None) for _ in range(3)))
    finally:
        await pool.close()
    assert [json.loads(a.body)["status"] for a in answers] == ["up"] * 3
    assert len(app_server.app.state.peers["together"]) == 3, app_server.app.state.peers["together"]


async def test_the_request_carries_host_headers_body_and_query(app_server: ThreadedServer) -> None:
    """Host, a default User-Agent, the target's headers and the JSON body arrive as sent."""
    pool = Pool()
    body = json.dumps({"text": "hi"}).encode()
    try:
        response = await pool.request("POST", f"{app_server.url}/echo?q=1", {"X-Bot-Key": "k1", "Content-Type": "application/json"}, body)
    finally:
        await pool.close()
    seen = json.loads(response.body)
    host = app_server.url.removeprefix("http://")
    assert seen["headers"]["host"] == host and seen["headers"]["user-agent"] == "cxtest", seen
    assert seen["headers"]["x-bot-key"] == "k1" and seen["headers"]["content-length"] == str(len(body)), seen
    assert seen["params"] == {"q": "1"}, seen


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n", b"hello, world"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", b"hello"),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the connection closes", b"until the connection closes"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", b"{}"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(gzip.compress(b"zipped")), gzip.compress(b"zipped")), b"zipped"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
    ids=["chunked", "content-length", "close-delimited", "100-continue", "gzip", "no-content"],
)
async def test_every_way_a_body_can_end_is_read_whole(reply: bytes, expected: bytes) -> None:
    """Chunked (with an extension), Content-Length, read-to-close, after a 100 Continue, gzip, 204: the whole body."""
    pool = Pool()
    try:
        async with raw_server(reply) as port:
            response = await pool.request("POST", f"http://127.0.0.1:{port}/bot", {}, b"{}")
    finally:
        await pool.close()
    assert response.body == expected, response


async def test_a_connection_the_server_closed_is_not_used_again() -> None:
    """The peer closes after each answer: the next request opens a new connection instead of failing on the old one."""
    pool = Pool()
    try:
        async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}") as port:
            for _ in range(3):
                response = await pool.request("POST", f"http://127.0.0.1:{port}/bot", {}, b"{}")
                assert response.body == b"{}", response
                await asyncio.sleep(0.05)  # the peer's close arrives while the connection is idle
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("reply", "hang_up", "says"),
    [
        (None, True, "closed the connection without answering"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"cut\":", False, "closed the connection in the middle of its answer"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False, "the bot's answer is not HTTP: 'SSH-2.0-OpenSSH_9.6'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", False, "malformed HTTP (Invalid character in Content-Length)"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False, "malformed HTTP (Invalid character in chunk size)"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"x" * 70_000 + b"\r\n\r\n", False, "no end of headers in its first 65536 bytes"),
    ],
    ids=["hang-up", "cut-short", "not-http", "bad-length", "bad-chunk", "endless-headers"],
)
async def test_an_answer_that_is_not_a_whole_http_response_is_a_protocol_error(reply: bytes | None, hang_up: bool, says: str) -> None:
    """A peer that hangs up, stops mid-body or speaks something else: ProtocolError saying which."""
    pool = Pool()
    try:
        async with raw_server(reply, hang_up=hang_up) as port:
            with pytest.raises(ProtocolError, match=says.replace("(", r"\(").replace(")", r"\)")):
                await pool.request("POST", f"http://127.0.0.1:{port}/bot", {}, b"{}")
    finally:
        await pool.close()


async def test_nothing_listening_is_unreachable_naming_the_port() -> None:
    """A refused connection: TargetUnreachable with host, port and URL."""
    pool = Pool()
    with closed_port() as port:
        with pytest.raises(TargetUnreachable, match=rf"connection refused by 127\.0\.0\.1:{port} \(http://127\.0\.0\.1:{port}/bot\)"):
            await pool.request("POST", f"http://127.0.0.1:{port}/bot", {}, b"{}")
    await pool.close()


def test_a_url_that_is_not_http_is_refused_before_connecting() -> None:
    """ftp:// or a URL without a host: ProbeError naming the URL."""
    for url in ("ftp://127.0.0.1/bot", "http:///bot", "http://127.0.0.1:port/bot"):
        with pytest.raises(ProbeError, match="unsupported URL"):
            split_url(url)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(server certificate and key, CA file) from a throwaway CA, for 127.0.0.1."""
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    cert = ca.issue_cert("127.0.0.1", not_before=now - timedelta(days=1), not_after=now + timedelta(days=30))
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return str(folder / "server.pem"), str(folder / "ca.pem")


def test_tls_is_checked_against_the_given_ca_and_refused_otherwise(tls_files: tuple[str, str]) -> None:
    """verify: a CA file trusts the server's certificate; the system's CAs reject it; verify: false skips the check."""
    certfile, ca_file = tls_files

    async def ask(verify: bool | str) -> int:
        pool = Pool(lambda: _tls(verify))
        try:
            return (await pool.request("GET", f"{server.url}/json", {}, None)).status
        finally:
            await pool.close()

    with ThreadedServer(make_app(), certfile=certfile) as server:
        assert asyncio.run(ask(ca_file)) == 200
        assert asyncio.run(ask(False)) == 200
        with pytest.raises(TargetUnreachable, match="TLS certificate of 127.0.0.1 rejected"):
            asyncio.run(ask(True))


def test_a_missing_ca_file_is_said_plainly(tmp_path: Path) -> None:
    """target.verify naming a file that is not there: ProbeError naming it."""
    with pytest.raises(ProbeError, match="cannot read the CA bundle"):
        _tls(str(tmp_path / "nowhere.pem"))


async def test_a_get_target_sends_its_body_as_query_parameters(app_server: ThreadedServer, tmp_path: Path) -> None:
    """method GET: the rendered body becomes the query (true/false lower case, a list repeated), the answer is read from it."""
    import yaml

    from cxtest.loader import load_scenario
    from cxtest.model import Outcome, Project
    from cxtest.runner import Runner

    target = {
        "connector": "rest", "url": f"{app_server.url}/echo", "method": "GET",
        "body": {"text": "{{ text }}", "flag": True, "tags": ["a", "b"]}, "messages": "$.params", "text": "$.text",
        "buttons": None, "intent": None, "confidence": None,
    }
    document = {"name": "get bot", "channel": "chat", "target": target, "steps": [{"user": "hello there"}, {"bot": {"equals": "hello there"}}]}
    path = tmp_path / "get.yaml"
    path.write_text(yaml.safe_dump(document))
    project = Project(root=tmp_path)
    async with Runner(project, artifacts_root=tmp_path / "artifacts") as runner:
        result = await runner.run_scenario(load_scenario(path, project))
    assert result.outcome is Outcome.passed, result.message
    transcript = json.loads(next(Path(a.path) for a in result.artifacts if a.path.endswith("transcript.json")).read_text())
    # The echo's dict(query_params) keeps the last value of a repeated name: "b" of tags=a&tags=b.
    assert transcript[1]["raw"] == {"text": "hello there", "flag": "true", "tags": "b"}, transcript


def cookie_bot() -> Any:
    """A bot that keeps its session in a cookie: "start NAME" sets it, "who" answers with the cookie it got back."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def message(request: Request) -> JSONResponse:
        text = (await request.json())["text"]
        if text.startswith("start "):
            response = JSONResponse({"messages": [{"text": "started"}]})
            response.set_cookie("session", text.removeprefix("start "))
            return response
        return JSONResponse({"messages": [{"text": f"you are {request.cookies.get('session', 'nobody')}"}]})

    return Starlette(routes=[Route("/bot", message, methods=["POST"])])


async def test_a_conversation_sends_back_its_own_cookies_and_no_one_elses(tmp_path: Path) -> None:
    """Two conversations at once, each with the session cookie its bot set: each hears its own name."""
    import yaml

    from cxtest.loader import load_scenario
    from cxtest.model import Outcome, Project
    from cxtest.runner import Runner

    project = Project(root=tmp_path)
    scenarios = []
    with ThreadedServer(cookie_bot()) as server:
        for name in ("ann", "bob"):
            steps = [{"user": f"start {name}"}, {"bot": "started"}, {"wait": "100ms"}, {"user": "who"}, {"bot": {"equals": f"you are {name}"}}]
            document = {"name": f"cookie {name}", "channel": "chat", "target": {"connector": "rest", "url": f"{server.url}/bot"}, "steps": steps}
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(document))
            scenarios.append(load_scenario(tmp_path / f"{name}.yaml", project))
        async with Runner(project, artifacts_root=tmp_path / "artifacts") as runner:
            results = await runner.run_many(scenarios)
    assert [r.outcome for r in results] == [Outcome.passed, Outcome.passed], [r.message for r in results]


async def test_a_proxy_named_by_the_environment_carries_the_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY set: the message goes to the proxy (absolute-form request line) and its answer is the bot's."""
    from probes.chat.connectors.base import UserMessage
    from probes.chat.connectors.rest import RestConnector, RestTarget

    seen: list[bytes] = []
    answer = json.dumps({"messages": [{"text": "via the proxy"}]}).encode()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    connector = RestConnector()
    try:
        with closed_port() as bot_port:  # nothing there: only the proxy can answer
            target = RestTarget(connector="rest", url=f"http://127.0.0.1:{bot_port}/proxied-bot")
            conversation = await connector.open(target, "c1")
            await conversation.send(UserMessage("hi"))
            message = await conversation.receive(1.0)
    finally:
        await connector.aclose()
        server.close()
    assert message is not None and message.text == "via the proxy", message
    assert seen and seen[0].startswith(f"POST http://127.0.0.1:{bot_port}/proxied-bot HTTP/1.1".encode()), seen
