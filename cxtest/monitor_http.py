"""The monitor's operator endpoint: /healthz, Prometheus /metrics, a plain status page, incident pages.

Bound to 127.0.0.1 by default; bound anywhere else it needs a bearer token
(`monitor.token` in cxtest.yaml) on everything but /healthz.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from jinja2 import Environment
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cxtest.logs import redact
from cxtest.model import format_duration

if TYPE_CHECKING:
    from cxtest.monitor import Monitor

_PAGE = Environment(autoescape=True).from_string(
    """<!doctype html><html><head><meta charset="utf-8"><title>cxtest monitor · {{ agent }}</title>
<meta http-equiv="refresh" content="15">
<style>body{font:14px system-ui,sans-serif;margin:2em;color:#1f2933}table{border-collapse:collapse}
td,th{padding:.3em .8em;border-bottom:1px solid #e4e7eb;text-align:left}.passed{color:#15803d}.degraded{color:#b45309}
.failed{color:#b91c1c}.error{color:#7e22ce}.open{font-weight:bold;color:#b91c1c}pre{white-space:pre-wrap}</style></head><body>
{% if incident %}
<h1>Incident {{ incident.id }}: {{ incident.scenario_name }}</h1>
<p class="{{ 'open' if incident.state.value == 'open' else '' }}">{{ incident.state.value }} · {{ incident.severity }} · rule {{ incident.rule }}
{% if incident.location %} at {{ incident.location }}{% endif %} · opened {{ incident.opened_at.strftime('%Y-%m-%d %H:%M:%S') }} UTC
{% if incident.resolved_at %} · resolved {{ incident.resolved_at.strftime('%Y-%m-%d %H:%M:%S') }} UTC{% endif %}</p>
<pre>{{ redact(incident.summary) }}</pre>
<h2>Evidence</h2><table><tr><th>when</th><th>outcome</th><th>location</th><th>what was seen</th><th>artifacts</th></tr>
{% for e in incident.evidence %}<tr><td>{{ e.started_at.strftime('%Y-%m-%d %H:%M:%S') }}</td><td class="{{ e.outcome.value }}">{{ e.outcome.value }}</td>
<td>{{ e.location }}</td><td>{{ redact(e.message) }}</td><td>{% for a in e.artifacts %}{{ a }}<br>{% endfor %}</td></tr>{% endfor %}</table>
<p><a href="../">all scenarios</a></p>
{% else %}
<h1>cxtest monitor · {{ agent }}</h1>
<p>{{ scenarios|length }} scenario(s) · {{ open|length }} open incident(s) · up since {{ started.strftime('%Y-%m-%d %H:%M:%S') }} UTC</p>
{% if open %}<h2>Open incidents</h2><table><tr><th>incident</th><th>severity</th><th>since</th><th>summary</th></tr>
{% for i in open %}<tr><td><a href="incidents/{{ i.id }}">{{ i.key }}</a></td><td>{{ i.severity }}</td>
<td>{{ i.opened_at.strftime('%Y-%m-%d %H:%M:%S') }}</td><td>{{ redact(i.summary) }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Scenarios</h2><table><tr><th>scenario</th><th>schedule</th><th>last</th><th>when</th><th>duration</th><th>message</th></tr>
{% for s in scenarios %}{% set r = last.get(s.id) %}<tr><td>{{ s.name }}<br><small>{{ s.id }}</small></td>
<td>{{ schedule(s) }}</td><td class="{{ r.outcome.value if r else '' }}">{{ r.outcome.value if r else 'not run yet' }}</td>
<td>{{ r.started_at.strftime('%H:%M:%S') if r else '' }}</td><td>{{ duration(r.duration) if r else '' }}</td>
<td>{{ redact(r.message) if r else '' }}</td></tr>{% endfor %}</table>
{% endif %}</body></html>"""
)


def _schedule_text(scenario: Any) -> str:
    schedule = scenario.schedule
    if schedule is None:
        return ""
    text = f"every {format_duration(schedule.every)}" if schedule.every else f"cron {schedule.cron}"
    return text + (f" ± {format_duration(schedule.jitter)}" if schedule.jitter else "")


def create_app(monitor: "Monitor") -> Starlette:
    token = monitor.project.monitor.token
    open_incidents = Gauge("cxtest_open_incidents", "Open incidents.", ["severity"], registry=monitor.metrics.registry)

    def authorised(request: Request) -> bool:
        if not token:
            return True
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), token.encode())

    async def healthz(_: Request) -> Response:
        running = getattr(monitor, "scheduler", None) is not None and monitor.scheduler.running
        body = {"status": "ok" if running else "starting", "agent": monitor.agent, "scenarios": len(monitor.scenarios)}
        return JSONResponse(body, status_code=200 if running else 503)

    async def metrics(request: Request) -> Response:
        if not authorised(request):
            return PlainTextResponse("unauthorised", status_code=401)
        incidents = await asyncio.to_thread(monitor.incidents.open_incidents)
        open_incidents.clear()
        for severity in ("critical", "error", "warning", "info"):
            open_incidents.labels(severity).set(sum(i.severity == severity for i in incidents))
        return Response(generate_latest(monitor.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def page(**context: Any) -> HTMLResponse:
        return HTMLResponse(
            _PAGE.render(agent=monitor.agent, redact=redact, schedule=_schedule_text, duration=format_duration, **context)
        )

    async def status(request: Request) -> Response:
        if not authorised(request):
            return PlainTextResponse("unauthorised", status_code=401)
        incidents = await asyncio.to_thread(monitor.incidents.open_incidents)
        scenarios = sorted(monitor.scenarios.values(), key=lambda s: s.id)
        return page(incident=None, scenarios=scenarios, open=incidents, last=monitor.last_result, started=monitor.started_at)

    async def status_json(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": "unauthorised"}, status_code=401)
        incidents = await asyncio.to_thread(monitor.incidents.open_incidents)
        return JSONResponse(
            {
                "agent": monitor.agent,
                "at": datetime.now(timezone.utc).isoformat(),
                "scenarios": [
                    {
                        "id": s.id,
                        "name": s.name,
                        "last_outcome": monitor.last_result[s.id].outcome.value if s.id in monitor.last_result else None,
                    }
                    for s in sorted(monitor.scenarios.values(), key=lambda s: s.id)
                ],
                "open_incidents": [{"id": i.id, "key": i.key, "severity": i.severity, "summary": redact(i.summary)} for i in incidents],
            }
        )

    async def incident(request: Request) -> Response:
        if not authorised(request):
            return PlainTextResponse("unauthorised", status_code=401)
        found = await asyncio.to_thread(monitor.incidents.get, int(request.path_params["id"]))
        if found is None:
            return PlainTextResponse("no such incident", status_code=404)
        return page(incident=found)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Route("/", status),
            Route("/status.json", status_json),
            Route("/incidents/{id:int}", incident),
        ]
    )
