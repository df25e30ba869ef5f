"""The approvals page against a real sandboxed run: `faramesh-sandbox ui` in its own process,
its page in headless Chromium, the run's held writes answered by clicking."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FARAMESH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") \
    or "/usr/bin/chromium"  # Debian's package (CI installs it with apt); Fedora names it chromium-browser
# Writes argv[2:] under argv[1], one after the other, and prints how each went.
AGENT = r"""
import os, sys
for name in sys.argv[2:]:
    try:
        with open(os.path.join(sys.argv[1], name), "w") as f:
            f.write("done")
        print(f"{name} ok", flush=True)
    except OSError as e:
        print(f"{name} errno={e.errno}", flush=True)
"""
URL_LINE = re.compile(r"^faramesh-sandbox ui: approvals page at (http://127\.0\.0\.1:\d+/#token=[\w-]{43})$")


@pytest.fixture
def world(tmp_path: Path):
    """A deferred directory, a policy deferring writes into it, private runtime dir and audit store."""
    deferred = Path(f"/tmp/ui-{uuid.uuid4().hex[:8]}")
    deferred.mkdir()
    policy = tmp_path / "defer.fpl"
    policy.write_text(f'agent a {{\n  default permit\n  rules {{\n    defer fs/write when args.path startsWith '
                      f'"{deferred}/" reason: "writes under {deferred} need a person"\n  }}\n}}\n')
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(tmp_path / "run"),
           "FARAMESH_SANDBOX_CONFIG": str(tmp_path / "none.toml"), "FARAMESH_AUDIT_DB": str(tmp_path / "audit.db")}
    yield {"dir": deferred, "policy": policy, "agent": agent, "env": env}
    for child in deferred.iterdir():
        child.unlink()
    deferred.rmdir()


def start_ui(world) -> tuple[subprocess.Popen, str]:
    ui = subprocess.Popen([sys.executable, "-m", "launcher", "ui"], stdout=subprocess.PIPE, text=True,
                          env=world["env"])
    line = ui.stdout.readline().rstrip("\n")
    match = URL_LINE.match(line)
    assert match, line
    return ui, match.group(1)


def start_run(world, *names: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "launcher", "run", "--policy", str(world["policy"]), "--no-prompt",
            "--no-sdk-socket", "--approve-timeout", "120", "--", sys.executable, str(world["agent"]),
            str(world["dir"]), *names]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=world["env"],
                            start_new_session=True)


def test_page_answers_a_real_runs_held_writes(world):
    """Approve on the page lets the held write succeed, Deny makes the next fail with EACCES, and
    both answers appear in the page's audit trail."""
    ui, url = start_ui(world)
    run = None
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            expect(page.locator("#status")).to_have_text("live")
            run = start_run(world, "a", "b")
            row = page.locator("#pending tbody tr")
            expect(row).to_have_count(1, timeout=20_000)
            expect(row.locator("td").nth(4)).to_contain_text(f'"path": "{world["dir"]}/a"')
            row.get_by_role("button", name="Approve", exact=True).click()
            expect(row.locator("td").nth(4)).to_contain_text(f'"path": "{world["dir"]}/b"', timeout=20_000)
            row.get_by_role("button", name="Deny").click()
            out, err = run.communicate(timeout=30)
            assert (run.returncode, out) == (0, "a ok\nb errno=13\n"), err
            audit = page.locator("#audit tbody tr")
            expect(audit.filter(has_text="PERMIT (approval)")).to_have_count(1)
            expect(audit.filter(has_text="DENY (denial)")).to_have_count(1)
            expect(audit.filter(has_text="(approval)").locator("td").nth(4)).to_have_text(f"{world['dir']}/a")
            expect(page.locator("#verdict")).to_contain_text("Hash chain intact")
            browser.close()
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait(10)
        ui.terminate()
        ui.wait(10)
    assert (world["dir"] / "a").read_text() == "done"
    assert not (world["dir"] / "b").exists()
