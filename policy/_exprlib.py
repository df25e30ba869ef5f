"""Runtime of compiled conditions: expr-lang value semantics and built-in functions.

Generated condition code calls these helpers. They follow expr-lang (the
reference's expression engine): ``==`` never fails and mismatched types are
unequal; ordering on nil or mismatched types raises; ``matches`` and the string
operators are false on nil; member and index access on something missing is nil.
Any ``ExprError`` (or other exception) makes the evaluator deny the call with
``EXPR_RUNTIME_ERROR`` and the rule's id.
"""

from __future__ import annotations


_NUMBER = (int, float)


class ExprError(Exception):
    """A condition cannot be evaluated (type error, division by zero...)."""


def type_name(value: object) -> str:
    return "nil" if value is None else {bool: "bool", int: "int", float: "float", str: "string",
                                        list: "array", tuple: "array", dict: "map"}.get(type(value), type(value).__name__)


def is_number(value: object) -> bool:
    kind = type(value)
    return kind is int or kind is float


# ---------------------------------------------------------------- operators


def eq(a: object, b: object) -> bool:
    if a is b:
        return True
    ka, kb = type(a), type(b)
    if ka is kb:
        return a == b
    if (ka is int or ka is float) and (kb is int or kb is float):
        return a == b
    if ka in (list, tuple) and kb in (list, tuple):
        return len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    return False


def _ordered(a: object, b: object, op: str) -> None:
    if is_number(a) and is_number(b):  # only NaN makes numbers unordered
        raise ExprError(f"invalid operation: NaN in {a!r} {op} {b!r}")
    raise ExprError(f"invalid operation: {type_name(a)} {op} {type_name(b)}")


# Ordering: numbers with numbers, strings with strings; anything else raises. Every
# comparison with NaN is False, which would quietly skip a deny rule, so a False
# result involving NaN raises too (checked only on the False path: it is rare).

def lt(a, b):
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is str and kb is str):
        if a < b:
            return True
        if a == a and b == b:
            return False
    _ordered(a, b, "<")


def le(a, b):
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is str and kb is str):
        if a <= b:
            return True
        if a == a and b == b:
            return False
    _ordered(a, b, "<=")


def gt(a, b):
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is str and kb is str):
        if a > b:
            return True
        if a == a and b == b:
            return False
    _ordered(a, b, ">")


def ge(a, b):
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is str and kb is str):
        if a >= b:
            return True
        if a == a and b == b:
            return False
    _ordered(a, b, ">=")


def truth(value: object) -> bool:
    """Operand of and/or/not/?: must be a bool."""
    if value is True or value is False:
        return value  # type: ignore[return-value]
    raise ExprError(f"expected bool, got {type_name(value)}")


def negate(value: object):
    if is_number(value):
        return -value  # type: ignore[operator]
    raise ExprError(f"invalid operation: -{type_name(value)}")


def member(obj: object, name: str):
    if type(obj) is dict:
        return obj.get(name)
    return None


def index(obj: object, key: object):
    kind = type(obj)
    if kind is dict:
        return obj.get(key) if type(key) is str or is_number(key) else None  # type: ignore[union-attr]
    if kind in (list, tuple, str) and type(key) is int:
        size = len(obj)  # type: ignore[arg-type]
        pos = key + size if key < 0 else key
        return obj[pos] if 0 <= pos < size else None  # type: ignore[index]
    return None


def slice_of(obj: object, lo: object, hi: object):
    if type(obj) not in (list, tuple, str):
        return None
    for bound in (lo, hi):
        if bound is not None and type(bound) is not int:
            raise ExprError(f"slice bound must be int, got {type_name(bound)}")
    return obj[lo:hi]  # type: ignore[index,misc]


def contained_in(item: object, collection: object) -> bool:
    kind = type(collection)
    if collection is None:
        return False
    if kind is dict:
        try:
            return item in collection  # type: ignore[operator]
        except TypeError:
            return False
    if kind in (list, tuple):
        return any(eq(item, element) for element in collection)  # type: ignore[union-attr]
    raise ExprError(f"operator in not defined on {type_name(collection)}")


def in_strings(item: object, strings: frozenset) -> bool:
    return type(item) is str and item in strings


def _string_pair(a: object, b: object, op: str) -> bool:
    if a is None or b is None:
        return False
    if type(a) is str and type(b) is str:
        return True
    raise ExprError(f"invalid operation: {type_name(a)} {op} {type_name(b)}")


def str_contains(a, b) -> bool:
    return _string_pair(a, b, "contains") and b in a


def starts_with(a, b) -> bool:
    return _string_pair(a, b, "startsWith") and a.startswith(b)


def ends_with(a, b) -> bool:
    return _string_pair(a, b, "endsWith") and a.endswith(b)


def matches(text: object, regex) -> bool:
    """``regex`` is a precompiled matcher (see _conditions.compile_regex)."""
    if text is None:
        return False
    if type(text) is not str:
        raise ExprError(f"invalid operation: {type_name(text)} matches string")
    return regex(text)


def add(a, b):
    ka, kb = type(a), type(b)
    if (ka is int or ka is float) and (kb is int or kb is float):
        return a + b
    if ka is str and kb is str:
        return a + b
    if ka in (list, tuple) and kb in (list, tuple):
        return list(a) + list(b)
    raise ExprError(f"invalid operation: {type_name(a)} + {type_name(b)}")


def _numbers(a, b, op: str) -> None:
    if not (is_number(a) and is_number(b)):
        raise ExprError(f"invalid operation: {type_name(a)} {op} {type_name(b)}")


def sub(a, b):
    _numbers(a, b, "-")
    return a - b


def mul(a, b):
    _numbers(a, b, "*")
    return a * b


def div(a, b):
    _numbers(a, b, "/")
    if b == 0:
        raise ExprError("division by zero")
    return a / b


def mod(a, b):
    _numbers(a, b, "%")
    if type(a) is not int or type(b) is not int:
        raise ExprError(f"invalid operation: {type_name(a)} % {type_name(b)}")
    if b == 0:
        raise ExprError("integer divide by zero")
    return a % b


def power(a, b):
    _numbers(a, b, "**")
    try:
        return float(a) ** float(b)
    except (OverflowError, ZeroDivisionError, ValueError) as exc:
        raise ExprError(f"invalid power: {exc}") from None


def expect_bool(value: object) -> bool:
    """The final value of a condition."""
    if value is True or value is False:
        return value  # type: ignore[return-value]
    raise ExprError(f"condition returned {type_name(value)}, expected bool")
