"""Our duplicates of agent fds, through one pidfd kept per agent task instead of one per call.

A pidfd names a task (its struct pid), not a number: once that task has exited, pidfd_getfd
through it fails (ESRCH) even after the number has gone to another task, and while the task
lives no other task can have its number. So a live pidfd kept under a number always names
the task that now has that number, and a stale one can only fail: it is then replaced by a
fresh pidfd for the number, which the caller checks with SECCOMP_IOCTL_NOTIF_ID_VALID
exactly as it would a pidfd opened for the call.

Kept pidfds are closed only under the lock every pidfd_getfd runs under, so no caller can
use a number that has just been closed (and perhaps reused for another task's pidfd).
"""

from __future__ import annotations

import errno
import os
import select
import threading
import weakref

from sandbox import _libc_net


def _close_all(pidfds: dict[int, int]) -> None:
    while pidfds:
        os.close(pidfds.popitem()[1])


class TaskFiles:
    """pidfd_getfd through a kept pidfd per task id; at most LIMIT kept at once."""

    LIMIT = 64

    def __init__(self):
        self._pidfds: dict[int, int] = {}  # task id -> pidfd
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._pidfds)

    def duplicate(self, tid: int, number: int) -> int:
        """Our close-on-exec duplicate of fd ``number`` of task ``tid`` (OSError as pidfd_getfd)."""
        with self._lock:
            pidfd = self._pidfds.get(tid)
            if pidfd is not None:
                try:
                    return _libc_net.pidfd_getfd(pidfd, number)
                except OSError as err:
                    if err.errno != errno.ESRCH:
                        raise
                    del self._pidfds[tid]  # that task has exited: the number may name another now
                    os.close(pidfd)
            pidfd = self._keep(tid)
            return _libc_net.pidfd_getfd(pidfd, number)

    def _keep(self, tid: int) -> int:
        """A fresh pidfd for ``tid``, kept (caller holds the lock)."""
        pidfd = _libc_net.pidfd_open_task(tid)
        if len(self._pidfds) >= self.LIMIT:
            self._forget_exited()
        self._pidfds[tid] = pidfd
        return pidfd

    def _forget_exited(self) -> None:
        """Close the pidfds of tasks that have exited (a pidfd polls readable then); all of
        them when every kept task still runs."""
        poller = select.poll()
        for pidfd in self._pidfds.values():
            poller.register(pidfd, select.POLLIN)
        exited = {fd for fd, _events in poller.poll(0)}
        for tid, pidfd in list(self._pidfds.items()):
            if pidfd in exited or not exited:
                del self._pidfds[tid]
                os.close(pidfd)

    def __len__(self) -> int:
        return len(self._pidfds)
