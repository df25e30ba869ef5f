"""ToolCall -> Decision over one or more compiled policy layers.

Pipeline of one decision (every step may decide; the first that does wins):

1. reject calls that are malformed or carry a NUL byte; canonicalise tool and args;
2. count the call in its session (``session.call_count`` includes it);
3. ``deny!`` rules of ALL layers, in layer then rule order: a match is final
   (FPL_STRICT_DENY). Nothing later (rules, budgets, approvals, other layers,
   delegation) can turn it into anything else;
4. a delegated call (``ToolCall.delegation`` with a ``scope``) outside that
   scope is denied (DELEGATION_EXCEEDS_AUTHORITY);
5. each layer: rate limit, phase visibility, invoke_agent delegation/manifest,
   budget, then its rules (first match), else its default;
6. layers combine: the first layer always counts (rule, guard or default); a
   later layer counts only when one of its guards or rules decided. The most
   restrictive effect wins (DENY > DEFER > PERMIT); ties go to the earlier layer.
   So a later layer can add and tighten but never loosen.

A condition error or a non-bool result denies with EXPR_RUNTIME_ERROR and the
rule's id; running over the time limits denies with POLICY_EVAL_TIMEOUT; any
other exception denies with ENGINE_ERROR. ``decide`` never raises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

from policy import _guards as guards
from policy._exprlib import EvalContext, amount_of, is_number
from policy.canonical import NulByte, canonical_args, canonical_tool
from policy.compiler import CompiledPolicy, CompiledRule
from policy.decision import Decision, Effect, deny
from policy.session import SessionState, SessionStore

DEFER_TTL_SECONDS = 300.0
RULE_TIMEOUT_SECONDS = 0.05
TOTAL_TIMEOUT_SECONDS = 0.5
_RANK = {Effect.PERMIT: 0, Effect.DEFER: 1, Effect.DENY: 2}


class _Verdict:
    """What a rule check produced besides match / no match: a final decision."""

    __slots__ = ("decision",)

    def __init__(self, decision: Decision):
        self.decision = decision


class Engine:
    """Decides tool calls against ordered policy layers sharing one session store."""

    def __init__(self, layers: list[CompiledPolicy], store: SessionStore | None = None, *,
                 clock=time.perf_counter, defer_ttl: float = DEFER_TTL_SECONDS,
                 rule_timeout: float = RULE_TIMEOUT_SECONDS, total_timeout: float = TOTAL_TIMEOUT_SECONDS):
        if not layers:
            raise ValueError("Engine needs at least one compiled policy")
        self.layers = tuple(layers)
        self.store = store if store is not None else SessionStore()
        self._clock = clock
        self._defer_ttl = defer_ttl
        self._rule_timeout = rule_timeout
        self._total_timeout = total_timeout
        self._version = self.layers[0].version
        self._decisions = [tuple(dataclasses.replace(r.decision, layer=i) for r in layer.rules)
                           for i, layer in enumerate(self.layers)]
        self._defaults = [self._default_decision(i, layer) for i, layer in enumerate(self.layers)]
        self._guarded = [bool(layer.rate_limits or layer.phases or layer.delegates or layer.manifest or layer.budget)
                         for layer in self.layers]
        self._sum_fields = tuple(sorted(frozenset().union(*(layer.sum_fields for layer in self.layers))))
        self._tracks_cost = any(layer.budget is not None and (layer.budget.max is not None or layer.budget.daily is not None)
                                for layer in self.layers)

    @staticmethod
    def _default_decision(index: int, layer: CompiledPolicy) -> Decision:
        written = layer.default_written or "deny"
        return Decision(layer.default, reason_code="UNMATCHED_" + layer.default.value,
                        reason=f"no rule matched; default {written}", policy_version=layer.version, layer=index)

    # ------------------------------------------------------------ entry point

    def decide(self, call) -> Decision:
        """The decision for ``call``. Fails closed: never raises."""
        try:
            return self._decide(call)
        except Exception as exc:  # fail closed on anything unforeseen
            return deny("ENGINE_ERROR", f"policy engine error: {type(exc).__name__}: {exc}",
                        policy_version=self._version)

    def _decide(self, call) -> Decision:
        tool, args = call.tool, call.args
        if type(tool) is not str or not isinstance(args, dict):
            return deny("INVALID_CALL", "tool must be a string and args a map", policy_version=self._version)
        try:
            tool = canonical_tool(tool)
            args = canonical_args(args)
        except NulByte:
            return deny("NUL_BYTE", "NUL byte in tool id or arguments", policy_version=self._version)
        state = self.store.get(call.session_id or call.agent_id)
        with state.lock:
            state.call_count += 1
            ctx = EvalContext(tool, args, call, state, self.layers[0].vars)
            start = self._clock()
            decision = self._strict(ctx, start) or self._chain(call, tool) or self._combine(ctx, start)
            if decision.effect is Effect.DEFER:
                decision = self._with_defer(decision, call, tool)
            self._record(state, tool, args, decision, call.timestamp)
        return decision

    # ------------------------------------------------------------ stages

    def _check_rule(self, rule: CompiledRule, ctx: EvalContext, layer: int, start: float):
        """True / False for match / no match, or a _Verdict (error, timeout)."""
        if rule.net is not None and not rule.net(ctx.args):
            return False
        condition = rule.condition
        if condition is None:
            return True
        before = self._clock()
        try:
            result = condition.function(ctx)
        except Exception as exc:  # any failure inside a condition denies with the rule's id
            return self._verdict("EXPR_RUNTIME_ERROR", f"condition of {rule.id} failed: {exc}", rule, layer)
        after = self._clock()
        if after - before > self._rule_timeout:
            return self._verdict("POLICY_EVAL_TIMEOUT", f"condition of {rule.id} exceeded "
                                 f"{self._rule_timeout * 1000:g} ms", rule, layer)
        if after - start > self._total_timeout:
            return self._verdict("POLICY_EVAL_TIMEOUT", f"policy evaluation exceeded "
                                 f"{self._total_timeout * 1000:g} ms at {rule.id}", rule, layer)
        if result is True or result is False:
            return result
        return self._verdict("EXPR_RUNTIME_ERROR", f"condition of {rule.id} returned "
                             f"{type(result).__name__}, not a bool", rule, layer)

    def _verdict(self, code: str, reason: str, rule: CompiledRule, layer: int) -> _Verdict:
        return _Verdict(Decision(Effect.DENY, rule_id=rule.id, reason_code=code, reason=reason,
                                 policy_version=self.layers[layer].version, layer=layer))

    def _strict(self, ctx: EvalContext, start: float) -> Decision | None:
        for index, layer in enumerate(self.layers):
            ctx.vars = layer.vars
            for rule in layer.strict_candidates(ctx.tool):
                outcome = self._check_rule(rule, ctx, index, start)
                if outcome is True:
                    return self._decisions[index][rule.position]
                if outcome is not False:
                    return outcome.decision
        return None

    def _chain(self, call, tool: str) -> Decision | None:
        if not call.delegation:
            return None
        reason = guards.delegation_chain(call.delegation, tool)
        if reason is None:
            return None
        return deny("DELEGATION_EXCEEDS_AUTHORITY", reason, policy_version=self._version)

    def _guards(self, index: int, layer: CompiledPolicy, ctx: EvalContext) -> Decision | None:
        state, now = ctx.state, ctx.call.timestamp
        return (guards.rate_limit(layer, index, ctx.tool, state, now)
                or guards.phase_visibility(layer, index, ctx.tool, state)
                or guards.invoke_agent(layer, index, ctx.call, ctx.args, ctx.tool, state)
                or guards.budget(layer, index, ctx.args, state, now))

    def _layer(self, index: int, ctx: EvalContext, start: float) -> tuple[Decision, bool]:
        """This layer's decision and whether a guard or rule (not the default) made it."""
        layer = self.layers[index]
        ctx.vars = layer.vars
        if self._guarded[index]:
            guarded = self._guards(index, layer, ctx)
            if guarded is not None:
                return guarded, True
        decisions = self._decisions[index]
        for rule in layer.candidates(ctx.tool):
            if rule.strict:
                continue  # already evaluated in _strict
            outcome = self._check_rule(rule, ctx, index, start)
            if outcome is True:
                return decisions[rule.position], True
            if outcome is not False:
                return outcome.decision, True
        return self._defaults[index], False

    def _combine(self, ctx: EvalContext, start: float) -> Decision:
        best, _ = self._layer(0, ctx, start)
        for index in range(1, len(self.layers)):
            if _RANK[best.effect] == 2:
                break
            decision, decided = self._layer(index, ctx, start)
            if decided and _RANK[decision.effect] > _RANK[best.effect]:
                best = decision
        return best

    # ------------------------------------------------------------ results

    def _with_defer(self, decision: Decision, call, tool: str) -> Decision:
        token = "dfr_" + hashlib.sha256(f"{call.call_id}{tool}".encode("utf-8")).hexdigest()[:16]
        return dataclasses.replace(decision, defer_token=token, defer_expires_at=call.timestamp + self._defer_ttl)

    def _record(self, state: SessionState, tool: str, args: dict, decision: Decision, now: float) -> None:
        numbers: tuple = ()
        permitted = decision.effect is Effect.PERMIT
        if permitted and self._sum_fields:
            numbers = tuple((k, float(args[k])) for k in self._sum_fields if is_number(args.get(k)))
        state.record(tool, decision.effect.value, now, numbers)
        if permitted and self._tracks_cost:
            state.add_cost(max(float(amount_of(args)), 0.0), int(now // 86400))
