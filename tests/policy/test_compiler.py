"""Compiler checks and the shape of CompiledPolicy."""

import pytest

from policy import PolicyError, ast, check_sources, load_policy
from policy.compiler import check, compile_policy, policy_version
from policy._checks import pattern_covers
from tests.policy._build import agent, arg, call, document, lit, name, op, rule, rules, span, strict

SOURCE = "\n".join(f"line {n}" for n in range(1, 40))


def codes(doc):
    return [(d.severity, d.code, d.span.line) for d in check(doc, SOURCE, "p.fpl")]


def test_policy_version_is_sha256_prefix():
    """policy_version is the first 16 hex digits of sha256 over the source bytes."""
    assert policy_version("abc") == "ba7816bf8f01cfea"
    compiled = compile_policy(document(agent()), "abc", "p.fpl")
    assert compiled.version == "ba7816bf8f01cfea"


def test_unknown_identifier_is_an_error_with_location():
    """An unknown root name in a condition is E301 at the name's span."""
    bad = ast.Name("amout", span=span(7, 20))
    assert codes(document(agent(rules(rule("permit", "x", op(">", bad, lit(1)), line=7))))) == [("error", "E301", 7)]


def test_unknown_function_and_arity():
    """Unknown functions are E302, wrong argument counts E303."""
    doc = document(agent(rules(rule("permit", "x", call("frobnicate", lit(1)), line=3),
                               rule("permit", "y", call("lower"), line=4))))
    assert codes(doc) == [("error", "E302", 3), ("error", "E303", 4)]


def test_invalid_regex_is_a_compile_error():
    """`matches` with an invalid RE2 literal is E304 at the literal."""
    regex = ast.Literal("(unclosed", span=span(5, 30))
    doc = document(agent(rules(rule("deny", "x", op("matches", name("cmd"), regex), line=5))))
    [diag] = check(doc, SOURCE, "p.fpl")
    assert (diag.code, diag.span.line, diag.span.col, diag.source_line) == ("E304", 5, 30, "line 5")


def test_condition_limits():
    """More than 32 function calls in one condition is E305."""
    expr = call("len", arg("a"))
    for _ in range(33):
        expr = op("+", expr, call("len", arg("a")))
    doc = document(agent(rules(rule("permit", "x", op(">", expr, lit(0)), line=2))))
    assert ("error", "E305", 2) in codes(doc)


def test_long_or_chain_compiles_flat():
    """A 40-way `or` chain is not "too deep": and/or chains are flattened."""
    expr = op("==", arg("x"), lit(0))
    for n in range(1, 40):
        expr = op("or", expr, op("==", arg("x"), lit(n)))
    policy = compile_policy(document(agent(rules(rule("permit", "t", expr)))), "src", "p.fpl")
    body = policy.rules[0].condition.source.splitlines()[1]
    assert body.startswith("    return (_eq(_member(c.args, 'x'), 0) or _eq(")
    assert body.count("(") == 81  # two per comparison, one for the whole chain


def test_deep_nesting_is_a_diagnostic_not_a_crash():
    """An expression nested 60 levels deep is reported as E305."""
    expr = arg("x")
    for _ in range(60):
        expr = ast.Unary("-", expr)
    doc = document(agent(rules(rule("permit", "t", op(">", expr, lit(0)), line=2))))
    assert codes(doc) == [("error", "E305", 2)]


def test_strict_deny_same_pattern_conflict_names_both_locations():
    """A permit or defer with the same pattern as a deny! is E320, with the deny! as related note."""
    doc = document(agent(rules(rule("permit", "shell/exec", line=2), strict("shell/exec", line=3),
                               rule("defer", "shell/exec", op("==", lit(1), lit(1)), line=4))))
    diags = check(doc, SOURCE, "p.fpl")
    assert [(d.code, d.span.line, d.related[0].span.line) for d in diags] == [("E320", 2, 3), ("E320", 4, 3)]


def test_strict_deny_glob_cover_conflict():
    """An unconditional deny! shell/* makes permit shell/run unreachable (E321); a conditional one does not."""
    covered = document(agent(rules(strict("shell/*", line=2), rule("permit", "shell/run", line=3))))
    assert codes(covered) == [("error", "E321", 3)]
    conditional = document(agent(rules(strict("shell/*", op("==", name("cmd"), lit("x")), line=2),
                                       rule("permit", "shell/run", line=3))))
    assert codes(conditional) == []
    broader = document(agent(rules(strict("shell/run", line=2), rule("permit", "shell/*", line=3))))
    assert codes(broader) == []


@pytest.mark.parametrize("strict_pattern,other,expected", [
    ("*", "anything/at/all", True),
    ("shell/*", "shell/exec", True),
    ("shell/*", "shell/ex*", True),
    ("shell/*", "shell/exec/x", False),
    ("shell/ex*", "shell/exec*", True),
    ("shell/ex*", "shell/*", False),
    ("*/exec", "shell/exec", True),
    ("*/exec", "*/exec", True),
    ("a/*/c", "a/b*/c", True),
    ("read_*", "read_customer", True),
    ("read_*", "write_customer", False),
])
def test_pattern_covers(strict_pattern, other, expected):
    """pattern_covers detects the documented covering shapes only."""
    assert pattern_covers(strict_pattern, other) is expected


def test_multiple_agents_is_an_error():
    """Two agents in one document are E330 pointing at the second, with the first as note."""
    doc = document(agent(name="a", line=1), agent(name="b", line=5))
    [diag] = check(doc, SOURCE, "p.fpl")
    assert (diag.code, diag.span.line, diag.related[0].span.line) == ("E330", 5, 1)


def test_budget_checks():
    """Two budgets, a bad on_exceed and unknown keys are errors; warn_at is a not-enforced warning."""
    first = ast.Budget("session", max=1.0, span=span(2))
    second = ast.Budget("session", max_calls=3, on_exceed="explode", warn_at=0.5,
                        settings=(ast.Setting("colour", "red", span=span(4)),), span=span(3))
    assert codes(document(agent(first, second))) == [
        ("error", "E310", 3), ("error", "E311", 3), ("warning", "W300", 3), ("error", "E312", 4)]


def test_bad_default_ceiling_ambient():
    """Unknown default, delegate ceiling and ambient keys are errors."""
    doc = document(agent(
        ast.Default("maybe", span=span(2)),
        ast.Delegate("w", scopes=("a/*",), ceiling="sky", span=span(3)),
        ast.Block("ambient", settings=(ast.Setting("max_calls_per_day", 5, span=span(5)),
                                       ast.Setting("max_spoons", 1, span=span(6))), span=span(4)),
    ))
    assert codes(doc) == [("error", "E313", 2), ("error", "E314", 3), ("warning", "W300", 4), ("error", "E315", 6)]


def test_unenforced_blocks_warn_by_name():
    """Blocks the sandbox cannot act on are warnings that name the block, never dropped silently."""
    doc = document(
        ast.Import("github.com/x/y@1.0.0", span=span(1)),
        ast.Block("runtime", settings=(), span=span(2)),
        agent(ast.Block("selector", "account", span=span(4)), ast.Block("credential", "stripe", span=span(5)),
              ast.Block("egress", span=span(6)), line=3),
    )
    diags = check(doc, SOURCE, "p.fpl")
    assert [(d.code, d.span.line, d.message) for d in diags] == [
        ("W300", 1, "`import github.com/x/y@1.0.0` is parsed, not enforced by faramesh-sandbox"),
        ("W300", 2, "`runtime` is parsed, not enforced by faramesh-sandbox"),
        ("W300", 4, "`selector account` is parsed, not enforced by faramesh-sandbox"),
        ("W300", 5, "`credential stripe` is parsed, not enforced by faramesh-sandbox: only `backend env` and "
                    "`backend file` credentials are injected by the HTTPS egress"),
        ("W300", 6, "`egress` is parsed, not enforced by faramesh-sandbox"),
    ]


def test_credentials_the_egress_injects_do_not_warn():
    """A credential with backend env or file is enforced (the egress injects it); others warn."""
    def credential(backend: str, line: int) -> ast.Block:
        return ast.Block("credential", f"c{line}", settings=(ast.Setting("backend", backend, span=span(line)),),
                         span=span(line))
    doc = document(agent(credential("env", 2), credential("file", 3), credential("vault", 4), line=1))
    assert [(d.code, d.span.line) for d in check(doc, SOURCE, "p.fpl")] == [("W300", 4)]


def test_import_latest_and_system_values():
    """@latest imports and bad system settings are errors like the reference loader's."""
    doc = document(ast.Import("x@latest", span=span(1)),
                   ast.System("g", settings=(ast.Setting("on_policy_load_failure", "allow_all", span=span(3)),
                                             ast.Setting("kill_switch_default", "on", span=span(4))), span=span(2)))
    assert codes(doc) == [("error", "E331", 1), ("warning", "W300", 1), ("error", "E332", 3), ("error", "E332", 4)]


def test_compile_policy_raises_with_all_errors_sorted():
    """PolicyError carries every error of the document, sorted by line."""
    doc = document(agent(rules(rule("permit", "x", name("nope1"), line=9), rule("permit", "y", name("nope2"), line=4))))
    with pytest.raises(PolicyError) as info:
        compile_policy(doc, SOURCE, "p.fpl")
    assert [(d.code, d.span.line) for d in info.value.diagnostics] == [("E301", 4), ("E301", 9)]
    assert info.value.render().endswith("2 errors")


def test_compiled_policy_indexes_rules_by_tool():
    """Exact names go to buckets, globs to a list; candidates keep first-match order."""
    doc = document(agent(rules(rule("permit", "fs/*"), rule("deny", "fs/read"), strict("*", op("==", name("cmd"), lit("rm"))),
                               rule("defer", "fs/read"))))
    policy = compile_policy(doc, "src", "p.fpl")
    assert policy.exact_index == {"fs/read": (1, 3)}
    assert policy.glob_rules == (0, 2)
    assert [r.id for r in policy.candidates("fs/read")] == ["fpl-0", "fpl-1", "fpl-2", "fpl-3"]
    assert [r.id for r in policy.strict_candidates("fs/read")] == ["fpl-2"]
    assert [r.id for r in policy.candidates("net/x")] == ["fpl-2"]


def test_vars_and_meta_are_visible():
    """var values (numbers stay numbers) and model/framework/version lines become vars."""
    doc = document(agent(ast.Var("limit", ast.Literal(500, "$")), ast.Var("region", "eu"), ast.Meta("model", "gpt-4o")))
    policy = compile_policy(doc, "src", "p.fpl")
    assert policy.vars == {"limit": 500, "region": "eu", "agent.model": "gpt-4o", "model_name": "gpt-4o"}


def test_condition_compiles_to_python_source():
    """Conditions become Python functions once, at compile time."""
    doc = document(agent(rules(rule("permit", "x", op("<", arg("amount"), lit(5))))))
    policy = compile_policy(doc, "src", "p.fpl")
    assert policy.rules[0].condition.source == "def condition(c):\n    return _lt(_member(c.args, 'amount'), 5)\n"


def test_conditional_strict_deny_with_same_pattern_loads_but_fails_check():
    """A permit repeating a conditional deny! pattern loads with W306, and `policy check` rejects it as E322."""
    doc = document(agent(rules(strict("shell/run", op("matches", name("cmd"), lit("rm")), line=2),
                               rule("permit", "shell/run", line=3))))
    assert [(d.severity, d.code) for d in compile_policy(doc, SOURCE, "p.fpl").warnings] == [("warning", "W306")]
    assert codes(doc) == [("error", "E322", 3)]


def test_conditional_strict_deny_with_same_pattern_defer_is_a_warning():
    """A defer repeating a conditional deny! pattern stays a warning (the reference checks permits only)."""
    doc = document(agent(rules(strict("shell/run", op("matches", name("cmd"), lit("rm")), line=2),
                               rule("defer", "shell/run", line=3))))
    assert codes(doc) == [("warning", "W304", 3)]


def test_check_sources_reports_every_file_sorted():
    """check_sources returns parse errors and compile diagnostics of all files, sorted by path and line."""
    found = check_sources([
        ("b.fpl", "agent b {\n  rules {\n    permit x when nope > 1\n  }\n}\n"),
        ("a.fpl", "agent a {\n  egress { allow = [\"x\"] }\n  rules {\n    deny! fs/*\n    permit fs/read\n  }\n}\n"),
    ])
    assert [(d.path, d.span.line, d.severity, d.code) for d in found] == [
        ("a.fpl", 2, "warning", "W300"), ("a.fpl", 5, "error", "E321"), ("b.fpl", 3, "error", "E301")]


def test_load_policy_raises_policy_error_with_rendered_location():
    """load_policy reports compile errors as path:line:col with the source line and help."""
    text = "agent a {\n  rules {\n    permit x when args.cmd matches \"(\"\n  }\n}\n"
    with pytest.raises(PolicyError) as info:
        load_policy(text, "bad.fpl")
    rendered = info.value.render()
    assert rendered.splitlines()[0].startswith("bad.fpl:3:")
    assert "error[E304]" in rendered.splitlines()[0]
    assert rendered.splitlines()[1] == '   3 |     permit x when args.cmd matches "("'
    assert rendered.endswith("1 error")


def test_bytes_source_gives_the_same_version_and_diagnostics():
    """load_policy and check_sources accept the raw bytes of a file."""
    text = "agent a {\n  rules {\n    deny! fs/*\n    permit fs/read\n  }\n}\n"
    [diag] = check_sources([("a.fpl", text.encode())])
    assert (diag.code, diag.span.line, diag.source_line) == ("E321", 4, "    permit fs/read")
    ok = "agent a {\n  default permit\n}\n"
    assert load_policy(ok.encode(), "b.fpl").version == load_policy(ok, "b.fpl").version == policy_version(ok)


def test_layer_conflicts_across_files_are_warnings_with_both_locations():
    """A permit in one file covered by an unconditional deny! in another is W305 with a note at the deny!."""
    found = check_sources([
        ("base.fpl", "agent a {\n  rules {\n    permit shell/exec\n    permit fs/read\n  }\n}\n"),
        ("org.fpl", "deny! shell/*\ndeny! fs/read when args.path == \"/x\"\n"),
    ])
    assert [(d.path, d.span.line, d.code, d.related[0].path, d.related[0].span.line) for d in found] == [
        ("base.fpl", 3, "W305", "org.fpl", 1)]
