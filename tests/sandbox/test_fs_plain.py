"""The plain-path shortcut of opens agrees with the general walk, and per-task state stays fresh."""

from __future__ import annotations

import errno
import os
import signal
import threading
from contextlib import contextmanager

import pytest

from sandbox._fscreds import keep_status_files, read_identity
from sandbox._fslocate import locate, locate_plain, plain_path
from sandbox._resolve import AgentView
from sandbox.fsops import prepare
from tests.sandbox.fs_agents import AT_FDCWD, Agent, chrooted_agent, waiting_agent


@pytest.mark.parametrize(("path", "expected"), [
    (b"/etc/hostname", b"/etc/hostname"),
    (b"/etc//./hostname", b"/etc/hostname"),
    (b"//etc/hostname", b"/etc/hostname"),
    (b"/dev/null", b"/dev/null"),
    (b"etc/hostname", None),  # relative: needs the agent's cwd
    (b"/etc/../etc/hostname", None),
    (b"/etc/hostname/", None),  # a trailing slash has directory rules of its own
    (b"/etc/.", None),
    (b"/proc/self/status", None),  # rewritten to the agent's pid
    (b"/dev/fd/3", None),
    (b"/dev/stdin", None),
])
def test_plain_path_spellings(path, expected):
    """Only absolute paths without '..', trailing slashes or rewritten names take the shortcut."""
    assert plain_path(path) == expected


@pytest.fixture
def tree(tmp_path):
    """tmp/{real/file, real/hidden/secret (mode 0700 dir), link -> real, final -> real/file}."""
    (tmp_path / "real" / "hidden").mkdir(parents=True)
    (tmp_path / "real" / "file").write_bytes(b"content\n")
    (tmp_path / "real" / "hidden" / "secret").write_bytes(b"s\n")
    (tmp_path / "real" / "hidden").chmod(0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "final").symlink_to(tmp_path / "real" / "file")
    tmp_path.chmod(0o755)
    return tmp_path


def _both(agent: Agent, path: bytes, follow: bool = True):
    """(shortcut, general walk) for ``path``: each an agent-visible path, None or an errno."""
    view = AgentView.open(read_identity(agent.pid))
    try:
        outcome = []
        for walk in (lambda: locate_plain(view, path, follow=follow, writes=False),
                     lambda: locate(view, AT_FDCWD, path, follow=follow, writes=False)):
            try:
                found = walk()
                outcome.append(None if found is None else os.fsdecode(found.path))
            except OSError as exc:
                outcome.append(errno.errorcode[exc.errno])
        return tuple(outcome)
    finally:
        view.close()


def test_shortcut_and_general_walk_agree(tree):
    """Same object or same errno; a symlink on the way leaves the decision to the general walk."""
    t = str(tree)
    with waiting_agent(tree) as agent:
        seen = {name: _both(agent, f"{t}/{name}".encode()) for name in
                ("real/file", "real//file", "real/missing", "real/file/x", "link/file", "final")}
        seen["final, O_NOFOLLOW"] = _both(agent, f"{t}/final".encode(), follow=False)
    assert seen == {
        "real/file": (f"{t}/real/file", f"{t}/real/file"),
        "real//file": (f"{t}/real/file", f"{t}/real/file"),
        "real/missing": ("ENOENT", "ENOENT"),
        "real/file/x": ("ENOTDIR", "ENOTDIR"),
        "link/file": (None, f"{t}/real/file"),
        "final": (None, f"{t}/real/file"),
        "final, O_NOFOLLOW": (f"{t}/final", f"{t}/final"),
    }


def test_shortcut_walks_with_the_agents_credentials(tree):
    """An agent running as nobody gets EACCES below a 0700 directory on the shortcut too."""
    with waiting_agent(tree, user=65534) as agent:
        assert _both(agent, f"{tree}/real/hidden/secret".encode()) == ("EACCES", "EACCES")


def test_symlinked_open_is_decided_on_the_real_file(tree):
    """An open through a symlinked directory names the file it reaches, as before the shortcut."""
    with waiting_agent(tree) as agent:
        args, fd = agent.open(f"{tree}/link/file".encode())
        content = os.read(fd, 100)
        os.close(fd)
    assert (args["path"], content) == (f"{tree}/real/file", b"content\n")


def test_shortcut_in_a_chroot_names_the_path_inside_it(tree):
    """In a chroot, /real//file is the chroot's file, named /real/file."""
    with chrooted_agent(tree) as agent:
        args, fd = agent.open(b"/real//file")
        content = os.read(fd, 100)
        os.close(fd)
    assert (args["path"], content) == ("/real/file", b"content\n")


@contextmanager
def chrooting_agent():
    """A forked child that chroots into each directory written to its pipe, then acks."""
    orders_r, orders_w = os.pipe()
    acks_r, acks_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            while True:
                where = os.read(orders_r, 4096)
                if not where:
                    break
                os.chroot(where)
                os.chdir("/")
                os.write(acks_w, b"y")
        finally:
            os._exit(0)
    os.close(orders_r)
    os.close(acks_w)

    def chroot(path) -> None:
        os.write(orders_w, os.fsencode(path))
        assert os.read(acks_r, 1) == b"y"
    try:
        yield Agent(pid), chroot
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(orders_w)
        os.close(acks_r)


def test_kept_task_files_see_a_new_root(tree):
    """A worker thread that keeps task files resolves each call in the agent's root of that moment."""
    (tree / "real" / "etc").mkdir()
    (tree / "real" / "etc" / "hostname").write_bytes(b"inner\n")
    outcome = {}

    def worker(agent: Agent, chroot) -> None:
        keep_status_files()
        seen = []
        for step in ("before", "after"):
            if step == "after":
                chroot(tree / "real")
            op = prepare(agent.pid, {"syscall": "openat", "pid": agent.pid, "dirfd": AT_FDCWD,
                                     "path": b"/etc/hostname", "flags": 0, "mode": 0})
            try:
                fd = op.perform().value
                seen.append(os.fstat(fd).st_ino)
                os.close(fd)
            finally:
                op.close()
        outcome["inodes"] = seen

    with chrooting_agent() as (agent, chroot):
        thread = threading.Thread(target=worker, args=(agent, chroot))
        thread.start()
        thread.join()
    assert outcome["inodes"] == [os.stat("/etc/hostname").st_ino, os.stat(tree / "real" / "etc" / "hostname").st_ino]
