"""Deferred SDK calls: a random token per DEFER, an approval running on its own thread, and a
status the agent polls (pending, approved, denied, expired). A token answers one final status
once; after that, or for a token never issued or forgotten, the answer is denied.

The agent drives how many defers it opens, so the table is bounded: at most MAX_PENDING open
approvals (each holds its call), and once an approval resolves only its final status is kept,
for at most MAX_RESOLVED tokens and KEEP_RESOLVED seconds."""

from __future__ import annotations

import collections
import dataclasses
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from policy.calls import ToolCall
from policy.decision import Decision, Effect

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
MAX_PENDING = 64  # open approvals (each holds a thread and its call); more defers are denied
MAX_RESOLVED = 4096  # unpolled final statuses kept (a few dozen bytes each); the oldest go first
MAX_ARGS = 64 << 10  # characters of JSON arguments a deferred call may have: held while it waits, shown to a person
GRACE = 5.0  # seconds an approve() callable may overrun the timeout before the call expires
KEEP_RESOLVED = 600.0  # seconds an unpolled final status is kept
EXPIRY_CODES = frozenset({"APPROVAL_TIMEOUT", "APPROVAL_EXPIRED"})  # reported to the agent as expired

# (call, decision, timeout) -> True to approve; blocks, so it runs on a worker thread
Approve = Callable[[ToolCall, Decision, float], bool]
# (call, final decision, token) -> True when the outcome was recorded
Resolved = Callable[[ToolCall, Decision, str], bool]


class Refused(Exception):
    """A DEFER the table does not open; ``code`` and the message become the DENY's."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Entry:
    token: str
    call: ToolCall
    decision: Decision
    deadline: float
    status: str = PENDING
    lock: threading.Lock = field(default_factory=threading.Lock)


class DeferTable:
    def __init__(self, approve: Approve | None, timeout: float, resolved: Resolved, *,
                 clock: Callable[[], float] = time.monotonic):
        self._approve = approve
        self._timeout = timeout
        self._resolved = resolved
        self._clock = clock
        self._pending: dict[str, _Entry] = {}
        # token -> (final status, when resolved), oldest first: no call or arguments once resolved
        self._statuses: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def open(self, call: ToolCall, decision: Decision) -> str:
        """Register a DEFER and return its token; raises Refused when it cannot be held. start()
        begins the approval once the DEFER is on record; cancel() drops it instead."""
        size = len(json.dumps(call.args, separators=(",", ":"), default=str))
        if size > MAX_ARGS:
            raise Refused("DEFER_ARGS_TOO_LARGE", f"the arguments of a call held for approval may take at most "
                                                  f"{MAX_ARGS} characters as JSON, these take {size}")
        now = self._clock()
        with self._lock:
            self._prune(now)
            if self._closed.is_set():
                raise Refused("RUN_ENDING", "the run is ending; no approval can be opened")
            if len(self._pending) >= MAX_PENDING:
                raise Refused("DEFER_LIMIT", f"too many approvals open at once ({MAX_PENDING} wait already; "
                                             f"answer those first)")
            token = "dfr_" + secrets.token_hex(16)  # unguessable: a token is the only proof of a defer
            self._pending[token] = _Entry(token, call, decision, now + self._timeout)
        return token

    def start(self, token: str) -> None:
        with self._lock:
            entry = self._pending.get(token)
        if entry is None:  # close() ended it meanwhile: its status waits for the poll
            return
        threading.Thread(target=self._settle, args=(entry,), name=f"sdk-approval-{token[:12]}",
                         daemon=True).start()

    def cancel(self, token: str) -> None:
        with self._lock:
            self._pending.pop(token, None)

    def poll(self, token: str) -> str:
        with self._lock:
            entry = self._pending.get(token)
        if entry is not None and self._clock() > entry.deadline + GRACE:
            self._finish(entry, EXPIRED, "APPROVAL_TIMEOUT", f"not approved within {self._timeout:g}s")
        with self._lock:
            if token in self._pending:
                return PENDING
            # taken once; a second poll, or a token never issued or forgotten, reads denied
            return self._statuses.pop(token, (DENIED, 0.0))[0]

    def sizes(self) -> tuple[int, int]:
        """(open approvals, final statuses waiting to be polled)."""
        with self._lock:
            return len(self._pending), len(self._statuses)

    def close(self) -> None:
        """Stop issuing tokens; open approvals expire (approve() threads cannot be interrupted)."""
        self._closed.set()
        with self._lock:
            entries = list(self._pending.values())
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
            with self._lock:  # from here only the status is kept: the call and its arguments go
                if self._pending.pop(entry.token, None) is not None:  # a cancelled DEFER keeps nothing
                    self._statuses[entry.token] = (status, self._clock())
                    while len(self._statuses) > MAX_RESOLVED:
                        self._statuses.popitem(last=False)  # forgotten: polled as denied, fails closed

    def _record(self, call: ToolCall, decision: Decision, token: str) -> bool:
        try:
            return self._resolved(call, decision, token) is not False
        except Exception:
            return False

    def _prune(self, now: float) -> None:
        """Forget final statuses older than KEEP_RESOLVED (caller holds the lock); oldest first."""
        while self._statuses:
            token, (_status, resolved_at) = next(iter(self._statuses.items()))
            if now - resolved_at <= KEEP_RESOLVED:
                return
            del self._statuses[token]


def _final(deferred: Decision, effect: Effect, reason_code: str, reason: str) -> Decision:
    return Decision(effect, rule_id=deferred.rule_id, reason_code=reason_code, reason=reason,
                    policy_version=deferred.policy_version, layer=deferred.layer)
