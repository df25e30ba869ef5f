"""shell/exec tool-call arguments from a decoded execve/execveat, in the agent's view.

Paths are resolved inside the agent's root (``/proc/PID/root``): ``..`` stops at that
root and absolute symlink targets restart from it, as they would for the agent.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shlex
import stat

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
MAX_SYMLINKS = 40


def _host_root(pid: int) -> str:
    return f"/proc/{pid}/root"


def agent_view(pid: int, host_path: str) -> str:
    """Turn a path as the supervisor sees it (a /proc readlink) into the agent's view."""
    root = os.readlink(_host_root(pid))
    if root == "/":
        return host_path
    if host_path == root or host_path.startswith(root + "/"):
        return host_path[len(root):] or "/"
    return host_path  # outside the agent's root: shown as is (e.g. "pipe:[123]")


def base_directory(pid: int, dirfd: int) -> str:
    """The directory a relative path starts from: the cwd, or what ``dirfd`` names."""
    link = f"/proc/{pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{pid}/fd/{dirfd}"
    try:
        return agent_view(pid, os.readlink(link))
    except FileNotFoundError:
        raise OSError(errno.EBADF, f"bad directory fd {dirfd} in pid {pid}") from None


def lexical_absolute(base: str, path: str) -> str:
    """``path`` joined to ``base`` and normalised without touching the filesystem."""
    joined = posixpath.normpath(posixpath.join(base, path))
    return "/" + joined.lstrip("/")  # normpath keeps a leading "//"; the agent's root is "/"


def resolve_in_root(pid: int, path: str) -> str:
    """Resolve every symlink of absolute ``path`` inside the agent's root."""
    host_root = _host_root(pid)
    pending = [part for part in path.split("/") if part]
    pending.reverse()
    resolved: list[str] = []
    followed = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/" + "/".join(resolved + [part])
        info = os.lstat(host_root + candidate)
        if not stat.S_ISLNK(info.st_mode):
            if pending and not stat.S_ISDIR(info.st_mode):
                raise OSError(errno.ENOTDIR, f"{candidate}: not a directory")
            resolved.append(part)
            continue
        followed += 1
        if followed > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"{path}: too many levels of symbolic links")
        target = os.readlink(host_root + candidate)
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([p for p in target.split("/") if p]))
    return "/" + "/".join(resolved)


def exec_arguments(decoded: dict) -> dict:
    """{path, requested, argv, cmd, program, cwd} for a decoded exec; OSError(errno) if the
    executable cannot be resolved (the exec could not succeed either)."""
    cwd, resolved, requested = resolve_executable(decoded)
    argv = [os.fsdecode(arg) for arg in decoded["argv"]]
    return {
        "path": resolved,
        "requested": requested,
        "argv": argv,
        "cmd": shlex.join(argv),
        "program": posixpath.basename(resolved),
        "cwd": cwd,
    }


def resolve_executable(decoded: dict) -> tuple[str, str, str]:
    """(cwd, resolved path, requested path) of a decoded exec, in the agent's view."""
    pid = decoded["pid"]
    cwd = base_directory(pid, AT_FDCWD)
    dirfd = decoded.get("dirfd", AT_FDCWD)
    raw_path = os.fsdecode(decoded["path"])
    if raw_path == "" and decoded.get("at_flags", 0) & AT_EMPTY_PATH:
        requested = resolved = base_directory(pid, dirfd)  # the fd itself, e.g. a memfd
    elif raw_path == "":
        raise OSError(errno.ENOENT, "empty executable path")
    else:
        base = base_directory(pid, dirfd)
        requested = lexical_absolute(base, raw_path)
        # Resolve the unnormalised path: "link/.." must climb from the link's target.
        resolved = resolve_in_root(pid, posixpath.join(base, raw_path))
    return cwd, resolved, requested
