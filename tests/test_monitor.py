"""`cxtest monitor` in-process: schedules, incidents through the outbox, the operator endpoint, reloads."""

from __future__ import annotations

import asyncio
import re
import socket
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts.incidents import Incidents
from cxtest.model import Schedule
from cxtest.monitor import Monitor, start_offset
from cxtest.sandbox.server import Sandbox
from cxtest.store import Store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def project(tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CXTEST_SANDBOX_URL", sandbox.url)
    folder = tmp_path / "scenarios"
    folder.mkdir()
    (folder / "cxtest.yaml").write_text(
        textwrap.dedent(
            f"""\
            store: sqlite:///../results.db
            artifacts: ../artifacts
            notifiers:
              oncall: {{ type: webhook, url: "${{env:CXTEST_SANDBOX_URL}}/hooks/oncall" }}
            monitor: {{ listen: "127.0.0.1:{free_port()}" }}
            """
        )
    )
    write_scenario(folder / "status.yaml")
    return folder


def write_scenario(path: Path, *, name: str = "Status", every: str = "0.4s", extra: str = "") -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            name: {name}
            channel: http
            target: {{ url: "${{env:CXTEST_SANDBOX_URL}}" }}
            steps:
              - request: GET /api/status
                expect: {{ status: 200 }}
            schedule: {{ every: {every} }}
            alert: {{ open_after: 2, resolve_after: 2, notify: [oncall] }}
            """
        )
        + extra
    )


async def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
async def running(project: Path) -> AsyncIterator[Monitor]:
    monitor = Monitor([project], watch_interval=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
    await wait_for(monitor.started.is_set, what="start")
    yield monitor
    stop.set()
    await asyncio.wait_for(task, 20)


def sink(sandbox: Sandbox) -> list[tuple[str, str]]:
    items = httpx.get(f"{sandbox.url}/hooks/oncall").json()["items"]
    return [(i["body"]["change"], i["body"]["incident"]["key"]) for i in items]


async def test_failures_open_and_passes_resolve_an_incident_each_announced_once(running: Monitor, sandbox: Sandbox) -> None:
    """Two failed runs open the incident, two passes resolve it; the webhook hears each change exactly once."""
    await wait_for(lambda: running.last_result.get("status"), what="a first run")
    sandbox.set_broken(True)
    await wait_for(lambda: ("opened", "status:failures@local") in sink(sandbox), what="opened delivery")
    sandbox.set_broken(False)
    await wait_for(lambda: ("resolved", "status:failures@local") in sink(sandbox), what="resolved delivery")
    await asyncio.sleep(1.0)  # any duplicate would arrive within a few more runs
    assert sink(sandbox) == [("opened", "status:failures@local"), ("resolved", "status:failures@local")]
    [incident] = Incidents(running.store).history()
    assert incident.state.value == "resolved"
    assert "status (503) == 200" in incident.summary
    assert incident.evidence and incident.evidence[0].outcome.value == "failed"


async def test_operator_endpoint_reports_health_metrics_and_status(running: Monitor, sandbox: Sandbox) -> None:
    """/healthz answers ok, /metrics counts runs and open incidents, the status page and JSON list the scenario."""
    sandbox.set_broken(True)
    await wait_for(lambda: Incidents(running.store).open_incidents(), what="an open incident")
    base = f"http://{running.listen}"
    async with httpx.AsyncClient(base_url=base) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        metrics = (await client.get("/metrics")).text
        assert 'cxtest_runs_total{channel="http",outcome="failed",scenario="status"}' in metrics
        assert 'cxtest_open_incidents{severity="critical"} 1.0' in metrics
        assert "cxtest_start_lag_seconds_bucket" in metrics
        status = (await client.get("/status.json")).json()
        assert status["scenarios"][0]["id"] == "status"
        assert status["open_incidents"][0]["key"] == "status:failures@local"
        page = await client.get("/")
        assert "Open incidents" in page.text and "status (503) == 200" in page.text
        incident_id = status["open_incidents"][0]["id"]
        detail = await client.get(f"/incidents/{incident_id}")
        assert detail.status_code == 200 and "Evidence" in detail.text
        assert (await client.get("/incidents/99999")).status_code == 404


async def test_every_result_is_stored(running: Monitor) -> None:
    """Each scheduled run lands in the store, tagged with the agent's location."""
    await wait_for(lambda: len(running.store.results(scenario_id="status")) >= 3, what="three stored results")
    results = running.store.results(scenario_id="status")
    assert {r.location for r in results} == {"local"}
    assert all(r.outcome.value == "passed" for r in results)


async def test_edited_file_reloads_and_keeps_the_open_incident(running: Monitor, sandbox: Sandbox, project: Path) -> None:
    """Renaming a scenario and changing its schedule while its incident is open keeps the same incident."""
    sandbox.set_broken(True)
    [opened] = await wait_for(lambda: Incidents(running.store).open_incidents(), what="an open incident")
    write_scenario(project / "status.yaml", name="Status renamed", every="0.3s")
    await wait_for(lambda: running.scenarios["status"].name == "Status renamed", what="the reload")
    assert running.scheduler.get_job("status").trigger.interval.total_seconds() == pytest.approx(0.3)
    await asyncio.sleep(1.0)
    [still] = Incidents(running.store).open_incidents()
    assert still.id == opened.id and still.key == opened.key


async def test_a_broken_edit_keeps_the_running_set(running: Monitor, project: Path) -> None:
    """A file edited into a bad state is refused on reload; the monitor keeps running what it had."""
    (project / "status.yaml").write_text("name: [unclosed\n")
    await asyncio.sleep(0.8)
    assert "status" in running.scenarios and running.scheduler.get_job("status") is not None


async def test_removed_file_removes_its_job(running: Monitor, project: Path) -> None:
    """Deleting a scenario file removes its job at the next reload."""
    write_scenario(project / "second.yaml", name="Second")
    await wait_for(lambda: running.scheduler.get_job("second"), what="the new job")
    (project / "second.yaml").unlink()
    await wait_for(lambda: running.scheduler.get_job("second") is None, what="the job to go")


async def test_store_outage_loses_no_result(running: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the store refuses writes, results wait in memory; once it is back, every one is saved."""
    from cxtest.errors import StoreError

    real_save = Store.save
    monkeypatch.setattr(Store, "save", lambda self, results: (_ for _ in ()).throw(StoreError("database is locked")))
    before = sum(_runs(running).values())
    await asyncio.sleep(1.5)
    monkeypatch.setattr(Store, "save", real_save)
    await asyncio.sleep(0.6)
    total_runs = sum(_runs(running).values())
    assert total_runs > before
    await wait_for(lambda: len(running.store.results(scenario_id="status", limit=1000)) >= total_runs - 1, what="all saved")


def _runs(monitor: Monitor) -> dict[tuple[str, str], float]:
    counts = {}
    for metric in monitor.metrics.registry.collect():
        if metric.name == "cxtest_runs":
            for sample in metric.samples:
                if sample.name == "cxtest_runs_total":
                    counts[(sample.labels["scenario"], sample.labels["outcome"])] = sample.value
    return counts


async def test_scenarios_outside_their_active_window_do_not_run(project: Path) -> None:
    """A schedule whose active window is not now never runs."""
    now = datetime.now(timezone.utc)
    closed = "sun" if now.strftime("%a").lower() != "sun" else "sat"
    text = (project / "status.yaml").read_text().replace(
        "schedule: { every: 0.4s }", f"schedule: {{ every: 0.2s, active: [{{ days: {closed}, start: '00:00', end: '24:00' }}] }}"
    )
    (project / "status.yaml").write_text(text)
    monitor = Monitor([project], listen="")
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
    await asyncio.sleep(1.2)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert monitor.last_result == {}


def test_start_offsets_spread_and_are_stable() -> None:
    """Start offsets fall inside the interval, repeat for the same id and spread across ids."""
    offsets = [start_offset(f"scenario/{i}", 60.0) for i in range(1000)]
    assert all(0 <= o < 60 for o in offsets)
    assert start_offset("scenario/7", 60.0) == offsets[7]
    assert len({int(o) for o in offsets}) == 60  # every second of the minute gets some


def test_schedule_needs_exactly_one_trigger() -> None:
    """A schedule with neither or both of every and cron is refused with the reason."""
    with pytest.raises(ValueError, match="give either every"):
        Schedule()
    with pytest.raises(ValueError, match="give either every"):
        Schedule(every=60, cron="* * * * *")
    with pytest.raises(ValueError, match="five fields"):
        Schedule(cron="* * *")


def test_listen_off_loopback_needs_a_token() -> None:
    """Binding the operator endpoint beyond loopback without a token is a settings error."""
    from cxtest.model import MonitorSettings

    with pytest.raises(ValueError, match="set token"):
        MonitorSettings(listen="0.0.0.0:9478")
    assert MonitorSettings(listen="0.0.0.0:9478", token="t").token == "t"


async def test_token_guards_the_endpoint_but_not_healthz(project: Path) -> None:
    """With a token set, /metrics and the status page need it; /healthz stays open for probes."""
    port = free_port()
    config = project / "cxtest.yaml"
    config.write_text(re.sub(r"monitor: .*", f'monitor: {{ listen: "127.0.0.1:{port}", token: s3cret-token }}', config.read_text()))
    monitor = Monitor([project])
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
    try:
        await wait_for(monitor.started.is_set, what="start")
        async with httpx.AsyncClient(base_url=f"http://{monitor.listen}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/metrics")).status_code == 401
            assert (await client.get("/status.json")).status_code == 401
            ok = await client.get("/status.json", headers={"authorization": "Bearer s3cret-token"})
            assert ok.status_code == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
