"""The sandbox website: the contact API, the files served, and the pages at work in a real Chromium."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Playwright, Response, expect, sync_playwright

from cxtest.sandbox.app import create_app
from cxtest.sandbox.server import Sandbox
from probes.web import QUIET_ARGS

CHROMIUM = "/usr/bin/chromium"
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"  # the browser resolves no other host
GOOD_FORM = {"name": "Ada Lovelace", "email": "ada@example.com", "topic": "billing", "message": "Why was I charged twice?"}


async def post_contact(body: object, broken: bool = False) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(broken=broken))
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        return await client.post("/api/contact", json=body)


# --------------------------------------------------------------------------- the contact API


async def test_contact_answers_a_ticket_per_message() -> None:
    """A valid form is answered 201 with the next ticket number, T-1001 first."""
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        first = await client.post("/api/contact", json=GOOD_FORM)
        second = await client.post("/api/contact", json={**GOOD_FORM, "topic": "other"})
    assert first.status_code == 201
    assert first.json() == {"ticket": "T-1001", "topic": "billing", "status": "open"}
    assert second.json()["ticket"] == "T-1002"


@pytest.mark.parametrize(
    ("change", "errors"),
    [
        ({"name": "  "}, {"name": "Enter your name."}),
        ({"name": "x" * 101}, {"name": "Keep your name under 100 characters."}),
        ({"email": "ada.example.com"}, {"email": "Enter an email address like name@example.com."}),
        ({"topic": "sales"}, {"topic": "Choose billing, support or other."}),
        ({"message": 42}, {"message": "Enter your message."}),
        ({"message": "x" * 2001}, {"message": "Keep your message under 2000 characters."}),
        ({"name": None, "email": None, "topic": None, "message": None}, {
            "name": "Enter your name.",
            "email": "Enter an email address like name@example.com.",
            "topic": "Choose billing, support or other.",
            "message": "Enter your message.",
        }),
    ],
)
async def test_contact_names_each_invalid_field(change: dict[str, object], errors: dict[str, str]) -> None:
    """Invalid fields are answered 422 with one message per bad field, and no ticket."""
    response = await post_contact({**GOOD_FORM, **change})
    assert response.status_code == 422
    assert response.json() == {"error": "some fields are not valid", "errors": errors}


async def test_contact_refuses_a_body_that_is_not_an_object() -> None:
    """A JSON list, or no JSON at all, is a 400 with a plain message."""
    assert (await post_contact([GOOD_FORM])).status_code == 400
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        response = await client.post("/api/contact", content=b"name=Ada")
    assert response.status_code == 400
    assert response.json() == {"error": "request body is not valid JSON"}


async def test_contact_answers_500_when_broken() -> None:
    """Broken, a valid form is answered 500 without "errors" (the page's script then throws)."""
    response = await post_contact(GOOD_FORM, broken=True)
    assert response.status_code == 500
    assert response.json() == {"error": "ticketing backend unavailable"}


@pytest.mark.parametrize(
    ("path", "content_type", "holds"),
    [
        ("/site/", "text/html; charset=utf-8", "<title>Acme Bank – Home</title>"),
        ("/site/help", "text/html; charset=utf-8", "<title>Acme Bank – Help</title>"),
        ("/site/contact", "text/html; charset=utf-8", "<title>Acme Bank – Contact us</title>"),
        ("/site/contact.js", "text/javascript; charset=utf-8", 'fetch("/api/contact"'),
        ("/site/chat.js", "text/javascript; charset=utf-8", '"/bot/ws"'),
        ("/site/site.css", "text/css; charset=utf-8", "font:"),
    ],
)
async def test_pages_and_assets_are_served_with_their_content_type(path: str, content_type: str, holds: str) -> None:
    """Each page and asset answers 200 with its content type."""
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert holds in response.text


async def test_only_the_shipped_files_are_served() -> None:
    """A name that is not one of the site's files is a 404, even one that exists elsewhere in the package."""
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        for path in ("/site/missing.js", "/site/app.py", "/site/%2e%2e%2fapp.py"):
            assert (await client.get(path)).status_code == 404, path
        index = await client.get("/")
    assert "/site/contact" in index.text and "/api/contact" in index.text


# --------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: sudo apt-get install chromium")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*QUIET_ARGS, LOOPBACK_ONLY])
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(5000)
    yield context.new_page()
    context.close()


class PageProblems:
    """What the built-in checks of a web probe watch: uncaught errors, console errors, failed responses."""

    def __init__(self, page: Page) -> None:
        self.errors: list[Error] = []
        self.console: list[str] = []
        self.statuses: list[int] = []
        page.on("pageerror", self._error)
        page.on("console", self._console)
        page.on("response", self._response)

    def _error(self, error: Error) -> None:
        self.errors.append(error)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console.append(message.text)

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.statuses.append(response.status)


def fill_contact_form(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/site/contact")
    page.fill("role=textbox[name='Your name']", "Ada Lovelace")
    page.fill("role=textbox[name='Your email']", email)
    page.select_option("role=combobox[name='Topic']", "support")
    page.fill("role=textbox[name='Your message']", "My card does not work abroad.")
    page.click("role=button[name='Send']")


def test_contact_form_shows_field_errors_then_the_ticket(page: Page, sandbox: Sandbox) -> None:
    """A bad email is shown beside its field; corrected, the form is sent and the page shows the ticket."""
    problems = PageProblems(page)
    fill_contact_form(page, sandbox.url, "ada-at-example")
    expect(page.get_by_test_id("email-error")).to_have_text("Enter an email address like name@example.com.")
    expect(page.get_by_role("textbox", name="Your email")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("textbox", name="Your email")).to_be_focused()
    page.fill("role=textbox[name='Your email']", "ada@example.com")
    page.click("role=button[name='Send']")
    expect(page.get_by_test_id("ticket")).to_have_text(re.compile(r"^T-\d+$"))
    expect(page.get_by_role("status")).to_contain_text("Thank you, your ticket is T-")
    expect(page.get_by_role("form", name="Contact form")).to_be_hidden()
    assert problems.errors == []
    assert problems.statuses == [422]  # the refused first try, which the page handled


def test_broken_contact_form_throws_in_the_page(page: Page) -> None:
    """Broken, the form's post gets a 500 and the page's script throws an uncaught TypeError; no ticket shows."""
    problems = PageProblems(page)
    with Sandbox(broken=True) as broken:
        with page.expect_event("pageerror") as thrown:
            fill_contact_form(page, broken.url, "ada@example.com")
    assert thrown.value.name == "TypeError"
    assert problems.statuses == [500]
    assert any("500" in text for text in problems.console), problems.console
    expect(page.get_by_test_id("ticket")).to_be_hidden()


def test_chat_widget_round_trips_with_the_bot(page: Page, sandbox: Sandbox) -> None:
    """A typed question gets the bot's answer; the bot's quick replies show as buttons that answer when clicked."""
    problems = PageProblems(page)
    page.goto(f"{sandbox.url}/site/")
    expect(page.get_by_test_id("chat-status")).to_have_text("Connected to the Acme Bank assistant.")
    page.get_by_test_id("chat-input").fill("when are you open?")
    page.get_by_test_id("chat-send").click()
    expect(page.get_by_test_id("chat-user-message")).to_have_text(["when are you open?"])
    expect(page.get_by_test_id("chat-message")).to_have_text(["We are open Monday to Friday, 9am to 5pm."])
    page.fill("role=textbox[name='Type your question']", "hi")
    page.click("role=button[name='Send']")
    expect(page.get_by_test_id("chat-button")).to_have_text(["Billing", "Support", "Opening hours", "Talk to a person"])
    page.click("role=button[name='Billing']")
    expect(page.get_by_test_id("chat-message").last).to_have_text("Billing: would you like to pay a bill or hear your balance?")
    expect(page.get_by_test_id("chat-button")).to_have_text(["Pay a bill", "Balance"])  # the menu went with the click
    expect(page.get_by_test_id("chat-user-message").last).to_have_text("Billing")
    assert problems.errors == [] and problems.console == []


def test_help_search_filters_the_answers(page: Page, sandbox: Sandbox) -> None:
    """Typing in the help search hides the answers without every word typed, and says how many are left."""
    page.goto(f"{sandbox.url}/site/help")
    answers = page.get_by_test_id("faq")
    expect(answers.filter(visible=True)).to_have_count(4)
    search = page.get_by_role("searchbox", name="Search help")
    search.fill("lost CARD")
    expect(answers.filter(visible=True)).to_have_count(1)
    expect(page.get_by_role("heading", name="I lost my card. What do I do?")).to_be_visible()
    expect(page.get_by_test_id("help-count")).to_have_text("1 answer")
    search.fill("zebra")
    expect(answers.filter(visible=True)).to_have_count(0)
    expect(page.get_by_test_id("help-count")).to_have_text('No answers match "zebra".')
    search.fill("")
    expect(answers.filter(visible=True)).to_have_count(4)
