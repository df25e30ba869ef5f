"""Delegation: delegate blocks, manifest lines and delegated call chains."""

from policy import Effect, Engine, ToolCall, ast
from tests.policy._build import agent, compiled, rule, rules, strict


def invoke(engine, **args):
    return engine.decide(ToolCall("multiagent/invoke_agent", args, session_id="s"))


def delegating_engine(ceiling="inherited"):
    delegate = ast.Delegate("fraud-bot", scopes=("stripe/refund:amount<=500", "stripe/read_*"), ttl=86400.0,
                            ceiling=ceiling)
    return Engine([compiled(agent(delegate, rules(rule("permit", "*/invoke_agent"))))])


def test_invoke_within_declared_scope_and_ttl_reaches_the_rules():
    """A declared target, a scope inside the declared globs and a ttl within limit pass to the rules."""
    result = invoke(delegating_engine(), target_agent_id="fraud-bot", delegation_scope=["stripe/refund", "stripe/read_x"],
                    delegation_ttl="1h")
    assert (result.effect, result.rule_id) == (Effect.PERMIT, "fpl-0")


def test_invoke_violations_exceed_authority():
    """Undeclared target, wider scope, missing or long ttl each deny with DELEGATION_EXCEEDS_AUTHORITY."""
    engine = delegating_engine()
    attempts = [
        dict(target_agent_id="other-bot", delegation_scope="stripe/refund", delegation_ttl=60),
        dict(target_agent_id="fraud-bot", delegation_scope="stripe/*", delegation_ttl=60),
        dict(target_agent_id="fraud-bot", delegation_scope="stripe/refund"),
        dict(target_agent_id="fraud-bot", delegation_scope="stripe/refund", delegation_ttl="2d"),
    ]
    assert [(invoke(engine, **a).effect, invoke(engine, **a).reason_code) for a in attempts] == [
        (Effect.DENY, "DELEGATION_EXCEEDS_AUTHORITY")] * 4


def test_ceiling_approval_defers():
    """ceiling approval turns an in-scope invocation into a DEFER."""
    result = invoke(delegating_engine("approval"), agent_id="fraud-bot", delegation_scope="stripe/refund",
                    delegation_ttl=10)
    assert (result.effect, result.reason_code, result.defer_token[:4]) == (
        Effect.DEFER, "DELEGATION_REQUIRES_APPROVAL", "dfr_")


def test_manifest_grant_limits_invocations():
    """manifest grant orch to worker max 2 allows two invocations per session, then denies."""
    grant = ast.Manifest("grant", ("orch", "to", "worker", "max", "2"))
    engine = Engine([compiled(grant, agent(rules(rule("permit", "invoke_agent")), name="orch"))])
    results = [engine.decide(ToolCall("invoke_agent", {"target_agent_id": "worker"}, session_id="s")).effect
               for _ in range(3)]
    assert results == [Effect.PERMIT, Effect.PERMIT, Effect.DENY]
    undeclared = engine.decide(ToolCall("invoke_agent", {"target_agent_id": "stranger"}, session_id="s"))
    assert undeclared.reason_code == "DELEGATION_EXCEEDS_AUTHORITY"


def test_delegated_call_is_limited_to_its_scope():
    """A call carrying a delegation scope gets the intersection of that scope and the policy."""
    engine = Engine([compiled(agent(rules(rule("permit", "fs/*"), rule("permit", "net/*"))))])
    chain = {"scope": ["fs/read", "net/*"], "depth": 1}
    inside = engine.decide(ToolCall("fs/read", delegation=chain))
    assert (inside.effect, inside.rule_id) == (Effect.PERMIT, "fpl-0")
    outside = engine.decide(ToolCall("fs/write", delegation=chain))
    assert (outside.effect, outside.reason_code) == (Effect.DENY, "DELEGATION_EXCEEDS_AUTHORITY")
    parent_narrower = {"scope": ["fs/*", "net/*"], "chain": [{"scope": ["fs/*"]}]}
    assert engine.decide(ToolCall("net/get", delegation=parent_narrower)).reason_code == "DELEGATION_EXCEEDS_AUTHORITY"
    not_in_policy = engine.decide(ToolCall("shell/exec", delegation={"scope": ["*/*"]}))
    assert (not_in_policy.effect, not_in_policy.reason_code) == (Effect.DENY, "UNMATCHED_DENY")


def test_strict_deny_wins_inside_a_delegated_child():
    """A delegated call whose scope includes a deny! tool is still denied by the deny!."""
    base = compiled(agent(rules(rule("permit", "shell/*"), strict("shell/rm"))))
    child_layer = compiled(rule("permit", "shell/rm"), source="child")
    engine = Engine([base, child_layer])
    result = engine.decide(ToolCall("shell/rm", delegation={"scope": ["shell/*"]}))
    assert (result.effect, result.reason_code, result.rule_id, result.layer) == (
        Effect.DENY, "FPL_STRICT_DENY", "fpl-1", 0)
