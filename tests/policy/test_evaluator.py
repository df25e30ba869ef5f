"""Engine decisions on hand-built policies (independent of the parser)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy import Effect, Engine, SessionStore, ToolCall, ast, load_policy
from tests.policy._build import agent, arg, call, compiled, dot, lit, name, op, rule, rules, strict


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
    bad = Engine([policy]).decide(ToolCall("t", args=["not", "a", "map"]))
    assert (bad.effect, bad.reason_code) == (Effect.DENY, "INVALID_CALL")
    no_args = Engine([policy]).decide(ToolCall("t", args=None))
    assert (no_args.effect, no_args.reason_code) == (Effect.DENY, "INVALID_CALL")

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
    assert result.defer_token == "dfr_29a34df2eba1e6ec"  # dfr_ + sha256("c-1pay")[:16]
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


EXPRESSION_CASES = [
    # (condition, args, expected reason code: RULE_PERMIT when true, UNMATCHED_DENY when false)
    ('args.a in ["x", "y"]', {"a": "y"}, "RULE_PERMIT"),
    ('args.a not in ["x", "y"]', {"a": "y"}, "UNMATCHED_DENY"),
    ('"k" in args.m', {"m": {"k": 1}}, "RULE_PERMIT"),
    ("2 in args.l", {"l": [1, 2.0]}, "RULE_PERMIT"),
    ("args.missing in args.l", {"l": [1]}, "UNMATCHED_DENY"),
    ('args.s contains "ell"', {"s": "hello"}, "RULE_PERMIT"),
    ('args.s endsWith "lo" and args.s startsWith "he"', {"s": "hello"}, "RULE_PERMIT"),
    ('args.missing startsWith "he"', {}, "UNMATCHED_DENY"),
    ('args.s matches "^h.l+o$"', {"s": "hello"}, "RULE_PERMIT"),
    ('args.s matches "ls"', {"s": "false"}, "RULE_PERMIT"),
    ("args.n matches \"1\"", {"n": 1}, "EXPR_RUNTIME_ERROR"),
    ("args.l[1:3] == [2, 3]", {"l": [1, 2, 3, 4]}, "RULE_PERMIT"),
    ("args.l[-1] == 4", {"l": [1, 2, 3, 4]}, "RULE_PERMIT"),
    ("args.l[9] == nil", {"l": [1]}, "RULE_PERMIT"),
    ('args["a-b"] == 3', {"a-b": 3}, "RULE_PERMIT"),
    ("args.x.y.z == nil", {"x": 1}, "RULE_PERMIT"),
    ("(args.n ?? 7) == 7", {}, "RULE_PERMIT"),
    ("args.n % 3 == 1 and 2 ** 3 == 8 and -args.n == -4", {"n": 4}, "RULE_PERMIT"),
    ("args.n % 0 == 1", {"n": 4}, "EXPR_RUNTIME_ERROR"),
    ('args.a + "b" == "ab"', {"a": "a"}, "RULE_PERMIT"),
    ("args.a + 1 == 2", {"a": "1"}, "EXPR_RUNTIME_ERROR"),
    ("args.flag", {"flag": True}, "RULE_PERMIT"),
    ("args.flag", {}, "EXPR_RUNTIME_ERROR"),
    ("not args.flag", {"flag": False}, "RULE_PERMIT"),
    ("args.flag == true", {"flag": 1}, "UNMATCHED_DENY"),
    ("args.n ? true : false", {"n": 1}, "EXPR_RUNTIME_ERROR"),
    ('args_array_len("to.list") == 2 and args_array_contains("to.list", "b")', {"to": {"list": ["a", "b"]}},
     "RULE_PERMIT"),
    ('args_array_any_match("files", "/tmp/*")', {"files": ["/etc/x", "/tmp/y"]}, "RULE_PERMIT"),
    ('args_array_any_match("files", "/tmp/*")', {"files": ["/tmp/a/b"]}, "UNMATCHED_DENY"),
    ('contains(args.l, "x") and contains("xyz", "y")', {"l": ["x"]}, "RULE_PERMIT"),
    ('upper(trim(args.s)) == "HI" and abs(-2) == 2', {"s": " hi "}, "RULE_PERMIT"),
    ("len(args.n) > 0", {"n": 5}, "EXPR_RUNTIME_ERROR"),
    ('tool_name == "t" and cmd == "" and host == "" and path == ""', {}, "RULE_PERMIT"),
    ("args.s < 1", {"s": "a"}, "EXPR_RUNTIME_ERROR"),
    ('args.s < "b"', {"s": "a"}, "RULE_PERMIT"),
    ("args.big > 1000000", {"big": 1234567.891}, "RULE_PERMIT"),
]


@pytest.mark.parametrize("condition,args,expected", EXPRESSION_CASES)
def test_expression_semantics(condition, args, expected):
    """Each condition gives the listed outcome, following expr-lang's nil and type rules."""
    policy = load_policy(f"agent a {{\n  rules {{\n    permit t when {condition}\n  }}\n}}\n", "expr.fpl")
    assert Engine([policy]).decide(ToolCall("t", args)).reason_code == expected


FUZZ_POLICY = load_policy(
    "agent a {\n  default permit\n  rules {\n"
    "    deny! shell/* when args.cmd matches \"rm\"\n"
    "    deny fs/* when args.size > 10 or args.path startsWith \"/etc\"\n"
    "    defer net/* when len(args.hosts) > 2 and history_tool_count(\"net/*\") >= 1\n"
    "  }\n}\n", "fuzz.fpl")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


def has_nul(value) -> bool:
    if isinstance(value, (str, bytes)):
        return ("\x00" if isinstance(value, str) else b"\x00") in value
    if isinstance(value, dict):
        return any(has_nul(k) or (v is not None and has_nul(v)) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value if v is not None)
    return False


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["shell/exec", "fs/read", "net/get", "other"]) | st.text(max_size=12),
       st.dictionaries(st.sampled_from(["cmd", "size", "path", "hosts", "x"]) | st.text(max_size=3), json_values,
                       max_size=4))
def test_decide_never_raises_on_odd_input(tool, args):
    """Arbitrary tool ids and argument shapes always yield a Decision; NUL bytes always deny."""
    result = Engine([FUZZ_POLICY]).decide(ToolCall(tool, args))
    assert result.effect in (Effect.PERMIT, Effect.DENY, Effect.DEFER)
    if has_nul(tool) or has_nul(args):
        assert (result.effect, result.reason_code) == (Effect.DENY, "NUL_BYTE")


def test_engine_needs_a_layer():
    """An engine without policies is a programming error, reported at construction."""
    with pytest.raises(ValueError):
        Engine([])


def test_permit_must_also_hold_for_arguments_as_written():
    """A Cyrillic р makes /tmр/x canonical /tmp/x, but the permit must hold for the written path too."""
    policy = load_policy("agent a {\n  rules {\n    permit fs/write when args.path startsWith \"/tmp/\"\n  }\n}\n",
                         "w.fpl")
    engine = Engine([policy])
    assert engine.decide(ToolCall("fs/write", {"path": "/tmp/x"})).rule_id == "fpl-0"
    spoofed = engine.decide(ToolCall("fs/write", {"path": "/tm\u0440/x"}))
    assert (spoofed.effect, spoofed.reason_code, spoofed.reason) == (
        Effect.DENY, "UNMATCHED_DENY", "no rule matched; default deny (arguments as written, before canonicalisation)")
    padded = engine.decide(ToolCall("fs/write", {"path": " /tmp/x"}))
    assert (padded.effect, padded.reason_code) == (Effect.DENY, "UNMATCHED_DENY")


def test_deny_still_sees_the_canonical_form():
    """Look-alike letters cannot dodge a deny rule: the canonical /etc/passwd is denied."""
    policy = load_policy("agent a {\n  default permit\n  rules {\n    deny fs/read when args.path startsWith \"/etc/\"\n"
                         "  }\n}\n", "d.fpl")
    result = Engine([policy]).decide(ToolCall("fs/read", {"path": "/\u0435tc/passwd"}))
    assert (result.effect, result.rule_id, result.reason_code) == (Effect.DENY, "fpl-0", "RULE_DENY")
