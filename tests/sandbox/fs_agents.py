"""Real target processes for fsops tests: a waiting child with chosen cwd, fds, umask, ids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

from sandbox.fsops import FsResult, prepare

AT_FDCWD = -100
_WAITER = (
    "import os, sys, time\n"
    "fds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]\n"
    "print(' '.join(map(str, fds)), flush=True)\n"
    "time.sleep(120)\n"
)


@dataclass
class Agent:
    """A waiting process whose view fsops resolves in; ``fds`` are the paths it opened, in order."""

    pid: int
    fds: list[int] = field(default_factory=list)

    def call(self, syscall: str, **decoded) -> tuple[str, dict, FsResult]:
        """prepare + perform + close; returns (tool, args, result), an fd result being ours to close."""
        op = prepare(self.pid, {"syscall": syscall, "pid": self.pid, **decoded})
        try:
            result = op.perform()
        finally:
            op.close()
        return op.tool, op.args, result

    def open(self, path: bytes, flags: int = os.O_RDONLY, mode: int = 0, dirfd: int = AT_FDCWD) -> tuple[dict, int]:
        """openat in the agent's view; returns (args, our copy of the opened fd)."""
        _, args, result = self.call("openat", dirfd=dirfd, path=path, flags=flags, mode=mode)
        assert result.kind == "fd"
        return args, result.value

    def read(self, path: bytes, **kw) -> bytes:
        _, fd = self.open(path, **kw)
        try:
            return os.read(fd, 4096)
        finally:
            os.close(fd)


@contextmanager
def waiting_agent(cwd, open_paths=(), umask=0o022, user=None, extra_groups=None, stdin=None):
    """A python child sleeping in ``cwd`` with ``open_paths`` opened read-only."""
    # Without fds to open, plain sleep(1) does: it runs for any user (our python may not).
    argv = [sys.executable, "-c", _WAITER, *map(str, open_paths)] if open_paths else ["sleep", "120"]
    proc = subprocess.Popen(
        argv, cwd=cwd, stdin=stdin, stdout=subprocess.PIPE,
        umask=umask, user=user, group=user, extra_groups=extra_groups,
    )
    try:
        fds = [int(x) for x in proc.stdout.readline().split()] if open_paths else []
        yield Agent(proc.pid, fds)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@contextmanager
def chrooted_agent(root, cwd: str | None = "/", start_in=None):
    """A forked child chroot'ed into ``root``; with ``cwd`` None its cwd stays at ``start_in``."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            if start_in is not None:
                os.chdir(start_in)
            os.chroot(root)
            if cwd is not None:
                os.chdir(cwd)
            os.write(ready_w, b"y")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"y"
        yield Agent(pid)
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def pid_namespace_agent(root=None):
    """pid 1 of a new pid namespace; with ``root``: also a new mount namespace, a fresh
    procfs at root/proc and chroot'ed into ``root`` (the shape the launcher builds)."""
    from sandbox._libc_ns import CLONE_NEWNS, CLONE_NEWPID, MS_PRIVATE, MS_REC, mount, unshare

    ready_r, ready_w = os.pipe()
    inner_r, inner_w = os.pipe()
    middle = os.fork()
    if middle == 0:  # child: never returns into pytest
        try:
            unshare(CLONE_NEWPID | (CLONE_NEWNS if root is not None else 0))
            inner = os.fork()
            if inner == 0:
                if root is not None:
                    mount(None, "/", None, MS_REC | MS_PRIVATE)
                    mount("proc", f"{root}/proc", "proc", 0)
                    os.chroot(root)
                    os.chdir("/")
                os.write(inner_w, b"y")
                signal.pause()
            else:
                # Only this process knows the inner one's pid in our namespace.
                os.close(inner_w)
                if os.read(inner_r, 1) == b"y":
                    os.write(ready_w, b"%d\n" % inner)
                os.waitpid(inner, 0)
        finally:
            os._exit(0)
    os.close(inner_w)
    os.close(inner_r)
    os.close(ready_w)
    inner_pid = None
    try:
        inner_pid = int(os.read(ready_r, 64))
        yield Agent(inner_pid)
    finally:
        os.close(ready_r)
        # The middle process waits for the inner one and then exits by itself.
        os.kill(inner_pid if inner_pid is not None else middle, signal.SIGKILL)
        os.waitpid(middle, 0)
