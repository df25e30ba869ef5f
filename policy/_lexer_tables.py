"""FPL lexical tables: keywords, units, limits and token shapes (one place to extend)."""

from __future__ import annotations

import re

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
OPENERS = frozenset({"AGENT", "SYSTEM", "TRUST", "BLOCK_KW", "RULES", "BUDGET",
                     "PHASE", "DELEGATE"})

# Units glued to numbers: unit -> (kind, factor to the base quantity).
UNITS = {
    "ms": ("duration", 0.001), "s": ("duration", 1), "m": ("duration", 60),
    "h": ("duration", 3600), "d": ("duration", 86400), "w": ("duration", 604800),
    "b": ("size", 1), "kb": ("size", 1024), "mb": ("size", 1024 ** 2),
    "gb": ("size", 1024 ** 3), "tb": ("size", 1024 ** 4),
    "usd": ("money", 1), "eur": ("money", 1), "gbp": ("money", 1),
}

OPERATOR_TYPES = frozenset({"OR", "AND", "NOT", "BANG", "CMP", "IN", "MATCHES",
                            "CONTAINS", "STARTSWITH", "ENDSWITH", "PLUS", "MINUS",
                            "STAR", "SLASH", "PERCENT", "POW", "QMARK", "COALESCE"})
EXPR_TYPES = OPERATOR_TYPES | {"NAME", "NUMBER", "QUANTITY", "MONEY", "STRING", "TRUE",
                               "FALSE", "NIL", "TOOLREF", "DOT", "_LPAR", "_RPAR",
                               "_LSQB", "_RSQB", "_COMMA", "_COLON", "_EQUAL"}
# Terminals whose presence in the accept set means "we are inside an expression".
EXPR_MARKERS = frozenset({"NAME", "DOT", "CMP", "AND", "OR", "PLUS", "STAR", "QMARK",
                          "COALESCE", "MATCHES"})

SYMBOLS = (
    ("**", "POW"), ("==", "CMP"), ("!=", "CMP"), ("<=", "CMP"), (">=", "CMP"),
    ("&&", "AND"), ("||", "OR"), ("??", "COALESCE"),
    ("<", "CMP"), (">", "CMP"), ("!", "BANG"), ("?", "QMARK"), (".", "DOT"),
    ("+", "PLUS"), ("-", "MINUS"), ("*", "STAR"), ("/", "SLASH"), ("%", "PERCENT"),
)
PUNCT = {"{": "_LBRACE", "}": "RBRACE", "[": "_LSQB", "]": "_RSQB", "(": "_LPAR",
         ")": "_RPAR", ",": "_COMMA", ":": "_COLON", "=": "_EQUAL"}

DIGITS = frozenset("0123456789")
NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
SPACE_RE = re.compile(r"(?:[ \t\r\n]+|#[^\n]*)+")
WORD_RE = re.compile(r"[A-Za-z_/*+&|][A-Za-z0-9_/*+&|.\-!@%^]*")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NUMBER_RE = re.compile(r"(-?[0-9]+(?:\.[0-9]+)?)([A-Za-z_][A-Za-z0-9_]*)?")
MONEY_RE = re.compile(r"\$([0-9]+(?:\.[0-9]+)?)([A-Za-z_][A-Za-z0-9_]*)?")
# A network clause value: printable ASCII up to a space, quote, brace, `#` or `=`.
_NETVAL_CHARS = "".join(re.escape(chr(c)) for c in range(0x21, 0x7F) if chr(c) not in "\"'{}#=")
NETVAL_RE = re.compile(f"[{_NETVAL_CHARS.replace(':', '')}][{_NETVAL_CHARS}]*")
TOOLREF_RE = re.compile(
    r"[A-Za-z_*][A-Za-z0-9_*\-]*(?:/[A-Za-z0-9_*\-]+)+(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?=[ \t]*[,)])")
STRING_RES = {'"': re.compile(r'"(?:[^"\\\n]|\\.)*"'), "'": re.compile(r"'(?:[^'\\\n]|\\.)*'")}
BANG_AFTER_DENY_RE = re.compile(r"[ \t]+!(?=\s|$)")
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'",
           "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)")


class SourceError(Exception):
    """A syntax problem that stops the current item: ``code``, ``message``, ``help`` at ``span``."""

    after_valid_syntax = False  # raised while building a node, not while reading tokens

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
        return ESCAPES.get(esc, "\\" + esc)

    return ESCAPE_RE.sub(one, body)
