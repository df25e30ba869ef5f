"""Execs under a racing path and argv rewrite never run a denied command."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from policy.decision import Decision, Effect, deny
from tests.sandbox.conftest import run_sandboxed


@pytest.fixture(scope="module")
def programs(cbin, tmp_path_factory):
    """Two binaries with equally long names: aaaa (allowed) and dddd (denied, exits 42)."""
    directory = tmp_path_factory.mktemp("exec")
    source = str(cbin.__globals__["C_DIR"] / "exit_code.c")
    for name, code in (("aaaa", 0), ("dddd", 42)):
        subprocess.run(["gcc", "-O2", f"-DEXIT_CODE={code}", "-o", str(directory / name), source], check=True)
    return str(directory / "aaaa"), str(directory / "dddd")


def exec_policy(call):
    """Deny running dddd and any command with the argument "evil"."""
    if call.tool == "shell/exec" and (call.args["program"] == "dddd" or "evil" in call.args["argv"]):
        return deny("exec-denied", "forbidden command", rule_id="no-dddd")
    return Decision(Effect.PERMIT)


def tally(output: bytes) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", output.decode())}


def race(cbin, programs, cgroup_dir, tries: int, seconds: float) -> dict[str, int]:
    run = run_sandboxed([cbin("exec_race"), *programs, str(tries), str(seconds)], exec_policy, cgroup=cgroup_dir,
                        timeout=seconds + 60)
    assert run.status == 0, run.stderr
    return tally(run.stdout)


def test_native_race_runs_denied_commands(cbin, programs):
    """Without the sandbox the flipping thread gets a denied command run (the harness works)."""
    counts = tally(subprocess.run([cbin("exec_race"), *programs, "300", "30"], capture_output=True).stdout)
    assert counts["bypass_path"] + counts["bypass_argv"] > 0


def test_racing_exec_never_runs_a_denied_command(cbin, programs, cgroup_dir):
    """300 racing execs with the agent frozen during each decision: zero bypasses."""
    counts = race(cbin, programs, cgroup_dir, 300, 60)
    assert counts["tries"] == 300
    assert (counts["bypass_path"], counts["bypass_argv"], counts["other"]) == (0, 0, 0)
    assert counts["allowed"] > 0 and counts["eperm"] > 0


@pytest.mark.race
def test_racing_exec_for_a_minute(cbin, programs, cgroup_dir):
    """As many racing execs as fit in 60 seconds: zero bypasses."""
    counts = race(cbin, programs, cgroup_dir, 1_000_000, 60)
    print(f"racing execs in 60 s: {counts}")  # shown with -s, for docs/benchmarks.md
    assert counts["tries"] > 1000
    assert (counts["bypass_path"], counts["bypass_argv"], counts["other"]) == (0, 0, 0)
    assert counts["allowed"] > 0 and counts["eperm"] > 0


def _cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_freezer_self_test_passes_on_this_kernel(cgroup_dir):
    """A frozen sleeping helper shows (S, get_signal), the state the per-task check relies on."""
    from sandbox import freeze
    freeze._run_self_test(os.path.dirname(cgroup_dir))
    assert freeze.FROZEN_WCHAN == ("S", "get_signal")


def test_freeze_stops_every_task_and_thaw_resumes_them(cgroup_dir):
    """freeze() returns only once a busy loop and a sleeper are stopped; thaw() lets them run."""
    from sandbox import freeze
    spinner = subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
    sleeper = subprocess.Popen(["/bin/sleep", "60"])
    try:
        for task in (spinner, sleeper):
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as fh:
                fh.write(str(task.pid))
        freezer = freeze.CgroupFreezer(cgroup_dir)
        freezer.freeze(holder=0)
        states = set()
        for _ in range(100):  # a frozen task may show a spurious wake-up for a moment
            states = {freeze.task_state(t.pid) for t in (spinner, sleeper)}
            if states == {("S", "get_signal")}:
                break
            time.sleep(0.001)
        assert states == {("S", "get_signal")}
        before = _cpu_ticks(spinner.pid)
        time.sleep(0.3)
        assert _cpu_ticks(spinner.pid) == before
        freezer.thaw()
        time.sleep(0.3)
        assert _cpu_ticks(spinner.pid) > before
    finally:
        for task in (spinner, sleeper):
            task.kill()
            task.wait()
