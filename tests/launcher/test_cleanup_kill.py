"""SIGKILL of the launcher or of the agent: everything the run made on the host is gone soon after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

import launcher.cli
from sandbox import limits
from tests.launcher.cleanup_helpers import PERMIT, session_leftovers, sessions_in

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
PARSER = launcher.cli.build_parser()
GONE_WITHIN = 3.0  # seconds
AGENT = ("sh", "-c", "sleep 60 & echo ready; wait")


@pytest.fixture
def env(tmp_path):
    tmp, runtime = tmp_path / "tmp", tmp_path / "runtime"
    tmp.mkdir()
    (tmp_path / "permit.fpl").write_text(PERMIT)
    return {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp),
            "FARAMESH_SANDBOX_RUNTIME_DIR": str(runtime),
            "FARAMESH_SANDBOX_CONFIG": str(tmp_path / "none.toml")}


class LiveRun:
    """`faramesh-sandbox run -v` in a subprocess, started and waited for until the agent is ready."""

    def __init__(self, env: dict, *limits: str):
        self.env = env
        self.err_path = Path(env["TMPDIR"]).parent / "stderr.txt"
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "launcher", "run",
                 "--policy", str(Path(env["TMPDIR"]).parent / "permit.fpl"),
                 "--no-audit-db", "--no-prompt", "-v", *limits, "--", *AGENT],
                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
        assert self.proc.stdout.readline() == "ready\n"
        self.session = sessions_in(self.err_path.read_text())[0]
        self.tree = psutil.Process(self.proc.pid).children(recursive=True)
        self.runtime = Path(env["FARAMESH_SANDBOX_RUNTIME_DIR"])

    def leftovers(self) -> list[str]:
        tmp = Path(self.env["TMPDIR"])
        return session_leftovers(self.session, self.runtime, self.proc.pid) + [str(p) for p in tmp.iterdir()]

    def reaper(self) -> psutil.Process:
        """The launcher's child that holds this run's record open."""
        record = str(self.runtime / "runs" / f"{self.session}.run")
        return next(p for p in self.tree if record in [f.path for f in p.open_files()])

    def wait_gone(self) -> tuple[list[str], list[psutil.Process]]:
        """What is still there once everything is gone or GONE_WITHIN has passed."""
        deadline = time.monotonic() + GONE_WITHIN
        while time.monotonic() < deadline and (self.leftovers() or any(p.is_running() for p in self.tree)):
            time.sleep(0.05)
        _, alive = psutil.wait_procs(self.tree, timeout=0)
        return self.leftovers(), alive


def test_sigkill_of_the_launcher_leaves_nothing(env):
    """Within a few seconds of SIGKILL to the launcher: no cgroup dirs, sockets, temp dirs or processes."""
    run = LiveRun(env, "--memory", "128M", "--pids", "64", "--cpus", "1")
    assert len(run.leftovers()) == 7  # cgroups v2 + memory, pids, cpu v1; control socket; record; SDK dir
    assert len(run.tree) == 5  # reaper, approval service, init, sh, sleep
    run.proc.kill()
    run.proc.wait()
    assert run.wait_gone() == ([], [])


def test_sigkill_of_the_agent_leaves_nothing(env):
    """The agent killed by SIGKILL: the run exits 137 and removes everything it made."""
    run = LiveRun(env, "--memory", "128M", "--pids", "64")
    agent = next(p for p in run.tree if p.name() == "sh")
    agent.send_signal(signal.SIGKILL)
    assert run.proc.wait(timeout=10) == 137
    assert run.wait_gone() == ([], [])


def test_dead_runs_are_swept_at_the_next_start(env, capfd, monkeypatch):
    """Launcher and reaper both SIGKILLed: the next run finds the unlocked record and removes what it names."""
    run = LiveRun(env, "--pids", "64")
    run.reaper().kill()
    run.proc.kill()
    run.proc.wait()
    psutil.wait_procs(run.tree, timeout=GONE_WITHIN)
    stale = run.leftovers()
    sdk_dir = next(p for p in stale if os.path.basename(p).startswith("faramesh-sdk-"))
    assert sorted(stale) == sorted([*limits.cgroup_dirs(run.session)[:1],
                                    f"/sys/fs/cgroup/pids/faramesh-{run.session}",
                                    str(run.runtime / "runs" / f"{run.session}.run"), sdk_dir])
    for name in ("TMPDIR", "FARAMESH_SANDBOX_RUNTIME_DIR", "FARAMESH_SANDBOX_CONFIG"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setattr(tempfile, "tempdir", env["TMPDIR"])
    parsed = PARSER.parse_args(["run", "--policy", str(Path(env["TMPDIR"]).parent / "permit.fpl"), "--no-audit-db",
                                "--no-prompt", "--", "true"])
    assert parsed._runner(parsed) == 0
    assert run.leftovers() == []
