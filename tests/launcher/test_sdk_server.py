"""SdkServer driven by the real faramesh-sdk client: permit, deny, defer and approval, a session
shared with syscall-style calls, and the audit records it writes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from faramesh import ToolDeniedException, autopatch
from faramesh.governed_toolset import _parse_govern_result as parse_govern_result
from faramesh.transport import detect_transport, govern_via_transport

import policy
from launcher.sdk_server import SdkServer
from policy.calls import ToolCall

REFUNDS = """agent payments {
  default deny
  rules {
    deny stripe/refund when args.amount > 1000 reason: "over the refund ceiling"
    defer stripe/refund when args.amount > 500 reason: "high value refund"
    permit stripe/refund
    permit fs/read
  }
  budget session { max_calls 4 on_exceed deny }
}
"""


def make_engine(text: str = REFUNDS) -> policy.Engine:
    return policy.Engine([policy.load_policy(text, "refunds.fpl")], policy.SessionStore())


def refund_tool():
    """A framework-style tool class whose dispatch the SDK's own interceptor wraps."""
    class Refund:
        name = "stripe/refund"
        calls: list = []

        def run(self, **kwargs):
            Refund.calls.append(kwargs)
            return f"refunded {kwargs['amount']}"

    assert autopatch._wrap_method(Refund, "run", "test", lambda self, args, kwargs: self.name)
    return Refund


@pytest.fixture
def sdk_env(tmp_path: Path, monkeypatch):
    """FARAMESH_SOCKET and fast polling for the SDK, and a starter for the server under test."""
    path = str(tmp_path / "faramesh.sock")
    monkeypatch.setenv("FARAMESH_SOCKET", path)
    monkeypatch.setenv("FARAMESH_AGENT_ID", "payments")
    monkeypatch.setenv("FARAMESH_DEFER_POLL_INTERVAL_SECONDS", "0.05")
    monkeypatch.setenv("FARAMESH_DEFER_WAIT_TIMEOUT_SECONDS", "10")
    monkeypatch.delenv("FARAMESH_REMOTE_URL", raising=False)
    monkeypatch.delenv("FARAMESH_BASE_URL", raising=False)
    monkeypatch.setenv("FARAMESH_RETRIES", "0")  # the SDK's HTTP fallback: fail at once when unreachable
    monkeypatch.delenv("FARAMESH_DEFER_MODE", raising=False)
    servers = []

    def start(engine=None, approve=None, approve_timeout=5.0, audit=None):
        records = []
        server = SdkServer(path, (engine or make_engine()).decide, session_id="run-1",
                           audit=audit or records.append, approve=approve,
                           approve_timeout=approve_timeout).start()
        servers.append(server)
        return server, records

    yield start
    for server in servers:
        server.close()


def test_permitted_call_runs_and_is_audited_like_a_syscall(sdk_env):
    """A permitted SDK call runs the tool and leaves a supervisor-shaped audit record."""
    _, records = sdk_env()
    Refund = refund_tool()
    assert Refund().run(amount=100) == "refunded 100"
    assert len(records) == 1
    record = records[0]
    assert {k: record[k] for k in ("session", "syscall", "kind", "tool", "args", "effect", "rule_id",
                                   "reason_code", "agent_id", "pid")} == {
        "session": "run-1", "syscall": "sdk", "kind": "decision", "tool": "stripe/refund",
        "args": {"amount": 100}, "effect": "PERMIT", "rule_id": "fpl-2", "reason_code": "RULE_PERMIT",
        "agent_id": "payments", "pid": None}  # this process is the peer: see test_peer_pid_*
    assert len(record["policy_version"]) == 16


def test_denied_call_raises_in_the_sdk_and_the_tool_never_runs(sdk_env):
    """A DENY reaches the SDK, which raises with the reason code; the tool body is skipped."""
    _, records = sdk_env()
    Refund = refund_tool()
    with pytest.raises(RuntimeError, match=r"^Faramesh DENY: RULE_DENY \(tool=stripe/refund\)$"):
        Refund().run(amount=5000)
    assert Refund.calls == []
    assert [(r["effect"], r["reason_code"], r["reason"]) for r in records] == [
        ("DENY", "RULE_DENY", "over the refund ceiling")]


def test_transport_reports_permit_deny_and_defer_details(sdk_env):
    """The SDK transport (what GovernedToolSet calls) gets effect, codes, rule and defer token."""
    _, records = sdk_env()
    transport = detect_transport()
    assert (transport.mode, transport.socket_path) == ("socket", os.environ["FARAMESH_SOCKET"])

    def govern(amount):
        result = govern_via_transport(transport, "stripe/refund", {"amount": amount}, agent_id="payments")
        parse_govern_result(result)  # raises ToolDeniedException unless PERMIT
        return result

    assert govern(10) == {"effect": "PERMIT", "reason_code": "RULE_PERMIT", "defer_token": ""}
    with pytest.raises(ToolDeniedException) as denied:
        govern(2000)
    assert (denied.value.effect, denied.value.code, denied.value.rule_id, denied.value.human_message) == (
        "DENY", "RULE_DENY", "fpl-0", "over the refund ceiling")
    with pytest.raises(ToolDeniedException) as deferred:
        govern(600)
    assert (deferred.value.effect, deferred.value.code) == ("DEFER", "RULE_DEFER")
    assert deferred.value.defer_token.startswith("dfr_") and len(deferred.value.defer_token) == 36
    assert [(r["tool"], r["args"], r["agent_id"]) for r in records] == [
        ("stripe/refund", {"amount": 10}, "payments"), ("stripe/refund", {"amount": 2000}, "payments"),
        ("stripe/refund", {"amount": 600}, "payments")]


def test_deferred_call_runs_once_approved(sdk_env):
    """DEFER: the SDK polls until the approve callable grants, then runs the tool."""
    asked = []

    def approve(call, decision, timeout):
        asked.append((call.tool, call.args, call.session_id, call.agent_id, decision.reason_code, timeout))
        return True
    _, records = sdk_env(approve=approve, approve_timeout=7.0)
    Refund = refund_tool()
    assert Refund().run(amount=800) == "refunded 800"
    assert asked == [("stripe/refund", {"amount": 800}, "run-1", "payments", "RULE_DEFER", 7.0)]
    assert [(r["effect"], r["reason_code"]) for r in records] == [("DEFER", "RULE_DEFER"),
                                                                  ("PERMIT", "APPROVAL_GRANTED")]
    assert records[0]["defer_token"] == records[1]["defer_token"]
    assert records[0]["call_id"] == records[1]["call_id"]


def test_deferred_call_refused_by_the_approver_raises(sdk_env):
    """DEFER then refusal: the SDK raises 'deferred request denied' and the tool never runs."""
    _, records = sdk_env(approve=lambda call, decision, timeout: False)
    Refund = refund_tool()
    with pytest.raises(RuntimeError, match=r"^Faramesh DENY: deferred request denied \(token=dfr_"):
        Refund().run(amount=800)
    assert Refund.calls == []
    assert [(r["effect"], r["reason_code"]) for r in records] == [("DEFER", "RULE_DEFER"),
                                                                  ("DENY", "APPROVAL_DENIED")]


def test_deferred_call_without_an_approver_expires(sdk_env):
    """With no approval path a DEFER expires after approve_timeout, which the SDK treats as deny."""
    _, records = sdk_env(approve=None, approve_timeout=0.3)
    Refund = refund_tool()
    with pytest.raises(RuntimeError, match=r"^Faramesh DENY: deferred request expired \(token=dfr_"):
        Refund().run(amount=800)
    assert Refund.calls == []
    assert [(r["effect"], r["reason_code"]) for r in records] == [("DEFER", "RULE_DEFER"),
                                                                  ("DENY", "APPROVAL_TIMEOUT")]


def test_failing_approver_denies(sdk_env):
    """An approve callable that raises denies the deferred call (fail closed)."""
    def broken(call, decision, timeout):
        raise OSError("approval channel down")
    _, records = sdk_env(approve=broken)
    Refund = refund_tool()
    with pytest.raises(RuntimeError, match="deferred request denied"):
        Refund().run(amount=800)
    assert records[-1]["reason_code"] == "APPROVAL_ERROR"
    assert records[-1]["reason"] == "approval failed: OSError: approval channel down (high value refund)"


def test_budget_is_shared_with_syscall_calls_of_the_same_session(sdk_env):
    """Syscall-style calls and SDK calls count against one session budget in one engine."""
    engine = make_engine()
    _, records = sdk_env(engine=engine)
    syscall = ToolCall("fs/read", {"path": "/etc/hosts"}, session_id="run-1", timestamp=1.0)
    assert engine.decide(syscall).effect is policy.Effect.PERMIT
    assert engine.decide(syscall).effect is policy.Effect.PERMIT
    Refund = refund_tool()
    assert Refund().run(amount=1) == "refunded 1"  # call 3
    assert engine.decide(syscall).effect is policy.Effect.PERMIT  # call 4
    with pytest.raises(RuntimeError, match=r"^Faramesh DENY: SESSION_TOOL_LIMIT "):
        Refund().run(amount=1)  # call 5: over max_calls 4
    assert engine.decide(syscall).reason_code == "SESSION_TOOL_LIMIT"
    assert [r["reason_code"] for r in records] == ["RULE_PERMIT", "SESSION_TOOL_LIMIT"]


def test_audit_failure_turns_a_permit_into_a_deny(sdk_env):
    """A permit that cannot be recorded is not granted: the SDK is told DENY AUDIT_WRITE_FAILED."""
    def failing_audit(record):
        raise OSError("disk full")
    sdk_env(audit=failing_audit)
    Refund = refund_tool()
    with pytest.raises(RuntimeError, match=r"^Faramesh DENY: AUDIT_WRITE_FAILED "):
        Refund().run(amount=100)
    assert Refund.calls == []


def test_engine_exception_denies(sdk_env):
    """A decide() that raises becomes DENY DECIDE_ERROR, never a permit."""
    class Exploding:
        def decide(self, call):
            raise ValueError("boom")
    _, records = sdk_env(engine=Exploding())
    Refund = refund_tool()
    with pytest.raises(RuntimeError, match=r"^Faramesh DENY: DECIDE_ERROR "):
        Refund().run(amount=100)
    assert records[0]["reason"] == "policy evaluation failed: ValueError: boom"


def test_stopped_server_fails_closed_in_the_sdk(sdk_env):
    """After close() the socket is gone and the SDK refuses the call instead of running it."""
    server, _ = sdk_env()
    server.close()
    assert not os.path.exists(server.socket_path)
    Refund = refund_tool()
    with pytest.raises(RuntimeError, match="^Faramesh governance denied"):
        Refund().run(amount=100)
    assert Refund.calls == []


def test_concurrent_calls_are_all_decided(sdk_env):
    """Calls from several threads at once each get their own decision."""
    _, records = sdk_env(engine=make_engine(REFUNDS.replace("max_calls 4", "max_calls 100")))
    Refund = refund_tool()
    results = []
    threads = [threading.Thread(target=lambda n=n: results.append(Refund().run(amount=n))) for n in range(1, 21)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(results, key=lambda s: int(s.split()[1])) == [f"refunded {n}" for n in range(1, 21)]
    assert len(records) == 20


class Broker:
    """An approver in the shape of launcher.approvals.Approver: answer() says why."""

    def __init__(self, effect: policy.Effect, reason_code: str, reason: str):
        self.result = policy.Decision(effect, reason_code=reason_code, reason=reason)
        self.seen: list = []

    def __call__(self, call, decision, timeout):
        raise AssertionError("answer() is preferred when the approver has it")

    def answer(self, call, decision, timeout):
        self.seen.append(decision.defer_token)
        return self.result


def test_broker_answer_reason_and_expiry_reach_the_agent(sdk_env):
    """An approver's answer() decides with its own reason code; APPROVAL_EXPIRED is polled as expired."""
    broker = Broker(policy.Effect.DENY, "APPROVAL_EXPIRED", "nobody answered within 0.1s")
    _, records = sdk_env(approve=broker)
    Refund = refund_tool()
    with pytest.raises(RuntimeError, match=r"^Faramesh DENY: deferred request expired \(token=dfr_"):
        Refund().run(amount=800)
    assert broker.seen == [records[0]["defer_token"]]  # the token the agent polls with
    assert (records[-1]["effect"], records[-1]["reason_code"], records[-1]["reason"]) == (
        "DENY", "APPROVAL_EXPIRED", "nobody answered within 0.1s (high value refund)")


def test_broker_grant_runs_the_tool(sdk_env):
    """A PERMIT from answer() lets the SDK run the tool and is recorded with the approver's words."""
    broker = Broker(policy.Effect.PERMIT, "APPROVAL_GRANTED", "approved by alice (once) after 0.2s")
    _, records = sdk_env(approve=broker)
    Refund = refund_tool()
    assert Refund().run(amount=700) == "refunded 700"
    assert (records[-1]["effect"], records[-1]["reason"]) == (
        "PERMIT", "approved by alice (once) after 0.2s (high value refund)")


def test_open_approvals_are_capped(sdk_env, monkeypatch):
    """Past MAX_PENDING open approvals a further DEFER is answered DENY DEFER_LIMIT."""
    from launcher import sdk_defer
    monkeypatch.setattr(sdk_defer, "MAX_PENDING", 1)
    release = threading.Event()
    _, records = sdk_env(approve=lambda call, decision, timeout: release.wait(timeout))
    transport = detect_transport()
    try:
        first = govern_via_transport(transport, "stripe/refund", {"amount": 600}, agent_id="payments")
        second = govern_via_transport(transport, "stripe/refund", {"amount": 700}, agent_id="payments")
    finally:
        release.set()
    assert (first["effect"], second["effect"], second["reason_code"]) == ("DEFER", "DENY", "DEFER_LIMIT")
    assert records[1]["reason"] == "too many approvals open at once (1 wait already; answer those first) " \
                                   "(high value refund)"


def test_peer_pid_is_the_connecting_process_or_none_for_the_launcher_itself(sdk_env):
    """Another process connecting directly is recorded with its pid; a connection this process made (as the
    sandbox does for the agent, on its behalf) is recorded with pid null, never with the launcher's pid."""
    server, records = sdk_env()
    script = ("import json, socket, sys\n"
              "conn = socket.socket(socket.AF_UNIX)\n"
              "conn.connect(sys.argv[1])\n"
              "conn.sendall(json.dumps({'type': 'govern', 'tool_id': 'stripe/refund', 'args': {'amount': 1}})"
              ".encode() + b'\\n')\n"
              "print(json.loads(conn.makefile().readline())['effect'])\n")
    child = subprocess.Popen([sys.executable, "-c", script, server.socket_path], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    out, err = child.communicate(timeout=30)
    assert out == "PERMIT\n", err
    govern_via_transport(detect_transport(), "stripe/refund", {"amount": 2}, agent_id="payments")
    assert [(r["args"]["amount"], r["pid"]) for r in records] == [(1, child.pid), (2, None)]


def test_deferred_sdk_call_reaches_the_approver_marked_as_reported(sdk_env):
    """The call an approver is asked about says it came over the SDK (launcher/approvals.py shows and keys it so)."""
    asked = []
    sdk_env(approve=lambda call, decision, timeout: asked.append(getattr(call, "origin", None)) or True)
    assert refund_tool()().run(amount=800) == "refunded 800"
    assert asked == ["sdk"]
