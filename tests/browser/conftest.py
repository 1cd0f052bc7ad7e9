"""The browser tier: Playwright driving Debian's Chromium against ``limner serve`` in a subprocess.

- Chromium comes from the project's own ``scripts/install-browser`` (apt), run once per session when
  ``/usr/bin/chromium`` is missing; Playwright's own browser download cannot work offline.
- Two servers, each on a free port with its own data dir: ``server`` with the quick start's defaults
  (sandbox image providers, sandbox chat model; partial images on, so the UI shows them), and
  ``keys_server`` where the OpenAI Image Tools take each user's own key (``user_provided``) and talk to
  the built-in emulator on a fixed port, so a person can enter a key in Settings and use it.
- Pages run under the app's real Content-Security-Policy (no ``bypass_csp``): waiting uses locators,
  never ``wait_for_function`` (which evaluates strings).
- Screenshots of the main screens go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.processes import LimnerServe, clean_env, free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery"
DESKTOP = {"width": 1360, "height": 860}
PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=15_000)


class LimnerServer(LimnerServe):
    """``limner serve`` with a clean environment and its own data dir under ``workdir``."""

    def __init__(self, workdir: Path, **env: str) -> None:
        super().__init__(workdir, clean_env(LIMNER_DATA_DIR=str(workdir / "data"), **env))


@pytest.fixture(scope="package", autouse=True)
def chromium() -> Path:
    """Debian's Chromium, installed by the project's script when it is missing."""
    if not CHROMIUM.exists():
        result = subprocess.run(
            [str(ROOT / "scripts" / "install-browser")], capture_output=True, text=True, check=False, timeout=900
        )
        if result.returncode != 0 or not CHROMIUM.exists():
            pytest.fail(
                f"scripts/install-browser could not install Chromium (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
    return CHROMIUM


@pytest.fixture(scope="package")  # torn down before the next tier: the sync API holds an event loop
def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LimnerServer]]:
    """Both servers start together (each takes a few seconds), and stop at the end of the session."""
    emulator_port = free_port()
    servers = {
        "default": LimnerServer(tmp_path_factory.mktemp("serve-default"), LIMNER_PARTIAL_IMAGES="2"),
        "keys": LimnerServer(
            tmp_path_factory.mktemp("serve-keys"),
            LIMNER_SANDBOX_PORT=str(emulator_port),
            IMAGE_GEN_OAI_API_KEY="user_provided",
            IMAGE_GEN_OAI_BASEURL=f"http://127.0.0.1:{emulator_port}/openai/v1",
            SD_WEBUI_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens: the probe says so
        ),
    }
    try:
        for started in servers.values():
            started.wait_ready()
            started.wait_probed()
        yield servers
    finally:
        for started in servers.values():
            started.stop()


@pytest.fixture(scope="package")  # torn down before the next tier: the sync API holds an event loop
def server(_servers: dict[str, LimnerServer]) -> LimnerServer:
    return _servers["default"]


@pytest.fixture(scope="package")  # torn down before the next tier: the sync API holds an event loop
def keys_server(_servers: dict[str, LimnerServer]) -> LimnerServer:
    return _servers["keys"]


@pytest.fixture(scope="package")  # torn down before the next tier: the sync API holds an event loop
def playwright_session() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="package")  # torn down before the next tier: the sync API holds an event loop
def browser(playwright_session: Playwright, chromium: Path) -> Iterator[Browser]:
    launched = playwright_session.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@dataclass
class Visitor:
    """One person's browser: a context of its own (cookies, storage) and a page on it."""

    context: BrowserContext
    page: Page
    base_url: str
    errors: list[str]

    def sign_up(self, name: str | None = None) -> str:
        name = name or f"u{uuid.uuid4().hex[:10]}"
        page = self.page
        page.goto(self.base_url + "/")
        expect(page).to_have_url(self.base_url + "/signin")
        page.get_by_role("tab", name="Create account").click()
        panel = page.locator("#panel-signup")
        panel.get_by_label("Name").fill(name)
        panel.get_by_label("Password").fill(PASSWORD)
        panel.get_by_role("button", name="Create account").click()
        self.wait_ready()
        return name

    def wait_ready(self) -> None:
        expect(self.page.locator("body[data-ready]")).to_have_count(1)

    @property
    def composer(self) -> Locator:
        return self.page.get_by_label("Message", exact=True)

    def send(self, text: str) -> None:
        self.composer.fill(text)
        self.composer.press("Enter")

    def answer_done(self) -> None:
        """The answer finished: no typing indicator, and Send is back."""
        expect(self.page.locator(".typing")).to_have_count(0)
        expect(self.page.locator("#send-button")).to_be_visible()

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


def _console_error(message: ConsoleMessage, errors: list[str]) -> None:
    """Console errors fail the test (a CSP violation shows up here), except failed loads that tests cause
    on purpose (404 for someone else's conversation, a connection reset by a route).
    """
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        errors.append(message.text)


@pytest.fixture
def visit(browser: Browser) -> Iterator[Callable[..., Visitor]]:
    """Open a fresh browser context on a server; fails the test on any uncaught page or console error."""
    opened: list[Visitor] = []

    def open_visitor(base: LimnerServer, viewport: dict[str, int] | None = None, dark: bool = False) -> Visitor:
        context = browser.new_context(
            viewport=viewport or DESKTOP, accept_downloads=False, color_scheme="dark" if dark else "light"
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda message: _console_error(message, errors))
        visitor = Visitor(context=context, page=page, base_url=base.url, errors=errors)
        opened.append(visitor)
        return visitor

    yield open_visitor
    for visitor in opened:
        visitor.context.close()
    assert [e for v in opened for e in v.errors] == []
