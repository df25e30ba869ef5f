"""Each request decided, held for approval when deferred, recorded before it takes effect."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from policy.calls import ToolCall
from policy.decision import Decision, Effect, deny
from sandbox.egress.catalogue import Catalogue, Endpoint
from sandbox.egress.http_calls import MAX_BODY, BodyError, HttpRequest, to_tool_call
from sandbox.egress.credentials import Credential


@dataclass
class Verdict:
    decision: Decision
    tool: str
    args: dict
    endpoint: Endpoint | None = None
    credential: Credential | None = None
    secret: str | None = None  # injected upstream; never recorded


class Decider:
    def __init__(self, decide: Callable[[ToolCall], Decision], audit: Callable[[dict], None] | None,
                 approve, approve_timeout: float, session_id: str, catalogue: Catalogue, plan,
                 environ: dict[str, str] | None = None, max_body: int = MAX_BODY):
        self.decide, self.audit, self.approve = decide, audit, approve
        self.approve_timeout, self.session_id = approve_timeout, session_id
        self.catalogue, self.plan = catalogue, plan  # plan.credential_for(tool) -> Credential | None
        self.environ = dict(os.environ if environ is None else environ)
        self.max_body = max_body  # bytes of a request body read before a decision

    def request(self, request: HttpRequest) -> Verdict:
        """The final verdict on ``request`` (PERMIT or DENY, never DEFER), already recorded."""
        started = time.monotonic()
        try:
            tool, args, endpoint = to_tool_call(request, self.catalogue, self.max_body)
        except Exception as err:  # noqa: BLE001 - a request that cannot be read exactly is refused
            tool = f"http/{request.method.lower()}"
            args = {"host": request.host, "port": request.port, "method": request.method, "path": request.path}
            code, why = ("EGRESS_UNREADABLE", str(err)) if isinstance(err, BodyError) else \
                ("EGRESS_ERROR", f"the request could not be read: {type(err).__name__}: {err}")
            return self.record(Verdict(deny(code, why), tool, args), started)
        call = ToolCall(tool=tool, args=args, session_id=self.session_id, timestamp=time.time())
        decision = self.settle(call, self.evaluate(call))
        verdict = Verdict(decision, tool, args, endpoint)
        if decision.effect is Effect.PERMIT:
            verdict = self.broker(verdict, request.scheme)
        return self.record(verdict, started)

    def refuse(self, tool: str, args: dict, code: str, reason: str) -> None:
        """Record a refusal that precedes any request (a failed handshake, a foreign name)."""
        self.record(Verdict(deny(code, reason), tool, args), time.monotonic())

    def evaluate(self, call: ToolCall) -> Decision:
        try:
            decision = self.decide(call)
        except Exception as err:  # noqa: BLE001 - fail closed
            return deny("DECIDE_ERROR", f"policy evaluation failed: {type(err).__name__}")
        if not isinstance(decision, Decision):
            return deny("DECIDE_ERROR", f"decide() returned {type(decision).__name__}, not a Decision")
        return decision

    def settle(self, call: ToolCall, decision: Decision) -> Decision:
        """A DEFER waits for approve() (or the timeout) on this connection's thread."""
        if decision.effect is not Effect.DEFER:
            return decision
        if self.approve is None:
            time.sleep(self.approve_timeout)
            return _final(decision, Effect.DENY, "APPROVAL_TIMEOUT",
                          f"not approved within {self.approve_timeout:g}s ({decision.reason})")
        answer = getattr(self.approve, "answer", None)
        try:
            if answer is not None:
                result = answer(call, decision, self.approve_timeout)
                if not isinstance(result, Decision):
                    return _final(decision, Effect.DENY, "APPROVAL_ERROR",
                                  f"answer() returned {type(result).__name__}, not a Decision")
                return _final(decision, Effect.PERMIT if result.effect is Effect.PERMIT else Effect.DENY,
                              result.reason_code, result.reason)
            approved = self.approve(call, decision, self.approve_timeout) is True
        except Exception as err:  # noqa: BLE001 - a broken approval path denies
            return _final(decision, Effect.DENY, "APPROVAL_ERROR", f"approval failed: {type(err).__name__}: {err}")
        return _final(decision, Effect.PERMIT if approved else Effect.DENY,
                      "APPROVAL_GRANTED" if approved else "APPROVAL_DENIED",
                      f"{'approved' if approved else 'approval refused'} ({decision.reason})")

    def broker(self, verdict: Verdict, scheme: str) -> Verdict:
        """Attach the secret for a tool a credential block covers; a missing secret denies, and so
        does plain HTTP (anyone on the path would read the secret)."""
        credential = self.plan.credential_for(verdict.tool)
        if credential is None:
            return verdict
        if scheme != "https":
            verdict.decision = _final(verdict.decision, Effect.DENY, "CREDENTIAL_NEEDS_TLS",
                                      f"credential {credential.name} is sent over TLS only; this request "
                                      f"({verdict.args.get('url')}) is plain HTTP")
            return verdict
        secret = credential.secret(self.environ)
        if secret is None:
            verdict.decision = _final(verdict.decision, Effect.DENY, "CREDENTIAL_UNAVAILABLE",
                                      f"credential {credential.name} has no secret in {credential.path}")
            return verdict
        verdict.credential, verdict.secret = credential, secret
        return verdict

    def record(self, verdict: Verdict, started: float) -> Verdict:
        """Audit before the verdict takes effect; a permit that cannot be recorded is denied."""
        if self.audit is None:
            return verdict
        if not self._write(verdict, started) and verdict.decision.effect is Effect.PERMIT:
            verdict.decision = _final(verdict.decision, Effect.DENY, "AUDIT_WRITE_FAILED",
                                      "the audit record could not be written")
            verdict.secret = None
            self._write(verdict, started)
        return verdict

    def _write(self, verdict: Verdict, started: float) -> bool:
        d = verdict.decision
        record = {"time": time.time(), "session": self.session_id, "pid": None, "syscall": "http",
                  "tool": verdict.tool, "args": verdict.args, "effect": d.effect.value, "rule_id": d.rule_id,
                  "reason_code": d.reason_code, "reason": d.reason, "policy_version": d.policy_version,
                  "latency_us": round((time.monotonic() - started) * 1e6)}
        if verdict.credential is not None:
            record["credential"] = verdict.credential.name
        try:
            self.audit(record)
            return True
        except Exception:  # noqa: BLE001
            return False


def _final(decision: Decision, effect: Effect, code: str, reason: str) -> Decision:
    return Decision(effect, rule_id=decision.rule_id, reason_code=code, reason=reason,
                    policy_version=decision.policy_version, layer=decision.layer)
