"""The per-call shortcuts of the fs path: kept status files, skipped umask, cached flag names."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

from sandbox import _fsflags as ff
from sandbox import _fscreds
from sandbox._resolve import host_name, own_fd_dir
from sandbox.fsops import keep_task_files
from tests.sandbox.fs_agents import fd_count, waiting_agent
from tests.sandbox.conftest import in_thread

# A child that applies "umask <octal>" or "fsuid <n>" lines from stdin to itself, then acks.
_CHANGER = (
    "import os, sys\n"
    "for line in sys.stdin:\n"
    "    what, value = line.split()\n"
    "    if what == 'umask':\n"
    "        os.umask(int(value, 8))\n"
    "    else:\n"
    "        os.setresuid(int(value), int(value), 0)\n"
    "    print('ok', flush=True)\n"
)


def in_kept_thread(body):
    """Run ``body`` in a fresh thread that keeps task files, as a supervisor worker does."""
    return in_thread(lambda: (keep_task_files(), body())[1])


def test_kept_status_file_sees_umask_and_fsuid_changes():
    """Each call re-reads the kept file: a new umask and a new fsuid show on the next call."""
    child = subprocess.Popen([sys.executable, "-c", _CHANGER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             umask=0o022)

    def tell(line: bytes) -> None:
        child.stdin.write(line + b"\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"ok\n"

    def body():
        first = _fscreds.read_identity(child.pid)
        tell(b"umask 077")
        second = _fscreds.read_identity(child.pid)
        tell(b"fsuid 65534")
        third = _fscreds.read_identity(child.pid)
        return (first.umask, first.fsuid), (second.umask, second.fsuid), (third.umask, third.fsuid)

    try:
        assert in_kept_thread(body) == ((0o022, 0), (0o077, 0), (0o077, 65534))
    finally:
        child.kill()
        child.wait()


def test_kept_status_file_of_a_reaped_task_is_never_read_again():
    """After the task is reaped its number gives ESRCH, not the old (or another task's) status."""
    child = subprocess.Popen(["sleep", "60"])

    def body():
        seen = _fscreds.read_identity(child.pid).tid
        child.kill()
        child.wait()
        try:
            _fscreds.read_identity(child.pid)
        except OSError as exc:
            return seen, exc.errno
        return seen, 0

    assert in_kept_thread(body) == (child.pid, errno.ESRCH)


def test_kept_status_files_close_when_their_thread_ends():
    """A worker thread keeps two fds per task (/proc/<tid> and its status) and closes both when it ends."""
    child = subprocess.Popen(["sleep", "60"])

    def body():
        _fscreds.read_identity(child.pid)
        return fd_count()

    try:
        before = fd_count()
        during = in_kept_thread(body)
        assert (during - before, fd_count() - before) == (2, 0)
    finally:
        child.kill()
        child.wait()


def test_create_honours_umask_and_plain_open_leaves_ours(tmp_path):
    """O_CREAT uses the agent's umask 027 (0640 file) and a plain open leaves our umask at 022."""
    (tmp_path / "existing").write_bytes(b"x")
    ours = os.umask(0o022)
    try:
        with waiting_agent(tmp_path, umask=0o027) as agent:
            _, created = agent.open(b"new", os.O_WRONLY | os.O_CREAT, 0o666)
            os.close(created)
            _, opened = agent.open(b"existing")
            os.close(opened)
        mode = os.stat(tmp_path / "new").st_mode & 0o777
        now = os.umask(ours)
    finally:
        os.umask(ours)
    assert (mode, now) == (0o640, 0o022)


def test_cached_flag_names_are_fresh_lists():
    """Two calls give equal but separate lists, so a policy changing one cannot change the next."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    first = ff.open_flag_names(flags)
    first.append("O_EXTRA")
    assert ff.open_flag_names(flags) == ["O_WRONLY", "O_CREAT", "O_TRUNC", "O_CLOEXEC"]


def test_forked_child_names_its_own_fds(tmp_path):
    """After fork, host_name() reads the child's fd table, not the parent's held /proc/self/fd."""
    (tmp_path / "child-only").write_bytes(b"c")
    parent_fd = os.open(tmp_path, os.O_RDONLY)
    pid = os.fork()
    if pid == 0:  # child: replace the parent's fd number with another file and name it
        try:
            os.dup2(os.open(tmp_path / "child-only", os.O_RDONLY), parent_fd)
            os._exit(0 if host_name(parent_fd) == os.fsencode(tmp_path / "child-only") else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    os.close(parent_fd)
    assert (os.waitstatus_to_exitcode(status), host_name(own_fd_dir()).startswith(b"/proc/")) == (0, True)
