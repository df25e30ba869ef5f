"""Tool patterns are compiled in the form tool ids are matched in: canonical (W307 when a
spelling is rewritten, E323 when it cannot mean anything), and compilable (E324)."""

import pytest

from policy import Effect, Engine, PolicyError, ToolCall, check_sources, load_policy
from policy.glob import PatternTooLarge, compile_glob

HUGE = "shell/" + "*x" * 100000 + "*"  # RE2 runs out of memory compiling it


def policy_with(line: str, default: str = "permit") -> str:
    return f"agent a {{\n  default {default}\n  rules {{\n    {line}\n  }}\n}}\n"


def diagnostics(text: str) -> list[tuple[str, str, int]]:
    return [(d.severity, d.code, d.span.line) for d in check_sources([("p.fpl", text)])]


@pytest.mark.parametrize("pattern,hint", [
    ("shell//exec", "write `shell/exec`"),
    ("./fs/read", "write `fs/read`"),
    ("../../fs/*", "write `fs/*`"),
    ("fs//*", "write `fs/*`"),
    ("ｆｓ／＊", "write it in ASCII: `fs/*`"),  # a fullwidth star: wildcard or literal?
    ("ｆｓ\\*", "write it in ASCII: `fs\\*`"),  # escapes next to rewritten text
])
def test_pattern_no_canonical_id_can_meet_is_an_error_with_a_hint(pattern, hint):
    """A deny! that could never match is refused at load time, with location and the canonical spelling."""
    with pytest.raises(PolicyError) as info:
        load_policy(policy_with(f'deny! "{pattern}"'), "p.fpl")
    [diag] = info.value.diagnostics
    assert (diag.code, diag.span.line, diag.span.col) == ("E323", 4, 5)
    assert diag.help.startswith(hint)
    assert diagnostics(policy_with(f'deny! "{pattern}"')) == [("error", "E323", 4)]


@pytest.mark.parametrize("pattern,canonical", [
    ("ｆｓ/write", "fs/write"),  # fullwidth letters
    ("ѕhell/exec", "shell/exec"),  # Cyrillic look-alike
    ("fs/re\u200bad", "fs/read"),  # zero-width space
    (" fs/read ", "fs/read"),
    ("ｆｓ/*", "fs/*"),
])
def test_text_spellings_are_matched_as_their_canonical_form(pattern, canonical):
    """The deny! matches the tool it names, static_effect says DENY, and W307 tells the author."""
    text = policy_with(f'deny! "{pattern}"')
    policy = load_policy(text, "p.fpl")
    assert policy.rules[0].tool == canonical
    [warning] = policy.warnings
    assert (warning.code, warning.span.line, warning.help) == ("W307", 4, f"write `{canonical}`")
    engine = Engine([policy])
    tool = canonical.replace("*", "write")
    assert engine.decide(ToolCall(tool, {"path": "/x"})).reason_code == "FPL_STRICT_DENY"
    assert engine.static_effect(tool) is Effect.DENY
    assert diagnostics(text) == [("warning", "W307", 4)]


def test_canonical_patterns_feed_the_deny_guarantee_checks():
    """A permit spelled differently from a deny! it repeats is still E320, also across files (W305)."""
    text = "agent a {\n  rules {\n    deny! fs/read\n    permit \"ｆｓ/read\"\n  }\n}\n"
    assert ("error", "E320", 4) in diagnostics(text)
    found = check_sources([("a.fpl", "agent a {\n  rules {\n    permit shell/exec\n  }\n}\n"),
                           ("b.fpl", 'deny! "ｓｈｅｌｌ/*"\n')])
    assert [(d.path, d.code) for d in found] == [("a.fpl", "W305"), ("b.fpl", "W307")]


def test_rate_limit_and_phase_patterns_are_canonical_too():
    """rate_limit lines and phase rules go through the same rewrite and errors."""
    limited = load_policy('agent a {\n  default permit\n  rate_limit "ｎｅｔ/*": 1 per minute\n}\n', "p.fpl")
    engine = Engine([limited])
    assert [engine.decide(ToolCall("net/get", {})).effect for _ in range(2)] == [Effect.PERMIT, Effect.DENY]
    assert diagnostics('agent a {\n  default permit\n  rate_limit "net//*": 1 per minute\n}\n') == [
        ("error", "E323", 3)]
    phased = load_policy('agent a {\n  phase init {\n    permit "ｒｅａｄ"\n  }\n}\n', "p.fpl")
    assert Engine([phased]).decide(ToolCall("read", {})).effect is Effect.PERMIT


def test_history_function_patterns_are_canonical():
    """A literal tool pattern in a condition is rewritten (W307 at the condition) or refused (E323)."""
    gate = 'permit deploy when history_tool_count("ｃｉ/passed") > 0'
    text = f"agent a {{\n  rules {{\n    permit ci/passed\n    {gate}\n  }}\n}}\n"
    engine = Engine([load_policy(text, "p.fpl")])
    engine.decide(ToolCall("ci/passed", {}, session_id="s"))
    assert engine.decide(ToolCall("deploy", {}, session_id="s")).effect is Effect.PERMIT
    assert diagnostics(text) == [("warning", "W307", 4)]
    broken = policy_with('permit deploy when session.sum("ci//x.amount") > 0')
    assert diagnostics(broken) == [("error", "E323", 4)]


def test_huge_glob_is_a_load_error_not_a_crash():
    """A pattern RE2 cannot compile is E324 with location and hint, wherever a glob is written."""
    assert pytest.raises(PatternTooLarge, compile_glob, HUGE)
    for text, line in ((policy_with(f'deny "{HUGE}"'), 4),
                       (f'agent a {{\n  default permit\n  rate_limit "{HUGE}": 1 per second\n}}\n', 3),
                       (f'agent a {{\n  delegate b {{ scope "{HUGE}" }}\n}}\n', 2)):
        with pytest.raises(PolicyError) as info:
            load_policy(text, "p.fpl")
        [diag] = info.value.diagnostics
        assert (diag.code, diag.span.line, diag.help) == ("E324", line, "split it into shorter patterns with fewer `*`")
        assert diagnostics(text) == [("error", "E324", line)]


def test_static_analyses_never_raise():
    """static_effect, decision_keys and envelope answer "nothing static" when a matcher fails,
    and decide fails closed, so the launcher never sees a traceback."""
    engine = Engine([load_policy(policy_with("deny fs/*"), "p.fpl")])

    def broken(_tool):
        raise IndexError("list index out of range")

    engine.layers[0].rules[0].matches_tool = broken
    assert engine.static_effect("fs/read") is None
    assert engine.decision_keys("fs/read") is None
    assert engine.envelope("fs/read").anything
    assert engine.decide(ToolCall("fs/read", {})).reason_code == "ENGINE_ERROR"
