"""The ptrace stop-all freezer against the real kernel: a target tree in its own pid namespace."""

from __future__ import annotations

import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from sandbox import notify
from sandbox.freeze import FreezeError, task_state
from sandbox.ptrace_freeze import PtraceFreezer

# Counters the target keeps in a shared file (one int64 each).
SPIN, SLEEPS, READS, FUTEX_TIMEOUTS, CHILD_SPIN, SIGWAITED, CHILD_HANDLED, FORKS, ERRORS, READY = range(10)



@pytest.fixture(scope="module")
def target_bin(cbin):
    """tests/sandbox/c/ptrace_target.c, compiled once."""
    return cbin("ptrace_target")


class Target:
    """The target as pid 1 of a new pid namespace (run by unshare, a child of the test)."""

    def __init__(self, binary: str, tmp_path, extra=(), pass_fds=()):
        self.path = tmp_path / "counters"
        self.path.write_bytes(bytes(4096))
        self.file = open(self.path, "r+b")
        self.counters = mmap.mmap(self.file.fileno(), 4096)
        self.proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", binary, str(self.path), *extra],
                                     pass_fds=pass_fds)
        self.init = self._find_init()
        wait_for(lambda: self.counter(READY) == 1, "target ready")

    def _find_init(self) -> int:
        def child_of_unshare():
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
                return [int(p) for p in fh.read().split()]
        wait_for(child_of_unshare, "target started")
        return child_of_unshare()[0]

    def counter(self, index: int) -> int:
        return struct.unpack_from("q", self.counters, index * 8)[0]

    def snapshot(self) -> list[int]:
        return [self.counter(i) for i in range(READY)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # --kill-child takes the namespace along
            self.proc.wait()
        self.counters.close()
        self.file.close()


def wait_for(condition, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
    return result


def states(freezer: PtraceFreezer) -> dict[int, str]:
    """State letter of each sandbox task, leaving out zombies (exited forks not yet reaped)."""
    found = {tid: task_state(tid)[0] for tid in freezer.threads()}
    return {tid: state for tid, state in found.items() if state not in "ZX"}


@pytest.fixture
def target(target_bin, tmp_path):
    running = Target(target_bin, tmp_path)
    wait_for(lambda: all(running.counter(i) > 0 for i in (SLEEPS, READS, FUTEX_TIMEOUTS, CHILD_SPIN, FORKS)),
             "every worker made progress")
    yield running
    running.close()


def tracers(freezer: PtraceFreezer) -> set[int]:
    """TracerPid of every sandbox task still there (forked children come and go)."""
    found = set()
    for tid in freezer.threads():
        try:
            with open(f"/proc/{tid}/status") as fh:
                found.add(int(next(line for line in fh if line.startswith("TracerPid:")).split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def child_of(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return int(fh.read().split()[0])


def test_freeze_stops_every_task_and_thaw_resumes_them(target):
    """Spinning, sleeping, reading, futex-waiting and forking tasks all stop, then resume without errors."""
    freezer = PtraceFreezer(target.init)
    freezer.freeze(target.init)
    frozen = states(freezer)
    assert len(frozen) >= 8
    assert set(frozen.values()) == {"t"}
    before = target.snapshot()
    time.sleep(0.2)
    assert target.snapshot() == before
    freezer.thaw()
    wait_for(lambda: all(target.counter(i) > before[i] for i in (SPIN, SLEEPS, READS, FUTEX_TIMEOUTS, CHILD_SPIN,
                                                                   FORKS)), "progress after thaw")
    assert "t" not in states(freezer).values()
    assert tracers(freezer) == {0}
    assert target.counter(ERRORS) == 0


def test_repeated_freezes_catch_tasks_forked_meanwhile(target):
    """Twenty freeze/thaw cycles against a forking tree each leave every task stopped, with no errors after."""
    freezer = PtraceFreezer(target.init)
    for _cycle in range(20):
        freezer.freeze(target.init)
        assert set(states(freezer).values()) == {"t"}
        freezer.thaw()
        time.sleep(0.01)
    forks = target.counter(FORKS)
    wait_for(lambda: target.counter(FORKS) > forks, "forking after the last thaw")
    assert target.counter(ERRORS) == 0


def test_signal_sent_while_frozen_is_delivered_after_thaw(target):
    """A signal sent to a frozen process waits, then reaches sigwait and a handler once thawed."""
    freezer = PtraceFreezer(target.init)
    freezer.freeze(target.init)
    os.kill(target.init, signal.SIGUSR1)
    os.kill(child_of(target.init), signal.SIGUSR2)
    time.sleep(0.1)
    assert (target.counter(SIGWAITED), target.counter(CHILD_HANDLED)) == (0, 0)
    freezer.thaw()
    wait_for(lambda: (target.counter(SIGWAITED), target.counter(CHILD_HANDLED)) == (1, 1), "signals delivered")
    assert target.counter(ERRORS) == 0


def test_kill_while_frozen_leaves_no_task(target):
    """kill() on a frozen tree ends every task of the namespace."""
    freezer = PtraceFreezer(target.init)
    freezer.freeze(target.init)
    freezer.kill()
    assert target.proc.wait(timeout=5) == -signal.SIGKILL or target.proc.returncode != 0
    assert freezer.threads() == []


def test_holder_outside_the_sandbox_fails_closed(target):
    """A holder that is not a sandbox task raises FreezeError and kills the sandbox."""
    freezer = PtraceFreezer(target.init)
    with pytest.raises(FreezeError, match="is not a task of the sandbox"):
        freezer.freeze(os.getpid())
    target.proc.wait(timeout=5)
    assert freezer.threads() == []


def test_unknown_pid_namespace_is_refused():
    """A pid that does not exist gives FreezeError, not a traceback from /proc."""
    with pytest.raises(FreezeError, match="cannot open its pid namespace"):
        PtraceFreezer(2 ** 22 + 1)


def start_exec_target(target_bin, tmp_path, execer: str, program: str = "/bin/sh"):
    out = tmp_path / "exec-out"
    ours, theirs = socket.socketpair()
    running = Target(target_bin, tmp_path, extra=[str(theirs.fileno()), execer, program, "-c",
                                                  f"echo execd > {out}"], pass_fds=[theirs.fileno()])
    theirs.close()
    _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
    ours.close()
    return running, fds[0], out


def start_held_exec(target_bin, tmp_path, execer: str, program: str = "/bin/sh"):
    running, listener, out = start_exec_target(target_bin, tmp_path, execer, program)
    assert select.select([listener], [], [], 5.0)[0] == [listener]
    return running, listener, notify.recv(listener), out


@pytest.mark.parametrize("execer", ["leader", "thread"])
def test_multithreaded_exec_while_frozen_completes(target_bin, tmp_path, execer):
    """CONTINUE of a held exec from a 7-thread process finishes the exec while every other task stays stopped."""
    running, listener, held, out = start_held_exec(target_bin, tmp_path, execer)
    try:
        freezer = PtraceFreezer(running.init)
        freezer.freeze(held.pid)
        frozen = states(freezer)
        assert frozen.pop(held.pid) == "D"
        assert set(frozen.values()) == {"t"}
        assert notify.send_continue(listener, held.id) is True
        started = time.monotonic()
        freezer.wait_exec_finished(held.pid)
        assert time.monotonic() - started < 2.0
        assert "t" in states(freezer).values()  # the spinning child stays frozen until thaw
        freezer.thaw()
        assert running.proc.wait(timeout=5) == 0
        assert out.read_text() == "execd\n"
    finally:
        os.close(listener)
        running.close()


def test_vfork_child_exec_while_frozen_completes(target_bin, tmp_path):
    """A vfork child's held exec completes while its parent waits in vfork and every other task is stopped."""
    running, listener, held, out = start_held_exec(target_bin, tmp_path, "vfork")
    try:
        freezer = PtraceFreezer(running.init)
        freezer.freeze(held.pid)
        frozen = states(freezer)
        assert (frozen.pop(held.pid), frozen.pop(running.init)) == ("D", "D")  # the vfork parent waits
        assert set(frozen.values()) == {"t"}
        assert notify.send_continue(listener, held.id) is True
        freezer.wait_exec_finished(held.pid)
        freezer.thaw()
        assert running.proc.wait(timeout=5) == 0
        assert out.read_text() == "execd\n"
    finally:
        os.close(listener)
        running.close()


def test_failing_exec_while_frozen_leaves_the_other_threads_stopped(target_bin, tmp_path):
    """A permitted exec that fails (ENOENT) ends the wait at once, with the sibling threads still stopped."""
    running, listener, held, out = start_held_exec(target_bin, tmp_path, "thread", "/nonexistent/program")
    try:
        freezer = PtraceFreezer(running.init)
        freezer.freeze(held.pid)
        assert notify.send_continue(listener, held.id) is True
        freezer.wait_exec_finished(held.pid)
        assert set(states(freezer).values()) == {"t"}
        freezer.thaw()
        assert running.proc.wait(timeout=5) == 5  # execv failed, the thread exited with 5
        assert running.counter(ERRORS) == 1
    finally:
        os.close(listener)
        running.close()


def test_denied_exec_holder_is_released_after_thaw(target_bin, tmp_path):
    """A held exec answered EPERM while frozen returns the error to the agent once thawed."""
    running, listener, held, out = start_held_exec(target_bin, tmp_path, "leader")
    try:
        freezer = PtraceFreezer(running.init)
        freezer.freeze(held.pid)
        assert notify.send_error(listener, held.id, 1) is True
        freezer.thaw()
        assert running.proc.wait(timeout=5) == 5  # execv failed, main returned 5
        assert running.counter(ERRORS) == 1
        assert not out.exists()
    finally:
        os.close(listener)
        running.close()


@pytest.mark.parametrize("effect, status, output", [("PERMIT", 0, "execd\n"), ("DENY", 5, None)])
def test_supervisor_decides_exec_with_every_other_task_stopped(target_bin, tmp_path, effect, status, output):
    """Through the real Supervisor, the exec decision sees every other task stopped, and its answer holds."""
    from policy.decision import Decision, Effect
    from sandbox.supervisor import Supervisor

    running, listener, out = start_exec_target(target_bin, tmp_path, "thread")
    seen: list[tuple[str, set[str]]] = []
    try:
        freezer = PtraceFreezer(running.init)

        def decide(call):
            others = {state for tid, state in states(freezer).items() if tid != call.args["pid"]}
            seen.append((call.tool, others))
            return Decision(Effect[effect], rule_id="exec-rule")

        supervisor = Supervisor(listener, decide, session_id="ptrace", cgroup_dir=None)
        assert supervisor._freezer_ready.wait(5)  # its own check finds no cgroup: ours replaces it
        supervisor.freezer = freezer
        serving = threading.Thread(target=supervisor.serve, daemon=True)
        serving.start()
        assert running.proc.wait(timeout=10) == status
        supervisor.stop()
        serving.join(timeout=5)
    finally:
        os.close(listener)
        running.close()
    assert seen == [("shell/exec", {"t"})]
    assert (out.read_text() if out.exists() else None) == output
