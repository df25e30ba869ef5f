"""Canonical printer: parse(format_document(doc)) == doc, for the corpus and generated trees."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy import ast
from policy._lower import quantity as read_quantity
from policy.parser import parse
from policy.printer import format_document, format_expr

CORPUS = (Path(__file__).resolve().parents[2].parent / "shared" / "fpl-corpus").resolve()
VALID = [p for p in sorted(CORPUS.glob("*.fpl")) + sorted(CORPUS.glob("extracted/*.fpl"))
         if "invalid" not in p.name]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_corpus_round_trips_and_printing_is_idempotent():
    """For all 68 valid corpus files parse(fmt(parse(x))) == parse(x) and fmt is a fixed point."""
    assert len(VALID) >= 68
    for path in VALID:
        doc = parse(path.read_text(), path.name)
        text = format_document(doc)
        assert parse(text, path.name) == doc, path.name
        assert format_document(parse(text)) == text, path.name


def test_canonical_text_of_a_small_policy():
    """Aliases, `deny !`, clause order, quoting and units print in canonical form."""
    doc = parse("agent 'my bot' {\n default block\n rules {\n"
                "  deny ! shell/*  reason: 'no \"shell\"'   when cmd matches '\\d'\n"
                "  allow http/get notify: ops host: api.x.com port: 443 if amount<=$5\n }\n"
                " delegate w { ttl 24h scope 'a/*' }\n ambient { max_data_volume 10mb }\n}\n")
    assert format_document(doc) == (
        'agent "my bot" {\n'
        "  default deny\n"
        "  rules {\n"
        '    deny! shell/* when cmd matches "\\\\d" reason: "no \\"shell\\""\n'
        '    permit http/get when amount <= $5 host: api.x.com port: 443 notify: "ops"\n'
        "  }\n"
        "  delegate w {\n"
        '    scope "a/*"\n'
        "    ttl 1d\n"
        "  }\n"
        "  ambient {\n"
        "    max_data_volume 10mb\n"
        "  }\n"
        "}\n")


def test_long_rules_put_each_clause_on_its_own_line():
    """A rule longer than 100 characters prints its clauses on continuation lines."""
    rule = ast.Rule("defer", "stripe/refund", condition=ast.Binary(">", ast.Name("amount"), ast.Literal(500)),
                    notify="finance-team-with-a-very-long-channel-name",
                    reason="refunds above five hundred need a human")
    text = format_document(ast.Document((rule,)))
    assert text == ('defer stripe/refund\n  when amount > 500\n'
                    '  notify: "finance-team-with-a-very-long-channel-name"\n'
                    '  reason: "refunds above five hundred need a human"\n')
    assert parse(text).flat_rules == (rule,)


def test_minimal_parentheses():
    """Parentheses appear only where precedence or associativity needs them."""
    e = ast.Binary
    assert format_expr(e("*", e("+", ast.Name("a"), ast.Name("b")), ast.Name("c"))) == "(a + b) * c"
    assert format_expr(e("-", ast.Name("a"), e("-", ast.Name("b"), ast.Name("c")))) == "a - (b - c)"
    assert format_expr(e("**", ast.Name("a"), e("**", ast.Name("b"), ast.Name("c")))) == "a ** b ** c"
    assert format_expr(e("==", ast.Unary("not", ast.Name("a")), ast.Name("b"))) == "(not a) == b"
    assert format_expr(ast.Member(ast.Literal(-5), "x")) == "(-5).x"


# ---------------------------------------------------------------- generated trees

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
IDENT = st.sampled_from(["args", "amount", "cmd", "x", "tool_name", "session", "vars", "path", "host",
                         "principal", "time", "_y2"])
MEMBER = st.sampled_from(["cmd", "path", "in", "default", "deny", "amount", "a_b", "reason"])
FUNC = st.sampled_from(["len", "lower", "purpose", "history_tool_count", "session.sum", "contains"])
UNITS = st.sampled_from(["s", "ms", "m", "h", "d", "w", "b", "kb", "mb", "gb", "usd", "eur"])


@st.composite
def quantities(draw):
    digits = draw(st.integers(0, 10_000))
    frac = draw(st.sampled_from(["", ".5", ".25"]))
    if draw(st.booleans()):
        return read_quantity(f"${digits}{frac}")
    return read_quantity(f"{digits}{frac}{draw(UNITS)}")


NUMBERS = st.integers(-10**9, 10**9) | st.builds(lambda a, b: float(f"{a}.{b}"),
                                                  st.integers(0, 10**6), st.integers(0, 999))
LITERALS = st.builds(ast.Literal, NUMBERS | TEXT | st.booleans() | st.none()) | quantities()


def _is_number_literal(e) -> bool:
    return isinstance(e, ast.Literal) and type(e.value) in (int, float)


def _extend(children):
    binary = st.builds(ast.Binary, st.sampled_from(ast.BINARY_OPS), children, children)
    unary = st.builds(ast.Unary, st.just("not"), children) | st.builds(
        ast.Unary, st.just("-"), children.filter(lambda e: not _is_number_literal(e)))
    kwargs = st.lists(st.tuples(IDENT, children), max_size=2).map(tuple)
    args = st.lists(children, max_size=3).map(tuple)
    optional = st.none() | children
    return (binary | unary
            | st.builds(ast.Member, children, MEMBER)
            | st.builds(ast.Index, children, children)
            | st.builds(ast.Slice, children, optional, optional)
            | st.builds(ast.Call, FUNC, args, kwargs)
            | st.builds(ast.Conditional, children, children, children)
            | st.builds(ast.ListExpr, st.lists(children, max_size=3).map(tuple)))


EXPRS = st.recursive(st.builds(ast.Name, IDENT) | LITERALS, _extend, max_leaves=12)


@FAST
@given(EXPRS)
def test_generated_expressions_round_trip(expr):
    """Any normal-form expression prints to a condition that parses back to itself."""
    text = format_expr(expr)
    rule = parse(f"permit t when {text}\n").flat_rules[0]
    assert rule.condition == expr
    assert rule.condition_text == text


NET = (st.builds(ast.NetClause, st.sampled_from(["host", "port", "method", "path"]), TEXT)
       | st.builds(ast.NetClause, st.sampled_from(["query", "header"]), TEXT, TEXT))


@st.composite
def rules(draw):
    effect = draw(st.sampled_from(ast.EFFECTS))
    return ast.Rule(
        effect, draw(st.sampled_from(["shell/*", "*", "read_*", "api.x/v1", "when", "deny!"]) | TEXT),
        strict=effect == "deny" and draw(st.booleans()),
        condition=draw(st.none() | EXPRS), notify=draw(st.none() | TEXT),
        reason=draw(st.none() | TEXT), net=tuple(draw(st.lists(NET, max_size=3))))


SCALARS = TEXT | st.integers(-10**6, 10**6) | st.booleans() | quantities()
LIST_VALUES = st.builds(ast.ListExpr, st.lists(st.builds(ast.Literal, TEXT | st.integers(0, 99)),
                                               max_size=3).map(tuple))
ENV = st.builds(lambda n: ast.Call("env", (ast.Literal(n),)), TEXT)
KEYS = st.sampled_from(["mode", "socket", "type", "addr", "on", "notify", "path", "max_calls_per_day",
                        "allow", "deny", "source", "cache", "on_unavailable", "default", "true"])


@st.composite
def blocks(draw):
    kind = draw(st.sampled_from(["runtime", "provider", "identity", "egress", "session", "spawn",
                                 "enforcement", "alert", "ambient", "selector", "credential",
                                 "completion_gate", "model_policy", "trust"]))
    name = draw(st.none() | TEXT)
    if kind == "trust":
        raw = st.from_regex(r'[A-Za-z0-9:./"-]+( [A-Za-z0-9:./-]+)?', fullmatch=True)
        settings = draw(st.lists(st.builds(ast.Setting, KEYS, raw | st.just("")), max_size=3))
        return ast.Block(kind, name, tuple(settings))
    settings = draw(st.lists(st.builds(ast.Setting, KEYS, SCALARS | LIST_VALUES | ENV), max_size=3))
    if kind in ("credential", "completion_gate"):
        key = "scope" if kind == "credential" else "require"
        values = draw(st.lists(TEXT | st.sampled_from(["refund", "backend", "stripe/*"]), min_size=1,
                               max_size=4))
        settings.insert(0, ast.Setting(key, tuple(values)))
    return ast.Block(kind, name, tuple(settings))


@st.composite
def budgets(draw):
    cap, calls = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
    on_exceed = draw(st.sampled_from(["deny", "defer"]))
    settings = (ast.Setting("max", ast.Literal(cap, "$")), ast.Setting("max_calls", calls),
                ast.Setting("warn_at", 0.5), ast.Setting("on_exceed", on_exceed))
    return ast.Budget(draw(TEXT), max=float(cap), max_calls=calls, warn_at=0.5, on_exceed=on_exceed,
                      settings=settings)


SECONDS = st.sampled_from([0.5, 1.0, 30.0, 90.0, 1800.0, 86400.0, 1209600.0, 0.001])
AGENT_ITEMS = (
    rules()
    | st.builds(ast.RulesBlock, st.lists(rules(), max_size=3).map(tuple))
    | st.builds(ast.Default, st.sampled_from(["permit", "deny", "defer", "halt", "shadow"]))
    | st.builds(ast.Meta, st.sampled_from(["model", "framework", "version"]), TEXT)
    | st.builds(ast.Var, IDENT, TEXT | st.integers(0, 10**6) | quantities())
    | budgets()
    | st.builds(ast.Phase, TEXT, st.lists(rules(), max_size=2).map(tuple), st.none() | SECONDS,
                st.none() | TEXT)
    | st.builds(ast.Delegate, TEXT, st.lists(TEXT, max_size=2).map(tuple), st.none() | SECONDS,
                st.none() | st.sampled_from(["inherited", "approval"]))
    | blocks()
    | st.builds(ast.RateLimit, TEXT, st.integers(0, 10**6), st.sampled_from(["second", "minute", "day"]))
    | st.builds(lambda tool, paths: ast.Block("redact", tool, (ast.Setting("args", tuple(paths)),)),
                TEXT, st.lists(TEXT, max_size=3))
)
TOP_ITEMS = (
    st.builds(ast.Agent, TEXT, st.lists(AGENT_ITEMS, max_size=4).map(tuple))
    | rules()
    | blocks()
    | st.builds(ast.System, TEXT, st.lists(st.builds(ast.Setting, KEYS, SCALARS), max_size=3).map(tuple))
    | st.builds(ast.Manifest, st.sampled_from(["orchestrator", "grant"]),
                st.lists(st.sampled_from(["orch", "to", "worker", "5", "approval", "x y"]),
                         max_size=5).map(tuple))
    | st.builds(ast.Import, TEXT.filter(lambda t: "@latest" not in t), st.none() | IDENT)
)


@FAST
@given(st.builds(ast.Document, st.lists(TOP_ITEMS, max_size=4).map(tuple)))
def test_generated_documents_round_trip(doc):
    """Any normal-form document prints to FPL that parses back to the same tree, and printing is stable."""
    text = format_document(doc)
    again = parse(text)
    assert again == doc
    assert format_document(again) == text


def test_every_construct_file_round_trips():
    """syntax/every_construct.fpl (all statements, clauses and operators) survives printing."""
    doc = parse((Path(__file__).parent / "syntax" / "every_construct.fpl").read_text())
    text = format_document(doc)
    assert parse(text) == doc
    assert format_document(parse(text)) == text
    assert "    deny! fs/delete\n" in text
    assert 'when session.sum("stripe/refund", "amount", window=1h) > 2000' in text
