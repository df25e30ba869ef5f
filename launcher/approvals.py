"""The approval broker: deferred calls wait here until a person answers or they expire.

One Broker per run holds the pending approvals, the session's standing answers ("approve/deny
for the rest of the session", keyed by origin, tool and canonical arguments), the pending limit
and the expiry clock. ``submit()`` blocks the calling supervisor thread only; every other answer
path (terminal prompt, control socket) calls ``resolve()`` from its own thread.

Each approval resolves exactly once: approved, denied, expired (a denial) or withdrawn (the
waiting task is gone). The returned Resolution carries the audit record for that outcome.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib
import json
import os
import queue
import secrets
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from launcher import cleanup
from launcher.audit_bound import shorten
from policy.decision import Decision, Effect

DEFAULT_MAX_PENDING = 16
RESOLVED_KEPT = 1024  # resolved approvals remembered for show and for "already approved" answers
KEPT_ARGS_BYTES = 4096  # JSON of a remembered approval's arguments, shortened as audit records are
SCOPES = ("once", "session")
NOT_IN_KEY = ("pid", "session")  # vary per call, never part of "the same call"
# Who a held call comes from. The agent can report any call over the SDK socket, so an approval
# says which it is, and an answer given for one origin never stands for the other.
SANDBOX, SDK = "sandbox", "sdk"
ORIGINS = {SANDBOX: "observed by the sandbox", SDK: "reported by the agent over the SDK socket, not observed"}
WAIT_STEP = 0.25  # seconds between checks that the waiting task is still there


class ApprovalError(Exception):
    """A resolve() that cannot apply: unknown id, already resolved, bad scope."""


@dataclass(frozen=True)
class Resolution:
    approved: bool
    reason_code: str
    reason: str
    record: dict  # for the audit log: kind approval | denial | expiry


@dataclass
class Pending:
    id: str
    session: str
    tool: str
    args: dict
    rule_id: str
    reason: str
    defer_token: str
    notify: str
    created: float
    expires_at: float
    origin: str = SANDBOX
    state: str = "pending"  # pending | approved | denied | expired | withdrawn
    approver: str = ""
    scope: str = ""
    resolved_at: float = 0.0
    deliveries: list = field(default_factory=list)  # notify outcomes, for show
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def view(self) -> dict:
        """What the control protocol shows about this approval."""
        out = {k: getattr(self, k) for k in ("id", "session", "origin", "tool", "args", "rule_id", "reason",
                                             "defer_token", "notify", "created", "expires_at", "state", "approver",
                                             "scope", "resolved_at")}
        out["deliveries"] = list(self.deliveries)
        return out


def call_key(tool: str, args: dict, origin: str = SANDBOX) -> str:
    """Identity of "the same call from the same origin" for session-wide answers: a digest, so a
    standing answer keeps 64 bytes however large the call's arguments."""
    kept = {k: v for k, v in args.items() if k not in NOT_IN_KEY}
    text = origin + "\0" + tool + "\0" + json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Broker:
    def __init__(self, session_id: str, *, max_pending: int = DEFAULT_MAX_PENDING,
                 on_pending: Callable[[Pending], None] | None = None, clock: Callable[[], float] = time.time):
        self.session_id = session_id
        self.max_pending = max_pending
        self.on_pending = on_pending  # e.g. notification delivery; must not block
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}  # id -> unresolved approval
        self._resolved: collections.OrderedDict[str, Pending] = collections.OrderedDict()  # id -> resolved
        self._standing: dict[str, tuple[bool, str]] = {}  # call key -> (approved, approver)
        self._watchers: list[queue.SimpleQueue] = []
        self._closed = False

    # -- the supervisor's side -------------------------------------------------------------

    def submit(self, tool: str, args: dict, decision: dict, timeout: float,
               gone: Callable[[], bool] = lambda: False, origin: str = SANDBOX) -> Resolution:
        """Wait for an answer to one deferred call; returns when resolved, expired or gone()."""
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, not {origin!r}")
        now = self._clock()
        expires_at = now + max(0.0, timeout)
        if decision.get("defer_expires_at"):
            expires_at = min(expires_at, float(decision["defer_expires_at"]))
        item = Pending(id=self._new_id(), session=self.session_id, tool=tool, args=dict(args),
                       rule_id=decision.get("rule_id", ""), reason=decision.get("reason", ""),
                       defer_token=decision.get("defer_token", ""), notify=decision.get("notify", ""),
                       created=now, expires_at=expires_at, origin=origin)
        key = call_key(tool, args, origin)
        with self._lock:
            while item.id in self._pending or item.id in self._resolved:
                item.id = self._new_id()
            standing = self._standing.get(key)
            if standing is None:
                refusal = self._refusal()
                if refusal is None:
                    self._pending[item.id] = item
            else:
                refusal = None
        if standing is not None:
            approved, approver = standing
            return self._finish_at_once(item, "approved" if approved else "denied", f"{approver}, session answer",
                                        "session", "SESSION_APPROVAL" if approved else "SESSION_DENIAL",
                                        f"answered earlier for the rest of the session by {approver}")
        if refusal is not None:
            return self._finish_at_once(item, "denied", "limit", "once", *refusal)
        self._publish("pending", item)
        if self.on_pending is not None:
            self.on_pending(item)
        while not item.done.wait(min(WAIT_STEP, max(0.0, item.expires_at - self._clock()))):
            if self._clock() >= item.expires_at:
                self._settle(item, "expired", "expiry", "once")
            elif gone():
                self._settle(item, "withdrawn", "none", "once")
        return self._resolution(item)

    # -- the answering side ------------------------------------------------------------------

    def resolve(self, approval_id: str, approve: bool, scope: str = "once", approver: str = "") -> dict:
        """Answer one pending approval; with scope "session" the answer also stands for every
        later identical call (and answers identical ones already waiting)."""
        if scope not in SCOPES:
            raise ApprovalError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        state = "approved" if approve else "denied"
        with self._lock:
            item = self._pending.get(approval_id)
            if item is None:
                done = self._resolved.get(approval_id)
                if done is not None:
                    raise ApprovalError(f"approval {approval_id} is already {done.state}"
                                        + (f" (by {done.approver})" if done.approver else ""))
                raise ApprovalError(f"no approval {approval_id!r} in session {self.session_id}")
        if not self._settle(item, state, approver, scope):
            raise ApprovalError(f"approval {approval_id} was resolved meanwhile")
        if scope == "session":
            key = call_key(item.tool, item.args, item.origin)
            with self._lock:
                self._standing[key] = (approve, approver)
                twins = [p for p in self._pending.values() if call_key(p.tool, p.args, p.origin) == key]
            for twin in twins:
                self._settle(twin, state, f"{approver}, session answer", "session")
        return item.view()

    def list(self) -> list[dict]:
        with self._lock:
            return [p.view() for p in sorted(self._pending.values(), key=lambda p: p.created)]

    def show(self, approval_id: str) -> dict:
        with self._lock:
            item = self._pending.get(approval_id) or self._resolved.get(approval_id)
        if item is None:
            raise ApprovalError(f"no approval {approval_id!r} in session {self.session_id}")
        return item.view()

    def watch(self) -> queue.SimpleQueue:
        """A queue of ("pending"|"resolved", view) events; the current pending ones come first."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            for item in sorted(self._pending.values(), key=lambda p: p.created):
                events.put(("pending", item.view()))
            self._watchers.append(events)
        return events

    def unwatch(self, events: queue.SimpleQueue) -> None:
        with self._lock:
            if events in self._watchers:
                self._watchers.remove(events)

    def record_delivery(self, item: Pending, outcome: dict) -> None:
        with self._lock:
            item.deliveries.append(outcome)

    def close(self) -> None:
        """The run is over: whatever still waits is withdrawn (denied)."""
        with self._lock:
            self._closed = True
            waiting = list(self._pending.values())
        for item in waiting:
            self._settle(item, "withdrawn", "none", "once")

    # -- internals -----------------------------------------------------------------------------

    def _new_id(self) -> str:
        # Short enough to type, random so an id never names another run's call.
        return secrets.token_hex(4)

    def _refusal(self) -> tuple[str, str] | None:
        """Why a new approval cannot wait (caller holds the lock), or None."""
        if self._closed:
            return "RUN_ENDING", "the run is ending; nothing more can wait for approval"
        if len(self._pending) >= self.max_pending:
            return ("TOO_MANY_PENDING", f"{len(self._pending)} approvals already wait in this session "
                    f"(limit --max-pending {self.max_pending}); answer those first")
        return None

    def _finish_at_once(self, item: Pending, state: str, approver: str, scope: str, code: str,
                        reason: str) -> Resolution:
        # Not remembered: it never waited, so nobody can answer or look it up, and a flood of
        # them (past the limit) would keep RESOLVED_KEPT calls' arguments; the audit record has it.
        item.state, item.approver, item.scope, item.resolved_at = state, approver, scope, self._clock()
        return self._resolution(item, code, reason)

    def _settle(self, item: Pending, state: str, approver: str, scope: str) -> bool:
        """Resolve once; False when someone else already did."""
        # What show and watchers get of a settled call: its arguments can be megabytes (an exec's
        # argv), and RESOLVED_KEPT of them are remembered. Its audit record keeps more of them.
        args = shorten(item.args, KEPT_ARGS_BYTES)
        with self._lock:
            if self._pending.pop(item.id, None) is None:
                return False
            item.state, item.approver, item.scope, item.resolved_at = state, approver, scope, self._clock()
            kept = dataclasses.replace(item, args=args)  # shares done and deliveries with the waiting call
            self._remember(kept)
        item.done.set()
        self._publish("resolved", kept)
        return True

    def _remember(self, item: Pending) -> None:
        """Keep a resolved approval (caller holds the lock); the oldest go beyond RESOLVED_KEPT."""
        self._resolved[item.id] = item
        while len(self._resolved) > RESOLVED_KEPT:
            self._resolved.popitem(last=False)

    def _publish(self, event: str, item: Pending) -> None:
        view = item.view()
        with self._lock:
            watchers = list(self._watchers)
        for events in watchers:
            events.put((event, view))

    def _resolution(self, item: Pending, code: str = "", reason: str = "") -> Resolution:
        waited = round(item.resolved_at - item.created, 3)
        if not code:
            code, reason = _OUTCOMES[item.state]
            reason = reason.format(approver=item.approver, waited=waited, scope=item.scope)
        kind = {"approved": "approval", "expired": "expiry"}.get(item.state, "denial")
        record = {
            "kind": kind, "time": item.resolved_at, "session": item.session, "approval_id": item.id,
            "origin": item.origin, "tool": item.tool, "args": item.args,
            "effect": "PERMIT" if item.state == "approved" else "DENY", "rule_id": item.rule_id,
            "reason_code": code, "reason": reason, "approver": item.approver,
            "scope": item.scope, "defer_token": item.defer_token, "waited_s": waited,
            "deliveries": list(item.deliveries),
        }
        return Resolution(item.state == "approved", code, reason, record)


# state -> (reason_code, reason template)
_OUTCOMES = {
    "approved": ("APPROVAL_GRANTED", "approved by {approver} ({scope}) after {waited}s"),
    "denied": ("APPROVAL_DENIED", "denied by {approver} ({scope}) after {waited}s"),
    "expired": ("APPROVAL_EXPIRED", "nobody answered within {waited}s"),
    "withdrawn": ("APPROVAL_WITHDRAWN", "the waiting call went away after {waited}s"),
}


# -- the service process ------------------------------------------------------------------------
# The launcher must stay single-threaded until the sandbox is cloned (sandbox.launch), yet the
# control socket and the prompt must answer from the start. So the broker, its control socket,
# the terminal prompt and notifications live in a process forked before launch() (its main loop
# is control.serve_service); the supervisor's approve() talks to it over a socketpair, one
# connection per deferred call.

READY = b"ready"
MAX_REQUEST = 16 << 20  # an exec's argv can be megabytes
GRACE = 15.0  # seconds beyond the timeout before the launcher stops waiting for the service


class ServiceError(Exception):
    """The approval service could not start; the message says why."""


class ApprovalService:
    """Launcher side: ``approver(audit)`` is the supervisor's approve() callable."""

    def __init__(self, session_id: str, directory: str, *, max_pending: int = DEFAULT_MAX_PENDING,
                 prompt: bool = True, channels: dict | None = None):
        for module in ("launcher.control", "launcher.notify", "launcher.prompt"):
            importlib.import_module(module)  # loaded before the fork: the service never reads them from disk
        self.session_id, self.directory = session_id, directory
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            ours.close()
            _service_child(theirs, session_id, directory, max_pending, prompt, channels or {})
        theirs.close()
        self._channel = ours
        self._send_lock = threading.Lock()
        ours.settimeout(10.0)
        try:
            first = ours.recv(4096)
        except OSError as err:
            first = f"no answer ({err})".encode()
        ours.settimeout(None)
        if first != READY:
            self.close()
            raise ServiceError(first.decode(errors="replace") or "the approval service exited")

    def approver(self, audit: Callable[[dict], None] | None, commit=None) -> "Approver":
        return Approver(self._ask, audit, commit)

    def _ask(self, call, decision, timeout: float) -> dict:
        # launcher.sdk_server.SdkCall says "sdk"; every other call is one the sandbox observed
        request = {"origin": getattr(call, "origin", SANDBOX), "tool": call.tool, "args": call.args,
                   "timeout": timeout,
                   "decision": {k: getattr(decision, k) for k in ("rule_id", "reason", "defer_token",
                                                                  "defer_expires_at", "notify")}}
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with mine:
            try:
                with self._send_lock:
                    socket.send_fds(self._channel, [b"call"], [theirs.fileno()])
            except OSError as err:
                return _error(f"the approval service is gone ({err.strerror})")
            finally:
                theirs.close()
            mine.sendall(json.dumps(request, default=str).encode() + b"\n")
            pid = call.args.get("pid")
            deadline = time.monotonic() + timeout + GRACE
            poller = select.poll()
            poller.register(mine, select.POLLIN)
            reply = b""
            while not reply.endswith(b"\n"):
                if time.monotonic() > deadline:
                    return _error("the approval service did not answer in time")
                if not poller.poll(500):
                    if pid and not os.path.exists(f"/proc/{pid}"):
                        return _error("the waiting task is gone", "TASK_GONE")  # closing withdraws it
                    continue
                chunk = mine.recv(65536)
                if not chunk:
                    return _error("the approval service closed the connection")
                reply += chunk
        return json.loads(reply)

    def close(self) -> None:
        self._channel.close()  # the service withdraws what still waits and exits
        if cleanup.wait_exit(self.pid, 3.0) is not None:  # woken by its exit: no polling interval
            return
        try:  # killed after 3 s: it left its socket behind
            os.unlink(os.path.join(self.directory, self.session_id + ".sock"))
        except FileNotFoundError:
            pass


class Approver:
    """The approve callable: ``approver(call, decision, timeout) -> bool``; ``answer()`` is the
    same with the reason code and reason (e.g. TOO_MANY_PENDING), which the supervisor prefers.
    The outcome is audited before it is returned: an approval that cannot be recorded is a denial.
    ``commit(call, decision)`` (policy.Engine.commit_approved) counts an approved call as done, so
    budgets, session sums and history see it as they see a permitted one."""

    def __init__(self, ask: Callable[..., dict], audit: Callable[[dict], None] | None, commit=None):
        self._ask, self._audit, self._commit = ask, audit, commit

    def __call__(self, call, decision: Decision, timeout: float) -> bool:
        return self.answer(call, decision, timeout).effect is Effect.PERMIT

    def answer(self, call, decision: Decision, timeout: float) -> Decision:
        reply = self._ask(call, decision, timeout)
        approved = reply.get("approved") is True
        code, reason = reply.get("reason_code", "APPROVAL_ERROR"), reply.get("reason", "no answer")
        if self._audit is not None and reply.get("record"):
            try:
                self._audit(reply["record"])
            except Exception:  # noqa: BLE001 - an approval nobody can account for is not granted
                approved, code, reason = False, "AUDIT_WRITE_FAILED", "the approval could not be recorded"
        if approved and self._commit is not None:
            try:
                self._commit(call, decision)
            except Exception as err:  # noqa: BLE001 - a call the budgets cannot count does not run
                approved, code, reason = False, "APPROVAL_NOT_COUNTED", f"the approval could not be counted: {err}"
        return Decision(Effect.PERMIT if approved else Effect.DENY, rule_id=decision.rule_id,
                        reason_code=code, reason=reason, policy_version=decision.policy_version)


def _error(reason: str, code: str = "APPROVAL_ERROR") -> dict:
    return {"approved": False, "reason_code": code, "reason": reason}


def _service_child(channel, session_id, directory, max_pending, prompt, channels) -> None:
    """Runs in the forked service process; never returns."""
    status = 0
    try:
        # Keep nothing of the launcher's: a copy of another service's channel would keep that one alive.
        os.closerange(3, channel.fileno())
        os.closerange(channel.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # the launcher ends us by closing the channel
        for signum in (signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)  # a run in the background: the prompt gets EIO, not a stop
        from launcher import control  # already loaded: see ApprovalService
        control.serve_service(channel, session_id, directory, max_pending, prompt, channels)
    except BaseException as err:  # noqa: BLE001 - reported to the launcher, which carries on without us
        try:
            channel.send(f"{type(err).__name__}: {err}".encode()[:4000])
        except OSError:
            pass
        status = 1
    finally:
        os._exit(status)
