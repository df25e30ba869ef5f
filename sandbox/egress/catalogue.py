"""The API catalogue: requests to known endpoints become named tools with typed arguments.

Each ``*.toml`` file in a catalogue directory lists ``[[endpoint]]`` tables (docs/egress.md):
``tool``, ``method``, ``host``, ``path`` (``{name}`` matches one path segment), ``body``
(the accepted body formats), ``auth`` (how an injected credential is sent), ``fold_case`` (the
server reads the path without case) and ``args``: name ->
``{ from = "body.X" | "query.X" | "path.X" | "header.X", type = ..., currency = ... }``."""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable

BUILTIN_DIR = Path(__file__).with_name("catalogue")
BODY_FORMATS = {"json": ("json",), "form": ("form",), "json-or-form": ("json", "form"), "none": (),
                "git-receive-pack": ("git-receive-pack",)}
AUTH_SCHEMES = ("bearer", "basic-token")
SOURCES = ("body", "query", "path", "header")
HTTP_FIELDS = frozenset({"url", "host", "port", "method", "path", "query", "headers"})  # set by the egress
# Currencies without a minor unit, and those with three decimals (ISO 4217 as Stripe uses it).
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


class CatalogueError(Exception):
    """A catalogue file that cannot be used; the message names the file and the entry."""


class ArgumentError(ValueError):
    """A request field that does not have the type its catalogue entry promises."""


def _string(value):
    if isinstance(value, (dict, list)):
        raise ArgumentError("expected text")
    return str(value)


def _integer(value):
    if isinstance(value, bool) or (isinstance(value, str) and not re.fullmatch(r"-?[0-9]{1,18}", value)):
        raise ArgumentError(f"{value!r} is not an integer")
    if not isinstance(value, (int, str)):
        raise ArgumentError(f"{value!r} is not an integer")
    return int(value)


def _number(value):
    try:
        number = Decimal(str(value)) if not isinstance(value, bool) else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise ArgumentError(f"{value!r} is not a number")
    return int(number) if number == number.to_integral_value() else float(number)


def _boolean(value):
    table = {True: True, False: False, "true": True, "false": False}
    if not isinstance(value, (bool, str)) or value not in table:
        raise ArgumentError(f"{value!r} is not true or false")
    return table[value]


def _listed(value):
    return list(value) if isinstance(value, list) else [value]


def _count(value):
    if not isinstance(value, list):
        raise ArgumentError("expected a list")
    return len(value)


def _git_repo(value):
    text = _string(value)
    return text[:-4] if text.endswith(".git") else text


TYPES: dict[str, Callable] = {"string": _string, "integer": _integer, "number": _number, "boolean": _boolean,
                              "list": _listed, "count": _count, "git_repo": _git_repo, "minor_units": None}


@dataclass(frozen=True)
class Field:
    name: str
    source: str  # body | query | path | header
    key: str  # dotted for body
    type: str
    currency: tuple[str, str] | None = None  # for minor_units: where the currency code is


@dataclass(frozen=True)
class Endpoint:
    tool: str
    method: str
    host: str
    port: int
    path: str
    pattern: re.Pattern
    bodies: tuple[str, ...]
    auth: str
    fields: tuple[Field, ...]
    origin: str  # file and entry number, for messages
    fold_case: bool = False  # the server ignores the path's case (GitHub's owner/repo): values lower-cased

    def match(self, method: str, host: str, port: int, path: str) -> dict[str, str] | None:
        """The path's ``{name}`` segments, percent-decoded, when this entry describes the request
        (``path`` is normalised, docs/egress.md), else None; ArgumentError for a segment that is not UTF-8."""
        if (method, host, port) != (self.method, self.host, self.port):
            return None
        found = self.pattern.fullmatch(path)
        return None if found is None else {name: _segment(value, self.fold_case)
                                           for name, value in found.groupdict().items()}


def _segment(value: str, fold_case: bool) -> str:
    try:
        text = urllib.parse.unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise ArgumentError(f"path segment {value[:80]!r} is not UTF-8") from None
    return text.lower() if fold_case else text


def _source(spec: str, where: str) -> tuple[str, str]:
    source, _, key = spec.partition(".")
    if source not in SOURCES or not key:
        raise CatalogueError(f"{where}: `from = {spec!r}` must be one of {', '.join(s + '.NAME' for s in SOURCES)}")
    return source, key


def _field(name: str, spec: object, where: str) -> Field:
    if not isinstance(spec, dict) or "from" not in spec:
        raise CatalogueError(f"{where}: argument {name} needs `{{ from = \"body.{name}\", type = \"string\" }}`")
    if name in HTTP_FIELDS:
        raise CatalogueError(f"{where}: argument name {name!r} is reserved for the request "
                             f"({', '.join(sorted(HTTP_FIELDS))})")
    kind = spec.get("type", "string")
    if kind not in TYPES:
        raise CatalogueError(f"{where}: argument {name} has unknown type {kind!r}; use one of {', '.join(TYPES)}")
    currency = _source(spec["currency"], where) if "currency" in spec else None
    if kind == "minor_units" and currency is None:
        raise CatalogueError(f"{where}: argument {name} of type minor_units needs `currency = \"body.currency\"`")
    return Field(name, *_source(spec["from"], where), kind, currency)


def _path_pattern(path: str, fold_case: bool, where: str) -> re.Pattern:
    if not path.startswith("/"):
        raise CatalogueError(f"{where}: path {path!r} must start with /")
    if re.search(r"[%?#;\s]|//", path):  # requests are matched normalised: such a path would never match
        raise CatalogueError(f"{where}: path {path!r} cannot have %, ?, #, ;, spaces or //: write it as "
                             "the egress normalises request paths (%61 as a; the query is not part of it)")
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", path.rstrip("/") or "/")
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    # Servers route /v1/refunds/ as /v1/refunds: a trailing slash must not leave the tool.
    return re.compile(regex if regex == "/" else regex + "/?", re.IGNORECASE if fold_case else 0)


def _endpoint(entry: object, where: str) -> Endpoint:
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where}: an [[endpoint]] must be a table")
    missing = [k for k in ("tool", "method", "host", "path") if not isinstance(entry.get(k), str)]
    if missing:
        raise CatalogueError(f"{where}: missing {', '.join(missing)} (text)")
    bodies = entry.get("body", "none")
    if bodies not in BODY_FORMATS:
        raise CatalogueError(f"{where}: body {bodies!r} is not one of {', '.join(BODY_FORMATS)}")
    auth = entry.get("auth", "bearer")
    if auth not in AUTH_SCHEMES:
        raise CatalogueError(f"{where}: auth {auth!r} is not one of {', '.join(AUTH_SCHEMES)}")
    port = entry.get("port", 443)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise CatalogueError(f"{where}: port {port!r} is not 1-65535")
    args = entry.get("args", {})
    if not isinstance(args, dict):
        raise CatalogueError(f"{where}: args must be a table")
    fold_case = entry.get("fold_case", False)
    if not isinstance(fold_case, bool):
        raise CatalogueError(f"{where}: fold_case {fold_case!r} is not true or false")
    return Endpoint(entry["tool"], entry["method"].upper(), entry["host"].lower().rstrip("."), port, entry["path"],
                    _path_pattern(entry["path"], fold_case, where), BODY_FORMATS[bodies], auth,
                    tuple(_field(name, spec, where) for name, spec in args.items()), where, fold_case)


def load_file(path: Path) -> list[Endpoint]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise CatalogueError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise CatalogueError(f"{path}: not valid TOML: {err}") from None
    entries = data.get("endpoint", [])
    if not isinstance(entries, list):
        raise CatalogueError(f"{path}: write each entry as [[endpoint]]")
    return [_endpoint(entry, f"{path}: endpoint {n + 1}") for n, entry in enumerate(entries)]


class Catalogue:
    def __init__(self, endpoints: list[Endpoint]):
        self.endpoints = tuple(endpoints)

    @classmethod
    def load(cls, directories: list[str | os.PathLike] = (), builtin: bool = True) -> "Catalogue":
        """The built-in entries, then every ``*.toml`` of ``directories`` in name order."""
        found: list[Endpoint] = []
        for directory in ([BUILTIN_DIR] if builtin else []) + [Path(d) for d in directories]:
            if not directory.is_dir():
                raise CatalogueError(f"{directory}: not a directory of *.toml catalogue files")
            for path in sorted(directory.glob("*.toml")):
                found.extend(load_file(path))
        return cls(found)

    def match(self, method: str, host: str, port: int, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        """The first entry describing the request, with its path segments."""
        for endpoint in self.endpoints:
            segments = endpoint.match(method, host, port, path)
            if segments is not None:
                return endpoint, segments
        return None


def _lookup(sources: dict, source: str, key: str):
    """The value at ``key`` (dotted inside a body); a key the sender repeated is ambiguous."""
    value = sources.get(source)
    for part in key.split(".") if source == "body" else [key]:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, Repeated):
        raise ArgumentError("given more than once (the server might read either)")
    return value


class Repeated(list):
    """A form or query key that occurred more than once."""


def typed_args(endpoint: Endpoint, sources: dict) -> dict:
    """The entry's arguments read from ``sources`` ({"body": ..., "query": ..., "path": ...,
    "header": ...}); absent fields are left out; ArgumentError names a field of the wrong type."""
    args = {}
    for field in endpoint.fields:
        try:
            value = _lookup(sources, field.source, field.key)
            if value is None:
                continue
            if field.type == "minor_units":
                code = _lookup(sources, *field.currency)
                args[field.name] = minor_to_major(_integer(value), code)
            else:
                args[field.name] = TYPES[field.type](value)
        except ArgumentError as err:
            raise ArgumentError(f"{field.source}.{field.key} ({field.name}): {err}") from None
    return args


def minor_to_major(amount: int, currency: object) -> int | float:
    """80000 usd -> 800; 500 jpy -> 500; 1500 kwd -> 1.5. A missing currency counts as two decimals."""
    code = str(currency or "").lower()
    places = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    value = Decimal(amount).scaleb(-places)
    return int(value) if value == value.to_integral_value() else float(value)
