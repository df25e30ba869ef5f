"""The Landlock floor: what no rule of the policy can ever permit is also closed in the kernel.

The launcher turns the policy's static envelope (policy/_envelope.py: per tool argument, the
path prefixes, exact paths or ports any permit/defer rule could allow, or "anything") into a
``Floor``; ``plan`` maps it onto Landlock rights and directories, and the agent applies the
plan just before its seccomp filter (docs/landlock.md argues each step). A right whose
envelope is "anything" is not handled at all, so the floor never refuses what the policy
may permit; everything else is only ever widened: values become their directory, and a
directory that a permitted call could delete or move away becomes its parent.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass, field

from sandbox import _libc_landlock as ll
from sandbox.seccomp import ALLOW

ARGUMENTS = (("fs/read", "path"), ("fs/write", "path"), ("fs/delete", "path"), ("fs/mkdir", "path"),
             ("fs/rename", "path"), ("fs/rename", "dest"), ("fs/link", "path"), ("fs/link", "dest"),
             ("shell/exec", "path"), ("net/listen", "path"), ("net/connect", "port"), ("net/listen", "port"))

_MOVED = (("fs/rename", "path"), ("fs/rename", "dest"))  # RENAME_EXCHANGE moves both ways
_MADE = (("fs/write", "path"), ("fs/link", "dest"), *_MOVED)  # mknod is fs/write; link makes files
# Landlock right -> the tool arguments whose values (or their directories) it must allow.
FS_SOURCES = {
    ll.FS_EXECUTE: (("shell/exec", "path"),),
    ll.FS_READ_FILE: (("fs/read", "path"), ("shell/exec", "path")),  # execve opens for reading too
    ll.FS_READ_DIR: (("fs/read", "path"),),
    ll.FS_WRITE_FILE: (("fs/write", "path"),),
    ll.FS_TRUNCATE: (("fs/write", "path"),),
    ll.FS_MAKE_REG: _MADE,
    ll.FS_MAKE_CHAR: _MADE,
    ll.FS_MAKE_BLOCK: _MADE,
    ll.FS_MAKE_FIFO: _MADE,
    ll.FS_MAKE_SOCK: (*_MADE, ("net/listen", "path")),
    ll.FS_MAKE_SYM: (("fs/link", "dest"), *_MOVED),
    ll.FS_MAKE_DIR: (("fs/mkdir", "path"), *_MOVED),
    ll.FS_REMOVE_FILE: (("fs/delete", "path"), *_MOVED),
    ll.FS_REMOVE_DIR: (("fs/delete", "path"), *_MOVED),
    ll.FS_REFER: (("fs/link", "path"), ("fs/link", "dest"), *_MOVED),
}
# Calls that can delete or move a directory away, taking a rule on it along.
REMOVING = (("fs/delete", "path"), *_MOVED)
NET_SOURCES = {ll.NET_CONNECT_TCP: ("net/connect", "port"), ll.NET_BIND_TCP: ("net/listen", "port")}
# A kernel-decided rename or link runs in the agent, where Landlock refuses any cross-directory
# move into a place that grants more than its origin: no filesystem right can be handled then.
MOVES_IN_AGENT = ("fs/rename", "fs/link")
RIGHT_NAMES = {ll.FS_EXECUTE: "execute", ll.FS_READ_FILE: "read_file", ll.FS_READ_DIR: "read_dir",
               ll.FS_WRITE_FILE: "write_file", ll.FS_TRUNCATE: "truncate", ll.FS_MAKE_REG: "make_reg",
               ll.FS_MAKE_CHAR: "make_char", ll.FS_MAKE_BLOCK: "make_block", ll.FS_MAKE_FIFO: "make_fifo",
               ll.FS_MAKE_SOCK: "make_sock", ll.FS_MAKE_SYM: "make_sym", ll.FS_MAKE_DIR: "make_dir",
               ll.FS_REMOVE_FILE: "remove_file", ll.FS_REMOVE_DIR: "remove_dir", ll.FS_REFER: "refer"}
INTERPRETER_DEPTH = 4  # the kernel's BINPRM_MAX_RECURSION: #! lines interpreting #! scripts
HEADER_BYTES = 256  # the kernel reads at most this much of a #! line


@dataclass(frozen=True)
class Bound:
    """Values starting with one of ``prefixes`` or equal to one of ``exact``."""

    prefixes: frozenset = frozenset()
    exact: frozenset = frozenset()


@dataclass
class Floor:
    """The policy's envelope as plain data: (tool, argument) -> Bound, or None for anything."""

    bounds: dict
    kernel_permitted: frozenset = frozenset()  # tool categories the seccomp filter allows by itself

    def bound(self, key) -> Bound | None:
        return self.bounds.get(key)  # a missing argument is unbounded


@dataclass
class Plan:
    abi: int
    fs_handled: int = 0
    net_handled: int = 0
    scoped: int = 0
    paths: dict = field(default_factory=dict)  # directory (or file) -> rights beneath (on) it
    ports: dict = field(default_factory=dict)  # TCP port -> rights
    notes: list = field(default_factory=list)  # what stays open, and why


def plan(floor: Floor, abi: int) -> Plan:
    """The rulesets that close what ``floor`` says no call can be permitted, for ABI ``abi``."""
    result = Plan(abi, scoped=ll.scopes(abi))
    if abi < 6:
        result.notes.append(f"ABI {abi}: no signal or abstract-socket scoping (needs ABI 6)")
    _plan_fs(floor, result)
    result.paths = _without_covered(result.paths)
    _plan_net(floor, result)
    return result


def _plan_fs(floor: Floor, result: Plan) -> None:
    moving = sorted(set(MOVES_IN_AGENT) & floor.kernel_permitted)
    if moving:
        result.notes.append(f"filesystem rights not handled: {', '.join(moving)} run in the agent unchecked")
        return
    removing = _union(floor.bound(key) for key in REMOVING)
    supported = ll.fs_rights(result.abi)
    unbounded = []
    for right, sources in FS_SOURCES.items():
        if not right & supported or right == ll.FS_REFER:
            continue
        bound = _union(floor.bound(key) for key in sources)
        if bound is None:
            unbounded.append(RIGHT_NAMES[right])
            continue
        result.fs_handled |= right
        for value in bound.prefixes | bound.exact:
            if isinstance(value, str):
                _allow(result.paths, _existing(_stable(_directory(value), removing)), right)
        if right in (ll.FS_EXECUTE, ll.FS_READ_FILE):
            for interpreter in _exec_interpreters(floor.bound(("shell/exec", "path"))):
                stable = _stable(interpreter, removing)
                _allow(result.paths, interpreter if stable == interpreter else _existing(stable), right)
    if unbounded:
        result.notes.append(f"not handled, a rule can permit them anywhere: {', '.join(unbounded)}")
    if result.fs_handled and ll.FS_REFER & supported:
        # REFER counts as handled whenever anything is: grant it where moves can be permitted.
        result.fs_handled |= ll.FS_REFER
        bound = _union(floor.bound(key) for key in FS_SOURCES[ll.FS_REFER])
        values = ["/"] if bound is None else [v for v in bound.prefixes | bound.exact if isinstance(v, str)]
        for value in values:
            _allow(result.paths, _existing(_stable(_directory(value), removing)), ll.FS_REFER)
    if result.paths.get("/", 0) & result.fs_handled == result.fs_handled and result.fs_handled:
        result.notes.append("filesystem rights all granted on /: the policy can delete or move any directory")


def _plan_net(floor: Floor, result: Plan) -> None:
    if not ll.net_rights(result.abi):
        result.notes.append(f"ABI {result.abi}: no TCP port rules (needs ABI 4)")
        return
    unbounded = []
    for right, key in NET_SOURCES.items():
        bound = floor.bound(key)
        if bound is None:
            unbounded.append("connect" if right == ll.NET_CONNECT_TCP else "bind")
            continue
        result.net_handled |= right
        for port in bound.exact:
            if type(port) is int and 0 <= port <= 0xFFFF:
                result.ports[port] = result.ports.get(port, 0) | right
    if unbounded:
        result.notes.append(f"TCP {' and '.join(unbounded)} not handled: a rule can permit any port")


def _without_covered(paths: dict) -> dict:
    """Drop the rights a rule on an ancestor directory already grants (all paths are real)."""
    kept = {}
    for path, rights in paths.items():
        for other, granted in paths.items():
            if other != path and (other == "/" or path.startswith(other + "/")):
                rights &= ~granted
        if rights:
            kept[path] = rights
    return kept


def _allow(paths: dict, path: str, right: int) -> None:
    paths[path] = paths.get(path, 0) | right


def _union(bounds) -> Bound | None:
    prefixes, exact = set(), set()
    for bound in bounds:
        if bound is None:
            return None
        prefixes |= bound.prefixes
        exact |= bound.exact
    return Bound(frozenset(prefixes), frozenset(exact))


def _directory(value: str) -> str:
    """The deepest directory every path equal to or starting with ``value`` lies beneath, and
    whose beneath also holds each such path's parent (make and remove rights are checked there)."""
    if not value.startswith("/"):
        return "/"
    return value[:value.rfind("/")] or "/"


def _covers(bound: Bound, path: str) -> bool:
    return path in bound.exact or any(path.startswith(p) for p in bound.prefixes)


def _stable(path: str, removing: Bound | None) -> str:
    """``path``, or the parent of its highest ancestor a permitted call could delete or move:
    Landlock rules stick to inodes, so a recreated directory would lose them."""
    if removing is None:
        return "/"
    parts = path.split("/")
    for depth in range(2, len(parts) + 1):
        ancestor = "/".join(parts[:depth])
        if _covers(removing, ancestor):
            return "/".join(parts[:depth - 1]) or "/"
    return path


def _existing(path: str) -> str:
    """The longest existing directory at or above ``path`` (rounding up only widens)."""
    while path != "/" and not os.path.isdir(path):
        path = os.path.dirname(path)
    return os.path.realpath(path)  # the rule lands on the resolved inode; ancestry by name is then exact


def _exec_interpreters(bound: Bound) -> set[str]:
    """Interpreters of the exact executables, and the system's program loader (a binary created
    during the run needs it too); real paths, "/" for a relative #! interpreter."""
    found = set()
    if not bound.prefixes and not bound.exact:
        return found  # no exec can be permitted: no loader needed
    for path in {*bound.exact, "/bin/sh", sys.executable}:
        for interpreter in interpreters(path) if isinstance(path, str) else ():
            found.add(os.path.realpath(interpreter) if interpreter.startswith("/") else "/")
    return found


def interpreters(path: str, depth: int = INTERPRETER_DEPTH) -> list[str]:
    """What the kernel also opens to execute ``path``: #! interpreters and ELF program interpreters."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
            if head[:4] == b"\x7fELF":
                found = _elf_interpreter(f, head)
                return [found] if found else []
    except OSError:
        return []
    if head[:2] != b"#!" or depth == 0:
        return []
    words = head[2:].split(b"\n", 1)[0].split()
    if not words:
        return []
    interpreter = os.fsdecode(words[0])
    return [interpreter, *interpreters(interpreter, depth - 1)]


def _elf_interpreter(f, head: bytes) -> str | None:
    """The PT_INTERP path of an ELF file (64- or 32-bit, either byte order), or None."""
    if len(head) < 0x40:
        return None
    wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
    if wide:
        phoff, = struct.unpack_from(order + "Q", head, 0x20)
        size, count = struct.unpack_from(order + "HH", head, 0x36)
        layout = order + "I4xQ8x8xQ"  # p_type, p_offset, p_filesz
    else:
        phoff, = struct.unpack_from(order + "I", head, 0x1C)
        size, count = struct.unpack_from(order + "HH", head, 0x2A)
        layout = order + "II8xI"
    f.seek(phoff)
    table = f.read(size * min(count, 256))
    for index in range(len(table) // size if size else 0):
        p_type, offset, length = struct.unpack_from(layout, table, index * size)
        if p_type == 3:  # PT_INTERP
            f.seek(offset)
            return os.fsdecode(f.read(min(length, 4096)).split(b"\0", 1)[0]) or None
    return None


def apply(found: Plan) -> None:
    """Enforce ``found`` on the calling thread and its future children."""
    ruleset = build_ruleset(found)
    if ruleset is None:
        return
    try:
        ll.restrict_self(ruleset)
    finally:
        os.close(ruleset)


def build_ruleset(found: Plan) -> int | None:
    """The ruleset fd (close-on-exec) enforcing ``found``, for ``landlock_restrict_self`` in this
    mount namespace; None when it would restrict nothing. A path that is gone (another mount view)
    is ruled by its nearest existing parent."""
    if not (found.fs_handled or found.net_handled or found.scoped):
        return None  # the kernel refuses an empty ruleset, and it would restrict nothing
    ruleset = ll.create_ruleset(found.abi, found.fs_handled, found.net_handled, found.scoped)
    try:
        for path, rights in sorted(found.paths.items()):
            _add_path(ruleset, path, rights & found.fs_handled)
        for port, rights in sorted(found.ports.items()):
            ll.add_port_rule(ruleset, port, rights & found.net_handled)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def _add_path(ruleset: int, path: str, rights: int) -> None:
    while True:
        try:
            ll.add_path_rule(ruleset, path, rights)
            return
        except (FileNotFoundError, NotADirectoryError):
            if path == "/":
                raise
            path = os.path.dirname(path)


def describe(found: Plan | None, reason: str = "") -> list[str]:
    """The run log's lines about the floor."""
    if found is None:
        return [f"Landlock floor not applied: {reason}; the supervisor alone enforces the policy"]
    rights = [name for right, name in RIGHT_NAMES.items() if right & found.fs_handled]
    lines = [f"Landlock ABI {found.abi} floor: fs rights handled: {', '.join(rights) or 'none'}"]
    for path, granted in sorted(found.paths.items()):
        names = [name for right, name in RIGHT_NAMES.items() if right & granted & found.fs_handled]
        lines.append(f"  Landlock allows {', '.join(names)} beneath {path}")
    if found.net_handled:
        ports = ", ".join(str(p) for p in sorted(found.ports)) or "none"
        lines.append(f"  Landlock TCP ports allowed: {ports}")
    if found.scoped:
        lines.append("  Landlock scopes: signals and abstract unix sockets stay inside the sandbox")
    lines += [f"  Landlock: {note}" for note in found.notes]
    return lines


def for_run(envelope, kernel_decided: dict) -> tuple[Plan | None, list[str]]:
    """(plan, run-log lines) from the engine's ``envelope(tool, argument)`` and the seccomp
    filter's kernel-decided categories; no plan when this kernel has no Landlock."""
    try:
        abi = ll.abi_version()
    except OSError as err:  # an unexpected answer: run without the floor, and say so
        return None, describe(None, f"the Landlock probe failed ({err.strerror})")
    if abi == 0:
        return None, describe(None, "Landlock is not available in this kernel (faramesh-sandbox doctor)")
    bounds = {}
    for key in ARGUMENTS:
        found = envelope(*key)
        bounds[key] = None if found.anything else Bound(frozenset(found.prefixes), frozenset(found.exact))
    permitted = frozenset(tool for tool, action in kernel_decided.items() if "/" in tool and action == ALLOW)
    found = plan(Floor(bounds, permitted), abi)
    return found, describe(found)


def doctor_summary() -> str:
    """One line for ``doctor``: whether ``run`` applies the floor here, and with what."""
    try:
        abi = ll.abi_version()
    except OSError as err:
        return f"not applied: the Landlock probe failed ({err.strerror}); the supervisor alone enforces the policy"
    if abi == 0:
        return "not applied: Landlock is not available; the supervisor alone enforces the policy"
    parts = ["filesystem"] + (["TCP ports"] if ll.net_rights(abi) else []) + \
        (["signal and abstract-socket scopes"] if ll.scopes(abi) else [])
    return f"applied by run (ABI {abi}): {', '.join(parts)} (docs/landlock.md)"
