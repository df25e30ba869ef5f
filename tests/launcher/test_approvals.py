"""The approval broker on its own: answers, expiry, session answers, the pending limit, single use."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from launcher.approvals import KEPT_ARGS_BYTES, ApprovalError, Broker, call_key
from launcher.audit_store import canonical
from launcher.prompt import describe

WRITE = {"path": "/tmp/x/report", "pid": 41, "session": "s1"}
DEFER = {"rule_id": "fpl-0", "reason": "writes under /tmp/x need a person", "defer_token": "dfr_00",
         "defer_expires_at": 0.0, "notify": ""}


def submit_async(broker: Broker, args=WRITE, timeout: float = 10.0, decision=DEFER, gone=lambda: False):
    """Start submit() on a thread; returns (thread, result list) once the approval is pending."""
    result: list = []
    before = len(broker.list())
    thread = threading.Thread(target=lambda: result.append(broker.submit("fs/write", args, decision, timeout, gone)))
    thread.start()
    deadline = time.monotonic() + 5
    while len(broker.list()) == before and not result and time.monotonic() < deadline:
        time.sleep(0.005)
    return thread, result


def test_approve_once_lets_the_waiting_call_proceed():
    """approve with scope once resolves the waiting submit() as approved and records who approved."""
    broker = Broker("s1")
    thread, result = submit_async(broker)
    [pending] = broker.list()
    assert (pending["tool"], pending["args"]["path"], pending["rule_id"], pending["state"]) == \
        ("fs/write", "/tmp/x/report", "fpl-0", "pending")
    broker.resolve(pending["id"], True, "once", "tty /dev/pts/1")
    thread.join(5)
    [resolution] = result
    assert (resolution.approved, resolution.reason_code) == (True, "APPROVAL_GRANTED")
    record = resolution.record
    assert (record["kind"], record["approver"], record["scope"], record["session"], record["tool"]) == \
        ("approval", "tty /dev/pts/1", "once", "s1", "fs/write")
    assert broker.list() == []


def test_deny_refuses_the_waiting_call():
    """deny resolves the waiting submit() as denied, recorded as kind denial."""
    broker = Broker("s1")
    thread, result = submit_async(broker)
    broker.resolve(broker.list()[0]["id"], False, "once", "socket uid=0 pid=7")
    thread.join(5)
    assert (result[0].approved, result[0].reason_code, result[0].record["kind"]) == \
        (False, "APPROVAL_DENIED", "denial")


def test_unanswered_call_expires_as_denial():
    """Nobody answers within the timeout: the call is denied as expired."""
    broker = Broker("s1")
    started = time.monotonic()
    resolution = broker.submit("fs/write", WRITE, DEFER, 0.3)
    assert 0.25 < time.monotonic() - started < 2.0
    assert (resolution.approved, resolution.reason_code, resolution.record["kind"],
            resolution.record["approver"]) == (False, "APPROVAL_EXPIRED", "expiry", "expiry")


def test_defer_expiry_from_the_decision_wins_when_earlier():
    """A defer_expires_at sooner than the timeout ends the wait at that time."""
    broker = Broker("s1")
    started = time.monotonic()
    resolution = broker.submit("fs/write", WRITE, dict(DEFER, defer_expires_at=time.time() + 0.2), 30.0)
    assert time.monotonic() - started < 2.0
    assert resolution.reason_code == "APPROVAL_EXPIRED"


def test_session_approval_answers_the_same_call_again_without_asking():
    """Approve-for-session covers a later identical call (another pid), not one with other arguments."""
    broker = Broker("s1")
    thread, result = submit_async(broker)
    broker.resolve(broker.list()[0]["id"], True, "session", "tty /dev/pts/1")
    thread.join(5)
    again = broker.submit("fs/write", dict(WRITE, pid=99), DEFER, 0.0)
    assert (again.approved, again.reason_code, again.record["scope"], again.record["approver"]) == \
        (True, "SESSION_APPROVAL", "session", "tty /dev/pts/1, session answer")
    other = broker.submit("fs/write", dict(WRITE, path="/tmp/x/other"), DEFER, 0.0)
    assert other.reason_code == "APPROVAL_EXPIRED"


def test_session_denial_answers_waiting_twins_and_later_calls():
    """Deny-for-session resolves an identical call already waiting and refuses later ones at once."""
    broker = Broker("s1")
    first, first_result = submit_async(broker)
    second, second_result = submit_async(broker, dict(WRITE, pid=42))
    broker.resolve(broker.list()[0]["id"], False, "session", "socket uid=0 pid=3")
    first.join(5)
    second.join(5)
    assert [r.reason_code for r in first_result + second_result] == ["APPROVAL_DENIED", "APPROVAL_DENIED"]
    later = broker.submit("fs/write", dict(WRITE, pid=43), DEFER, 5.0)
    assert (later.approved, later.reason_code, later.record["kind"]) == (False, "SESSION_DENIAL", "denial")


def test_limit_denies_beyond_max_pending_at_once():
    """With max_pending waiting, the next deferred call is denied immediately with TOO_MANY_PENDING."""
    broker = Broker("s1", max_pending=2)
    waiting = [submit_async(broker, dict(WRITE, path=f"/tmp/x/{n}")) for n in range(2)]
    started = time.monotonic()
    refused = broker.submit("fs/write", dict(WRITE, path="/tmp/x/3"), DEFER, 30.0)
    assert time.monotonic() - started < 0.5
    assert (refused.approved, refused.reason_code) == (False, "TOO_MANY_PENDING")
    assert refused.reason == ("2 approvals already wait in this session (limit --max-pending 2); "
                              "answer those first")
    broker.close()
    for thread, _ in waiting:
        thread.join(5)


def test_an_approval_resolves_only_once():
    """A second answer to the same id is refused and names the first answer."""
    broker = Broker("s1")
    thread, _ = submit_async(broker)
    approval_id = broker.list()[0]["id"]
    broker.resolve(approval_id, False, "once", "tty /dev/pts/1")
    thread.join(5)
    with pytest.raises(ApprovalError) as err:
        broker.resolve(approval_id, True, "once", "socket uid=0 pid=5")
    assert str(err.value) == f"approval {approval_id} is already denied (by tty /dev/pts/1)"


def test_unknown_id_and_bad_scope_are_refused():
    """resolve() names an unknown id and an invalid scope."""
    broker = Broker("s1")
    with pytest.raises(ApprovalError) as unknown:
        broker.resolve("feedbeef", True)
    assert str(unknown.value) == "no approval 'feedbeef' in session s1"
    thread, _ = submit_async(broker)
    with pytest.raises(ApprovalError) as scope:
        broker.resolve(broker.list()[0]["id"], True, "forever")
    assert str(scope.value) == "scope must be one of once, session, not 'forever'"
    broker.close()
    thread.join(5)


def test_a_call_whose_task_is_gone_is_withdrawn():
    """When gone() turns true the approval is withdrawn and the call denied."""
    broker = Broker("s1")
    gone = threading.Event()
    thread, result = submit_async(broker, gone=gone.is_set)
    gone.set()
    thread.join(5)
    assert (result[0].approved, result[0].reason_code) == (False, "APPROVAL_WITHDRAWN")
    assert broker.list() == []


def test_watch_sees_pending_then_resolved():
    """A watcher gets the pending event, then the resolved one with the approver."""
    broker = Broker("s1")
    events = broker.watch()
    thread, _ = submit_async(broker)
    approval_id = broker.list()[0]["id"]
    broker.resolve(approval_id, True, "once", "web")
    thread.join(5)
    first, second = events.get(timeout=2), events.get(timeout=2)
    assert (first[0], first[1]["id"]) == ("pending", approval_id)
    assert (second[0], second[1]["state"], second[1]["approver"]) == ("resolved", "approved", "web")


def test_call_key_ignores_pid_and_session_only():
    """The session-answer key leaves out pid and session but keeps every other argument, and the origin."""
    assert call_key("fs/write", {"path": "/a", "pid": 1, "session": "x"}) == \
        call_key("fs/write", {"session": "y", "path": "/a", "pid": 2})
    assert call_key("fs/write", {"path": "/a"}) != call_key("fs/write", {"path": "/a", "flags": 1})
    assert call_key("fs/write", {"path": "/a"}) != call_key("fs/read", {"path": "/a"})
    assert call_key("fs/write", {"path": "/a"}, "sandbox") != call_key("fs/write", {"path": "/a"}, "sdk")


def test_session_answer_stands_only_for_calls_of_the_same_origin():
    """An answer for the session given to an SDK report never answers the call observed by the sandbox (and
    the reverse), even with a fake pid; it does answer the next report."""
    broker = Broker("s1")
    result: list = []
    reported = threading.Thread(target=lambda: result.append(
        broker.submit("fs/write", dict(WRITE, pid=1), DEFER, 10.0, origin="sdk")))
    reported.start()
    deadline = time.monotonic() + 5
    while not broker.list() and time.monotonic() < deadline:
        time.sleep(0.005)
    [pending] = broker.list()
    assert pending["origin"] == "sdk"
    broker.resolve(pending["id"], True, "session", "tty /dev/pts/1")
    reported.join(5)
    observed = broker.submit("fs/write", WRITE, DEFER, 0.0)
    assert (observed.reason_code, observed.record["origin"]) == ("APPROVAL_EXPIRED", "sandbox")
    again = broker.submit("fs/write", WRITE, DEFER, 0.0, origin="sdk")
    assert (again.reason_code, again.record["origin"]) == ("SESSION_APPROVAL", "sdk")
    thread, waiting = submit_async(broker)
    broker.resolve(broker.list()[0]["id"], False, "session", "tty /dev/pts/1")
    thread.join(5)
    assert broker.submit("fs/write", WRITE, DEFER, 0.0).reason_code == "SESSION_DENIAL"
    assert broker.submit("fs/write", WRITE, DEFER, 0.0, origin="sdk").reason_code == "SESSION_APPROVAL"


def test_unknown_origin_is_refused():
    """submit() takes only the origins it can show; the service closes the call (a denial) on anything else."""
    with pytest.raises(ValueError, match="^origin must be one of sandbox, sdk, not 'agent'$"):
        Broker("s1").submit("fs/write", WRITE, DEFER, 0.0, origin="agent")


def test_answers_given_at_once_are_not_remembered():
    """Refusals past the limit (and session answers) never waited: the broker keeps nothing of them, so a flood
    of deferred calls with large arguments cannot grow it; the audit record carries the call."""
    broker = Broker("s1", max_pending=1)
    thread, _ = submit_async(broker)
    big = dict(WRITE, path="/tmp/x/" + "y" * 100_000)
    refused = [broker.submit("fs/write", big, DEFER, 30.0) for _ in range(50)]
    assert {r.reason_code for r in refused} == {"TOO_MANY_PENDING"}
    assert refused[0].record["args"] == big
    with pytest.raises(ApprovalError, match="^no approval "):
        broker.show(refused[0].record["approval_id"])
    broker.close()
    thread.join(5)
    assert len(broker._resolved) == 1  # the one that waited


def test_settled_approvals_keep_their_arguments_shortened():
    """An exec deferred with a 1 MiB argv, then expired, is remembered (for show) in 4 KiB: path
    whole, each argument's prefix with the SHA-256 of the whole; its audit record has more."""
    raw = b"\xff" * (1 << 20)
    args = {"path": "/usr/bin/curl", "argv": ["curl", os.fsdecode(raw)], "cmd": "curl " + os.fsdecode(raw),
            "cwd": "/tmp", "pid": 41, "session": "s1"}
    broker = Broker("s1")
    expired = [broker.submit("shell/exec", args, DEFER, 0.0) for _ in range(3)]
    assert len(canonical(expired[0].record["args"])) > 1 << 20
    kept = [broker.show(done.record["approval_id"])["args"] for done in expired]
    assert all(len(canonical(view)) <= KEPT_ARGS_BYTES for view in kept)
    assert (kept[0]["path"], kept[0]["cwd"], kept[0]["argv"][0]) == ("/usr/bin/curl", "/tmp", "curl")
    assert kept[0]["argv"][1].endswith(f"…[truncated: {1 << 20} bytes, sha256 {hashlib.sha256(raw).hexdigest()}]")
    assert len(call_key("shell/exec", args)) == 64  # a session answer's key: a digest


def test_notification_event_carries_the_origin():
    """What a notify channel receives says whether the sandbox saw the call."""
    from launcher.control import defer_event
    broker = Broker("s1")
    events: list = []
    broker.on_pending = lambda item: events.append(defer_event(item))
    thread = threading.Thread(target=broker.submit, args=("stripe/refund", {"amount": 900}, DEFER, 0.3),
                              kwargs={"origin": "sdk"})
    thread.start()
    thread.join(5)
    assert [(e["origin"], e["tool"]) for e in events] == [("sdk", "stripe/refund")]


def test_prompt_text_cannot_be_disguised_by_the_arguments():
    """Escape sequences, C1 controls and bidi overrides in a path are shown escaped, never sent raw."""
    view = {"id": "0a1b2c3d", "session": "s1", "tool": "fs/write", "rule_id": "fpl-0", "reason": "r",
            "state": "pending", "expires_at": time.time() + 60,
            "args": {"path": "/tmp/\x1b[2K\x9b2K\u202eok", "pid": 4, "session": "s1"}}
    text = describe(view)
    assert '  args:   {"path": "/tmp/\\u001b[2K\\u009b2K\\u202eok", "pid": 4}\n' in text
    assert not any(ch in text for ch in "\x1b\x9b\u202e")


def test_prompt_says_where_the_call_comes_from():
    """The prompt names the origin: observed by the sandbox, or reported by the agent over the SDK."""
    view = {"id": "0a1b2c3d", "session": "s1", "tool": "stripe/refund", "rule_id": "fpl-0", "reason": "r",
            "state": "pending", "expires_at": time.time() + 60, "args": {"amount": 900}}
    assert "\n  tool:   stripe/refund\n  origin: sdk (reported by the agent over the SDK socket, not observed)\n" \
        in describe(dict(view, origin="sdk"))
    assert "\n  origin: sandbox (observed by the sandbox)\n" in describe(dict(view, origin="sandbox"))
    assert "\n  origin: unknown ('')\n" in describe(view)


REFUNDS = ('agent pay {\n  default deny\n  rules {\n'
           '    permit stripe/refund when session.sum(stripe/refund.amount, window=24h) + amount <= 1000\n'
           '    defer stripe/refund reason: "over 1000 a day: a human decides"\n  }\n}\n')


@pytest.mark.parametrize("counted", [True, False])
def test_an_approved_call_counts_toward_session_sums(counted):
    """100 permitted, 950 deferred and approved: 800 more must be deferred too (1850 > 1000),
    which it is only when the approver commits the approved call to the engine."""
    import policy
    from launcher.approvals import Approver
    from policy.decision import Effect

    engine = policy.Engine([policy.load_policy(REFUNDS, "p.fpl")], policy.SessionStore())
    approver = Approver(lambda call, decision, timeout: {"approved": True, "reason_code": "APPROVED", "reason": "ok"},
                        None, engine.commit_approved if counted else None)

    def refund(amount):
        call = policy.ToolCall(tool="stripe/refund", args={"amount": amount}, session_id="s",
                               call_id=f"c{amount}", timestamp=time.time())
        decision = engine.decide(call)
        if decision.effect is Effect.DEFER:
            return "approved" if approver.answer(call, decision, 5).effect is Effect.PERMIT else "denied"
        return decision.effect.name
    assert refund(100) == "PERMIT"
    assert refund(950) == "approved"
    assert refund(800) == ("approved" if counted else "PERMIT")  # asked, not waved through
