"""The agent's /dev (sandbox/mounts.py): a tmpfs of its own with a few of the host's character
devices, a devpts and a /dev/shm of its own, on both inits and in a user namespace; no host disk
or loop device, also where the policy lets the kernel decide reads."""

from __future__ import annotations

import json
import os
import pty

import pytest

import policy
from policy.decision import Decision, Effect
from sandbox import _libc, _libc_ns, init_spawn, mounts, traced
from sandbox.errors import SandboxError
from sandbox.launch import launch
from sandbox.spec import SandboxSpec

pytestmark = pytest.mark.kernel
TRAPPED = frozenset(row.name for row in traced.TABLE)
DEV = sorted(["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
              "urandom", "zero"])

# What the agent finds in /dev, and whether each thing there works.
SCRIPT = """
ls -A /dev | tr '\\n' ' '; echo
ls -A /dev/pts | tr '\\n' ' '; echo
echo discarded > /dev/null && head -c 2 /dev/zero | od -An -tx1 | tr -d ' '
head -c 8 /dev/urandom | wc -c | tr -d ' '
echo full > /dev/full 2>/dev/null || echo "/dev/full: full"
python3 -c "import os; master, terminal = os.openpty(); print(os.ttyname(terminal))"
echo private > /dev/shm/faramesh-test-$1 && cat /dev/shm/faramesh-test-$1
touch /dev/made 2>/dev/null || echo "/dev: read-only"
head -c 1 /dev/loop0 2>/dev/null || echo "/dev/loop0: none"
readlink /dev/stdout /dev/ptmx | tr '\\n' ' '; echo
chmod 600 /dev/null 2>/dev/null || echo "/dev/null: mode kept"
"""
EXPECTED = [" ".join(DEV) + " ", "ptmx ", "0000", "8", "/dev/full: full", "/dev/pts/0", "private", "/dev: read-only",
            "/dev/loop0: none", "/proc/self/fd/1 pts/ptmx ", "/dev/null: mode kept"]


def permit_all(call):
    return Decision(Effect.PERMIT, rule_id="test-permit")


def _as_nobody() -> None:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    _libc.prctl(_libc_ns.PR_SET_DUMPABLE, 1)  # as after an exec: setresuid cleared it, hiding /proc/self
    os.chdir("/")


def _launch_in_child(kind: str, argv: list[str], **fields) -> tuple[int, str]:
    """launch() in a forked child: as root with the compiled or the Python init, or as uid 65534
    (a user namespace, the Python init); returns its status and the agent's stdout."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        status = 99
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            if kind != "compiled init":
                init_spawn.available = lambda: False
            if kind == "user namespace":
                _as_nobody()
                fields["cgroup"] = False
            status = launch(SandboxSpec(argv=argv, trapped=TRAPPED, **fields), permit_all)
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        out = f.read()
    _, wait_status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(wait_status), out


def _in_child(run):
    """``run()``'s JSON-able result, from a forked child: launch() needs a single-threaded process,
    and the test runner may hold threads of earlier tests."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(run()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        data = f.read()
    os.waitpid(child, 0)
    return json.loads(data) if data else "no result"


@pytest.mark.parametrize("kind", ["compiled init", "python init", "user namespace"])
def test_the_agent_has_a_dev_of_its_own(kind):
    """Only the listed nodes and links: the devices work, /dev/pts is a new instance (none of the
    host's terminals, one held open here), /dev/shm is private and writable, /dev read-only, and no
    disk or loop device is there."""
    host_terminal = pty.openpty()  # so the host's devpts holds at least one terminal
    try:
        status, out = _launch_in_child(kind, ["sh", "-c", SCRIPT, "sh", str(os.getpid())])
    finally:
        for fd in host_terminal:
            os.close(fd)
    assert (status, out.splitlines()) == (0, EXPECTED)
    assert not os.path.exists(f"/dev/shm/faramesh-test-{os.getpid()}")  # the host's /dev/shm is untouched
    assert os.stat("/dev/null").st_mode & 0o777 == 0o666  # the host's node: bound read-only


def test_a_kernel_decided_read_reaches_no_block_device(capfd):
    """A root agent under `permit fs/read` (decided in the kernel, not by the supervisor) finds no
    disk or loop device node to read past hidden directories."""
    from launcher.run import kernel_decided
    engine = policy.Engine([policy.load_policy("agent a {\n  default permit\n}\n", "p.fpl")], policy.SessionStore())
    script = "ls /dev | grep -c -E '^(loop|vd|sd|nvme|zram|dm-|mapper)'; head -c 1 /dev/loop0"
    spec = SandboxSpec(argv=["sh", "-c", script], trapped=TRAPPED, kernel_decided=kernel_decided(engine))
    assert spec.kernel_decided["fs/read"] == 0  # reads are the kernel's, never the supervisor's
    assert _in_child(lambda: launch(spec, engine.decide)) == 1
    out, err = capfd.readouterr()
    assert (out, err.endswith("/dev/loop0' for reading: No such file or directory\n")) == ("0\n", True)


@pytest.mark.parametrize("kind", ["compiled init", "python init"])
def test_a_failed_dev_step_is_worded_the_same(kind, monkeypatch):
    """A step of the new /dev that fails (here a symlink over the pts directory) names its call,
    the same from both inits."""
    if kind == "python init":
        monkeypatch.setattr(init_spawn, "available", lambda: False)
    monkeypatch.setattr(mounts, "DEV_LINKS", {**mounts.DEV_LINKS, "pts": "elsewhere"})
    def failed_stage():
        try:
            launch(SandboxSpec(argv=["/bin/true"], trapped=TRAPPED), permit_all)
        except SandboxError as err:
            return [err.stage, err.message]
        return None
    assert _in_child(failed_stage) == ["mounts", "symlink('elsewhere', '/proc/pts'): File exists"]


def test_without_a_mount_namespace_there_is_no_dev_of_its_own():
    """The plan makes nothing without a mount namespace (nothing may be made on the host)."""
    assert mounts.plan(SandboxSpec(argv=["true"], namespaces=frozenset({"pid"})), lambda content: "") == []
