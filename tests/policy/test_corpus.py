"""Every public FPL policy in the shared corpus parses; the invalid fixture is rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy import ast
from policy.errors import PolicyError
from policy.parser import parse

REPO = Path(__file__).resolve().parents[2]
CORPUS = (REPO.parent / "shared" / "fpl-corpus").resolve()
INVALID = "fpl-lang__conformance__invalid__missing-agent-name.fpl"
FILES = sorted(CORPUS.glob("*.fpl")) + sorted(CORPUS.glob("extracted/*.fpl"))
VALID = [f for f in FILES if f.name != INVALID]


def _doc(name: str) -> ast.Document:
    return parse((CORPUS / name).read_bytes(), name)


def test_corpus_is_present():
    """The corpus holds the 69 published files (68 valid, 1 invalid), so an empty glob fails."""
    assert len(FILES) >= 69
    assert (CORPUS / INVALID) in FILES


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_corpus_file_parses(path):
    """Each valid corpus file parses into a document with at least one item."""
    doc = parse(path.read_bytes(), str(path))
    assert len(doc.items) >= 1


def test_missing_agent_name_fixture_is_rejected():
    """`agent { default deny }` fails with E102 naming the missing agent name at 1:7."""
    with pytest.raises(PolicyError) as caught:
        parse((CORPUS / INVALID).read_bytes(), INVALID)
    [diag] = caught.value.diagnostics
    assert (diag.code, diag.span.line, diag.span.col) == ("E102", 1, 7)
    assert "`agent` is missing its name" in diag.message
    assert diag.source_line == "agent {"
    assert "agent my-agent {" in diag.help


def test_structured_golden_vector_facts():
    """structured.fpl: agent payment-bot with budget, two phases, rules, delegate, ambient, selector, credential, system."""
    doc = _doc("faramesh-core__internal__core__fpl__testdata__structured.fpl")
    [agent] = doc.agents
    assert agent.name == "payment-bot"
    assert agent.default == "deny"
    assert [type(i).__name__ for i in agent.items] == [
        "Default", "Meta", "Meta", "Budget", "Phase", "Phase", "RulesBlock", "Delegate",
        "Block", "Block", "Block"]
    [budget] = agent.of(ast.Budget)
    assert (budget.scope, budget.max, budget.daily, budget.max_calls, budget.on_exceed) == (
        "session", 500.0, 2000.0, 100, "deny")
    assert [(r.effect, r.tool, r.strict) for r in agent.rules] == [
        ("deny", "shell/*", True), ("defer", "stripe/refund", False),
        ("permit", "stripe/*", False), ("deny", "read_customer", False)]
    defer = agent.rules[1]
    assert defer.condition == ast.Binary(">", ast.Member(ast.Name("args"), "amount"), ast.Literal(500))
    assert (defer.notify, defer.reason, defer.condition_text) == ("finance", "high value refund",
                                                                  "args.amount > 500")
    [delegate] = agent.of(ast.Delegate)
    assert (delegate.target, delegate.scopes, delegate.ttl, delegate.ceiling) == (
        "fraud-check-bot", ("stripe/refund:amount<=500",), 86400.0, "inherited")
    ambient, selector, credential = agent.of(ast.Block)
    assert ambient.settings[1] == ast.Setting("max_data_volume", ast.Literal(10485760, "mb"))
    assert (selector.kind, selector.name, selector.settings[1].value) == (
        "selector", "account", ast.Literal(30.0, "s"))
    assert credential.settings[0] == ast.Setting("scope", ("refund", "read_charge"))
    [system] = doc.of(ast.System)
    assert system.settings[2] == ast.Setting("max_output_bytes", 1048576)


def test_golden_flat_rules():
    """golden.fpl holds three flat rules: permit when true, strict deny, defer with notify and reason."""
    doc = _doc("faramesh-core__internal__core__fpl__testdata__golden.fpl")
    assert doc.agents == ()
    permit, strict, defer = doc.flat_rules
    assert (permit.effect, permit.tool, permit.condition) == ("permit", "safe/read", ast.Literal(True))
    assert (strict.effect, strict.strict, strict.reason) == ("deny", True, "never shell")
    assert (defer.effect, defer.notify, defer.reason) == ("defer", "finance", "large payment")


def test_network_clauses_of_prod_enforce_100():
    """The Azure rule of prod_enforce_100.fpl keeps host, port, method, path and query in order."""
    doc = _doc("faramesh-core__policies__prod_enforce_100.fpl")
    last = doc.agents[0].rules[-1]
    assert last.tool == "proxy/http"
    assert last.net == (
        ast.NetClause("host", "*.openai.azure.com"), ast.NetClause("port", "443"),
        ast.NetClause("method", "POST"),
        ast.NetClause("path", "/openai/deployments/*/chat/completions"),
        ast.NetClause("query", "*", "api-version"))
    assert len(doc.agents[0].rules) == 9


def test_bare_path_is_a_variable_in_fpl_lang_mcp_server():
    """`when path matches "/etc|/usr|/var"` reads `path` as a variable, not as a clause."""
    doc = _doc("fpl-lang__examples__mcp-server.fpl")
    rule = doc.agents[0].rules[1]
    assert rule.condition == ast.Binary("matches", ast.Name("path"), ast.Literal("/etc|/usr|/var"))
    assert rule.net == ()
    assert rule.reason == "system path write blocked"


def test_session_sum_tool_field_argument():
    """fpl-lang payment-bot's session.sum(stripe/refund.amount, window=1h) becomes tool and field literals."""
    doc = _doc("fpl-lang__examples__payment-bot.fpl")
    rule = doc.agents[0].rules[-1]
    assert rule.condition == ast.Binary(">", ast.Call(
        "session.sum", (ast.Literal("stripe/refund"), ast.Literal("amount")),
        (("window", ast.Literal(3600.0, "h")),)), ast.Literal(2000))


def test_quoted_agent_name_and_one_line_rules_block():
    """core_test_bot_permit_all.fpl: agent "bot" with `rules { permit * }` on one line."""
    doc = _doc("extracted/core_test_bot_permit_all.fpl")
    [agent] = doc.agents
    assert agent.name == "bot"
    assert [(r.effect, r.tool) for r in agent.rules] == [("permit", "*")]


def test_stripe_production_rule_count():
    """The largest corpus file has two credential blocks and 73 rules."""
    doc = _doc("faramesh-core__policies__stripe_agent_production.fpl")
    agent = doc.agents[0]
    assert len(agent.of(ast.Block)) == 2
    assert len(agent.rules) == 73
    assert len(agent.of(ast.Block)[0].settings[0].value) == 28


def test_customer_support_phases_and_credential():
    """customer-support.fpl: the resolve phase has 4 rules; zendesk's ttl is 15m."""
    doc = _doc("faramesh-core__examples__customer-support.fpl")
    intake, resolve = doc.agents[0].of(ast.Phase)
    assert (intake.name, len(intake.rules), resolve.name, len(resolve.rules)) == ("intake", 3, "resolve", 4)
    strict = resolve.rules[3]
    assert strict.strict and strict.condition == ast.Binary(
        ">", ast.Call("args_array_len", (ast.Literal("recipients"),)), ast.Literal(10))
    credential = doc.agents[0].of(ast.Block)[0]
    assert credential.settings[-1] == ast.Setting("ttl", ast.Literal(900.0, "m"))
    assert credential.settings[2] == ast.Setting("path", "secret/data/zendesk")
