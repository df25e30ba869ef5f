"""Network clauses of a rule (``host:``, ``port:``, ``method:``, ``path:``, ``query:``, ``header:``).

Each clause is a ``path.Match`` glob tested against the call's arguments
``host``, ``port``, ``method``, ``path``, ``query`` (a map, or ``a=1&b=2`` text)
and ``headers`` (a map; names compared case-insensitively). Hosts and methods
compare case-insensitively. Clauses of different kinds must all match; several
clauses of one kind, or one ``host``/``port``/``method`` value listing
alternatives separated by spaces or commas, match when any alternative does.
A repeated query key or header counts for a deny rule when any occurrence
matches and for a permit only when all do; for a defer, occurrences that
disagree make the predicate answer None (the evaluator denies: the receiver
may act on either). A missing argument never matches.
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


def _query_values(query: object, key: str) -> list[str]:
    """Every value of ``key`` in the query (a map, or ``a=1&a=2`` text, which may repeat keys)."""
    if isinstance(query, dict):
        value = query.get(key)
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value if v is not None]
        return [] if value is None else [str(value)]
    if isinstance(query, str):
        return [value for name, _, value in (part.partition("=") for part in query.lstrip("?").split("&"))
                if name == key]
    return []


def _header_values(headers: object, key: str) -> list[str]:
    """Every value of header ``key``; names compare case-insensitively, so ``X-A`` and ``x-a`` both count."""
    if not isinstance(headers, dict):
        return []
    wanted = key.lower()
    return [str(value) for name, value in headers.items() if str(name).lower() == wanted and value is not None]


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


_REPEATABLE = ("query", "header")


def _reader(kind: str, key: str | None) -> Callable[[dict], object]:
    """How to read the tested text out of the arguments: one text (or None) for host,
    method, port and path; every occurrence, as a list, for query and header."""
    if kind == "host":
        return _host_text
    if kind == "method":
        return lambda args: args["method"].upper() if isinstance(args.get("method"), str) else None
    if kind == "port":
        return _port_text
    if kind == "path":
        return lambda args: args["path"] if isinstance(args.get("path"), str) else None
    if kind == "query":
        return lambda args: _query_values(args.get("query"), key or "")
    return lambda args: _header_values(args.get("headers"), key or "")


def _normalise(kind: str, pattern: str) -> str:
    if kind == "host":
        pattern = pattern.lower()
        return pattern[:-1] if pattern.endswith(".") and pattern != "." else pattern
    return pattern.upper() if kind == "method" else pattern


def compile_net_clauses(clauses: tuple[ast.NetClause, ...], effect: str = "permit") -> Callable[[dict], bool | None] | None:
    """One predicate over the arguments, or None when the rule has no network clause.

    A query key or header may occur more than once, and the receiver may use any
    of them. A ``deny`` rule matches when any occurrence matches, a ``permit``
    only when every occurrence does; for a ``defer`` (neither the loosest nor the
    strictest effect) disagreeing occurrences give None, which the evaluator denies."""
    if not clauses:
        return None
    groups: dict[tuple[str, str | None], list] = {}
    for clause in clauses:
        kind = "header" if clause.kind == "headers" else clause.kind
        matchers = groups.setdefault((kind, clause.key), [])
        matchers.extend(compile_glob(_normalise(kind, alt)) for alt in _alternatives(clause))
    checks = tuple((_reader(kind, key), kind in _REPEATABLE, tuple(matchers))
                   for (kind, key), matchers in groups.items())

    def net_matches(args: dict) -> bool | None:
        ambiguous = False
        for read, repeatable, matchers in checks:
            texts = read(args)
            if not repeatable:
                if texts is None or not any(m(texts) for m in matchers):
                    return False
                continue
            if not texts:
                return False
            hits = [any(m(text) for m in matchers) for text in texts]
            if all(hits):
                continue
            if effect == "deny" and any(hits):
                continue
            if effect == "defer" and any(hits):
                ambiguous = True
                continue
            return False
        return None if ambiguous else True

    return net_matches
