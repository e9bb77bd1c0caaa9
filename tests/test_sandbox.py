"""The sandbox contact centre, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from cxtest.sandbox import app as sandbox_app
from cxtest.sandbox.server import Sandbox, SandboxError


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    sandbox.set_broken(False)
    sandbox.state.hooks.clear()
    with httpx.Client(base_url=sandbox.url, timeout=10) as c:
        yield c
    sandbox.set_broken(False)


@pytest.fixture
def token(client: httpx.Client) -> str:
    r = client.post("/api/login", json={"user": "demo", "password": "demo-pass"})
    assert r.status_code == 200
    return r.json()["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ----------------------------------------------------------------- server


def test_url_is_loopback_with_a_real_port(sandbox: Sandbox) -> None:
    """Sandbox() with port 0 listens on 127.0.0.1 and exposes http://127.0.0.1:PORT as url."""
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sandbox.url)
    assert sandbox.port and sandbox.port > 0
    assert sandbox.running


def test_context_manager_starts_and_stops() -> None:
    """Leaving the with-block stops the server and frees the port."""
    with Sandbox() as sb:
        port = sb.port
        assert httpx.get(f"{sb.url}/api/status").status_code == 200
    assert not sb.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_busy_port_raises_clear_error(sandbox: Sandbox) -> None:
    """Starting on a port that is already listening raises SandboxError naming the address."""
    with pytest.raises(SandboxError, match=rf"127\.0\.0\.1:{sandbox.port}.*in use"):
        Sandbox(port=sandbox.port).start()


def test_url_before_start_raises() -> None:
    """Asking for url before start() raises SandboxError instead of returning a bogus address."""
    with pytest.raises(SandboxError, match="not running"):
        Sandbox().url


def test_stop_returns_promptly_with_a_request_in_flight() -> None:
    """stop() does not hang on an open slow request (graceful shutdown is bounded)."""
    sb = Sandbox().start()

    def call() -> None:
        try:
            httpx.get(f"{sb.url}/api/slow?ms=8000", timeout=15)
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=call, daemon=True)
    t.start()
    time.sleep(0.2)
    started = time.monotonic()
    sb.stop()
    assert time.monotonic() - started < 5
    assert not sb.running


# -------------------------------------------------------------------- index


def test_index_lists_endpoints(client: httpx.Client) -> None:
    """GET / is an HTML page that lists every API, admin and hook endpoint."""
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    for path in ("/api/status", "/api/login", "/api/accounts/{account_id}", "/api/slow", "/api/html",
                 "/admin/break", "/admin/state", "/hooks/{name}"):
        assert path in r.text


def test_unknown_path_is_json_404(client: httpx.Client) -> None:
    """An unknown path answers 404 with a JSON error body."""
    r = client.get("/api/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "Not Found"}


# ------------------------------------------------------------------- status


def test_status_up(client: httpx.Client) -> None:
    """GET /api/status answers 200 with every component up when healthy."""
    r = client.get("/api/status")
    assert r.status_code == 200
    assert r.json() == {"status": "up", "components": {"ivr": "up", "chat": "up", "billing": "up"}}


def test_status_degraded_when_broken(sandbox: Sandbox, client: httpx.Client) -> None:
    """GET /api/status answers 503 degraded with billing down when broken."""
    sandbox.set_broken(True)
    r = client.get("/api/status")
    assert r.status_code == 503
    assert r.json() == {"status": "degraded", "components": {"ivr": "up", "chat": "up", "billing": "down"}}


# -------------------------------------------------------------------- login


def test_login_ok(client: httpx.Client) -> None:
    """demo/demo-pass gets a random hex token valid for 3600 s."""
    r1 = client.post("/api/login", json={"user": "demo", "password": "demo-pass"})
    r2 = client.post("/api/login", json={"user": "demo", "password": "demo-pass"})
    assert r1.status_code == 200
    body = r1.json()
    assert body["expires_in"] == 3600
    assert re.fullmatch(r"[0-9a-f]{32}", body["token"])
    assert body["token"] != r2.json()["token"]


@pytest.mark.parametrize(
    "payload",
    [{"user": "demo", "password": "wrong"}, {"user": "eve", "password": "demo-pass"}, {}],
)
def test_login_bad_credentials(client: httpx.Client, payload: dict) -> None:
    """Wrong user, wrong password or missing fields answer 401 invalid credentials."""
    r = client.post("/api/login", json=payload)
    assert r.status_code == 401
    assert r.json() == {"error": "invalid credentials"}


def test_login_malformed_body(client: httpx.Client) -> None:
    """A body that is not JSON answers 400 with a JSON error, not a crash."""
    r = client.post("/api/login", content=b"user=demo", headers={"content-type": "text/plain"})
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]


# ----------------------------------------------------------------- accounts


@pytest.mark.parametrize("account_id", ["1001", "1002", "1003"])
def test_account_found(client: httpx.Client, token: str, account_id: str) -> None:
    """Each seeded account answers 200 with id, name, balance, EUR and active status."""
    r = client.get(f"/api/accounts/{account_id}", headers=bearer(token))
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == account_id
    assert body["currency"] == "EUR"
    assert body["status"] == "active"
    assert isinstance(body["name"], str) and body["name"]
    assert isinstance(body["balance"], float | int)


def test_account_unknown(client: httpx.Client, token: str) -> None:
    """An unknown account id answers 404 account not found."""
    r = client.get("/api/accounts/9999", headers=bearer(token))
    assert r.status_code == 404
    assert r.json() == {"error": "account not found"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer deadbeef"}, {"Authorization": "Basic ZGVtbzpkZW1vLXBhc3M="}, {"Authorization": "Bearer"}],
)
def test_account_needs_valid_token(client: httpx.Client, headers: dict) -> None:
    """A missing, unknown or non-bearer token answers 401 before the account is looked up."""
    r = client.get("/api/accounts/1001", headers=headers)
    assert r.status_code == 401
    assert "error" in r.json()
    assert r.headers["www-authenticate"] == "Bearer"


def test_account_1002_suspended_when_broken(sandbox: Sandbox, client: httpx.Client, token: str) -> None:
    """When broken, account 1002 is suspended with no balance and a reason; others stay active."""
    sandbox.set_broken(True)
    r = client.get("/api/accounts/1002", headers=bearer(token))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "suspended"
    assert body["balance"] is None
    assert "billing" in body["reason"]
    assert client.get("/api/accounts/1001", headers=bearer(token)).json()["status"] == "active"


# --------------------------------------------------------------------- slow


def test_slow_sleeps(client: httpx.Client) -> None:
    """GET /api/slow?ms=N waits at least N ms and reports slept_ms N."""
    started = time.monotonic()
    r = client.get("/api/slow", params={"ms": 150})
    assert time.monotonic() - started >= 0.15
    assert r.status_code == 200
    assert r.json() == {"slept_ms": 150}


def test_slow_is_capped(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sleep is capped at MAX_SLOW_MS (10,000 by default) and slept_ms says the capped value."""
    assert sandbox_app.MAX_SLOW_MS == 10_000
    monkeypatch.setattr(sandbox_app, "MAX_SLOW_MS", 50)
    r = client.get("/api/slow", params={"ms": 60_000})
    assert r.json() == {"slept_ms": 50}


def test_slow_bad_ms(client: httpx.Client) -> None:
    """A non-integer ms answers 400."""
    assert client.get("/api/slow", params={"ms": "soon"}).status_code == 400


def test_slow_client_timeout(client: httpx.Client) -> None:
    """A client timeout shorter than the sleep times out (the latency/timeout demo)."""
    with pytest.raises(httpx.ReadTimeout):
        client.get("/api/slow", params={"ms": 2000}, timeout=httpx.Timeout(5.0, read=0.2))


# --------------------------------------------------------------------- html


def test_html_instead_of_json(client: httpx.Client) -> None:
    """GET /api/html answers 200 with an HTML error page that is not JSON."""
    r = client.get("/api/html")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.text.lstrip().startswith("<!DOCTYPE html>")
    with pytest.raises(ValueError):
        r.json()


# -------------------------------------------------------------------- admin


def test_admin_break_toggles(client: httpx.Client) -> None:
    """POST /admin/break flips broken at run time and GET /admin/state reports it."""
    assert client.get("/admin/state").json()["broken"] is False
    r = client.post("/admin/break", json={"broken": True})
    assert r.status_code == 200 and r.json()["broken"] is True
    assert client.get("/admin/state").json()["broken"] is True
    assert client.get("/api/status").status_code == 503
    client.post("/admin/break", json={"broken": False})
    assert client.get("/admin/state").json()["broken"] is False
    assert client.get("/api/status").status_code == 200


@pytest.mark.parametrize("payload", [{}, {"broken": "yes"}, [True]])
def test_admin_break_rejects_bad_body(client: httpx.Client, payload: object) -> None:
    """POST /admin/break without a boolean broken answers 400 and changes nothing."""
    r = client.post("/admin/break", json=payload)
    assert r.status_code == 400
    assert client.get("/admin/state").json()["broken"] is False


def test_broken_at_creation() -> None:
    """Sandbox(broken=True) starts broken."""
    with Sandbox(broken=True) as sb:
        assert httpx.get(f"{sb.url}/api/status").status_code == 503
        assert httpx.get(f"{sb.url}/admin/state").json()["broken"] is True


def test_broken_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """CXTEST_SANDBOX_BREAK=1 starts the sandbox broken even when broken=False."""
    monkeypatch.setenv("CXTEST_SANDBOX_BREAK", "1")
    with Sandbox() as sb:
        assert sb.broken is True
        assert httpx.get(f"{sb.url}/api/status").status_code == 503
    monkeypatch.setenv("CXTEST_SANDBOX_BREAK", "0")
    with Sandbox() as sb:
        assert httpx.get(f"{sb.url}/api/status").status_code == 200


def test_admin_state_counts_tokens(client: httpx.Client, token: str) -> None:
    """GET /admin/state counts the active login tokens."""
    assert client.get("/admin/state").json()["active_tokens"] >= 1


# -------------------------------------------------------------------- hooks


def test_hook_stores_json(client: httpx.Client) -> None:
    """POST /hooks/NAME with JSON answers 202 and GET lists body, headers and receive time."""
    before = time.time()
    r = client.post("/hooks/oncall", json={"incident": "INC-1", "state": "open"}, headers={"X-Sig": "abc"})
    assert r.status_code == 202
    items = client.get("/hooks/oncall").json()["items"]
    assert len(items) == 1
    item = items[0]
    assert item["body"] == {"incident": "INC-1", "state": "open"}
    assert item["json"] is True
    assert item["headers"]["x-sig"] == "abc"
    assert item["headers"]["content-type"] == "application/json"
    assert before <= item["received_ts"] <= time.time()
    assert item["received_at"].endswith("+00:00")
    assert item["status"] == 202


def test_hook_stores_text(client: httpx.Client) -> None:
    """A non-JSON body is stored as text."""
    client.post("/hooks/plain", content=b"hello: world", headers={"content-type": "text/plain"})
    item = client.get("/hooks/plain").json()["items"][0]
    assert item["body"] == "hello: world"
    assert item["json"] is False


def test_hook_keeps_order_and_separates_names(client: httpx.Client) -> None:
    """Deliveries are listed oldest first and each name has its own list."""
    for i in range(3):
        client.post("/hooks/a", json={"n": i})
    client.post("/hooks/b", json={"n": 99})
    a = client.get("/hooks/a").json()
    assert a["count"] == 3
    assert [it["body"]["n"] for it in a["items"]] == [0, 1, 2]
    assert client.get("/hooks/b").json()["count"] == 1
    assert client.get("/hooks").json() == {"a": 3, "b": 1}
    assert client.get("/admin/state").json()["hooks"] == {"a": 3, "b": 1}


def test_hook_status_override(client: httpx.Client) -> None:
    """?status=500 makes the sink answer 500; the attempt is still recorded with that status."""
    r = client.post("/hooks/flaky", params={"status": 500}, json={"try": 1})
    assert r.status_code == 500
    r = client.post("/hooks/flaky", json={"try": 2})
    assert r.status_code == 202
    items = client.get("/hooks/flaky").json()["items"]
    assert [(it["body"]["try"], it["status"]) for it in items] == [(1, 500), (2, 202)]


def test_hook_status_override_rejects_nonsense(client: httpx.Client) -> None:
    """?status= that is not an HTTP status 200-599 answers 400 and records nothing."""
    assert client.post("/hooks/x", params={"status": "abc"}, json={}).status_code == 400
    assert client.post("/hooks/x", params={"status": 99}, json={}).status_code == 400
    assert client.get("/hooks/x").json()["count"] == 0


def test_hook_delete_clears(client: httpx.Client) -> None:
    """DELETE /hooks/NAME forgets that name's deliveries and says how many."""
    client.post("/hooks/gone", json={})
    client.post("/hooks/gone", json={})
    r = client.delete("/hooks/gone")
    assert r.status_code == 200
    assert r.json() == {"name": "gone", "cleared": 2}
    assert client.get("/hooks/gone").json() == {"name": "gone", "count": 0, "items": []}


def test_hook_unknown_name_is_empty(client: httpx.Client) -> None:
    """GET on a name that never received anything answers an empty list, not 404."""
    assert client.get("/hooks/never").json() == {"name": "never", "count": 0, "items": []}
