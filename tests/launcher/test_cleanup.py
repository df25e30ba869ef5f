"""Consecutive runs leave nothing behind: no cgroup, socket, temp file, mount, fd, thread or process.

FARAMESH_CLEANUP_RUNS sets the number of runs (default 100; docs/run.md records a 1,000-run pass).
"""

from __future__ import annotations

import os
import tempfile

import pytest

import launcher.cli
from launcher import cleanup
from tests.launcher.cleanup_helpers import PERMIT, host_state, session_leftovers, sessions_in

pytestmark = pytest.mark.kernel
PARSER = launcher.cli.build_parser()
RUNS = int(os.environ.get("FARAMESH_CLEANUP_RUNS", "100"))
# Each run ends a different way; together they cover every exit path of the launcher.
ENDINGS = [
    ("--memory", "64M", "--pids", "32", "--cpus", "1", "--files", "128", "--", "true"),  # normal exit
    ("--", "sh", "-c", "kill -KILL $$"),  # the agent is SIGKILLed
    ("--timeout", "0.05", "--pids", "16", "--", "sh", "-c", "sleep 5 & sleep 5"),  # the timeout kills it all
    ("--no-sdk-socket", "--memory", "32M", "--", "python3", "-c", "b = bytearray(64 << 20)"),  # OOM kill
    ("--", "no-such-program-xyz"),  # CMD not found
]
STATUSES = [0, 137, 124, 137, 127]


@pytest.fixture
def private_dirs(tmp_path, monkeypatch):
    """A temp dir and runtime dir of our own, so other runs on the host cannot blur the comparison."""
    tmp, runtime = tmp_path / "tmp", tmp_path / "runtime"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("FARAMESH_SANDBOX_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("FARAMESH_SANDBOX_CONFIG", str(tmp_path / "none.toml"))
    policy = tmp_path / "permit.fpl"
    policy.write_text(PERMIT)
    return tmp, runtime, policy


def run_in_process(policy, *args: str) -> int:
    parsed = PARSER.parse_args(["run", "--policy", str(policy), "--no-audit-db", "--no-prompt", "-v", *args])
    return parsed._runner(parsed)


def test_consecutive_runs_leave_nothing_behind(private_dirs, capfd):
    """RUNS runs ending every way (exit, agent SIGKILL, timeout, OOM, not found) leave the host as before."""
    tmp, runtime, policy = private_dirs
    assert run_in_process(policy, "--", "true") == 0  # creates the runtime dir, its runs/ and sdk/ once
    before = host_state(tmp, runtime)
    statuses = [run_in_process(policy, *ENDINGS[i % len(ENDINGS)]) for i in range(RUNS)]
    after = host_state(tmp, runtime)
    sessions = sessions_in(capfd.readouterr().err)
    assert statuses == [STATUSES[i % len(STATUSES)] for i in range(RUNS)]
    assert len(sessions) == RUNS + 1
    assert [p for s in sessions for p in session_leftovers(s, runtime, os.getpid())] == []
    before.pop("fds"), after.pop("fds")  # test_runs_leave_no_open_fds
    assert after == before
    assert (before["runtime"], before["tmp"], before["children"], before["threads"]) == (["runs", "sdk"], [], [], 1)


def test_runs_leave_no_open_fds(private_dirs):
    """Each way a run can end leaves the launcher's process with exactly the fds it had before."""
    tmp, runtime, policy = private_dirs
    assert run_in_process(policy, "--", "true") == 0
    before = host_state(tmp, runtime)["fds"]
    statuses = [run_in_process(policy, *ending) for ending in ENDINGS]
    assert (statuses, host_state(tmp, runtime)["fds"]) == (STATUSES, before)


def test_sweep_leaves_live_runs_alone(tmp_path):
    """A record whose run is alive (its lock held) survives a sweep; once unlocked it is cleaned up."""
    leftover = tmp_path / "faramesh-sdk-left"
    leftover.mkdir()
    (leftover / "faramesh.sock").write_text("")
    record = cleanup.RunRecord(str(tmp_path), "abc123")
    record.add("tree", str(leftover))
    record.add("files", str(tmp_path / "faramesh-sandbox-file-abc123-*"))
    (tmp_path / "faramesh-sandbox-file-abc123-x1").write_text("")
    assert cleanup.sweep(str(tmp_path)) == []
    assert sorted(os.listdir(tmp_path)) == ["abc123.run", "faramesh-sandbox-file-abc123-x1", "faramesh-sdk-left"]
    os.close(record.fd)  # the owner is gone: nobody holds the lock any more
    assert cleanup.sweep(str(tmp_path)) == [str(tmp_path / "abc123.run")]
    assert os.listdir(tmp_path) == []
