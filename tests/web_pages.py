"""Small real pages for the web probe tests, one per behaviour the probe must see.

    with ThreadedServer(pages_app()) as server:     # uvicorn on 127.0.0.1 in a thread
        f"{server.url}/contact"

/contact posts a form to /thanks (a real navigation); /search answers Enter in its box with
script; /late shows its banner after 300 ms; /throws, /console and /missing break in the
ways the built-in checks must catch; /slow takes ?ms= to answer. There is no /favicon.ico:
the browser's own request for it must not fail a journey.
"""

from __future__ import annotations

import asyncio
import itertools
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route


def _page(title: str, body: str, head: str = "") -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title>"
                        f"{head}</head><body>{body}</body></html>")


CONTACT = """
<h1>Contact us</h1>
<form method=post action=/thanks>
  <label>Your name <input name=name></label>
  <label for=topic>Topic</label>
  <select id=topic name=topic><option value=support>Support</option><option value=billing>Billing questions</option></select>
  <textarea id=message name=message></textarea>
  <button type=submit>Send</button>
</form>
"""

SEARCH = """
<input id=q aria-label=Search>
<ul id=results></ul>
<script>
document.getElementById("q").addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    document.getElementById("results").innerHTML = "<li>Opening hours: 8 to 18</li><li>Lost card</li>";
  }
});
</script>
"""

LATE = """
<div id=banner hidden>We are open</div>
<script>setTimeout(() => { document.getElementById("banner").hidden = false; }, 300);</script>
"""

APP_JS = """// the widget's script
window.addEventListener("load", () => {
  widget.start();
});
"""


def pages_app() -> Starlette:
    tickets = itertools.count(1001)

    async def contact(request: Request) -> Response:
        return _page("Contact Acme", CONTACT)

    async def thanks(request: Request) -> Response:
        form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}  # no python-multipart here
        body = (f"<p class=result>Thank you, {form.get('name')}! We got your {form.get('topic')} question.</p>"
                f"<p>Your ticket: <b data-testid=ticket>T-{next(tickets)}</b></p>"
                f"<a id=home href=/contact data-kind=home>Back</a>")
        return _page("Thank you", body)

    async def search(request: Request) -> Response:
        return _page("Help search", SEARCH)

    async def late(request: Request) -> Response:
        return _page("Opening hours", LATE)

    async def blank(request: Request) -> Response:
        return _page("Nothing here", "<p>Nothing to see</p>")

    async def throws(request: Request) -> Response:
        return _page("Broken widget", "<p>Chat with us</p>", head="<script src=/app.js></script>")

    async def app_js(request: Request) -> Response:
        return PlainTextResponse(APP_JS, media_type="text/javascript")

    async def console(request: Request) -> Response:
        refused = request.query_params["refused"]
        script = f"<script>console.error('chat widget: no agents online'); fetch('http://127.0.0.1:{refused}/api/agents')"
        # The page says when the fetch failed, so a test can wait for it instead of for network idle.
        script += ".catch(() => document.body.insertAdjacentHTML('beforeend', '<p>No agents available</p>'));</script>"
        return _page("Console", "<p>Chat</p>" + script)

    async def missing(request: Request) -> Response:
        return _page("Missing picture", "<p>Our team</p><img src=/team.png alt=team>")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(int(request.query_params.get("ms", "300")) / 1000)
        return _page("Slow", "<p>Finally</p>")

    return Starlette(
        routes=[
            Route("/contact", contact),
            Route("/thanks", thanks, methods=["POST"]),
            Route("/search", search),
            Route("/late", late),
            Route("/blank", blank),
            Route("/throws", throws),
            Route("/app.js", app_js),
            Route("/console", console),
            Route("/missing", missing),
            Route("/slow", slow),
        ]
    )
