"""Engine.static_effect: which tools the kernel may decide without asking the supervisor."""

from __future__ import annotations

import pytest

from policy import Effect, Engine, ToolCall, load_policy


def engine(*texts: str) -> Engine:
    return Engine([load_policy(t, f"layer{i}.fpl") for i, t in enumerate(texts)])


@pytest.mark.parametrize("text,tool,expected", [
    ("agent a { permit fs/read }", "fs/read", Effect.PERMIT),
    ("agent a { permit fs/read }", "fs/write", Effect.DENY),
    ("agent a { default permit\n deny! shell/* }", "shell/exec", Effect.DENY),
    ("agent a { default permit\n deny! shell/exec when args.path == \"/bin/rm\" }", "shell/exec", None),
    ("agent a { permit fs/read when args.path startsWith \"/tmp\" }", "fs/read", None),
    ("agent a { permit net/connect port: 443 }", "net/connect", None),
    ("agent a { defer shell/exec }", "shell/exec", None),
    ("agent a { default permit\n budget session { max_calls 5 } }", "fs/read", None),
    ("agent a { permit fs/read\n deny x when history_tool_count(\"fs/read\") > 3 }", "fs/read", None),
    ("agent a { permit fs/read\n deny x when session.call_count > 3 }", "fs/read", None),
    ("agent a { deny fs/read when args.path == \"/x\"\n permit fs/* }", "fs/read", None),
])
def test_static_effect_single_layer(text, tool, expected):
    """Only decisions that cannot depend on the call, session or history are static."""
    assert engine(text).static_effect(tool) is expected


def test_later_layer_tightens_static_effect():
    """A later layer's unconditional deny makes a permitted tool statically denied."""
    assert engine("agent a { permit fs/read }", "agent b { deny fs/read }").static_effect("fs/read") is Effect.DENY


def test_later_layer_default_does_not_loosen_or_tighten():
    """A later layer that has no rule for the tool leaves the first layer's effect."""
    assert engine("agent a { permit fs/read }", "agent b { default deny\n permit x }").static_effect("fs/read") is Effect.PERMIT


def test_static_effect_agrees_with_decide():
    """For static tools, decide() returns the same effect for very different calls."""
    eng = engine("agent a { default deny\n permit fs/read\n deny! shell/* }")
    for tool in ("fs/read", "shell/exec", "fs/write"):
        effect = eng.static_effect(tool)
        assert effect is not None
        for args in ({}, {"path": "/etc/shadow"}, {"path": "/tmp/x", "flags": ["O_RDONLY"]}):
            assert eng.decide(ToolCall(tool, args)).effect is effect
