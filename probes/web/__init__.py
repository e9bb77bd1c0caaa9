"""Browser journeys (`channel: web`): a customer's walk through a website in headless Chromium.

One browser process per probe (per distinct `target.browser` settings), launched on first
use and shared by every concurrent run; each run gets a fresh BrowserContext (its own
cookies, storage and cache) with one page, closed when the run ends. A browser that dies
is relaunched for the next run. Playwright's errors become cxtest's error tree in
`WebSession._translate` and nowhere else.

Every step also reports what the built-in checks saw meanwhile on any page of the run:
console errors, uncaught errors, responses >= 400 and failed requests (probes.web.watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, ClassVar, TypeVar
from urllib.parse import urljoin

from playwright.async_api import Browser, BrowserContext, Error as PlaywrightError, Locator, Page, Playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import async_playwright, expect

from cxtest import logs
from cxtest.checks import ABSENT, judge_match, show
from cxtest.errors import ProbeError, ProtocolError, StepFailed, StepTimeout, TargetUnreachable
from cxtest.model import CheckResult, Observation, Outcome, Scenario, Step, format_duration
from probes.base import RunContext
from probes.web import model as m
from probes.web.model import BrowserSettings, WebStep, WebTarget
from probes.web.watch import Watch

log = logs.get_logger("cxtest.web")
T = TypeVar("T")

# Switches that keep Chromium from talking to anything but the pages a journey opens
# (https://github.com/GoogleChrome/chrome-launcher/blob/main/docs/chrome-flags-for-tools.md,
# "Background networking"). Playwright passes most of them already; they are repeated here so
# the guarantee does not hang on Playwright's defaults. `--disable-features` is left to
# Playwright: Chromium keeps only the last one given, and a second would drop Playwright's list.
QUIET_ARGS = (
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--no-pings",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    # What the switches above leave on in Debian's Chromium 156, found in its net log: the
    # sign-in service lists Google accounts (accounts.google.com/ListAccounts), an on-demand
    # component install asks update.googleapis.com, and filling a form asks autofill's server
    # (content-autofill.googleapis.com) about the fields. Each is pointed at port 9 of the
    # loopback, a port Chromium refuses to connect to (net::ERR_UNSAFE_PORT): no packet is sent.
    "--gaia-url=http://127.0.0.1:9/",
    "--component-updater=url-source=http://127.0.0.1:9/",
    "--autofill-server-url=http://127.0.0.1:9/",
)
LAUNCH_TIMEOUT = 30.0  # a cold start of Chromium on a busy 2-core machine
CLOSE_TIMEOUT = 10.0  # closing a context, writing a trace
EVIDENCE_TIMEOUT = 5.0  # a screenshot or the HTML of a failed page
GUARD = 0.4  # past the step timeout, for the calls that take none (evaluate, keyboard); the runner allows 0.5
RESERVE = 0.5  # (at most a fifth of the step timeout) kept from the waits for what follows them
READ_TIMEOUT = 0.3  # reading what a failed expectation saw, or the navigation timing, after the step's waits
TIMING_JS = """() => {
  const n = performance.getEntriesByType("navigation")[0];
  return n ? [performance.timeOrigin, n.responseStart, n.domContentLoadedEventEnd, n.loadEventEnd] : null;
}"""
TIMING_MEASURES = ("ttfb", "dom_content_loaded", "load")


@dataclass
class _Browser:
    browser: Browser
    gone: asyncio.Future[None]  # done when the browser disconnects (closed, crashed, killed)


class WebSession:
    """One run: a browser context, its one page, what the built-in checks saw, the evidence."""

    def __init__(self, probe: WebProbe, scenario: Scenario, ctx: RunContext):
        self.probe, self.ctx = probe, ctx
        self.target: WebTarget = scenario.target
        self.record: _Browser | None = None
        self.context: BrowserContext | None = None
        self.page: Page | None = None
        self.broken: asyncio.Future[str] = asyncio.get_running_loop().create_future()  # "browser" or "page"
        self.watch = Watch(self.target)
        self.failed = False
        self.timed: dict[float, set[str]] = {}  # navigation (its timeOrigin) -> measures already recorded
        self.deadline, self.timeout = 0.0, 0.0  # loop time by which the current step's waits end; its timeout
        self.uncommitted = False  # a navigation timed out before the page changed: screenshots would wait on it

    async def open(self) -> None:
        self.record = await self.probe.browser(self.target.browser)
        self.record.gone.add_done_callback(self._browser_gone)
        record = self.record
        target = self.target
        try:
            self.context = await asyncio.wait_for(
                record.browser.new_context(
                    base_url=target.url,
                    viewport={"width": target.viewport.width, "height": target.viewport.height},
                    locale=target.locale,
                    ignore_https_errors=target.ignore_https_errors,
                ),
                LAUNCH_TIMEOUT,
            )
            self.watch.attach(self.context)
            if target.trace != "off":
                await asyncio.wait_for(self.context.tracing.start(screenshots=True, snapshots=True), LAUNCH_TIMEOUT)
            self.page = await asyncio.wait_for(self.context.new_page(), LAUNCH_TIMEOUT)
        except (PlaywrightError, TimeoutError) as exc:
            raise ProbeError(f"cannot open a browser context: {_first_line(exc) or 'no answer from the browser'}") from None
        self.page.on("crash", lambda _: self._break("page"))

    def _browser_gone(self, _: object) -> None:
        self._break("browser")

    def _break(self, what: str) -> None:
        if not self.broken.done():
            self.broken.set_result(what)

    # ----------------------------------------------------------------- steps

    async def step(self, index: int, step: Step, timeout: float) -> Observation:
        from probes.http import render

        try:
            given = step.model_dump(by_alias=True, exclude_unset=True)
            filled = render(given, self.ctx.variables)
            if filled != given:
                step = type(step).model_validate(filled)
            async with asyncio.timeout(timeout + GUARD):
                observation = await self._unless_broken(self._do(index, step, timeout))
        except PlaywrightError as exc:
            self.failed = True
            raise await self._translate(exc, step, timeout) from None
        except TimeoutError:
            self.failed = True
            what = "the expression did not finish" if isinstance(step, m.Evaluate) else "the page did not answer"
            raise StepTimeout(f"{what} within {format_duration(timeout)}{self.watch.also_seen()}") from None
        except BaseException:
            self.failed = True
            raise
        if any(check.outcome is Outcome.failed for check in observation.checks):
            self.failed = True
        return observation

    async def _unless_broken(self, work: Awaitable[T]) -> T:
        """The step's result, or at once the reason the browser or the page died under it."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, self.broken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if self.broken.done():
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: the broken browser explains it better
            raise self._broken_error()
        return task.result()

    def _broken_error(self) -> Exception:
        if self.broken.result() == "page":
            return StepFailed(f"the page crashed (its renderer process died){self.watch.also_seen()}")
        return ProbeError("the browser closed or crashed during the step; the next run starts a new one")

    async def _do(self, index: int, step: Step, timeout: float) -> Observation:
        page = self.page
        assert page is not None
        self.deadline, self.timeout = asyncio.get_running_loop().time() + timeout, timeout
        checks: list[CheckResult] = []
        evidence: dict[str, str] = {}
        if isinstance(step, m.Goto):
            await page.goto(step.goto.url, wait_until=step.goto.wait_until, timeout=self._left())
        elif isinstance(step, m.Click):
            await page.locator(step.click.selector).click(timeout=self._left())
        elif isinstance(step, m.Fill):
            await page.locator(step.fill.selector).fill(step.fill.value, timeout=self._left())
        elif isinstance(step, m.Select):
            choose = step.select
            await page.locator(choose.selector).select_option(value=choose.value, label=choose.label, timeout=self._left())
        elif isinstance(step, m.Press):
            if step.press.selector:
                await page.locator(step.press.selector).press(step.press.key, timeout=self._left())
            else:
                await page.keyboard.press(step.press.key)
        elif isinstance(step, m.WaitForStep):
            wait = step.wait_for
            if wait.selector is not None:
                await page.locator(wait.selector).wait_for(state=wait.state, timeout=self._left())
            elif wait.url is not None:
                await page.wait_for_url(wait.url, timeout=self._left())
            else:
                await page.wait_for_load_state(wait.load_state, timeout=self._left())
        elif isinstance(step, m.ExpectText):
            checks += await self._expect_text(step.expect_text)
        elif isinstance(step, m.ExpectVisible):
            checks.append(await self._expect_visible(step.expect_visible.selector))
        elif isinstance(step, m.ExpectUrl):
            checks.append(await self._expect_url(step.expect_url))
        elif isinstance(step, m.ExpectTitle):
            checks.append(await self._expect_title(step.expect_title))
        elif isinstance(step, m.Evaluate):
            value = await page.evaluate(step.evaluate.expression)
            if step.evaluate.expect is not None:
                checks += judge_match(f"evaluate {show(step.evaluate.expression, 40)}", value, step.evaluate.expect)
        elif isinstance(step, m.Save):
            for name, source in step.save.items():
                self.ctx.variables[name] = await self._saved(name, source)
        elif isinstance(step, m.Screenshot):
            shot = step.screenshot
            path = self.ctx.artifact_path(f"step-{index + 1}-{_slug(shot.name)}.png")
            if shot.selector:
                await page.locator(shot.selector).screenshot(path=path, timeout=self._left())
            else:
                await page.screenshot(path=path, full_page=shot.full_page, timeout=self._left())
            evidence["screenshot"] = str(path)
        checks += self.watch.judge()
        if any(check.outcome is Outcome.failed for check in checks):
            evidence["url"] = page.url
        return Observation(checks=tuple(checks), measures=await self._timing(), evidence=evidence)

    def _left(self, reserve: bool = False) -> float:
        """Milliseconds for Playwright's next wait (where 0 would mean none) up to the step's deadline;
        an expectation keeps a reserve to read what it saw when it fails."""
        kept = min(RESERVE, self.timeout / 5) if reserve else 0.0
        return max(1.0, (self.deadline - kept - asyncio.get_running_loop().time()) * 1000)

    async def _expect_text(self, expect_text: m.TextExpect) -> list[CheckResult]:
        locator = self.page.locator(expect_text.selector)
        label = f"text of {expect_text.selector!r}" if expect_text.selector != "body" else "page text"
        wanted = (
            ("contains", expect_text.contains, lambda: expect(locator).to_contain_text(expect_text.contains, timeout=self._left(True), use_inner_text=True)),
            ("==", expect_text.equals, lambda: expect(locator).to_have_text(expect_text.equals, timeout=self._left(True), use_inner_text=True)),
            ("matches", expect_text.matches, lambda: expect(locator).to_have_text(re.compile(expect_text.matches), timeout=self._left(True), use_inner_text=True)),
        )
        checks = []
        for how, value, assertion in wanted:
            if value is None:
                continue
            held = await _holds(assertion())
            actual = await _text(locator)
            sentence = f"{label} ({show(actual, 80)}) {how} {show(value)}"
            checks.append(CheckResult(label, Outcome.passed if held else Outcome.failed, value, actual, sentence))
        return checks

    async def _expect_visible(self, selector: str) -> CheckResult:
        locator = self.page.locator(selector)
        if await _holds(expect(locator).to_be_visible(timeout=self._left(True))):
            return CheckResult(selector, Outcome.passed, "visible", "visible", f"{selector!r} is visible")
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                found = await locator.count()
        except TimeoutError:
            found = 0
        seen = "hidden" if found else "absent"
        return CheckResult(selector, Outcome.failed, "visible", seen, f"{selector!r} is visible ({'found but hidden' if found else 'not found'})")

    async def _expect_url(self, expect_url: m.UrlExpect) -> CheckResult:
        wanted: Any = expect_url.glob if expect_url.glob is not None else re.compile(expect_url.matches)
        held = await _holds(self.page.wait_for_url(wanted, timeout=self._left(True), wait_until="commit"))
        how = f"matches glob {expect_url.glob!r}" if expect_url.glob is not None else f"matches {expect_url.matches!r}"
        expected = expect_url.glob or expect_url.matches
        return CheckResult("url", Outcome.passed if held else Outcome.failed, expected, self.page.url, f"url ({show(self.page.url, 80)}) {how}")

    async def _expect_title(self, expect_title: m.TitleExpect) -> CheckResult:
        if expect_title.equals is not None:
            wanted: Any = expect_title.equals
            how, expected = "==", expect_title.equals
        elif expect_title.contains is not None:
            wanted, how, expected = re.compile(re.escape(expect_title.contains)), "contains", expect_title.contains
        else:
            wanted, how, expected = re.compile(expect_title.matches), "matches", expect_title.matches
        held = await _holds(expect(self.page).to_have_title(wanted, timeout=self._left(True)))
        title = await self.page.title()
        return CheckResult("title", Outcome.passed if held else Outcome.failed, expected, title, f"title ({show(title, 80)}) {how} {show(expected)}")

    async def _saved(self, name: str, source: m.SaveFrom) -> Any:
        page = self.page
        if source.evaluate is not None:
            value = await page.evaluate(source.evaluate)
        elif source.url:
            value = page.url
        elif source.title:
            value = await page.title()
        else:
            locator = page.locator(source.selector)
            if source.attribute is not None:
                value = await locator.get_attribute(source.attribute, timeout=self._left())
                if value is None:
                    raise StepFailed(f"cannot save {name!r}: {source.selector!r} has no attribute {source.attribute!r}")
            elif source.input_value:
                value = await locator.input_value(timeout=self._left())
            else:
                value = " ".join((await locator.inner_text(timeout=self._left())).split())
        if value is None:
            raise StepFailed(f"cannot save {name!r}: the expression returned nothing (null or undefined)")
        return value

    async def _timing(self) -> dict[str, float]:
        """TTFB, DOMContentLoaded and load of the page's newest navigation, each recorded once, in seconds."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                entry = await self.page.evaluate(TIMING_JS)
        except (PlaywrightError, TimeoutError):
            return {}  # mid-navigation, or a page too busy to answer: the next step reads it
        if not entry:
            return {}
        origin, *values = entry
        recorded = self.timed.setdefault(origin, set())
        measures = {}
        for name, value in zip(TIMING_MEASURES, values):
            if value > 0 and name not in recorded:  # 0: that moment has not come yet
                recorded.add(name)
                measures[name] = value / 1000
        return measures

    # ----------------------------------------------------------------- errors

    async def _translate(self, exc: PlaywrightError, step: Step, timeout: float) -> Exception:
        """Playwright's errors -> cxtest's error tree, naming what was awaited."""
        text = _first_line(exc)
        crashed = re.match(r"(Target|Page) crashed", text)
        if "net::ERR_ABORTED" in text:
            # A renderer that dies mid-navigation aborts it; Playwright reports the crash a moment later.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.broken), 0.5)
        if crashed or re.match(r"Target closed|Target page, context or browser has been closed|Browser has been closed", text):
            # Playwright may fail the call before it reports the crash or the disconnect that caused it.
            try:
                await asyncio.wait_for(asyncio.shield(self.broken), 1.0)
            except TimeoutError:
                self._break("page" if crashed else "browser")
        if self.broken.done():
            return self._broken_error()
        within = format_duration(timeout)
        also = self.watch.also_seen()
        selector = _selector(step)
        if isinstance(step, m.Goto):
            url = urljoin(self.target.url or "", step.goto.url)
            if isinstance(exc, PlaywrightTimeout):
                self.uncommitted = self.page.url.split("#")[0] != url.split("#")[0]
                return StepTimeout(f"{url} did not load within {within} (waiting for {step.goto.wait_until}){also}")
            return _navigation_error(text, url)
        if isinstance(exc, PlaywrightTimeout):
            if isinstance(step, m.WaitForStep) and step.wait_for.url is not None:
                return StepTimeout(f"the page did not reach {step.wait_for.url!r} within {within} (it is at {self.page.url}){also}")
            if isinstance(step, m.WaitForStep) and step.wait_for.load_state is not None:
                return StepTimeout(f"the page did not reach {step.wait_for.load_state} within {within}{also}")
            if selector is not None:
                return StepFailed(await self._not_ready(selector, step, exc, within) + also)
            return StepTimeout(f"no answer within {within}{also}")
        if "strict mode violation" in text:
            return StepFailed(f"selector {selector!r} matches more than one element; make it match one ({text})")
        if re.search(r"InvalidSelectorError|while parsing|Unknown engine|is not a valid (selector|XPath)", text):
            return ProbeError(f"bad selector {selector!r}: {text}")
        if isinstance(step, m.Evaluate) or (isinstance(step, m.Save) and any(s.evaluate for s in step.save.values())):
            return StepFailed(f"the expression threw {text}{also}")
        return StepFailed(text + also)

    async def _not_ready(self, selector: str, step: Step, exc: PlaywrightError, within: str) -> str:
        """Absent, or present but never ready (hidden, disabled...): the call log says which."""
        if isinstance(step, m.WaitForStep) and step.wait_for.state != "visible":
            return f"selector {selector!r} did not become {step.wait_for.state} within {within}"
        try:
            async with asyncio.timeout(0.2):
                found = await self.page.locator(selector).count()
        except (PlaywrightError, TimeoutError):
            found = 0
        if not found:
            return f"selector {selector!r} did not appear within {within}"
        calls = [re.sub(r"^[\s-]*(\d+ × )?", "", line) for line in str(exc).split("Call log:", 1)[-1].splitlines()]
        reasons = [line for line in calls if line.startswith("element ") or "intercepts pointer events" in line]
        reason = reasons[-1] if reasons else "it never became visible, enabled and stable"
        return f"selector {selector!r} was found but not ready within {within}: {reason}"

    # ----------------------------------------------------------------- close

    async def close(self) -> None:
        if self.record is not None:
            self.record.gone.remove_done_callback(self._browser_gone)  # the browser outlives this run
        if self.context is None:
            return
        if self.failed and self.ctx.keep_failing_evidence and not self.broken.done() and not self.uncommitted:
            await self._failure_evidence()
        if self.target.trace != "off" and not (self.broken.done() and self.broken.result() == "browser"):
            keep = self.ctx.wants_evidence and (self.target.trace == "on" or self.failed)
            try:
                path = self.ctx.artifact_path("trace.zip") if keep else None
                await asyncio.wait_for(self.context.tracing.stop(path=path), CLOSE_TIMEOUT)
            except (PlaywrightError, TimeoutError) as exc:
                log.warning("trace not saved", run=self.ctx.run_id, error=_first_line(exc))
        try:
            await asyncio.wait_for(self.context.close(), CLOSE_TIMEOUT)
        except (PlaywrightError, TimeoutError):
            pass  # a dead browser took the context with it

    async def _failure_evidence(self) -> None:
        """A screenshot and the HTML of the page as the failure left it."""
        page = self.page
        try:
            await page.screenshot(path=self.ctx.artifact_path("failure.png"), timeout=EVIDENCE_TIMEOUT * 1000)
            async with asyncio.timeout(EVIDENCE_TIMEOUT):
                self.ctx.write_text("failure.html", await page.content())
        except (PlaywrightError, TimeoutError) as exc:
            log.warning("failure evidence incomplete", run=self.ctx.run_id, error=_first_line(exc))


async def _holds(assertion: Awaitable[None]) -> bool:
    """Whether an expectation came true before its timeout (Playwright's `expect` or a wait)."""
    try:
        await assertion
    except (AssertionError, PlaywrightTimeout):
        return False
    return True


async def _text(locator: Locator) -> Any:
    """The element's visible text, whitespace collapsed (a list when several match), or ABSENT."""
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            texts = await locator.all_inner_texts()
    except (PlaywrightError, TimeoutError):
        return ABSENT
    texts = [" ".join(text.split()) for text in texts]
    return ABSENT if not texts else texts[0] if len(texts) == 1 else texts


def _selector(step: Step) -> str | None:
    for field in ("click", "fill", "select", "press", "wait_for", "expect_text", "expect_visible", "screenshot"):
        value = getattr(step, field, None)
        if value is not None and getattr(value, "selector", None):
            return value.selector
    if isinstance(step, m.Save):
        return next((source.selector for source in step.save.values() if source.selector), None)
    return None


def _first_line(exc: BaseException) -> str:
    """Playwright's message without its `Page.goto: ` prefix and call log."""
    text = str(getattr(exc, "message", None) or exc).split("\nCall log:", 1)[0].strip()
    return re.sub(r"^[A-Z]\w*\.\w+: ", "", text).splitlines()[0] if text else ""


def _navigation_error(text: str, url: str) -> Exception:
    """A failed navigation, by Chromium's net error code."""
    found = re.search(r"net::(ERR_[A-Z_0-9]+)", text)
    code = found.group(1) if found else ""
    host = re.sub(r"^\w+://([^/]+).*$", r"\1", url)
    if code in ("ERR_NAME_NOT_RESOLVED", "ERR_NAME_RESOLUTION_FAILED"):
        return TargetUnreachable(f"DNS lookup failed for {host.rsplit(':', 1)[0]} ({url})")
    if code == "ERR_CONNECTION_REFUSED":
        return TargetUnreachable(f"connection refused by {host} ({url})")
    if code.startswith(("ERR_CERT_", "ERR_SSL_")) or code == "ERR_BAD_SSL_CLIENT_AUTH_CERT":
        return TargetUnreachable(f"TLS with {host} failed: net::{code} ({url})")
    if code in ("ERR_TIMED_OUT", "ERR_CONNECTION_TIMED_OUT"):
        return StepTimeout(f"{url} did not answer: net::{code}")
    if code in ("ERR_EMPTY_RESPONSE", "ERR_INVALID_HTTP_RESPONSE", "ERR_CONNECTION_CLOSED", "ERR_CONNECTION_RESET", "ERR_INVALID_RESPONSE"):
        return ProtocolError(f"{host} broke off or garbled its answer: net::{code} ({url})")
    if code == "ERR_ABORTED":
        return StepFailed(f"the navigation to {url} was aborted (a download, or the page went elsewhere)")
    if "invalid URL" in text:
        return ProbeError(f"{text}: give target.url to resolve relative URLs against")
    if code:
        return TargetUnreachable(f"cannot load {url}: net::{code}")
    return StepFailed(f"cannot load {url}: {text}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "screenshot"


class WebProbe:
    channel: ClassVar[str] = "web"
    target_model: ClassVar[type] = WebTarget
    step_model: ClassVar[Any] = WebStep
    measures: ClassVar[frozenset[str]] = frozenset(TIMING_MEASURES)

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browsers: dict[BrowserSettings, _Browser] = {}
        self._launching = asyncio.Lock()  # one launch at a time; concurrent runs wait for it and share it

    async def browser(self, settings: BrowserSettings) -> _Browser:
        """The shared browser for these settings, launched (again) when there is none alive."""
        async with self._launching:
            record = self._browsers.get(settings)
            if record is None or record.gone.done():
                if record is not None:
                    log.warning("browser gone; relaunching", executable=settings.executable)
                record = self._browsers[settings] = await self._launch(settings)
            return record

    async def _launch(self, settings: BrowserSettings) -> _Browser:
        executable = settings.executable
        if executable is not None and not (Path(executable).is_file() and os.access(executable, os.X_OK)):
            raise ProbeError(
                f"browser {executable} not found: install Debian's chromium (scripts/setup.sh), "
                "or set target.browser.executable or CXTEST_BROWSER (`playwright` for Playwright's own build)"
            )
        if self._playwright is None:
            self._playwright = await async_playwright().start()
        try:
            browser = await self._playwright.chromium.launch(
                executable_path=executable,
                headless=settings.headless,
                args=[*QUIET_ARGS, *settings.args],
                timeout=LAUNCH_TIMEOUT * 1000,
            )
        except PlaywrightError as exc:
            hint = " (for Playwright's own build run `playwright install chromium`)" if executable is None else ""
            raise ProbeError(f"cannot start the browser {executable or 'bundled with Playwright'}: {_first_line(exc)}{hint}") from None
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        browser.on("disconnected", lambda _: gone.done() or gone.set_result(None))
        log.info("browser started", executable=executable, version=browser.version)
        return _Browser(browser, gone)

    @asynccontextmanager
    async def session(self, scenario: Scenario, ctx: RunContext) -> AsyncIterator[WebSession]:
        session = WebSession(self, scenario, ctx)
        try:
            await session.open()
            yield session
        finally:
            await session.close()

    async def aclose(self) -> None:
        records, self._browsers = list(self._browsers.values()), {}
        for record in records:
            if not record.gone.done():
                try:
                    await asyncio.wait_for(record.browser.close(), CLOSE_TIMEOUT)
                except (PlaywrightError, TimeoutError):
                    pass
        if self._playwright is not None:
            playwright, self._playwright = self._playwright, None
            await playwright.stop()
