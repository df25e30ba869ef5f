"""scripts/demo.sh, the README's first command, runs end to end and shows every kind of outcome."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_shows_permitted_denied_and_deferred_calls():
    """The demo agent's actions are decided as the demo policy says and the summary lists them."""
    env = {**os.environ, "FARAMESH_DEMO_SKIP_INSTALL": "1", "NO_COLOR": "1"}
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in ("  ok      run `uname -s`: Linux",
                 "  refused run `curl example.com`: Operation not permitted",
                 "  refused read /etc/shadow: Permission denied",
                 "  ok      write the workspace",
                 "  refused delete its own notes: Permission denied",
                 "  ok      refund $120",
                 "  refused refund $800: approval expired"):
        assert line in out.splitlines()
    permitted = re.search(r"ok      connect to 127\.0\.0\.1:(\d+): hello from the permitted server", out)
    forbidden = re.search(r"refused connect to 127\.0\.0\.1:(\d+): Operation not permitted", out)
    assert permitted and forbidden and permitted.group(1) != forbidden.group(1)
    assert re.search(r"== the run: agent exited 0; \d+ calls permitted, 7 denied, 1 deferred", out)
    summary = out.split("== the run:")[1]
    rows = [line.split() for line in summary.splitlines()[2:-1]]
    assert [(row[0], row[1]) for row in rows] == [
        ("denied", "shell/exec"), ("denied", "fs/read"), ("denied", "fs/delete"), ("denied", "fs/write"),
        ("denied", "net/connect"), ("deferred,", "then")]
    assert f"127.0.0.1:{forbidden.group(1)}" in summary
    assert "refunds over $500 need a human" in summary
