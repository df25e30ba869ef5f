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
   So a later layer can add and tighten but never loosen;
7. when canonicalisation changed an argument and the result is not DENY, the
   rules run again on the arguments as written and the stricter result stands;
8. the call is recorded in its session; a PERMIT also commits its spend. A DEFER
   counts as having happened only once ``commit_approved`` reports its approval.

A condition error or a non-bool result denies with EXPR_RUNTIME_ERROR and the
rule's id; running over the time limits denies with POLICY_EVAL_TIMEOUT; any
other exception denies with ENGINE_ERROR. ``decide`` never raises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

from policy import _guards as guards
from policy._context import EvalContext, cost_of
from policy._exprlib import is_number
from policy.canonical import NulByte, canonical_args, canonical_tool, literal_args
from policy.compiler import CompiledPolicy, CompiledRule
from policy.decision import Decision, Effect, deny
from policy._static import static_effect
from policy._purity import decision_keys
from policy._envelope import ANYTHING, Envelope, envelope
from policy.session import SessionStore

DEFER_TTL_SECONDS = 300.0
RULE_TIMEOUT_SECONDS = 0.05
TOTAL_TIMEOUT_SECONDS = 0.5
PLAN_CACHE_LIMIT = 4096
_RANK = {Effect.PERMIT: 0, Effect.DEFER: 1, Effect.DENY: 2}
_PERMIT, _DEFER, _DENY = Effect.PERMIT, Effect.DEFER, Effect.DENY  # enum attribute access is slow
_EFFECT_NAME = {effect: effect.value for effect in Effect}
_FINITE_TYPES = (int, float)
_FOREVER = 1e15  # seconds; beyond any real clock, well inside float and datetime range checks


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
        self._vars0 = self.layers[0].vars
        self._single = len(self.layers) == 1
        self._plans: dict[str, tuple] = {}
        self._tools: dict[str, str] = {}  # raw tool id -> canonical
        self._has_strict = any(layer.strict_rules for layer in self.layers)
        self._decisions = [tuple(dataclasses.replace(r.decision, layer=i) for r in layer.rules)
                           for i, layer in enumerate(self.layers)]
        self._defaults = [self._default_decision(i, layer) for i, layer in enumerate(self.layers)]
        self._guarded = [bool(layer.rate_limits or layer.phases or layer.delegates or layer.manifest or layer.budget)
                         for layer in self.layers]
        self._sum_fields = tuple(sorted(frozenset().union(*(layer.sum_fields for layer in self.layers))))
        self._tracks_cost = any(layer.budget is not None and (layer.budget.max is not None or layer.budget.daily is not None)
                                for layer in self.layers)
        self._spends = self._tracks_cost or bool(self._sum_fields)  # a PERMIT has spend or sums to record

    # The static analyses answer the launcher before any call: like ``decide`` they never
    # raise, and on a failure give the answer that decides nothing in advance.

    def static_effect(self, tool: str) -> Effect | None:
        """PERMIT or DENY when every call to ``tool`` gets that effect whatever its
        arguments and session (the kernel may then decide it), else None."""
        try:
            return static_effect(self.layers, tool)
        except Exception:  # None: every call goes to decide, which fails closed
            return None

    def envelope(self, tool: str, key: str = "path") -> Envelope:
        """Every value argument ``key`` of a ``tool`` call can have when the call is permitted
        or deferred (an over-approximation; policy/_envelope.py)."""
        try:
            return envelope(self.layers, tool, key)
        except Exception:  # anything: the kernel closes nothing, decide still rules each call
            return ANYTHING

    def decision_keys(self, tool: str) -> frozenset[str] | None:
        """Argument names that decide every call to ``tool``: calls agreeing on them get the
        same decision whatever else differs (preconditions: policy/_purity.py), or None."""
        try:
            return decision_keys(self.layers, tool)
        except Exception:  # None: no decision is reused
            return None

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
        tool, args, timestamp = call.tool, call.args, call.timestamp
        if type(tool) is not str or not isinstance(args, dict):
            return deny("INVALID_CALL", "tool must be a string and args a map", policy_version=self._version)
        if type(timestamp) not in _FINITE_TYPES or not -_FOREVER < timestamp < _FOREVER:
            # NaN would refill rate-limit buckets forever; infinities break day and window arithmetic
            return deny("INVALID_CALL", "timestamp must be a finite number of seconds", policy_version=self._version)
        try:
            canonical = self._tools.get(tool)
            if canonical is None:
                canonical = self._canonical_tool(tool)
            tool = canonical
            written, args = args, canonical_args(args)
        except NulByte:
            return deny("NUL_BYTE", "NUL byte in tool id or arguments", policy_version=self._version)
        state = self.store.get(call.session_id or call.agent_id)
        with state.lock:
            state.call_count += 1
            ctx = EvalContext(tool, args, call, state, self._vars0)
            start = self._clock()
            if self._single:
                decision = self._single_layer(ctx, start)
            else:
                decision = self._strict(ctx, start) if self._has_strict else None
                if decision is None and call.delegation:
                    decision = self._chain(call, tool)
                if decision is None:
                    decision = self._combine(ctx, start)
            if written is not args and decision.effect is not _DENY:
                decision = self._as_written(ctx, written, decision, start)
            effect = decision.effect
            numbers: tuple = ()
            if effect is _PERMIT:
                if self._spends:
                    numbers = self._spend(state, args, call.args, call.timestamp)
            elif effect is _DEFER:
                decision = self._with_defer(decision, call, tool)
            state.record(tool, _EFFECT_NAME[effect], call.timestamp, numbers)
        return decision

    def _spend(self, state, args: dict, written: dict, timestamp: float) -> tuple:
        """Commit a permitted call's cost; the numbers its history entry keeps for session.sum."""
        if self._tracks_cost:
            state.add_cost(cost_of(args, written), int(timestamp // 86400))
        if not self._sum_fields:
            return ()
        return tuple((k, float(args[k])) for k in self._sum_fields if is_number(args.get(k)))

    def commit_approved(self, call, decision: Decision, timestamp: float | None = None) -> None:
        """Record that a human approved ``decision`` (a DEFER of ``call``) and the call ran.

        The session gains a PERMIT entry for it: its spend counts against the budget, its
        numbers against ``session.sum``, and ``history_*`` see it. The DEFER entry stays
        (``session.history`` shows both). ``timestamp`` is when it ran, by default the call's;
        an entry never goes before the newest one, since windows read history in time order.
        Call it once per approved call; a denied or expired DEFER needs nothing.
        Raises ValueError when ``decision`` is not a DEFER or ``call`` is malformed."""
        if decision.effect is not _DEFER:
            raise ValueError(f"only a DEFER can be approved, not {decision.effect.value}")
        when = call.timestamp if timestamp is None else timestamp
        if type(call.tool) is not str or not isinstance(call.args, dict) or type(when) not in _FINITE_TYPES \
                or not -_FOREVER < when < _FOREVER:
            raise ValueError("tool must be a string, args a map and the timestamp a finite number")
        tool, args = canonical_tool(call.tool), canonical_args(call.args)  # NulByte is a ValueError
        state = self.store.get(call.session_id or call.agent_id)
        with state.lock:
            when = max(when, state.newest_timestamp())
            state.record(tool, "PERMIT", when, self._spend(state, args, call.args, when))

    def _canonical_tool(self, tool: str) -> str:
        """canonical_tool with a bounded cache: agents call few distinct tools."""
        canonical = canonical_tool(tool)  # raises NulByte; such ids are never cached
        if len(self._tools) >= PLAN_CACHE_LIMIT:
            self._tools.clear()
        self._tools[tool] = canonical
        return canonical

    # ------------------------------------------------------------ stages

    def _check_rule(self, rule: CompiledRule, ctx: EvalContext, layer: int, start: float):
        """True / False for match / no match, or a _Verdict (error, timeout)."""
        if rule.net is not None:
            fits = rule.net(ctx.args)
            if fits is None:  # repeated query keys or headers disagree about a defer rule
                return self._verdict("AMBIGUOUS_ARGUMENTS", f"repeated query or header values of {rule.id} "
                                     "disagree; the receiver may act on either", rule, layer)
            if not fits:
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
                or guards.budget(layer, index, ctx.args, ctx.call.args, state, now))

    def _layer(self, index: int, ctx: EvalContext, start: float, guarded: bool = True) -> tuple[Decision, bool]:
        """This layer's decision and whether a guard or rule (not the default) made it."""
        layer = self.layers[index]
        ctx.vars = layer.vars
        if guarded and self._guarded[index]:
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

    def _single_layer(self, ctx: EvalContext, start: float) -> Decision:
        """The whole pipeline after counting, for the common one-layer engine (same order as layers)."""
        plan = self._plans.get(ctx.tool)
        if plan is None:
            plan = self._plan(ctx.tool)
        stricts, ordinary = plan
        decisions = self._decisions[0]
        for rule in stricts:
            outcome = self._check_rule(rule, ctx, 0, start)
            if outcome is True:
                return decisions[rule.position]
            if outcome is not False:
                return outcome.decision
        if ctx.call.delegation:
            chained = self._chain(ctx.call, ctx.tool)
            if chained is not None:
                return chained
        if self._guarded[0]:
            guarded = self._guards(0, self.layers[0], ctx)
            if guarded is not None:
                return guarded
        for rule in ordinary:
            if rule.condition is None and rule.net is None:
                return decisions[rule.position]
            outcome = self._check_rule(rule, ctx, 0, start)
            if outcome is True:
                return decisions[rule.position]
            if outcome is not False:
                return outcome.decision
        return self._defaults[0]

    def _plan(self, tool: str) -> tuple[tuple[CompiledRule, ...], tuple[CompiledRule, ...]]:
        """The first layer's deny! and other candidate rules for ``tool`` (cached)."""
        candidates = self.layers[0].candidates(tool)
        plan = (tuple(r for r in candidates if r.strict), tuple(r for r in candidates if not r.strict))
        if len(self._plans) >= PLAN_CACHE_LIMIT:
            self._plans.clear()
        self._plans[tool] = plan
        return plan

    def _combine(self, ctx: EvalContext, start: float, guarded: bool = True) -> Decision:
        best, _ = self._layer(0, ctx, start, guarded)
        for index in range(1, len(self.layers)):
            if _RANK[best.effect] == 2:
                break
            decision, decided = self._layer(index, ctx, start, guarded)
            if decided and _RANK[decision.effect] > _RANK[best.effect]:
                best = decision
        return best

    def _as_written(self, ctx: EvalContext, written: dict, decision: Decision, start: float) -> Decision:
        """Re-check the rules on the arguments as written when canonicalisation changed them.

        Canonical forms catch look-alike evasions of deny rules; but a permit must
        also hold for the text the sandbox will act on (``/tmр`` with a Cyrillic
        ``р`` is not ``/tmp``). The more restrictive of the two decisions stands.
        Guards are not re-run: they already counted this call."""
        ctx.args = literal_args(written)
        ctx.vars = self._vars0
        second = self._strict(ctx, start) if self._has_strict else None
        if second is None:
            second = self._combine(ctx, start, guarded=False)
        if _RANK[second.effect] <= _RANK[decision.effect]:
            return decision
        return dataclasses.replace(second, reason=f"{second.reason} (arguments as written, before canonicalisation)")

    # ------------------------------------------------------------ results

    def _with_defer(self, decision: Decision, call, tool: str) -> Decision:
        token = "dfr_" + hashlib.sha256(f"{call.call_id}{tool}".encode("utf-8")).hexdigest()[:16]
        return dataclasses.replace(decision, defer_token=token, defer_expires_at=call.timestamp + self._defer_ttl)
