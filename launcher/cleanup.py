"""Clean-up that does not depend on the launcher surviving.

Each run keeps a record, ``<runtime dir>/runs/<session>.run``: one line per thing the run may
create on the host (``cgroup PATH``, ``cgroups GLOB``, ``tree PATH``, ``file PATH``, ``files GLOB``),
written *before* the thing is created, and an exclusive flock held for the whole run.

- A reaper process, forked at the start, waits on a pipe whose only writer is the launcher. The
  pipe reads EOF when the launcher exits for any reason, SIGKILL included; the reaper then
  removes everything the record names and the record itself. A normal run ends the same way.
- The flock is shared by the launcher and its reaper. If both were killed, the next run (or
  ``sweep()``) finds the record unlocked, so its owners are gone, and cleans it up.

Namespaces and mounts need none of this: they die with the last process in them, and every
sandbox process dies with init (PDEATHSIG, then the pid namespace).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import select
import shutil
import signal
import tempfile

from sandbox import cgroups, limits

SUFFIX = ".run"
KINDS = ("cgroup", "cgroups", "tree", "file", "files")
REAPER_WAIT = 5.0  # seconds the launcher waits for its reaper at the end of a run


class CleanupError(Exception):
    """The run record cannot be created; the message has the fix."""


class RunRecord:
    """The record of one run, locked by us (and our reaper) until the run's things are gone."""

    def __init__(self, directory: str, session_id: str):
        self.path = os.path.join(directory, session_id + SUFFIX)
        self.reaper_pid = 0
        self._pipe_w: int | None = None
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            except OSError as err:
                raise CleanupError(f"no run record: cannot create {self.path}: {err.strerror} (set "
                                   "FARAMESH_SANDBOX_RUNTIME_DIR to a writable directory)") from None
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink:  # a sweep may have removed it between open and flock
                break
            os.close(fd)
        self.fd = fd

    def add(self, kind: str, path: str) -> None:
        """Register ``path`` before creating it, so a crash right after creation still finds it."""
        if kind not in KINDS or "\n" in path:
            raise ValueError(f"bad record entry {kind} {path!r}")
        os.write(self.fd, f"{kind} {path}\n".encode())

    def start_reaper(self) -> None:
        """Fork the reaper; call before any thread exists (a fork copies only the calling thread)."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            _reaper(read_end, self.fd, self.path)  # never returns
        os.close(read_end)
        self.reaper_pid, self._pipe_w = pid, write_end

    def finish(self) -> None:
        """End of the run: the reaper cleans up; if it is gone, we do it ourselves."""
        reaped = False
        if self._pipe_w is not None:
            os.close(self._pipe_w)
            self._pipe_w = None
            reaped = wait_exit(self.reaper_pid, REAPER_WAIT) == 0
        if not reaped:
            clean(self.path)
        os.close(self.fd)


class NoRecord:
    """Stands in when no record can be kept: the run's own clean-up still runs, a crash's does not."""

    def add(self, kind: str, path: str) -> None:
        pass

    def finish(self) -> None:
        pass


def record_run(session_id: str, runtime_dir: str) -> RunRecord:
    """Sweep dead runs' records, then record this run's host paths and start its reaper."""
    directory = os.path.join(runtime_dir, "runs")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as err:
        raise CleanupError(f"no run record: cannot create {directory}: {err.strerror} (set "
                           "FARAMESH_SANDBOX_RUNTIME_DIR to a writable directory)") from None
    sweep(directory)
    record = RunRecord(directory, session_id)
    for path in limits.cgroup_dirs(session_id):
        record.add("cgroup", path)
    parent = os.path.dirname(limits.cgroup_dirs(session_id)[0]) if cgroups.v2_mount() else None
    if parent is not None:  # the supervisor's freezer self-test (sandbox/freeze.py)
        record.add("cgroups", os.path.join(parent, f"freeze-selftest-{os.getpid()}-*"))
    record.add("file", os.path.join(runtime_dir, session_id + ".sock"))  # the control socket
    record.add("files", os.path.join(tempfile.gettempdir(), f"faramesh-sandbox-file-{session_id}-*"))
    record.start_reaper()
    return record


def _reaper(read_end: int, record_fd: int, path: str) -> None:
    status = 1
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # a reader of the launcher's output sees EOF when the launcher ends
            os.dup2(null, fd)
        keep = sorted((read_end, record_fd))
        os.closerange(3, keep[0])  # nothing of the launcher's: a copied socket would keep its peer alive
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, os.sysconf("SC_OPEN_MAX"))
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGTSTP, signal.SIGTTIN,
                       signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)  # the terminal's ^C is for the launcher, not us
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        while True:
            try:
                if not os.read(read_end, 1):
                    break  # EOF: the launcher is finished or dead
            except InterruptedError:
                continue
        clean(path)
        status = 0
    finally:
        os._exit(status)


def clean(path: str) -> None:
    """Remove everything the record at ``path`` names, then the record. Safe to repeat."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = [line.rstrip("\n").split(" ", 1) for line in f if " " in line]
    except FileNotFoundError:
        return
    gone = True
    # cgroups first: killing their tasks closes whatever those tasks held open in the files
    for kind, target in sorted(entries, key=lambda e: not e[0].startswith("cgroup")):
        for found in (glob.glob(glob.escape(os.path.dirname(target)) + "/" + os.path.basename(target))
                      if kind.endswith("s") else [target]):
            gone = _REMOVERS.get(kind.rstrip("s"), _ignore)(found) and gone
    if gone:  # else the record stays for the next sweep to retry
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def sweep(directory: str) -> list[str]:
    """Clean up the records of dead runs (unlocked records); returns their paths."""
    cleaned = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return cleaned
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            os.close(fd)
            continue  # a live run holds it
        try:
            clean(path)
            cleaned.append(path)
        finally:
            os.close(fd)
    return cleaned


def _remove_cgroup(path: str) -> bool:
    try:
        cgroups.destroy(path)
    except OSError:
        return False  # still busy after the kill: left for the next sweep
    return True


def _remove_tree(path: str) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


def _remove_file(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _ignore(path: str) -> bool:
    return True


_REMOVERS = {"cgroup": _remove_cgroup, "tree": _remove_tree, "file": _remove_file}


def wait_exit(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None (it is then killed) when it takes longer than ``timeout``."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(int(timeout * 1000)):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
    finally:
        os.close(pidfd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
