"""Runtime of compiled conditions: expr-lang value semantics and built-in functions.

Generated condition code calls these helpers. They follow expr-lang (the
reference's expression engine): ``==`` never fails and mismatched types are
unequal; ordering on nil or mismatched types raises; ``matches`` and the string
operators are false on nil; member and index access on something missing is nil.
Any ``ExprError`` (or other exception) makes the evaluator deny the call with
``EXPR_RUNTIME_ERROR`` and the rule's id.
"""

from __future__ import annotations

import datetime

from policy.glob import glob_match
from policy.session import EFFECT, NUMBERS, TOOL, SessionState

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
    raise ExprError(f"invalid operation: {type_name(a)} {op} {type_name(b)}")


def lt(a, b):
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is str and kb is str):
        return a < b
    _ordered(a, b, "<")


def le(a, b):
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is str and kb is str):
        return a <= b
    _ordered(a, b, "<=")


def gt(a, b):
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is str and kb is str):
        return a > b
    _ordered(a, b, ">")


def ge(a, b):
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is str and kb is str):
        return a >= b
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


# ---------------------------------------------------------------- context


class EvalContext:
    """What a condition can see. Derived views are computed on first use only."""

    __slots__ = ("tool", "args", "call", "state", "vars", "_session", "_time")

    def __init__(self, tool: str, args: dict, call, state: SessionState, variables: dict):
        self.tool = tool
        self.args = args
        self.call = call
        self.state = state
        self.vars = variables
        self._session = None
        self._time = None

    @property
    def now(self) -> float:
        return self.call.timestamp

    def session_field(self, name: str):
        state = self.state
        if name == "call_count":
            return state.call_count
        return self.session().get(name)

    def session(self) -> dict:
        if self._session is None:
            state = self.state
            self._session = {
                "call_count": state.call_count,
                "history": state.history_view(),
                "cost_usd": state.cost_usd,
                "daily_cost_usd": state.daily_cost_usd,
                "tokens_session": 0,
                "tokens_daily": 0,
                "intent_class": "",
                "deny_count": state.deny_count,
            }
        return self._session

    def time(self) -> dict:
        if self._time is None:
            moment = datetime.datetime.fromtimestamp(self.call.timestamp, tz=datetime.timezone.utc)
            self._time = {"hour": moment.hour, "weekday": moment.isoweekday(), "month": moment.month,
                          "day": moment.day, "minute": moment.minute, "year": moment.year}
        return self._time

    def principal(self) -> dict:
        given = self.call.principal or {}
        return {"id": "", "tier": "", "role": "", "org": "", "verified": False, **given}

    def delegation(self) -> dict:
        given = self.call.delegation or {}
        return {"depth": 0, "origin_agent": "", "origin_org": "", "agent_identity_verified": False, **given}


# ---------------------------------------------------------------- derived variables


def amount_of(args: dict) -> float:
    value = args.get("amount")
    if is_number(value):
        return value  # type: ignore[return-value]
    if type(value) is str:
        try:
            return float(value)
        except ValueError:
            return 0
    return 0


def string_arg(args: dict, key: str) -> str:
    value = args.get(key)
    return value.strip() if type(value) is str else ""


def recipients_of(args: dict) -> int:
    value = args.get("recipients")
    return len(value) if type(value) in (list, tuple) else 0


# ---------------------------------------------------------------- functions


def fn_purpose(c: EvalContext, wanted) -> bool:
    given = c.args.get("purpose")
    return type(given) is str and type(wanted) is str and given.lower() == wanted.lower()


def _seconds(value) -> float:
    if not is_number(value):
        raise ExprError(f"window must be a number of seconds, got {type_name(value)}")
    return float(value)


def fn_history_contains_within(c: EvalContext, matcher, seconds) -> bool:
    since = c.now - _seconds(seconds)
    return any(matcher(entry[TOOL]) for entry in c.state.window(since))


def fn_history_sequence(c: EvalContext, *matchers) -> bool:
    position = 0
    for entry in c.state.whole_history():
        if position < len(matchers) and matchers[position](entry[TOOL]):
            position += 1
    return position == len(matchers)


def fn_history_tool_count(c: EvalContext, matcher) -> int:
    return c.state.count_matching(matcher)


def fn_deny_count_within(c: EvalContext, seconds) -> int:
    since = c.now - _seconds(seconds)
    return sum(1 for entry in c.state.window(since) if entry[EFFECT] == "DENY")


def _array_at(args: dict, dotted) -> list | None:
    if type(dotted) is not str:
        raise ExprError(f"argument path must be a string, got {type_name(dotted)}")
    value: object = args
    for part in dotted.split("."):
        value = value.get(part) if type(value) is dict else None  # type: ignore[union-attr]
    return value if type(value) in (list, tuple) else None  # type: ignore[return-value]


def fn_args_array_len(c: EvalContext, dotted) -> int:
    found = _array_at(c.args, dotted)
    return 0 if found is None else len(found)


def fn_args_array_contains(c: EvalContext, dotted, wanted) -> bool:
    found = _array_at(c.args, dotted)
    return found is not None and any(eq(item, wanted) for item in found)


def fn_args_array_any_match(c: EvalContext, dotted, pattern) -> bool:
    found = _array_at(c.args, dotted)
    if found is None or type(pattern) is not str:
        return False
    return any(type(item) is str and glob_match(pattern, item) for item in found)


def fn_contains(_c: EvalContext, collection, item) -> bool:
    if type(collection) is str:
        return str_contains(collection, item)
    return contained_in(item, collection)


def fn_len(_c: EvalContext, value) -> int:
    if type(value) in (str, list, tuple, dict):
        return len(value)
    raise ExprError(f"invalid argument for len (type {type_name(value)})")


def _string_fn(name: str, method):
    def fn(_c: EvalContext, value):
        if type(value) is not str:
            raise ExprError(f"invalid argument for {name} (type {type_name(value)})")
        return method(value)
    return fn


def fn_abs(_c: EvalContext, value):
    if not is_number(value):
        raise ExprError(f"invalid argument for abs (type {type_name(value)})")
    return abs(value)


def fn_session_sum(c: EvalContext, matcher, field: str, seconds=None) -> float:
    """Sum of ``field`` over earlier PERMITTED calls of the matching tool in the window."""
    entries = c.state.whole_history() if seconds is None else c.state.window(c.now - _seconds(seconds))
    total = 0.0
    for entry in entries:
        if entry[EFFECT] == "PERMIT" and matcher(entry[TOOL]):
            for key, value in entry[NUMBERS]:
                if key == field:
                    total += value
    return total


# name -> (implementation, min args, max args, indexes of args that are tool globs)
FUNCTIONS = {
    "purpose": (fn_purpose, 1, 1, ()),
    "history_contains_within": (fn_history_contains_within, 2, 2, (0,)),
    "history_sequence": (fn_history_sequence, 1, 32, "all"),
    "history_tool_count": (fn_history_tool_count, 1, 1, (0,)),
    "deny_count_within": (fn_deny_count_within, 1, 1, ()),
    "args_array_len": (fn_args_array_len, 1, 1, ()),
    "args_array_contains": (fn_args_array_contains, 2, 2, ()),
    "args_array_any_match": (fn_args_array_any_match, 2, 2, ()),
    "contains": (fn_contains, 2, 2, ()),
    "len": (fn_len, 1, 1, ()),
    "lower": (_string_fn("lower", str.lower), 1, 1, ()),
    "upper": (_string_fn("upper", str.upper), 1, 1, ()),
    "trim": (_string_fn("trim", str.strip), 1, 1, ()),
    "abs": (fn_abs, 1, 1, ()),
}
