"""FPL tokenizer, typed by what the LALR table accepts next.

The parser driver hands ``next_token`` the set of terminals the parser accepts
at the current state; the lexer scans with the shape that fits (expression
tokens, FPL words such as ``stripe/*`` or ``api.openai.com``, network clause
values, free-form trust lines, manifest words) and types keywords by what is
acceptable. Rules that need more than the parser state live here:

* a word is a keyword only where the grammar accepts that keyword; otherwise it
  is a variable (inside a condition) or a plain word. So ``path`` is a clause
  keyword after a complete condition and a variable where an operand is
  expected (``when path startsWith "/tmp"``);
* inside a ``when`` condition an effect word on the same line as ``when`` is
  not a new rule (it is reported as an error); on a later line it starts one;
* in a settings block a word is a new key when it starts a line, when the
  current key takes a single value that is already given, or when it is a
  known key of the block (``scope a b backend vault``);
* a manifest statement is the rest of its physical line;
* limits: input size is bounded by the caller; bracket nesting, condition
  length, operator tokens, function calls and member accesses are bounded here
  and exceeding one stops the current item with a diagnostic.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

from lark import Token

from policy._lexer_accept import Acceptor
from policy._lexer_tables import (
    BANG_AFTER_DENY_RE, DIGITS, EXPR_MARKERS, EXPR_TYPES, KEYWORDS, KNOWN_KEYS,
    MAX_CONDITION_CALLS, MAX_CONDITION_CHARS, MAX_CONDITION_MEMBERS,
    MAX_CONDITION_OPERATORS, MAX_NESTING, MONEY_RE, MULTI_VALUED, NAME_RE, NAME_START,
    NETVAL_RE, NUMBER_RE, OPENERS, OPERATOR_TYPES, PUNCT, SPACE_RE, STRING_RES, SYMBOLS,
    SourceError, TOOLREF_RE, UNITS, WORD_RE, unescape,
)
from policy.ast import Span


@dataclass(slots=True)
class _Condition:
    line: int
    when_pos: int
    start: int = -1
    end: int = -1
    operators: int = 0
    calls: int = 0
    members: int = 0
    depth: int = 0


class Lexer:
    """Scans ``text[lo:hi]``; ``conditions`` maps a ``when`` token's offset to its text."""

    def __init__(self, text: str, lo: int, hi: int, line_starts: list[int]):
        self.text, self.pos, self.hi = text, lo, hi
        self.line = bisect_right(line_starts, lo)
        self.line_start = line_starts[self.line - 1]
        self.last: Token | None = None
        self.prev: Token | None = None
        self.unmatched_close = False
        self.cond: _Condition | None = None
        self.conditions: dict[int, str] = {}
        self.blocks: list[str] = []  # kinds of the open `{` blocks
        self.opener = ""
        self.open_braces: list[Span] = []
        self.setting_key = ""
        self.manifest_line = 0
        self.depth = 0
        self._modes: dict[int, str] = {}

    # ------------------------------------------------------------ helpers
    def _span(self, start: int, end: int) -> Span:
        col = start - self.line_start + 1
        return Span(self.line, col, self.line, col + (end - start))

    def error(self, code: str, message: str, start: int, end: int, help: str) -> SourceError:
        return SourceError(code, message, self._span(start, max(end, start + 1)), help)

    def _token(self, type_: str, value: str, start: int, end: int) -> Token:
        col = start - self.line_start + 1
        tok = Token(type_, value, start, self.line, col, self.line, col + (end - start), end)
        self.pos = end
        return tok

    def _mode(self, accepts: Acceptor) -> str:
        raw = accepts.raw
        key = id(raw)
        mode = self._modes.get(key)
        if mode is None:
            if "NETVAL" in raw:
                mode = "net"
            elif not EXPR_MARKERS.isdisjoint(raw):
                mode = "expr"
            else:
                mode = "word"
            self._modes[key] = mode
        return mode

    def _skip_space(self) -> None:
        m = SPACE_RE.match(self.text, self.pos, self.hi)
        if m:
            chunk_start, end = m.start(), m.end()
            newlines = self.text.count("\n", chunk_start, end)
            if newlines:
                self.line += newlines
                self.line_start = self.text.rfind("\n", chunk_start, end) + 1
            self.pos = end

    # ------------------------------------------------------------ main entry
    def next_token(self, accepts: Acceptor) -> Token | None:
        self._skip_space()
        if self.pos >= self.hi:
            self.finish()
            return None
        tok = self._scan(accepts)
        self._track(tok)
        self.prev, self.last = self.last, tok
        return tok

    def finish(self) -> None:
        """Close a condition still open at the end of input."""
        if self.cond is not None:
            self._close_condition()

    def _scan(self, accepts: Acceptor) -> Token:
        text, pos = self.text, self.pos
        same_line = self.last is not None and self.last.line == self.line
        if "RAWLINE" in accepts and same_line:
            tok = self._raw_line()
            if tok is not None:
                return tok
        if "MWORD" in accepts and self.line == self.manifest_line:
            return self._manifest_word()
        ch = text[pos]
        if ch in STRING_RES:
            return self._string(ch)
        mode = self._mode(accepts)
        if mode == "net" and ch not in ":={}":
            m = NETVAL_RE.match(text, pos, self.hi)
            if m:
                return self._token("NETVAL", m.group(), pos, m.end())
        if mode == "expr":
            return self._expr_token(accepts)
        if ch == "$":
            return self._money()
        if ch in DIGITS or (ch == "-" and text[pos + 1:pos + 2] in DIGITS):
            return self._number(NUMBER_RE.match(text, pos, self.hi))
        if ch in PUNCT:
            return self._token(PUNCT[ch], ch, pos, pos + 1)
        m = WORD_RE.match(text, pos, self.hi)
        if m:
            return self._word(m.group(), m.end(), accepts)
        raise self._unexpected_char()

    def _unexpected_char(self) -> SourceError:
        ch = self.text[self.pos]
        shown = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"
        if ch.isascii():
            help = "this character cannot start a token here; quote the value (\"...\")"
        else:
            help = "FPL source outside strings is ASCII; quote the value (\"...\")"
        return self.error("E104", f"unexpected character {shown}", self.pos, self.pos + 1,
                          help + " or remove the character")

    # ------------------------------------------------------------ scanners
    def _string(self, quote: str) -> Token:
        m = STRING_RES[quote].match(self.text, self.pos, self.hi)
        if m is None:
            eol = self.text.find("\n", self.pos, self.hi)
            raise self.error("E101", "unterminated string", self.pos,
                             self.hi if eol < 0 else eol,
                             f"close the string with {quote} on the same line; "
                             "strings cannot span lines")
        return self._token("STRING", unescape(m.group()[1:-1]), self.pos, m.end())

    def _number(self, m: re.Match) -> Token:
        number, unit = m.group(1), m.group(2)
        if unit is None:
            return self._token("NUMBER", number, m.start(), m.end())
        if unit.lower() not in UNITS:
            raise self.error("E105", f"unknown unit {unit!r} after {number}", m.start(), m.end(),
                             "units are s ms m h d w (time), b kb mb gb tb (size), usd eur gbp; "
                             "exponents such as 1e3 are not supported")
        return self._token("QUANTITY", m.group(), m.start(), m.end())

    def _money(self) -> Token:
        m = MONEY_RE.match(self.text, self.pos, self.hi)
        if m is None:
            raise self.error("E105", "`$` must be followed by an amount", self.pos, self.pos + 1,
                             "write an amount such as $500 or $19.99")
        if m.group(2):
            raise self.error("E105", f"`{m.group()}` is not an amount", self.pos, m.end(),
                             "write digits only after `$`, such as $500 or $19.99")
        return self._token("MONEY", m.group(), self.pos, m.end())

    def _raw_line(self) -> Token | None:
        text, pos, i = self.text, self.pos, self.pos
        quote = ""
        while i < self.hi:
            ch = text[i]
            if quote:
                if ch == "\\":
                    i += 1
                elif ch == quote:
                    quote = ""
                elif ch == "\n":
                    break
            elif ch in "\"'":
                quote = ch
            elif ch in "\n#}":
                break
            i += 1
        value = text[pos:i].rstrip()
        if not value:
            return None
        return self._token("RAWLINE", value, pos, pos + len(value))

    def _manifest_word(self) -> Token:
        text, pos = self.text, self.pos
        if text[pos] in STRING_RES:
            tok = self._string(text[pos])
            return Token.new_borrow_pos("MWORD", tok.value, tok)
        m = WORD_RE.match(text, pos, self.hi) or NUMBER_RE.match(text, pos, self.hi)
        if m is None:
            raise self._unexpected_char()
        return self._token("MWORD", m.group(), pos, m.end())

    def _expr_token(self, accepts: Acceptor) -> Token:
        text, pos = self.text, self.pos
        ch = text[pos]
        if "TOOLREF" in accepts:
            m = TOOLREF_RE.match(text, pos, self.hi)
            if m and "/" in m.group():
                return self._token("TOOLREF", m.group(), pos, m.end())
        if ch in DIGITS:
            return self._number(NUMBER_RE.match(text, pos, self.hi))
        if ch == "$":
            return self._money()
        if ch in NAME_START:
            m = NAME_RE.match(text, pos, self.hi)
            word, end = m.group(), m.end()
            if word == "deny" and text[end:end + 1] == "!" and text[end + 1:end + 2] != "=":
                word, end = "deny!", end + 1
            return self._word(word, end, accepts)
        for symbol, type_ in SYMBOLS:
            if text.startswith(symbol, pos):
                return self._token(type_, symbol, pos, pos + len(symbol))
        if ch in PUNCT:
            return self._token(PUNCT[ch], ch, pos, pos + 1)
        raise self._unexpected_char()

    def _word(self, word: str, end: int, accepts: Acceptor) -> Token:
        start = self.pos
        type_ = self._classify(word, accepts)
        if type_ == "EFFECT" and word == "deny":
            m = BANG_AFTER_DENY_RE.match(self.text, end, self.hi)
            if m:
                type_, word, end = "STRICT_DENY", "deny!", m.end()
        return self._token(type_, word, start, end)

    def _classify(self, word: str, accepts: Acceptor) -> str:
        keyword = KEYWORDS.get(word)
        effect = keyword in ("EFFECT", "STRICT_DENY")
        in_condition = self.cond is not None and self.text[self.pos - 1:self.pos] != "."
        if keyword in ("TRUE", "FALSE") and "KEY" in accepts and self._starts_key(word):
            return "KEY"  # `true` at the start of a settings line names a key
        if keyword is not None and keyword in accepts:
            if effect and in_condition and self.line == self.cond.line:
                return "NAME"  # same line as `when`: not a new rule
            return keyword
        if effect and in_condition and self.line > self.cond.line:
            return keyword  # a new rule cuts an unfinished condition short
        if "NAME" in accepts:
            return "NAME"
        if "KEY" in accepts and ("WORD" not in accepts or self._starts_key(word)):
            return "KEY"
        if "WORD" in accepts:
            return "WORD"
        return keyword or "WORD"

    def _starts_key(self, word: str) -> bool:
        if self.last is None or self.last.line < self.line:
            return True
        kind = self.blocks[-1] if self.blocks else ""
        if (kind, self.setting_key) not in MULTI_VALUED:
            return True
        return word in KNOWN_KEYS.get(kind, ())

    # ------------------------------------------------------------ bookkeeping
    def _track(self, tok: Token) -> None:
        type_ = tok.type
        if self.cond is not None:
            if type_ in EXPR_TYPES:
                self._count(tok)
            else:
                self._close_condition()
        elif type_ in ("_LSQB", "_LPAR"):
            self._nest(tok, +1)
        elif type_ in ("_RSQB", "_RPAR"):
            self.depth -= 1
        if type_ == "WHEN":
            self.cond = _Condition(tok.line, tok.start_pos)
        elif type_ == "KEY":
            self.setting_key = tok.value
        elif type_ == "MANIFEST":
            self.manifest_line = tok.line
        elif type_ in OPENERS:
            self.opener = tok.value
        elif type_ == "_LBRACE":
            self.blocks.append(self.opener)
            self.open_braces.append(Span(tok.line, tok.column, tok.end_line, tok.end_column))
            self.opener = ""
        elif type_ == "RBRACE":
            if self.blocks:
                self.blocks.pop()
                self.open_braces.pop()
            else:
                self.unmatched_close = True

    def _nest(self, tok: Token, step: int) -> None:
        self.depth += step
        if self.depth > MAX_NESTING:
            raise self.error("E114", f"brackets nest deeper than {MAX_NESTING} levels",
                             tok.start_pos, tok.end_pos,
                             "split the expression or list; at most "
                             f"{MAX_NESTING} nested ( or [ are allowed")

    def _count(self, tok: Token) -> None:
        cond, type_ = self.cond, tok.type
        if cond.start < 0:
            cond.start = tok.start_pos
        cond.end = tok.end_pos
        if cond.end - cond.start > MAX_CONDITION_CHARS:
            raise self.error("E111", f"condition is longer than {MAX_CONDITION_CHARS} characters",
                             tok.start_pos, tok.end_pos,
                             "split the rule into several rules or move logic into "
                             "simpler checks")
        if type_ in OPERATOR_TYPES:
            cond.operators += 1
            if cond.operators > MAX_CONDITION_OPERATORS:
                raise self.error("E113", f"condition has more than {MAX_CONDITION_OPERATORS} "
                                 "operators", tok.start_pos, tok.end_pos,
                                 "split the rule into several simpler rules")
        elif type_ == "DOT":
            cond.members += 1
            if cond.members > MAX_CONDITION_MEMBERS:
                raise self.error("E113", f"condition has more than {MAX_CONDITION_MEMBERS} "
                                 "member accesses", tok.start_pos, tok.end_pos,
                                 "split the rule into several simpler rules")
        elif type_ in ("_LPAR", "_LSQB"):
            if type_ == "_LPAR" and self.last is not None and \
                    self.last.type in ("NAME", "_RPAR", "_RSQB"):
                cond.calls += 1
                if cond.calls > MAX_CONDITION_CALLS:
                    raise self.error("E112", f"condition calls more than {MAX_CONDITION_CALLS}"
                                     " functions", tok.start_pos, tok.end_pos,
                                     "split the rule into several simpler rules")
            cond.depth += 1
            self._nest(tok, +1)
        elif type_ in ("_RPAR", "_RSQB"):
            cond.depth -= 1
            self.depth -= 1

    def _close_condition(self) -> None:
        cond = self.cond
        self.cond = None
        self.depth -= max(cond.depth, 0)
        if cond.start >= 0:
            self.conditions[cond.when_pos] = self.text[cond.start:cond.end]
