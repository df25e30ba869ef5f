"""The seccomp filter: compiled program checked with a BPF interpreter, then in the kernel."""

from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest

from sandbox import _libc, seccomp
from sandbox.bpf import (AUDIT_ARCH, RET_ALLOW, RET_KILL_PROCESS, RET_USER_NOTIF, X32_SYSCALL_BIT, decode,
                         errno_action, seccomp_data)
from tests.sandbox import cbpf
from tests.sandbox.conftest import run_sandboxed

X86_64 = AUDIT_ARCH["x86_64"]
EPERM, ENOSYS = errno_action(errno.EPERM), errno_action(errno.ENOSYS)

# probe name (tests/sandbox/c/probe_denied.c) -> errno under the filter (0 = allowed)
EXPECTED_PROBES = {
    "io_uring_setup": errno.ENOSYS, "io_uring_enter": errno.ENOSYS, "io_uring_register": errno.ENOSYS,
    "clone3": errno.ENOSYS, "ptrace": errno.EPERM, "process_vm_readv": errno.EPERM,
    "process_vm_writev": errno.EPERM, "bpf": errno.EPERM, "perf_event_open": errno.EPERM,
    "mount": errno.EPERM, "umount2": errno.EPERM, "pivot_root": errno.EPERM, "move_mount": errno.EPERM,
    "open_tree": errno.EPERM, "open_tree_attr": errno.EPERM, "fsopen": errno.EPERM, "fsconfig": errno.EPERM,
    "fsmount": errno.EPERM, "fspick": errno.EPERM, "mount_setattr": errno.EPERM, "setns": errno.EPERM,
    "clone_newuser": errno.EPERM, "clone_newns": errno.EPERM, "clone_newpid": errno.EPERM,
    "clone_newnet": errno.EPERM, "clone_newuts": errno.EPERM, "clone_newipc": errno.EPERM,
    "clone_newcgroup": errno.EPERM, "clone_plain": 0, "keyctl": errno.EPERM, "add_key": errno.EPERM,
    "request_key": errno.EPERM, "userfaultfd": errno.EPERM, "personality_linux32": errno.EPERM,
    "personality_no_aslr": errno.EPERM, "personality_query": 0, "personality_linux": 0,
    "open_by_handle_at": errno.EPERM, "name_to_handle_at": errno.EPERM, "kexec_load": errno.EPERM,
    "kexec_file_load": errno.EPERM, "init_module": errno.EPERM, "finit_module": errno.EPERM,
    "delete_module": errno.EPERM, "ioctl_tiocsti": errno.EPERM, "ioctl_tiocsti_high_bits": errno.EPERM,
    "ioctl_tioclinux": errno.EPERM, "ioctl_tiocgwinsz": errno.EBADF, "io_setup": errno.EPERM,
    "io_submit": errno.EPERM, "seccomp_new_listener": errno.EPERM, "seccomp_plain": errno.EFAULT,
    "acct": errno.EPERM, "swapon": errno.EPERM, "swapoff": errno.EPERM, "reboot": errno.EPERM,
    "quotactl": errno.EPERM, "quotactl_fd": errno.EPERM, "lookup_dcookie": errno.EPERM,
    "setxattrat": errno.ENOSYS, "removexattrat": errno.ENOSYS, "file_setattr": errno.ENOSYS,
    "getpid": 0, "unshare": errno.EPERM,
}
# Probes whose result does not come from the filter: the same natively.
CONTROLS = {"clone_plain", "personality_query", "personality_linux", "ioctl_tiocgwinsz", "seccomp_plain", "getpid"}


def nr(name: str) -> int:
    return _libc.syscall_number(name)


def verdict(program: bytes, name: str, *args: int, arch: int = X86_64) -> int:
    number = name if isinstance(name, int) else nr(name)
    return cbpf.run(program, seccomp_data(number, arch, tuple(args)))


@pytest.fixture(scope="module")
def program() -> bytes:
    return seccomp.build_filter(["openat", "execve"], {"connect": errno.EACCES, "socket": seccomp.ALLOW})


def parse_probe(output: bytes) -> dict[str, int]:
    return {name: int(code) for name, code in (line.split() for line in output.decode().splitlines())}


def test_program_checks_arch_before_anything_else(program):
    """The first two instructions load seccomp_data.arch and compare it with x86_64."""
    first, second = decode(program)[:2]
    assert (first.code, first.k) == (0x20, 4)
    assert (second.code, second.k) == (0x15, X86_64)


def test_other_arch_and_x32_are_killed(program):
    """i386 and x32 syscall numbers kill the process instead of reaching any rule."""
    assert verdict(program, 20, arch=AUDIT_ARCH["i386"]) == RET_KILL_PROCESS
    assert verdict(program, X32_SYSCALL_BIT | nr("getpid")) == RET_KILL_PROCESS
    assert verdict(program, X32_SYSCALL_BIT | nr("openat")) == RET_KILL_PROCESS


def test_trapped_and_kernel_decided_syscalls(program):
    """Trapped syscalls notify, kernel-decided ones get their errno or pass, others pass."""
    assert verdict(program, "openat", 0, 0) == RET_USER_NOTIF
    assert verdict(program, "execve") == RET_USER_NOTIF
    assert verdict(program, "connect") == errno_action(errno.EACCES)
    assert verdict(program, "socket") == RET_ALLOW
    assert verdict(program, "read") == RET_ALLOW
    assert verdict(program, "open") == RET_ALLOW  # not trapped in this program


@pytest.mark.parametrize("rule", seccomp.HARDENING_RULES, ids=lambda r: r.syscall)
def test_every_hardening_rule_matches_its_arguments(program, rule):
    """Each rule's action is returned for arguments that match it, high bits included."""
    args = [0] * 6
    for matcher in rule.matchers:
        args[matcher.arg] = matcher.value
    assert verdict(program, rule.syscall, *args) == rule.action
    high = [a | (1 << 32) if any(m.arg == i and getattr(m, "mask", 0) <= 0xFFFFFFFF for m in rule.matchers) else a
            for i, a in enumerate(args)]
    assert verdict(program, rule.syscall, *high) == rule.action


def test_argument_rules_let_harmless_values_through(program):
    """Plain clone, other ioctls, personality queries and plain seccomp() are allowed."""
    assert verdict(program, "clone", 0x01200011) == RET_ALLOW  # glibc fork() flags
    assert verdict(program, "clone", 0x003D0F00) == RET_ALLOW  # pthread_create flags
    assert verdict(program, "clone", 0x10000000) == EPERM  # CLONE_NEWUSER
    assert verdict(program, "ioctl", 1, 0x5413) == RET_ALLOW  # TIOCGWINSZ
    assert verdict(program, "ioctl", 1, (1 << 32) | 0x5412) == EPERM  # kernel reads cmd as 32 bits
    assert verdict(program, "personality", 0) == RET_ALLOW
    assert verdict(program, "personality", 0xFFFFFFFF) == RET_ALLOW
    assert verdict(program, "personality", 0x0008) == EPERM
    assert verdict(program, "personality", 0xFFFFFFFE) == EPERM
    assert verdict(program, "personality", 0x80000000) == EPERM
    assert verdict(program, "seccomp", 1, 0) == RET_ALLOW
    assert verdict(program, "seccomp", 1, 8 | 2) == EPERM


def test_build_filter_refuses_conflicts():
    """Trapping a hardened syscall, or trapping and kernel-deciding one, is an error."""
    with pytest.raises(ValueError, match=r"trapped syscalls \['ptrace'\] are fixed by the hardening rules"):
        seccomp.build_filter(["ptrace"])
    with pytest.raises(ValueError, match=r"both trapped and kernel_decided"):
        seccomp.build_filter(["openat"], {"openat": errno.EPERM})
    with pytest.raises(ValueError, match="unknown syscall 'no_such_call'"):
        seccomp.build_filter(["no_such_call"])


def test_install_requires_no_new_privs():
    """install() refuses to load a filter before PR_SET_NO_NEW_PRIVS."""
    pid = os.fork()
    if pid == 0:
        try:
            seccomp.install(seccomp.build_filter([]))
            os._exit(1)
        except PermissionError:
            os._exit(42)
        except BaseException:
            os._exit(2)
    assert os.waitpid(pid, 0)[1] >> 8 == 42


def test_hardened_syscalls_fail_in_the_kernel(cbin):
    """Under the loaded filter every hardened syscall fails with EPERM or ENOSYS."""
    run = run_sandboxed([cbin("probe_denied")], trapped=(), supervise=False)
    assert run.status == 0, run.stderr
    assert parse_probe(run.stdout) == EXPECTED_PROBES


def test_probes_behave_differently_without_the_filter(cbin):
    """Natively no probe gets the filter's answer, so the kernel test above can fail."""
    native = parse_probe(subprocess.run([cbin("probe_denied")], capture_output=True, check=True).stdout)
    assert set(native) == set(EXPECTED_PROBES)
    differing = {name for name in native if native[name] != EXPECTED_PROBES[name]}
    assert differing == set(EXPECTED_PROBES) - CONTROLS


def test_int80_is_killed(cbin):
    """A 64-bit binary making an i386 syscall with int 0x80 dies of SIGSYS (natively it works)."""
    binary = cbin("int80")
    native = subprocess.run([binary], capture_output=True)
    assert native.returncode == 0 and native.stdout.startswith(b"int80 getpid=")
    run = run_sandboxed([binary], trapped=(), supervise=False)
    assert (run.status, run.stdout) == (-signal.SIGSYS, b"")


def test_x32_syscall_is_killed(cbin):
    """An x32 syscall number dies of SIGSYS (natively it returns ENOSYS)."""
    binary = cbin("x32")
    assert subprocess.run([binary], capture_output=True).stdout == b"x32 getpid=-1 errno=38\n"
    run = run_sandboxed([binary], trapped=(), supervise=False)
    assert (run.status, run.stdout) == (-signal.SIGSYS, b"")


def test_tool_categories_decided_in_the_kernel():
    """kernel_decided by tool: read-only opens pass, writing opens still notify, exec passes."""
    program = seccomp.build_filter(["open", "openat", "openat2", "creat", "execve", "unlink"],
                                   {"fs/read": seccomp.ALLOW, "shell/exec": seccomp.ALLOW, "fs/delete": errno.EROFS})
    assert verdict(program, "openat", 0, 0, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY) == RET_ALLOW
    assert verdict(program, "openat", 0, 0, (1 << 32) | os.O_RDONLY) == RET_ALLOW  # kernel reads flags as int
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_CREAT, os.O_RDONLY | os.O_TRUNC, 3):
        assert verdict(program, "openat", 0, 0, flags) == RET_USER_NOTIF
    assert verdict(program, "open", 0, os.O_RDONLY) == RET_ALLOW
    assert verdict(program, "open", 0, os.O_WRONLY | os.O_APPEND) == RET_USER_NOTIF
    assert verdict(program, "openat2", 0, 0, 0, 24) == RET_USER_NOTIF  # flags behind a pointer
    assert verdict(program, "creat") == RET_USER_NOTIF
    assert verdict(program, "execve") == RET_ALLOW
    assert verdict(program, "unlink") == errno_action(errno.EROFS)


def test_denied_reads_decided_in_the_kernel():
    """A category denied unconditionally fails in the kernel with its errno, writes still notify."""
    program = seccomp.build_filter(["openat"], {"fs/read": errno.EACCES})
    assert verdict(program, "openat", 0, 0, os.O_RDONLY) == errno_action(errno.EACCES)
    assert verdict(program, "openat", 0, 0, os.O_WRONLY) == RET_USER_NOTIF
    for flags in (os.O_RDWR, os.O_RDONLY | os.O_CREAT, os.O_RDONLY | os.O_TRUNC, 3):  # they read too
        assert verdict(program, "openat", 0, 0, flags) == errno_action(errno.EACCES)
    with pytest.raises(ValueError, match=r"unknown tool categories \['net/teleport'\]"):
        seccomp.build_filter(["openat"], {"net/teleport": 0})


def test_kernel_decided_reads_never_reach_the_supervisor(tmp_path):
    """With fs/read and shell/exec decided in the kernel only the write is audited."""
    target = tmp_path / "out.txt"
    run = run_sandboxed(["/bin/sh", "-c", f"cat /etc/hostname > {target}"],
                        kernel_decided={"fs/read": seccomp.ALLOW, "shell/exec": seccomp.ALLOW})
    assert run.status == 0, run.explain()
    assert target.read_text() == open("/etc/hostname").read()
    assert [(r["syscall"], r["tool"], r["args"]["path"]) for r in run.audit] == [("openat", "fs/write", str(target))]


@pytest.mark.parametrize("read, expected", [
    (None, RET_USER_NOTIF), (errno.EACCES, errno_action(errno.EACCES)), (seccomp.ALLOW, RET_ALLOW)])
def test_only_write_only_opens_are_writes_alone_in_the_kernel(read, expected):
    """With fs/write allowed outright, an open whose descriptor also reads (O_RDWR, or O_RDONLY
    with O_CREAT or O_TRUNC) is a read as well: the kernel lets it through only when reads are
    allowed outright too, refuses it when they are refused, and asks the supervisor otherwise."""
    decided = {"fs/write": seccomp.ALLOW, **({} if read is None else {"fs/read": read})}
    program = seccomp.build_filter(["open", "openat"], decided)
    for name, flags_at in (("openat", 2), ("open", 1)):
        def at(flags):
            return verdict(program, name, *([0] * flags_at), flags)
        assert at(os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == RET_ALLOW
        assert at(os.O_WRONLY | os.O_APPEND) == RET_ALLOW
        for flags in (os.O_RDWR, os.O_RDWR | os.O_CREAT, os.O_RDONLY | os.O_CREAT, os.O_RDONLY | os.O_TRUNC, 3):
            assert at(flags) == expected, (name, oct(flags))
        assert at(os.O_RDONLY) == (RET_USER_NOTIF if read is None else expected)
