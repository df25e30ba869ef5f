"""Policy cases as data: tests/policy/cases/*.toml (FPL layers, calls in order, expected decisions)."""

import pathlib
import tomllib

import pytest

from policy import Engine, SessionStore, ToolCall, load_policy

CASES = sorted((pathlib.Path(__file__).parent / "cases").glob("*.toml"))
CALL_FIELDS = ("args", "session_id", "agent_id", "call_id", "timestamp", "principal", "delegation")


def _call(case: dict) -> ToolCall:
    fields = {k: case[k] for k in CALL_FIELDS if k in case}
    fields.setdefault("session_id", "case-session")
    return ToolCall(case["tool"], **fields)


def _decision_fields(decision, expected: dict) -> dict:
    out = decision.to_dict()
    return {key: out.get(key, getattr(decision, key)) for key in expected}


@pytest.mark.parametrize("case_file", CASES, ids=[p.stem for p in CASES])
def test_case_file(case_file):
    """Every call in the file gets exactly the expected effect, rule id, reason code and other listed fields."""
    spec = tomllib.loads(case_file.read_text())
    layers = [load_policy(layer["source"], layer["path"]) for layer in spec["layer"]]
    engine = Engine(layers, SessionStore())
    mismatches = []
    for case in spec["case"]:
        got = _decision_fields(engine.decide(_call(case)), case["expect"])
        if got != case["expect"]:
            mismatches.append(f"{case['name']}: expected {case['expect']}, got {got}")
    assert mismatches == []
    assert len(spec["case"]) >= 2


def test_there_are_case_files():
    """The data-driven suite is not empty."""
    assert [p.stem for p in CASES] == ["conditions", "defer", "delegation", "layers", "network", "phases",
                                       "rules", "session", "strict"]
