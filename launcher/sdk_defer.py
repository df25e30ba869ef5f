"""Deferred SDK calls: a random token per DEFER, an approval running on its own thread, and a
status the agent polls (pending, approved, denied, expired). A token answers one final status
once; after that, or for a token never issued, the answer is denied."""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from policy.calls import ToolCall
from policy.decision import Decision, Effect

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
MAX_PENDING = 64  # open approvals (each holds a thread); more defers are denied
GRACE = 5.0  # seconds an approve() callable may overrun the timeout before the call expires
KEEP_RESOLVED = 600.0  # seconds an unpolled final status is kept
EXPIRY_CODES = frozenset({"APPROVAL_TIMEOUT", "APPROVAL_EXPIRED"})  # reported to the agent as expired

# (call, decision, timeout) -> True to approve; blocks, so it runs on a worker thread
Approve = Callable[[ToolCall, Decision, float], bool]
# (call, final decision, token) -> True when the outcome was recorded
Resolved = Callable[[ToolCall, Decision, str], bool]


@dataclass
class _Entry:
    token: str
    call: ToolCall
    decision: Decision
    deadline: float
    status: str = PENDING
    resolved_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class DeferTable:
    def __init__(self, approve: Approve | None, timeout: float, resolved: Resolved, *,
                 clock: Callable[[], float] = time.monotonic):
        self._approve = approve
        self._timeout = timeout
        self._resolved = resolved
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def open(self, call: ToolCall, decision: Decision) -> str | None:
        """Register a DEFER; its token, or None when too many are open. start() begins the
        approval once the DEFER is on record; cancel() drops it instead."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            if sum(e.status == PENDING for e in self._entries.values()) >= MAX_PENDING or self._closed.is_set():
                return None
            token = "dfr_" + secrets.token_hex(16)  # unguessable: a token is the only proof of a defer
            self._entries[token] = _Entry(token, call, decision, now + self._timeout)
        return token

    def start(self, token: str) -> None:
        with self._lock:
            entry = self._entries[token]
        threading.Thread(target=self._settle, args=(entry,), name=f"sdk-approval-{token[:12]}",
                         daemon=True).start()

    def cancel(self, token: str) -> None:
        with self._lock:
            self._entries.pop(token, None)

    def poll(self, token: str) -> str:
        with self._lock:
            entry = self._entries.get(token)
        if entry is None:
            return DENIED
        if entry.status == PENDING and self._clock() > entry.deadline + GRACE:
            self._finish(entry, EXPIRED, "APPROVAL_TIMEOUT", f"not approved within {self._timeout:g}s")
        if entry.status == PENDING:
            return PENDING
        with self._lock:
            if self._entries.pop(token, None) is None:  # another poll took the final answer
                return DENIED
        return entry.status

    def close(self) -> None:
        """Stop issuing tokens; open approvals expire (approve() threads cannot be interrupted)."""
        self._closed.set()
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            self._finish(entry, EXPIRED, "APPROVAL_TIMEOUT", "the run ended before approval")

    def _settle(self, entry: _Entry) -> None:
        if self._approve is None:
            self._closed.wait(max(0.0, entry.deadline - self._clock()))
            self._finish(entry, EXPIRED, "APPROVAL_TIMEOUT", f"not approved within {self._timeout:g}s")
            return
        # The approver is shown the token the agent polls with, not the engine's.
        asked = dataclasses.replace(entry.decision, defer_token=entry.token)
        answer = getattr(self._approve, "answer", None)  # an approver that also says why
        try:
            if answer is not None:
                result = answer(entry.call, asked, self._timeout)
                if not isinstance(result, Decision):
                    raise TypeError(f"answer() returned {type(result).__name__}, not a Decision")
                approved, code, why = result.effect is Effect.PERMIT, result.reason_code, result.reason
            else:
                approved = self._approve(entry.call, asked, self._timeout) is True
                code, why = ("APPROVAL_GRANTED", "approved") if approved else ("APPROVAL_DENIED", "approval refused")
        except Exception as err:  # fail closed: a broken approval path denies
            self._finish(entry, DENIED, "APPROVAL_ERROR", f"approval failed: {type(err).__name__}: {err}")
            return
        status = APPROVED if approved else EXPIRED if code in EXPIRY_CODES else DENIED
        self._finish(entry, status, code, why)

    def _finish(self, entry: _Entry, status: str, reason_code: str, why: str) -> None:
        """First final status wins; a grant that cannot be recorded becomes a denial."""
        with entry.lock:
            if entry.status != PENDING:
                return
            effect = Effect.PERMIT if status == APPROVED else Effect.DENY
            final = _final(entry.decision, effect, reason_code, f"{why} ({entry.decision.reason})")
            if not self._record(entry.call, final, entry.token) and status == APPROVED:
                status = DENIED
                self._record(entry.call, _final(entry.decision, Effect.DENY, "AUDIT_WRITE_FAILED",
                                                "the approval could not be recorded"), entry.token)
            entry.status = status
            entry.resolved_at = self._clock()

    def _record(self, call: ToolCall, decision: Decision, token: str) -> bool:
        try:
            return self._resolved(call, decision, token) is not False
        except Exception:
            return False

    def _prune(self, now: float) -> None:
        stale = [t for t, e in self._entries.items() if e.status != PENDING and now - e.resolved_at > KEEP_RESOLVED]
        for token in stale:
            del self._entries[token]


def _final(deferred: Decision, effect: Effect, reason_code: str, reason: str) -> Decision:
    return Decision(effect, rule_id=deferred.rule_id, reason_code=reason_code, reason=reason,
                    policy_version=deferred.policy_version, layer=deferred.layer)
