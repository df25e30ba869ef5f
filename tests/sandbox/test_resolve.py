"""Resolution in the agent's view: cwd, dirfds, chroot, symlinks, /proc and /dev/fd names."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from sandbox.fsops import prepare
from tests.sandbox.fs_agents import AT_FDCWD, chrooted_agent, pid_namespace_agent, waiting_agent

RESOLVE_BENEATH, RESOLVE_IN_ROOT = 0x08, 0x10


def _tree(base):
    """base/{etc/shadow, work/sub/, work/note, outside/secret}."""
    (base / "etc").mkdir()
    (base / "etc" / "shadow").write_bytes(b"fake shadow\n")
    (base / "work" / "sub").mkdir(parents=True)
    (base / "work" / "note").write_bytes(b"note\n")
    (base / "outside").mkdir()
    (base / "outside" / "secret").write_bytes(b"secret\n")
    return base


def _error(agent, syscall="openat", **decoded) -> int:
    with pytest.raises(OSError) as info:
        agent.call(syscall, **decoded)
    return info.value.errno


@pytest.fixture
def tree(tmp_path):
    return _tree(tmp_path)


def test_relative_path_resolves_against_the_agents_cwd(tree):
    """A relative path with AT_FDCWD names the file under the agent's cwd, not ours."""
    with waiting_agent(tree / "work") as agent:
        args, fd = agent.open(b"note")
        os.close(fd)
    assert args == {"path": f"{tree}/work/note", "flags": ["O_RDONLY"], "mode": None}


def test_dotdot_through_cwd_is_normalised_to_the_real_object(tree):
    """`cd /etc; cat ../etc/./shadow` is decided as /etc/shadow."""
    with waiting_agent(tree / "etc") as agent:
        args, fd = agent.open(b"../etc/./shadow")
        assert os.read(fd, 100) == b"fake shadow\n"
        os.close(fd)
    assert args["path"] == f"{tree}/etc/shadow"


def test_dirfd_relative_path_starts_at_the_agents_dirfd(tree):
    """openat(dirfd, "shadow") resolves under the directory the agent's fd refers to."""
    with waiting_agent(tree / "work", open_paths=[tree / "etc"]) as agent:
        args, fd = agent.open(b"shadow", dirfd=agent.fds[0])
        os.close(fd)
    assert args["path"] == f"{tree}/etc/shadow"


def test_relative_path_against_a_file_dirfd_is_enotdir(tree):
    """A dirfd that is not a directory fails as the kernel fails it."""
    with waiting_agent(tree, open_paths=[tree / "work" / "note"]) as agent:
        err = _error(agent, dirfd=agent.fds[0], path=b"x", flags=0, mode=0)
    assert err == errno.ENOTDIR


def test_dotdot_at_the_agents_root_stays_at_its_root(tree):
    """In a chroot, /../../etc/shadow is the chroot's etc/shadow and is named /etc/shadow."""
    with chrooted_agent(tree) as agent:
        args, fd = agent.open(b"/../../../etc/shadow")
        assert os.read(fd, 100) == b"fake shadow\n"
        os.close(fd)
    assert args["path"] == "/etc/shadow"


def test_relative_dotdot_climbing_past_the_root_stops_there(tree):
    """From cwd /work in a chroot, ../../../etc/shadow stays inside the chroot."""
    with chrooted_agent(tree, cwd="/work") as agent:
        args, fd = agent.open(b"../../../etc/shadow")
        os.close(fd)
    assert args["path"] == "/etc/shadow"


def test_absolute_symlink_in_a_chroot_lands_in_the_chroot(tree):
    """A symlink to /etc/shadow inside a chroot means the chroot's /etc/shadow."""
    os.symlink("/etc/shadow", tree / "work" / "link")
    with chrooted_agent(tree) as agent:
        assert agent.read(b"/work/link") == b"fake shadow\n"
        _, args, _ = agent.call("openat", dirfd=AT_FDCWD, path=b"/work/link", flags=0, mode=0)
    assert args["path"] == "/etc/shadow"


def test_symlink_is_decided_on_its_target(tree):
    """/work/link -> outside/secret is decided as the secret, the name the agent used is irrelevant."""
    os.symlink(tree / "outside" / "secret", tree / "work" / "link")
    with waiting_agent(tree / "work") as agent:
        args, fd = agent.open(b"link")
        os.close(fd)
    assert args["path"] == f"{tree}/outside/secret"


def test_symlink_loop_is_eloop(tree):
    """a -> b -> a fails with ELOOP."""
    os.symlink("b", tree / "work" / "a")
    os.symlink("a", tree / "work" / "b")
    with waiting_agent(tree / "work") as agent:
        assert _error(agent, dirfd=AT_FDCWD, path=b"a", flags=0, mode=0) == errno.ELOOP


def test_proc_self_root_magic_link_is_refused(tree):
    """/proc/self/root/... crosses a magic link and fails with ELOOP."""
    with waiting_agent(tree) as agent:
        assert _error(agent, dirfd=AT_FDCWD, path=b"/proc/self/root/etc/hostname", flags=0, mode=0) == errno.ELOOP
        assert _error(agent, dirfd=AT_FDCWD, path=b"/proc/self/cwd/work/note", flags=0, mode=0) == errno.ELOOP


def test_proc_self_means_the_agent(tree):
    """/proc/self/status is the agent's status file, not the supervisor's."""
    with waiting_agent(tree) as agent:
        args, fd = agent.open(b"/proc/self/status")
        content = os.read(fd, 4096)
        os.close(fd)
        assert args["path"] == f"/proc/{agent.pid}/status"
        assert f"\nPid:\t{agent.pid}\n".encode() in content


def test_dev_fd_and_proc_self_fd_reopen_the_agents_fd(tree):
    """/dev/fd/N, /proc/self/fd/N and /proc/<pid>/fd/N reopen what the agent's fd N refers to."""
    with waiting_agent(tree, open_paths=[tree / "work" / "note"]) as agent:
        n = agent.fds[0]
        for path in (b"/dev/fd/%d" % n, b"/proc/self/fd/%d" % n, b"/proc/%d/fd/%d" % (agent.pid, n)):
            args, fd = agent.open(path)
            assert os.read(fd, 100) == b"note\n"
            os.close(fd)
            assert args["path"] == f"{tree}/work/note"


def test_proc_self_fd_dotdot_is_the_parent_of_the_fds_directory(tree):
    """/proc/self/fd/N/.. names the parent of the directory fd N refers to."""
    with waiting_agent(tree, open_paths=[tree / "work" / "sub"]) as agent:
        args, fd = agent.open(b"/proc/self/fd/%d/../note" % agent.fds[0])
        os.close(fd)
    assert args["path"] == f"{tree}/work/note"


def test_another_process_proc_files_are_refused(tree):
    """The supervisor's /proc/<pid>/environ and mem are not reachable; its status is."""
    me = os.getpid()
    with waiting_agent(tree) as agent:
        assert _error(agent, dirfd=AT_FDCWD, path=b"/proc/%d/environ" % me, flags=0, mode=0) == errno.EACCES
        assert _error(agent, dirfd=AT_FDCWD, path=b"/proc/%d/mem" % me, flags=os.O_RDWR, mode=0) == errno.EACCES
        args, fd = agent.open(b"/proc/%d/status" % me)
        os.close(fd)
    assert args["path"] == f"/proc/{me}/status"


def test_cwd_outside_the_agents_root_fails_closed(tree):
    """A chroot'ed agent whose cwd is outside its root gets EACCES for relative paths."""
    with chrooted_agent(tree / "work", cwd=None, start_in=tree) as agent:
        assert _error(agent, dirfd=AT_FDCWD, path=b"etc/shadow", flags=0, mode=0) == errno.EACCES


def test_openat2_beneath_refuses_dotdot(tree):
    """The agent's own RESOLVE_BENEATH is honoured: ../x from a dirfd is EXDEV."""
    with waiting_agent(tree / "work", open_paths=[tree / "work" / "sub"]) as agent:
        err = _error(agent, "openat2", dirfd=agent.fds[0], path=b"../note", flags=0, mode=0,
                     resolve=RESOLVE_BENEATH)
    assert err == errno.EXDEV


def test_openat2_in_root_treats_the_dirfd_as_root(tree):
    """The agent's RESOLVE_IN_ROOT makes /shadow mean <dirfd>/shadow."""
    with waiting_agent(tree, open_paths=[tree / "etc"]) as agent:
        _, args, result = agent.call("openat2", dirfd=agent.fds[0], path=b"/../shadow", flags=0, mode=0,
                                     resolve=RESOLVE_IN_ROOT)
        os.close(result.value)
    assert args["path"] == f"{tree}/etc/shadow"


@pytest.mark.parametrize("flags,mode,resolve", [(0, 0, 0x40), (0, 0o644, 0), (0, 0, RESOLVE_IN_ROOT | RESOLVE_BENEATH)])
def test_openat2_invalid_open_how_is_einval(tree, flags, mode, resolve):
    """Unknown resolve bits, a mode without O_CREAT and IN_ROOT|BENEATH are EINVAL, as in the kernel."""
    with waiting_agent(tree) as agent:
        err = _error(agent, "openat2", dirfd=AT_FDCWD, path=b"work/note", flags=flags, mode=mode, resolve=resolve)
    assert err == errno.EINVAL


def test_create_through_a_dangling_symlink_is_decided_on_the_new_file(tree):
    """O_CREAT on link -> ../outside/new is decided as (and creates) outside/new."""
    os.symlink("../outside/new", tree / "work" / "dangling")
    with waiting_agent(tree / "work") as agent:
        args, fd = agent.open(b"dangling", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
    assert args["path"] == f"{tree}/outside/new"
    assert (tree / "outside" / "new").is_file()


@pytest.mark.parametrize("syscall,decoded,expected", [
    ("rmdir", {"path": b"."}, errno.EINVAL),
    ("rmdir", {"path": b"sub/.."}, errno.ENOTEMPTY),
    ("unlink", {"path": b""}, errno.ENOENT),
    ("mkdir", {"path": b"/", "mode": 0o755}, errno.EEXIST),
    ("rename", {"path": b"..", "newpath": b"x"}, errno.EBUSY),
])
def test_last_component_dot_dotdot_or_empty_is_refused(tree, syscall, decoded, expected):
    """Name-changing calls never act on '.', '..', the root or an empty name."""
    with waiting_agent(tree / "work") as agent:
        assert _error(agent, syscall, **decoded) == expected


def test_unknown_syscall_and_dead_task_fail_with_errno(tree):
    """An untranslated syscall is ENOSYS and a vanished task ESRCH, both as OSError."""
    with waiting_agent(tree) as agent:
        pid = agent.pid
        with pytest.raises(OSError) as info:
            prepare(pid, {"syscall": "read", "pid": pid})
        assert info.value.errno == errno.ENOSYS
    with pytest.raises(OSError) as info:
        prepare(pid, {"syscall": "openat", "pid": pid, "dirfd": AT_FDCWD, "path": b"x", "flags": 0, "mode": 0})
    assert info.value.errno == errno.ESRCH


def test_malformed_decoded_call_fails_closed_with_eacces(tree):
    """A decoded dict missing a required key is EACCES, never a KeyError."""
    with waiting_agent(tree) as agent:
        assert _error(agent, "symlink", newpath=b"x") == errno.EACCES


def test_own_pid_namespace_procfs_self_is_the_agent(tree):
    """With its own pid namespace and procfs, the agent's /proc/self is /proc/1 and is the agent."""
    (tree / "proc").mkdir()
    with pid_namespace_agent(tree) as agent:
        args, fd = agent.open(b"/proc/self/status")
        content = os.read(fd, 4096)
        os.close(fd)
        assert args["path"] == "/proc/1/status"
        assert b"\nNStgid:\t1\n" in content  # pid 1 of the procfs's own namespace: the agent
        assert _error(agent, dirfd=AT_FDCWD, path=b"/proc/%d/status" % os.getpid(), flags=0, mode=0) == errno.ENOENT
        assert agent.read(b"/../etc/shadow") == b"fake shadow\n"


def test_foreign_procfs_number_matching_the_agents_pid_is_not_the_agent(tree):
    """An agent in a new pid namespace but the host's procfs: /proc/self -> /proc/1 is host init, not writable."""
    with pid_namespace_agent() as agent:
        err = _error(agent, dirfd=AT_FDCWD, path=b"/proc/self/mem", flags=os.O_RDWR, mode=0)
        args, fd = agent.open(b"/proc/self/status")
        os.close(fd)
    assert (err, args["path"]) == (errno.EACCES, "/proc/1/status")


def test_hard_link_is_decided_on_the_linked_object_then_on_the_new_name(tree):
    """linkat names the real source and the new name; later opens are decided on the name they use."""
    with waiting_agent(tree / "work") as agent:
        tool, args, _ = agent.call("linkat", dirfd=AT_FDCWD, path=b"../outside/secret", newdirfd=AT_FDCWD,
                                   newpath=b"copy", at_flags=0)
        opened, fd = agent.open(b"copy")
        os.close(fd)
    assert (tool, args["path"], args["dest"]) == ("fs/link", f"{tree}/outside/secret", f"{tree}/work/copy")
    assert opened["path"] == f"{tree}/work/copy"


def test_proc_self_exe_is_the_agents_executable_and_a_closed_fd_is_enoent(tree):
    """/proc/self/exe opens the agent's own binary; /dev/fd/N for a closed N is ENOENT."""
    with waiting_agent(tree) as agent:
        args, fd = agent.open(b"/proc/self/exe")
        os.close(fd)
        err = _error(agent, dirfd=AT_FDCWD, path=b"/dev/fd/999", flags=0, mode=0)
    assert (args["path"], err) == (os.path.realpath(shutil.which("sleep")), errno.ENOENT)


@pytest.mark.parametrize("path", [b"sub/../../etc/shadow", b"etcdir/shadow", b"abs/etc/shadow", b"up/etc/shadow",
                                  b"/work/up/../../etc/./shadow", b"../../../etc/shadow"])
def test_escape_tricks_from_a_chroot_stay_inside(tree, path):
    """`..`, absolute and climbing symlinks all resolve inside the chroot, to its /etc/shadow."""
    (tree / "work" / "sub" / "deeper").mkdir()
    os.symlink("/etc", tree / "work" / "etcdir")
    os.symlink("/", tree / "work" / "abs")
    os.symlink("../../../../..", tree / "work" / "up")
    with chrooted_agent(tree, cwd="/work") as agent:
        args, fd = agent.open(path)
        content = os.read(fd, 100)
        os.close(fd)
    assert (args["path"], content) == ("/etc/shadow", b"fake shadow\n")


def test_dangling_symlink_create_in_a_chroot_creates_inside(tree):
    """O_CREAT through `x -> /etc/newfile` in a chroot creates the chroot's /etc/newfile."""
    os.symlink("/etc/newfile", tree / "work" / "x")
    with chrooted_agent(tree, cwd="/work") as agent:
        args, fd = agent.open(b"x", os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    assert (args["path"], (tree / "etc" / "newfile").exists()) == ("/etc/newfile", True)
