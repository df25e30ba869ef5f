"""The approvals control socket flooded while an agent runs: decisions go on, approvals still work."""

from __future__ import annotations

import os
import resource
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from launcher import cleanup, control
from tests.faults.conftest import Launch

pytestmark = pytest.mark.kernel
FLOOD = 300
# A ticker thread rewrites argv[2] every 50 ms (each open a decided fs/write); the main thread
# writes argv[1]/a, then argv[1]/b, both held for approval, and reports each.
AGENT = r"""
import os, sys, threading, time
held, progress = sys.argv[1], sys.argv[2]
stop = threading.Event()
def tick():
    n = 0
    while not stop.is_set():
        n += 1
        with open(progress, "w") as f:
            f.write(str(n))
        time.sleep(0.05)
threading.Thread(target=tick, daemon=True).start()
for name in ("a", "b"):
    try:
        with open(os.path.join(held, name), "w") as f:
            f.write("done")
        print(f"{name} ok", flush=True)
    except OSError as e:
        print(f"{name} errno={e.errno}", flush=True)
stop.set()
"""
GARBAGE = [b"\xff\xfe\x00garbage\n", b"{\n", b"[1, 2, 3]\n", b'{"op": "approve", "id": 7}\n',
           b'{"op": "nope"}\n', b"x" * 100_000 + b"\n"]


def wait_pending(runtime: Path, path: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pending = control.request({"op": "list"}, directory=str(runtime))["pending"]
        except control.ControlError:
            pending = []
        found = [p for p in pending if p["args"]["path"] == path]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"{path} never became pending")


def tree_usage(pid: int) -> tuple[int, int]:
    """(descriptors, threads) summed over the launcher and its descendants."""
    fds = threads = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            fds += proc.num_fds()
            threads += proc.num_threads()
        except psutil.Error:
            continue
    return fds, threads


def settled_usage(pid: int, baseline: tuple[int, int]) -> tuple[int, int]:
    """tree_usage once it is back within 5 of ``baseline`` (or after 10 s)."""
    deadline = time.monotonic() + 10
    usage = tree_usage(pid)
    while time.monotonic() < deadline and (usage[0] > baseline[0] + 5 or usage[1] > baseline[1] + 5):
        time.sleep(0.1)
        usage = tree_usage(pid)
    return usage


def flood(path: str) -> list[socket.socket]:
    """FLOOD connections: every other one idle, the rest sending garbage and never reading."""
    conns: list[socket.socket] = []
    opener = threading.Thread(target=_connect_all, args=(path, conns), daemon=True)
    opener.start()
    opener.join(timeout=30)
    assert len(conns) == FLOOD and not opener.is_alive(), f"only {len(conns)} connections were accepted"
    return conns


def _connect_all(path: str, conns: list[socket.socket]) -> None:
    for i in range(FLOOD):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)  # blocking: waits while the 16-deep backlog is full
        conns.append(conn)
        conn.setblocking(False)
        if i % 2:
            try:
                conn.send(GARBAGE[i % len(GARBAGE)] * 3)
            except BlockingIOError:
                pass  # the server stopped reading: this one stays stuck, as a hostile client would
    return conns


def _kill_run(run, launch) -> None:
    """SIGKILL the run's process group (its reaper too), then clean up as the next run's sweep would:
    nothing of the run (its cgroups) stays on the host."""
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    runs = os.path.join(str(launch.runtime), "runs")
    deadline = time.monotonic() + 5
    while os.listdir(runs) and time.monotonic() < deadline:  # the reaper's lock goes with it
        cleanup.sweep(runs)
        time.sleep(0.05)
    assert os.listdir(runs) == []


def test_flooded_control_socket_keeps_deciding_and_approving(tmp_path):
    """300 idle or garbage-sending connections: the agent's writes go on being decided, a legitimate
    client approves both held writes, and once the flood has closed the run's descriptors and threads
    are back to what they were."""
    held = Path(f"/tmp/faults-flood-{uuid.uuid4().hex[:8]}")
    held.mkdir()
    agent, progress = tmp_path / "agent.py", tmp_path / "progress"
    agent.write_text(AGENT)
    policy = (f'agent a {{\n  default permit\n  rules {{\n    defer fs/write when args.path startsWith "{held}/" '
              f'reason: "held"\n  }}\n}}\n')
    launch = Launch(tmp_path, policy)
    run = launch.start(["python3", agent, held, progress], options=("--approve-timeout", "120"))
    try:
        first = wait_pending(launch.runtime, f"{held}/a")
        baseline = tree_usage(run.pid)
        sock = control.socket_path(str(launch.runtime), first["session"])
        conns = flood(sock)
        time.sleep(0.5)
        during = tree_usage(run.pid)
        ticks = int(progress.read_text() or 0)
        time.sleep(0.5)
        assert int(progress.read_text() or 0) > ticks  # the agent's decisions went on
        reply = control.request({"op": "approve", "id": first["id"]}, directory=str(launch.runtime))
        assert (reply["ok"], reply["approval"]["state"]) == (True, "approved")
        for conn in conns:
            conn.close()
        after = settled_usage(run.pid, baseline)
        second = wait_pending(launch.runtime, f"{held}/b")
        reply = control.request({"op": "approve", "id": second["id"]}, directory=str(launch.runtime))
        assert (reply["ok"], reply["approval"]["state"]) == (True, "approved")
        out, err = run.communicate(timeout=30)
        assert (run.returncode, out) == (0, "a ok\nb ok\n"), err[-2000:]
        assert during[0] - baseline[0] >= FLOOD - 5  # the flood reached the service (the agent's own fds vary)
        assert (after[0] <= baseline[0] + 5, after[1] <= baseline[1] + 5) == (True, True), (baseline, during, after)
        assert [(held / n).read_text() for n in ("a", "b")] == ["done", "done"]
    finally:
        if run.poll() is None:
            _kill_run(run, launch)
        for child in held.iterdir():
            child.unlink()
        held.rmdir()


def service_of(launcher_pid: int, sock: str) -> psutil.Process:
    """The launcher's child that listens on the control socket."""
    for proc in psutil.Process(launcher_pid).children(recursive=True):
        if any(c.laddr == sock for c in proc.net_connections(kind="unix")):
            return proc
    raise AssertionError(f"nothing listens on {sock}")


def test_control_socket_recovers_after_the_service_runs_out_of_descriptors(tmp_path):
    """Connections beyond the approval service's descriptor limit are refused, and once they close a
    legitimate client approves the held write."""
    held = Path(f"/tmp/faults-flood-{uuid.uuid4().hex[:8]}")
    held.mkdir()
    agent, progress = tmp_path / "agent.py", tmp_path / "progress"
    agent.write_text(AGENT)
    policy = (f'agent a {{\n  default permit\n  rules {{\n    defer fs/write when args.path startsWith "{held}/" '
              f'reason: "held"\n  }}\n}}\n')
    launch = Launch(tmp_path, policy)
    run = launch.start(["python3", agent, held, progress], options=("--approve-timeout", "60"))
    try:
        first = wait_pending(launch.runtime, f"{held}/a")
        sock = control.socket_path(str(launch.runtime), first["session"])
        service = service_of(run.pid, sock)
        limit = max(int(fd) for fd in os.listdir(f"/proc/{service.pid}/fd")) + 1 + 10
        resource.prlimit(service.pid, resource.RLIMIT_NOFILE, (limit, limit))
        conns = []
        for _ in range(40):  # accepted up to the limit, then left in the backlog or refused
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.setblocking(False)
            try:
                conn.connect(sock)
            except BlockingIOError:
                pass
            conns.append(conn)
        time.sleep(0.5)
        for conn in conns:
            conn.close()
        time.sleep(0.5)
        replies: list = []

        def ask():
            try:
                reply = control.request({"op": "approve", "id": first["id"]}, directory=str(launch.runtime))
                replies.append((reply["ok"], reply["approval"]["state"]))
            except (control.ControlError, OSError) as err:
                replies.append(repr(err))

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        asker.join(timeout=5)
        assert replies == [(True, "approved")]
    finally:
        if run.poll() is None:
            _kill_run(run, launch)
        for child in held.iterdir():
            child.unlink()
        held.rmdir()
