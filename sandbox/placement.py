"""CPU placement of the sandbox: optionally the agent and the supervisor on one CPU.

A trapped open costs the agent a round trip through the supervisor and back, and
SECCOMP_IOCTL_NOTIF_ADDFD adds a third hand-over. When the two sides run on different
CPUs each hand-over is a cross-CPU wake-up, which on a VM whose idle vCPUs halt costs
tens of microseconds; on one CPU it is a plain context switch (docs/benchmarks.md).
Pinning is opt-in (``run --same-cpu``): it confines every agent task, however many
threads or processes it starts, to that single CPU.
"""

from __future__ import annotations

import contextlib
import os


CPUIDLE_DRIVER = "/sys/devices/system/cpu/cpuidle/current_driver"
HALT_POLL_NS = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"


def _read(path: str) -> str:
    """The file's text, or "" when it cannot be read. Decoded as UTF-8, the codec Python always has
    loaded: a launcher that may no longer read the interpreter's library (the unprivileged run of
    tests/launcher/test_run.py) could not load another one here."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def idle_cpu_state() -> tuple[str, str]:
    """(cpuidle driver or "none", guest_halt_poll_ns or "") as sysfs reports them."""
    return _read(CPUIDLE_DRIVER) or "none", _read(HALT_POLL_NS)


def idle_cpus_poll() -> bool:
    """Whether an idle vCPU polls before it halts (the haltpoll cpuidle driver with a non-zero
    guest_halt_poll_ns): then waking a task on it is cheap, and holding the agent's thread on
    the supervisor's CPU for a hand-over costs more than it saves (docs/benchmarks.md)."""
    driver, poll_ns = idle_cpu_state()
    return driver == "haltpoll" and poll_ns.isascii() and poll_ns.isdigit() and int(poll_ns) > 0


def current_cpu() -> int:
    """The CPU the calling thread runs on (field 39 of /proc/thread-self/stat)."""
    with open("/proc/thread-self/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces or parentheses: count after its last ')'.
    return int(stat[stat.rindex(b")") + 2:].split()[36])


def pin_to_one_cpu() -> tuple[set[int], int]:
    """Confine the calling thread, and every thread or child it creates from now on, to
    the CPU it is on (or the first it may use); returns (the previous set, the CPU)."""
    before = os.sched_getaffinity(0)
    try:
        cpu = current_cpu()
    except (OSError, ValueError, IndexError):  # no procfs: any allowed CPU does
        cpu = min(before)
    if cpu not in before:
        cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    return before, cpu


@contextlib.contextmanager
def on_one_cpu(wanted: bool = True):
    """With ``wanted``: the calling thread, hence the threads it starts and the processes it
    forks meanwhile (affinity is inherited), on one CPU; the previous set restored afterwards."""
    if not wanted:
        yield
        return
    before, _cpu = pin_to_one_cpu()
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
