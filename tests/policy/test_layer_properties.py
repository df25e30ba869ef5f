"""Properties of layer composition, checked on generated policies."""

from hypothesis import given, settings
from hypothesis import strategies as st

from policy import Effect, Engine, ToolCall
from policy._checks import pattern_covers
from policy.glob import glob_match
from tests.policy._build import agent, compiled, rule, rules, strict

TOOLS = ["fs/read", "fs/write", "net/connect", "shell/exec"]
PATTERNS = TOOLS + ["fs/*", "net/*", "*", "shell/*"]
RANK = {Effect.PERMIT: 0, Effect.DEFER: 1, Effect.DENY: 2}

plain_rules = st.lists(st.tuples(st.sampled_from(["permit", "deny", "defer"]), st.sampled_from(PATTERNS)), max_size=5)
strict_patterns = st.lists(st.sampled_from(PATTERNS), max_size=2)


def build(rule_specs, stricts, default, source):
    body = [strict(p) for p in stricts] + [rule(e, p) for e, p in rule_specs]
    return compiled(agent(rules(*body), default=default), source=source)


def safe(rule_specs, stricts):
    """Drop rules the compiler would reject as unreachable under an unconditional deny!."""
    return [(e, p) for e, p in rule_specs if not any(pattern_covers(s, p) for s in stricts)]


@settings(max_examples=150, deadline=None)
@given(plain_rules, strict_patterns, st.sampled_from(["permit", "deny", "defer"]),
       plain_rules, strict_patterns, st.sampled_from(["permit", "deny", "defer"]), st.sampled_from(TOOLS))
def test_adding_a_layer_never_loosens(base_rules, base_strict, base_default, top_rules, top_strict, top_default, tool):
    """decide([base, overlay]) is at least as restrictive as decide([base]) for every call."""
    base = build(safe(base_rules, base_strict), base_strict, base_default, "base")
    overlay = build(safe(top_rules, top_strict), top_strict, top_default, "overlay")
    alone = Engine([base]).decide(ToolCall(tool))
    stacked = Engine([base, overlay]).decide(ToolCall(tool))
    assert RANK[stacked.effect] >= RANK[alone.effect]


@settings(max_examples=150, deadline=None)
@given(plain_rules, strict_patterns, plain_rules, strict_patterns, st.sampled_from(TOOLS))
def test_any_matching_strict_deny_decides(base_rules, base_strict, top_rules, top_strict, tool):
    """If any layer has a deny! matching the tool, the decision is FPL_STRICT_DENY, whatever else matches."""
    base = build(safe(base_rules, base_strict), base_strict, "permit", "base")
    overlay = build(safe(top_rules, top_strict), top_strict, "permit", "overlay")
    result = Engine([base, overlay]).decide(ToolCall(tool))
    if any(glob_match(p, tool) for p in base_strict + top_strict):
        assert (result.effect, result.reason_code) == (Effect.DENY, "FPL_STRICT_DENY")
    else:
        assert result.reason_code != "FPL_STRICT_DENY"
