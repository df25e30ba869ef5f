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
        """prepare + perform + close; an fd result is read (or closed) and returned as bytes."""
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
def waiting_agent(cwd, open_paths=(), umask=0o022, user=None, extra_groups=None):
    """A python child sleeping in ``cwd`` with ``open_paths`` opened read-only."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WAITER, *map(str, open_paths)], cwd=cwd, stdout=subprocess.PIPE,
        umask=umask, user=user, group=user, extra_groups=extra_groups,
    )
    try:
        fds = [int(x) for x in proc.stdout.readline().split()]
        yield Agent(proc.pid, fds)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@contextmanager
def chrooted_agent(root, cwd: str | None = "/"):
    """A forked child chroot'ed into ``root`` (cwd left outside the root when ``cwd`` is None)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
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
