"""The agent's mount namespace: private propagation, then a /proc and /sys of its own namespaces."""

from __future__ import annotations

from sandbox import _libc_ns
from sandbox.spec import SandboxSpec

_PSEUDO = _libc_ns.MS_NOSUID | _libc_ns.MS_NODEV | _libc_ns.MS_NOEXEC


def apply(spec: SandboxSpec) -> None:
    """Runs in the sandbox's pid 1: procfs shows the pid namespace of the process that mounts it."""
    if "mount" not in spec.namespaces:
        return
    # Must come first: with shared propagation the mounts below would also appear on the host.
    _libc_ns.mount(None, "/", None, _libc_ns.MS_REC | _libc_ns.MS_PRIVATE)
    if "pid" in spec.namespaces:
        # Safe: a fresh procfs lists only the sandbox's own processes; the host's /proc is covered.
        _libc_ns.mount("proc", "/proc", "proc", _PSEUDO)
    if "net" in spec.namespaces:
        # Safe: sysfs mounted here shows the agent's network namespace (only lo) in /sys/class/net.
        # Read-only: for a root agent a writable sysfs would still reach host-wide kernel knobs.
        _libc_ns.mount("sysfs", "/sys", "sysfs", _PSEUDO | _libc_ns.MS_RDONLY)
