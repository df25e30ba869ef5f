"""The checker stays fast on large policies and reports the same conflicts as before."""

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from policy import check_sources, load_policy, parse
from policy._checks import Reporter, check_strict_conflicts, pattern_covers
from policy.ast import Span


def _timed_check(sources):
    start = time.perf_counter()
    found = check_sources(sources)
    return found, time.perf_counter() - start


def test_many_deny_and_permit_rules_check_in_bounded_time():
    """3000 unconditional deny! rules beside 3000 permits check in seconds, not minutes (no pair-wise scan)."""
    body = "".join(f"    deny! t{i}/x*\n" for i in range(3000)) + "".join(f"    permit p{i}/y\n" for i in range(3000))
    text = "agent a {\n  rules {\n" + body + "    permit t7/xray\n  }\n}\n"
    found, seconds = _timed_check([("big.fpl", text)])
    assert [(d.code, d.span.line, d.related[0].span.line) for d in found] == [("E321", 6003, 10)]
    assert seconds < 10


def test_many_agents_report_in_bounded_time():
    """A file of 20 000 agent blocks reports E330 for each extra agent quickly (source lines are not re-split)."""
    text = "agent a { }\n" * 20000
    found, seconds = _timed_check([("agents.fpl", text)])
    assert len(found) == 19999 and found[0].code == "E330" and found[0].source_line == "agent a { }"
    assert seconds < 10


def test_reporter_counts_lines_like_the_parser():
    """A form feed or U+2028 inside a line does not shift the quoted source line."""
    report = Reporter("p.fpl", 'permit a reason: "x\x0cy"\ndeny b reason: "p\u2028q"\npermit c\n')
    assert report.make("E1", "m", Span(3, 1, 3, 2)).source_line == "permit c"
    assert report.make("E1", "m", Span(2, 1, 2, 2)).source_line == 'deny b reason: "p\u2028q"'


def test_conflict_reports_keep_first_match_order():
    """A same-pattern conditional deny! before the covering one is reported (as E322 even beside other errors); a later one is not."""
    text = ("agent a {\n  rules {\n    deny! fs/read when args.x == 1\n    deny! fs/*\n"
            "    deny! fs/read when args.y == 1\n    permit fs/read\n  }\n}\n")
    found = check_sources([("p.fpl", text)])
    assert [(d.code, d.span.line, d.related[0].span.line) for d in found] == [("E321", 6, 4), ("E322", 6, 3)]


def test_layer_conflicts_found_through_the_index():
    """W305 still names the covering deny! of another file, including a `*` and a character-class deny!."""
    base = "agent a {\n  rules {\n    deny! \"net/[a-c]*\"\n    deny! sh*/exec\n  }\n}\n"
    team = "agent b {\n  rules {\n    permit net/bind\n    permit shell/exec\n    permit fs/read\n  }\n}\n"
    found = check_sources([("base.fpl", base), ("team.fpl", team)])
    assert [(d.code, d.path, d.span.line, d.related[0].span.line) for d in found] == [
        ("W305", "team.fpl", 3, 3), ("W305", "team.fpl", 4, 4)]
    everything = check_sources([("all.fpl", "deny! *\n"), ("team.fpl", team)])
    assert [(d.code, d.span.line) for d in everything] == [("W305", 3), ("W305", 4), ("W305", 5)]


def test_large_policy_still_loads():
    """Loading is unaffected: the big policy compiles with every rule."""
    body = "".join(f"    deny! t{i}/x*\n" for i in range(500)) + "".join(f"    permit p{i}/y\n" for i in range(500))
    assert len(load_policy("agent a {\n  rules {\n" + body + "  }\n}\n").rules) == 1000


def _pairwise(rules):
    """The conflicts a plain scan of every (rule, deny!) pair finds: (code, rule line, deny! line)."""
    out = []
    stricts = [r for r in rules if r["strict"]]
    for rule in rules:
        if rule["strict"]:
            continue
        for strict in stricts:
            if strict["when"]:
                if strict["tool"] == rule["tool"]:
                    out.append(("W306" if rule["effect"] == "permit" else "W304", rule["line"], strict["line"]))
                continue
            if strict["tool"] == rule["tool"] or pattern_covers(strict["tool"], rule["tool"]):
                out.append(("E320" if strict["tool"] == rule["tool"] else "E321", rule["line"], strict["line"]))
                break
    return sorted(out)


SEGMENTS = st.sampled_from(["a", "ab", "b", "*", "a*", "ab*", "*b", "[ab]", "x?"])
PATTERNS = st.lists(SEGMENTS, min_size=1, max_size=3).map(lambda parts: "/".join(parts))
RULES = st.lists(st.tuples(st.sampled_from(["deny!", "deny! when", "permit", "defer"]), PATTERNS), max_size=12)


@settings(max_examples=200, deadline=None)
@given(RULES)
def test_indexed_conflict_check_equals_the_pairwise_scan(specs):
    """For random rule lists, the indexed deny! check reports exactly what a scan of every pair reports."""
    rules, lines = [], []
    for number, (effect, pattern) in enumerate(specs):
        tool = f'"{pattern}"'
        strict, when = effect.startswith("deny!"), effect.endswith("when")
        verb = "deny!" if strict else effect
        lines.append(f"{verb} {tool}" + (" when args.x == 1" if when else ""))
        rules.append({"strict": strict, "when": when, "effect": verb, "tool": tool.strip('"'), "line": number + 1})
    report = Reporter("p.fpl", "\n".join(lines) + "\n")
    check_strict_conflicts(parse("\n".join(lines) + "\n").flat_rules, report)
    found = sorted((d.code, d.span.line, d.related[0].span.line) for d in report.errors + report.warnings)
    assert found == _pairwise(rules)
