"""shell/exec tool-call arguments from a decoded execve/execveat, in the agent's view.

Paths are resolved inside the agent's root (``/proc/PID/root``): ``..`` stops at that
root and absolute symlink targets restart from it, as they would for the agent.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import shlex
import stat

from sandbox._procstatus import status_fields

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
MAX_SYMLINKS = 40


def _host_root(pid: int) -> str:
    return f"/proc/{pid}/root"


def agent_view(pid: int, host_path: str, root: str | None = None) -> str:
    """Turn a path as the supervisor sees it (a /proc readlink) into the agent's view
    (``root``: the agent's root as the supervisor sees it, when already read)."""
    if root is None:
        root = os.readlink(_host_root(pid))
    if root == "/":
        return host_path
    if host_path == root or host_path.startswith(root + "/"):
        return host_path[len(root):] or "/"
    return host_path  # outside the agent's root: shown as is (e.g. "pipe:[123]")


def base_directory(pid: int, dirfd: int, root: str | None = None) -> str:
    """The directory a relative path starts from: the cwd, or what ``dirfd`` names."""
    link = f"/proc/{pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{pid}/fd/{dirfd}"
    try:
        return agent_view(pid, os.readlink(link), root)
    except FileNotFoundError:
        raise OSError(errno.EBADF, f"bad directory fd {dirfd} in pid {pid}") from None


def lexical_absolute(base: str, path: str) -> str:
    """``path`` joined to ``base`` and normalised without touching the filesystem."""
    joined = posixpath.normpath(posixpath.join(base, path))
    return "/" + joined.lstrip("/")  # normpath keeps a leading "//"; the agent's root is "/"


PROC_SELF = re.compile(r"/proc/(self|thread-self)")
PROC_MAGIC = re.compile(r"/proc/\d+(/task/\d+)?/(fd/\d+|exe)")  # links to files, not to paths


def _proc_self(pid: int, which: str) -> str:
    """What /proc/self (or thread-self) names for task ``pid`` in its own pid namespace."""
    fields = status_fields(pid)
    tgid, tid = fields["NStgid"].split()[-1], fields["NSpid"].split()[-1]
    return tgid if which == "self" else f"{tgid}/task/{tid}"


def resolve_in_root(pid: int, path: str) -> str:
    """Resolve every symlink of absolute ``path`` inside the agent's root. /proc/self means the
    agent; a /proc/N/fd/K or /proc/N/exe magic link is the file itself (returned as is: open it
    through the agent's root to reach that file)."""
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
        in_proc = candidate.startswith("/proc/")  # the regular expressions only match there
        if in_proc and PROC_SELF.fullmatch(candidate):
            pending.extend(reversed(_proc_self(pid, part).split("/")))
            continue
        info = os.lstat(host_root + candidate)
        if in_proc and PROC_MAGIC.fullmatch(candidate) and stat.S_ISLNK(info.st_mode):
            if pending:
                raise OSError(errno.ENOTDIR, f"{candidate}: not a directory")
            return candidate
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


def exec_arguments(decoded: dict, identity=None, seen: dict | None = None) -> dict:
    """{path, requested, argv, cmd, program, cwd} for a decoded exec, plus with an
    ``identity`` (sandbox.exec_identity.ExecIdentity) the program named by content, ``sha256``
    when content was compared, ``anonymous`` for a file with no name (memfd, deleted) and
    ``runs``: the interpreters and loaded programs the exec also runs. OSError(errno) if the
    executable cannot be resolved (the exec could not succeed either).

    ``seen`` (a dict) receives what the arguments were derived from, for exec_verify.VerifiedExec:
    ``root`` (the agent's root as the supervisor sees it) and, with an identity, ``examined``
    (sandbox.exec_identity.Examined of the file)."""
    root = os.readlink(_host_root(decoded["pid"]))
    cwd, resolved, requested = resolve_executable(decoded, root)
    argv = [os.fsdecode(arg) for arg in decoded["argv"]]
    args = {
        "path": resolved,
        "requested": requested,
        "argv": argv,
        "program": posixpath.basename(resolved),
        "cwd": cwd,
    }
    if identity is not None:
        pid = decoded["pid"]
        host_path = _executable_host_path(decoded, resolved)
        examined = identity.examine(host_path, resolved, args["program"])
        args["program"] = examined.program
        if examined.sha256:
            args["sha256"] = examined.sha256
        if examined.info.st_nlink == 0:
            args["anonymous"] = True
        resolve = lambda path, base: resolve_in_root(pid, posixpath.join(base, path))  # noqa: E731
        args["runs"] = identity.also_runs(args, host_path, _host_root(pid), resolve, examined.head)
        if seen is not None:
            seen["examined"] = examined
    if seen is not None:
        seen["root"] = root
    args["cmd"] = command_line(args["program"], argv, (resolved, requested))
    return args


def command_line(program: str, argv: list[str], paths: tuple = ()) -> str:
    """``cmd``: argv as one shell-quoted string, its first word the program that runs. argv[0]
    is whatever the caller chose (`exec -a innocent rm -rf /`, `exec -a "x y/rm" rm`): it stays
    only when it is the program's name or one of ``paths`` (the executable as resolved and as
    requested), else the program's name replaces it."""
    first = argv[0] if argv and argv[0] in (program, *paths) else program
    return shlex.join([first, *argv[1:]])


def _executable_host_path(decoded: dict, resolved: str) -> str:
    """Where the supervisor opens the file an exec runs: the fd itself for AT_EMPTY_PATH."""
    pid = decoded["pid"]
    if os.fsdecode(decoded["path"]) == "" and decoded.get("at_flags", 0) & AT_EMPTY_PATH:
        return f"/proc/{pid}/fd/{decoded.get('dirfd', AT_FDCWD)}"
    return _host_root(pid) + resolved


def resolve_executable(decoded: dict, root: str | None = None) -> tuple[str, str, str]:
    """(cwd, resolved path, requested path) of a decoded exec, in the agent's view (``root``:
    the agent's root as the supervisor sees it, when already read)."""
    pid = decoded["pid"]
    if root is None:
        root = os.readlink(_host_root(pid))
    cwd = base_directory(pid, AT_FDCWD, root)
    dirfd = decoded.get("dirfd", AT_FDCWD)
    raw_path = os.fsdecode(decoded["path"])
    if raw_path == "" and decoded.get("at_flags", 0) & AT_EMPTY_PATH:
        requested = resolved = base_directory(pid, dirfd, root)  # the fd itself, e.g. a memfd
    elif raw_path == "":
        raise OSError(errno.ENOENT, "empty executable path")
    else:
        base = cwd if dirfd == AT_FDCWD else base_directory(pid, dirfd, root)
        requested = lexical_absolute(base, raw_path)
        # Resolve the unnormalised path: "link/.." must climb from the link's target.
        resolved = resolve_in_root(pid, posixpath.join(base, raw_path))
    return cwd, resolved, requested
