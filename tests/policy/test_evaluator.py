"""Engine decisions on hand-built policies (independent of the parser)."""

from policy import Effect, Engine, SessionStore, ToolCall
from tests.policy._build import (agent, arg, call, compiled, dot, lit, name, op, rule, rules, strict)
from policy import ast


def decide(policy, tool, args=None, **call_fields):
    engine = Engine([policy] if not isinstance(policy, list) else policy)
    return engine.decide(ToolCall(tool, args or {}, **call_fields))


def test_first_match_wins_in_rule_order():
    """The first rule whose pattern and condition match decides; its id is fpl-N in order."""
    policy = compiled(agent(rules(rule("deny", "fs/write"), rule("permit", "fs/*"), rule("defer", "fs/read"))))
    read = decide(policy, "fs/read")
    assert (read.effect, read.rule_id, read.reason_code) == (Effect.PERMIT, "fpl-1", "RULE_PERMIT")
    write = decide(policy, "fs/write")
    assert (write.effect, write.rule_id, write.reason_code) == (Effect.DENY, "fpl-0", "RULE_DENY")


def test_rule_order_is_agent_then_phases_then_flat():
    """Agent rules come first, then phase rules, then top-level rules."""
    phase = ast.Phase("init", rules=(rule("deny", "b"),))
    policy = compiled(rule("defer", "c"), agent(phase, rules(rule("permit", "a"))))
    assert [(r.id, r.tool) for r in policy.rules] == [("fpl-0", "a"), ("fpl-1", "b"), ("fpl-2", "c")]


def test_default_is_deny_when_absent_and_reported_as_unmatched():
    """No matching rule: the default applies with an empty rule id."""
    no_default = decide(compiled(agent(rules(rule("permit", "x")))), "y")
    assert (no_default.effect, no_default.rule_id, no_default.reason_code) == (Effect.DENY, "", "UNMATCHED_DENY")
    permit = decide(compiled(agent(default="permit")), "y")
    assert (permit.effect, permit.reason_code) == (Effect.PERMIT, "UNMATCHED_PERMIT")
    flat_only = decide(compiled(rule("permit", "x")), "y")
    assert (flat_only.effect, flat_only.reason_code) == (Effect.DENY, "UNMATCHED_DENY")


def test_strict_deny_beats_an_earlier_permit():
    """deny! wins even when a permit for the same tool comes first."""
    policy = compiled(agent(rules(rule("permit", "shell/*"), strict("shell/exec", reason="never"))))
    result = decide(policy, "shell/exec")
    assert (result.effect, result.rule_id, result.reason_code, result.reason) == (
        Effect.DENY, "fpl-1", "FPL_STRICT_DENY", "never")
    assert decide(policy, "shell/ls").effect is Effect.PERMIT


def test_strict_deny_default_reason():
    """A deny! without reason: says "strict deny"."""
    assert decide(compiled(agent(rules(strict("x")))), "x").reason == "strict deny"


def test_strict_deny_in_a_later_layer_beats_the_base_layer():
    """A deny! in any layer is final, even over the first layer's permit."""
    base = compiled(agent(rules(rule("permit", "net/*")), default="permit"), source="base")
    overlay = compiled(rule("deny", "net/connect", strict=True), source="overlay")
    result = decide([base, overlay], "net/connect")
    assert (result.effect, result.rule_id, result.reason_code, result.layer) == (
        Effect.DENY, "fpl-0", "FPL_STRICT_DENY", 1)


def test_later_layer_cannot_loosen():
    """A later layer's permit never overrides an earlier deny or default deny."""
    base = compiled(agent(rules(rule("deny", "fs/write"), rule("defer", "fs/delete"))), source="base")
    overlay = compiled(agent(rules(rule("permit", "*")), default="permit"), source="overlay")
    assert decide([base, overlay], "fs/write").effect is Effect.DENY
    assert decide([base, overlay], "fs/delete").effect is Effect.DEFER
    unmatched = decide([base, overlay], "fs/read")
    assert (unmatched.effect, unmatched.reason_code, unmatched.layer) == (Effect.DENY, "UNMATCHED_DENY", 0)


def test_later_layer_can_tighten():
    """A later layer's deny or defer overrides the first layer's permit."""
    base = compiled(agent(rules(rule("permit", "fs/*"))), source="base")
    overlay = compiled(rule("defer", "fs/write"), rule("deny", "fs/delete"), source="overlay")
    write = decide([base, overlay], "fs/write")
    assert (write.effect, write.rule_id, write.layer) == (Effect.DEFER, "fpl-0", 1)
    delete = decide([base, overlay], "fs/delete")
    assert (delete.effect, delete.rule_id, delete.layer) == (Effect.DENY, "fpl-1", 1)
    read = decide([base, overlay], "fs/read")
    assert (read.effect, read.rule_id, read.layer) == (Effect.PERMIT, "fpl-0", 0)


def test_ordering_on_missing_field_denies_with_rule_id():
    """`args.amount > 500` without an amount is EXPR_RUNTIME_ERROR at that rule; later rules are not tried."""
    policy = compiled(agent(rules(rule("defer", "pay", op(">", arg("amount"), lit(500))), rule("permit", "pay"))))
    result = decide(policy, "pay")
    assert (result.effect, result.rule_id, result.reason_code) == (Effect.DENY, "fpl-0", "EXPR_RUNTIME_ERROR")


def test_matches_on_missing_field_is_false_and_moves_on():
    """`matches` on nil is false, so the next rule decides."""
    policy = compiled(agent(rules(rule("deny", "sh", op("matches", arg("cmd"), lit("rm\\s+-rf"))), rule("permit", "sh"))))
    result = decide(policy, "sh")
    assert (result.effect, result.rule_id) == (Effect.PERMIT, "fpl-1")
    assert decide(policy, "sh", {"cmd": "sudo rm  -rf /"}).rule_id == "fpl-0"


def test_equality_with_nil_never_errors():
    """`args.x == nil` is true when x is missing, and mismatched types are simply unequal."""
    policy = compiled(agent(rules(rule("permit", "t", op("==", arg("x"), lit(None))),
                                  rule("defer", "t", op("==", arg("x"), lit(1))))))
    assert decide(policy, "t").rule_id == "fpl-0"
    assert decide(policy, "t", {"x": "1"}).reason_code == "UNMATCHED_DENY"
    assert decide(policy, "t", {"x": 1.0}).rule_id == "fpl-1"


def test_dollar_literal_is_a_number_in_conditions():
    """`amount < $500` compares against 500."""
    policy = compiled(agent(rules(rule("permit", "refund", op("<", name("amount"), lit(500, "$"))))))
    assert decide(policy, "refund", {"amount": "499.5"}).effect is Effect.PERMIT
    assert decide(policy, "refund", {"amount": 500}).effect is Effect.DENY


def test_division_by_zero_fails_closed():
    """A condition dividing by zero denies with EXPR_RUNTIME_ERROR instead of raising."""
    policy = compiled(agent(rules(rule("permit", "t", op(">", op("/", lit(1), arg("n")), lit(0)))), default="permit"))
    result = decide(policy, "t", {"n": 0})
    assert (result.effect, result.rule_id, result.reason_code) == (Effect.DENY, "fpl-0", "EXPR_RUNTIME_ERROR")


def test_non_bool_condition_denies():
    """A condition that yields a string is an EXPR_RUNTIME_ERROR."""
    policy = compiled(agent(rules(rule("permit", "t", arg("name")))))
    result = decide(policy, "t", {"name": "x"})
    assert (result.effect, result.reason_code, result.rule_id) == (Effect.DENY, "EXPR_RUNTIME_ERROR", "fpl-0")


def test_unexpected_exception_is_a_deny():
    """Malformed calls and store failures deny instead of propagating."""
    policy = compiled(agent(default="permit"))
    assert decide(policy, "t", None).effect is Effect.PERMIT  # None args are an empty map
    bad = Engine([policy]).decide(ToolCall("t", args=["not", "a", "map"]))
    assert (bad.effect, bad.reason_code) == (Effect.DENY, "INVALID_CALL")

    class BrokenStore(SessionStore):
        def get(self, key):
            raise RuntimeError("disk on fire")

    broken = Engine([policy], BrokenStore()).decide(ToolCall("t"))
    assert (broken.effect, broken.reason_code) == (Effect.DENY, "ENGINE_ERROR")


def test_nul_byte_denies():
    """A NUL byte in the tool id or arguments is denied before any rule."""
    policy = compiled(agent(default="permit"))
    assert decide(policy, "fs/read\x00").reason_code == "NUL_BYTE"
    assert decide(policy, "fs/read", {"path": "/etc\x00"}).reason_code == "NUL_BYTE"


def test_confusable_tool_name_meets_the_rule():
    """A Cyrillic look-alike tool id is canonicalised before matching."""
    policy = compiled(agent(rules(strict("shell/exec")), default="permit"))
    assert decide(policy, "\u0455hell/\u0435xec").reason_code == "FPL_STRICT_DENY"


def test_defer_token_and_expiry():
    """DEFER carries dfr_ + 16 hex of sha256(call_id + tool), expiry = timestamp + 300 s, and notify."""
    policy = compiled(agent(rules(rule("defer", "pay", notify="finance", reason="big"))))
    result = decide(policy, "pay", call_id="c-1", timestamp=1000.0)
    assert result.effect is Effect.DEFER
    assert result.defer_token == "dfr_" + __import__("hashlib").sha256(b"c-1pay").hexdigest()[:16]
    assert (result.defer_expires_at, result.notify, result.reason, result.reason_code) == (
        1300.0, "finance", "big", "RULE_DEFER")


def test_timeout_denies_with_policy_eval_timeout():
    """A clock that jumps 100 ms during a condition trips the per-rule limit."""
    ticks = iter([0.0, 0.0, 0.1, 0.1, 0.1])
    policy = compiled(agent(rules(rule("permit", "t", op("==", lit(1), lit(1))))))
    engine = Engine([policy], clock=lambda: next(ticks))
    result = engine.decide(ToolCall("t"))
    assert (result.effect, result.reason_code, result.rule_id) == (Effect.DENY, "POLICY_EVAL_TIMEOUT", "fpl-0")


def test_network_clauses_must_all_match():
    """host/port/method clauses are globs over the call's args; a missing arg never matches."""
    net = (ast.NetClause("host", "*.openai.com"), ast.NetClause("port", "443"), ast.NetClause("method", "POST"))
    policy = compiled(agent(rules(rule("permit", "net/http", net=net))))
    ok = {"host": "API.openai.com", "port": 443, "method": "post"}
    assert decide(policy, "net/http", ok).effect is Effect.PERMIT
    assert decide(policy, "net/http", {**ok, "port": 80}).effect is Effect.DENY
    assert decide(policy, "net/http", {"host": "api.openai.com", "port": 443}).effect is Effect.DENY


def test_time_and_principal_variables():
    """time.* is UTC from the call timestamp (weekday 1=Mon) and principal.* defaults to empty."""
    when = op("and", op("==", dot(name("time"), "weekday"), lit(4)), op("==", dot(name("principal"), "role"), lit("")))
    policy = compiled(agent(rules(rule("permit", "t", when))))
    thursday = 1_700_000_000.0  # 2023-11-14 is a Tuesday; +2 days below
    assert decide(policy, "t", timestamp=thursday + 2 * 86400).effect is Effect.PERMIT
    assert decide(policy, "t", timestamp=thursday).effect is Effect.DENY


def test_functions_lower_len_contains_purpose():
    """Built-in functions behave like expr-lang's."""
    when = op("and", op("==", call("lower", arg("who")), lit("ops")),
              op("and", op(">", call("len", arg("to")), lit(1)), call("purpose", lit("Billing"))))
    policy = compiled(agent(rules(rule("permit", "mail", when))))
    assert decide(policy, "mail", {"who": "OPS", "to": ["a", "b"], "purpose": "billing"}).effect is Effect.PERMIT
    assert decide(policy, "mail", {"who": "OPS", "to": ["a"], "purpose": "billing"}).effect is Effect.DENY
