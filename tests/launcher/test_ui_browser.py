"""The approvals page in headless Chromium: it loads with the token, shows calls as they start
waiting, answers them with its buttons, shows the audit trail, and does nothing without the token."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from launcher.audit_store import AuditStore
from tests.launcher.test_ui_http import RECORD, TOKEN, Lab

CHROMIUM = os.environ.get("FARAMESH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") \
    or "/usr/bin/chromium"  # Debian's package (CI installs it with apt); Fedora names it chromium-browser
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")


def countdown(low: int, high: int) -> re.Pattern:
    """Matches "N s" for low <= N <= high, as the expiry column shows it."""
    return re.compile("^(" + "|".join(str(n) for n in range(low, high + 1)) + ") s$")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def lab(tmp_path: Path):
    started = Lab(tmp_path)
    yield started
    started.close()


@pytest.fixture
def page(browser: Browser):
    context = browser.new_context()
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda err: problems.append(str(err)))
    opened.problems = problems
    yield opened
    context.close()


def open_page(page: Page, lab: Lab, token: str | None = TOKEN) -> None:
    suffix = f"#token={token}" if token is not None else ""
    page.goto(f"http://127.0.0.1:{lab.port}/{suffix}")


def test_page_loads_live_and_strips_token_from_address(page, lab):
    """With the token the page goes live, says nothing waits, and drops the token from the address bar."""
    open_page(page, lab)
    expect(page.locator("#status")).to_have_text("live")
    expect(page.locator("#no-pending")).to_be_visible()
    expect(page.locator("#sessions")).to_have_text("Showing every live run. Runs: s1 (watching)")
    assert page.url == f"http://127.0.0.1:{lab.port}/"
    assert page.problems == []


def test_call_appears_after_load_and_approve_lets_it_proceed(page, lab):
    """A call deferred after the page loaded shows up with its details; Approve lets it proceed."""
    open_page(page, lab)
    expect(page.locator("#status")).to_have_text("live")
    waiter = lab.defer("/tmp/x/report.txt", timeout=120)
    row = page.locator("#pending tbody tr")
    expect(row).to_have_count(1)
    cells = row.locator("td")
    expect(cells.nth(0)).to_have_text("s1")
    expect(cells.nth(2)).to_have_text("fs/write")
    expect(cells.nth(3)).to_have_text("sandbox (observed by the sandbox)")
    expect(cells.nth(4)).to_contain_text('"path": "/tmp/x/report.txt"')
    expect(cells.nth(5)).to_have_text("fpl-3")
    expect(cells.nth(6)).to_have_text("writes under /tmp/x need a person")
    expect(cells.nth(8)).to_have_text(countdown(110, 120))
    row.get_by_role("button", name="Approve", exact=True).click()
    waiter.join(10)
    [resolution] = lab.answers
    assert (resolution.approved, resolution.reason_code, resolution.record["scope"]) == (True, "APPROVAL_GRANTED",
                                                                                         "once")
    expect(row).to_have_count(0)
    expect(page.locator("#recent li").first).to_contain_text(f"s1 {resolution.record['approval_id']} fs/write: "
                                                             "approved by socket uid=")
    assert page.problems == []


def test_deny_button_refuses_the_call(page, lab):
    """Deny resolves the waiting call as denied by the page."""
    open_page(page, lab)
    waiter = lab.defer()
    page.locator("#pending tbody tr").get_by_role("button", name="Deny").click()
    waiter.join(10)
    [resolution] = lab.answers
    assert (resolution.approved, resolution.reason_code) == (False, "APPROVAL_DENIED")
    assert resolution.record["approver"].endswith("(web page)")
    expect(page.locator("#pending tbody tr")).to_have_count(0)


def test_approve_for_session_answers_later_identical_calls(page, lab):
    """Approve for session answers the call and every later identical one without asking."""
    open_page(page, lab)
    first = lab.defer()
    page.locator("#pending tbody tr").get_by_role("button", name="Approve for session").click()
    first.join(10)
    lab.defer().join(10)
    assert [(r.approved, r.record["scope"]) for r in lab.answers] == [(True, "session"), (True, "session")]
    assert lab.answers[1].reason_code == "SESSION_APPROVAL"


def test_audit_rows_and_verdict_visible(page, lab):
    """The audit table shows the store's records newest first, with the chain verdict; new rows appear live."""
    with AuditStore(str(lab.db)) as store:
        store.append(RECORD)
        store.append({**RECORD, "tool": "shell/exec", "args": {"cmd": "ls -l"}, "effect": "PERMIT", "reason": "ok"})
        open_page(page, lab)
        rows = page.locator("#audit tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0).locator("td")).to_have_text(["2", TIMESTAMP, "s1", "shell/exec", "ls -l", "PERMIT",
                                                        "fpl-1", "ok", ""])
        expect(page.locator("#verdict")).to_contain_text("Hash chain intact: 2 records, head seq 2")
        store.append({**RECORD, "session": "s9", "reason": "third"})
        expect(rows).to_have_count(3)
        expect(rows.nth(0).locator("td").nth(2)).to_have_text("s9")
    page.fill("#audit-filter input[name=session]", "s9")
    page.click("#audit-filter button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator("td").nth(7)).to_have_text("third")


def test_markup_in_arguments_is_shown_as_text(page, lab):
    """A path an agent chose that looks like HTML is displayed literally, never parsed into elements."""
    open_page(page, lab)
    lab.defer('/tmp/x/<img src=/ onerror="document.title=1">', timeout=60)
    cell = page.locator("#pending tbody tr td").nth(4)
    expect(cell).to_contain_text('<img src=/ onerror=\\"document.title=1\\">')
    assert page.locator("#pending img").count() == 0
    assert page.title() == "faramesh-sandbox approvals"


def test_page_without_token_shows_error_and_cannot_approve(page, lab):
    """Opened without the token the page shows the error, lists nothing, and its requests get 401."""
    lab.defer()
    lab.wait_pending()
    open_page(page, lab, token=None)
    expect(page.locator("#error")).to_contain_text("Missing or wrong access token")
    expect(page.locator("#main")).to_be_hidden()
    assert page.locator("#pending button").count() == 0
    [view] = lab.broker.list()
    status = page.evaluate("""async (id) => (await fetch('/api/answer', {method: 'POST',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({session: 's1', id: id, answer: 'approve'})})).status""", view["id"])
    assert status == 401
    assert [p["state"] for p in lab.broker.list()] == ["pending"]


def test_page_with_wrong_token_shows_error(page, lab):
    """A stale or wrong token gets the same error once the server refuses it."""
    lab.defer()
    lab.wait_pending()
    open_page(page, lab, token="not-the-token")
    expect(page.locator("#error")).to_contain_text("Missing or wrong access token")
    expect(page.locator("#main")).to_be_hidden()
    assert [p["state"] for p in lab.broker.list()] == ["pending"]
