"""Engine.decision_keys: the arguments a tool's decision can read, and reuse_key for callers."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from policy import Engine, ToolCall, load_policy
from policy._purity import reuse_key
from policy.errors import PolicyError
from policy.glob import has_meta

PATH, FLAGS, NET = frozenset({"path"}), frozenset({"path", "flags"}), frozenset(
    {"host", "port", "method", "path", "query", "headers"})


def engine(*texts: str) -> Engine:
    return Engine([load_policy(t, f"layer{i}.fpl") for i, t in enumerate(texts)])


def agent(*lines: str, default: str = "deny") -> str:
    return "agent a {\n  default " + default + "\n  " + "\n  ".join(lines) + "\n}\n"


@pytest.mark.parametrize("text,tool,expected", [
    # the common cases
    (agent('permit fs/read when args.path startsWith "/work"', "deny fs/read"), "fs/read", PATH),
    (agent('deny fs/write when args.path == "/etc/passwd" or "O_TRUNC" in args.flags', default="permit"),
     "fs/write", FLAGS),
    (agent("permit fs/read"), "fs/read", frozenset()),
    (agent("permit fs/read"), "fs/write", frozenset()),
    (agent('permit fs/* when args.mode == "r"'), "fs/read", frozenset({"mode"})),
    (agent('permit fs/* when args.mode == "r"'), "shell/exec", frozenset()),
    # implicit argument roots and functions
    (agent("defer pay when amount > 500", "permit pay"), "pay", frozenset({"amount"})),
    (agent("deny mail when recipients > 10", "permit mail"), "mail", frozenset({"recipients"})),
    (agent('deny! shell/exec when cmd contains "rm"', "permit shell/exec"), "shell/exec", frozenset({"cmd"})),
    (agent('permit net/dns when host endsWith ".example"'), "net/dns", frozenset({"host"})),
    (agent('permit fs/read when path startsWith "/w"'), "fs/read", PATH),
    (agent('permit x when purpose("ship")'), "x", frozenset({"purpose"})),
    (agent('permit x when args_array_contains("to.list", "a")'), "x", frozenset({"to"})),
    (agent('permit x when args_array_len("items") < len(args.name)'), "x", frozenset({"items", "name"})),
    (agent('permit x when lower(trim(args.name)) == "bob" and abs(args.n) < 3'), "x", frozenset({"name", "n"})),
    (agent('permit x when args.a.b[0] == 1 and args["c"][1:2] == [2]'), "x", frozenset({"a", "c"})),
    (agent('permit x when (args.a ?? args.b) == 1 ? args.c == 2 : args.d == 3'), "x", frozenset("abcd")),
    (agent('var root "/work"', "permit fs/read when args.path startsWith vars.root"), "fs/read", PATH),
    (agent('permit * when tool_name == "fs/read"'), "fs/read", frozenset()),
    (agent('permit fs/read when args["ｐａｔｈ"] == "/x"'), "fs/read", frozenset({"ｐａｔｈ", "path"})),
    # network clauses read every network argument
    (agent('permit net/connect host: "*.example.com" port: 443'), "net/connect", NET),
    # reading anything but named arguments fails closed
    (agent('permit x when "a" in args'), "x", None),
    (agent("permit x when len(args) > 1"), "x", None),
    (agent("permit x when args[args.k] == 1"), "x", None),
    (agent("permit x when time.hour > 8"), "x", None),
    (agent('permit x when principal.role == "admin"'), "x", None),
    (agent("permit x when delegation.depth == 0"), "x", None),
    (agent("permit x when session.call_count < 5"), "x", None),
    (agent('permit x when history_tool_count("y") < 5'), "x", None),
    (agent('permit x when args_array_len(args.k) > 0'), "x", None),
    # session readers, guards anywhere: nothing is reusable, not even other tools
    (agent("permit x", 'deny y when history_contains_within("x", 60)'), "x", None),
    (agent("permit x", "deny y when deny_count_within(60) > 2"), "x", None),
    (agent("permit x", "budget session { max_calls 5 }"), "x", None),
    (agent("permit x", 'rate_limit "y": 1 per hour'), "x", None),
    (agent("phase init { permit x }"), "x", None),
    (agent("permit x", 'delegate worker {\n scope "safe/*"\n }'), "x", None),
    (agent("permit x") + "manifest grant a to worker max 5\n", "x", None),
    # rules no call can reach are not read
    (agent("permit fs/read", 'deny fs/read when args.path == "/x"'), "fs/read", frozenset()),
    (agent("deny! fs/read", 'deny fs/read when args.path == "/x"'), "fs/read", frozenset()),
    (agent("deny! fs/read", "deny fs/read when time.hour > 8"), "fs/read", frozenset()),
    (agent('deny! fs/read when args.path == "/x"', "permit fs/read when args.mode == 1"), "fs/read",
     frozenset({"path", "mode"})),
    # defer rules count like the others
    (agent("defer fs/write when args.size > 10", "permit fs/write"), "fs/write", frozenset({"size"})),
    # tool ids are canonicalised as decide does; a NUL byte fails closed
    (agent('permit fs/read when args.path == "/x"'), "ｆｓ/read", PATH),
    (agent('permit fs/read when args.path == "/x"'), "./fs//read", PATH),
    (agent("permit fs/read"), "fs/read\x00", None),
])
def test_decision_keys_single_layer(text, tool, expected):
    """Each policy shape gives exactly the argument names its reachable rules read, or None."""
    assert engine(text).decision_keys(tool) == expected


@pytest.mark.parametrize("texts,expected", [
    ((agent("permit fs/read"), agent('deny fs/read when args.path == "/x"')), PATH),
    ((agent('permit fs/read when args.mode == 1'), agent('deny fs/read when args.path == "/x"')),
     frozenset({"path", "mode"})),
    ((agent('deny! fs/read when args.mode == 1'), agent("deny! fs/read", "deny fs/read when args.p == 2")),
     frozenset({"mode"})),
    ((agent("deny! fs/read"), agent('deny! fs/read when args.path == "/x"')), frozenset()),
    ((agent("permit fs/read"), agent("permit fs/read", "budget session { max_calls 5 }")), None),
    ((agent("permit fs/read"), agent("deny fs/read when time.hour > 3")), None),
])
def test_decision_keys_layers(texts, expected):
    """Later layers add what their reachable rules read; a later unconditional deny! ends the union."""
    assert engine(*texts).decision_keys("fs/read") == expected


def test_unknown_syntax_fails_closed():
    """A condition node the analysis does not know, or a condition without its tree, gives None."""
    eng = engine(agent('permit fs/read when args.path == "/x"'))
    rule = eng.layers[0].rules[0]
    rule.expr = object()
    assert eng.decision_keys("fs/read") is None
    rule.expr = None
    assert eng.decision_keys("fs/read") is None


def test_roots_and_functions_match_the_condition_compiler():
    """The roots and functions the analysis trusts read exactly what the condition compiler makes them read."""
    from policy import _purity
    from policy._conditions import ROOTS
    from policy._functions import FUNCTIONS
    assert {n: ROOTS[n] for n in _purity.ARGUMENT_ROOTS} == {
        "amount": "_amount(c.args)", "cmd": "_strarg(c.args, 'cmd')", "host": "_strarg(c.args, 'host')",
        "path": "_strarg(c.args, 'path')", "recipients": "_recipients(c.args)"}
    assert {n: ROOTS.get(n) for n in _purity.CONSTANT_ROOTS} == {
        "true": None, "false": None, "nil": None, "tool_name": "c.tool", "tool": "_EMPTY", "vars": "c.vars"}
    trusted = _purity.PURE_FUNCTIONS | _purity.ARRAY_FUNCTIONS | set(_purity.IMPLICIT_FUNCTION_KEYS)
    assert sorted(set(FUNCTIONS) - trusted) == [
        "deny_count_within", "history_contains_within", "history_sequence", "history_tool_count"]


def test_reason_text_is_never_templated():
    """A reason mentioning an argument is fixed text, so it needs no key."""
    eng = engine(agent('permit fs/read reason: "opened {args.path}"'))
    assert eng.decision_keys("fs/read") == frozenset()
    assert eng.decide(ToolCall("fs/read", {"path": "/a"})).reason == "opened {args.path}"
    assert eng.decide(ToolCall("fs/read", {"path": "/b"})).reason == "opened {args.path}"


def test_reuse_key_keeps_only_the_keys_and_their_types():
    """reuse_key lists each key (absent ones bare) with type-tagged values, ignoring other arguments."""
    keys = frozenset({"path", "flags", "mode"})
    assert reuse_key({"path": "/a", "flags": 1, "other": [1.5]}, keys) == (
        ("flags", ("int", 1)), ("mode",), ("path", "/a"))
    assert reuse_key({"flags": True}, keys) == (("flags", ("bool", True)), ("mode",), ("path",))
    assert reuse_key({"flags": [1.0, {"k": None}]}, keys) == (
        ("flags", ("list", ("float", "1.0"), ("map", ("k", ("NoneType", None))))), ("mode",), ("path",))


@pytest.mark.parametrize("args", [
    {"path": "/a", " path": "/etc"},  # canonicalises onto "path"
    {"path": "/a", "pаth": "/etc"},  # Cyrillic a
    {"path": "/a", "other": "x\x00"},
    {"path": "/a", "other": {"ｋ": 1}},
    {"path": "/a", "other": object()},
    {"path": "/a", 1: "x"},
    ["path"],
])
def test_reuse_key_refuses_calls_outside_the_preconditions(args):
    """Arguments that canonicalisation could merge, NUL bytes and foreign types are not reusable."""
    assert reuse_key(args, PATH) is None


# ---------------------------------------------------------------- decide agrees (property tests)

FIELDS = ("effect", "rule_id", "reason_code", "reason", "policy_version", "layer")
ARG_NAMES = ("a", "b", "c", "d", "path", "amount", "cmd", "purpose", "host", "port", "flags", "recipients", "z",
             "method", "query", "headers")
TEXTS = ("x", "X", "ｘ", "/w", "/work/a.py", "/wоrk/a.py", "rm -rf /", "t", " t ", "", "ship", "a.example", "nan")
NUMBERS = (3.5, 1e-9, 2.0, -0.0, 0.1234567891, float("nan"), float("inf"))
VALUES = TEXTS + NUMBERS + (-1, 0, 1, 2, 3, 5, 10, 443, True, False, None, [], ["t", "u"], [1, "ｔ"], {"e": 1}, {"e": 2})
TOOLS = ("fs/read", "ｆｓ/read", "net/connect", "shell/exec", "pay")
KEYED = ('args.a == "x"', 'args.a startsWith "/w"', "args.b > 3", '"t" in args.c', "amount > 5",
         "len(args.a) > 2", 'lower(args.a) == "x"', 'args_array_contains("c", "t")', 'purpose("ship")',
         'cmd contains "rm"', 'path endsWith ".py"', 'args.a matches "^/w.*y$"', "args.d.e == 1",
         "args.flags in [1, 2]", "args.b / args.amount > 1", "recipients > 1", 'host == "a.example"')
UNKEYED = ("time.hour > 12", 'principal.role == "admin"', "session.call_count > 2",
           'history_tool_count("fs/*") > 1', "delegation.depth > 0", "args[args.a] == 1")
NETS = ('host: "*.example"', "port: 443", 'path: "/w*"')


@st.composite
def conditions(draw):
    """One to three conditions joined by and/or, maybe negated; a few read more than arguments."""
    parts = draw(st.lists(st.sampled_from(KEYED * 2 + UNKEYED), min_size=1, max_size=3))  # mostly keyed
    joined = draw(st.sampled_from((" and ", " or "))).join(f"({p})" for p in parts)
    return f"not ({joined})" if draw(st.booleans()) else joined


@st.composite
def rules(draw):
    """A rule of any effect, with a condition, network clause and reason now and then."""
    effect = draw(st.sampled_from(("permit", "deny", "defer", "deny!")))
    text = f"{effect} {draw(st.sampled_from(('fs/read', 'fs/*', '*', 'net/connect', 'shell/exec', 'pay')))}"
    if effect == "deny!" or draw(st.integers(0, 3)):
        text += f" when {draw(conditions())}"
    if draw(st.integers(0, 4)) == 0:
        text += " " + draw(st.sampled_from(NETS))
    if draw(st.booleans()):
        text += ' reason: "because {args.a}"'
    return text


def layer_texts():
    body = st.tuples(st.lists(rules(), min_size=1, max_size=5), st.sampled_from(("permit", "deny", "defer")))
    return st.lists(body.map(lambda b: agent(*b[0], default=b[1])), min_size=1, max_size=3)


HOT = {"a": ("x", "/wy", "abc"), "b": (5, 0), "c": (["t"], "t"), "d": ({"e": 1},), "amount": (10, 0),
       "cmd": ("rm -rf /",), "purpose": ("SHIP",), "flags": (1, 2), "recipients": (["a", "b"],),
       "path": ("/w", "/work/a.py", "/v1/a/b"), "host": ("a.example", "api.openai.com"), "port": (443,),
       "method": ("POST",), "query": ("api-version=1", {"api-version": "2"}),
       "headers": ({"x-api-key": "sk-1"},)}  # values that make the conditions and clauses tested true
PAIRS = 16


def random_args(rng: random.Random, names, values, hot: dict) -> dict:
    """Each name with probability 3/4, mostly with a value its conditions look for."""
    return {n: rng.choice(hot.get(n, values) if rng.random() < 0.75 else values)
            for n in names if rng.random() < 0.75}


def in_context(rng: random.Random, tool: str, args: dict, delegation: dict) -> ToolCall:
    """``args`` in a random session, agent, principal and time."""
    return ToolCall(tool, args, session_id=rng.choice(("s1", "s2", "")), agent_id=rng.choice(("", "bot", "orch")),
                    call_id=rng.choice(("1", "2")), timestamp=rng.uniform(-1e9, 4e9), delegation=delegation,
                    principal=rng.choice(({}, {"role": "admin"}, {"tier": 3})))


def assert_agreement(eng: Engine, tool: str, keys: frozenset, rng: random.Random, values=VALUES,
                     names=ARG_NAMES, hot=HOT, delegation=None) -> None:
    """Pairs of calls that agree on ``keys``, each after its own history, get the same decision fields.

    The second call's other arguments are often the first's with one changed or dropped, so a
    key missing from ``keys`` shows up as a single-argument difference."""
    others = [n for n in names if n not in keys]
    for _ in range(PAIRS):
        shared = random_args(rng, sorted(keys), values, hot)
        first_rest = random_args(rng, others, values, hot)
        second_rest = random_args(rng, others, values, hot)
        if others and rng.random() < 0.5:
            second_rest = dict(first_rest)
            victim = rng.choice(list(first_rest) if first_rest and rng.random() < 0.75 else others)
            if victim in second_rest and rng.random() < 0.5:
                del second_rest[victim]
            else:
                second_rest[victim] = rng.choice(hot.get(victim, values) + values[:3])
        decided = []
        for rest in (first_rest, second_rest):
            for _ in range(rng.randrange(3)):  # history: earlier calls of any tool and session
                eng.decide(in_context(rng, rng.choice(TOOLS), random_args(rng, names, values, hot), {}))
            call = in_context(rng, tool, {**rest, **shared}, delegation or {})
            assert reuse_key(call.args, keys) is not None
            decided.append({f: getattr(eng.decide(call), f) for f in FIELDS})
        assert decided[0] == decided[1], (first_rest, second_rest, shared)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(texts=layer_texts(), tool=st.sampled_from(TOOLS), delegation=st.sampled_from(({}, {"scope": ["fs/*"]})),
       seed=st.integers(0, 2**32 - 1))
def test_generated_policies_decide_alike_on_the_keys(texts, tool, delegation, seed):
    """For generated policies, calls agreeing on decision_keys get equal effect, rule, reasons and layer."""
    try:
        layers = [load_policy(t, f"layer{i}.fpl") for i, t in enumerate(texts)]
    except PolicyError:
        assume(False)
    eng = Engine(layers, rule_timeout=60.0, total_timeout=60.0)  # time limits are outside the contract
    keys = eng.decision_keys(tool)
    assume(keys is not None)
    assert_agreement(eng, tool, keys, random.Random(seed), delegation=delegation)


CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "fpl-corpus"


def _corpus_cases() -> list[tuple[str, str, frozenset]]:
    cases = []
    for path in sorted(CORPUS.glob("*.fpl")) + sorted(CORPUS.glob("extracted/*.fpl")):
        try:
            policy = load_policy(path.read_bytes(), path.name)
        except PolicyError:
            continue
        eng = Engine([policy])
        for tool in sorted({r.tool for r in policy.rules if not has_meta(r.tool)}):
            keys = eng.decision_keys(tool)
            if keys is not None:
                cases.append((path.relative_to(CORPUS).as_posix(), tool, keys))
    return cases


CORPUS_CASES = _corpus_cases()


def test_corpus_keys_cover_most_tools():
    """187 (file, tool) pairs of the corpus are reusable; 21 of them read some argument."""
    assert len(CORPUS_CASES) == 187
    assert len([c for c in CORPUS_CASES if c[2]]) == 21


@pytest.mark.parametrize("name,tool,keys", CORPUS_CASES, ids=lambda c: getattr(c, "name", str(c))[:40])
def test_corpus_policies_decide_alike_on_the_keys(name, tool, keys):
    """For every reusable (corpus file, tool), calls agreeing on the keys get the same decision fields."""
    text = (CORPUS / name).read_text("utf-8")
    literals = tuple(re.findall(r'"([^"\\]*)"', text)) + TEXTS
    numbers = tuple(float(n) for n in re.findall(r"\b\d+(?:\.\d+)?\b", text)[:40])
    values = literals + numbers + VALUES
    eng = Engine([load_policy((CORPUS / name).read_bytes(), name)], rule_timeout=60.0, total_timeout=60.0)
    names = tuple(sorted(keys | set(ARG_NAMES)))
    hot = {n: HOT.get(n) or literals[:-len(TEXTS)] + numbers + (1, 1000) for n in names}
    for seed in range(30 if keys else 4):  # tools whose rules read arguments get more tries
        assert_agreement(eng, tool, keys, random.Random(seed), values, names, hot)
