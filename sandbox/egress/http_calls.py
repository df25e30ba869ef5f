"""One HTTP request -> the tool call the policy decides (docs/egress.md).

A request a catalogue entry describes is the entry's tool (``stripe/refund``) with its typed
arguments; any other is ``http/<method>``. Both carry the request itself: ``url``, ``host``
(the name the agent connected to, never the Host header), ``port``, ``method``, ``path``,
``query`` and ``headers`` (credentials shown as their scheme only); ``http/<method>`` also
carries the parsed ``body``. The target is normalised first (normal_target): the path the policy
decides is the one forwarded. Whatever cannot be read exactly is refused (BodyError)."""

from __future__ import annotations

import json
import re
import string
import urllib.parse
from dataclasses import dataclass

from sandbox.egress.catalogue import ArgumentError, Catalogue, Endpoint, Repeated, typed_args

MAX_BODY = 1 << 20  # default bytes read before a decision (--egress-max-body); larger requests are refused
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"})
CONTENT_TYPES = {"application/json": "json", "application/x-www-form-urlencoded": "form",
                 "application/x-git-receive-pack-request": "git-receive-pack"}


class BodyError(ValueError):
    """A request the egress cannot read exactly: refused, with this message as the reason."""


UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")  # RFC 3986: %XX of these means the letter
ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Paths a server could route differently from the text the policy decides (checked once normalised).
PATH_REFUSALS = (
    (re.compile(r"//"), "has an empty segment (// can be read as a host name, or merged into one /)"),
    (re.compile(r";"), "has a ; (servers that take path parameters drop what follows, as in /..;/)"),
    (re.compile(r"\\|%2F|%5C"), "has an encoded slash or a backslash"),
    (re.compile(r"%(?:[01][0-9A-F]|7F)"), "has an encoded control character (%00 ends a path in C servers)"),
    (re.compile(r"(?:^|/)\.\.?(?:/|$)"), "has a . or .. segment"),
    (re.compile(r"%25[0-9A-Fa-f]{2}"), "has an encoded % before two hex digits (a server that decodes twice "
                                        "reads another path)"),
)


def _one_escape(found: re.Match) -> str:
    char = chr(int(found[1], 16))
    return char if char in UNRESERVED else f"%{found[1].upper()}"


def _normal_escapes(text: str, what: str) -> str:
    """RFC 3986 6.2.2: ``%61`` -> ``a`` (unreserved), ``%2f`` -> ``%2F``; a stray % is refused."""
    if "%" in ESCAPE.sub("", text):
        raise BodyError(f"{what} {text[:80]!r} has a % that is not followed by two hex digits")
    return ESCAPE.sub(_one_escape, text)


def normal_target(target: str) -> str:
    """The target the policy decides and the egress forwards: origin-form (``/path?query``),
    percent-encoding normalised; refused when a server could read its path as another one."""
    if not target.startswith("/"):
        raise BodyError(f"request target {target[:80]!r} is not a path (absolute-form and * are not inspected)")
    if "#" in target:  # clients never send a fragment; servers differ on where the path ends
        raise BodyError(f"request target {target[:80]!r} has a # (a fragment)")
    if any(not "\x21" <= c <= "\x7e" for c in target):
        raise BodyError(f"request target {target[:80]!r} has a space, a control or a non-ASCII character")
    path, mark, query = target.partition("?")  # the path ends at the first ?, whatever follows
    path = _normal_escapes(path, "path")
    for pattern, why in PATH_REFUSALS:
        if pattern.search(path):
            raise BodyError(f"path {path[:80]!r} {why}")
    return path + mark + _normal_escapes(query, "query")


@dataclass
class HttpRequest:
    method: str
    target: str  # the request line's target, normalised (normal_target): what is decided is what is sent
    headers: list[tuple[str, str]]
    body: bytes
    host: str  # the name the agent connected to (or its address)
    port: int
    scheme: str = "https"

    def __post_init__(self):
        self.target = normal_target(self.target)  # BodyError: no request exists that could not be decided

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query_text(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


def _pairs_to_map(pairs: list[tuple[str, str]]) -> dict:
    found: dict = {}
    for key, value in pairs:
        if key not in found:
            found[key] = value
        elif isinstance(found[key], Repeated):
            found[key].append(value)  # in place: a body of one key repeated must stay linear
        else:
            found[key] = Repeated([found[key], value])
    return found


def parse_form(text: str, what: str) -> dict:
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                       encoding="utf-8", errors="strict")
    except (ValueError, UnicodeDecodeError) as err:
        raise BodyError(f"{what} is not valid form encoding: {err}") from None
    return _pairs_to_map(pairs)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise BodyError("JSON body repeats a key (the server might read either value)")
    return dict(pairs)


def _json(body: bytes):
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys,
                          parse_constant=lambda c: (_ for _ in ()).throw(BodyError(f"JSON body has {c}")))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BodyError(f"body is not valid JSON: {err}") from None
    except RecursionError:
        raise BodyError("JSON body nests too deeply to inspect") from None


def _git_receive_pack(body: bytes) -> dict:
    """The ref updates at the start of a push: pkt-lines ``OLD NEW REF[\\0capabilities]`` up to a flush."""
    refs, at = [], 0
    while True:
        size_text = body[at:at + 4]
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BodyError("git push request has no ref update list") from None
        if size == 0:
            break
        if size < 4 or at + size > len(body):
            raise BodyError("git push request has a truncated ref update")
        line = body[at + 4:at + size].split(b"\0", 1)[0].rstrip(b"\n").decode("utf-8", "replace")
        parts = line.split(" ")
        if len(parts) != 3:
            raise BodyError(f"git push ref update {line!r} is not OLD NEW REF")
        refs.append(parts[2])
        at += size
    return {"refs": refs}


PARSERS = {"json": _json, "form": lambda body: parse_form(body.decode("utf-8", "strict"), "form body"),
           "git-receive-pack": _git_receive_pack}


def body_format(request: HttpRequest) -> str | None:
    """``json``/``form``/``git-receive-pack``/``text``, None for no body; BodyError otherwise."""
    if not request.body:
        return None
    encodings = [v.strip().lower() for v in request.header("content-encoding")]
    if any(e not in ("", "identity") for e in encodings):
        raise BodyError(f"a {','.join(encodings)}-encoded body cannot be inspected")
    types = request.header("content-type")
    if len(types) != 1:
        raise BodyError("a body needs exactly one Content-Type to be inspected")
    media = types[0].split(";", 1)[0].strip().lower()
    if media in CONTENT_TYPES:
        return CONTENT_TYPES[media]
    if media.endswith("+json"):
        return "json"
    if media.startswith("text/"):
        return "text"
    raise BodyError(f"a body of type {media} cannot be inspected")


def parse_body(request: HttpRequest, kind: str | None):
    if kind is None:
        return None
    if kind == "text":
        try:
            return request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise BodyError("text body is not UTF-8") from None
    try:
        return PARSERS[kind](request.body)
    except UnicodeDecodeError:
        raise BodyError(f"{kind} body is not UTF-8") from None


def shown_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Headers as the policy sees them: a repeated name keeps every value (under another
    spelling: names compare case-insensitively); secrets show their scheme only."""
    shown: dict[str, str] = {}
    seen: dict[str, int] = {}  # lower-case name -> spellings used (only its own spellings can collide)
    for name, value in headers:
        lower = name.lower()
        if lower in SECRET_HEADERS:
            scheme = value.split(" ", 1)[0] if " " in value else ""
            value = f"{scheme} <redacted>".strip()
        variant = seen.get(lower, 0)
        key = _spelling(lower, variant)
        if key is None:
            raise BodyError(f"header {name} repeats too often to be inspected")
        seen[lower] = variant + 1
        shown[key] = value
    return shown


def _spelling(name: str, n: int) -> str | None:
    """The n-th distinct capitalisation of ``name`` (bits of n pick upper-case letters)."""
    letters = [i for i, c in enumerate(name) if c.isalpha()]
    if n >= 1 << min(len(letters), 16):
        return None
    chars = list(name)
    for bit, index in enumerate(letters[:16]):
        if n >> bit & 1:
            chars[index] = chars[index].upper()
    return "".join(chars)


def _url(request: HttpRequest) -> str:
    default = {"https": 443, "http": 80}[request.scheme]
    netloc = request.host if request.port == default else f"{request.host}:{request.port}"
    if ":" in request.host:
        netloc = f"[{request.host}]" if request.port == default else f"[{request.host}]:{request.port}"
    return f"{request.scheme}://{netloc}{request.target}"


def to_tool_call(request: HttpRequest, catalogue: Catalogue,
                 max_body: int = MAX_BODY) -> tuple[str, dict, Endpoint | None]:
    """(tool, args, catalogue entry or None); BodyError when the request cannot be read exactly."""
    if len(request.body) > max_body:
        raise BodyError(f"request body over {max_body} bytes cannot be inspected")
    query = parse_form(request.query_text, "query string")
    kind = body_format(request)
    args = {"url": _url(request), "host": request.host, "port": request.port, "method": request.method,
            "path": request.path, "query": {k: list(v) if isinstance(v, Repeated) else v for k, v in query.items()},
            "headers": shown_headers(request.headers)}
    try:
        found = catalogue.match(request.method, request.host, request.port, request.path)
    except ArgumentError as err:
        raise BodyError(f"path {request.path[:80]!r}: {err}") from None
    if found is None:
        body = parse_body(request, kind)
        if body is not None:
            args["body"] = {k: list(v) if isinstance(v, Repeated) else v for k, v in body.items()} \
                if isinstance(body, dict) else body
        return f"http/{request.method.lower()}", args, None
    endpoint, segments = found
    if kind is not None and kind not in endpoint.bodies:
        raise BodyError(f"{endpoint.tool} ({request.method} {request.host}{request.path}) takes "
                        f"{' or '.join(endpoint.bodies) or 'no'} body, not {kind}")
    body = parse_body(request, kind)
    sources = {"body": body if isinstance(body, dict) else {}, "query": query, "path": segments,
               "header": _pairs_to_map([(k.lower(), v) for k, v in request.headers])}  # repeated: ambiguous
    try:
        typed = typed_args(endpoint, sources)
    except ArgumentError as err:
        raise BodyError(f"{endpoint.tool}: {err}") from None
    return endpoint.tool, {**typed, **args}, endpoint
