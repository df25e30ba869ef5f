"""The FPL parser's LALR tables, computed from policy/fpl.lark ahead of time.

Building the LALR parser from the grammar takes about half a second on every start of the
command. What it computes depends only on fpl.lark and on lark's version, so
``python -m policy._parser_cache_build > policy/_parser_cache_tables.py`` stores it as a module of this
package (trusted like the package's own code, never a writable cache directory), stamped with
the grammar's SHA-256 and the lark version. ``policy.parser`` uses the stored tables only when
both stamps match; otherwise it builds from the grammar as before, so fpl.lark stays the single
source and a stale table costs time, never correctness (tests/policy/test_parser_cache.py
fails until the tables are regenerated).

The tables are lark's own serialisation (``Lark.memo_serialize``, what ``Lark.save`` writes),
pickled and compressed. They are read by an unpickler that refuses every global, so the bytes
can only become dicts, lists, tuples, strings and numbers, never objects or code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zlib

import lark
from lark import Lark
from lark.grammar import Rule
from lark.lexer import TerminalDef

CUSTOM_LEXER = "<the lexer class given to load()>"
PICKLE_PROTOCOL = 4


class _DataOnly(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the FPL parser tables may hold plain data only, not {module}.{name}")


def fingerprint(grammar: str) -> str:
    return hashlib.sha256(grammar.encode("utf-8")).hexdigest()


def dump(parser: Lark) -> bytes:
    """The LALR tables of ``parser``, without its transformer and lexer class (given at load)."""
    data, memo = parser.memo_serialize([TerminalDef, Rule])
    data["options"] = {k: v for k, v in data["options"].items() if k != "transformer"}
    data["options"]["lexer"] = CUSTOM_LEXER
    data["parser"]["lexer_conf"]["lexer_type"] = CUSTOM_LEXER
    return zlib.compress(pickle.dumps({"data": data, "memo": memo}, protocol=PICKLE_PROTOCOL), 9)


def load(blob: bytes, lexer: type, transformer) -> Lark:
    """The parser ``dump`` stored, with ``lexer`` and ``transformer`` put back."""
    tables = _DataOnly(io.BytesIO(zlib.decompress(blob))).load()
    data = tables["data"]
    if data["options"].get("lexer") != CUSTOM_LEXER:
        raise ValueError("the stored FPL parser tables were not made by policy._parser_cache.dump")
    data["options"]["lexer"] = lexer
    data["parser"]["lexer_conf"]["lexer_type"] = lexer
    return Lark._load_from_dict(data, tables["memo"], transformer=transformer)


def stored_parser(grammar: str, lexer: type, transformer) -> Lark | None:
    """The parser from policy/_parser_cache_tables.py when it was made from ``grammar`` by this lark
    version; None when it is missing or stale (the caller then builds from the grammar)."""
    try:
        from policy import _parser_cache_tables as stored
    except ImportError:
        return None
    if (stored.GRAMMAR_SHA256, stored.LARK_VERSION) != (fingerprint(grammar), lark.__version__):
        return None
    return load(stored.TABLES, lexer, transformer)


def module_text(grammar: str, parser: Lark) -> str:
    """The source of policy/_parser_cache_tables.py for ``parser``, built from ``grammar``."""
    return (
        '"""LALR tables of policy/fpl.lark for policy.parser; generated, do not edit.\n\n'
        'Regenerate after changing fpl.lark or upgrading lark:\n'
        '    python -m policy._parser_cache_build > policy/_parser_cache_tables.py\n"""\n\n'
        f'GRAMMAR_SHA256 = "{fingerprint(grammar)}"\n'
        f'LARK_VERSION = "{lark.__version__}"\n'
        f"TABLES = {dump(parser)!r}\n"
    )

