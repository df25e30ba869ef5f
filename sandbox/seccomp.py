"""The seccomp filter: user notification for trapped syscalls over a static hardening layer.

libseccomp (pyseccomp) only compiles the rules to classic BPF; the program is loaded
with a raw seccomp(2) so the listener flags can be chosen (libseccomp 2.5 cannot set
WAIT_KILLABLE_RECV). The filter allows by default: decisions the kernel cannot make
go to the supervisor, and HARDENING_RULES deny what no agent needs.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Iterable, Mapping

import pyseccomp

from sandbox import _libc, traced
from sandbox.bpf import errno_action

ALLOW = 0  # a kernel_decided value: let the syscall through with no round trip


@dataclass(frozen=True)
class Eq:
    arg: int
    value: int

    def compile(self) -> pyseccomp.Arg:
        return pyseccomp.Arg(self.arg, pyseccomp.EQ, self.value)


@dataclass(frozen=True)
class Ne:
    arg: int
    value: int

    def compile(self) -> pyseccomp.Arg:
        return pyseccomp.Arg(self.arg, pyseccomp.NE, self.value)


@dataclass(frozen=True)
class Ge:
    """arg >= value over all 64 bits (a negative ``int`` reads as huge: it matches)."""

    arg: int
    value: int

    def compile(self) -> pyseccomp.Arg:
        return pyseccomp.Arg(self.arg, pyseccomp.GE, self.value)


@dataclass(frozen=True)
class MaskedEq:
    """(arg & mask) == value over all 64 bits; a 32-bit mask ignores the high half,
    which is right for arguments the kernel reads as ``unsigned int``."""

    arg: int
    mask: int
    value: int

    def compile(self) -> pyseccomp.Arg:
        return pyseccomp.Arg(self.arg, pyseccomp.MASKED_EQ, self.mask, self.value)


@dataclass(frozen=True)
class Rule:
    syscall: str
    action: int
    matchers: tuple = ()
    note: str = ""  # which arguments the matchers select, for the docs


EPERM = errno_action(errno.EPERM)
ENOSYS = errno_action(errno.ENOSYS)  # "not implemented": libc and runtimes fall back

CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
USERFAULTFD_IOC_NEW = 0xAA00  # /dev/userfaultfd: the same userfaultfd, reached by ioctl
# Inode attributes set through a descriptor that may be read-only: FS_IOC_SETFLAGS (chattr),
# FS_IOC_FSSETXATTR (project ids), FS_IOC_SETVERSION and ext4's own (the inode generation), with
# their 32-bit forms.
FILE_ATTRIBUTE_IOCTLS = (0x40086602, 0x40046602, 0x401C5820, 0x40087602, 0x40047602, 0x40086604, 0x40046604)
PERSONALITY_QUERY = 0xFFFFFFFF
SECCOMP_FILTER_FLAG_NEW_LISTENER = _libc.SECCOMP_FILTER_FLAG_NEW_LISTENER


def _deny_all(action: int, *names: str) -> list[Rule]:
    return [Rule(name, action) for name in names]


def _personality_rules() -> list[Rule]:
    # Allowed: PER_LINUX (0) and the query 0xffffffff, i.e. low 32 bits all equal. libseccomp
    # allows one comparison per argument per rule, so deny every value where bit 0 and some
    # bit k differ: two masked compares per bit, all on the personality path only.
    rules = []
    for bit in range(1, 32):
        pair = 1 | (1 << bit)
        note = "anything but 0 and the 0xffffffff query"
        rules.append(Rule("personality", EPERM, (MaskedEq(0, pair, 1 << bit),), note))
        rules.append(Rule("personality", EPERM, (MaskedEq(0, pair, 1),), note))
    return rules


# Internet sockets live in the supervisor's (the host's) network namespace. Their ioctls and
# netfilter socket options act on that namespace with the caller's capabilities, so an agent
# running as root could change the host's interfaces, routes or firewall through them.
SOCKET_IOCTL_BLOCKS = ((0xFFFFFFFC, 0x8900), (0xFFFFFFFF, 0x8904), (0xFFFFFFF8, 0x8908), (0xFFFFFFF0, 0x8910),
                       (0xFFFFFFE0, 0x8920), (0xFFFFFFC0, 0x8940), (0xFFFFFF80, 0x8980))  # 0x89xx but 0x8905-7
SOL_SOCKET, SOL_IP, SOL_TCP, SOL_IPV6 = 1, 0, 6, 41
NETFILTER_IP_OPTNAMES = 64  # IPT_BASE_CTL and up: iptables, arptables, ebtables, ipset, IPVS
NETFILTER_IPV6_OPTNAMES = (0xFFFFFFF8, 64)  # IP6T_SO_SET_REPLACE .. IP6T_SO_GET_REVISION_TARGET
# The supervisor performs a decided connect or send on the agent's own socket, so these options
# would apply to it: why each group is refused, then (option, level, optname).
HOST_SOCKET_OPTIONS = {
    "a source route sends the packet to its first hop, not to the decided address": (
        ("IP_OPTIONS", SOL_IP, 4), ("IPV6_RTHDR", SOL_IPV6, 57), ("IPV6_2292RTHDR", SOL_IPV6, 5),
        ("IPV6_2292PKTOPTIONS", SOL_IPV6, 6)),  # sets IPV6_RTHDR among others
    "out of an interface of its choice, past the host's policy routing (a VPN, a firewall mark)": (
        ("SO_BINDTODEVICE", SOL_SOCKET, 25), ("SO_BINDTOIFINDEX", SOL_SOCKET, 62), ("SO_MARK", SOL_SOCKET, 36),
        ("IP_UNICAST_IF", SOL_IP, 50), ("IPV6_UNICAST_IF", SOL_IPV6, 76),
        ("IPV6_PKTINFO", SOL_IPV6, 50),  # sticky: the interface index of every later send
        ("IP_MULTICAST_IF", SOL_IP, 32), ("IPV6_MULTICAST_IF", SOL_IPV6, 17)),
    "a source address the host does not own, or another host's traffic": (
        ("IP_TRANSPARENT", SOL_IP, 19), ("IP_FREEBIND", SOL_IP, 15), ("IPV6_TRANSPARENT", SOL_IPV6, 75),
        ("IPV6_FREEBIND", SOL_IPV6, 78)),
    "a TCP connection's state set by hand, with no handshake": (
        ("TCP_REPAIR", SOL_TCP, 19), ("TCP_REPAIR_QUEUE", SOL_TCP, 20), ("TCP_QUEUE_SEQ", SOL_TCP, 21),
        ("TCP_REPAIR_OPTIONS", SOL_TCP, 22), ("TCP_REPAIR_WINDOW", SOL_TCP, 29)),
}


def _host_socket_rules() -> list[Rule]:
    note_ioctl = "SIOC* interface and route ioctls (0x89xx but SIOCATMARK, SIOCGSTAMP[NS])"
    rules = [Rule("ioctl", EPERM, (MaskedEq(1, mask, value),), note_ioctl) for mask, value in SOCKET_IOCTL_BLOCKS]
    for name in ("setsockopt", "getsockopt"):
        rules.append(Rule(name, EPERM, (MaskedEq(1, 0xFFFFFFFF, SOL_IP), Ge(2, NETFILTER_IP_OPTNAMES)),
                          "netfilter options"))
        rules.append(Rule(name, EPERM, (MaskedEq(1, 0xFFFFFFFF, SOL_IPV6), MaskedEq(2, *NETFILTER_IPV6_OPTNAMES)),
                          "netfilter options"))
    # level and optname are ints to the kernel: the high halves do not count.
    rules += [Rule("setsockopt", EPERM, (MaskedEq(1, 0xFFFFFFFF, level), MaskedEq(2, 0xFFFFFFFF, optname)), option)
              for options in HOST_SOCKET_OPTIONS.values() for option, level, optname in options]
    return rules


HARDENING_RULES: tuple[Rule, ...] = tuple(
    # io_uring and clone3 get ENOSYS so libraries fall back to plain syscalls (which are
    # trapped or argument-checked); clone3's flags sit behind a pointer no filter can read.
    _deny_all(ENOSYS, "io_uring_setup", "io_uring_enter", "io_uring_register", "clone3")
    + _deny_all(EPERM, "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open")
    + _deny_all(EPERM, "mount", "umount2", "pivot_root", "move_mount", "open_tree", "open_tree_attr",
                "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr")
    + _deny_all(EPERM, "unshare", "setns")
    # Paths are decided as the agent sees them from its root: a chroot("/etc") would make
    # /etc/shadow "/shadow" to every path rule.
    + _deny_all(EPERM, "chroot")
    + [Rule("clone", EPERM, (MaskedEq(0, flag, flag),), "CLONE_NEW* flags") for flag in CLONE_NAMESPACE_FLAGS.values()]
    + _deny_all(EPERM, "keyctl", "add_key", "request_key", "userfaultfd")
    + _personality_rules()
    + _deny_all(EPERM, "open_by_handle_at", "name_to_handle_at")
    + _deny_all(EPERM, "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module")
    + [Rule("ioctl", EPERM, (MaskedEq(1, 0xFFFFFFFF, cmd),), "TIOCSTI, TIOCLINUX") for cmd in (TIOCSTI, TIOCLINUX)]
    # fanotify opens each event's file itself, O_RDWR if asked: a permitted read would hand over a
    # writable descriptor, and events from host processes reach files the agent may not open.
    + _deny_all(EPERM, "fanotify_init", "fanotify_mark")
    # Inode flags (chattr +i/+a) and project attributes change a file through a read-only descriptor.
    + [Rule("ioctl", EPERM, (MaskedEq(1, 0xFFFFFFFF, cmd),), "FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR, *_SETVERSION")
       for cmd in FILE_ATTRIBUTE_IOCTLS]
    # AIO and userfaultfd could write memory while its owner is frozen for an exec decision.
    + _deny_all(EPERM, "io_setup", "io_submit")
    # A nested listener would let the agent supervise (and answer for) its own children.
    + [Rule("seccomp", EPERM, (MaskedEq(1, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_NEW_LISTENER),),
            "NEW_LISTENER")]
    + [Rule("ioctl", EPERM, (MaskedEq(1, 0xFFFFFFFF, USERFAULTFD_IOC_NEW),), "/dev/userfaultfd")]
    + _deny_all(EPERM, "acct", "swapon", "swapoff", "reboot", "quotactl", "quotactl_fd", "lookup_dcookie")
    # Root inside the sandbox is root on the host's clock, kernel log and I/O ports.
    + _deny_all(EPERM, "clock_settime", "settimeofday", "clock_adjtime", "adjtimex", "syslog", "iopl", "ioperm",
                "vhangup")
    # Path-based attribute writes newer than the trapped table: refused until decoded.
    + _deny_all(ENOSYS, "setxattrat", "removexattrat", "file_setattr")
    + _host_socket_rules()
)


def _syscall_id(name: str) -> int:
    """libseccomp's number for ``name``, or the generated table's for syscalls it predates."""
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    if number == -1 or number is None:  # __NR_SCMP_ERROR: libseccomp does not know the name
        try:
            return _libc.syscall_number(name)
        except KeyError:
            raise ValueError(f"unknown syscall {name!r}: not in libseccomp nor sandbox/_syscalls_generated.py") from None
    return number


# Calls that change a task's credentials, and the prctl options that change what capabilities
# its next exec keeps. With watch_credentials they reach the supervisor, which notes the change
# and lets them run: nothing is decided on their arguments (sandbox/fastpath.py remembers the
# agent's identity until a task makes one of them).
CREDENTIAL_CALLS = ("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
                    "setgroups", "capset")
CAPABILITY_PRCTLS = (24, 28, 47)  # PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT


def credential_numbers() -> frozenset[int]:
    """Syscall numbers of CREDENTIAL_CALLS and prctl."""
    return frozenset(_syscall_id(name) for name in (*CREDENTIAL_CALLS, "prctl"))


# Opens whose flags are a register argument: the filter can tell reads from writes. Only a
# write-only open is fs/write alone: O_RDWR, or O_RDONLY with O_CREAT or O_TRUNC, hands back a
# descriptor that reads too, so it is fs/read and fs/write at once (sandbox/supervisor.py
# _implied_calls). Each (mask, value) below tests the access mode and one flag in one comparison.
OPEN_FLAGS_ARG = {"open": 1, "openat": 2}
WRITE_ONLY_OPENS = ((os.O_ACCMODE, os.O_WRONLY),)
READ_WRITE_OPENS = ((os.O_ACCMODE, os.O_RDWR), (os.O_ACCMODE, os.O_ACCMODE),
                    (os.O_ACCMODE | os.O_CREAT, os.O_CREAT), (os.O_ACCMODE | os.O_TRUNC, os.O_TRUNC))
READ_ONLY_OPENS = ((os.O_ACCMODE | os.O_CREAT | os.O_TRUNC, 0),)
NOTIFY = pyseccomp.NOTIFY


AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
FAMILY_RANGE = 64  # AF_MAX is 46 in Linux 6.18; larger values fail in the kernel anyway
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_PACKET, SOCK_TYPE_MASK = 1, 2, 3, 10, 0xF
NETLINK_ROUTE = 0
REFUSED_TYPE_ERRNO = {SOCK_RAW: errno.EPERM, SOCK_PACKET: errno.EPERM}  # as without CAP_NET_RAW


def _family(value: int) -> MaskedEq:
    return MaskedEq(0, 0xFFFFFFFF, value)  # the kernel reads ``int family``


def socket_rules(trap_internet: bool) -> list[tuple[int, tuple]]:
    """socket(): AF_UNIX in the kernel; AF_NETLINK only as NETLINK_ROUTE (per network
    namespace); AF_INET/AF_INET6 stream and datagram to the supervisor (``trap_internet``)
    or, untrapped, in the kernel inside the agent's own namespace; raw and packet types EPERM;
    other internet types ESOCKTNOSUPPORT; every other family EAFNOSUPPORT."""
    rules: list[tuple[int, tuple]] = []
    for family in range(FAMILY_RANGE):
        if family in (AF_INET, AF_INET6):
            for kind in range(SOCK_TYPE_MASK + 1):
                if kind in (SOCK_STREAM, SOCK_DGRAM):
                    action = NOTIFY if trap_internet else ALLOW
                else:
                    action = errno_action(REFUSED_TYPE_ERRNO.get(kind, errno.ESOCKTNOSUPPORT))
                if action != ALLOW:
                    rules.append((action, (_family(family), MaskedEq(1, SOCK_TYPE_MASK, kind))))
        elif family == AF_NETLINK:
            rules.append((errno_action(errno.EPROTONOSUPPORT), (_family(family), Ne(2, NETLINK_ROUTE))))
        elif family != AF_UNIX:
            rules.append((errno_action(errno.EAFNOSUPPORT), (_family(family),)))
    return rules


def socketpair_rules() -> list[tuple[int, tuple]]:
    """socketpair(): AF_UNIX only (a 64-bit compare: stray high bits are refused too)."""
    return [(errno_action(errno.EAFNOSUPPORT), (Ne(0, AF_UNIX),))]


NO_ADDRESS_ARG = {"sendto": 4}  # sendto(fd, buf, len, flags, NULL, 0) is a plain send


def net_trap_rules(name: str) -> list[tuple[int, tuple]]:
    """Network syscalls always go to the supervisor, whatever the policy decides statically:
    DNS to the stub is redirected and guarded addresses need an explicit rule, which the
    kernel cannot see. A sendto without an address is a connected send: kernel-allowed."""
    if name == "socket":
        return socket_rules(trap_internet=True)
    if name in NO_ADDRESS_ARG:
        return [(NOTIFY, (Ne(NO_ADDRESS_ARG[name], 0),))]
    return [(NOTIFY, ())]


def _action(decided: int) -> int:
    return ALLOW if decided == ALLOW else errno_action(decided)


# The supervisor refuses block and character device nodes (sandbox/fsops.py): these go to it even
# when the policy permits fs/write outright, or a root agent could make a disk's node and open it.
DEVICE_NODE_CALLS = frozenset({"mknod", "mknodat"})


def trap_rules(name: str, tools: Mapping[str, int]) -> list[tuple[int, tuple]]:
    """(action, matchers) for trapped syscall ``name`` when the tool categories in ``tools``
    are decided in the kernel (ALLOW or an errno). Read-only open/openat are told apart
    from writing ones by their flags register (``int``: a 32-bit mask is exact)."""
    row = traced.BY_NAME.get(name)
    tool = row.tool if row else ""
    if tool.startswith("net/"):  # never decided in the kernel, whatever the policy says
        return net_trap_rules(name)
    if tool != traced.OPEN_TOOL:
        if name in DEVICE_NODE_CALLS and tools.get(tool) == ALLOW:
            return [(NOTIFY, ())]
        return [(_action(tools[tool]) if tool in tools else NOTIFY, ())]
    read = _action(tools["fs/read"]) if "fs/read" in tools else NOTIFY
    write = _action(tools["fs/write"]) if "fs/write" in tools else NOTIFY
    if name not in OPEN_FLAGS_ARG:  # creat always writes; openat2's flags sit behind a pointer
        return [(write, ())] if name == "creat" or read == write else [(NOTIFY, ())]
    if read == write:
        return [(read, ())]
    index = OPEN_FLAGS_ARG[name]
    both = _both(read, write)
    return [(action, (MaskedEq(index, mask, value),))
            for action, opens in ((write, WRITE_ONLY_OPENS), (both, READ_WRITE_OPENS), (read, READ_ONLY_OPENS))
            for mask, value in opens]


def _both(read: int, write: int) -> int:
    """The action for an open that is a read and a write: a refusal of either refuses it, and
    the kernel lets it through only when both are allowed; anything else goes to the supervisor."""
    refusals = [action for action in (write, read) if action not in (ALLOW, NOTIFY)]
    return refusals[0] if refusals else ALLOW if read == write == ALLOW else NOTIFY


def _check_disjoint(trapped: set[str], kernel_decided: Mapping[str, int]) -> None:
    hardened = {rule.syscall for rule in HARDENING_RULES}
    for label, names in (("trapped", trapped), ("kernel_decided", set(kernel_decided))):
        clash = sorted(names & hardened)
        if clash:
            raise ValueError(f"{label} syscalls {clash} are fixed by the hardening rules; remove them")
    both = sorted(trapped & set(kernel_decided))
    if both:
        raise ValueError(f"syscalls {both} are both trapped and kernel_decided; choose one")


def build_filter(trapped: Iterable[str], kernel_decided: Mapping[str, int] | None = None,
                 watch_credentials: bool = False) -> bytes:
    """Compile the filter: USER_NOTIF for ``trapped``, ALLOW or ERRNO(errno) for
    ``kernel_decided``, the hardening rules, and KILL_PROCESS for any other arch and x32;
    with ``watch_credentials`` also USER_NOTIF for CREDENTIAL_CALLS and CAPABILITY_PRCTLS.

    ``kernel_decided`` keys are syscall names, or tool categories of sandbox/traced.py
    ("fs/read", "shell/exec"...) that the policy decides unconditionally: trapped syscalls
    of such a category get the decision in the kernel, with no supervisor round trip."""
    trapped = set(trapped)
    decided = dict(kernel_decided or {})
    tools = {key: decided.pop(key) for key in list(decided) if "/" in key}
    unknown = sorted(set(tools) - {t for row in traced.TABLE for t in row.tool.split("|")})
    if unknown:
        raise ValueError(f"kernel_decided names unknown tool categories {unknown}")
    kernel_decided = decided
    _check_disjoint(trapped, kernel_decided)
    program = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    # libseccomp's default bad-arch action kills only the thread; kill the whole process.
    # Its x86_64 programs also send every x32 number (bit 30) to this action.
    program.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    # A binary search over syscall numbers: untrapped syscalls pay O(log n), not O(n).
    program.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    for rule in HARDENING_RULES:
        program.add_rule(rule.action, _syscall_id(rule.syscall), *(m.compile() for m in rule.matchers))
    for name in sorted(trapped):
        for action, matchers in trap_rules(name, tools):
            if action != ALLOW:  # ALLOW is the default action; libseccomp rejects it as a rule
                program.add_rule(action, _syscall_id(name), *(m.compile() for m in matchers))
    for name, err in sorted(kernel_decided.items()):
        if err != ALLOW:
            program.add_rule(_action(err), _syscall_id(name))
    if watch_credentials:
        for name in CREDENTIAL_CALLS:
            program.add_rule(NOTIFY, _syscall_id(name))
        for option in CAPABILITY_PRCTLS:
            program.add_rule(NOTIFY, _syscall_id("prctl"), MaskedEq(0, 0xFFFFFFFF, option).compile())
    for name, rules in (("socket", socket_rules(trap_internet=False)), ("socketpair", socketpair_rules())):
        if name not in trapped and name not in kernel_decided:
            for action, matchers in rules:
                if action != ALLOW:
                    program.add_rule(action, _syscall_id(name), *(m.compile() for m in matchers))
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    with open(fd, "w+b") as sink:
        program.export_bpf(sink)
        sink.seek(0)
        return sink.read()


def install(program: bytes) -> int:
    """Load ``program`` on the calling thread and return the notification listener fd.

    Must run in the child after PR_SET_NO_NEW_PRIVS (so no setuid exec can outrun the
    filter). WAIT_KILLABLE_RECV keeps a received notification from being interrupted by
    signals or the freezer, which exec decisions rely on."""
    if not _libc.no_new_privs():
        raise PermissionError("seccomp install: no_new_privs is not set; call _libc.set_no_new_privs() first")
    flags = _libc.SECCOMP_FILTER_FLAG_NEW_LISTENER | _libc.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    return _libc.seccomp_set_mode_filter(program, flags)
