"""Performing fs calls for an agent: results on disk, flags, credentials, races, fd hygiene."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading

import pytest

from sandbox import _libc_fs as lf
from sandbox._fscreds import groups_to_use
from sandbox.fsops import prepare
from tests.sandbox.fs_agents import AT_FDCWD, fd_count, waiting_agent

NOBODY = 65534


@pytest.fixture
def work(tmp_path):
    (tmp_path / "file").write_bytes(b"0123456789")
    (tmp_path / "dir").mkdir()
    return tmp_path


@pytest.fixture
def agent(work):
    with waiting_agent(work, umask=0o027) as agent:
        yield agent


def _errno_of(agent, syscall, **decoded) -> int:
    with pytest.raises(OSError) as info:
        agent.call(syscall, **decoded)
    return info.value.errno


def test_create_honours_the_agents_umask(agent, work):
    """O_CREAT with mode 0666 under umask 027 creates a 0640 file."""
    args, fd = agent.open(b"new", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    os.close(fd)
    assert args == {"path": f"{work}/new", "flags": ["O_WRONLY", "O_CREAT", "O_CLOEXEC"], "mode": 0o666}
    assert stat.S_IMODE(os.stat(work / "new").st_mode) == 0o640


def test_umask_does_not_leak_into_the_supervisor(agent):
    """After performing with the agent's umask 027, this thread's umask is unchanged."""
    before = os.umask(0o022)
    os.umask(before)
    agent.open(b"x", os.O_WRONLY | os.O_CREAT, 0o666)
    after = os.umask(before)
    assert after == before


def test_o_excl_on_existing_file_is_eexist(agent, work):
    """O_CREAT|O_EXCL on an existing name fails with EEXIST and leaves the file intact."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    err = _errno_of(agent, "openat", dirfd=AT_FDCWD, path=b"file", flags=flags, mode=0o600)
    assert (err, (work / "file").read_bytes()) == (errno.EEXIST, b"0123456789")


def test_o_trunc_and_o_append_take_effect(agent, work):
    """O_TRUNC empties the file and O_APPEND writes land at the end."""
    _, fd = agent.open(b"file", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"ab")
    os.close(fd)
    _, fd = agent.open(b"file", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"cd")
    os.close(fd)
    assert (work / "file").read_bytes() == b"abcd"


def test_o_directory_o_nofollow_and_cloexec(agent, work):
    """O_DIRECTORY on a file is ENOTDIR, O_NOFOLLOW on a symlink ELOOP, O_CLOEXEC is reported."""
    os.symlink("file", work / "link")
    assert _errno_of(agent, "openat", dirfd=AT_FDCWD, path=b"file", flags=os.O_DIRECTORY, mode=0) == errno.ENOTDIR
    assert _errno_of(agent, "openat", dirfd=AT_FDCWD, path=b"link", flags=os.O_NOFOLLOW, mode=0) == errno.ELOOP
    _, _, result = agent.call("openat", dirfd=AT_FDCWD, path=b"link", flags=os.O_RDONLY | os.O_CLOEXEC, mode=0)
    os.close(result.value)
    assert (result.kind, result.cloexec) == ("fd", True)


def test_fifo_open_does_not_block_the_supervisor(agent, work):
    """Opening a FIFO for reading returns at once, with the agent's blocking mode restored."""
    os.mkfifo(work / "fifo")
    _, fd = agent.open(b"fifo")
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    os.close(fd)
    assert (flags & os.O_NONBLOCK, flags & os.O_ACCMODE) == (0, os.O_RDONLY)


def test_rename_link_unlink_mkdir_symlink_on_disk(agent, work):
    """Each namespace call does exactly what it says, checked on disk."""
    w = str(work)
    tool, args, _ = agent.call("mkdir", path=b"made", mode=0o777)
    assert (tool, args) == ("fs/mkdir", {"path": f"{w}/made", "flags": [], "mode": 0o777})
    assert stat.S_IMODE(os.stat(work / "made").st_mode) == 0o750
    tool, args, _ = agent.call("renameat2", dirfd=AT_FDCWD, path=b"file", newdirfd=AT_FDCWD, newpath=b"made/moved",
                               at_flags=lf.RENAME_NOREPLACE)
    assert (tool, args) == ("fs/rename", {"path": f"{w}/file", "flags": ["RENAME_NOREPLACE"], "mode": None,
                                          "dest": f"{w}/made/moved"})
    tool, args, _ = agent.call("linkat", dirfd=AT_FDCWD, path=b"made/moved", newdirfd=AT_FDCWD, newpath=b"hard",
                               at_flags=0)
    assert (tool, args) == ("fs/link", {"path": f"{w}/made/moved", "flags": [], "mode": None, "dest": f"{w}/hard"})
    assert os.stat(work / "hard").st_nlink == 2
    tool, args, _ = agent.call("symlinkat", target=b"../etc/passwd", newdirfd=AT_FDCWD, newpath=b"soft")
    assert (tool, args) == ("fs/link", {"path": f"{w}/soft", "flags": [], "mode": None, "target": "../etc/passwd"})
    assert os.readlink(work / "soft") == "../etc/passwd"
    tool, args, _ = agent.call("unlinkat", dirfd=AT_FDCWD, path=b"hard", at_flags=0)
    assert (tool, args) == ("fs/delete", {"path": f"{w}/hard", "flags": [], "mode": None})
    assert not (work / "hard").exists()
    assert agent.call("rmdir", path=b"dir")[1] == {"path": f"{w}/dir", "flags": ["AT_REMOVEDIR"], "mode": None}
    assert not (work / "dir").exists()


def test_attribute_calls_on_disk(agent, work):
    """chmod, chown, utimensat, setxattr, removexattr and truncate each change the file."""
    target = work / "file"
    assert agent.call("fchmodat", dirfd=AT_FDCWD, path=b"file", mode=0o604)[1]["mode"] == 0o604
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o604
    args = agent.call("fchownat", dirfd=AT_FDCWD, path=b"file", uid=123, gid=-1, at_flags=0)[1]
    assert (args["uid"], args["gid"], os.stat(target).st_uid) == (123, -1, 123)
    agent.call("utimensat", dirfd=AT_FDCWD, path=b"file", times=((1000, 5), (2000, 7)), at_flags=0)
    assert (os.stat(target).st_atime_ns, os.stat(target).st_mtime_ns) == (1000 * 10**9 + 5, 2000 * 10**9 + 7)
    args = agent.call("setxattr", path=b"file", xattr_name=b"user.k", xattr_value=b"v", xattr_flags=0)[1]
    assert args["xattr"] == "user.k"
    assert os.getxattr(target, "user.k") == b"v"
    agent.call("removexattr", path=b"file", xattr_name=b"user.k")
    assert os.listxattr(target) == []
    assert agent.call("truncate", path=b"file", length=3)[1]["length"] == 3
    assert target.read_bytes() == b"012"


def test_nofollow_attribute_calls_act_on_the_symlink(agent, work):
    """lchown and fchownat(AT_SYMLINK_NOFOLLOW) change the link, not its target."""
    os.symlink("file", work / "link")
    args = agent.call("lchown", path=b"link", uid=77, gid=88)[1]
    assert args["path"] == f"{work}/link"
    assert (os.lstat(work / "link").st_uid, os.stat(work / "file").st_uid) == (77, 0)


def test_swapped_symlink_after_prepare_does_not_change_the_object(agent, work):
    """A link re-pointed between decision and perform still opens the decided file."""
    (work / "allowed").write_bytes(b"allowed")
    (work / "denied").write_bytes(b"denied")
    os.symlink("allowed", work / "link")
    op = prepare(agent.pid, {"syscall": "openat", "pid": agent.pid, "dirfd": AT_FDCWD, "path": b"link",
                             "flags": os.O_RDONLY, "mode": 0})
    try:
        os.unlink(work / "link")
        os.symlink("denied", work / "link")
        fd = op.perform().value
    finally:
        op.close()
    assert op.args["path"] == f"{work}/allowed"
    assert os.read(fd, 100) == b"allowed"
    os.close(fd)


def test_swapped_parent_after_prepare_does_not_change_what_is_deleted(agent, work):
    """A parent directory replaced by a symlink after the decision: the decided name is removed."""
    (work / "dir" / "victim").write_bytes(b"a")
    (work / "other").mkdir()
    (work / "other" / "victim").write_bytes(b"b")
    op = prepare(agent.pid, {"syscall": "unlink", "pid": agent.pid, "path": b"dir/victim"})
    try:
        os.rename(work / "dir", work / "moved")
        os.symlink("other", work / "dir")
        op.perform()
    finally:
        op.close()
    assert op.args["path"] == f"{work}/dir/victim"
    assert (not (work / "moved" / "victim").exists(), (work / "other" / "victim").exists()) == (True, True)


def test_planted_symlink_at_a_create_slot_is_not_followed(agent, work):
    """A symlink created at the O_CREAT name after the decision makes perform fail with ELOOP."""
    op = prepare(agent.pid, {"syscall": "openat", "pid": agent.pid, "dirfd": AT_FDCWD, "path": b"fresh",
                             "flags": os.O_WRONLY | os.O_CREAT, "mode": 0o600})
    try:
        os.symlink(work / "file", work / "fresh")
        with pytest.raises(OSError) as info:
            op.perform()
    finally:
        op.close()
    assert info.value.errno == errno.ELOOP
    assert (work / "file").read_bytes() == b"0123456789"


def test_agent_credentials_apply_and_are_restored(work):
    """An agent running as nobody cannot read a root 0600 file, creates files as nobody, and we stay root."""
    (work / "private").write_bytes(b"p")
    os.chmod(work / "private", 0o600)
    os.chmod(work, 0o777)
    with waiting_agent(work, user=NOBODY) as agent:
        op = prepare(agent.pid, {"syscall": "openat", "pid": agent.pid, "dirfd": AT_FDCWD, "path": b"private",
                                 "flags": os.O_RDONLY, "mode": 0})
        with op, pytest.raises(OSError) as info:
            op.perform()
        _, fd = agent.open(b"mine", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
    assert info.value.errno == errno.EACCES
    assert os.stat(work / "mine").st_uid == NOBODY
    assert (lf.getfsuid(), lf.getfsgid(), lf.get_effective_caps()[0] == lf.get_effective_caps()[1]) == (0, 0, True)


def test_agent_cannot_resolve_through_a_directory_it_cannot_search(work):
    """Resolution uses the agent's search permission: a 0700 root dir blocks nobody at prepare."""
    (work / "locked").mkdir(mode=0o700)
    (work / "locked" / "inside").write_bytes(b"x")
    os.chmod(work / "locked" / "inside", 0o644)
    with waiting_agent(work, user=NOBODY) as agent:
        with pytest.raises(OSError) as info:
            prepare(agent.pid, {"syscall": "openat", "pid": agent.pid, "dirfd": AT_FDCWD, "path": b"locked/inside",
                                "flags": os.O_RDONLY, "mode": 0})
    assert info.value.errno == errno.EACCES


def test_supplementary_groups_of_the_agent_count(work):
    """A file readable only by group 4242 is readable to an agent that has 4242 as a supplementary group."""
    (work / "grouped").write_bytes(b"g")
    os.chown(work / "grouped", 0, 4242)
    os.chmod(work / "grouped", 0o640)
    os.chmod(work, 0o755)
    with waiting_agent(work, user=NOBODY, extra_groups=[4242]) as agent:
        assert agent.read(b"grouped") == b"g"
    assert 4242 not in os.getgroups()


def test_no_fd_leaks_on_success_or_failure(agent, work):
    """Prepare/perform/close over successes and failures leaves our fd table as it was."""
    calls = [
        ("openat", {"dirfd": AT_FDCWD, "path": b"file", "flags": 0, "mode": 0}),
        ("openat", {"dirfd": AT_FDCWD, "path": b"missing/x", "flags": 0, "mode": 0}),
        ("openat", {"dirfd": AT_FDCWD, "path": b"file", "flags": os.O_CREAT | os.O_EXCL | os.O_WRONLY, "mode": 0}),
        ("renameat2", {"dirfd": AT_FDCWD, "path": b"nope", "newdirfd": AT_FDCWD, "newpath": b"x", "at_flags": 0}),
        ("unlinkat", {"dirfd": 99, "path": b"x", "at_flags": 0}),
        ("mkdir", {"path": b"dir", "mode": 0o700}),
    ]
    before = fd_count()
    for syscall, decoded in calls * 3:
        try:
            _, _, result = agent.call(syscall, **decoded)
            if result.kind == "fd":
                os.close(result.value)
        except OSError:
            pass
    assert fd_count() == before



def test_tmpfile_mknod_and_fd_calls(work):
    """O_TMPFILE opens an unnamed file in the directory; mknod makes a FIFO; fchmod changes the fd's file."""
    with waiting_agent(work, open_paths=[work / "file"]) as agent:
        args, fd = agent.open(b".", os.O_TMPFILE | os.O_RDWR, 0o600)
        assert os.readlink(f"/proc/self/fd/{fd}").endswith(" (deleted)")
        os.close(fd)
        assert args == {"path": str(work), "flags": ["O_RDWR", "O_TMPFILE"], "mode": 0o600}
        assert agent.call("mknodat", dirfd=AT_FDCWD, path=b"fifo", mode=stat.S_IFIFO | 0o644, dev=0)[0] == "fs/write"
        assert agent.call("fchmod", fd=agent.fds[0], mode=0o611)[1]["path"] == f"{work}/file"
    assert stat.S_ISFIFO(os.stat(work / "fifo").st_mode)
    assert stat.S_IMODE(os.stat(work / "file").st_mode) == 0o611


def test_dev_stdin_reopens_the_agents_pipe(work):
    """/dev/stdin of an agent reading a pipe opens that pipe; its path is the kernel's pipe name."""
    read_end, write_end = os.pipe()
    try:
        with waiting_agent(work, stdin=read_end) as agent:
            os.write(write_end, b"piped")
            args, fd = agent.open(b"/dev/stdin")
            data = os.read(fd, 10)
            os.close(fd)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert (data, args["path"].startswith("pipe:[")) == (b"piped", True)


def test_decision_matches_the_opened_file_while_a_link_flips(agent, work):
    """With a thread flipping a symlink between two files, every open reads the file its args name."""
    (work / "allowed").write_bytes(b"allowed")
    (work / "denied").write_bytes(b"denied")
    os.symlink("allowed", work / "link")
    stop = threading.Event()

    def flip():
        targets = ("denied", "allowed")
        i = 0
        while not stop.is_set():
            os.symlink(targets[i % 2], work / "next")
            os.rename(work / "next", work / "link")
            i += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    mismatches, count = [], 0
    try:
        for count in range(1, 201):
            op = prepare(agent.pid, {"syscall": "openat", "pid": agent.pid, "dirfd": AT_FDCWD, "path": b"link",
                                     "flags": os.O_RDONLY, "mode": 0})
            with op:
                fd = op.perform().value
            content = os.read(fd, 10)
            os.close(fd)
            decided = op.args["path"].rsplit("/", 1)[1].encode()
            if content != decided:
                mismatches.append((decided, content))
    finally:
        stop.set()
        flipper.join()
    assert (mismatches, count) == ([], 200)


def test_dev_tty_is_not_the_supervisors_terminal(agent):
    """/dev/tty would be the supervisor's controlling terminal, so it fails with ENXIO."""
    assert _errno_of(agent, "openat", dirfd=AT_FDCWD, path=b"/dev/tty", flags=os.O_RDWR, mode=0) == errno.ENXIO


def test_a_block_device_is_never_opened_for_the_agent(agent, work):
    """A disk's node would read past every path rule: opening a block device fails with EACCES,
    whatever the flags, as on a nodev mount (here a loop device's node made in the work dir)."""
    os.mknod(work / "disk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    for flags in (os.O_RDONLY, os.O_RDWR, os.O_PATH):
        assert _errno_of(agent, "openat", dirfd=AT_FDCWD, path=b"disk", flags=flags, mode=0) == errno.EACCES


def test_o_path_is_answered_with_an_injectable_read_only_fd(agent, work):
    """ADDFD refuses O_PATH files: O_PATH on a directory yields a read-only fd, on a symlink EOPNOTSUPP."""
    os.symlink("dir", work / "link")
    args, fd = agent.open(b"dir", os.O_PATH | os.O_NOFOLLOW)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    os.close(fd)
    assert (args["flags"], flags & (os.O_PATH | os.O_ACCMODE), is_dir) == (["O_PATH", "O_NOFOLLOW"], os.O_RDONLY, True)
    err = _errno_of(agent, "openat", dirfd=AT_FDCWD, path=b"link", flags=os.O_PATH | os.O_NOFOLLOW, mode=0)
    assert err == errno.EOPNOTSUPP


@pytest.mark.parametrize("agent_groups,ours,can_setgid,expected", [
    ((4, 65534), (4, 27), False, (4, 27)),
    ((4, 99), (4, 27), False, (4, 99)),
    ((4, 65534), (4, 27), True, (4, 65534)),
])
def test_groups_of_a_rootless_agent_are_ours_when_only_unmapped_ones_differ(agent_groups, ours, can_setgid, expected):
    """Without CAP_SETGID, groups shown as the overflow gid are the supervisor's own inherited groups."""
    assert groups_to_use(agent_groups, ours, can_setgid) == expected


def test_null_path_time_calls_act_on_the_dirfd(work):
    """utimensat/futimesat with a NULL path (decoded as b"" + AT_EMPTY_PATH) change the fd's own file."""
    with waiting_agent(work, open_paths=[work / "dir"]) as agent:
        for syscall, seconds in (("utimensat", 1111), ("futimesat", 2222)):
            args = agent.call(syscall, dirfd=agent.fds[0], path=b"", times=((seconds, 0), (seconds, 0)),
                              at_flags=lf.AT_EMPTY_PATH)[1]
            assert (args["path"], os.stat(work / "dir").st_mtime_ns) == (f"{work}/dir", seconds * 10**9)


def test_credentials_are_per_thread_under_concurrency(work):
    """Two threads acting for a root and a nobody agent at once never borrow each other's identity."""
    (work / "private").write_bytes(b"p")
    os.chmod(work / "private", 0o600)
    os.chmod(work, 0o755)
    outcomes = {"root": [], "nobody": []}
    with waiting_agent(work) as root_agent, waiting_agent(work, user=NOBODY) as nobody_agent:
        def hammer(name, agent):
            for _ in range(60):
                try:
                    _, fd = agent.open(b"private")
                    os.close(fd)
                    outcomes[name].append("read")
                except OSError as exc:
                    outcomes[name].append(errno.errorcode[exc.errno])
        threads = [threading.Thread(target=hammer, args=item) for item in
                   (("root", root_agent), ("nobody", nobody_agent))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert (set(outcomes["root"]), set(outcomes["nobody"])) == ({"read"}, {"EACCES"})
