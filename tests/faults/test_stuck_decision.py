"""A decision that never returns holds only its own syscall; everything else proceeds."""

from __future__ import annotations

import threading
import time

import pytest

from policy.decision import Decision, Effect
from tests.faults.conftest import FS_TRAPPED
from tests.sandbox.conftest import run_sandboxed

pytestmark = pytest.mark.kernel
COUNT = 50


def run_with_a_hung_decision(cbin, tmp_path):
    """Run the stuck helper with a decide() that hangs on its one open until the agent has exited,
    then answers PERMIT; returns (run, others directory, whether the file existed while held)."""
    stuck_path = tmp_path / "stuck"
    others = tmp_path / "others"
    others.mkdir()
    release = threading.Event()
    seen_while_held = []

    def decide(call):
        if call.args.get("path") == str(stuck_path):
            release.wait()
        return Decision(Effect.PERMIT, rule_id="test-permit")

    def release_after_exit():  # the agent prints others= and exits at once; the late PERMIT follows
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(b"others=" in p.read_bytes() for p in tmp_path.glob("out-*")):
            time.sleep(0.02)
        time.sleep(0.5)
        seen_while_held.append(stuck_path.exists())
        release.set()

    threading.Thread(target=release_after_exit, daemon=True).start()
    run = run_sandboxed([cbin("stuck"), str(stuck_path), str(others), str(COUNT)], decide, trapped=FS_TRAPPED,
                        tmp=tmp_path, timeout=60)
    release.set()
    return run, others, seen_while_held


def test_a_decide_that_never_returns_blocks_only_its_own_call(cbin, tmp_path):
    """While decide() hangs on one open, 100 opens of another thread and another process are decided
    and recorded; the hung open never returns to the agent and its file is not made meanwhile."""
    run, others, seen_while_held = run_with_a_hung_decision(cbin, tmp_path)
    assert (run.status, run.stdout) == (0, f"others={2 * COUNT}\n".encode()), run.explain()
    assert seen_while_held == [False]
    recorded = sorted(r["args"]["path"] for r in run.audit
                      if r["effect"] == "PERMIT" and r["args"]["path"].startswith(f"{others}/"))
    assert recorded == sorted(str(p) for p in others.iterdir())
    assert len(recorded) == 2 * COUNT


def test_a_late_permit_for_a_task_that_exited_does_nothing(cbin, tmp_path):
    """A PERMIT that comes back after the calling task has exited creates nothing and counts as gone."""
    run, _, _ = run_with_a_hung_decision(cbin, tmp_path)
    assert run.status == 0, run.explain()
    assert (tmp_path / "stuck").exists() is False
    assert run.stats["gone"] == 1
