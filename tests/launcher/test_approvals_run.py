"""Deferred syscalls of a real sandboxed agent, answered from another process or on a pty."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from launcher import control

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
# Writes one file under the deferred directory (argv[1]) per name in argv[4:], each on its own
# thread (argv[3]: "parallel", or "serial": one after the other), while a ticker thread counts in
# argv[2]: it must keep counting while a write waits.
AGENT = r"""
import os, sys, threading, time
target, progress, mode, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
stop = threading.Event()
def tick():
    n = 0
    while not stop.is_set():
        n += 1
        with open(progress, "r+" if n > 1 else "w") as f:  # never truncated: a reader sees a whole count
            f.write(f"{n:012d}")
        time.sleep(0.05)
def write(name):
    try:
        with open(os.path.join(target, name), "w") as f:
            f.write("done")
        print(f"{name} ok", flush=True)
    except OSError as e:
        print(f"{name} errno={e.errno}", flush=True)
threading.Thread(target=tick, daemon=True).start()
writers = [threading.Thread(target=write, args=(n,)) for n in names]
for w in writers:
    w.start()
    w.join() if mode == "serial" else time.sleep(0.2)
for w in writers:
    w.join()
stop.set()
"""


@pytest.fixture
def world(tmp_path: Path):
    """A deferred directory, a policy deferring writes into it, a private runtime dir."""
    deferred = Path(f"/tmp/x-{uuid.uuid4().hex[:8]}")
    deferred.mkdir()
    policy = tmp_path / "defer.fpl"
    policy.write_text(f'agent a {{\n  default permit\n  rules {{\n    defer fs/write when args.path startsWith '
                      f'"{deferred}/" reason: "writes under {deferred} need a person"\n  }}\n}}\n')
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(tmp_path / "run"),
           "FARAMESH_SANDBOX_CONFIG": str(tmp_path / "none.toml")}
    yield {"dir": deferred, "policy": policy, "agent": agent, "env": env, "tmp": tmp_path,
           "audit": tmp_path / "audit.jsonl", "progress": tmp_path / "progress"}
    for child in deferred.iterdir():
        child.unlink()
    deferred.rmdir()


def run_argv(world, *names: str, options: tuple[str, ...] = ("--no-prompt",), mode: str = "parallel") -> list[str]:
    return [sys.executable, "-m", "launcher", "run", "--policy", str(world["policy"]), "--no-audit-db",
            "--no-sdk-socket", "--audit", str(world["audit"]), *options, "--",
            sys.executable, str(world["agent"]), str(world["dir"]), str(world["progress"]), mode, *names]


def start(world, *names: str, options: tuple[str, ...] = ("--no-prompt",), mode: str = "parallel"):
    return subprocess.Popen(run_argv(world, *names, options=options, mode=mode), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=world["env"], start_new_session=True)


def approvals(world, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", "approvals", *args], capture_output=True,
                          text=True, env=world["env"], timeout=30)


def wait_pending(world, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # polled in-process: the answers below go through the CLI
        try:
            pending = control.request({"op": "list"}, directory=world["env"]["FARAMESH_SANDBOX_RUNTIME_DIR"])["pending"]
        except control.ControlError:
            pending = []
        if len(pending) >= count:
            return pending
        time.sleep(0.05)
    raise AssertionError(f"{count} approval(s) never became pending")


def finish(run: subprocess.Popen) -> tuple[int, str, str]:
    out, err = run.communicate(timeout=30)
    return run.returncode, out, err


def audit_of(world, kind: str) -> list[dict]:
    lines = [json.loads(line) for line in world["audit"].read_text().splitlines()]
    return [r for r in lines if r.get("kind") == kind]


def test_write_waits_while_the_agent_runs_then_proceeds_when_approved(world):
    """A held write succeeds once `approvals approve` answers from another process; meanwhile the
    agent's other thread kept working."""
    run = start(world, "a")
    [pending] = wait_pending(world)
    assert (pending["tool"], pending["args"]["path"]) == ("fs/write", f"{world['dir']}/a")
    before = int(world["progress"].read_text() or 0)
    time.sleep(0.5)
    assert int(world["progress"].read_text() or 0) > before
    assert approvals(world, "approve", pending["id"]).returncode == 0
    assert finish(run)[:2] == (0, "a ok\n")
    assert (world["dir"] / "a").read_text() == "done"
    [record] = audit_of(world, "approval")
    assert (record["scope"], record["reason_code"], record["args"]["path"]) == \
        ("once", "APPROVAL_GRANTED", f"{world['dir']}/a")


def test_denied_write_fails_with_eacces(world):
    """`approvals deny` makes the held write fail with EACCES (13); nothing is written."""
    run = start(world, "a")
    [pending] = wait_pending(world)
    assert approvals(world, "deny", pending["id"]).returncode == 0
    assert finish(run)[:2] == (0, "a errno=13\n")
    assert not (world["dir"] / "a").exists()
    assert [r["reason_code"] for r in audit_of(world, "denial")] == ["APPROVAL_DENIED"]


def test_unanswered_write_expires(world):
    """With --approve-timeout 1 and nobody answering, the write fails with EACCES, recorded as expiry."""
    run = start(world, "a", options=("--no-prompt", "--approve-timeout", "1"))
    assert finish(run)[:2] == (0, "a errno=13\n")
    assert [r["reason_code"] for r in audit_of(world, "expiry")] == ["APPROVAL_EXPIRED"]


def test_session_approval_covers_the_same_write_again(world):
    """After approve --for-session, the identical second write goes through without a new approval."""
    run = start(world, "a", "a", mode="serial")
    [pending] = wait_pending(world)
    assert approvals(world, "approve", pending["id"], "--for-session").returncode == 0
    assert finish(run)[:2] == (0, "a ok\na ok\n")
    assert [(r["scope"], r["reason_code"]) for r in audit_of(world, "approval")] == \
        [("session", "APPROVAL_GRANTED"), ("session", "SESSION_APPROVAL")]


def test_writes_beyond_max_pending_are_denied_at_once(world):
    """With --max-pending 1, a second held write fails at once (TOO_MANY_PENDING) while the first waits."""
    run = start(world, "a", "b", options=("--no-prompt", "--max-pending", "1"))
    [pending] = wait_pending(world)
    deadline = time.monotonic() + 10
    while not audit_of(world, "denial") and time.monotonic() < deadline:
        time.sleep(0.05)
    [refused] = audit_of(world, "denial")
    assert (refused["reason_code"], refused["args"]["path"]) == ("TOO_MANY_PENDING", f"{world['dir']}/b")
    approvals(world, "approve", pending["id"])
    assert finish(run)[:2] == (0, "b errno=13\na ok\n")


def test_control_socket_is_unreachable_inside_the_sandbox(world):
    """While a run's control socket exists on the host, an agent (of another run) sees an empty
    directory at its place and connecting to its path fails with ENOENT."""
    probe = world["tmp"] / "probe.py"
    probe.write_text("import os, socket, sys\n"
                     "print(sorted(os.listdir(os.path.dirname(sys.argv[1]))))\n"
                     "s = socket.socket(socket.AF_UNIX)\n"
                     "try:\n    s.connect(sys.argv[1])\n    print('connected')\n"
                     "except OSError as e:\n    print('errno', e.errno)\n")
    holder = start(world, "a")
    [pending] = wait_pending(world)
    sock = world["tmp"] / "run" / f"{pending['session']}.sock"
    assert sock.is_socket()
    run = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(world["policy"]),
                          "--no-audit-db", "--no-sdk-socket", "--no-prompt", "--", sys.executable, str(probe),
                          str(sock)], capture_output=True, text=True, env=world["env"], timeout=30)
    assert (run.returncode, run.stdout) == (0, "[]\nerrno 2\n")
    assert approvals(world, "deny", pending["id"], "--session", pending["session"]).returncode == 0
    assert finish(holder)[:2] == (0, "a errno=13\n")


def read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline or not select.select([fd], [], [], deadline - time.monotonic())[0]:
            raise AssertionError(f"never saw {needle!r} in {seen!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the pty's other side closed
            chunk = b""
        if not chunk:
            raise AssertionError(f"terminal closed before {needle!r} in {seen!r}")
        seen += chunk
    return seen


@pytest.mark.parametrize(("typed", "result"), [(b"a\n", b"a ok"), (b"d\n", b"a errno=13")])
def test_terminal_prompt_answers_on_the_launchers_tty(world, typed: bytes, result: bytes):
    """On a pty, the prompt shows tool, arguments, rule and reason; typing a approves, d denies
    (the agent shares that pty: asked there only with --prompt-shared-terminal)."""
    argv = run_argv(world, "a", options=("--prompt-shared-terminal",))
    pid, master = pty.fork()
    if pid == 0:
        os.execve(sys.executable, argv, world["env"])
    try:
        shown = read_until(master, b"for this session? ")
        assert b"  tool:   fs/write\r\n" in shown and b"  rule:   fpl-0\r\n" in shown
        assert f"  reason: writes under {world['dir']} need a person\r\n".encode() in shown
        assert f'"path": "{world["dir"]}/a"'.encode() in shown
        os.write(master, typed)
        read_until(master, result)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0
    assert audit_of(world, "approval" if typed == b"a\n" else "denial")[0]["approver"].startswith("tty /dev/pts/")


def test_no_prompt_leaves_the_terminal_alone(world):
    """With --no-prompt on a pty nothing is asked there; the control socket still answers."""
    pid, master = pty.fork()
    if pid == 0:
        os.execve(sys.executable, run_argv(world, "a"), world["env"])
    try:
        [pending] = wait_pending(world)
        assert approvals(world, "approve", pending["id"]).returncode == 0
        shown = read_until(master, b"a ok")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert (os.waitstatus_to_exitcode(status), b"approve [a]" in shown) == (0, False)


def test_deferred_exec_runs_once_approved(world):
    """A deferred exec waits (the agent thawed meanwhile) and runs once approved from another process."""
    world["policy"].write_text('agent a {\n  default permit\n  rules {\n    defer shell/exec when args.program == '
                               '"true" reason: "true needs a person"\n  }\n}\n')
    run = subprocess.Popen([sys.executable, "-m", "launcher", "run", "--policy", str(world["policy"]), "--no-audit-db",
                            "--no-sdk-socket", "--no-prompt", "--", "/bin/sh", "-c", "/bin/true; echo rc=$?"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=world["env"])
    [pending] = wait_pending(world)
    assert (pending["tool"], pending["args"]["program"], pending["reason"]) == ("shell/exec", "true", "true needs a person")
    assert approvals(world, "approve", pending["id"]).returncode == 0
    assert finish(run)[:2] == (0, "rc=0\n")


def test_killed_launcher_takes_its_approval_service_along(world):
    """SIGKILL of the launcher ends the approval service, which removes its socket."""
    run = start(world, "a")
    [pending] = wait_pending(world)
    sock = world["tmp"] / "run" / f"{pending['session']}.sock"
    assert sock.is_socket()
    run.kill()
    run.wait()
    deadline = time.monotonic() + 10
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (sock.exists(), approvals(world, "list").returncode) == (False, 1)


def test_prompt_drops_a_call_answered_through_the_socket(world):
    """Prompt and control socket are live at once: an answer from another terminal ends the question."""
    pid, master = pty.fork()
    if pid == 0:
        os.execve(sys.executable, run_argv(world, "a", options=("--prompt-shared-terminal",)), world["env"])
    try:
        read_until(master, b"for this session? ")
        [pending] = wait_pending(world)
        assert approvals(world, "deny", pending["id"]).returncode == 0
        shown = read_until(master, b"(answered elsewhere)")
        if b"a errno=13" not in shown:  # the agent's line and the prompt's may come in either order
            shown += read_until(master, b"a errno=13")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert f"approval {pending['id']} is denied (answered elsewhere)".encode() in shown
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_terminal_the_agent_writes_to_only_announces_approvals(world):
    """The agent writes to the launcher's pty, so it could draw over a question: by default each
    waiting call is announced there in one line, never asked, and answered from elsewhere."""
    pid, master = pty.fork()
    if pid == 0:
        os.execve(sys.executable, run_argv(world, "a", options=()), world["env"])
    try:
        [pending] = wait_pending(world)
        shown = read_until(master, f"approvals show {pending['id']} --session {pending['session']}".encode())
        os.write(master, b"a\n")  # typed on the shared terminal: answers nothing
        time.sleep(0.5)
        assert control.request({"op": "list"}, directory=world["env"]["FARAMESH_SANDBOX_RUNTIME_DIR"])["pending"]
        assert approvals(world, "deny", pending["id"], "--session", pending["session"]).returncode == 0
        shown += read_until(master, b"a errno=13")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert (os.waitstatus_to_exitcode(status), b"approve [a]" in shown) == (0, False)


def test_a_terminal_is_shared_through_any_of_its_names():
    """The controlling terminal as its pts, as /dev/tty, or not at all (a pipe, no terminal)."""
    probe = ("import os, sys; from launcher.prompt import agent_shares_terminal as shares; "
             "r, w = os.pipe(); tty = os.open('/dev/tty', os.O_WRONLY); "
             "print(shares((1,)), shares((tty,)), shares((r, w)))")
    pid, master = pty.fork()
    if pid == 0:
        os.environ["PYTHONPATH"] = str(ROOT)
        os.execv(sys.executable, [sys.executable, "-c", probe])
    try:
        shown = read_until(master, b"\n")
    finally:
        os.waitpid(pid, 0)
        os.close(master)
    assert shown.split() == [b"True", b"True", b"False"]
    no_terminal = subprocess.run([sys.executable, "-c", probe.replace("tty = os.open('/dev/tty', os.O_WRONLY)", "tty = 1")],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                 start_new_session=True)
    assert no_terminal.stdout.split() == ["False", "False", "False"], no_terminal.stderr
