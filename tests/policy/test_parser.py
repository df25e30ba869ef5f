"""FPL parser: statements, rules, conditions, limits and diagnostics."""

from __future__ import annotations

import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from policy import ast
from policy.ast import Binary, Call, Conditional, Index, ListExpr, Literal, Member, Name, Slice, Unary
from policy.errors import PolicyError
from policy.parser import parse

ERRORS = sorted((Path(__file__).parent / "errors").glob("*.toml"))


def cond(text: str):
    """The condition of `permit t when <text>`."""
    return parse(f"permit t when {text}\n").flat_rules[0].condition


def errors(text: str | bytes) -> list:
    with pytest.raises(PolicyError) as caught:
        parse(text, "p.fpl")
    return caught.value.diagnostics


# ---------------------------------------------------------------- error cases as data


def test_error_cases_exist():
    """The data-driven error cases are found (an empty folder would make the next test vacuous)."""
    assert len(ERRORS) >= 20


@pytest.mark.parametrize("case", ERRORS, ids=lambda p: p.stem)
def test_error_case(case):
    """Each errors/*.toml source fails with its code, message, help and location as first error."""
    spec = tomllib.loads(case.read_text())
    diag = errors(spec["source"])[0]
    assert diag.code == spec["code"]
    assert spec["message"] in diag.message
    assert spec["help"] in diag.help
    assert (diag.span.line, diag.span.col) == (spec["line"], spec["col"])
    assert diag.source_line == spec["source"].splitlines()[spec["line"] - 1]
    assert diag.path == "p.fpl"


def test_all_errors_are_reported_per_rule_and_item():
    """Independent mistakes in two rules, an agent statement and a second agent are all reported."""
    source = (
        "agent a {\n"
        "  rules {\n"
        "    permit x when\n"
        "    deny y\n"
        "    permit z when a ==\n"
        "  }\n"
        "  bogus 1\n"
        "}\n"
        "agent {\n"
        "}\n")
    found = [(d.code, d.span.line) for d in errors(source)]
    assert found == [("E110", 3), ("E110", 5), ("E106", 7), ("E102", 9)]


def test_rendered_error_has_location_caret_and_help():
    """PolicyError renders path:line:col, the source line, a caret and help."""
    with pytest.raises(PolicyError) as caught:
        parse("agent {\n}\n", "bot.fpl")
    assert str(caught.value) == (
        "bot.fpl:1:7: error[E102]: `agent` is missing its name before `{`\n"
        "   1 | agent {\n"
        "             ^\n"
        "  help: write a name after `agent`, e.g. `agent my-agent {`\n"
        "1 error")


def test_non_utf8_bytes_name_line_and_column():
    """A bad byte on line 2 column 12 is E103 at 2:12."""
    [diag] = errors(b"agent a {\n  model \"gp\xfft\"\n}\n")
    assert (diag.code, diag.span.line, diag.span.col) == ("E103", 2, 12)
    assert "0xFF" in diag.message


def test_input_larger_than_one_mebibyte_is_rejected():
    """A 1 MiB + 1 byte source is E115 before any parsing."""
    [diag] = errors(b"#" * (1024 * 1024 + 1))
    assert diag.code == "E115"


def test_byte_order_mark_is_ignored():
    """A UTF-8 BOM before the first statement does not count as content."""
    assert parse("\ufeffpermit x\n").flat_rules[0].tool == "x"


# ---------------------------------------------------------------- statements


def test_agent_statements():
    """Default, model, framework, version, var with $ and quoted names parse to their nodes."""
    doc = parse('agent "support-bot" {\n default allow\n model "gpt-4o"\n framework langgraph\n'
                ' version "1.2"\n var region "eu"\n var cap $500\n}\n')
    [agent] = doc.agents
    assert agent.name == "support-bot"
    assert agent.items == (
        ast.Default("permit"), ast.Meta("model", "gpt-4o"), ast.Meta("framework", "langgraph"),
        ast.Meta("version", "1.2"), ast.Var("region", "eu"), ast.Var("cap", Literal(500, "$")))


def test_effect_aliases_and_strict_deny_spellings():
    """allow/approve -> permit, block/reject -> deny, `deny!` and `deny !` are strict."""
    doc = parse("allow a\napprove b\nblock c\nreject d\ndeny! e\ndeny ! f\ndefer g\n")
    assert [(r.effect, r.strict) for r in doc.flat_rules] == [
        ("permit", False), ("permit", False), ("deny", False), ("deny", False),
        ("deny", True), ("deny", True), ("defer", False)]


def test_multi_line_rule_with_clauses_in_any_order():
    """Clauses may come in any order on following lines; net clauses keep their order."""
    doc = parse('defer proxy/http\n  reason: "r"\n  port: 443\n  when amount > 500\n'
                '  notify: finance\n  host: api.openai.com\n  header: x-key=sk-*\n')
    [rule] = doc.flat_rules
    assert (rule.effect, rule.tool, rule.reason, rule.notify) == ("defer", "proxy/http", "r", "finance")
    assert rule.condition == Binary(">", Name("amount"), Literal(500))
    assert rule.net == (ast.NetClause("port", "443"), ast.NetClause("host", "api.openai.com"),
                        ast.NetClause("header", "sk-*", "x-key"))


def test_header_spellings_and_query():
    """`header:`, `headers:` and `query:` take key=value; spaces around `=` are allowed."""
    rule = parse("permit proxy/http headers: x-a=1 header x-b = 2 query: v=*\n").flat_rules[0]
    assert rule.net == (ast.NetClause("header", "1", "x-a"), ast.NetClause("header", "2", "x-b"),
                        ast.NetClause("query", "*", "v"))


def test_parse_is_safe_from_several_threads():
    """Parsing the same sources from four threads at once gives the sequential results."""
    sources = [f"agent a{i} {{\n rules {{\n  permit t{i} when x > {i}\n }}\n}}\n" for i in range(40)]
    expected = [parse(s) for s in sources]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(parse, sources)) == expected
    assert expected[7].agents[0].rules[0].condition == Binary(">", Name("x"), Literal(7))


def test_effect_on_later_line_ends_the_condition():
    """An effect word on the line after a `when` starts the next rule."""
    doc = parse("permit a when x > 1\ndeny b\n")
    assert [(r.effect, r.tool) for r in doc.flat_rules] == [("permit", "a"), ("deny", "b")]


def test_rule_without_clauses_ends_at_next_effect_on_same_line():
    """`permit a permit b` is two rules."""
    assert [r.tool for r in parse("permit a permit b\n").flat_rules] == ["a", "b"]


def test_budget_on_one_line():
    """One-line budget: each single-valued key takes one value and the next word is a key."""
    doc = parse("agent a { budget session { max $500 max_calls 100 warn_at 0.8 on_exceed defer } }")
    [budget] = doc.agents[0].of(ast.Budget)
    assert (budget.max, budget.max_calls, budget.warn_at, budget.on_exceed) == (500.0, 100, 0.8, "defer")


def test_credential_scope_takes_several_values_until_a_known_key():
    """`scope a b backend vault` on one line: scope is (a, b), backend is its own key."""
    doc = parse("agent a { credential c { scope a stripe/* backend vault } }")
    [block] = doc.agents[0].of(ast.Block)
    assert block.settings == (ast.Setting("scope", ("a", "stripe/*")), ast.Setting("backend", "vault"))


def test_config_blocks_at_top_level_and_in_agents():
    """runtime/provider/trust/egress use `key = value`, lists, env() and free-form trust lines."""
    doc = parse('runtime { mode = "enforce" socket = "/tmp/f.sock" }\n'
                'provider vault { addr = env("VAULT_ADDR") }\n'
                'trust { key "github.com/x" ed25519:AAAA }\n'
                'agent a { egress { allow = ["api.stripe.com"] deny = [] } }\n')
    runtime, provider, trust, agent = doc.items
    assert runtime == ast.Block("runtime", None, (ast.Setting("mode", "enforce"),
                                                  ast.Setting("socket", "/tmp/f.sock")))
    assert provider.settings == (ast.Setting("addr", Call("env", (Literal("VAULT_ADDR"),))),)
    assert trust.settings == (ast.Setting("key", '"github.com/x" ed25519:AAAA'),)
    assert agent.items[0].settings == (
        ast.Setting("allow", ListExpr((Literal("api.stripe.com"),))), ast.Setting("deny", ListExpr()))


def test_manifest_lines_end_at_end_of_line():
    """Each manifest statement is one physical line; the next line is a new item."""
    doc = parse("manifest grant orch to worker max 5 approval\nmanifest orchestrator orch undeclared defer\n"
                "permit x\n")
    assert doc.items[:2] == (ast.Manifest("grant", ("orch", "to", "worker", "max", "5", "approval")),
                             ast.Manifest("orchestrator", ("orch", "undeclared", "defer")))
    assert doc.flat_rules[0].tool == "x"


def test_import_with_alias():
    """An import keeps its reference and alias."""
    assert parse('import "github.com/x/shell@1.0.0" as shell\n').items == (
        ast.Import("github.com/x/shell@1.0.0", "shell"),)


def test_rate_limit_redact_phase_and_delegate():
    """rate_limit, redact, phase duration/next and delegate scope/ttl/ceiling parse to nodes."""
    doc = parse('agent a {\n rate_limit "stripe/*": 10 per minute\n'
                ' redact stripe/charge args: ["card.number"]\n'
                ' phase intake { permit read\n duration 30m\n next resolve }\n'
                ' delegate w { scope "safe/*" ttl 1h ceiling approval }\n}\n')
    rate, redact, phase, delegate = doc.agents[0].items
    assert rate == ast.RateLimit("stripe/*", 10, "minute")
    assert redact == ast.Block("redact", "stripe/charge", (ast.Setting("args", ("card.number",)),))
    assert (phase.name, len(phase.rules), phase.duration, phase.next) == ("intake", 1, 1800.0, "resolve")
    assert delegate == ast.Delegate("w", ("safe/*",), 3600.0, "approval")


def test_comments_are_ignored_everywhere():
    """`#` comments after statements, rules and conditions are skipped."""
    doc = parse("# head\nagent a { # open\n default deny # eff\n rules {\n"
                "  permit x when y > 1 # cmp\n }\n}\n")
    assert doc.agents[0].rules[0].condition == Binary(">", Name("y"), Literal(1))


# ---------------------------------------------------------------- conditions


def test_precedence_follows_expr_lang():
    """`a or b and not c == d + e * f ** g` nests from ** outwards to or."""
    assert cond("a or b and not c == d + e * f ** g") == Binary(
        "or", Name("a"), Binary("and", Name("b"), Unary("not", Binary(
            "==", Name("c"), Binary("+", Name("d"), Binary("*", Name("e"), Binary("**", Name("f"), Name("g"))))))))


def test_ternary_and_nil_coalescing_are_lowest():
    """`a ?? b ? c : d || e` is (a ?? b) ? c : (d || e)."""
    assert cond("a ?? b ? c : d || e") == Conditional(
        Binary("??", Name("a"), Name("b")), Name("c"), Binary("or", Name("d"), Name("e")))


def test_symbol_operators_normalise():
    """&&, || and ! read as and, or, not."""
    assert cond("!a && b || c") == Binary("or", Binary("and", Unary("not", Name("a")), Name("b")), Name("c"))


def test_word_operators():
    """in, not in, matches, contains, startsWith, endsWith are comparisons."""
    assert cond('a in [1, 2] and b not in ["x"]') == Binary(
        "and", Binary("in", Name("a"), ListExpr((Literal(1), Literal(2)))),
        Binary("not in", Name("b"), ListExpr((Literal("x"),))))
    for op in ("matches", "contains", "startsWith", "endsWith"):
        assert cond(f"a {op} 'x'") == Binary(op, Name("a"), Literal("x"))


def test_postfix_member_index_slice_and_call():
    """`a.b["c"][0][1:2].d(x, k=1)` builds member, index, slice and a dotted call."""
    assert cond('a.b["c"][0][1:] == f.g(x, k=1)') == Binary(
        "==", Slice(Index(Index(Member(Name("a"), "b"), Literal("c")), Literal(0)), Literal(1), None),
        Call("f.g", (Name("x"),), (("k", Literal(1)),)))


def test_literals():
    """Strings with escapes, numbers, negatives, booleans, nil, money and quantities."""
    assert cond(r'''[ "a\"b\n", 'c', 1, 2.5, -3, true, false, nil, $500, 15m, 10mb ]''') == ListExpr((
        Literal('a"b\n'), Literal("c"), Literal(1), Literal(2.5), Literal(-3), Literal(True),
        Literal(False), Literal(None), Literal(500, "$"), Literal(900.0, "m"), Literal(10485760, "mb")))


def test_unknown_escape_keeps_backslash():
    """A regex escape such as \\d stays as written."""
    assert cond(r'cmd matches "\d+"') == Binary("matches", Name("cmd"), Literal("\\d+"))


def test_if_is_a_synonym_of_when_and_dollar_amounts_work():
    """`permit x if amount < $500` has the condition amount < Literal(500, "$")."""
    rule = parse("permit x if amount < $500\n").flat_rules[0]
    assert rule.condition == Binary("<", Name("amount"), Literal(500, "$"))
    assert rule.condition_text == "amount < $500"


def test_clause_keyword_is_variable_where_operand_expected():
    """`when host == "x" and path startsWith "/tmp" path: /v1` has host and path variables, then a path clause."""
    rule = parse('permit net when host == "x" and path startsWith "/tmp" path: /v1\n').flat_rules[0]
    assert rule.condition == Binary("and", Binary("==", Name("host"), Literal("x")),
                                    Binary("startsWith", Name("path"), Literal("/tmp")))
    assert rule.net == (ast.NetClause("path", "/v1"),)


def test_clause_keyword_without_colon_after_complete_condition():
    """`when a reason "r"` ends the condition at `reason`."""
    rule = parse('permit x when a reason "r"\n').flat_rules[0]
    assert (rule.condition, rule.reason) == (Name("a"), "r")


def test_contains_is_a_function_where_an_operand_is_expected():
    """`contains(list, "s")` is a call; `a contains "s"` is an operator."""
    assert cond('contains(tags, "s") and a contains "s"') == Binary(
        "and", Call("contains", (Name("tags"), Literal("s"))), Binary("contains", Name("a"), Literal("s")))


def test_tool_reference_arguments():
    """An unquoted `ns/tool.field` argument is two literals; `ns/*` alone is one; spaced `/` divides."""
    assert cond("f(stripe/refund.amount, a / b, stripe/*) > 1").left == Call(
        "f", (Literal("stripe/refund"), Literal("amount"), Binary("/", Name("a"), Name("b")),
              Literal("stripe/*")))


def test_condition_text_is_kept_as_written():
    """condition_text is the source slice of the condition, spanning lines."""
    rule = parse("permit x when a &&\n   b\n  reason: 'r'\n").flat_rules[0]
    assert rule.condition_text == "a &&\n   b"


def test_spans_point_at_source():
    """A rule's span runs from its effect to the end of its last clause."""
    rule = parse("\n  deny! shell/* reason: \"x\"\n").flat_rules[0]
    assert (rule.span.line, rule.span.col, rule.span.end_line, rule.span.end_col) == (2, 3, 2, 28)


# ---------------------------------------------------------------- limits


def test_condition_length_limit():
    """A 1025-character condition is E111; 1024 characters parse."""
    ok = "a == " + '"' + "x" * 1017 + '"'
    assert len(ok) == 1024
    assert cond(ok) == Binary("==", Name("a"), Literal("x" * 1017))
    assert errors(f"permit t when {ok}x\n")[0].code == "E100"
    assert errors(f"permit t when a == \"{'x' * 1018}\"\n")[0].code == "E111"


def test_function_call_limit():
    """32 calls parse; the 33rd is E112."""
    assert cond(" + ".join(["f()"] * 32)) is not None
    assert [d.code for d in errors("permit t when " + " + ".join(["f()"] * 33))] == ["E112"]


def test_operator_limit():
    """96 operators parse; the 97th is E113."""
    assert cond(" + ".join(["1"] * 97)) is not None
    assert [d.code for d in errors("permit t when " + " + ".join(["1"] * 98))] == ["E113"]


def test_nesting_limit_in_lists_outside_conditions():
    """Settings lists nest at most 16 deep too."""
    source = "runtime { x = " + "[" * 17 + "]" * 17 + " }"
    assert [d.code for d in errors(source)] == ["E114"]


def test_every_construct_file():
    """syntax/every_construct.fpl parses into the expected items, statements and rules."""
    doc = parse((Path(__file__).parent / "syntax" / "every_construct.fpl").read_text())
    assert [type(i).__name__ for i in doc.items] == [
        "Import", "Manifest", "Manifest", "Block", "Block", "Block", "Block", "Agent", "System",
        "Rule", "Rule"]
    agent = doc.agents[0]
    assert (agent.name, len(agent.items), agent.default) == ("support-bot", 23, "deny")
    assert [(r.effect, r.strict) for r in agent.rules] == [
        ("permit", False), ("deny", True), ("deny", True), ("permit", False), ("permit", False),
        ("deny", False), ("deny", False), ("defer", False), ("permit", False), ("deny", False),
        ("permit", False), ("defer", False), ("permit", False)]
    ternary = agent.rules[11].condition
    assert ternary == Conditional(Binary("matches", Name("cmd"), Literal("\\d+")), Literal(True),
                                  Binary("??", Member(Name("args"), "force"), Literal(False)))
