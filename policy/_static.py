"""Decisions that never depend on the call: what the kernel may decide without asking.

A tool is *static* when every call to it gets the same effect whatever its
arguments, session, time or caller. The sandbox then lets the seccomp filter
answer those syscalls directly (no supervisor round trip). Soundness rules:

- any guard (budget, phases, rate limits, delegation, manifest) makes nothing
  static: guards count calls or depend on session state;
- any condition, anywhere, that reads session state or history makes nothing
  static: a call the kernel answers would be missing from that history;
- within a layer, conditional or network-clause rules matching the tool before
  the deciding rule make it dynamic; a matching conditional ``deny!`` in any
  layer makes it dynamic;
- only PERMIT and DENY can be static: DEFER needs a human.
"""

from __future__ import annotations

from policy import ast
from policy.decision import Effect

_SESSION_FUNCTIONS = ("history_", "deny_count", "session.")
_RANK = {Effect.PERMIT: 0, Effect.DEFER: 1, Effect.DENY: 2}


def reads_session(expr) -> bool:
    """True when ``expr`` reads session state, history or counters."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and node.name == "session":
            return True
        if isinstance(node, ast.Call) and node.func.startswith(_SESSION_FUNCTIONS):
            return True
        for name in getattr(node, "__slots__", ()):
            value = getattr(node, name, None)
            if isinstance(value, tuple):
                for item in value:
                    stack.extend(x for x in (item if isinstance(item, tuple) else (item,)) if _is_expr(x))
            elif _is_expr(value):
                stack.append(value)
    return False


def _is_expr(value) -> bool:
    return isinstance(value, (ast.Literal, ast.Name, ast.Member, ast.Index, ast.Slice, ast.Call,
                              ast.Unary, ast.Binary, ast.Conditional, ast.ListExpr))


def _layer_is_guarded(layer) -> bool:
    return bool(layer.budget or layer.phases or layer.rate_limits or layer.delegates or layer.manifest
                or layer.reads_session)


def _unconditional(rule) -> bool:
    return rule.condition is None and rule.net is None


def _layer_effect(layer, tool: str):
    """(effect, decided_by_rule) for ``tool`` in one layer, or None when it depends on the call."""
    for rule in layer.candidates(tool):
        if rule.strict:
            continue  # strict rules are judged across all layers first
        if not _unconditional(rule):
            return None
        return rule.effect, True
    return layer.default, False


def static_effect(layers, tool: str) -> Effect | None:
    """The effect every call to ``tool`` gets, or None when it depends on the call."""
    if any(_layer_is_guarded(layer) for layer in layers):
        return None
    for layer in layers:
        for rule in layer.candidates(tool):
            if rule.strict:
                return Effect.DENY if _unconditional(rule) else None
    first = _layer_effect(layers[0], tool)
    if first is None:
        return None
    best = first[0]
    for layer in layers[1:]:
        found = _layer_effect(layer, tool)
        if found is None:
            return None
        effect, decided = found
        if decided and _RANK[effect] > _RANK[best]:
            best = effect
    return best if best in (Effect.PERMIT, Effect.DENY) else None
