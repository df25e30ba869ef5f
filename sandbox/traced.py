"""THE table of trapped syscalls: syscall -> tool category -> argument roles.

The notification filter traps exactly these names, the decoders read arguments by
these roles, and docs/tool-calls.md is generated from this module:

    python3 -m sandbox.traced > docs/tool-calls.md

Adding a syscall is adding a row (and, for a new role, a reader in sandbox/decode).
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass, field


class Role(str, enum.Enum):
    """What one syscall argument means; the value is the decoded key."""

    DIRFD = "dirfd"  # int; AT_FDCWD is -100
    PATH = "path"  # NUL-terminated string, at most PATH_MAX
    PATH_OR_NULL = "path?"  # as PATH; NULL means the dirfd itself (path b"" + AT_EMPTY_PATH)
    NEWDIRFD = "newdirfd"
    NEWPATH = "newpath"  # rename/link destination; the link itself for symlink
    TARGET = "target"  # symlink content
    FLAGS = "flags"  # open flags
    MODE = "mode"
    OPEN_HOW = "open_how"  # struct open_how *: flags, mode, resolve
    OPEN_HOW_SIZE = "open_how_size"
    AT_FLAGS = "at_flags"  # AT_* flags, or RENAME_* for renameat2
    UID = "uid"
    GID = "gid"
    LENGTH = "length"
    TIMESPEC_PAIR = "times"  # struct timespec[2] * or NULL
    TIMEVAL_PAIR = "times(timeval)"  # struct timeval[2] * or NULL
    UTIMBUF = "times(utimbuf)"  # struct utimbuf * or NULL
    XATTR_NAME = "xattr_name"
    XATTR_VALUE = "xattr_value"
    XATTR_SIZE = "xattr_size"
    XATTR_FLAGS = "xattr_flags"
    ARGV = "argv"  # char *const argv[]
    ENVP = "envp"  # counted only: envp_count
    FD = "fd"
    DEV = "dev"  # mknod device number
    DOMAIN = "domain"  # socket address family (AF_*)
    SOCK_TYPE = "type"  # SOCK_* with SOCK_NONBLOCK / SOCK_CLOEXEC
    PROTOCOL = "protocol"
    SOCKADDR = "addr"  # struct sockaddr *, read with its length (the next argument)
    SOCKLEN = "addrlen"
    BUFFER = "data"  # const void *, read with its length (the next argument)
    BUFFER_LEN = "size"
    MSG_FLAGS = "msg_flags"  # MSG_*
    MSGHDR = "msghdr"  # struct msghdr *: name, iovecs and control messages
    MMSGHDR = "mmsghdr"  # struct mmsghdr[]: the first entry, read as MSGHDR
    VLEN = "vlen"
    BACKLOG = "backlog"  # listen's int


R = Role
OPEN_TOOL = "fs/read|fs/write"  # write access, O_CREAT or O_TRUNC make it fs/write

# What a refusal looks like to the agent: a shell prints "Operation not permitted" for an
# exec and "Permission denied" for a file, as it would for the kernel's own refusals.
# A refused connection fails as a local firewall rule makes it fail ("Operation not permitted").
_REFUSAL_ERRNO = {"shell/exec": errno.EPERM, "net/connect": errno.EPERM, "net/listen": errno.EPERM,
                  "net/send": errno.EPERM, "net/socket": errno.EPERM}


def refusal_errno(tool: str) -> int:
    """The errno a denied call of ``tool`` fails with (supervisor and kernel-decided alike);
    a row's ``a|b`` tool fails as its first category."""
    return _REFUSAL_ERRNO.get(tool.split("|")[0], errno.EACCES)

AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200


@dataclass(frozen=True)
class Traced:
    name: str
    tool: str
    roles: tuple[Role, ...]
    implied: dict = field(default_factory=dict)  # keys the syscall fixes, e.g. creat's flags


_CREAT_FLAGS = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
# The tool of a network call depends on the socket and the address (sandbox/netops.py):
# connect and sendto with MSG_FASTOPEN are net/connect, a datagram to an address net/send,
# bind net/listen, and so is listen() of a TCP socket never bound (the kernel would bind it to
# the wildcard address). socket() itself is no policy call: the supervisor creates internet
# sockets in its own network namespace and hands them over.
NET_TOOL = "net/connect|net/send|net/listen"
SOCKET_TOOL = "net/socket"

TABLE: tuple[Traced, ...] = (
    Traced("execve", "shell/exec", (R.PATH, R.ARGV, R.ENVP)),
    Traced("execveat", "shell/exec", (R.DIRFD, R.PATH, R.ARGV, R.ENVP, R.AT_FLAGS)),
    Traced("open", OPEN_TOOL, (R.PATH, R.FLAGS, R.MODE)),
    Traced("openat", OPEN_TOOL, (R.DIRFD, R.PATH, R.FLAGS, R.MODE)),
    Traced("openat2", OPEN_TOOL, (R.DIRFD, R.PATH, R.OPEN_HOW, R.OPEN_HOW_SIZE)),
    Traced("creat", OPEN_TOOL, (R.PATH, R.MODE), {"flags": _CREAT_FLAGS}),
    Traced("unlink", "fs/delete", (R.PATH,)),
    Traced("unlinkat", "fs/delete", (R.DIRFD, R.PATH, R.AT_FLAGS)),
    Traced("rmdir", "fs/delete", (R.PATH,), {"at_flags": AT_REMOVEDIR}),
    Traced("rename", "fs/rename", (R.PATH, R.NEWPATH)),
    Traced("renameat", "fs/rename", (R.DIRFD, R.PATH, R.NEWDIRFD, R.NEWPATH)),
    Traced("renameat2", "fs/rename", (R.DIRFD, R.PATH, R.NEWDIRFD, R.NEWPATH, R.AT_FLAGS)),
    Traced("mkdir", "fs/mkdir", (R.PATH, R.MODE)),
    Traced("mkdirat", "fs/mkdir", (R.DIRFD, R.PATH, R.MODE)),
    Traced("link", "fs/link", (R.PATH, R.NEWPATH)),
    Traced("linkat", "fs/link", (R.DIRFD, R.PATH, R.NEWDIRFD, R.NEWPATH, R.AT_FLAGS)),
    Traced("symlink", "fs/link", (R.TARGET, R.NEWPATH)),
    Traced("symlinkat", "fs/link", (R.TARGET, R.NEWDIRFD, R.NEWPATH)),
    Traced("truncate", "fs/write", (R.PATH, R.LENGTH)),
    Traced("chmod", "fs/write", (R.PATH, R.MODE)),
    Traced("fchmodat", "fs/write", (R.DIRFD, R.PATH, R.MODE)),
    Traced("fchmodat2", "fs/write", (R.DIRFD, R.PATH, R.MODE, R.AT_FLAGS)),
    Traced("chown", "fs/write", (R.PATH, R.UID, R.GID)),
    Traced("lchown", "fs/write", (R.PATH, R.UID, R.GID), {"at_flags": AT_SYMLINK_NOFOLLOW}),
    Traced("fchownat", "fs/write", (R.DIRFD, R.PATH, R.UID, R.GID, R.AT_FLAGS)),
    Traced("utimensat", "fs/write", (R.DIRFD, R.PATH_OR_NULL, R.TIMESPEC_PAIR, R.AT_FLAGS)),
    Traced("futimesat", "fs/write", (R.DIRFD, R.PATH_OR_NULL, R.TIMEVAL_PAIR)),
    Traced("utimes", "fs/write", (R.PATH, R.TIMEVAL_PAIR)),
    Traced("utime", "fs/write", (R.PATH, R.UTIMBUF)),
    Traced("mknod", "fs/write", (R.PATH, R.MODE, R.DEV)),
    Traced("mknodat", "fs/write", (R.DIRFD, R.PATH, R.MODE, R.DEV)),
    Traced("setxattr", "fs/write", (R.PATH, R.XATTR_NAME, R.XATTR_VALUE, R.XATTR_SIZE, R.XATTR_FLAGS)),
    Traced("lsetxattr", "fs/write", (R.PATH, R.XATTR_NAME, R.XATTR_VALUE, R.XATTR_SIZE, R.XATTR_FLAGS),
           {"at_flags": AT_SYMLINK_NOFOLLOW}),
    Traced("removexattr", "fs/write", (R.PATH, R.XATTR_NAME)),
    Traced("lremovexattr", "fs/write", (R.PATH, R.XATTR_NAME), {"at_flags": AT_SYMLINK_NOFOLLOW}),
    # Attribute changes through an fd: a file open for reading (or O_PATH, reopened) is enough.
    Traced("fchmod", "fs/write", (R.FD, R.MODE)),
    Traced("fchown", "fs/write", (R.FD, R.UID, R.GID)),
    Traced("fsetxattr", "fs/write", (R.FD, R.XATTR_NAME, R.XATTR_VALUE, R.XATTR_SIZE, R.XATTR_FLAGS)),
    Traced("fremovexattr", "fs/write", (R.FD, R.XATTR_NAME)),
    Traced("socket", SOCKET_TOOL, (R.DOMAIN, R.SOCK_TYPE, R.PROTOCOL)),
    Traced("connect", NET_TOOL, (R.FD, R.SOCKADDR, R.SOCKLEN)),
    Traced("bind", NET_TOOL, (R.FD, R.SOCKADDR, R.SOCKLEN)),
    Traced("sendto", NET_TOOL, (R.FD, R.BUFFER, R.BUFFER_LEN, R.MSG_FLAGS, R.SOCKADDR, R.SOCKLEN)),
    Traced("sendmsg", NET_TOOL, (R.FD, R.MSGHDR, R.MSG_FLAGS)),
    Traced("sendmmsg", NET_TOOL, (R.FD, R.MMSGHDR, R.VLEN, R.MSG_FLAGS)),
    # listen() binds an unbound TCP socket to the wildcard address, any port: decided as that bind.
    Traced("listen", "net/listen", (R.FD, R.BACKLOG)),
)

BY_NAME: dict[str, Traced] = {row.name: row for row in TABLE}

WRITE_ACCESS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC


def open_tool(flags: int) -> str:
    """fs/write when the open can change the file (write access, O_CREAT, O_TRUNC)."""
    return "fs/write" if flags & WRITE_ACCESS else "fs/read"


def names_for_tools(tools: set[str]) -> list[str]:
    """The trapped syscall names whose category is in ``tools`` (fs/read or fs/write both
    select the open family)."""
    return [row.name for row in TABLE if set(row.tool.split("|")) & tools]


TOOL_ARGS = {
    "shell/exec": "path (absolute executable, symlinks resolved inside the agent's root), "
                  "requested (the path as given, made absolute), argv (list of strings), "
                  "cmd (argv as one shell-quoted string, argv[0] replaced by program unless it is program, path or "
                  "requested: a caller picks argv[0] freely), program (the system program the file is: "
                  "a copy, rename, hard link or memfd of /usr/bin/curl is `curl`; otherwise the basename of "
                  "path), cwd, sha256 (when the content was compared), anonymous (true for a file with no "
                  "name: memfd, deleted), runs (the #! interpreters and the program the dynamic loader "
                  "loads: [{path, program, argv, via}], each also decided as a shell/exec with `via` "
                  "shebang or loader; the exec is permitted only when every one is)",
    "fs/*": "path (absolute, normalised, as the agent sees it, symlinks resolved as the syscall "
            "would), flags (list of names), mode, dest (rename and link destination), target "
            "(symlink content), uid and gid (chown; -1 = unchanged), length (truncate), "
            "xattr (attribute name). A hard link or rename is also decided as fs/read and fs/write "
            "of path and fs/write of dest (each with `via` link or rename): a file that may not be read or "
            "written under its name gets no other name, and no file is made or replaced at a name that "
            "may not be written; a rename also as fs/delete of path (with RENAME_EXCHANGE as fs/read of dest "
            "instead), and a symlink as fs/write of path (`via` symlink). Every rename the supervisor "
            "performs runs with the agent frozen (about 1 ms with the cgroup freezer): no task can turn its "
            "source into a directory meanwhile, and each entry a moved directory holds is decided as an "
            "fs/rename of its own; one refused (recorded), or over 4096 entries, fails with EXDEV (mv then "
            "copies and deletes file by file, each decided). A policy that permits "
            "fs/link unconditionally has it decided in the kernel only when it permits fs/read and fs/write "
            "unconditionally too; fs/rename only when every fs category is",
    "net/connect": "host (the DNS name the agent looked the address up by, else the IP literal; always the "
                   "literal for a guarded address), ip, port, family (inet, inet6 or unix), protocol (tcp or udp; "
                   "stream, dgram or seqpacket for unix), path (unix: absolute, symlinks resolved)",
    "net/send": "a datagram to an address: host, ip, port, family, protocol (udp)",
    "net/listen": "a bind: ip and port (0 = any free port), family, protocol; path for a unix socket file. "
                  "A listen of an unbound TCP socket (which the kernel binds to the wildcard address) is decided "
                  "as a bind to ip 0.0.0.0 or ::, port 0; a listen of a bound socket needs no decision",
}


def render_markdown() -> str:
    lines = [
        "# Tool calls from trapped syscalls",
        "",
        "Generated by `python3 -m sandbox.traced > docs/tool-calls.md`; do not edit.",
        "",
        "Each trapped syscall becomes one tool call for the policy. Every call also carries",
        "`pid` (the agent task, in the supervisor's pid namespace) and `session`.",
        "",
        "## Arguments per tool",
        "",
    ]
    lines += [f"- `{tool}`: {text}" for tool, text in TOOL_ARGS.items()]
    lines += ["", "## Syscalls", "", "| syscall | tool | argument roles | fixed by the syscall |", "|---|---|---|---|"]
    for row in TABLE:
        tool = " or ".join(f"`{t}`" for t in row.tool.split("|"))
        roles = ", ".join(role.value for role in row.roles)
        implied = ", ".join(f"{k}={v:#x}" for k, v in row.implied.items())
        lines.append(f"| `{row.name}` | {tool} | {roles} | {implied} |")
    lines += ["", "An open is `fs/write` when it asks for write access, `O_CREAT` or `O_TRUNC`; otherwise `fs/read`.",
              "An `fs/write` open whose descriptor can also read (`O_RDWR`, or `O_RDONLY` with `O_CREAT` or",
              "`O_TRUNC`, on a file that may already exist) is decided as an `fs/read` of the same path and",
              "arguments too, and fails unless both are permitted; so is it in the kernel, which lets it",
              "through only when both categories are permitted outright. `O_CREAT|O_EXCL` and `O_TMPFILE`",
              "make a new file, with nothing to read: those are `fs/write` alone.",
              "", "## Decided in the kernel", "",
              "When the policy decides a category unconditionally, the filter answers it without a",
              "supervisor round trip: `shell/exec` (execve, execveat), `fs/read` (read-only `open` and",
              "`openat`, told apart by their flags register; `openat2` keeps going to the supervisor",
              "because its flags sit behind a pointer), and every other category by syscall. Two",
              "exceptions: a permit of `fs/link` is left to the kernel only when `fs/read` and `fs/write`",
              "are permitted outright too (a new name is also a read and a write of the file), of",
              "`fs/rename` only when every fs category is; and `mknod`/`mknodat` always go to the",
              "supervisor when permitted, which refuses block and character device nodes (EPERM, as",
              "without `CAP_MKNOD`).",
              "Network calls are never decided in the kernel (docs/network.md): the DNS stub redirect and",
              "the address guard need the supervisor.", "", *network_markdown()]
    return "\n".join(lines + hardening_markdown()) + "\n"


def network_markdown() -> list[str]:
    """How each network syscall becomes a tool call (the rules live in sandbox/netops.py)."""
    return [
        "## Network calls", "",
        "| syscall | on | becomes | refused with |", "|---|---|---|---|",
        "| `socket` | AF_INET, AF_INET6 stream/dgram | no decision: created in the supervisor's namespace and "
        "injected | EPROTONOSUPPORT for other protocols (ICMP, SCTP, MPTCP) |",
        "| `socket` | AF_UNIX; AF_NETLINK with NETLINK_ROUTE | allowed in the kernel (agent's namespace) | |",
        "| `socket` | SOCK_RAW, SOCK_PACKET internet sockets | refused in the kernel | EPERM |",
        "| `socket` | other netlink protocols | refused in the kernel | EPROTONOSUPPORT |",
        "| `socket`, `socketpair` | any other family (packet, vsock...) | refused in the kernel | EAFNOSUPPORT |",
        "| `connect` | internet address | `net/connect`; 127.0.0.53:53 goes to the DNS stub undecided | EPERM |",
        "| `connect`, `sendto`, `sendmsg` | unix pathname | `net/connect` on the resolved path | EPERM |",
        "| `connect`, `bind`, sends | abstract or unnamed unix address, netlink | performed, no decision | |",
        "| `bind` | internet address | `net/listen` | EPERM |",
        "| `bind` | unix pathname | `net/listen` with path | EPERM |",
        "| `listen` | TCP socket never bound | `net/listen` on the wildcard address, port 0 (as the bind the "
        "kernel would make) | EPERM |",
        "| `listen` | bound socket (its bind was decided), unix socket | performed, no decision | |",
        "| `connect`, `sendto`, `sendmsg`, `sendmmsg` | UDP to a host and port the HTTP egress inspects | "
        "refused (no QUIC past the egress), recorded as `EGRESS_INSPECTED_UDP` | EPERM |",
        "| `sendto`, `sendmsg`, `sendmmsg` | datagram to an address | `net/send` | EPERM |",
        "| `sendto`, `sendmsg` | TCP with MSG_FASTOPEN | `net/connect` | EPERM |",
        "| `sendto` | NULL address | allowed in the kernel (the connected peer was decided) | |",
        "| `sendmsg`, `sendmmsg` | no address | performed on the agent's behalf (data read once) | |",
        "",
        "`sendmmsg` sends its first message per call (it may send fewer than asked and says how many).",
        "",
    ]


def hardening_markdown() -> list[str]:
    """The static rules of sandbox/seccomp.py, grouped by answer."""
    from sandbox import seccomp  # only for the docs: traced.py itself stays free of libseccomp

    groups: dict[str, list[str]] = {}
    for rule in seccomp.HARDENING_RULES:
        answer = "ENOSYS" if rule.action == seccomp.ENOSYS else "EPERM"
        label = f"`{rule.syscall}`" + (f" ({rule.note})" if rule.note else "")
        groups.setdefault(answer, [])
        if label not in groups[answer]:
            groups[answer].append(label)
    lines = ["## Refused by the static filter", "",
             "Any other architecture (i386 `int 0x80`) and any x32 syscall kill the process.", ""]
    for answer, labels in groups.items():
        lines.append(f"- {answer}: " + ", ".join(labels))
    return lines


if __name__ == "__main__":
    print(render_markdown(), end="")
