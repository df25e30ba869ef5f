"""Session state: budgets, phases, history functions, session.sum, persistence, threads."""

import json
import threading

import pytest

from policy import Effect, Engine, SessionStore, ToolCall, ast
from policy.session import HISTORY_LIMIT, SessionState
from tests.policy._build import agent, arg, call, compiled, lit, name, op, rule, rules, strict


def run(engine, tool, args=None, ts=0.0, session="s1", **fields):
    return engine.decide(ToolCall(tool, args or {}, session_id=session, timestamp=ts, **fields))


def test_max_calls_one_permits_exactly_one_call():
    """budget max_calls 1: the first call passes, the second hits SESSION_TOOL_LIMIT."""
    budget = ast.Budget("session", max_calls=1)
    engine = Engine([compiled(agent(budget, default="permit"))])
    first, second = run(engine, "t"), run(engine, "t")
    assert (first.effect, first.reason_code) == (Effect.PERMIT, "UNMATCHED_PERMIT")
    assert (second.effect, second.reason_code) == (Effect.DENY, "SESSION_TOOL_LIMIT")
    other_session = run(engine, "t", session="s2")
    assert other_session.effect is Effect.PERMIT


def test_budget_on_exceed_defer_and_spend():
    """Spend is the permitted calls' amount; going over max gives on_exceed (defer)."""
    budget = ast.Budget("session", max=500.0, on_exceed="defer")
    engine = Engine([compiled(agent(budget, default="permit"))])
    assert run(engine, "pay", {"amount": 300}).effect is Effect.PERMIT
    over = run(engine, "pay", {"amount": 250}, call_id="c9")
    assert (over.effect, over.reason_code, over.defer_token[:4]) == (Effect.DEFER, "BUDGET_SESSION_EXCEEDED", "dfr_")
    assert run(engine, "pay", {"amount": 200}).effect is Effect.PERMIT
    assert run(engine, "pay", {"amount": 1}).reason_code == "BUDGET_SESSION_EXCEEDED"


def test_daily_budget_resets_on_a_new_utc_day():
    """daily caps spend per UTC day."""
    engine = Engine([compiled(agent(ast.Budget("session", daily=100.0), default="permit"))])
    assert run(engine, "pay", {"amount": 100}, ts=10.0).effect is Effect.PERMIT
    assert run(engine, "pay", {"amount": 1}, ts=20.0).reason_code == "BUDGET_DAILY_EXCEEDED"
    assert run(engine, "pay", {"amount": 1}, ts=86400.0 + 5).effect is Effect.PERMIT


def test_strict_deny_beats_budget_and_defer():
    """A deny! is reported even when the budget would also refuse the call."""
    engine = Engine([compiled(agent(ast.Budget("session", max_calls=0, on_exceed="defer"), rules(strict("x"))))])
    result = run(engine, "x")
    assert (result.effect, result.reason_code) == (Effect.DENY, "FPL_STRICT_DENY")


def test_phase_visibility_uses_init_or_first_phase():
    """Only tools listed in the starting phase are visible; others are OUT_OF_PHASE_TOOL_CALL."""
    intake = ast.Phase("intake", rules=(rule("permit", "read_customer"), rule("deny", "get_*")))
    review = ast.Phase("review", rules=(rule("permit", "stripe/refund"),))
    engine = Engine([compiled(agent(review, intake, rules(rule("permit", "stripe/*")), default="permit"))])
    assert run(engine, "read_customer").rule_id == "fpl-2"  # agent rule fpl-0, review fpl-1, intake fpl-2..
    assert run(engine, "get_order").rule_id == "fpl-3"
    nested = run(engine, "get_order/items")  # visible by prefix, but path.Match get_* does not cross '/'
    assert (nested.effect, nested.reason_code) == (Effect.PERMIT, "UNMATCHED_PERMIT")
    refund = run(engine, "stripe/refund")
    assert (refund.effect, refund.reason_code) == (Effect.DENY, "OUT_OF_PHASE_TOOL_CALL")
    with_init = Engine([compiled(agent(ast.Phase("init", rules=(rule("permit", "a"),)), intake))])
    assert run(with_init, "read_customer").reason_code == "OUT_OF_PHASE_TOOL_CALL"
    assert run(with_init, "a").rule_id == "fpl-0"


def test_history_functions_see_earlier_calls():
    """history_tool_count, history_contains_within, history_sequence and deny_count_within read the session."""
    when = op("and", op(">=", call("history_tool_count", lit("fs/*")), lit(2)),
              op("and", call("history_contains_within", lit("fs/read"), lit(60)),
                 op("and", call("history_sequence", lit("fs/read"), lit("fs/write")),
                    op("==", call("deny_count_within", lit(3600)), lit(1)))))
    engine = Engine([compiled(agent(rules(rule("deny", "fs/write"), rule("permit", "fs/*"),
                                          rule("permit", "net/post", when))))])
    assert run(engine, "net/post", ts=1.0).effect is Effect.DENY  # no history yet
    run(engine, "fs/read", ts=10.0)
    run(engine, "fs/write", ts=20.0)  # denied: deny_count becomes 2 with the first net/post
    assert run(engine, "net/post", ts=30.0).reason_code == "UNMATCHED_DENY"
    fresh = Engine([compiled(agent(rules(rule("permit", "fs/*"), rule("permit", "net/post", when))))])
    run(fresh, "fs/read", ts=10.0)
    run(fresh, "fs/write", ts=20.0)
    run(fresh, "other", ts=25.0)  # unmatched -> the one deny
    allowed = run(fresh, "net/post", ts=30.0)
    assert (allowed.effect, allowed.rule_id) == (Effect.PERMIT, "fpl-1")
    assert run(fresh, "net/post", ts=100.0).effect is Effect.DENY  # fs/read is now 90 s old


def test_session_sum_over_permitted_calls_in_window():
    """session.sum(stripe/refund.amount, window=1h) adds earlier permitted refunds in the last hour."""
    total = call("session.sum", ast.Member(ast.Name("stripe/refund"), "amount"), window=lit(3600.0, "h"))
    engine = Engine([compiled(agent(rules(
        rule("deny", "stripe/refund", op(">", op("+", total, name("amount")), lit(2000, "$")), reason="aggregate"),
        rule("permit", "stripe/refund"))))])
    assert run(engine, "stripe/refund", {"amount": 1500}, ts=0.0).effect is Effect.PERMIT
    over = run(engine, "stripe/refund", {"amount": 600}, ts=60.0)
    assert (over.effect, over.reason) == (Effect.DENY, "aggregate")
    assert run(engine, "stripe/refund", {"amount": 500}, ts=120.0).effect is Effect.PERMIT
    assert run(engine, "stripe/refund", {"amount": 1}, ts=180.0).effect is Effect.DENY  # 2000 + 1
    assert run(engine, "stripe/refund", {"amount": 1400}, ts=3601.0).effect is Effect.PERMIT  # 500 + 1400: the 1500 aged out


def test_truncated_history_fails_closed():
    """A window reaching past evicted history denies with EXPR_RUNTIME_ERROR."""
    engine = Engine([compiled(agent(rules(rule("permit", "t", op("==", call("deny_count_within", lit(1e9)), lit(0)))),
                                    default="deny"))])
    state = engine.store.get("s1")
    for n in range(HISTORY_LIMIT + 1):
        state.record("x", "PERMIT", float(n))
    result = run(engine, "t", ts=HISTORY_LIMIT + 2.0)
    assert (result.effect, result.reason_code) == (Effect.DENY, "EXPR_RUNTIME_ERROR")


def test_call_count_includes_current_call():
    """session.call_count counts this call too."""
    engine = Engine([compiled(agent(rules(rule("permit", "t", op("<=", ast.Member(ast.Name("session"), "call_count"),
                                                                      lit(2))))))])
    assert [run(engine, "t").effect for _ in range(3)] == [Effect.PERMIT, Effect.PERMIT, Effect.DENY]


def test_store_round_trips_through_json():
    """to_json/from_json keep counts, history, spend and phases, so decisions continue."""
    budget = ast.Budget("session", max_calls=2)
    policy = compiled(agent(budget, default="permit"))
    engine = Engine([policy])
    run(engine, "t", {"amount": 3}, ts=5.0)
    restored = SessionStore.from_json(engine.store.to_json())
    state = restored.get("s1")
    assert (state.call_count, list(state.history), state.permit_counts) == (1, [("t", "PERMIT", 5.0, ())], {"t": 1})
    again = Engine([policy], restored)
    assert run(again, "t").effect is Effect.PERMIT
    assert run(again, "t").reason_code == "SESSION_TOOL_LIMIT"


def test_from_json_rejects_garbage():
    """A malformed session file raises ValueError, not a random exception."""
    for text in ("{", "[]", '{"version": 2}', '{"version": 1, "sessions": {"a": {"history": [[1]]}}}'):
        try:
            SessionStore.from_json(text)
        except ValueError:
            continue
        raise AssertionError(f"accepted {text!r}")


def test_agent_id_keys_the_session_when_session_id_is_empty():
    """Calls without a session id share the session of their agent id."""
    engine = Engine([compiled(agent(ast.Budget("session", max_calls=1), default="permit"))])
    assert engine.decide(ToolCall("t", agent_id="a")).effect is Effect.PERMIT
    assert engine.decide(ToolCall("t", agent_id="a")).reason_code == "SESSION_TOOL_LIMIT"
    assert engine.decide(ToolCall("t", agent_id="b")).effect is Effect.PERMIT


def test_concurrent_decisions_count_every_call_once():
    """Four threads x 500 calls on one session leave call_count at exactly 2000 and max_calls exact."""
    engine = Engine([compiled(agent(ast.Budget("session", max_calls=1000), default="permit"))])
    permits = []

    def worker():
        permits.append(sum(run(engine, "t").effect is Effect.PERMIT for _ in range(500)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.store.get("s1").call_count == 2000
    assert sum(permits) == 1000


def test_rate_limit_token_bucket():
    """rate_limit "net/*": 2 per minute allows two calls, then RATE_EXCEEDED until tokens refill."""
    engine = Engine([compiled(agent(ast.RateLimit("net/*", 2, "minute"), default="permit"))])
    assert [run(engine, "net/get", ts=0.0).effect for _ in range(2)] == [Effect.PERMIT, Effect.PERMIT]
    assert run(engine, "net/get", ts=1.0).reason_code == "RATE_EXCEEDED"
    assert run(engine, "fs/read", ts=1.0).effect is Effect.PERMIT
    assert run(engine, "net/get", ts=31.0).effect is Effect.PERMIT


def test_state_object_records_denies():
    """SessionState.record counts denies, and per tool only the permitted calls."""
    state = SessionState()
    state.record("a", "DENY", 1.0)
    state.record("a", "PERMIT", 2.0)
    state.record("a", "DEFER", 3.0)
    assert (state.deny_count, state.permit_counts, len(state.history)) == (1, {"a": 1}, 3)


def test_each_rate_limit_line_has_its_own_bucket():
    """Two lines on one pattern are two buckets: 10 per second must not refill 3 per day."""
    engine = Engine([compiled(agent(ast.RateLimit("stripe/refund", 10, "second"),
                                    ast.RateLimit("stripe/refund", 3, "day"), default="permit"))])
    effects = [run(engine, "stripe/refund", ts=1000.0 + n).effect for n in range(100)]
    assert effects.count(Effect.PERMIT) == 3
    assert run(engine, "stripe/refund", ts=1000.0 + 86400).effect is Effect.PERMIT


def test_a_refused_call_takes_no_token():
    """When one bucket is empty the call is refused and the other lines keep their tokens."""
    engine = Engine([compiled(agent(ast.RateLimit("net/get", 2, "day"), ast.RateLimit("net/*", 1, "hour"),
                                    default="permit"))])
    assert run(engine, "net/get", ts=0.0).effect is Effect.PERMIT
    assert run(engine, "net/get", ts=1.0).reason_code == "RATE_EXCEEDED"  # hourly empty
    assert run(engine, "net/get", ts=3601.0).effect is Effect.PERMIT  # the refusal spent no daily token
    assert run(engine, "net/get", ts=7300.0).reason_code == "RATE_EXCEEDED"  # daily empty now


def test_rate_limit_buckets_round_trip_and_old_files_keep_the_first_lines_bucket():
    """The first line of a pattern keeps the bucket name session files already use."""
    engine = Engine([compiled(agent(ast.RateLimit("t", 5, "day"), ast.RateLimit("t", 1, "day"), default="permit"))])
    run(engine, "t", ts=0.0)
    assert sorted(engine.store.get("s1").buckets) == ["0:t", "0:t\x002"]
    again = Engine(engine.layers, SessionStore.from_json(engine.store.to_json()))
    assert run(again, "t", ts=1.0).reason_code == "RATE_EXCEEDED"


@pytest.mark.parametrize("gate", [
    call("history_contains_within", lit("ci/*"), lit(3600)),
    op(">", call("history_tool_count", lit("ci/*")), lit(0)),
    call("history_sequence", lit("ci/*")),
], ids=["contains_within", "tool_count", "sequence"])
def test_history_functions_ignore_refused_and_unapproved_calls(gate):
    """A denied or deferred call did not happen: asking for a refused tool cannot satisfy a
    history gate (deny_count_within still counts the denial)."""
    engine = Engine([compiled(agent(rules(rule("permit", "deploy", gate), rule("defer", "ci/deferred")),
                                    default="deny"))])
    run(engine, "ci/passed", ts=1.0)  # denied by default
    run(engine, "ci/deferred", ts=2.0)  # deferred, never approved
    assert run(engine, "deploy", ts=3.0).effect is Effect.DENY
    assert engine.store.get("s1").deny_count == 2
    allowed = Engine([compiled(agent(rules(rule("permit", "deploy", gate), rule("permit", "ci/passed")),
                                     default="deny"))])
    run(allowed, "ci/passed", ts=1.0)
    assert run(allowed, "deploy", ts=3.0).effect is Effect.PERMIT


def test_old_session_files_recount_permits_or_fail_closed():
    """A file from before permit_counts counted refused calls per tool: counts are rebuilt from
    the kept history, or history_tool_count fails closed when part of it was evicted."""
    old = {"version": 1, "sessions": {"s1": {"history": [["ci/x", "DENY", 1.0, []], ["ci/x", "PERMIT", 2.0, []]],
                                              "tool_counts": {"ci/x": 2}}}}
    assert SessionStore.from_json(json.dumps(old)).get("s1").permit_counts == {"ci/x": 1}
    old["sessions"]["s1"]["evicted_at"] = 0.5
    engine = Engine([compiled(agent(rules(rule("permit", "t", op(">", call("history_tool_count", lit("ci/*")), lit(0))))))],
                    SessionStore.from_json(json.dumps(old)))
    assert run(engine, "t", ts=3.0).reason_code == "EXPR_RUNTIME_ERROR"


def _refunds(budget=None):
    total = call("session.sum", ast.Member(ast.Name("stripe/refund"), "amount"), window=lit(86400.0, "h"))
    items = (rules(rule("permit", "stripe/refund", op("<=", op("+", total, name("amount")), lit(1000, "$"))),
                   rule("defer", "stripe/refund")),) + ((budget,) if budget else ())
    return Engine([compiled(agent(*items))])


def test_commit_approved_counts_an_approved_defer_as_permitted():
    """commit_approved(call, decision) records the approved call as a PERMIT: session.sum and the
    budget spend include it, so the next refund over the running total is deferred too."""
    engine = _refunds(ast.Budget("session", max=5000.0))
    assert run(engine, "stripe/refund", {"amount": 100}, ts=10.0).effect is Effect.PERMIT
    deferred = ToolCall("stripe/refund", {"amount": 950}, session_id="s1", timestamp=20.0, call_id="c2")
    decision = engine.decide(deferred)
    assert decision.effect is Effect.DEFER
    engine.commit_approved(deferred, decision)
    assert run(engine, "stripe/refund", {"amount": 800}, ts=30.0).effect is Effect.DEFER
    state = engine.store.get("s1")
    assert state.cost_usd == 1050.0
    assert [(e[1], e[3]) for e in state.history][:3] == [
        ("PERMIT", (("amount", 100.0),)), ("DEFER", ()), ("PERMIT", (("amount", 950.0),))]


def test_commit_approved_keeps_history_in_time_order_and_refuses_non_defers():
    """An approval recorded with an older timestamp goes after the newest entry (windows read
    history newest first); only a DEFER can be approved."""
    engine = _refunds()
    deferred = ToolCall("stripe/refund", {"amount": 2000}, session_id="s1", timestamp=5.0)
    decision = engine.decide(deferred)
    run(engine, "other", ts=50.0)
    engine.commit_approved(deferred, decision)
    assert [e[2] for e in engine.store.get("s1").history] == [5.0, 50.0, 50.0]
    engine.commit_approved(deferred, decision, timestamp=60.0)
    assert engine.store.get("s1").history[-1][2] == 60.0
    refused = run(engine, "other", ts=70.0)
    with pytest.raises(ValueError, match="only a DEFER"):
        engine.commit_approved(ToolCall("other", {}, session_id="s1"), refused)


def test_commit_approved_is_thread_safe():
    """Approvals committed from several threads while others decide are all counted."""
    engine = _refunds(ast.Budget("session", max=1e9))
    deferred = ToolCall("stripe/refund", {"amount": 5000}, session_id="s1", timestamp=1.0)
    decision = engine.decide(deferred)

    def approve():
        for _ in range(200):
            engine.commit_approved(deferred, decision)
            run(engine, "other", ts=1.0)

    threads = [threading.Thread(target=approve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = engine.store.get("s1")
    assert (state.cost_usd, state.permit_counts.get("stripe/refund")) == (4 * 200 * 5000.0, 800)
