"""Fixtures that run real programs under the seccomp filter and the supervisor.

The child sets no_new_privs, installs the filter, hands the listener fd to the parent
over SCM_RIGHTS and execs; no namespaces are needed for these tests.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from policy.decision import Decision, Effect
from sandbox import _libc, seccomp, traced
from sandbox._nethandover import offer_listener, take_listener
from sandbox.supervisor import Supervisor

C_DIR = Path(__file__).parent / "c"
ALL_TRAPPED = tuple(row.name for row in traced.TABLE)
CGROUP2_ROOT = "/sys/fs/cgroup/unified" if os.path.exists("/sys/fs/cgroup/unified/cgroup.procs") else "/sys/fs/cgroup"


def pytest_configure(config):
    config.addinivalue_line("markers", "race: long race harness against the real kernel (runs in CI, ~1 min)")


@dataclass
class Run:
    status: int  # exit code, or -signal
    stdout: bytes
    stderr: bytes
    audit: list = field(default_factory=list)
    stats: collections.Counter = field(default_factory=collections.Counter)

    def explain(self) -> str:
        """stderr and every non-permitted decision, for assertion messages."""
        refused = [(r["syscall"], r["args"].get("path"), r["effect"], r["reason"]) for r in self.audit
                   if r["effect"] != "PERMIT"]
        return f"status={self.status} stderr={self.stderr!r} refused={refused} stats={dict(self.stats)}"


def permit_all(call):
    return Decision(Effect.PERMIT, rule_id="test-permit")


@pytest.fixture(scope="session")
def cbin(tmp_path_factory):
    """Compile tests/sandbox/c/NAME.c on first use; returns the binary path."""
    out = tmp_path_factory.mktemp("cbin")
    built: dict[str, str] = {}

    def build(name: str, *flags: str) -> str:
        if name not in built:
            target = out / name
            subprocess.run(["gcc", "-O2", "-pthread", "-o", str(target), str(C_DIR / f"{name}.c"), *flags],
                           check=True, capture_output=True)
            built[name] = str(target)
        return built[name]

    return build


@pytest.fixture
def cgroup_dir():
    """A fresh cgroup v2 directory (inside a scratch parent for the freezer self-test)."""
    parent = os.path.join(CGROUP2_ROOT, f"fstest-{uuid.uuid4().hex[:8]}")
    agent = os.path.join(parent, "agent")
    os.makedirs(agent)
    yield agent
    for directory in (agent, parent):
        for _ in range(100):
            try:
                os.rmdir(directory)
                break
            except OSError:
                _kill_cgroup(directory)
                threading.Event().wait(0.02)


def _kill_cgroup(directory: str) -> None:
    try:
        with open(os.path.join(directory, "cgroup.kill"), "w") as fh:
            fh.write("1")
    except OSError:
        pass


def spawn_filtered(argv, program: bytes, cgroup: str | None, stdout: int, stderr: int, env=None):
    """Fork a child that installs ``program`` and execs ``argv``; returns (pid, listener fd)."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    path = argv[0] if "/" in argv[0] else shutil.which(argv[0])
    environ = dict(os.environ if env is None else env)
    pid = os.fork()
    if pid == 0:  # child: no Python-level file opens after install (they would be trapped)
        try:
            parent_sock.close()
            if cgroup:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as fh:
                    fh.write("0")
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            _libc.set_no_new_privs()
            listener = seccomp.install(program)
            offer_listener(child_sock, listener)  # sendmsg is trapped now: no SCM_RIGHTS
            os.close(listener)
            child_sock.close()
            os.execve(path, list(argv), environ)
        except BaseException as err:  # noqa: BLE001 - report and leave the forked child
            os.write(2, f"child setup failed: {err!r}\n".encode())
        finally:
            os._exit(127)
    child_sock.close()
    _msg, listener = take_listener(parent_sock)
    parent_sock.close()
    if listener is None:
        os.waitpid(pid, 0)
        raise RuntimeError("the child did not send its listener fd")
    return pid, listener


def _status(raw: int) -> int:
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def run_sandboxed(argv, decide=permit_all, *, trapped=ALL_TRAPPED, kernel_decided=None, cgroup=None,
                  approve=None, approve_timeout=300.0, supervise=True, timeout=120.0, tmp=None, env=None,
                  audit_sink=None, decision_keys=None) -> Run:
    """Run ``argv`` under the filter; with ``supervise`` a Supervisor answers its notifications,
    otherwise the listener is closed at once (as if the supervisor had died). ``decision_keys``
    turns on the compiled fast path for repeated reads (sandbox/fastpath.py)."""
    program = seccomp.build_filter(trapped, kernel_decided or {}, watch_credentials=decision_keys is not None)
    tmp = Path(tmp or "/tmp")
    out_path, err_path = tmp / f"out-{uuid.uuid4().hex}", tmp / f"err-{uuid.uuid4().hex}"
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    audit: list = []
    try:
        pid, listener = spawn_filtered(argv, program, cgroup, out_fd, err_fd, env)
    finally:
        os.close(out_fd)
        os.close(err_fd)
    supervisor = None
    serving = None
    failures: list[BaseException] = []
    # As launch(): SIGCHLD blocked in the supervisor's threads (an exec stop wakes the compiled
    # receiver through a signalfd), never in the agent.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    if supervise:
        supervisor = Supervisor(listener, decide, session_id="test", audit=audit_sink or audit.append, approve=approve,
                                approve_timeout=approve_timeout, cgroup_dir=cgroup, decision_keys=decision_keys,
                                fast_repeats=decision_keys is not None, credentials_watched=decision_keys is not None)
        serving = threading.Thread(target=_serve, args=(supervisor, failures), daemon=True)
        serving.start()
    else:
        os.close(listener)
    killer = threading.Timer(timeout, lambda: os.kill(pid, signal.SIGKILL))
    killer.start()
    try:
        _, raw = os.waitpid(pid, 0)
    finally:
        killer.cancel()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if serving is not None:
        if cgroup:  # orphaned grandchildren would keep the listener open
            _kill_cgroup(cgroup)
        serving.join(timeout=10)
        supervisor.stop()
        os.close(listener)
    run = Run(_status(raw), out_path.read_bytes(), err_path.read_bytes(), audit,
              supervisor.stats if supervisor else collections.Counter())
    out_path.unlink()
    err_path.unlink()
    if failures:  # the launcher would have killed the sandbox and exited 125: never a silent pass
        raise AssertionError(f"the supervisor failed: {failures[0]!r}") from failures[0]
    return run


def _serve(supervisor, failures: list) -> None:
    try:
        supervisor.serve()
    except BaseException as exc:  # noqa: BLE001 - reported by run_sandboxed in the test's thread
        failures.append(exc)


# The agent side of a debugger from outside: the holder writes its pid to READY, then waits until
# traced (at most 20 s) and says whether it is; it then execs what follows.
WAIT_FOR_TRACER = (
    "import os, time\n"
    "def wait_for_tracer(ready):\n"
    "    open(ready, 'w').write(str(os.getpid()))\n"
    "    deadline = time.monotonic() + 20\n"
    "    while 'TracerPid:\\t0' in open('/proc/self/status').read() and time.monotonic() < deadline:\n"
    "        time.sleep(0.01)\n"
    "    print('TracerPid:\\t0' not in open('/proc/self/status').read(), flush=True)\n")


@contextmanager
def outside_tracer(cbin, ready: Path):
    """A host debugger (c/outside_tracer.c) seizing the pid written to ``ready`` once it appears;
    yields a dict whose "run" is its CompletedProcess once the block is left."""
    traced: dict = {}

    def trace() -> None:
        deadline = time.monotonic() + 20
        while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        traced["run"] = subprocess.run([cbin("outside_tracer"), ready.read_text()], capture_output=True, timeout=60)
    thread = threading.Thread(target=trace)
    thread.start()
    try:
        yield traced
    finally:
        thread.join(60)


def in_thread(body):
    """Run ``body`` in a fresh thread and return its result or raise its exception (per-thread state
    such as affinity or kept task files stays out of the test's own thread)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = body()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
