"""The SDK socket in a real `faramesh-sandbox run`: an agent using faramesh-sdk, its syscalls and
its reported tool calls under one policy, one session and one audit log."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import launcher.cli
import policy
from launcher import sdk_run
from launcher.sdk_run import serve_run
from sandbox import _libc, _libc_ns
from launcher.sdk_server import SANDBOX_SOCKET_PATH
from sandbox.spec import SandboxSpec

ROOT = Path(__file__).resolve().parents[2]

AGENT = """\
import os, sys
from faramesh import autopatch

class Refund:
    name = "stripe/refund"
    def run(self, amount):
        return f"refunded {amount}"

autopatch._wrap_method(Refund, "run", "agent", lambda self, args, kwargs: self.name)
print("socket", os.environ.get("FARAMESH_SOCKET"), flush=True)
for amount in (100, 5000, 800):
    try:
        print(Refund().run(amount=amount), flush=True)
    except RuntimeError as err:
        print("refused", amount, str(err).split(" (token=")[0], flush=True)
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            print("read", os.path.basename(path), f.read().strip(), flush=True)
    except OSError as err:
        print("open", os.path.basename(path), err.strerror, flush=True)
"""

POLICY = """agent payments {
  default permit
  rules {
    deny stripe/refund when args.amount > 1000 reason: "over the refund ceiling"
    defer stripe/refund when args.amount > 500 reason: "high value refund"
    permit stripe/refund
    deny fs/read when args.path endsWith "secret.txt" reason: "no secrets"
  }
}
"""


def run_agent(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    (tmp_path / "agent.py").write_text(AGENT)
    (tmp_path / "p.fpl").write_text(POLICY)
    (tmp_path / "ok.txt").write_text("fine\n")
    (tmp_path / "secret.txt").write_text("hidden\n")
    audit = tmp_path / "audit.jsonl"
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_DEFER_POLL_INTERVAL_SECONDS": "0.1",
           "FARAMESH_RETRIES": "0", "TMPDIR": str(tmp_path / "tmp")}
    for name in ("FARAMESH_SOCKET", "FARAMESH_REMOTE_URL", "FARAMESH_BASE_URL", "FARAMESH_DEFER_MODE"):
        env.pop(name, None)
    command = [sys.executable, "-m", "launcher", "run", "--policy", str(tmp_path / "p.fpl"), "--audit", str(audit),
               "--no-audit-db", "--no-prompt", "--approve-timeout", "0.5", *extra,
               "--", sys.executable, str(tmp_path / "agent.py"), str(tmp_path / "ok.txt"), str(tmp_path / "secret.txt")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          timeout=60)
    records = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
    return done, records


@pytest.mark.kernel
def test_sdk_calls_and_syscalls_share_policy_session_and_audit(tmp_path: Path):
    """One run: SDK refunds permitted, denied and deferred-then-refused beside real opens, all audited in one session."""
    done, records = run_agent(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"socket {SANDBOX_SOCKET_PATH}",
        "refunded 100",
        "refused 5000 Faramesh DENY: RULE_DENY (tool=stripe/refund)",
        "refused 800 Faramesh DENY: deferred request expired",
        "read ok.txt fine",
        "open secret.txt Permission denied",
    ]
    sdk = [(r["tool"], r["args"], r["effect"], r["reason_code"]) for r in records if r["syscall"] == "sdk"]
    assert sdk == [
        ("stripe/refund", {"amount": 100}, "PERMIT", "RULE_PERMIT"),
        ("stripe/refund", {"amount": 5000}, "DENY", "RULE_DENY"),
        ("stripe/refund", {"amount": 800}, "DEFER", "RULE_DEFER"),
        ("stripe/refund", {"amount": 800}, "DENY", "APPROVAL_EXPIRED"),
    ]
    # The sandbox connects on the agent's behalf: its pid is unknown, and the launcher's is not recorded.
    assert {r["pid"] for r in records if r["syscall"] == "sdk"} == {None}
    secret = [r for r in records if r["tool"] == "fs/read" and str(r["args"].get("path", "")).endswith("secret.txt")]
    assert [(r["effect"], r["reason_code"]) for r in secret] == [("DENY", "RULE_DENY")]
    assert secret[0]["syscall"] in ("open", "openat")
    assert {r["session"] for r in records if r.get("kind", "decision") == "decision"} == {records[0]["session"]}
    assert list((tmp_path / "tmp").iterdir()) == []  # the private socket directory is gone


@pytest.mark.kernel
def test_without_the_socket_the_sdk_fails_closed(tmp_path: Path):
    """--no-sdk-socket: the agent gets no FARAMESH_SOCKET and every SDK call is refused, none run."""
    done, records = run_agent(tmp_path, "--no-sdk-socket")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "socket None"
    assert [line.split(":")[0] for line in lines[1:4]] == [
        "refused 100 Faramesh governance denied", "refused 5000 Faramesh governance denied",
        "refused 800 Faramesh governance denied"]
    assert [r for r in records if r["syscall"] == "sdk"] == []


RAW_AGENT = """\
import json, os, socket
path = os.environ["FARAMESH_SOCKET"]
conn = socket.socket(socket.AF_UNIX)
conn.connect(path)
conn.sendall(json.dumps({"type": "govern", "tool_id": "stripe/refund", "args": {"amount": 100}}).encode() + b"\\n")
print(path, json.loads(conn.recv(65536))["effect"])
"""


@pytest.mark.kernel
def test_non_root_agent_reaches_the_socket():
    """As uid 65534 (user namespace) the agent still reaches the socket: at /run/faramesh when that
    mount point exists, else at the private directory's own path."""
    shared = Path(tempfile.mkdtemp(prefix="faramesh-sdk-nonroot-", dir="/tmp"))  # pytest's tmp is root-only
    parser = launcher.cli.build_parser()  # before forking: as uid 65534 nothing more may be imported
    try:
        shared.chmod(0o777)
        (shared / "p.fpl").write_text(POLICY)
        (shared / "agent.py").write_text(RAW_AGENT)
        fixed = os.path.isdir("/run/faramesh")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 125
            try:
                os.dup2(write_end, 1)
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                _libc.prctl(_libc_ns.PR_SET_DUMPABLE, 1)
                os.environ.update(HOME=str(shared), TMPDIR=str(shared), FARAMESH_SANDBOX_RUNTIME_DIR=str(shared / "run"))
                os.chdir("/")
                args = parser.parse_args(["run", "--policy", str(shared / "p.fpl"), "--no-audit-db", "--no-prompt",
                                          "--no-egress", "--", "/usr/bin/python3", "-I", str(shared / "agent.py")])
                status = args._runner(args)
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end) as out:
            printed = out.read()
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        path, effect = printed.split()
        assert effect == "PERMIT"
        if fixed:
            assert path == "/run/faramesh/faramesh.sock"
        else:
            assert path.startswith(str(shared / "faramesh-sdk-")) and path.endswith("/faramesh.sock")
    finally:
        shutil.rmtree(shared)


def test_serve_run_binds_a_private_directory_at_the_fixed_path():
    """With a mount namespace the private socket directory is bind-mounted at /run/faramesh."""
    engine = policy.Engine([policy.load_policy(POLICY, "p.fpl")], policy.SessionStore())
    spec = SandboxSpec(argv=["true"], env={"PATH": "/usr/bin"}, session_id="s")
    sdk = serve_run(spec, engine.decide)
    try:
        assert spec.binds == [(sdk.host_dir, "/run/faramesh")]
        assert spec.agent_env() == {"PATH": "/usr/bin", "FARAMESH_SOCKET": "/run/faramesh/faramesh.sock"}
        assert stat.S_IMODE(os.stat(sdk.host_dir).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(os.path.join(sdk.host_dir, "faramesh.sock")).st_mode)
    finally:
        sdk.close()
    assert not os.path.exists(sdk.host_dir)


def test_without_the_fixed_mount_point_the_socket_stays_outside_the_hidden_runtime_dir(tmp_path, monkeypatch):
    """A user who cannot make /run/faramesh is given the private directory's own path: it is made in
    TMPDIR, not under the runtime directory the sandbox covers (where the agent could not reach it)."""
    monkeypatch.setenv("FARAMESH_SANDBOX_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sdk_run, "_mount_point_ready", lambda spec: False)
    engine = policy.Engine([policy.load_policy(POLICY, "p.fpl")], policy.SessionStore())
    spec = SandboxSpec(argv=["true"], env={}, session_id="s")
    sdk = serve_run(spec, engine.decide)
    try:
        assert (spec.binds, spec.hidden) == ([], [])
        assert os.path.dirname(sdk.host_dir) == str(tmp_path)
        assert spec.agent_env() == {"FARAMESH_SOCKET": os.path.join(sdk.host_dir, "faramesh.sock")}
    finally:
        sdk.close()


def test_serve_run_without_mount_namespace_uses_the_host_path():
    """Without a mount namespace nothing is mounted and the agent is given the private directory itself."""
    engine = policy.Engine([policy.load_policy(POLICY, "p.fpl")], policy.SessionStore())
    spec = SandboxSpec(argv=["true"], env={}, session_id="s", namespaces=frozenset({"pid"}))
    sdk = serve_run(spec, engine.decide)
    try:
        assert spec.binds == []
        assert spec.agent_env() == {"FARAMESH_SOCKET": os.path.join(sdk.host_dir, "faramesh.sock")}
        assert sdk.agent_socket_path == spec.agent_env()["FARAMESH_SOCKET"]
    finally:
        sdk.close()


OTHER_RUN_AGENT = """
import os, socket, sys
def reach(path):
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(path)
        return "ok"
    except OSError as err:
        return f"errno:{err.errno}"
print("own=" + reach(os.environ.get("FARAMESH_SOCKET", sys.argv[1])))
print("other=" + reach(sys.argv[1]))
runs = os.path.dirname(os.path.dirname(sys.argv[1]))
print("runs=" + ("seen" if os.path.isdir(runs) and os.listdir(runs) else "unseen"))
"""


@pytest.mark.kernel
def test_an_agent_cannot_reach_another_runs_sdk_socket(tmp_path):
    """Two runs under one runtime directory: outside the sandbox the first run's socket answers;
    the second run's agent reaches its own socket, but neither sees nor reaches the first run's
    (which would answer with that run's policy and write to its audit)."""
    runtime = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))  # short: a unix socket path has 107 bytes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(runtime),
           "FARAMESH_SANDBOX_CONFIG": str(tmp_path / "none.toml")}
    policy_file = tmp_path / "p.fpl"
    policy_file.write_text("agent a {\n  default permit\n}\n")
    run = [sys.executable, "-m", "launcher", "run", "--policy", str(policy_file), "--no-audit-db", "--no-prompt",
           "--no-egress", "--"]
    first = subprocess.Popen([*run, "sleep", "60"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (sockets := list((runtime / "sdk").glob("faramesh-sdk-*/faramesh.sock"))):
            assert time.monotonic() < deadline and first.poll() is None, "the first run's socket never appeared"
            time.sleep(0.05)
        probe = [sys.executable, "-c", OTHER_RUN_AGENT, str(sockets[0])]
        outside = subprocess.run(probe, capture_output=True, text=True, env=env)
        assert outside.stdout.splitlines() == ["own=ok", "other=ok", "runs=seen"], outside.stderr
        inside = subprocess.run([*run, *probe], capture_output=True, text=True, env=env, timeout=60)
        assert inside.stdout.splitlines() == ["own=ok", "other=errno:2", "runs=unseen"], inside.stderr
    finally:
        first.kill()
        first.wait()
        shutil.rmtree(runtime, ignore_errors=True)
