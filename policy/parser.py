"""FPL text -> ``policy.ast.Document``; every syntax error as a located Diagnostic.

``parse(text, path)`` returns a Document or raises ``PolicyError`` listing all
the syntax errors it found. After a failed parse each top-level item, each
agent statement and each rule is parsed on its own so that independent
mistakes are all reported. Lark exceptions never escape.

Grammar: ``policy/fpl.lark`` (LALR). Tokens: ``policy/_lexer.py``, which
types each token by what the parser accepts next. Reductions build AST nodes
directly: ``policy/_lower.py``.

Clause keywords inside conditions. ``host``, ``port``, ``method``, ``path``,
``query``, ``header(s)``, ``notify`` and ``reason`` start a clause exactly where
a clause can start, that is when the condition before them is complete. Where
an operand is expected they are variables: ``when path startsWith "/tmp"`` and
``when x > 1 and host == "a"`` read ``path``/``host`` as variables, while
``when x > 1 path: /v1`` (or ``... path /v1``) starts a ``path`` clause. ``if`` is
a synonym of ``when``; ``$500`` in a condition is ``Literal(500, unit="$")``.

A condition ends where the next token cannot continue it. An effect word on a
later line than its ``when`` starts the next rule; on the same line it is an
error (E117). Conditions are limited to 1024 characters, 32 function calls, 96
operator tokens, 128 member accesses and 16 nested brackets; sources to 1 MiB.
An unquoted ``ns/tool.field`` call argument (``session.sum(stripe/refund.amount,
window=1h)``) becomes two string literals, tool then field; see
``policy/_lower.py``. Strings decode the usual backslash escapes; an unknown
escape such as ``\\d`` keeps its backslash, so regexes read naturally.

Diagnostic codes (stable):

====  ===========================================================
E100  unexpected token
E101  unterminated string
E102  block is missing its name (``agent { ... }``)
E103  source is not valid UTF-8
E104  unexpected character
E105  malformed number, unknown unit or bad ``$`` amount
E106  unknown statement, setting or manifest form
E107  rule is missing its tool pattern
E108  unexpected end of input / unclosed ``{``
E109  unmatched ``}``
E110  expected an expression
E111  condition longer than 1024 characters
E112  condition calls more than 32 functions
E113  condition has more than 96 operators (or 128 member accesses)
E114  brackets nested deeper than 16
E115  source larger than 1 MiB
E116  import pinned to ``@latest``
E117  effect word after a condition on the same line
E118  call of something that is not a function name
E119  too many errors; the rest were not reported
E121  duplicate clause in a rule
E122  invalid value for a setting (number, duration, rate window)
E123  setting without a value
E199  internal parser error (the policy is rejected; the input is a bug report)
====  ===========================================================
"""

from __future__ import annotations

import re
import threading
from importlib import resources

from lark import Lark, Token
from lark.exceptions import UnexpectedInput, UnexpectedToken
from lark.lexer import Lexer as _LarkLexer

from policy import ast
from policy._lexer import Lexer
from policy._lexer_accept import Acceptor
from policy._lexer_recovery import narrow
from policy._lexer_tables import SourceError
from policy._lower import Lower
from policy._lower_errors import explain
from policy._parser_cache import stored_parser
from policy.errors import Diagnostic, PolicyError

MAX_SOURCE_BYTES = 1 << 20
MAX_DIAGNOSTICS = 50
GRAMMAR = resources.files("policy").joinpath("fpl.lark").read_text(encoding="utf-8")
START_SYMBOLS = ("document", "agent_body", "rules_body", "phase_body")
_NEWLINE = re.compile("\n")


class _TokensFromDriver(_LarkLexer):
    """Placeholder: tokens are fed by ``_attempt``, never lexed by lark."""

    __future_interface__ = 2

    def __init__(self, lexer_conf):
        pass

    def lex(self, lexer_state, parser_state):  # pragma: no cover - never called
        raise NotImplementedError


_LOWER = Lower()


def build_from_grammar() -> Lark:
    """The LALR parser computed from fpl.lark (about half a second)."""
    return Lark(GRAMMAR, parser="lalr", lexer=_TokensFromDriver, start=list(START_SYMBOLS),
                transformer=_LOWER, maybe_placeholders=True)


# The tables stored by policy._parser_cache when they match this grammar and lark version.
_PARSER = stored_parser(GRAMMAR, _TokensFromDriver, _LOWER) or build_from_grammar()
# The reductions write into the shared transformer; parses take turns.
_LOCK = threading.Lock()
# Lark keeps some rule names as lark.Token, a str subclass whose __eq__ runs in
# Python; every reduction looks its rule name up in the parse table, so plain
# str names (same text, same hash) make parsing about a third faster.
for _rule in _PARSER.rules:
    _rule.origin.name = str(_rule.origin.name)


def parse(text: str | bytes, path: str = "<input>") -> ast.Document:
    """Parse FPL source; raise PolicyError with every syntax error found."""
    src = _Source(_decode(text, path), path)
    found: list = []
    value = _collect(src, 0, len(src.text), "document", found)
    if found:
        raise PolicyError(_finish(found, src))
    return value


class _Source:
    """The text being parsed, its path, and where each line starts."""

    def __init__(self, text: str, path: str):
        self.text, self.path = text, path
        self.line_starts = [0] + [m.end() for m in _NEWLINE.finditer(text)]

    def offset(self, span: ast.Span) -> int:
        return self.line_starts[span.line - 1] + span.col - 1

    def line(self, number: int) -> str:
        """Line ``number`` as the lexer counts lines (LF only; a trailing CR dropped)."""
        if not 0 < number <= len(self.line_starts):
            return ""
        start = self.line_starts[number - 1]
        end = self.text.find("\n", start)
        return self.text[start:end if end >= 0 else len(self.text)].rstrip("\r")


def _decode(data: str | bytes, path: str) -> str:
    size = len(data)
    if size > MAX_SOURCE_BYTES:
        unit = "characters" if isinstance(data, str) else "bytes"
        raise PolicyError([Diagnostic(
            "E115", f"source is larger than the {MAX_SOURCE_BYTES}-byte limit ({size} {unit})",
            path, ast.Span(1, 1, 1, 2),
            help="split the policy into smaller files; FPL policies are small by design")])
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            line_start = data.rfind(b"\n", 0, err.start) + 1
            col = err.start - line_start + 1
            line_end = data.find(b"\n", err.start)
            shown = data[line_start:line_end if line_end >= 0 else len(data)]
            raise PolicyError([Diagnostic(
                "E103", f"source is not valid UTF-8 (byte 0x{data[err.start]:02X})", path,
                ast.Span(line, col, line, col + 1),
                help="save the file as UTF-8; non-ASCII text belongs inside quotes",
                source_line=shown.decode("utf-8", "replace"))]) from None
    if data.startswith("\ufeff"):
        data = " " + data[1:]  # a byte-order mark is not content; keep columns stable
    return data


def _collect(src: _Source, lo: int, hi: int, start: str, found: list):
    """Parse ``src.text[lo:hi]`` as ``start``; append each error to ``found``.

    Returns the value when the range parses. LALR stops at the first token
    that cannot continue a valid prefix, so everything before the failing piece
    is fine: the failing piece is examined on its own (unless the error was
    raised while building a node, which is already exact) and the text after
    it is read again for further errors. Each stretch of text is read a bounded
    number of times, and recursion only follows the nesting of blocks.
    """
    while True:
        value, failure = _attempt(src, lo, hi, start)
        if failure is None:
            return value
        diag, offset, exact = failure
        narrowed = narrow(src.text, lo, hi, start, offset)
        if narrowed is None:
            found.append((diag, offset))
            return None
        hit, rest = narrowed
        known = len(found)
        if not exact:
            _collect(src, *hit, found)
        if exact or len(found) == known:
            found.append((diag, offset))
        if len(found) > MAX_DIAGNOSTICS or not rest:
            return None
        for run in rest[:-1]:
            _collect(src, *run, found)
        lo, hi, start = rest[-1]


def _attempt(src: _Source, lo: int, hi: int, start: str):
    lexer = Lexer(src.text, lo, hi, src.line_starts)
    path = src.path
    with _LOCK:
        _LOWER.conditions = lexer.conditions
        state = _PARSER.parse_interactive(start=start).parser_state
        accepts = Acceptor(state.parse_conf.states, state.state_stack)
        try:
            while True:
                tok = lexer.next_token(accepts.reset())
                if tok is None:
                    break
                state.feed_token(tok)
            col = lexer.pos - lexer.line_start + 1
            end = Token("$END", "", lexer.pos, lexer.line, col, lexer.line, col, lexer.pos)
            lexer.prev, lexer.last = lexer.last, end
            return state.feed_token(end, True), None
        except SourceError as err:
            diag = Diagnostic(err.code, err.message, path, err.span, err.help)
            return None, (diag, src.offset(err.span), err.after_valid_syntax)
        except UnexpectedToken as err:
            # the table's expected set over-approximates; keep what can really follow
            expected = {t for t in err.expected if t == "$END" or t in accepts.reset()}
            diag = explain(err.token, expected or set(err.expected), lexer, path)
            return None, (diag, err.token.start_pos or lexer.pos, False)
        except UnexpectedInput as err:  # defensive: any other lark input error
            span = ast.Span(lexer.line, lexer.pos - lexer.line_start + 1)
            return None, (Diagnostic("E100", str(err).splitlines()[0], path, span,
                                     help="check the syntax near this point"), lexer.pos, False)
        except Exception as err:  # fail closed: a parser defect rejects the policy, no traceback
            span = ast.Span(lexer.line, lexer.pos - lexer.line_start + 1)
            return None, (Diagnostic("E199", f"internal parser error ({type(err).__name__})", path,
                                     span, help="simplify the statement at this point and report "
                                     "the input to the maintainers"), lexer.pos, False)


def _finish(found: list, src: _Source) -> list[Diagnostic]:
    path = src.path
    seen, out = set(), []
    for diag, _ in found:
        key = (diag.code, diag.span.line, diag.span.col)
        if key in seen:
            continue
        seen.add(key)
        out.append(Diagnostic(diag.code, diag.message, path, diag.span, diag.help,
                              source_line=src.line(diag.span.line)))
    out.sort(key=lambda d: d.sort_key)
    if len(out) > MAX_DIAGNOSTICS:
        last = out[MAX_DIAGNOSTICS - 1]
        out = out[:MAX_DIAGNOSTICS] + [Diagnostic(
            "E119", f"too many errors; stopped after {MAX_DIAGNOSTICS}", path, last.span,
            help="fix the errors above and parse again")]
    return out
