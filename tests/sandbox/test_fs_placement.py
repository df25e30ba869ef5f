"""Opt-in placement of the agent and the supervisor on one CPU (run --same-cpu)."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from policy.decision import Decision, Effect
from sandbox import fastpath, placement, traced
from sandbox.launch import launch
from sandbox.spec import SandboxSpec
from tests.sandbox.conftest import in_thread


def test_current_cpu_follows_the_affinity():
    """Pinned to each allowed CPU in turn, current_cpu() reports that CPU."""
    cpus = sorted(os.sched_getaffinity(0))

    def body():
        seen = []
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            seen.append(placement.current_cpu())
        return seen
    assert in_thread(body) == cpus


def test_pinning_reaches_later_threads_and_children():
    """After pin_to_one_cpu a new thread and a child process may use only that CPU."""
    def body():
        before, cpu = placement.pin_to_one_cpu()
        later = {}
        thread = threading.Thread(target=lambda: later.update(cpus=os.sched_getaffinity(0)))
        thread.start()
        thread.join()
        child = subprocess.run(["grep", "Cpus_allowed_list", "/proc/self/status"], capture_output=True,
                               check=True).stdout
        return before, cpu, later["cpus"], child
    before, cpu, thread_cpus, child = in_thread(body)
    assert (before, thread_cpus, child) == (os.sched_getaffinity(0), {cpu}, f"Cpus_allowed_list:\t{cpu}\n".encode())


@pytest.mark.kernel
def test_launch_with_same_cpu_pins_the_agent_and_restores_the_launcher(capfd):
    """With same_cpu the agent may use one CPU only; launch() gives the launcher its CPUs back."""
    before = os.sched_getaffinity(0)
    spec = SandboxSpec(argv=["grep", "-c", "^Cpus_allowed_list:\t[0-9]*$", "/proc/self/status"],
                       trapped=frozenset(row.name for row in traced.TABLE), same_cpu=True)
    status = launch(spec, lambda call: Decision(Effect.PERMIT, rule_id="test-permit"))
    assert (status, capfd.readouterr().out, os.sched_getaffinity(0)) == (0, "1\n", before)


@pytest.mark.parametrize("driver, poll_ns, polls", [
    ("haltpoll", "0", False),        # idle vCPUs halt at once (the reference VM)
    ("haltpoll", "200000", True),    # they poll 200 µs first
    ("intel_idle", None, False),     # bare metal: C-states, no guest polling
    (None, None, False),             # no cpuidle at all
    ("haltpoll", "garbage", False),  # unreadable: assume halting, as the default does
    ("haltpoll", "\u00b2", False),     # a digit to str.isdigit, not to int()
])
def test_idle_cpus_poll_follows_the_cpuidle_driver_and_halt_polling(tmp_path, monkeypatch, driver, poll_ns, polls):
    """Only the haltpoll driver with a non-zero guest_halt_poll_ns counts as polling, and then
    files are handed over without holding the agent's thread (unless forced either way)."""
    for name, value in (("CPUIDLE_DRIVER", driver), ("HALT_POLL_NS", poll_ns)):
        path = tmp_path / name
        if value is not None:
            path.write_text(value + "\n")
        monkeypatch.setattr(placement, name, str(path))
    assert placement.idle_cpus_poll() is polls
    assert placement.idle_cpu_state() == (driver or "none", poll_ns or "")
    monkeypatch.setattr(fastpath, "HOLD_AGENT_CPU", None)
    assert fastpath.hold_agent_cpu() is not polls
    for forced in (True, False):
        monkeypatch.setattr(fastpath, "HOLD_AGENT_CPU", forced)
        assert fastpath.hold_agent_cpu() is forced
