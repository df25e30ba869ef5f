"""SIGKILL of the launcher (where the supervisor lives) while the agent waits in a trapped call."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from launcher import control
from tests.faults.conftest import Launch, processes_mentioning

pytestmark = pytest.mark.kernel
ENOSYS = 38
# Says it started, then writes the held file and reports what the write did.
AGENT = r"""
import sys
print("started", flush=True)
try:
    with open(sys.argv[1], "w") as f:
        f.write("written")
    print("write ok", flush=True)
except OSError as e:
    print(f"write errno={e.errno}", flush=True)
"""


def wait_pending(runtime: Path) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            pending = control.request({"op": "list"}, directory=str(runtime))["pending"]
        except control.ControlError:
            pending = []
        if pending:
            return pending[0]
        time.sleep(0.05)
    raise AssertionError("the write never became pending")


def test_held_write_fails_when_the_supervisor_is_killed(tmp_path):
    """A write held for approval never succeeds once the launcher is SIGKILLed: the agent gets ENOSYS
    or dies, the file is never created, and no process of the run survives."""
    held = Path(f"/tmp/faults-held-{uuid.uuid4().hex[:8]}")
    held.mkdir()
    token = f"agent-{uuid.uuid4().hex}.py"
    agent = tmp_path / token
    agent.write_text(AGENT)
    policy = (f'agent a {{\n  default permit\n  rules {{\n    defer fs/write when args.path startsWith "{held}/" '
              f'reason: "held"\n  }}\n}}\n')
    launch = Launch(tmp_path, policy)
    run = launch.start(["python3", agent, held / "file"], options=("--approve-timeout", "600"))
    try:
        pending = wait_pending(launch.runtime)
        assert (pending["tool"], pending["args"]["path"]) == ("fs/write", f"{held}/file")
        os.kill(run.pid, signal.SIGKILL)
        out, _ = run.communicate(timeout=20)  # EOF: every holder of the pipe (the agent too) is gone
        assert run.returncode == -signal.SIGKILL
        # (the agent may be killed with the sandbox between its last line and the line's end)
        assert out.rstrip("\n") in ("started", f"started\nwrite errno={ENOSYS}"), out
        assert not (held / "file").exists()
        deadline = time.monotonic() + 5
        while processes_mentioning(token) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_mentioning(token) == []
        assert [r["effect"] for r in launch.records() if r["args"].get("path") == f"{held}/file"] == []
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        for child in held.iterdir():
            child.unlink()
        held.rmdir()
