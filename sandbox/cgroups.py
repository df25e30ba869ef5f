"""A fresh cgroup v2 directory holding every agent task: the supervisor freezes it for exec
decisions, and the launcher kills whatever is left in it when the run ends."""

from __future__ import annotations

import errno
import os
import signal
import time

MOUNTINFO = "/proc/self/mountinfo"
PROC_CGROUP = "/proc/self/cgroup"


def v2_mount(mountinfo: str | None = None) -> str | None:
    """The cgroup2 mount point: /sys/fs/cgroup on pure v2 hosts, /sys/fs/cgroup/unified on hybrid ones."""
    text = mountinfo if mountinfo is not None else read_file(MOUNTINFO)
    for line in text.splitlines():
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            return _unescape(before.split()[4])
    return None


def v1_mounts(mountinfo: str | None = None) -> dict[str, str]:
    """cgroup v1 controller -> mount point (a mount binding several controllers lists each)."""
    text = mountinfo if mountinfo is not None else read_file(MOUNTINFO)
    found: dict[str, str] = {}
    for line in text.splitlines():
        before, _, after = line.partition(" - ")
        fields = after.split()
        if fields and fields[0] == "cgroup":
            for option in fields[2].split(","):
                if option not in ("rw", "ro") and not option.startswith("release_agent"):
                    found[option] = _unescape(before.split()[4])
    return found


def own_v2_path(proc_cgroup: str | None = None) -> str:
    """This process's place in the v2 hierarchy (the ``0::`` line of /proc/self/cgroup)."""
    text = proc_cgroup if proc_cgroup is not None else read_file(PROC_CGROUP)
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return "/"


def create(session_id: str, replace_empty: bool = False) -> str:
    """mkdir a child of our own v2 cgroup (delegation-friendly); raises OSError naming the call.
    ``replace_empty``: an existing directory of that name with no task and no child is removed
    first (one a killed process left under a name that is ours now, such as a reused pid)."""
    mount = v2_mount()
    if mount is None:
        raise OSError(2, "no cgroup2 hierarchy in /proc/self/mountinfo")
    parent = os.path.join(mount, own_v2_path().lstrip("/"))
    path = os.path.join(parent, f"faramesh-{session_id}")
    try:
        # Safe: a child cgroup with no controllers enabled limits nothing; it only groups the agent.
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not replace_empty:
            raise OSError(errno.EEXIST, f"mkdir({path}): {os.strerror(errno.EEXIST)}") from None
        try:
            os.rmdir(path)  # the kernel refuses a cgroup that still has a task or a child
            os.mkdir(path, 0o755)
        except OSError as err:
            raise OSError(err.errno, f"mkdir({path}): {os.strerror(err.errno)}") from None
    except OSError as err:
        raise OSError(err.errno, f"mkdir({path}): {os.strerror(err.errno)}") from None
    return path


def join(cgroup_dir: str, pid: int) -> None:
    """Move ``pid`` (with all its threads) into the cgroup; children it forks later stay in it."""
    target = os.path.join(cgroup_dir, "cgroup.procs")
    try:
        write_file(target, str(pid))
    except OSError as err:
        raise OSError(err.errno, f"write({target}, {pid}): {os.strerror(err.errno)}") from None


def destroy(cgroup_dir: str, timeout: float = 2.0) -> None:
    """Kill every task still in the cgroup, wait for it to empty, then remove it."""
    if not os.path.isdir(cgroup_dir):
        return
    kill_file = os.path.join(cgroup_dir, "cgroup.kill")
    try:  # only the agent's tasks were ever placed in this directory
        write_file(kill_file, "1")  # 5.14+: one atomic kill of the whole subtree, frozen tasks included
    except OSError:
        for pid in _pids(cgroup_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(cgroup_dir)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def _pids(cgroup_dir: str) -> list[int]:
    try:
        return [int(x) for x in read_file(os.path.join(cgroup_dir, "cgroup.procs")).split()]
    except OSError:
        return []


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def read_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
