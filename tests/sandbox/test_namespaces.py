"""The namespace layer on the real kernel: what the agent sees of the host (launch() without seccomp)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import psutil
import pytest

from sandbox import _libc, _libc_ns
from sandbox.launch import launch
from sandbox.spec import SandboxSpec

pytestmark = pytest.mark.kernel
MS_SHARED = 1 << 20


def run_sh(script: str, capfd, **spec_fields) -> tuple[int, str, str]:
    """Run ``sh -c script`` in the namespaces only; return (status, stdout, stderr)."""
    spec = SandboxSpec(argv=["sh", "-c", script], seccomp=False, **spec_fields)
    status = launch(spec, decide=None)
    out, err = capfd.readouterr()
    return status, out, err


def test_agent_is_pid_2_under_our_init(capfd):
    """The agent is pid 2 and its parent, pid 1, is the sandbox's init whose parent is outside."""
    status, out, _ = run_sh("echo $$ $PPID; grep PPid /proc/1/status", capfd)
    assert (status, out) == (0, "2 1\nPPid:\t0\n")


def test_hostname_is_sandbox(capfd):
    """The uts namespace has its own hostname."""
    status, out, _ = run_sh("cat /proc/sys/kernel/hostname", capfd)
    assert (status, out) == (0, "sandbox\n")
    assert open("/proc/sys/kernel/hostname").read() != "sandbox\n"


def test_only_loopback_and_it_is_up(capfd):
    """The network namespace holds only lo, brought up (IFF_UP|IFF_LOOPBACK = 0x9)."""
    status, out, _ = run_sh("ls /sys/class/net; cat /sys/class/net/lo/flags", capfd)
    assert (status, out) == (0, "lo\n0x9\n")


def test_proc_lists_only_the_sandbox(capfd):
    """A fresh /proc shows init and the agent, nothing of the host."""
    status, out, _ = run_sh("echo /proc/[0-9]*", capfd)
    assert (status, out) == (0, "/proc/1 /proc/2\n")


def test_cannot_signal_a_host_process(capfd):
    """A host pid is not reachable from inside: kill fails and the host process lives on."""
    host = subprocess.Popen(["sleep", "30"])
    try:
        status, out, err = run_sh(f"kill -TERM {host.pid} 2>&1; echo rc=$?", capfd)
        assert (status, out) == (0, "sh: 1: kill: No such process\n\nrc=1\n")
        assert host.poll() is None
    finally:
        host.kill()
        host.wait()


def test_mounts_do_not_propagate_to_the_host(capfd, tmp_path):
    """Propagation is made private first: a mount made in the sandbox's mount namespace, inside a
    shared host mount, stays inside. Made from outside with nsenter: the agent itself holds no
    CAP_SYS_ADMIN (sandbox/capabilities.py)."""
    shared, ready, done = tmp_path / "shared", tmp_path / "ready", tmp_path / "done"
    shared.mkdir()
    _libc_ns.mount("tmpfs", str(shared), "tmpfs", 0)
    failures: list[str] = []

    def mount_inside() -> None:
        try:
            while not ready.exists():
                time.sleep(0.01)
            agent = next(p for p in psutil.process_iter(["cmdline"])
                         if p.pid != os.getpid() and str(done) in " ".join(p.info["cmdline"] or ()))
            made = subprocess.run(["nsenter", "-t", str(agent.pid), "-m", "mount", "-t", "tmpfs", "none",
                                   f"{shared}/inner"], capture_output=True, text=True)
            if made.returncode:
                failures.append(made.stderr)
        except Exception as err:  # noqa: BLE001 - reported by the test, not lost in the thread
            failures.append(repr(err))
        finally:
            done.touch()
    try:
        _libc_ns.mount(None, str(shared), None, MS_SHARED)
        (shared / "inner").mkdir()
        script = (f"touch {ready}; for i in $(seq 1000); do [ -e {done} ] && break; sleep 0.01; done; "
                  f"grep -c ' {shared}/inner ' /proc/self/mountinfo")
        status = launch(SandboxSpec(argv=["sh", "-c", script], seccomp=False), decide=None,
                        started=lambda: threading.Thread(target=mount_inside, daemon=True).start())
        out, _ = capfd.readouterr()
        assert failures == []
        assert (status, out) == (0, "1\n")
        with open("/proc/self/mountinfo") as f:
            assert f" {shared}/inner " not in f.read()
    finally:
        subprocess.run(["umount", "-l", str(shared)], check=True)


def test_inherited_descriptors_are_closed(capfd):
    """Only stdin, stdout and stderr reach the agent, whatever the launcher had open."""
    extra = os.open("/etc/hostname", os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(extra, True)
    try:
        status, out, _ = run_sh("ls /proc/self/fd /proc/1/fd", capfd)
    finally:
        os.close(extra)
    # 3 is ls's own directory handle; init keeps only its socket to the launcher (closed at exec)
    assert (status, out) == (0, "/proc/1/fd:\n0\n1\n2\n\n/proc/self/fd:\n0\n1\n2\n3\n")


def test_orphans_are_reaped_by_init(capfd):
    """A grandchild orphaned inside the sandbox is reaped by init, never left a zombie."""
    script = "sh -c 'sleep 0.1 & exit 0'; sleep 0.5; cat /proc/[0-9]*/stat | cut -d' ' -f3 | sort | uniq -c | tr -s ' '"
    status, out, _ = run_sh(script, capfd)
    assert status == 0
    assert " Z" not in out


def test_non_root_maps_the_caller_to_itself(capfd):
    """As uid 65534 the agent runs in a user namespace where it is still 65534, without capabilities."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            _libc.prctl(_libc_ns.PR_SET_DUMPABLE, 1)  # as after an exec: setresuid cleared it, hiding /proc/self
            os.chdir("/")
            spec = SandboxSpec(argv=["sh", "-c", "id -u; id -g; cat /proc/self/uid_map; grep CapEff /proc/self/status; "
                                     "cat /proc/sys/kernel/hostname; echo /proc/[0-9]*"],
                               seccomp=False, cgroup=False)
            os._exit(launch(spec, decide=None))
        finally:
            os._exit(99)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        out = f.read()
    _, wait_status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert out.split() == ["65534", "65534", "65534", "65534", "1", "CapEff:", "0000000000000000",
                           "sandbox", "/proc/1", "/proc/2"]
