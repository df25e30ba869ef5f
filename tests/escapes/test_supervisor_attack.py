"""Attacks on the supervisor and on sibling agent processes: signals, ptrace, /proc/PID/mem,
/proc/PID/environ, process_vm_readv/writev.

The supervisor lives in the launcher, outside the agent's pid namespace: the agent cannot even
name it. ptrace and process_vm_* are refused by the filter; /proc/PID/mem of a sibling goes
through the supervisor's resolver, which only opens the agent's own /proc files."""

from __future__ import annotations

import subprocess

import pytest

from tests.escapes.conftest import PERMIT_ALL, finish, native, start_sandboxed

pytestmark = pytest.mark.kernel
ESRCH, EPERM, ENOENT, EACCES, EFAULT = "errno:3", "errno:1", "errno:2", "errno:13", "errno:14"


def test_native_probe_reaches_an_outside_process_and_a_sibling(cbin, tmp_path):
    """Natively every attack on an outside process and on a forked sibling works (as root)."""
    victim = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "pid").write_text(str(victim.pid))
        got = native([cbin("ptrace_probe"), tmp_path / "pid"]).lines()
    finally:
        victim.kill()
        victim.wait()
    assert got.pop("target_process_vm_readv") in ("ok", EFAULT)  # EFAULT: permitted, address unmapped in sleep
    assert got == {"target_signal0": "ok", "target_sigstop": "ok", "target_ptrace_attach": "ok",
                   "target_mem_open": "ok", "target_environ_open": "ok", "sibling_ptrace_attach": "ok",
                   "sibling_process_vm_writev": "ok", "sibling_mem_pwrite": "ok", "sibling_word_changed": "yes"}


def test_agent_cannot_touch_the_supervisor_or_rewrite_a_sibling(cbin, tmp_path):
    """In the sandbox the supervisor's pid does not exist for the agent, and no sibling memory is written."""
    proc, audit = start_sandboxed(PERMIT_ALL, [cbin("ptrace_probe"), tmp_path / "pid"], tmp_path)
    (tmp_path / "pid").write_text(str(proc.pid))  # the launcher: the supervisor answers from its threads
    run = finish(proc, audit)
    assert run.lines() == {
        "target_signal0": ESRCH, "target_sigstop": ESRCH, "target_ptrace_attach": EPERM,
        "target_mem_open": ENOENT, "target_environ_open": ENOENT, "target_process_vm_readv": EPERM,
        "sibling_ptrace_attach": EPERM, "sibling_process_vm_writev": EPERM, "sibling_mem_pwrite": EACCES,
        "sibling_word_changed": "no"}, run.explain()
