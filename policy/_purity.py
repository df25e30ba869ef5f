"""Which arguments a tool's decision can read, so an identical call may reuse the decision.

``decision_keys(layers, tool)`` returns a set K of argument names, or None. With K, two
calls to ``tool`` whose arguments agree on every key of K get the same effect, rule_id,
reason_code, reason, policy_version and layer, whatever their other arguments, session,
agent, principal, timestamp and earlier calls. Preconditions (``reuse_key`` checks the
argument ones): both calls are well formed (finite timestamp, no NUL byte, argument keys
that are their own canonical form, values of JSON types); they carry the same
``delegation``; evaluation stays within its time limits.

Soundness rules, all fail closed (None):

- any guard or session-reading condition in any layer (``_static._layer_is_guarded``):
  guards count calls, and a reused decision would be missing from the history they read;
- a condition, anywhere it can run for the tool, that reads anything but named arguments
  and constants: whole ``args``, ``args[<not a literal string>]``, ``session``, ``time``,
  ``principal``, ``delegation``, history functions, or a node or function not listed here.

Reached rules are the ``deny!`` rules of every layer up to the first unconditional one
(which ends the decision), then each layer's other rules up to its first unconditional
rule. K is the union of what their conditions and network clauses read. The pass on the
arguments as written (evaluator, step 7) runs the same rules, so it reads the same keys;
whether it runs depends on other arguments, but when it does and the keys of K were not
changed by canonicalisation it repeats the first pass. Reasons are the rule's fixed text;
a condition error's reason names only values the condition read.
"""

from __future__ import annotations

from policy import ast
from policy._static import _layer_is_guarded
from policy.canonical import NulByte, canonical_text, canonical_tool

# Root names that stand for one argument (policy/_conditions.ROOTS, policy/_context).
ARGUMENT_ROOTS = {"amount": "amount", "cmd": "cmd", "host": "host", "path": "path", "recipients": "recipients"}
# Root names whose value is the same for every call to one tool.
CONSTANT_ROOTS = frozenset(("true", "false", "nil", "tool_name", "tool", "vars"))
# Functions whose result depends on their operands only.
PURE_FUNCTIONS = frozenset(("contains", "len", "lower", "upper", "trim", "abs"))
# Functions that read one argument implicitly, and the functions reading the argument named
# by the first component of their first operand, a dotted path such as "a.b".
IMPLICIT_FUNCTION_KEYS = {"purpose": "purpose"}
ARRAY_FUNCTIONS = frozenset(("args_array_len", "args_array_contains", "args_array_any_match"))
# Network clauses read these arguments (policy/_network.py); a rule keeps only a predicate.
NETWORK_KEYS = frozenset(("host", "port", "method", "path", "query", "headers"))
_UNARY = frozenset(("not", "!", "-", "+"))
_BINARY = frozenset(ast.BINARY_OPS) | {"&&", "||"}


class _Unknown(Exception):
    """The expression may read something besides named arguments and constants."""


def _is_args(expr) -> bool:
    return type(expr) is ast.Name and expr.name == "args"


def _read(expr, out: set) -> None:
    """Add the argument names ``expr`` reads to ``out``; raise _Unknown if it reads more."""
    kind = type(expr)
    if kind is ast.Literal:
        return
    if kind is ast.Name:
        if expr.name in CONSTANT_ROOTS:
            return
        if expr.name not in ARGUMENT_ROOTS:
            raise _Unknown(expr.name)  # whole args, session, time, principal, delegation
        out.add(ARGUMENT_ROOTS[expr.name])
    elif kind is ast.Member:
        if _is_args(expr.obj):
            out.add(expr.name)
        else:
            _read(expr.obj, out)
    elif kind is ast.Index:
        if _is_args(expr.obj):
            if type(expr.index) is not ast.Literal or type(expr.index.value) is not str:
                raise _Unknown("args indexed by a computed key")
            out.add(expr.index.value)
        else:
            _read(expr.obj, out)
            _read(expr.index, out)
    elif kind is ast.Slice:
        for part in (expr.obj, expr.lo, expr.hi):
            if part is not None:
                _read(part, out)
    elif kind is ast.Unary and expr.op in _UNARY:
        _read(expr.operand, out)
    elif kind is ast.Binary and expr.op in _BINARY:
        _read(expr.left, out)
        _read(expr.right, out)
    elif kind is ast.Conditional:
        for part in (expr.cond, expr.then, expr.otherwise):
            _read(part, out)
    elif kind is ast.ListExpr:
        for item in expr.items:
            _read(item, out)
    elif kind is ast.Call:
        _read_call(expr, out)
    else:
        raise _Unknown(kind.__name__)


def _read_call(call: ast.Call, out: set) -> None:
    operands = call.args
    if call.kwargs:
        raise _Unknown(call.func)  # only session.sum takes keyword arguments
    if call.func in ARRAY_FUNCTIONS:
        dotted = operands[0] if operands else None
        if type(dotted) is not ast.Literal or type(dotted.value) is not str:
            raise _Unknown(call.func)
        out.add(dotted.value.split(".", 1)[0])
        operands = operands[1:]
    elif call.func in IMPLICIT_FUNCTION_KEYS:
        out.add(IMPLICIT_FUNCTION_KEYS[call.func])
    elif call.func not in PURE_FUNCTIONS:
        raise _Unknown(call.func)  # history, session.sum, anything added later
    for operand in operands:
        _read(operand, out)


def _unconditional(rule) -> bool:
    return rule.condition is None and rule.net is None


def _read_rule(rule, out: set) -> None:
    if rule.net is not None:
        out.update(NETWORK_KEYS)
    if rule.condition is not None:
        if rule.expr is None:
            raise _Unknown("condition without its syntax tree")
        _read(rule.expr, out)


def _reached_keys(layers, tool: str) -> set:
    keys: set = set()
    for layer in layers:
        for rule in layer.strict_candidates(tool):
            _read_rule(rule, keys)
            if _unconditional(rule):
                return keys  # every call stops here: nothing later runs
    for layer in layers:
        for rule in layer.candidates(tool):
            if rule.strict:
                continue
            _read_rule(rule, keys)
            if _unconditional(rule):
                break  # first match: later rules of this layer never run
    return keys


def decision_keys(layers, tool: str) -> frozenset[str] | None:
    """The argument names every decision about ``tool`` depends on at most, or None."""
    if type(tool) is not str or any(_layer_is_guarded(layer) for layer in layers):
        return None
    try:
        canonical = canonical_tool(tool)
        keys = _reached_keys(layers, canonical)
    except (NulByte, _Unknown):
        return None
    # a key the policy spells in a non-canonical way names a different canonical key
    return frozenset(keys | {canonical_text(k) for k in keys if "\x00" not in k})


# ---------------------------------------------------------------- caller side


def _plain_key(key: object) -> bool:
    return type(key) is str and "\x00" not in key and canonical_text(key) == key


def _value_key(value: object):
    """``value`` as a hashable tree tagged with types: 1, 1.0 and true differ; raises ValueError."""
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise ValueError("NUL byte")
        return value
    if kind is bool or kind is int or value is None:
        return (kind.__name__, value)
    if kind is float:
        return ("float", repr(value))  # NaN equals NaN here, and -0.0 differs from 0.0
    if kind is list or kind is tuple:
        return ("list",) + tuple(_value_key(item) for item in value)
    if kind is dict:
        if not all(_plain_key(k) for k in value):
            raise ValueError("key that canonicalisation would rename")
        return ("map",) + tuple((k, _value_key(v)) for k, v in value.items())
    raise ValueError(f"value of type {kind.__name__}")


def reuse_key(args: object, keys: frozenset[str]) -> tuple | None:
    """A hashable key, equal for two argument maps only when they agree on ``keys`` with the
    same types (nested maps also in the same order), or None
    when ``args`` breaks the preconditions (a NUL byte anywhere, a key that is not its own
    canonical form, a value that is not str, int, float, bool, nil, list or map)."""
    if type(args) is not dict:
        return None
    try:
        whole = dict(_value_key(args)[1:])  # validates every argument, not only those in keys
    except (ValueError, RecursionError):
        return None
    return tuple((k, whole[k]) if k in whole else (k,) for k in sorted(keys))
