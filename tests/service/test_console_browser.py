"""The operator console in a real browser: Playwright driving Debian's headless chromium against
a real ``stage0 serve`` with two worker processes (sessions live in the store, so a request may
land on either), and the API's ``/docs`` page (Swagger UI, vendored: nothing from another host).

The screenshots go to the test's ``tmp_path``, so a test run leaves the repository alone; set
``STAGE0_DOCS_IMAGES`` to a folder to keep them there (``make docs-images`` sets it to docs/img,
the README's screenshots).

``.ci/run`` installs Debian's chromium; without /usr/bin/chromium this test fails (it never
skips), and it never downloads a browser of its own (no ``playwright install``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Request, expect, sync_playwright

from stage0.store import Store
from stage0.store.keys import create_key
from tests.service.conftest import start_server
from tests.service.test_approvals import PAYOUT, T0

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
SHOTS = ("console-inbox.png", "console-approved.png", "console-explorer.png",
         "console-decision.png", "console-policy.png")


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the screenshots go: the folder ``STAGE0_DOCS_IMAGES`` names (relative to the
    working directory), else ``tmp_path/screenshots``."""
    named = os.environ.get("STAGE0_DOCS_IMAGES", "").strip()
    return Path(named).resolve() if named else tmp_path / "screenshots"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    return screenshot_dir(tmp_path)


def _browser_path() -> str:
    if not CHROMIUM.is_file():
        pytest.fail(f"Debian's chromium is not installed at {CHROMIUM}: run "
                    "`apt-get install -y chromium` (.ci/run does) — the console's browser test "
                    "needs it and never downloads a browser")
    return str(CHROMIUM)


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.glob("*")) if p.is_file()}


def test_an_approver_signs_in_approves_and_finds_the_decision(tmp_path: Path,
                                                              screenshots: Path) -> None:
    executable = _browser_path()
    docs_images = _snapshot(DOCS_IMAGES)
    db = f"sqlite:///{tmp_path / 'stage0.db'}"
    store = Store(db)
    store.migrate()
    _, agent = create_key(store, tenant="default", name="payout-agent", scopes=["check"],
                          plan="pro", unlimited=True, principal="agent-7")
    _, approver = create_key(store, tenant="default", name="dana", plan="pro", unlimited=True,
                             scopes=["approve", "audit:read"], principal="dana",
                             roles=["risk_ops"])
    store.dispose()
    server = start_server(db, tmp_path, workers=2, frozen_time=T0)
    off_origin: list[str] = []
    try:
        deferred = httpx.post(f"{server.url}/check", json=PAYOUT,
                              headers={"x-api-key": agent}, timeout=10).json()
        assert deferred["verdict"] == "DEFER"
        approval_id = deferred["approval"]["approval_id"]

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, headless=True,
                                         args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1366, "height": 900})
            page = context.new_page()

            def watch(request: Request) -> None:
                if not request.url.startswith((server.url, "data:")):
                    off_origin.append(request.url)

            page.on("request", watch)
            failed: list[str] = []
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text)
                    if m.type == "error" else None)

            # sign in as the second principal (the agent-7 key made the request)
            page.goto(f"{server.url}/console")
            expect(page).to_have_url(re.compile(r"/console/login$"))
            expect(page.get_by_label("API key")).to_be_focused()  # autofocus
            page.keyboard.type(approver)
            page.keyboard.press("Enter")
            expect(page).to_have_url(re.compile(r"/console/inbox$"))
            expect(page.get_by_text("Signed in as")).to_contain_text("dana")

            # the pending request created by /check
            card = page.locator(f"#card-{approval_id}")
            expect(card).to_contain_text("payments.create_payout")
            expect(card).to_contain_text("APPROVAL_REQUIRED_PENDING")
            expect(card).to_contain_text("0 of 1")
            expect(card.locator("pre.json .nt").first).to_have_text('"amount"')
            expect(card.locator(".badge.status")).to_have_text("pending")
            _shot(page, screenshots / "console-inbox.png")
            page.keyboard.press("Tab")  # keyboard users can skip the navigation
            expect(page.get_by_role("link", name="Skip to content")).to_be_focused()

            # approve without a full reload: the card changes in place
            page.evaluate("window.stage0NoReload = 'still here'")
            card.get_by_label("Reason").fill("Invoice 2231 matches PO-88")
            card.get_by_role("button", name="Approve").click()
            expect(card.locator(".badge.status")).to_have_text("approved")
            expect(card).to_contain_text("Approved (1 of 1)")
            assert page.evaluate("window.stage0NoReload") == "still here"
            expect(page).to_have_url(re.compile(r"/console/inbox$"))
            _shot(page, screenshots / "console-approved.png")

            # the agent retries with the approval: ALLOW
            retry = dict(PAYOUT, context={**PAYOUT["context"], "approval_id": approval_id})
            allowed = httpx.post(f"{server.url}/check", json=retry,
                                 headers={"x-api-key": agent}, timeout=10).json()
            assert allowed["verdict"] == "ALLOW"

            # find the decision in the explorer
            page.get_by_role("link", name="Decisions").click()
            expect(page.get_by_role("heading", name="Decision explorer")).to_be_visible()
            page.get_by_label("Verdict").select_option("DEFER")
            page.get_by_label("Tool").fill("payments.create_payout")
            page.evaluate("window.stage0NoReload = 'explorer'")
            page.get_by_role("button", name="Filter").click()
            expect(page).to_have_url(re.compile(r"verdict=DEFER"))
            results = page.locator("#results")
            expect(results).to_contain_text(deferred["request_id"][:8])
            expect(results.locator(".verdict-ALLOW")).to_have_count(0)
            assert page.evaluate("window.stage0NoReload") == "explorer"
            _shot(page, screenshots / "console-explorer.png")
            results.get_by_role("link", name=re.compile(deferred["request_id"])).click()
            expect(page.locator(".chain")).to_contain_text("Hash chain: verifies")
            expect(page.get_by_role("heading", name="History of this action")).to_be_visible()
            history = page.locator("table.grid").nth(1)
            for kind in ("approval.created", "approval.vote", "approval.approved",
                         "approval.used", "ALLOW decision"):
                expect(history).to_contain_text(kind)
            expect(page.locator("body")).to_contain_text("stage0-policy-pack@1.0.0")
            _shot(page, screenshots / "console-decision.png", full_page=True)

            page.get_by_role("link", name="Policy").click()
            expect(page.get_by_role("heading", name="Change windows")).to_be_visible()
            expect(page.locator("body")).to_contain_text("money_movement")
            _shot(page, screenshots / "console-policy.png")

            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("status")).to_contain_text("You are signed out")
            context.close()
            browser.close()

        assert off_origin == [], off_origin
        assert failed == [], failed
        assert console_errors == [], console_errors  # no CSP violation, no script error
        approval = httpx.get(f"{server.url}/v1/approvals/{approval_id}",
                             headers={"x-api-key": approver}, timeout=10).json()
        assert approval["status"] == "used"
        assert approval["votes"][0]["principal"] == "dana"
        assert all((screenshots / name).stat().st_size > 0 for name in SHOTS)
        if screenshots != DOCS_IMAGES.resolve():  # make docs-images writes there on purpose
            assert _snapshot(DOCS_IMAGES) == docs_images, "the browser test rewrote docs/img"
    finally:
        server.stop()


def test_the_api_docs_page_renders_from_our_own_origin(tmp_path: Path) -> None:
    """Swagger UI at /docs, with its vendored assets and the page's CSP: it renders the
    document, requests nothing from another host, and the browser reports no CSP violation."""
    executable = _browser_path()
    server = start_server(f"sqlite:///{tmp_path / 'stage0.db'}", tmp_path)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, headless=True,
                                         args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            failed: list[str] = []
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text)
                    if m.type in ("error", "warning") else None)
            page.goto(f"{server.url}/docs")
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("Stage0")
            expect(page.locator(".opblock-summary-path", has_text="/check").first).to_be_visible()
            page.locator(".opblock-summary", has_text="/check").first.click()
            expect(page.locator(".opblock-body").first).to_contain_text("Request body")
            browser.close()
        off_origin = [u for u in requested if not u.startswith((server.url, "data:"))]
        assert off_origin == [], off_origin
        assert f"{server.url}/docs/static/swagger-ui-bundle.js" in requested
        assert f"{server.url}/openapi.json" in requested
        assert failed == [], failed
        assert console_errors == [], console_errors  # a CSP violation is one
    finally:
        server.stop()


def _shot(page: Page, path: Path, *, full_page: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)


def test_screenshots_go_to_tmp_path_unless_a_folder_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGE0_DOCS_IMAGES", raising=False)
    assert screenshot_dir(tmp_path).is_relative_to(tmp_path)
    assert not screenshot_dir(tmp_path).is_relative_to(DOCS_IMAGES.parent)
    monkeypatch.setenv("STAGE0_DOCS_IMAGES", "")
    assert screenshot_dir(tmp_path).is_relative_to(tmp_path)
    monkeypatch.setenv("STAGE0_DOCS_IMAGES", str(tmp_path / "kept"))
    assert screenshot_dir(tmp_path) == tmp_path / "kept"
    monkeypatch.chdir(DOCS_IMAGES.parents[1])
    monkeypatch.setenv("STAGE0_DOCS_IMAGES", "docs/img")  # what `make docs-images` sets
    assert screenshot_dir(tmp_path) == DOCS_IMAGES.resolve()
