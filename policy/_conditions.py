"""Compile ``when`` conditions once into Python functions.

Each condition becomes the source text of ``def condition(c): return ...``,
compiled with ``compile()``; the helpers of ``_exprlib`` give it expr-lang
semantics. Static checks happen here too: unknown identifiers and functions,
argument counts, invalid regular expressions and the reference's size limits.
They are returned as ``(code, message, span, help)`` tuples for the compiler to
turn into diagnostics.
"""

from __future__ import annotations

from typing import Callable

import re2

from policy import _context as context
from policy import _exprlib as lib
from policy import _functions as functions
from policy import ast
from policy._patterns import tool_pattern
from policy.glob import compile_glob, glob_match

MAX_CALLS = 32
MAX_OPERATORS = 96
MAX_DEPTH = 48  # syntax-tree depth, and/or chains counting once; the parser limits brackets to 16
MAX_TEXT = 1024

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.never_capture = True
_REGEX_META = frozenset("\\.^$*+?()[]{}|")

# Root identifier -> Python expression over the context ``c``.
ROOTS = {
    "args": "c.args",
    "amount": "_amount(c.args)",
    "cmd": "_strarg(c.args, 'cmd')",
    "host": "_strarg(c.args, 'host')",
    "path": "_strarg(c.args, 'path')",
    "tool_name": "c.tool",
    "recipients": "_recipients(c.args)",
    "vars": "c.vars",
    "session": "c.session()",
    "tool": "_EMPTY",
    "principal": "c.principal()",
    "delegation": "c.delegation()",
    "time": "c.time()",
}

_BINARY = {
    "==": "_eq({0}, {1})", "!=": "(not _eq({0}, {1}))",
    "<": "_lt({0}, {1})", "<=": "_le({0}, {1})", ">": "_gt({0}, {1})", ">=": "_ge({0}, {1})",
    "in": "_in({0}, {1})", "not in": "(not _in({0}, {1}))",
    "contains": "_contains({0}, {1})", "startsWith": "_startswith({0}, {1})", "endsWith": "_endswith({0}, {1})",
    "+": "_add({0}, {1})", "-": "_sub({0}, {1})", "*": "_mul({0}, {1})", "/": "_div({0}, {1})",
    "%": "_mod({0}, {1})", "**": "_pow({0}, {1})",
}
_BOOL_OPS = frozenset(("==", "!=", "<", "<=", ">", ">=", "in", "not in", "matches", "contains",
                       "startsWith", "endsWith", "and", "or"))

HELPERS = {
    "_eq": lib.eq, "_lt": lib.lt, "_le": lib.le, "_gt": lib.gt, "_ge": lib.ge, "_in": lib.contained_in,
    "_in_strings": lib.in_strings, "_contains": lib.str_contains, "_startswith": lib.starts_with,
    "_endswith": lib.ends_with, "_matches": lib.matches, "_add": lib.add, "_sub": lib.sub, "_mul": lib.mul,
    "_div": lib.div, "_mod": lib.mod, "_pow": lib.power, "_truth": lib.truth, "_neg": lib.negate,
    "_member": lib.member, "_index": lib.index, "_slice": lib.slice_of, "_result": lib.expect_bool,
    "_amount": context.amount_of, "_strarg": context.string_arg, "_recipients": context.recipients_of,
    "_EMPTY": {}, "_sum": functions.fn_session_sum,
}


class ConditionError(Exception):
    """Static errors found while compiling one condition."""

    def __init__(self, problems: list[tuple[str, str, ast.Span, str]]):
        self.problems = problems
        super().__init__("; ".join(p[1] for p in problems))


def compile_regex(pattern: str) -> Callable[[str], bool]:
    """Unanchored RE2 search; plain literals use ``str.find``. Raises ValueError."""
    alternatives = pattern.split("|")
    if not any(ch in _REGEX_META for ch in pattern.replace("|", "")) and all(alternatives):
        if len(alternatives) == 1:
            return lambda text: pattern in text
        return lambda text: any(alt in text for alt in alternatives)  # a|b|c of plain literals
    compiled = re2._re2.RE2(pattern.encode("utf-8"), _RE2_OPTIONS)
    if not compiled.ok():
        raise ValueError(compiled.error())
    unanchored = compiled.Anchor.UNANCHORED
    match = compiled.Match

    def search(text: str) -> bool:
        data = text.encode("utf-8", "surrogatepass")
        return match(unanchored, data, 0, len(data))[0][0] >= 0

    return search


def _dynamic_glob(pattern: object):
    if type(pattern) is not str:
        raise lib.ExprError(f"tool pattern must be a string, got {lib.type_name(pattern)}")
    return lambda tool: glob_match(pattern, tool)


def _dynamic_regex(pattern: object):
    if pattern is None:
        return None
    if type(pattern) is not str:
        raise lib.ExprError(f"regex must be a string, got {lib.type_name(pattern)}")
    try:
        return compile_regex(pattern)
    except ValueError as exc:
        raise lib.ExprError(f"invalid regex: {exc}") from None


def _dynamic_matches(text: object, pattern: object) -> bool:
    regex = _dynamic_regex(pattern)
    return False if regex is None else lib.matches(text, regex)


HELPERS["_dglob"] = _dynamic_glob
HELPERS["_dmatches"] = _dynamic_matches


def dotted_text(expr: ast.Expr) -> str | None:
    """``stripe/refund.amount`` in whatever shape the parser produced, as text."""
    if isinstance(expr, ast.Literal) and isinstance(expr.value, str):
        return expr.value
    if isinstance(expr, ast.Name):
        return expr.name
    if isinstance(expr, ast.Member):
        base = dotted_text(expr.obj)
        return None if base is None else f"{base}.{expr.name}"
    if isinstance(expr, ast.Binary) and expr.op == "/":
        left, right = dotted_text(expr.left), dotted_text(expr.right)
        return None if left is None or right is None else f"{left}/{right}"
    return None


class _Codegen:
    """Turns one condition into Python source; constants go to ``self.consts``."""

    def __init__(self, span: ast.Span):
        self.consts: dict[str, object] = {}
        self.problems: list[tuple[str, str, ast.Span, str]] = []
        self.warnings: list[tuple[str, str, ast.Span, str]] = []
        self.calls = 0
        self.operators = 0
        self.temps = 0
        self.span = span
        self.sum_fields: set[str] = set()

    def const(self, value: object) -> str:
        name = f"K{len(self.consts)}"
        self.consts[name] = value
        return name

    def problem(self, code: str, message: str, node, help_text: str) -> None:
        span = getattr(node, "span", ast.NO_SPAN)
        self.problems.append((code, message, span if span.line else self.span, help_text))

    def emit(self, node, depth: int = 0) -> str:
        if depth > MAX_DEPTH:
            self.problem("E305", f"condition nests deeper than {MAX_DEPTH} levels", node,
                         "split the condition into several rules")
            return "None"
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            self.problem("E306", f"unsupported expression {type(node).__name__}", node, "rewrite the condition")
            return "None"
        return method(node, depth + 1)

    def _Literal(self, node: ast.Literal, depth: int) -> str:
        value = node.value
        if value is None or isinstance(value, (bool, int, str)) or (
                isinstance(value, float) and value == value and abs(value) != float("inf")):
            return repr(value)
        return self.const(value)

    def _Name(self, node: ast.Name, depth: int) -> str:
        if node.name in ("true", "false", "nil"):
            return {"true": "True", "false": "False", "nil": "None"}[node.name]
        if node.name not in ROOTS:
            self.problem("E301", f"unknown name `{node.name}` in condition", node,
                         "use args.<field>, amount, cmd, host, path, tool_name, recipients, vars.*, "
                         "session.*, principal.*, delegation.* or time.*")
            return "None"
        return ROOTS[node.name]

    def _Member(self, node: ast.Member, depth: int) -> str:
        if isinstance(node.obj, ast.Name) and node.obj.name == "session":
            return f"c.session_field({node.name!r})"
        return f"_member({self.emit(node.obj, depth)}, {node.name!r})"

    def _Index(self, node: ast.Index, depth: int) -> str:
        return f"_index({self.emit(node.obj, depth)}, {self.emit(node.index, depth)})"

    def _Slice(self, node: ast.Slice, depth: int) -> str:
        lo = "None" if node.lo is None else self.emit(node.lo, depth)
        hi = "None" if node.hi is None else self.emit(node.hi, depth)
        return f"_slice({self.emit(node.obj, depth)}, {lo}, {hi})"

    def _Unary(self, node: ast.Unary, depth: int) -> str:
        self.operators += 1
        inner = self.emit(node.operand, depth)
        if node.op in ("not", "!"):
            return f"(not {self._as_bool(node.operand, inner)})"
        if node.op == "-":
            return f"_neg({inner})"
        if node.op == "+":
            return inner
        self.problem("E306", f"unknown operator `{node.op}`", node, "use not or -")
        return "None"

    def _as_bool(self, node, code: str) -> str:
        if isinstance(node, ast.Binary) and node.op in _BOOL_OPS:
            return code
        if isinstance(node, ast.Unary) and node.op in ("not", "!"):
            return code
        if isinstance(node, ast.Literal) and isinstance(node.value, bool):
            return code
        return f"_truth({code})"

    def _Binary(self, node: ast.Binary, depth: int) -> str:
        self.operators += 1
        op = node.op
        if op in ("and", "or", "&&", "||"):
            word = "and" if op in ("and", "&&") else "or"
            operands = self._chain(node, word)
            self.operators += len(operands) - 2
            return "(" + f" {word} ".join(self._as_bool(o, self.emit(o, depth)) for o in operands) + ")"
        if op == "??":
            self.temps += 1
            temp = f"_t{self.temps}"
            return f"({temp} if ({temp} := {self.emit(node.left, depth)}) is not None else {self.emit(node.right, depth)})"
        if op == "matches":
            return self._matches(node, depth)
        if op in ("in", "not in") and isinstance(node.right, ast.ListExpr) and node.right.items and all(
                isinstance(i, ast.Literal) and isinstance(i.value, str) for i in node.right.items):
            strings = self.const(frozenset(i.value for i in node.right.items))
            code = f"_in_strings({self.emit(node.left, depth)}, {strings})"
            return code if op == "in" else f"(not {code})"
        if op in ("==", "!=") and isinstance(node.right, ast.Literal) and isinstance(node.right.value, str):
            return f"({self.emit(node.left, depth)} {op} {node.right.value!r})"
        template = _BINARY.get(op)
        if template is None:
            self.problem("E306", f"unknown operator `{op}`", node, "see docs/fpl.md for the operators")
            return "None"
        return template.format(self.emit(node.left, depth), self.emit(node.right, depth))

    @staticmethod
    def _chain(node: ast.Binary, word: str) -> list:
        """Operands of a left-nested ``a or b or c`` chain, flattened (keeps Python's nesting shallow)."""
        spellings = ("and", "&&") if word == "and" else ("or", "||")
        operands = []
        while isinstance(node, ast.Binary) and node.op in spellings:
            operands.append(node.right)
            node = node.left
        operands.append(node)
        return operands[::-1]

    def _matches(self, node: ast.Binary, depth: int) -> str:
        left = self.emit(node.left, depth)
        if isinstance(node.right, ast.Literal) and isinstance(node.right.value, str):
            try:
                regex = compile_regex(node.right.value)
            except ValueError as exc:
                self.problem("E304", f"invalid regular expression {node.right.value!r}: {exc}", node.right,
                             "use RE2 syntax (no backreferences or lookaround)")
                return "None"
            return f"_matches({left}, {self.const(regex)})"
        return f"_dmatches({left}, {self.emit(node.right, depth)})"

    def _Conditional(self, node: ast.Conditional, depth: int) -> str:
        self.operators += 1
        cond = self._as_bool(node.cond, self.emit(node.cond, depth))
        return f"({self.emit(node.then, depth)} if {cond} else {self.emit(node.otherwise, depth)})"

    def _ListExpr(self, node: ast.ListExpr, depth: int) -> str:
        return "[" + ", ".join(self.emit(item, depth) for item in node.items) + "]"

    def _tool_glob(self, pattern: str, node) -> str:
        """A literal tool pattern, canonical like the tool ids it meets (policy/_patterns.py)."""
        canonical, problem = tool_pattern(pattern)
        if problem is not None:
            severity, code, message, help_text = problem
            if severity == "error":
                self.problem(code, message, node, help_text)
                return "None"
            span = getattr(node, "span", ast.NO_SPAN)
            self.warnings.append((code, message, span if span.line else self.span, help_text))
        return self.const(compile_glob(canonical))

    def _glob_arg(self, node, depth: int) -> str:
        if isinstance(node, ast.Literal) and isinstance(node.value, str):
            return self._tool_glob(node.value, node)
        return f"_dglob({self.emit(node, depth)})"

    def _Call(self, node: ast.Call, depth: int) -> str:
        self.calls += 1
        if node.func == "session.sum":
            return self._session_sum(node, depth)
        spec = functions.FUNCTIONS.get(node.func)
        if spec is None:
            self.problem("E302", f"unknown function `{node.func}`", node,
                         "see docs/fpl.md for the functions conditions may call")
            return "None"
        impl, low, high, glob_args = spec
        if not low <= len(node.args) <= high or node.kwargs:
            arity = str(low) if low == high else f"{low} to {high}"
            self.problem("E303", f"`{node.func}` takes {arity} positional argument(s), got {len(node.args)}"
                         + (" and keyword arguments" if node.kwargs else ""), node, f"call {node.func} with {arity} argument(s)")
            return "None"
        parts = []
        for position, arg in enumerate(node.args):
            is_glob = glob_args == "all" or position in glob_args
            parts.append(self._glob_arg(arg, depth) if is_glob else self.emit(arg, depth))
        return f"{self.const(impl)}(c, {', '.join(parts)})"

    def _session_sum(self, node: ast.Call, depth: int) -> str:
        """``session.sum(tool.field, window=1h)``; the parser may also split it as (tool, field)."""
        tool = field = None
        texts = [dotted_text(a) for a in node.args]
        if len(texts) == 1 and texts[0] and "." in texts[0]:
            tool, field = texts[0].rsplit(".", 1)
        elif len(texts) == 2 and all(texts):
            tool, field = texts
        kwargs = dict(node.kwargs)
        if tool is None or not field or set(kwargs) - {"window"}:
            self.problem("E303", "session.sum takes one `tool.field` argument and an optional window=", node,
                         "write session.sum(stripe/refund.amount, window=1h)")
            return "None"
        window = self.emit(kwargs["window"], depth) if "window" in kwargs else "None"
        self.sum_fields.add(field)
        return f"_sum(c, {self._tool_glob(tool, node)}, {field!r}, {window})"


class CompiledCondition:
    """A condition as a Python function of an ``EvalContext``, plus what it needs."""

    __slots__ = ("function", "source", "sum_fields", "warnings")

    def __init__(self, function, source: str, sum_fields: frozenset[str], warnings: tuple = ()):
        self.function = function
        self.source = source
        self.sum_fields = sum_fields
        self.warnings = warnings  # (code, message, span, help), e.g. W307 for a rewritten tool pattern


def compile_condition(expr: ast.Expr, text: str, span: ast.Span, label: str) -> CompiledCondition:
    """Compile ``expr``; raises ConditionError listing every static problem."""
    gen = _Codegen(span)
    body = gen.emit(expr)
    if len(text) > MAX_TEXT:
        gen.problem("E305", f"condition is {len(text)} characters long (limit {MAX_TEXT})", None,
                    "split the condition into several rules")
    if gen.calls > MAX_CALLS:
        gen.problem("E305", f"condition calls {gen.calls} functions (limit {MAX_CALLS})", None,
                    "split the condition into several rules")
    if gen.operators > MAX_OPERATORS:
        gen.problem("E305", f"condition uses {gen.operators} operators (limit {MAX_OPERATORS})", None,
                    "split the condition into several rules")
    if gen.problems:
        raise ConditionError(gen.problems)
    source = f"def condition(c):\n    return {body}\n"
    namespace = dict(HELPERS)
    namespace.update(gen.consts)
    try:
        code = compile(source, label, "exec")
    except (SyntaxError, RecursionError, MemoryError):
        raise ConditionError([("E305", "condition is too deeply nested to compile", span,
                               "split the condition into several rules")]) from None
    exec(code, namespace)  # source is generated from the AST, never from user text
    return CompiledCondition(namespace["condition"], source, frozenset(gen.sum_fields), tuple(gen.warnings))
