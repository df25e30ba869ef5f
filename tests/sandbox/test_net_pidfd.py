"""Taking the agent's sockets: one kept pidfd per task (always the task that has the number now),
the socket's kind, and our duplicates dropped before the answer."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

from sandbox import _libc_net, netops
from sandbox._netpidfd import TaskFiles
from tests.sandbox.conftest import run_sandboxed
from tests.sandbox.test_net_connect import NET_TRAPPED, Greeter, decider

HOLD_FD = 9  # the fd number each holder process keeps its file on
# Opens argv[1] on fd 9, says so, then waits for stdin to close.
HOLDER = ("import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.dup2(fd, 9); "
          "print('ready', flush=True); sys.stdin.read()")
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def hold(path: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"ready\n"
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    holder.wait(10)


def hold_as_pid(path: str, pid: int) -> subprocess.Popen | None:
    """A holder that got exactly ``pid`` (the next pid set through ns_last_pid), or None when
    another task on the machine took that pid first."""
    with open(NS_LAST_PID, "w") as f:
        f.write(str(pid - 1))
    holder = hold(path)
    if holder.pid == pid:
        return holder
    release(holder)
    return None


def inode(fd: int) -> int:
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def test_duplicate_reaches_the_tasks_file(tmp_path):
    """A duplicate through the kept pidfd is the file the task holds, and one pidfd is kept."""
    (tmp_path / "a").write_text("a")
    holder = hold(str(tmp_path / "a"))
    files = TaskFiles()
    try:
        first, second = inode(files.duplicate(holder.pid, HOLD_FD)), inode(files.duplicate(holder.pid, HOLD_FD))
    finally:
        release(holder)
    assert (first, second) == (os.stat(tmp_path / "a").st_ino,) * 2
    assert len(files) == 1


def test_a_reused_pid_never_reaches_the_exited_task(tmp_path):
    """After a task exits and its pid goes to another, duplicates come from the new task (the kept pidfd fails)."""
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.fail("needs root: the test places a task on a given pid through ns_last_pid")
    (tmp_path / "old").write_text("old")
    (tmp_path / "new").write_text("new")
    files = TaskFiles()
    for _attempt in range(20):
        old = hold(str(tmp_path / "old"))
        pid = old.pid
        assert inode(files.duplicate(pid, HOLD_FD)) == os.stat(tmp_path / "old").st_ino
        kept = _libc_net.pidfd_open_task(pid)
        release(old)
        new = hold_as_pid(str(tmp_path / "new"), pid)
        if new is None:
            os.close(kept)
            continue
        try:
            with pytest.raises(OSError) as stale:
                _libc_net.pidfd_getfd(kept, HOLD_FD)
            assert stale.value.errno == errno.ESRCH
            assert inode(files.duplicate(pid, HOLD_FD)) == os.stat(tmp_path / "new").st_ino
        finally:
            os.close(kept)
            release(new)
        return
    pytest.fail("another task took the freed pid 20 times in a row")


def test_exited_tasks_are_forgotten_when_full(tmp_path):
    """At the limit, the pidfds of exited tasks are closed and those of running tasks kept."""
    (tmp_path / "f").write_text("f")
    files = TaskFiles()
    files.LIMIT = 3
    running = [hold(str(tmp_path / "f")) for _ in range(2)]
    exited = hold(str(tmp_path / "f"))
    try:
        for holder in (*running, exited):
            os.close(files.duplicate(holder.pid, HOLD_FD))
        release(exited)
        newest = hold(str(tmp_path / "f"))
        running.append(newest)
        os.close(files.duplicate(newest.pid, HOLD_FD))
        assert sorted(files._pidfds) == sorted(holder.pid for holder in running)
    finally:
        for holder in running:
            release(holder)


def test_a_gone_task_fails_with_esrch():
    """A pid with no task fails the duplicate with ESRCH and keeps nothing."""
    holder = subprocess.Popen([sys.executable, "-c", "pass"])
    holder.wait(10)
    files = TaskFiles()
    with pytest.raises(OSError) as gone:
        files.duplicate(holder.pid, 0)
    assert (gone.value.errno, len(files)) == (errno.ESRCH, 0)


def test_socket_kind_reads_the_socket_not_the_caller():
    """socket_kind names family, type and protocol as the kernel has them; a non-socket is ENOTSOCK."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as udp:
        assert netops.socket_kind(udp.fileno()) == (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError) as not_socket:
            netops.socket_kind(read_end)
        assert not_socket.value.errno == errno.ENOTSOCK
        assert os.fstat(read_end).st_size == 0  # still open: the probe never closes what it reads
    finally:
        os.close(read_end)
        os.close(write_end)


def test_performing_drops_the_duplicates_before_the_answer():
    """NetOp.perform closes its fds once the call is done, so the agent's close stays the last one."""
    ours = os.dup(0)
    op = netops.NetOp("net/connect", {}, lambda: netops.NetResult("value", 7), [ours])
    assert op.perform() == netops.NetResult("value", 7)
    with pytest.raises(OSError) as closed:
        os.fstat(ours)
    assert closed.value.errno == errno.EBADF



# Connects from the main thread, a thread and three children; then execs itself once and does it again.
TASKS_CONNECT = """
import os, socket, sys, threading
port = int(sys.argv[1])
def fetch():
    with socket.create_connection(("127.0.0.1", port)) as s:
        return s.recv(5).decode()
got = [fetch()]
worker = threading.Thread(target=lambda: got.append(fetch()))
worker.start(); worker.join()
for _ in range(3):
    child = os.fork()
    if child == 0:
        os._exit(0 if fetch() == "hello" else 1)
    got.append("child" if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0 else "failed")
print(" ".join(got), flush=True)
if len(sys.argv) == 2:
    os.execv(sys.executable, [sys.executable, sys.argv[0], str(port), "again"])
"""


def test_connects_from_threads_children_and_after_exec(tmp_path):
    """Every task of the agent, and the agent after an exec (same pid), has its socket taken and connected."""
    script = tmp_path / "tasks.py"
    script.write_text(TASKS_CONNECT)
    server = Greeter()
    try:
        run = run_sandboxed([sys.executable, str(script), str(server.port)],
                            decider(f"permit net/connect host: 127.0.0.1 port: {server.port}"),
                            trapped=NET_TRAPPED, timeout=60)
        assert run.stdout == b"hello hello child child child\nhello hello child child child\n", run.explain()
        assert server.accepted == 10
    finally:
        server.close()
