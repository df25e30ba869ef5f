"""Small builders for FPL syntax trees, so engine tests do not depend on the parser."""

from __future__ import annotations

from policy import ast
from policy.compiler import compile_policy


def span(line: int, col: int = 1) -> ast.Span:
    return ast.Span(line, col, line, col + 1)


def rule(effect: str, tool: str, when=None, *, strict=False, reason=None, notify=None, net=(), line=0):
    return ast.Rule(effect=effect, tool=tool, strict=strict, condition=when, reason=reason, notify=notify,
                    net=tuple(net), span=span(line) if line else ast.NO_SPAN)


def strict(tool: str, when=None, *, reason=None, line=0):
    return rule("deny", tool, when, strict=True, reason=reason, line=line)


def agent(*items, name="bot", default=None, line=0):
    body = ((ast.Default(default),) if default else ()) + tuple(items)
    return ast.Agent(name=name, items=body, span=span(line) if line else ast.NO_SPAN)


def rules(*items):
    return ast.RulesBlock(rules=tuple(items))


def document(*items):
    return ast.Document(items=tuple(items))


def compiled(*items, source="policy", path="test.fpl"):
    return compile_policy(document(*items), source, path)


# expressions
def lit(value, unit=""):
    return ast.Literal(value, unit)


def name(text):
    return ast.Name(text)


def arg(field):
    return ast.Member(ast.Name("args"), field)


def dot(obj, field):
    return ast.Member(obj, field)


def op(operator, left, right):
    return ast.Binary(operator, left, right)


def call(func, *args, **kwargs):
    return ast.Call(func, tuple(args), tuple(kwargs.items()))


def not_(operand):
    return ast.Unary("not", operand)
