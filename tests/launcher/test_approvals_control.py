"""The approval service process and its control socket, driven by the real
`faramesh-sandbox approvals` CLI in other processes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from launcher import control
from launcher.approvals import ApprovalService
from policy.calls import ToolCall
from policy.decision import Decision, Effect

ROOT = Path(__file__).resolve().parents[2]
DEFER = Decision(Effect.DEFER, rule_id="fpl-0", reason_code="RULE_DEFER", reason="writes under /tmp/x",
                 defer_token="dfr_1")


def write_call(path: str = "/tmp/x/a") -> ToolCall:
    return ToolCall("fs/write", {"path": path, "pid": os.getpid(), "session": "s1"}, session_id="s1")


@pytest.fixture
def rundir(tmp_path: Path, monkeypatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv("FARAMESH_SANDBOX_RUNTIME_DIR", str(directory))
    return directory


@pytest.fixture
def service(rundir: Path):
    started = ApprovalService("s1", str(rundir), prompt=False, max_pending=2)
    yield started
    started.close()


def cli(rundir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(rundir)}
    return subprocess.run([sys.executable, "-m", "launcher", "approvals", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def ask_async(service: ApprovalService, audit: list, call: ToolCall | None = None, timeout: float = 20.0):
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(
        service.approver(audit.append).answer(call or write_call(), DEFER, timeout)))
    thread.start()
    return thread, answers


def wait_pending(rundir: Path, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # polled in-process: the answers below go through the CLI
        pending = control.request({"op": "list"}, directory=str(rundir))["pending"]
        if len(pending) >= count:
            return pending
        time.sleep(0.05)
    raise AssertionError(f"{count} approval(s) never became pending")


def test_control_socket_is_owner_only(service, rundir):
    """The directory is 0700 and the socket 0600, both owned by the launcher's uid."""
    sock = rundir / "s1.sock"
    assert stat.S_IMODE(os.stat(rundir).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert (stat.S_IMODE(os.stat(sock).st_mode), os.stat(sock).st_uid) == (0o600, os.geteuid())


def test_cli_shows_and_approves_a_waiting_call(service, rundir):
    """`approvals show` describes the call and `approvals approve ID` lets it proceed, audited."""
    audit: list = []
    thread, answers = ask_async(service, audit)
    [pending] = wait_pending(rundir)
    shown = cli(rundir, "show", pending["id"])
    assert shown.returncode == 0
    assert "  tool:   fs/write\n" in shown.stdout and "  rule:   fpl-0\n" in shown.stdout
    assert "  reason: writes under /tmp/x\n" in shown.stdout
    approved = cli(rundir, "approve", pending["id"])
    assert (approved.returncode, approved.stdout) == (0, f"{pending['id']} approved (once)\n")
    thread.join(10)
    assert (answers[0].effect, answers[0].reason_code) == (Effect.PERMIT, "APPROVAL_GRANTED")
    [record] = audit
    assert (record["kind"], record["scope"], record["tool"], record["args"]["path"]) == \
        ("approval", "once", "fs/write", "/tmp/x/a")
    assert record["approver"].startswith("socket uid=0 pid=")
    again = cli(rundir, "deny", pending["id"])
    assert (again.returncode, again.stderr) == (1, f"faramesh-sandbox: approval {pending['id']} is already approved "
                                                   f"(by {record['approver']})\n")


def test_cli_deny_for_session_refuses_later_identical_calls(service, rundir):
    """`approvals deny ID --for-session` denies it and every later identical call at once."""
    audit: list = []
    thread, answers = ask_async(service, audit)
    [pending] = wait_pending(rundir)
    assert cli(rundir, "deny", pending["id"], "--for-session").returncode == 0
    thread.join(10)
    later = service.approver(audit.append).answer(write_call(), DEFER, 20.0)
    assert [answers[0].reason_code, later.reason_code] == ["APPROVAL_DENIED", "SESSION_DENIAL"]
    assert [r["kind"] for r in audit] == ["denial", "denial"]


def test_pending_limit_denies_at_once(service, rundir):
    """Beyond --max-pending (2 here) a deferred call is denied immediately with TOO_MANY_PENDING."""
    audit: list = []
    waiting = [ask_async(service, audit, write_call(f"/tmp/x/{n}")) for n in range(2)]
    wait_pending(rundir, 2)
    started = time.monotonic()
    refused = service.approver(audit.append).answer(write_call("/tmp/x/3"), DEFER, 20.0)
    assert time.monotonic() - started < 2.0
    assert (refused.effect, refused.reason_code) == (Effect.DENY, "TOO_MANY_PENDING")
    for view in wait_pending(rundir, 2):
        cli(rundir, "deny", view["id"])
    for thread, _ in waiting:
        thread.join(10)


def test_expired_call_is_denied_and_recorded(service, rundir):
    """An unanswered call expires after its timeout: denied, with an expiry record."""
    audit: list = []
    answer = service.approver(audit.append).answer(write_call(), DEFER, 0.3)
    assert (answer.effect, answer.reason_code) == (Effect.DENY, "APPROVAL_EXPIRED")
    assert [r["kind"] for r in audit] == ["expiry"]


def test_watch_streams_pending_and_resolved(service, rundir):
    """`approvals watch --json` prints the acknowledgement, a pending event, then a resolved one."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(rundir)}
    watcher = subprocess.Popen([sys.executable, "-m", "launcher", "approvals", "watch", "--json"],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert json.loads(watcher.stdout.readline()) == {"ok": True, "session": "s1"}
        thread, _ = ask_async(service, [])
        pending = json.loads(watcher.stdout.readline())
        assert (pending["event"], pending["approval"]["state"]) == ("pending", "pending")
        cli(rundir, "approve", pending["approval"]["id"], "--for-session")
        resolved = json.loads(watcher.stdout.readline())
        assert (resolved["event"], resolved["approval"]["state"], resolved["approval"]["scope"]) == \
            ("resolved", "approved", "session")
        thread.join(10)
    finally:
        watcher.kill()
        watcher.wait()


def test_protocol_errors_are_answered(service, rundir):
    """Malformed JSON and unknown ops get {"ok": false} with a reason, on the same connection."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(rundir / "s1.sock"))
        stream = conn.makefile("rwb")
        stream.write(b"{not json\n" + json.dumps({"op": "fly"}).encode() + b"\n" +
                     json.dumps({"op": "list"}).encode() + b"\n")
        stream.flush()
        bad, unknown, listed = (json.loads(stream.readline()) for _ in range(3))
    assert bad["ok"] is False and bad["error"].startswith("bad request: ")
    assert unknown == {"ok": False, "error": "unknown op 'fly'; use list, show, approve, deny or watch"}
    assert listed == {"ok": True, "session": "s1", "pending": []}


def test_another_uid_is_refused_even_with_an_open_socket():
    """SO_PEERCRED: a peer of another uid gets an error even when the file modes would let it in."""
    rundir = Path(tempfile.mkdtemp(prefix="faramesh-peercred-"))  # /tmp: reachable by uid 65534
    service = ApprovalService("s1", str(rundir), prompt=False)
    reader, writer = os.pipe()
    try:
        os.chmod(rundir, 0o755)
        os.chmod(rundir / "s1.sock", 0o666)
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as conn:
                    conn.connect(str(rundir / "s1.sock"))
                    # The refusal comes at once, before any request: a request sent after it would
                    # meet a closed peer (EPIPE), and one it left unread would reset the connection.
                    os.write(writer, conn.makefile("rb").readline())
            finally:
                os._exit(0)
        os.close(writer)
        os.waitpid(pid, 0)
        with os.fdopen(reader, "rb") as f:
            reply = json.loads(f.read())
    finally:
        service.close()
        os.rmdir(rundir)
    assert reply == {"ok": False, "error": f"uid 65534 may not answer approvals of uid {os.geteuid()}"}


def test_cli_needs_session_when_several_runs_are_live(rundir):
    """With two live runs, the CLI asks for --session; with one given it answers."""
    first = ApprovalService("aaa", str(rundir), prompt=False)
    second = ApprovalService("bbb", str(rundir), prompt=False)
    try:
        ambiguous = cli(rundir, "list")
        assert (ambiguous.returncode, ambiguous.stderr) == \
            (1, "faramesh-sandbox: 2 runs are live (aaa, bbb) — pick one with --session\n")
        picked = cli(rundir, "list", "--session", "bbb")
        assert (picked.returncode, picked.stdout) == (0, "no approvals pending in session bbb\n")
    finally:
        first.close()
        second.close()
    assert sorted(os.listdir(rundir)) == []


def test_cli_without_live_run_says_so(rundir):
    """No run, no socket: the CLI says how to start one."""
    out = cli(rundir, "list")
    assert (out.returncode, out.stderr) == (1, f"faramesh-sandbox: no run is live (no control socket in {rundir}) "
                                               "— start one with `faramesh-sandbox run`\n")


def sdk_govern(path: str, args: dict) -> dict:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(path)
        conn.sendall(json.dumps({"type": "govern", "tool_id": "stripe/refund", "args": args}).encode() + b"\n")
        return json.loads(conn.makefile("rb").readline())


def test_sdk_call_shows_its_origin_and_its_session_answer_covers_no_observed_call(service, rundir, tmp_path):
    """An SDK-reported defer is shown as such (list, show, audit), and approving it for the session pre-approves
    later SDK reports only: the same tool and arguments observed by the sandbox (here, as the egress would name
    an HTTP request) still wait for a person."""
    import policy
    from launcher.sdk_server import SdkServer
    engine = policy.Engine([policy.load_policy('agent a {\n  default deny\n  rules {\n    defer stripe/refund '
                                               'when args.amount > 500 reason: "high value"\n  }\n}\n', "p.fpl")],
                           policy.SessionStore())
    audit: list = []
    server = SdkServer(str(tmp_path / "sdk.sock"), engine.decide, session_id="s1", audit=audit.append,
                       approve=service.approver(audit.append), approve_timeout=20.0).start()
    try:
        args = {"amount": 900, "charge": "ch_1"}
        token = sdk_govern(server.socket_path, args)["defer_token"]
        [pending] = wait_pending(rundir)
        assert (pending["origin"], pending["tool"], pending["args"]) == ("sdk", "stripe/refund", args)
        listed = cli(rundir, "list")
        assert listed.stdout.splitlines()[1].split()[:3] == [pending["id"], "stripe/refund", "sdk"]
        shown = cli(rundir, "show", pending["id"])
        assert "  origin: sdk (reported by the agent over the SDK socket, not observed)\n" in shown.stdout
        assert cli(rundir, "approve", pending["id"], "--for-session").returncode == 0
        deadline = time.monotonic() + 10
        while server.defers.poll(token) == "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
        observed = ToolCall("stripe/refund", dict(args), session_id="s1")  # not an SdkCall: the sandbox saw it
        answer = service.approver(audit.append).answer(observed, DEFER, 0.5)
        assert (answer.effect, answer.reason_code) == (Effect.DENY, "APPROVAL_EXPIRED")
        again = sdk_govern(server.socket_path, args)["defer_token"]
        deadline = time.monotonic() + 10
        while (status := server.defers.poll(again)) == "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert status == "approved"
    finally:
        server.close()
    outcomes = [(r["origin"], r["reason_code"]) for r in audit if r.get("kind") in ("approval", "denial", "expiry")]
    assert outcomes == [("sdk", "APPROVAL_GRANTED"), ("sandbox", "APPROVAL_EXPIRED"), ("sdk", "SESSION_APPROVAL")]


def test_a_sandbox_session_answer_does_not_cover_an_sdk_report(service, rundir):
    """The other way round: "for this session" on an observed call leaves the same call reported over the SDK
    waiting."""
    from launcher.sdk_server import SdkCall
    audit: list = []
    thread, answers = ask_async(service, audit, ToolCall("stripe/refund", {"amount": 900}, session_id="s1"))
    [pending] = wait_pending(rundir)
    assert pending["origin"] == "sandbox"
    assert cli(rundir, "approve", pending["id"], "--for-session").returncode == 0
    thread.join(10)
    reported = service.approver(audit.append).answer(SdkCall("stripe/refund", {"amount": 900}), DEFER, 0.5)
    assert [answers[0].reason_code, reported.reason_code] == ["APPROVAL_GRANTED", "APPROVAL_EXPIRED"]
