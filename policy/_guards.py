"""Checks that run before a layer's rules: rate limits, phases, delegation, budget.

Each guard returns a Decision when it decides the call, or None to let the
next stage run. Order follows the reference pipeline (§14): rate limit, phase
visibility, delegation and manifest, then budget accounting.
"""

from __future__ import annotations

from policy._context import cost_of
from policy._exprlib import is_number
from policy.compiler import CompiledPolicy
from policy.decision import Decision, Effect
from policy.glob import glob_match
from policy.session import SessionState

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_OVER = {"deny": Effect.DENY, "defer": Effect.DEFER}


def _decision(policy: CompiledPolicy, layer: int, effect: Effect, code: str, reason: str) -> Decision:
    return Decision(effect, reason_code=code, reason=reason, policy_version=policy.version, layer=layer)


def rate_limit(policy: CompiledPolicy, layer: int, tool: str, state: SessionState, now: float) -> Decision | None:
    """Token bucket per ``rate_limit`` line: N calls per window, refilled continuously.

    A call takes a token from every matching bucket, or, when one is empty, from none."""
    taken = []
    for pattern, matcher, count, seconds, bucket in policy.rate_limits:
        if not matcher(tool):
            continue
        key = f"{layer}:{bucket}"
        tokens, last = state.buckets.get(key, (float(count), now))
        tokens = min(float(count), tokens + max(now - last, 0.0) * count / seconds)
        if tokens < 1.0:
            state.buckets[key] = [tokens, now]
            return _decision(policy, layer, Effect.DENY, "RATE_EXCEEDED",
                             f"rate limit {pattern}: {count} per {int(seconds)}s exceeded")
        taken.append((key, tokens - 1.0))
    for key, tokens in taken:
        state.buckets[key] = [tokens, now]
    return None


def phase_visibility(policy: CompiledPolicy, layer: int, tool: str, state: SessionState) -> Decision | None:
    """Deny tools the current phase does not list (OUT_OF_PHASE_TOOL_CALL)."""
    name = state.phase.get(layer) or policy.start_phase
    phase = policy.phases.get(name)  # type: ignore[arg-type]
    if phase is None or any(visible(tool) for visible in phase.visible):
        return None
    return _decision(policy, layer, Effect.DENY, "OUT_OF_PHASE_TOOL_CALL",
                     f"tool {tool} is not visible in phase {name}")


def _scope_globs(scope: object) -> list[str]:
    """A hop's scope as globs: a list of entries or one glob string. Anything
    else (null, a number, a map) is unreadable and so grants nothing."""
    if isinstance(scope, str):
        scope = [scope]
    if not isinstance(scope, (list, tuple)):
        return []
    return [str(entry).split(":", 1)[0] for entry in scope]


def delegation_chain(call_delegation: dict, tool: str) -> str | None:
    """Why ``tool`` lies outside a delegated call's scope (every hop's), or None."""
    hops = []
    if "scope" in call_delegation:
        hops.append(_scope_globs(call_delegation["scope"]))
    chain = call_delegation.get("chain") or ()
    if not isinstance(chain, (list, tuple)):
        return "delegation chain is not a list of hops"
    for hop in chain:
        if not isinstance(hop, dict):
            return "delegation chain has a hop that is not a map"
        if "scope" in hop:
            hops.append(_scope_globs(hop["scope"]))
    for globs in hops:
        if not any(glob_match(g, tool) for g in globs):
            return f"tool {tool} is outside the delegated scope {sorted(globs)}"
    return None


def _seconds(value: object) -> float | None:
    if is_number(value):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, str):
        text = value.strip().lower()
        for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
            if text.endswith(unit):
                try:
                    return float(text[: -len(unit)]) * _DURATION_UNITS[unit]
                except ValueError:
                    return None
        try:
            return float(text)
        except ValueError:
            return None
    return None


def _within_scope(requested: object, declared: tuple[str, ...]) -> bool:
    wanted = [requested] if isinstance(requested, str) else requested
    if not isinstance(wanted, (list, tuple)) or not wanted:
        return False
    globs = [d.split(":", 1)[0] for d in declared]
    return all(isinstance(r, str) and any(g == r or glob_match(g, r) for g in globs) for r in wanted)


def _manifest(policy: CompiledPolicy) -> tuple[dict, dict]:
    grants, undeclared = {}, {}
    for line in policy.manifest:
        words = line.words
        if line.kind == "grant":
            grants[(words[0], words[2])] = (int(words[4]), len(words) == 6)
        else:
            undeclared[words[0]] = words[2]
    return grants, undeclared


def invoke_agent(policy: CompiledPolicy, layer: int, call, args: dict, tool: str,
                 state: SessionState) -> Decision | None:
    """``delegate`` blocks and manifest lines for invoke_agent calls."""
    if not (tool == "invoke_agent" or tool.endswith("/invoke_agent")) or not (policy.delegates or policy.manifest):
        return None
    target = args.get("target_agent_id") or args.get("agent_id")
    orchestrator = call.agent_id or policy.agent
    grants, undeclared = _manifest(policy)
    named = isinstance(target, str)  # a list or map names no agent
    delegate = policy.delegates.get(target) if named else None
    grant = grants.get((orchestrator, target)) if named else None

    def refuse(reason: str, effect: Effect = Effect.DENY) -> Decision:
        return _decision(policy, layer, effect, "DELEGATION_EXCEEDS_AUTHORITY", reason)

    if delegate is None and grant is None:
        return refuse(f"agent {target!r} is not a declared delegate", _OVER[undeclared.get(orchestrator, "deny")])
    if delegate is not None:
        if not _within_scope(args.get("delegation_scope"), delegate.scopes):
            return refuse(f"delegation_scope {args.get('delegation_scope')!r} exceeds {list(delegate.scopes)}")
        if delegate.ttl is not None:
            ttl = _seconds(args.get("delegation_ttl"))
            if ttl is None or ttl > delegate.ttl:
                return refuse(f"delegation_ttl {args.get('delegation_ttl')!r} missing or above {delegate.ttl:g}s")
    if grant is not None:
        limit, approval = grant
        used = state.invocations.get(target, 0)
        if used >= limit:
            return refuse(f"manifest grant allows {limit} invocation(s) of {target}")
        state.invocations[target] = used + 1
        if approval:
            return _decision(policy, layer, Effect.DEFER, "DELEGATION_REQUIRES_APPROVAL",
                             f"invoking {target} requires approval")
    if delegate is not None and delegate.ceiling == "approval":
        return _decision(policy, layer, Effect.DEFER, "DELEGATION_REQUIRES_APPROVAL",
                         f"delegating to {target} requires approval")
    return None


def budget(policy: CompiledPolicy, layer: int, args: dict, written: dict, state: SessionState,
           now: float) -> Decision | None:
    """Session/daily spend and max_calls; the call's cost is its ``amount`` (see ``cost_of``)."""
    spec = policy.budget
    if spec is None:
        return None
    effect = _OVER.get(spec.on_exceed, Effect.DENY)
    state.roll_day(int(now // 86400))
    cost = cost_of(args, written) if (spec.max is not None or spec.daily is not None) else 0.0
    if spec.max is not None and (state.cost_usd + cost > spec.max or state.cost_usd >= spec.max):
        return _decision(policy, layer, effect, "BUDGET_SESSION_EXCEEDED",
                         f"session budget {spec.max:g} exceeded (spent {state.cost_usd:g}, this call {cost:g})")
    if spec.daily is not None and (state.daily_cost_usd + cost > spec.daily or state.daily_cost_usd >= spec.daily):
        return _decision(policy, layer, effect, "BUDGET_DAILY_EXCEEDED",
                         f"daily budget {spec.daily:g} exceeded (spent {state.daily_cost_usd:g}, this call {cost:g})")
    if spec.max_calls is not None and state.call_count > spec.max_calls:
        return _decision(policy, layer, effect, "SESSION_TOOL_LIMIT",
                         f"session call limit {spec.max_calls} reached")
    return None
