"""FPL syntax tree: frozen, slotted dataclasses, each carrying a source span.

Spans are excluded from equality so that ``parse(fmt(x)) == parse(x)`` compares
meaning, not layout. Values are already normalised by the parser: effect aliases
become ``permit``/``deny``/``defer``, units become base quantities (seconds,
bytes, major currency units) with the written unit kept for printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True, slots=True)
class Span:
    """1-based line and column of the first character, and of the end (exclusive)."""

    line: int = 0
    col: int = 0
    end_line: int = 0
    end_col: int = 0


NO_SPAN = Span()


def _span() -> Span:
    return field(default=NO_SPAN, compare=False, repr=False)


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Literal:
    """A string, number, bool or nil. ``unit`` keeps how a quantity was written
    (``"$"`` for ``$500``, ``"m"`` for ``15m``, ``"mb"``...); ``value`` is then the
    base quantity (500, 900.0 seconds, 10485760 bytes)."""

    value: object
    unit: str = ""
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Name:
    """A root identifier: ``args``, ``amount``, ``cmd``, ``vars``, ``session``..."""

    name: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Member:
    """``obj.name``."""

    obj: "Expr"
    name: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Index:
    """``obj[index]``."""

    obj: "Expr"
    index: "Expr"
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Slice:
    """``obj[lo:hi]``; either bound may be None."""

    obj: "Expr"
    lo: "Expr | None"
    hi: "Expr | None"
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Call:
    """``func(args..., key=value...)``; ``func`` is dotted (``session.sum``)."""

    func: str
    args: tuple["Expr", ...] = ()
    kwargs: tuple[tuple[str, "Expr"], ...] = ()
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Unary:
    """``op`` is ``not`` (also written ``!``) or ``-``."""

    op: str
    operand: "Expr"
    span: Span = _span()


# Canonical binary operators. Spellings ``&&``/``||`` normalise to and/or.
BINARY_OPS = (
    "or", "and", "??",
    "==", "!=", "<", "<=", ">", ">=",
    "in", "not in", "matches", "contains", "startsWith", "endsWith",
    "+", "-", "*", "/", "%", "**",
)


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: "Expr"
    right: "Expr"
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Conditional:
    """``cond ? then : otherwise``."""

    cond: "Expr"
    then: "Expr"
    otherwise: "Expr"
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple["Expr", ...] = ()
    span: Span = _span()


Expr = Union[Literal, Name, Member, Index, Slice, Call, Unary, Binary, Conditional, ListExpr]


# ---------------------------------------------------------------- rules

EFFECTS = ("permit", "deny", "defer")
EFFECT_ALIASES = {
    "permit": "permit", "allow": "permit", "approve": "permit",
    "deny": "deny", "block": "deny", "reject": "deny",
    "defer": "defer",
}
NET_CLAUSES = ("host", "port", "method", "path", "query", "header")


@dataclass(frozen=True, slots=True)
class NetClause:
    """A network clause: ``host: *.github.com``, ``query: api-version=*``.

    ``key`` is set for ``query`` and ``header`` (``key=value``)."""

    kind: str
    value: str
    key: str | None = None
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Rule:
    effect: str  # one of EFFECTS
    tool: str  # glob pattern
    strict: bool = False  # deny!
    condition: Expr | None = None
    condition_text: str = field(default="", compare=False)  # as written, for messages
    notify: str | None = None
    reason: str | None = None
    net: tuple[NetClause, ...] = ()
    span: Span = _span()


# ---------------------------------------------------------------- agent body


@dataclass(frozen=True, slots=True)
class Setting:
    """``key value`` inside a block; value is a scalar, a Literal with a unit,
    or a tuple of scalars (``scope a b c``)."""

    key: str
    value: object
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Default:
    effect: str  # permit | deny | defer | halt | shadow (as the reference runtime)
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Meta:
    """``model``, ``framework`` or ``version`` line."""

    key: str
    value: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Var:
    name: str
    value: object  # string, number, or Literal with unit ($500)
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class RulesBlock:
    rules: tuple[Rule, ...] = ()
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Budget:
    scope: str
    max: float | None = None  # session USD cap
    daily: float | None = None
    max_calls: int | None = None
    warn_at: float | None = None
    on_exceed: str = "deny"
    settings: tuple[Setting, ...] = ()  # as written, in order (for fmt and unknown keys)
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    rules: tuple[Rule, ...] = ()
    duration: float | None = None  # seconds
    next: str | None = None
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Delegate:
    target: str
    scopes: tuple[str, ...] = ()  # "glob[:constraint]"
    ttl: float | None = None  # seconds
    ceiling: str | None = None  # inherited | approval
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Block:
    """A block with ``key value`` settings: ambient, selector, credential, and the
    config-style blocks (runtime, provider, identity, trust, egress, session...).

    ``kind`` is the keyword, ``name`` the optional id after it."""

    kind: str
    name: str | None = None
    settings: tuple[Setting, ...] = ()
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class RateLimit:
    pattern: str
    count: int
    per: str  # second | minute | hour | day
    span: Span = _span()


AgentItem = Union[Default, Meta, Var, RulesBlock, Rule, Budget, Phase, Delegate, Block, RateLimit]


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    items: tuple[AgentItem, ...] = ()
    span: Span = _span()

    def of(self, kind: type) -> tuple:
        return tuple(i for i in self.items if isinstance(i, kind))

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Agent rules in source order: rules blocks and bare rules."""
        out: list[Rule] = []
        for item in self.items:
            if isinstance(item, RulesBlock):
                out.extend(item.rules)
            elif isinstance(item, Rule):
                out.append(item)
        return tuple(out)

    @property
    def default(self) -> str | None:
        found = self.of(Default)
        return found[-1].effect if found else None


# ---------------------------------------------------------------- top level


@dataclass(frozen=True, slots=True)
class System:
    name: str
    settings: tuple[Setting, ...] = ()
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Manifest:
    """``manifest orchestrator ID undeclared deny|defer`` or
    ``manifest grant ORCH to TARGET max N [approval]``."""

    kind: str  # orchestrator | grant
    words: tuple[str, ...] = ()
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Import:
    ref: str
    alias: str | None = None
    span: Span = _span()


TopItem = Union[Agent, System, Manifest, Import, Block, Rule]


@dataclass(frozen=True, slots=True)
class Document:
    items: tuple[TopItem, ...] = ()
    span: Span = _span()

    def of(self, kind: type) -> tuple:
        return tuple(i for i in self.items if isinstance(i, kind))

    @property
    def agents(self) -> tuple[Agent, ...]:
        return self.of(Agent)

    @property
    def flat_rules(self) -> tuple[Rule, ...]:
        return self.of(Rule)
