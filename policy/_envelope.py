"""The static envelope of a tool: every value of one argument some call could ever be allowed with.

The sandbox closes everything outside the envelope in the kernel (Landlock), so the envelope
must over-approximate: if ``decide`` can permit (or defer) a call, its argument is inside.

- Only the first layer bounds anything: a later layer counts only when one of its rules
  decides, and the analysis ignores deny rules (ignoring a deny only widens), so a later
  layer can never be what permits a call.
- Every PERMIT or DEFER rule of that layer whose tool pattern matches adds what its
  condition allows; a rule without a condition, or a permit/defer default, allows anything.
- A condition bounds the argument when it is a literal constraint on it (``startsWith``,
  ``==``, ``in [...]``), an ``and`` with at least one bounded side, or an ``or`` of bounded
  sides. Anything else (negation, functions, vars, regexes, ``?:``) is unbounded.

Why the literal constraints suffice: a permitted call passed a rule's condition on its
canonical arguments and, when canonicalisation changed them, again on the arguments as
written (evaluator, step 7), so the value the sandbox acts on satisfies the literal
condition. ``path`` (the root name) is the argument with surrounding whitespace removed:
the real value then only has whitespace appended, which keeps its prefixes and directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy import ast
from policy.decision import Effect

ARGUMENT_ROOTS = {"path": "path"}  # root names that read one argument (policy/_conditions.ROOTS)
_ALLOWING = (Effect.PERMIT, Effect.DEFER)


@dataclass(frozen=True)
class Envelope:
    """``anything``, or the values starting with one of ``prefixes`` or equal to one of ``exact``."""

    anything: bool
    prefixes: frozenset = frozenset()
    exact: frozenset = frozenset()

    @property
    def nothing(self) -> bool:
        return not self.anything and not self.prefixes and not self.exact

    def contains(self, value: object) -> bool:
        if self.anything:
            return True
        if isinstance(value, str):  # ``path`` compares the argument without surrounding whitespace
            forms = {value, value.strip()}
            return (any(v.startswith(p) for v in forms for p in self.prefixes)
                    or any(_same(v, item) for v in forms for item in self.exact))
        return any(_same(value, item) for item in self.exact)

    def union(self, other: "Envelope") -> "Envelope":
        if self.anything or other.anything:
            return ANYTHING
        return Envelope(False, self.prefixes | other.prefixes, self.exact | other.exact)

    def describe(self) -> str:
        if self.anything:
            return "anything"
        if self.nothing:
            return "nothing"
        items = [f"{p}*" for p in sorted(self.prefixes)] + [repr(v) for v in sorted(self.exact, key=_order)]
        return ", ".join(items)


ANYTHING = Envelope(True)
NOTHING = Envelope(False)


def _order(value: object) -> tuple:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (not number, value if number else 0, repr(value))


def _same(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def envelope(layers, tool: str, key: str = "path") -> Envelope:
    """What argument ``key`` of a ``tool`` call can be when ``decide`` permits or defers it."""
    first = layers[0]
    found = NOTHING
    for rule in first.candidates(tool):
        if rule.strict or rule.effect not in _ALLOWING:
            continue
        if rule.condition is None:
            return ANYTHING
        bound = bound_of(getattr(rule, "expr", None), key)
        if bound is None:
            return ANYTHING
        found = found.union(bound)
    if first.default in _ALLOWING:
        return ANYTHING
    return found


def bound_of(expr, key: str) -> Envelope | None:
    """The values of argument ``key`` for which ``expr`` can be true, or None when unbounded."""
    if not isinstance(expr, ast.Binary):
        return None
    if expr.op == "and":
        left = bound_of(expr.left, key)
        return left if left is not None else bound_of(expr.right, key)
    if expr.op == "or":
        left, right = bound_of(expr.left, key), bound_of(expr.right, key)
        return None if left is None or right is None else left.union(right)
    if expr.op == "startsWith" and _reads(expr.left, key):
        text = _literal(expr.right, str)
        return None if text is None else Envelope(False, prefixes=frozenset((text,)))
    if expr.op == "==":
        for subject, other in ((expr.left, expr.right), (expr.right, expr.left)):
            if _reads(subject, key):
                value = _literal(other, object)
                return None if value is _UNKNOWN else Envelope(False, exact=frozenset((value,)))
        return None
    if expr.op == "in" and _reads(expr.left, key) and isinstance(expr.right, ast.ListExpr):
        values = [_literal(item, object) for item in expr.right.items]
        if any(v is _UNKNOWN for v in values):
            return None
        return Envelope(False, exact=frozenset(values))
    return None


_UNKNOWN = object()


def _literal(node, kind):
    """The value of a plain literal (str for ``kind`` str), else None / _UNKNOWN."""
    missing = None if kind is str else _UNKNOWN
    if not isinstance(node, ast.Literal) or node.unit:
        return missing
    value = node.value
    if kind is str:
        return value if isinstance(value, str) else None
    if isinstance(value, float) and value.is_integer():
        return int(value)  # ``==`` treats 443.0 and 443 alike
    return value if isinstance(value, (str, int, float, bool)) or value is None else _UNKNOWN


def _reads(node, key: str) -> bool:
    """True when ``node`` is ``args.KEY``, ``args["KEY"]`` or a root name bound to KEY."""
    if isinstance(node, ast.Name):
        return ARGUMENT_ROOTS.get(node.name) == key
    if isinstance(node, ast.Member):
        return isinstance(node.obj, ast.Name) and node.obj.name == "args" and node.name == key
    if isinstance(node, ast.Index):
        return (isinstance(node.obj, ast.Name) and node.obj.name == "args"
                and isinstance(node.index, ast.Literal) and node.index.value == key)
    return False
