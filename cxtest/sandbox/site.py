"""The sandbox website: Acme Bank's pages, where web scenarios walk customer journeys.

- ``/site/``: the home page, with a chat widget that talks to the sandbox bot over
  its websocket (``/bot/ws``, Botkit's web adapter shape);
- ``/site/help``: questions and answers, with a search box that filters them in the page;
- ``/site/contact``: a contact form that posts JSON to ``POST /api/contact`` and shows
  the ticket number, or the server's errors beside each field;
- ``/site/{file}``: the pages' scripts and style sheet, from ``cxtest/sandbox/site/``.

Broken mode (the sandbox's ``broken`` flag) makes ``POST /api/contact`` answer 500,
and the contact page's script, which takes every failed answer for a list of field
errors, throws an uncaught TypeError: the way a real site fails when its back end does.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from cxtest.sandbox.app import Endpoint, SandboxState, error, read_json

#: The pages, scripts and style sheet, as plain files (no build step, nothing from the internet).
SITE_DIR = Path(__file__).with_name("site")

#: Path under /site/ -> the page's file.
PAGES = {"": "index.html", "help": "help.html", "contact": "contact.html"}

TOPICS = ("billing", "support", "other")
MAX_NAME = 100
MAX_MESSAGE = 2000
#: Loose on purpose, like most sites: something@something.something, no spaces.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

#: The first ticket number each app gives out.
FIRST_TICKET = 1001


def contact_errors(body: dict[str, Any]) -> dict[str, str]:
    """Field name -> what is wrong with it, for a contact form body; empty when it is valid."""

    def text(field: str) -> str:
        value = body.get(field)
        return value.strip() if isinstance(value, str) else ""

    errors: dict[str, str] = {}
    if not text("name"):
        errors["name"] = "Enter your name."
    elif len(text("name")) > MAX_NAME:
        errors["name"] = f"Keep your name under {MAX_NAME} characters."
    if not EMAIL.fullmatch(text("email")):
        errors["email"] = "Enter an email address like name@example.com."
    if text("topic") not in TOPICS:
        errors["topic"] = "Choose billing, support or other."
    if not text("message"):
        errors["message"] = "Enter your message."
    elif len(text("message")) > MAX_MESSAGE:
        errors["message"] = f"Keep your message under {MAX_MESSAGE} characters."
    return errors


def site_component(state: SandboxState) -> list[Endpoint]:
    files = {path.name for path in SITE_DIR.iterdir() if path.is_file()}
    ticket_numbers = itertools.count(FIRST_TICKET)  # one sequence per app, like the rest of the state

    def page(name: str):
        async def serve(request: Request) -> Response:
            return FileResponse(SITE_DIR / name)

        return serve

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:  # only the files that ship; no path ever reaches the file system
            return error(404, f"no such file: /site/{name}")
        return FileResponse(SITE_DIR / name)

    async def contact(request: Request) -> JSONResponse:
        body = await read_json(request)
        if not isinstance(body, dict):
            return error(400, "expected a JSON object with name, email, topic and message")
        errors = contact_errors(body)
        if errors:
            return JSONResponse({"error": "some fields are not valid", "errors": errors}, status_code=422)
        if state.broken:
            return error(500, "ticketing backend unavailable")
        ticket = f"T-{next(ticket_numbers)}"
        return JSONResponse({"ticket": ticket, "topic": body["topic"].strip(), "status": "open"}, status_code=201)

    return [
        Endpoint("/site/", page(PAGES[""]), ("GET",), "Acme Bank home page with a chat widget on /bot/ws"),
        Endpoint("/site/help", page(PAGES["help"]), ("GET",), "help page: questions and answers, filtered by a search box"),
        Endpoint("/site/contact", page(PAGES["contact"]), ("GET",), "contact form that posts to /api/contact and shows the ticket"),
        Endpoint("/site/{name}", asset, ("GET",), "the pages' scripts and style sheet"),
        Endpoint(
            "/api/contact",
            contact,
            ("POST",),
            'JSON {"name", "email", "topic": billing|support|other, "message"} -> 201 {"ticket": "T-1001"}; '
            '422 {"errors": {field: text}}; broken: 500',
        ),
    ]
