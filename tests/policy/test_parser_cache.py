"""The stored LALR tables (policy/_parser_cache_tables.py) are current and parse exactly as the grammar."""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import lark
import pytest
from lark.grammar import Rule
from lark.lexer import TerminalDef

from policy import _parser_cache, _parser_cache_tables, parser
from policy.errors import PolicyError

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parents[2] / "shared" / "fpl-corpus"  # as tests/policy/test_corpus.py
SOURCES = sorted((HERE / "syntax").glob("*.fpl")) + sorted(CORPUS.glob("*.fpl")) + sorted(CORPUS.glob("extracted/*.fpl"))


def _canonical(p: lark.Lark):
    """The LALR automaton with tokens and rules by content and states numbered in a walk from the
    start states (token ids and state numbers vary between builds with the string hash seed)."""
    data, memo = p.memo_serialize([TerminalDef, Rule])
    table = data["parser"]["parser"]
    tokens, states = table["tokens"], table["states"]
    rule = lambda ref: repr(memo[ref["@"]])  # noqa: E731
    number: dict[int, int] = {}
    queue = [table["start_states"][name] for name in sorted(table["start_states"])]
    while queue:
        state = queue.pop(0)
        if state not in number:
            number[state] = len(number)
            queue += [arg for tok, (action, arg) in sorted(states[state].items(), key=lambda a: tokens[a[0]])
                      if action == 0]
    assert len(number) == len(states)  # every state reached: the numbering is complete
    rows = [None] * len(number)
    for state, index in number.items():
        rows[index] = {tokens[tok]: ("shift", number[arg]) if action == 0 else ("reduce", rule(arg))
                       for tok, (action, arg) in states[state].items()}
    starts = {name: number[state] for name, state in table["start_states"].items()}
    ends = {name: number[state] for name, state in table["end_states"].items()}
    return rows, starts, ends, sorted(rule(ref) for ref in data["rules"])


@pytest.fixture(scope="module")
def built():
    return parser.build_from_grammar()


def test_stored_tables_match_this_grammar_and_lark():
    """The stamps equal fpl.lark's SHA-256 and lark's version: regenerate with
    `python -m policy._parser_cache_build > policy/_parser_cache_tables.py` if this fails."""
    assert _parser_cache_tables.GRAMMAR_SHA256 == _parser_cache.fingerprint(parser.GRAMMAR)
    assert _parser_cache_tables.LARK_VERSION == lark.__version__


def test_the_module_parser_comes_from_the_stored_tables():
    """policy.parser loads the stored tables instead of building (the start-up saving is real)."""
    loaded = _parser_cache.stored_parser(parser.GRAMMAR, parser._TokensFromDriver, parser._LOWER)
    assert loaded is not None
    assert _canonical(parser._PARSER) == _canonical(loaded)


def test_stored_tables_equal_the_tables_built_from_the_grammar(built):
    """Rules, terminals and every LALR state and action are the same as a fresh build's."""
    loaded = _parser_cache.load(_parser_cache_tables.TABLES, parser._TokensFromDriver, parser._LOWER)
    assert _canonical(loaded) == _canonical(built)


def test_a_stale_stamp_means_building_from_the_grammar():
    """A grammar that differs by one byte gets no stored parser (the caller builds)."""
    assert _parser_cache.stored_parser(parser.GRAMMAR + " ", parser._TokensFromDriver, parser._LOWER) is None


def test_tables_holding_a_global_are_refused():
    """The unpickler accepts plain data only: a pickle naming any class or function is refused."""
    blob = zlib.compress(pickle.dumps({"data": {"options": {"lexer": print}}, "memo": {}}))
    with pytest.raises(pickle.UnpicklingError, match="plain data only, not builtins.print"):
        _parser_cache.load(blob, parser._TokensFromDriver, parser._LOWER)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_stored_and_built_parsers_agree_on_every_sample(built, path, monkeypatch):
    """Each sample policy parses to the same document, or fails with the same diagnostics."""
    text = path.read_text()

    def outcome():
        try:
            return parser.parse(text, path.name)
        except PolicyError as err:
            return [(d.code, d.span.line, d.span.col) for d in err.diagnostics]

    stored = outcome()
    monkeypatch.setattr(parser, "_PARSER", built)
    assert outcome() == stored


def test_samples_are_present():
    """The comparison above runs over the shipped sample and the shared corpus, not an empty list."""
    assert len(SOURCES) >= 70
