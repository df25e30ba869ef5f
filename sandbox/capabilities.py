"""Capabilities a root agent gives up before it runs CMD: dropped from its bounding set, so the
execve leaves root with the rest only (as container runtimes keep a short default set).

Seccomp refuses the dangerous syscalls by number, but many powers live behind calls the filter
lets through: a read-only descriptor reaches the filesystem's ioctls (FIFREEZE, ext4's shutdown,
FITRIM, labels, verity), and a host socket takes IP_TRANSPARENT or SO_BINDTODEVICE. Without the
capability the kernel refuses each of them, whatever the number. An agent that is not root cannot
gain them (no_new_privs) unless the launcher hands them on as ambient capabilities (a service's
AmbientCapabilities=): then they are cleared for it too."""

from __future__ import annotations

import contextlib
import errno
import os

from sandbox import _libc, _libc_fs, _procstatus

PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4

# capability -> (number, what a root agent could do with it)
DROPPED = {
    "CAP_DAC_READ_SEARCH": (2, "open_by_handle_at-style reads by inode, linkat(AT_EMPTY_PATH)"),
    "CAP_LINUX_IMMUTABLE": (9, "chattr +i/+a on host files"),
    "CAP_NET_BROADCAST": (11, "broadcast and multicast listening on host sockets"),
    "CAP_NET_ADMIN": (12, "IP_TRANSPARENT, TCP_REPAIR, interfaces and routes of host sockets"),
    "CAP_NET_RAW": (13, "raw and packet sockets, SO_BINDTODEVICE on host sockets"),
    "CAP_IPC_LOCK": (14, "locking unlimited memory (mlock past RLIMIT_MEMLOCK, SHM_LOCK, hugetlb shm)"),
    "CAP_IPC_OWNER": (15, "System V IPC of other users"),
    "CAP_SYS_MODULE": (16, "kernel modules"),
    "CAP_SYS_RAWIO": (17, "raw block and I/O port access, FIBMAP"),
    "CAP_SYS_PTRACE": (19, "ptrace of any process"),
    "CAP_SYS_PACCT": (20, "process accounting"),
    "CAP_SYS_ADMIN": (21, "FIFREEZE, ext4 shutdown, FITRIM, labels and most other filesystem ioctls"),
    "CAP_SYS_BOOT": (22, "reboot, kexec"),
    "CAP_SYS_NICE": (23, "SCHED_FIFO/SCHED_RR spinners that starve the host's CPUs, negative nice values"),
    "CAP_SYS_RESOURCE": (24, "raising hard rlimits past the sandbox's limits"),
    "CAP_SYS_TIME": (25, "the host clock"),
    "CAP_SYS_TTY_CONFIG": (26, "vhangup"),
    "CAP_MKNOD": (27, "device nodes (a disk's, /dev/mem)"),
    "CAP_LEASE": (28, "leases on files of other users"),
    "CAP_AUDIT_CONTROL": (30, "the kernel audit rules"),
    "CAP_MAC_OVERRIDE": (32, "overriding the MAC policy"),
    "CAP_MAC_ADMIN": (33, "changing the MAC policy"),
    "CAP_SYSLOG": (34, "the kernel log"),
    "CAP_WAKE_ALARM": (35, "system wake-up alarms"),
    "CAP_BLOCK_SUSPEND": (36, "blocking system suspend"),
    "CAP_AUDIT_READ": (37, "reading the audit log"),
    "CAP_PERFMON": (38, "perf events"),
    "CAP_BPF": (39, "BPF programs and maps"),
    "CAP_CHECKPOINT_RESTORE": (40, "checkpoint/restore controls of other processes"),
    "CAP_SETFCAP": (31, "file capabilities on host programs (security.capability)"),
}


def to_drop(privileged: bool) -> list[int]:
    """The capability numbers to drop: all of DROPPED for an agent that is root (on the host or
    in its user namespace), none for one that holds no capability."""
    return sorted(number for number, _ in DROPPED.values()) if privileged else []


def mask_of(numbers) -> int:
    """The capability set (a bit per number) of ``numbers``."""
    return sum(1 << number for number in numbers)


def drop(numbers: list[int]) -> None:
    """In the agent, before no_new_privs: drop each from the bounding set (EINVAL: a capability
    this kernel does not have), empty the ambient set and take them out of the inheritable,
    permitted and effective sets: root's exec adds the inheritable and ambient sets to what the
    bounding set allows, so a launcher started with them (a service's AmbientCapabilities=)
    would otherwise hand them on."""
    if not numbers:
        return
    for number in numbers:
        try:
            _libc.prctl(PR_CAPBSET_DROP, number)
        except OSError as err:  # EPERM: no CAP_SETPCAP (not root); ambient and the rest still go
            if err.errno not in (errno.EINVAL, errno.EPERM):
                raise
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _libc_fs.remove_caps(mask_of(numbers))


@contextlib.contextmanager
def without(numbers: list[int]):
    """The calling thread with these capabilities out of its effective set (kept permitted, and
    back afterwards): the compiled receiver runs so, acting exactly as the agent would."""
    mask = mask_of(numbers)
    effective, _ = _libc_fs.get_effective_caps()
    if not effective & mask:
        yield
        return
    _libc_fs.set_effective_caps(effective & ~mask)
    try:
        yield
    finally:
        _libc_fs.set_effective_caps(effective)


def agent_is_privileged(wants_user_namespace: bool) -> bool:
    """Root on the host, root of its own user namespace, or a launcher holding any of DROPPED
    permitted, inheritable or ambient (a service's AmbientCapabilities= hands those on)."""
    if wants_user_namespace or os.geteuid() == 0:
        return True
    fields = _procstatus.status_fields("self")
    held = 0
    for name in ("CapPrm", "CapInh", "CapAmb"):
        held |= int(fields.get(name, "0"), 16)
    return bool(held & mask_of(number for number, _ in DROPPED.values()))
