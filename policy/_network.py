"""Network clauses of a rule (``host:``, ``port:``, ``method:``, ``path:``, ``query:``, ``header:``).

Each clause is a ``path.Match`` glob tested against the call's arguments
``host``, ``port``, ``method``, ``path``, ``query`` (a map, or ``a=1&b=2`` text)
and ``headers`` (a map; names compared case-insensitively). Hosts and methods
compare case-insensitively. Clauses of different kinds must all match; several
clauses of one kind, or one ``host``/``port``/``method`` value listing
alternatives separated by spaces or commas, match when any alternative does.
A missing argument never matches.
"""

from __future__ import annotations

from typing import Callable

from policy import ast
from policy.glob import compile_glob

_LISTED = ("host", "port", "method")


def _alternatives(clause: ast.NetClause) -> list[str]:
    if clause.kind in _LISTED:
        return [v for v in clause.value.replace(",", " ").split() if v] or [clause.value]
    return [clause.value]


def _query_value(query: object, key: str) -> str | None:
    if isinstance(query, dict):
        value = query.get(key)
        return None if value is None else str(value)
    if isinstance(query, str):
        for part in query.lstrip("?").split("&"):
            name, _, value = part.partition("=")
            if name == key:
                return value
    return None


def _header_value(headers: object, key: str) -> str | None:
    if not isinstance(headers, dict):
        return None
    wanted = key.lower()
    for name, value in headers.items():
        if str(name).lower() == wanted and value is not None:
            return str(value)
    return None


def _host_text(args: dict) -> str | None:
    """The host in lower case without the DNS root dot: ``Evil.example.`` is ``evil.example``."""
    host = args.get("host")
    if not isinstance(host, str):
        return None
    host = host.lower()
    return host[:-1] if host.endswith(".") and host != "." else host


def _port_text(args: dict) -> str | None:
    """The port as digits; a whole float such as 25.0 reads as 25."""
    port = args.get("port")
    if port is None or isinstance(port, bool):
        return None
    if isinstance(port, float) and port.is_integer():
        return str(int(port))
    return str(port)


def _reader(kind: str, key: str | None) -> Callable[[dict], str | None]:
    """How to read the tested text out of the arguments."""
    if kind == "host":
        return _host_text
    if kind == "method":
        return lambda args: args["method"].upper() if isinstance(args.get("method"), str) else None
    if kind == "port":
        return _port_text
    if kind == "path":
        return lambda args: args["path"] if isinstance(args.get("path"), str) else None
    if kind == "query":
        return lambda args: _query_value(args.get("query"), key or "")
    return lambda args: _header_value(args.get("headers"), key or "")


def _normalise(kind: str, pattern: str) -> str:
    if kind == "host":
        pattern = pattern.lower()
        return pattern[:-1] if pattern.endswith(".") and pattern != "." else pattern
    return pattern.upper() if kind == "method" else pattern


def compile_net_clauses(clauses: tuple[ast.NetClause, ...]) -> Callable[[dict], bool] | None:
    """One predicate over the arguments, or None when the rule has no network clause."""
    if not clauses:
        return None
    groups: dict[tuple[str, str | None], list] = {}
    for clause in clauses:
        kind = "header" if clause.kind == "headers" else clause.kind
        matchers = groups.setdefault((kind, clause.key), [])
        matchers.extend(compile_glob(_normalise(kind, alt)) for alt in _alternatives(clause))
    checks = tuple((_reader(kind, key), tuple(matchers)) for (kind, key), matchers in groups.items())

    def net_matches(args: dict) -> bool:
        for read, matchers in checks:
            text = read(args)
            if text is None or not any(m(text) for m in matchers):
                return False
        return True

    return net_matches
