"""Built-in functions of conditions, as in the reference engine, plus ``session.sum``.

Each takes the ``EvalContext`` first. Tool-pattern arguments arrive as
precompiled ``path.Match`` matchers. History is read through ``SessionState``,
which raises ``HistoryTruncated`` when the bound has dropped entries a window
needs; the evaluator turns that into a deny.

``history_*`` and ``session.sum`` see only PERMIT entries (permitted calls, and
deferred ones a human approved: ``Engine.commit_approved``). A denied or
unapproved call never happened, and an agent must not satisfy ``permit deploy
when history_contains_within("ci/tests_passed", 3600)`` by asking for a tool it
knows will be refused. ``deny_count_within`` counts the DENY entries.
"""

from __future__ import annotations

import math

from policy._context import EvalContext
from policy._exprlib import ExprError, eq, contained_in, is_number, str_contains, type_name
from policy.glob import glob_match
from policy.session import EFFECT, NUMBERS, TOOL

def fn_purpose(c: EvalContext, wanted) -> bool:
    given = c.args.get("purpose")
    return type(given) is str and type(wanted) is str and given.lower() == wanted.lower()


def _seconds(value) -> float:
    if not is_number(value):
        raise ExprError(f"window must be a number of seconds, got {type_name(value)}")
    seconds = float(value)
    if seconds != seconds or seconds in (math.inf, -math.inf):  # a NaN window would admit every entry
        raise ExprError(f"window must be a finite number of seconds, got {value!r}")
    return seconds


def fn_history_contains_within(c: EvalContext, matcher, seconds) -> bool:
    since = c.now - _seconds(seconds)
    return any(entry[EFFECT] == "PERMIT" and matcher(entry[TOOL]) for entry in c.state.window(since))


def fn_history_sequence(c: EvalContext, *matchers) -> bool:
    position = 0
    for entry in c.state.whole_history():
        if position < len(matchers) and entry[EFFECT] == "PERMIT" and matchers[position](entry[TOOL]):
            position += 1
    return position == len(matchers)


def fn_history_tool_count(c: EvalContext, matcher) -> int:
    return c.state.count_permitted(matcher)


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
