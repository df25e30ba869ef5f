"""The static envelope: every path or port a permit/defer rule could ever allow (policy/_envelope.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import policy
from policy import Effect, Engine, ToolCall

REPO = Path(__file__).resolve().parents[2]
CORPUS = (REPO.parent / "shared" / "fpl-corpus").resolve()
CORPUS_FILES = sorted(CORPUS.glob("*.fpl")) + sorted(CORPUS.glob("extracted/*.fpl"))
INVALID = "fpl-lang__conformance__invalid__missing-agent-name.fpl"
ALLOWING = (Effect.PERMIT, Effect.DEFER)


def engine(*texts: str) -> Engine:
    return Engine([policy.load_policy(text, f"layer{n}.fpl") for n, text in enumerate(texts)])


def agent(body: str, default: str = "deny") -> str:
    return f"agent a {{\n  default {default}\n  rules {{\n{body}\n  }}\n}}\n"


CASES = [
    # (rules, default, tool, argument, expected description)
    ('permit fs/read when args.path startsWith "/usr/"', "deny", "fs/read", "path", "/usr/*"),
    ('permit fs/read when args.path startsWith "/usr/" || path == "/etc/hosts"', "deny", "fs/read", "path",
     "/usr/*, '/etc/hosts'"),
    ('permit fs/read when args.path in ["/a", "/b"]', "deny", "fs/read", "path", "'/a', '/b'"),
    ('permit fs/read when "/etc/hosts" == args["path"]', "deny", "fs/read", "path", "'/etc/hosts'"),
    ('permit fs/read when args.path startsWith "/w/" && args.flags contains "x"', "deny", "fs/read", "path", "/w/*"),
    ('permit fs/read when args.flags contains "x" && args.path == "/w"', "deny", "fs/read", "path", "'/w'"),
    ('permit fs/read when args.path startsWith "/w/" || args.uid == 0', "deny", "fs/read", "path", "anything"),
    ('permit fs/read when !(args.path startsWith "/etc/")', "deny", "fs/read", "path", "anything"),
    ('permit fs/read when args.path endsWith ".txt"', "deny", "fs/read", "path", "anything"),
    ('permit fs/read when args.path matches "^/usr/"', "deny", "fs/read", "path", "anything"),
    ("permit fs/read", "deny", "fs/read", "path", "anything"),
    ("permit fs/*", "deny", "fs/delete", "path", "anything"),
    ('defer fs/write when args.path startsWith "/srv/"', "deny", "fs/write", "path", "/srv/*"),
    ('deny fs/write when args.path startsWith "/etc/"', "permit", "fs/write", "path", "anything"),
    ('deny fs/write when args.path startsWith "/etc/"', "deny", "fs/write", "path", "nothing"),
    ('permit fs/read when args.path startsWith "/usr/"', "deny", "fs/write", "path", "nothing"),
    ('deny! fs/read when args.path startsWith "/etc/"\n permit fs/read when args.path startsWith "/etc/ssl/"',
     "deny", "fs/read", "path", "/etc/ssl/*"),
    ('permit net/connect when args.port in [80, 443]', "deny", "net/connect", "port", "80, 443"),
    ('permit net/connect when args.port == 443 && args.host == "example.com"', "deny", "net/connect", "port", "443"),
    ('permit net/connect when args.host == "example.com"', "deny", "net/connect", "port", "anything"),
    ('permit fs/rename when args.dest startsWith "/tmp/"', "deny", "fs/rename", "dest", "/tmp/*"),
    ('permit fs/rename when args.dest startsWith "/tmp/"', "deny", "fs/rename", "path", "anything"),
    ('permit shell/exec when args.program == "ls"', "deny", "shell/exec", "path", "anything"),
    ('permit fs/read when args.path startsWith vars.root', "deny", "fs/read", "path", "anything"),
]


@pytest.mark.parametrize(("rules", "default", "tool", "key", "expected"), CASES)
def test_envelope_of_each_condition_shape(rules, default, tool, key, expected):
    """Each condition shape gives its literal bound, or anything when the analysis cannot bound it."""
    assert engine(agent(rules, default)).envelope(tool, key).describe() == expected


def test_defer_default_allows_anything():
    """A defer default can end in an approval, so every value is inside the envelope."""
    assert engine(agent('permit fs/read when path == "/a"', "defer")).envelope("fs/read").anything is True


def test_only_the_first_layer_bounds_the_envelope():
    """A later layer's default never counts, so its missing permits cannot narrow the envelope."""
    first = agent('permit fs/read when args.path startsWith "/data/"')
    second = agent('permit fs/read when args.path startsWith "/nowhere/"')
    layered = engine(first, second)
    assert layered.envelope("fs/read").describe() == "/data/*"
    call = ToolCall("fs/read", {"path": "/data/x"})
    assert layered.decide(call).effect is Effect.PERMIT


def test_contains_matches_prefixes_exact_values_and_stripped_paths():
    """contains() answers by prefix, by exact value, and for ``path`` comparisons without trailing spaces."""
    rules = 'permit fs/read when args.path startsWith "/usr/" || path == "/etc/hosts"'
    found = engine(agent(rules)).envelope("fs/read")
    assert [found.contains(p) for p in ("/usr/bin/ls", "/etc/hosts", "/etc/hosts ", "/etc/passwd", "/us")] == \
        [True, True, True, False, False]


@pytest.mark.parametrize("path", [p for p in CORPUS_FILES if p.name != INVALID], ids=lambda p: p.name)
def test_corpus_envelopes_are_sound(path):
    """Every corpus policy gives an envelope for every argument that holds each sample call it allows."""
    found = engine(path.read_text(encoding="utf-8"))
    samples = [("fs/read", "path", "/etc/passwd"), ("fs/write", "path", "/tmp/out.txt"),
               ("fs/delete", "path", "/home/u/x"), ("shell/exec", "path", "/usr/bin/ls"),
               ("net/connect", "port", 443), ("net/listen", "port", 8080)]
    for tool, key, value in samples:
        envelope = found.envelope(tool, key)
        args = {key: value, "argv": ["ls"], "program": "ls", "cmd": "ls", "host": "example.com"}
        if found.decide(ToolCall(tool, args)).effect in ALLOWING:
            assert envelope.contains(value), (tool, value, envelope)


def test_corpus_permit_everything_policies_give_anything():
    """``demo.fpl`` (default permit) and a trailing ``permit *`` leave every argument unbounded."""
    for name in ("faramesh-core__policies__demo.fpl", "faramesh-core__policies__examples__sequence_enforcement.fpl"):
        found = engine((CORPUS / name).read_text(encoding="utf-8"))
        assert {found.envelope(tool).describe() for tool in ("fs/read", "fs/write", "shell/exec")} == {"anything"}


def test_corpus_default_deny_policy_without_fs_rules_gives_nothing():
    """A default-deny policy with no filesystem rule leaves nothing for the filesystem."""
    found = engine((CORPUS / "faramesh-core__examples__starter.fpl").read_text(encoding="utf-8"))
    assert (found.envelope("fs/read").describe(), found.envelope("fs/write").describe()) == ("nothing", "nothing")


# ---- soundness: whatever decide() allows, the envelope holds ----------------------------------

SEGMENTS = ["a", "b", "ab", "tmp", "x y"]
paths = st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts))
prefix_literals = st.builds(lambda p, slash: p + ("/" if slash and p != "/" else ""), paths, st.booleans())
atoms = st.one_of(
    prefix_literals.map(lambda p: f'args.path startsWith "{p}"'),
    prefix_literals.map(lambda p: f'path startsWith "{p}"'),
    paths.map(lambda p: f'args.path == "{p}"'),
    paths.map(lambda p: f'path == "{p}"'),
    st.lists(paths, min_size=1, max_size=3).map(lambda ps: "args.path in [" + ", ".join(f'"{p}"' for p in ps) + "]"),
    st.sampled_from(['args.mode == 420', 'args.path endsWith "b"', 'args.path contains "tmp"']),
)
conditions = st.recursive(atoms, lambda inner: st.builds(
    lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(["&&", "||"]), inner), max_leaves=4)
rule_lines = st.builds(lambda effect, cond: f"{effect} fs/read" + (f" when {cond}" if cond else ""),
                       st.sampled_from(["permit", "deny", "defer", "deny!"]), st.one_of(st.none(), conditions))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(rule_lines, min_size=1, max_size=5), default=st.sampled_from(["deny", "permit", "defer"]),
       probes=st.lists(st.one_of(paths, paths.map(lambda p: p + " ")), min_size=1, max_size=8))
def test_every_allowed_path_is_inside_the_envelope(rules, default, probes):
    """For random startsWith/==/in policies, a path decide() permits or defers is always in the envelope."""
    try:
        found = engine(agent("\n".join(rules), default))
    except policy.PolicyError:  # e.g. a permit repeating a deny! pattern is rejected at load
        assume(False)
    envelope = found.envelope("fs/read")
    for path in probes:
        if found.decide(ToolCall("fs/read", {"path": path, "mode": 420})).effect in ALLOWING:
            assert envelope.contains(path), (path, envelope)
