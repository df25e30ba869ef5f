"""Odd values in a call (NaN, infinities, malformed scopes, odd ports) never turn into a PERMIT."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from policy import Effect, Engine, SessionStore, ToolCall, load_policy

NOW = 1_700_000_000.0

AMOUNT_CAP = """
agent payer {
  default permit
  rules {
    deny pay when amount > 1000 reason: "too much"
    deny refund when args.amount >= 500
  }
}
"""

BUDGET = """
agent payer {
  default permit
  budget session { max $100 on_exceed deny }
}
"""


def decide(source: str, tool: str, args: dict, store: SessionStore | None = None, **fields):
    engine = Engine([load_policy(source, "p.fpl")], store or SessionStore())
    fields.setdefault("timestamp", NOW)
    fields.setdefault("session_id", "s")
    return engine.decide(ToolCall(tool, args, **fields))


def summary(decision) -> tuple:
    return decision.effect, decision.rule_id, decision.reason_code


def test_nan_amount_cannot_slip_under_an_amount_deny():
    """A NaN amount is not "not greater than 1000": the ordering fails and the call is denied at that rule."""
    assert summary(decide(AMOUNT_CAP, "pay", {"amount": math.nan})) == (Effect.DENY, "fpl-0", "EXPR_RUNTIME_ERROR")


def test_nan_text_amount_cannot_slip_under_an_amount_deny():
    """``amount`` parses the text "nan" to NaN; comparing it denies instead of skipping the deny rule."""
    assert summary(decide(AMOUNT_CAP, "pay", {"amount": "nan"})) == (Effect.DENY, "fpl-0", "EXPR_RUNTIME_ERROR")


def test_nan_argument_cannot_slip_under_an_argument_deny():
    """``args.amount >= 500`` with a NaN argument denies with EXPR_RUNTIME_ERROR."""
    assert summary(decide(AMOUNT_CAP, "refund", {"amount": math.nan})) == (Effect.DENY, "fpl-1", "EXPR_RUNTIME_ERROR")


def test_infinite_amount_is_caught_by_the_deny_rule():
    """An infinite amount is greater than any cap."""
    assert summary(decide(AMOUNT_CAP, "pay", {"amount": "inf"})) == (Effect.DENY, "fpl-0", "RULE_DENY")


def test_finite_amounts_still_decide_normally():
    """Ordinary amounts keep their meaning on both sides of the cap."""
    assert summary(decide(AMOUNT_CAP, "pay", {"amount": 999})) == (Effect.PERMIT, "", "UNMATCHED_PERMIT")
    assert summary(decide(AMOUNT_CAP, "pay", {"amount": "1000.5"})) == (Effect.DENY, "fpl-0", "RULE_DENY")


def test_nan_text_amount_exceeds_the_budget():
    """A cost that is not a number cannot be checked against a cap, so it exceeds it."""
    assert summary(decide(BUDGET, "pay", {"amount": "nan"})) == (Effect.DENY, "", "BUDGET_SESSION_EXCEEDED")


def test_nan_float_amount_exceeds_the_budget():
    """A NaN float amount (canonicalised to 0 for conditions) still cannot pass the budget as free."""
    assert summary(decide(BUDGET, "pay", {"amount": math.nan})) == (Effect.DENY, "", "BUDGET_SESSION_EXCEEDED")


def test_nan_amount_does_not_poison_the_session_spend():
    """After a NaN attempt the spend stays a number and the cap still stops the next large call."""
    store = SessionStore()
    decide(BUDGET, "pay", {"amount": "nan"}, store)
    assert summary(decide(BUDGET, "pay", {"amount": 60}, store)) == (Effect.PERMIT, "", "UNMATCHED_PERMIT")
    assert summary(decide(BUDGET, "pay", {"amount": 60}, store)) == (Effect.DENY, "", "BUDGET_SESSION_EXCEEDED")
    assert store.get("s").cost_usd == 60.0


def test_non_finite_timestamp_is_an_invalid_call():
    """A NaN or infinite timestamp would refill rate-limit buckets forever, so the call is denied."""
    limited = 'agent a {\n  default permit\n  rate_limit "x": 1 per hour\n}\n'
    for timestamp in (math.nan, math.inf, -math.inf):
        assert summary(decide(limited, "x", {}, timestamp=timestamp)) == (Effect.DENY, "", "INVALID_CALL")


def test_non_number_timestamp_is_an_invalid_call():
    """A timestamp that is not a number is denied as an invalid call."""
    assert summary(decide("agent a { default permit }\n", "x", {}, timestamp="now")) == (Effect.DENY, "", "INVALID_CALL")


def test_delegation_scope_written_as_text_still_limits_the_call():
    """A scope given as one glob string is that one glob, not "no scope"."""
    permissive = "agent a { default permit }\n"
    assert summary(decide(permissive, "fs/write", {}, delegation={"scope": "fs/read"})) == (
        Effect.DENY, "", "DELEGATION_EXCEEDS_AUTHORITY")
    assert summary(decide(permissive, "fs/read", {}, delegation={"scope": "fs/read"})) == (
        Effect.PERMIT, "", "UNMATCHED_PERMIT")


def test_malformed_delegation_scope_denies():
    """A scope that is neither a list nor a string (null, a number, a map) denies every tool."""
    permissive = "agent a { default permit }\n"
    for scope in (None, 7, {"fs/read": True}):
        assert summary(decide(permissive, "fs/read", {}, delegation={"scope": scope})) == (
            Effect.DENY, "", "DELEGATION_EXCEEDS_AUTHORITY")


def test_malformed_delegation_hop_denies():
    """A chain hop that is not a map cannot be checked, so the call is denied."""
    permissive = "agent a { default permit }\n"
    assert summary(decide(permissive, "fs/read", {}, delegation={"scope": ["fs/*"], "chain": ["fs/read"]})) == (
        Effect.DENY, "", "DELEGATION_EXCEEDS_AUTHORITY")


def test_integral_float_port_meets_a_port_deny():
    """``port: 25`` matches a port written as 25.0."""
    smtp = "agent a {\n  default permit\n  rules {\n    deny net/connect port: 25\n  }\n}\n"
    assert summary(decide(smtp, "net/connect", {"port": 25.0})) == (Effect.DENY, "fpl-0", "RULE_DENY")
    assert summary(decide(smtp, "net/connect", {"port": 25.5})) == (Effect.PERMIT, "", "UNMATCHED_PERMIT")


def test_host_with_trailing_dot_meets_a_host_deny():
    """``evil.example.`` is the same DNS name as ``evil.example``."""
    blocked = "agent a {\n  default permit\n  rules {\n    deny net/connect host: evil.example\n  }\n}\n"
    assert summary(decide(blocked, "net/connect", {"host": "EVIL.example."})) == (Effect.DENY, "fpl-0", "RULE_DENY")
    rooted = blocked.replace("host: evil.example", "host: evil.example.")
    assert summary(decide(rooted, "net/connect", {"host": "evil.example"})) == (Effect.DENY, "fpl-0", "RULE_DENY")


def test_invoke_agent_with_a_list_target_is_refused_as_undeclared():
    """A target_agent_id that is a list or map names no declared agent: DELEGATION_EXCEEDS_AUTHORITY."""
    orchestrator = ('agent orch {\n  default permit\n  delegate worker {\n    scope "safe/*"\n  }\n}\n'
                    "manifest grant orch to worker max 5\n")
    for target in (["worker"], {"id": "worker"}):
        assert summary(decide(orchestrator, "invoke_agent", {"target_agent_id": target, "delegation_scope": "safe/x"})) == (
            Effect.DENY, "", "DELEGATION_EXCEEDS_AUTHORITY")
    assert summary(decide(orchestrator, "invoke_agent", {"target_agent_id": "worker", "delegation_scope": "safe/x"})) == (
        Effect.PERMIT, "", "UNMATCHED_PERMIT")


def test_non_finite_history_window_is_an_error():
    """A NaN or infinite window would admit every history entry; it denies with EXPR_RUNTIME_ERROR instead."""
    source = 'agent a {\n  default deny\n  rules {\n    permit pay when history_contains_within("login", args.w)\n    permit login\n  }\n}\n'
    for window in (math.nan, math.inf):
        store = SessionStore()
        decide(source, "login", {}, store)
        assert summary(decide(source, "pay", {"w": window}, store)) == (Effect.DENY, "fpl-0", "EXPR_RUNTIME_ERROR")
    store = SessionStore()
    decide(source, "login", {}, store)
    assert summary(decide(source, "pay", {"w": 60}, store)) == (Effect.PERMIT, "fpl-0", "RULE_PERMIT")


ODD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
    | st.sampled_from(["nan", "inf", "-inf", "1e999", "100", " 99 ", "１００"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8)
GATED = load_policy("agent a {\n  default deny\n  rules {\n    deny pay when args.amount > 100\n"
                    "    permit pay when args.amount <= 100\n    permit cash when amount <= 100\n  }\n}\n", "gate.fpl")


@settings(max_examples=200, deadline=None)
@given(ODD_VALUES)
def test_only_real_numbers_under_the_cap_are_permitted(value):
    """Whatever value args.amount holds, PERMIT means it is a real number no larger than 100 as written."""
    engine = Engine([GATED], SessionStore())
    decision = engine.decide(ToolCall("pay", {"amount": value}, session_id="s", timestamp=NOW))
    if decision.effect is Effect.PERMIT:
        assert type(value) in (int, float) and value <= 100
    else:
        assert decision.effect is Effect.DENY


def _reads_as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@settings(max_examples=200, deadline=None)
@given(ODD_VALUES)
def test_amount_variable_never_permits_numeric_text_over_the_cap(value):
    """``amount`` parses numeric text (other text reads as 0, as in the reference); PERMIT never follows
    from text that reads as NaN, infinity or a number over 100."""
    engine = Engine([GATED], SessionStore())
    decision = engine.decide(ToolCall("cash", {"amount": value}, session_id="s", timestamp=NOW))
    number = _reads_as_number(value) if type(value) is str else value if type(value) in (int, float) else 0
    if decision.effect is Effect.PERMIT and number is not None:
        assert number <= 100


def test_repeated_query_parameter_cannot_hide_from_a_deny():
    """``debug=false&debug=true`` meets ``deny ... query: debug=true``: any occurrence counts for a deny."""
    source = "agent a {\n  default permit\n  rules {\n    deny proxy/http query: debug=true\n  }\n}\n"
    assert summary(decide(source, "proxy/http", {"query": "debug=false&debug=true"})) == (Effect.DENY, "fpl-0", "RULE_DENY")
    assert summary(decide(source, "proxy/http", {"query": "debug=false"})) == (Effect.PERMIT, "", "UNMATCHED_PERMIT")


def test_repeated_query_parameter_must_all_fit_a_permit():
    """``mode=read&mode=write`` does not meet ``permit ... query: mode=read``: every occurrence must fit a permit."""
    source = "agent a {\n  default deny\n  rules {\n    permit proxy/http query: mode=read\n  }\n}\n"
    assert summary(decide(source, "proxy/http", {"query": "mode=read&mode=write"})) == (Effect.DENY, "", "UNMATCHED_DENY")
    assert summary(decide(source, "proxy/http", {"query": "mode=read"})) == (Effect.PERMIT, "fpl-0", "RULE_PERMIT")


def test_header_names_differing_in_case_are_all_checked():
    """Headers ``X-Debug: 0`` and ``x-debug: 1`` together meet ``deny ... header: X-Debug=1``."""
    source = "agent a {\n  default permit\n  rules {\n    deny proxy/http header: X-Debug=1\n  }\n}\n"
    args = {"headers": {"X-Debug": "0", "x-debug": "1"}}
    assert summary(decide(source, "proxy/http", args)) == (Effect.DENY, "fpl-0", "RULE_DENY")


def test_repeated_query_values_that_disagree_about_a_defer_deny():
    """``amount=small&amount=big`` neither clearly meets nor clearly misses ``defer ... query: amount=big``: DENY."""
    source = "agent a {\n  default permit\n  rules {\n    defer pay query: amount=big\n  }\n}\n"
    assert summary(decide(source, "pay", {"query": "amount=small&amount=big"})) == (Effect.DENY, "fpl-0", "AMBIGUOUS_ARGUMENTS")
    assert summary(decide(source, "pay", {"query": "amount=big&amount=big"})) == (Effect.DEFER, "fpl-0", "RULE_DEFER")
    assert summary(decide(source, "pay", {"query": "amount=small"})) == (Effect.PERMIT, "", "UNMATCHED_PERMIT")
