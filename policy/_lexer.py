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
from dataclasses import dataclass

from lark import Token

from policy.ast import Span

MAX_CONDITION_CHARS = 1024
MAX_CONDITION_CALLS = 32
MAX_CONDITION_OPERATORS = 96
MAX_CONDITION_MEMBERS = 128
MAX_NESTING = 16

KEYWORDS = {
    "import": "IMPORT", "as": "AS", "agent": "AGENT", "system": "SYSTEM",
    "manifest": "MANIFEST", "trust": "TRUST",
    "default": "DEFAULT", "model": "META", "framework": "META", "version": "META",
    "var": "VAR", "rules": "RULES", "budget": "BUDGET", "phase": "PHASE",
    "delegate": "DELEGATE", "rate_limit": "RATE_LIMIT", "per": "PER",
    "redact": "REDACT", "args": "ARGS",
    "when": "WHEN", "if": "WHEN", "notify": "TEXT_KW", "reason": "TEXT_KW",
    "host": "NETKW", "port": "NETKW", "method": "NETKW", "path": "NETKW",
    "query": "KVKW", "header": "KVKW", "headers": "KVKW",
    "and": "AND", "or": "OR", "not": "NOT", "in": "IN", "matches": "MATCHES",
    "contains": "CONTAINS", "startsWith": "STARTSWITH", "endsWith": "ENDSWITH",
    "true": "TRUE", "false": "FALSE", "nil": "NIL", "deny!": "STRICT_DENY",
}
BLOCK_KEYWORDS = (
    "runtime", "provider", "identity", "egress", "model_policy", "session", "spawn",
    "completion_gate", "enforcement", "alert", "ambient", "selector", "credential",
)
EFFECT_WORDS = ("permit", "allow", "approve", "deny", "block", "reject", "defer")
KEYWORDS.update({w: "BLOCK_KW" for w in BLOCK_KEYWORDS})
KEYWORDS.update({w: "EFFECT" for w in EFFECT_WORDS})

# Settings keys that take several values, and the keys each such block knows.
MULTI_VALUED = {("credential", "scope"), ("completion_gate", "require")}
KNOWN_KEYS = {
    "credential": frozenset({"scope", "max_scope", "backend", "path", "ttl"}),
    "completion_gate": frozenset({"require"}),
}
# Keywords whose `{` opens a block the lexer must know about.
_OPENERS = frozenset({"AGENT", "SYSTEM", "TRUST", "BLOCK_KW", "RULES", "BUDGET",
                      "PHASE", "DELEGATE"})

# Units glued to numbers: unit -> (kind, factor to the base quantity).
UNITS = {
    "ms": ("duration", 0.001), "s": ("duration", 1), "m": ("duration", 60),
    "h": ("duration", 3600), "d": ("duration", 86400), "w": ("duration", 604800),
    "b": ("size", 1), "kb": ("size", 1024), "mb": ("size", 1024 ** 2),
    "gb": ("size", 1024 ** 3), "tb": ("size", 1024 ** 4),
    "usd": ("money", 1), "eur": ("money", 1), "gbp": ("money", 1),
}

_OPERATOR_TYPES = frozenset({"OR", "AND", "NOT", "BANG", "CMP", "IN", "MATCHES",
                             "CONTAINS", "STARTSWITH", "ENDSWITH", "PLUS", "MINUS",
                             "STAR", "SLASH", "PERCENT", "POW", "QMARK", "COALESCE"})
EXPR_TYPES = _OPERATOR_TYPES | {"NAME", "NUMBER", "QUANTITY", "MONEY", "STRING", "TRUE",
                                "FALSE", "NIL", "TOOLREF", "DOT", "_LPAR", "_RPAR",
                                "_LSQB", "_RSQB", "_COMMA", "_COLON", "_EQUAL"}
# Terminals whose presence in the accept set means "we are inside an expression".
_EXPR_MARKERS = frozenset({"NAME", "DOT", "CMP", "AND", "OR", "PLUS", "STAR", "QMARK",
                           "COALESCE", "MATCHES"})

_SYMBOLS = (
    ("**", "POW"), ("==", "CMP"), ("!=", "CMP"), ("<=", "CMP"), (">=", "CMP"),
    ("&&", "AND"), ("||", "OR"), ("??", "COALESCE"),
    ("<", "CMP"), (">", "CMP"), ("!", "BANG"), ("?", "QMARK"), (".", "DOT"),
    ("+", "PLUS"), ("-", "MINUS"), ("*", "STAR"), ("/", "SLASH"), ("%", "PERCENT"),
)
PUNCT = {"{": "_LBRACE", "}": "RBRACE", "[": "_LSQB", "]": "_RSQB", "(": "_LPAR",
         ")": "_RPAR", ",": "_COMMA", ":": "_COLON", "=": "_EQUAL"}

_SPACE = re.compile(r"(?:[ \t\r\n]+|#[^\n]*)+")
_WORD = re.compile(r"[A-Za-z_/*+&|][A-Za-z0-9_/*+&|.\-!@%^]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)([A-Za-z_][A-Za-z0-9_]*)?")
_MONEY = re.compile(r"\$(\d+(?:\.\d+)?)([A-Za-z_][A-Za-z0-9_]*)?")
_NETVAL = re.compile(r"[^\s\"'{}#=:][^\s\"'{}#=]*")
_TOOLREF = re.compile(
    r"[A-Za-z_*][A-Za-z0-9_*\-]*(?:/[A-Za-z0-9_*\-]+)+(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?=[ \t]*[,)])")
_STRING = {'"': re.compile(r'"(?:[^"\\\n]|\\.)*"'), "'": re.compile(r"'(?:[^'\\\n]|\\.)*'")}
_BANG_AFTER_DENY = re.compile(r"[ \t]+!(?=\s|$)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'",
            "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)")


class SourceError(Exception):
    """A syntax problem that stops the current item: ``code``, ``message``, ``help`` at ``span``."""

    def __init__(self, code: str, message: str, span: Span, help: str):
        super().__init__(message)
        self.code, self.message, self.span, self.help = code, message, span, help


def unescape(body: str) -> str:
    """Decode backslash escapes; an unknown escape keeps its backslash (``"\\d"``)."""
    if "\\" not in body:
        return body

    def one(m: re.Match) -> str:
        esc = m.group(1)
        if len(esc) > 1:
            return chr(int(esc[1:], 16))
        return _ESCAPES.get(esc, "\\" + esc)

    return _ESCAPE.sub(one, body)


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

    def __init__(self, text: str, lo: int, hi: int):
        self.text, self.pos, self.hi = text, lo, hi
        self.line = text.count("\n", 0, lo) + 1
        self.line_start = text.rfind("\n", 0, lo) + 1
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

    def _mode(self, accepts: dict) -> str:
        key = id(accepts)
        mode = self._modes.get(key)
        if mode is None:
            if "NETVAL" in accepts:
                mode = "net"
            elif not _EXPR_MARKERS.isdisjoint(accepts):
                mode = "expr"
            else:
                mode = "word"
            self._modes[key] = mode
        return mode

    def _skip_space(self) -> None:
        m = _SPACE.match(self.text, self.pos, self.hi)
        if m:
            chunk_start, end = m.start(), m.end()
            newlines = self.text.count("\n", chunk_start, end)
            if newlines:
                self.line += newlines
                self.line_start = self.text.rfind("\n", chunk_start, end) + 1
            self.pos = end

    # ------------------------------------------------------------ main entry
    def next_token(self, accepts: dict) -> Token | None:
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

    def _scan(self, accepts: dict) -> Token:
        text, pos = self.text, self.pos
        same_line = self.last is not None and self.last.line == self.line
        if "RAWLINE" in accepts and same_line:
            tok = self._raw_line()
            if tok is not None:
                return tok
        if "MWORD" in accepts and self.line == self.manifest_line:
            return self._manifest_word()
        ch = text[pos]
        if ch in _STRING:
            return self._string(ch)
        mode = self._mode(accepts)
        if mode == "net" and ch not in PUNCT:
            m = _NETVAL.match(text, pos, self.hi)
            if m:
                return self._token("NETVAL", m.group(), pos, m.end())
        if mode == "expr":
            return self._expr_token(accepts)
        if ch == "$":
            return self._money()
        if ch.isdigit() or (ch == "-" and text[pos + 1:pos + 2].isdigit()):
            return self._number(_NUMBER.match(text, pos, self.hi))
        if ch in PUNCT:
            return self._token(PUNCT[ch], ch, pos, pos + 1)
        m = _WORD.match(text, pos, self.hi)
        if m:
            return self._word(m.group(), m.end(), accepts)
        raise self._unexpected_char()

    def _unexpected_char(self) -> SourceError:
        ch = self.text[self.pos]
        shown = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"
        return self.error("E104", f"unexpected character {shown}", self.pos, self.pos + 1,
                          "FPL source outside strings is ASCII; quote the value "
                          "(\"...\") or remove the character")

    # ------------------------------------------------------------ scanners
    def _string(self, quote: str) -> Token:
        m = _STRING[quote].match(self.text, self.pos, self.hi)
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
        m = _MONEY.match(self.text, self.pos, self.hi)
        if m is None or m.group(2):
            end = m.end() if m else self.pos + 1
            raise self.error("E105", "`$` must be followed by an amount", self.pos, end,
                             "write an amount such as $500 or $19.99")
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
        if text[pos] in _STRING:
            tok = self._string(text[pos])
            return Token.new_borrow_pos("MWORD", tok.value, tok)
        m = _WORD.match(text, pos, self.hi) or _NUMBER.match(text, pos, self.hi)
        if m is None:
            raise self._unexpected_char()
        return self._token("MWORD", m.group(), pos, m.end())

    def _expr_token(self, accepts: dict) -> Token:
        text, pos = self.text, self.pos
        ch = text[pos]
        if "TOOLREF" in accepts:
            m = _TOOLREF.match(text, pos, self.hi)
            if m and "/" in m.group():
                return self._token("TOOLREF", m.group(), pos, m.end())
        if ch.isdigit():
            return self._number(_NUMBER.match(text, pos, self.hi))
        if ch == "$":
            return self._money()
        if ch.isalpha() or ch == "_":
            m = _NAME.match(text, pos, self.hi)
            word, end = m.group(), m.end()
            if word == "deny" and text[end:end + 1] == "!" and text[end + 1:end + 2] != "=":
                word, end = "deny!", end + 1
            return self._word(word, end, accepts)
        for symbol, type_ in _SYMBOLS:
            if text.startswith(symbol, pos):
                return self._token(type_, symbol, pos, pos + len(symbol))
        if ch in PUNCT:
            return self._token(PUNCT[ch], ch, pos, pos + 1)
        raise self._unexpected_char()

    def _word(self, word: str, end: int, accepts: dict) -> Token:
        start = self.pos
        type_ = self._classify(word, accepts)
        if type_ == "EFFECT" and word == "deny":
            m = _BANG_AFTER_DENY.match(self.text, end, self.hi)
            if m:
                type_, word, end = "STRICT_DENY", "deny!", m.end()
        return self._token(type_, word, start, end)

    def _classify(self, word: str, accepts: dict) -> str:
        keyword = KEYWORDS.get(word)
        effect = keyword in ("EFFECT", "STRICT_DENY")
        in_condition = self.cond is not None and self.text[self.pos - 1:self.pos] != "."
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
        elif type_ in _OPENERS:
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
        if type_ in _OPERATOR_TYPES:
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
