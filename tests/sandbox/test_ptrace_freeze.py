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

TARGET_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { SPIN, SLEEPS, READS, FUTEX_TIMEOUTS, CHILD_SPIN, SIGWAITED, CHILD_HANDLED, FORKS, ERRORS, READY };
static volatile long *c;
static int pipefd[2];
static char **exec_argv;
static int exec_from_thread;

static void *spin(void *a) { for (;;) __atomic_fetch_add(&c[SPIN], 1, __ATOMIC_RELAXED); }
static void *sleeper(void *a) {
    struct timespec t = {0, 20000000};
    for (;;) { if (nanosleep(&t, NULL)) c[ERRORS]++; else c[SLEEPS]++; }
}
static void *writer(void *a) {
    struct timespec t = {0, 10000000};
    for (;;) { nanosleep(&t, NULL); if (write(pipefd[1], "x", 1) != 1) c[ERRORS]++; }
}
static void *reader(void *a) {
    char b;
    for (;;) { if (read(pipefd[0], &b, 1) == 1) c[READS]++; else c[ERRORS]++; }
}
static void *futexer(void *a) {
    int word = 0;
    struct timespec t = {0, 30000000};
    for (;;) {
        long r = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &t, NULL, 0);
        if (r == -1 && errno == ETIMEDOUT) c[FUTEX_TIMEOUTS]++; else c[ERRORS]++;
    }
}
static void *forker(void *a) {
    for (;;) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        if (p < 0 || waitpid(p, NULL, 0) != p) c[ERRORS]++; else c[FORKS]++;
    }
}
static void *execer(void *a) {
    usleep(100000);
    execv(exec_argv[0], exec_argv);
    c[ERRORS]++;
    exit(5);
}
static void child_handler(int s) { c[CHILD_HANDLED]++; }

static int install_exec_filter(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_execve, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {4, f};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                   SECCOMP_FILTER_FLAG_NEW_LISTENER | (1UL << 5), &prog);
}

static void send_fd(int sock, int fd) {
    char data = 'L', ctl[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {&data, 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET; h->cmsg_type = SCM_RIGHTS; h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof(int));
    if (sendmsg(sock, &m, 0) != 1) exit(3);
}

/* target COUNTERS_FILE [SOCKET_FD leader|thread PROGRAM ARGS...] */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR);
    c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    sigset_t usr1;
    sigemptyset(&usr1); sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    if (pipe(pipefd)) return 2;
    pid_t child = fork();
    if (child == 0) {
        sigprocmask(SIG_UNBLOCK, &usr1, NULL);
        signal(SIGUSR2, child_handler);
        for (;;) __atomic_fetch_add(&c[CHILD_SPIN], 1, __ATOMIC_RELAXED);
    }
    if (argc > 2) {
        int listener = install_exec_filter();
        if (listener < 0) return 4;
        send_fd(atoi(argv[2]), listener);
        exec_from_thread = !strcmp(argv[3], "thread");
        exec_argv = argv + 4;
    }
    void *(*workers[])(void *) = {spin, sleeper, writer, reader, futexer, forker};
    pthread_t t;
    for (unsigned i = 0; i < sizeof workers / sizeof *workers; i++) pthread_create(&t, NULL, workers[i], NULL);
    c[READY] = 1;
    if (argc > 2) {
        if (exec_from_thread) { pthread_create(&t, NULL, execer, NULL); pause(); }
        if (!strcmp(argv[3], "vfork")) {
            int status;
            usleep(100000);
            pid_t p = vfork();
            if (p == 0) { execv(exec_argv[0], exec_argv); _exit(5); }
            exit(waitpid(p, &status, 0) == p && WIFEXITED(status) ? WEXITSTATUS(status) : 6);
        }
        execer(NULL);
    }
    for (;;) { int s; if (sigwait(&usr1, &s) == 0) c[SIGWAITED]++; }
}
"""


@pytest.fixture(scope="module")
def target_bin(tmp_path_factory):
    """The target compiled once per module."""
    out = tmp_path_factory.mktemp("ptrace-target")
    (out / "target.c").write_text(TARGET_C)
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(out / "target"), str(out / "target.c")], check=True)
    return str(out / "target")


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
