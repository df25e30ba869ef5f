"""``faramesh-sandbox policy check|eval|fmt``: the FPL engine from the shell."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import policy
from launcher import term
from policy.ast import Span
from policy.errors import Diagnostic, PolicyError
from policy.parser import MAX_SOURCE_BYTES

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _read(path: str) -> bytes:
    """The file's bytes. Reading stops one byte past the size limit, so a device such as
    /dev/zero cannot exhaust memory; an oversized file is reported as E115 and exit 1."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SOURCE_BYTES + 1)
            if len(data) > MAX_SOURCE_BYTES:
                size = os.fstat(handle.fileno()).st_size
                shown = f"{size} bytes" if size > MAX_SOURCE_BYTES else "an endless stream"
    except OSError as exc:
        raise SystemExit(_usage_error(f"cannot read {path}: {exc.strerror}", "check the path and permissions"))
    if len(data) > MAX_SOURCE_BYTES:
        _print_diagnostics([Diagnostic(
            "E115", f"source is larger than the {MAX_SOURCE_BYTES}-byte limit ({shown})", path, Span(1, 1, 1, 2),
            help="split the policy into smaller files; FPL policies are small by design")], False)
        raise SystemExit(EXIT_INVALID)
    return data


def _usage_error(message: str, hint: str) -> int:
    print(f"faramesh-sandbox: {message}\n  help: {hint}", file=sys.stderr)
    return EXIT_USAGE


def _print_diagnostics(diags: list[Diagnostic], as_json: bool) -> None:
    errors = sum(1 for d in diags if d.severity == "error")
    warnings = len(diags) - errors
    if as_json:
        print(json.dumps({"valid": errors == 0, "errors": errors, "warnings": warnings,
                          "diagnostics": [d.to_dict() for d in diags]}, indent=2))
        return
    for d in diags:
        print(d.render(), file=sys.stderr)
    if errors:
        print(f"{errors} error{'s' if errors != 1 else ''}", file=sys.stderr)


# ---------------------------------------------------------------- check

def add_check_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="machine-readable diagnostics on stdout")


def check_main(args) -> int:
    sources = [(f, _read(f)) for f in args.files]
    diags = sorted(policy.check_sources(sources), key=lambda d: d.sort_key)
    _print_diagnostics(diags, args.json)
    if not args.json and not term.quiet() and not any(d.severity == "error" for d in diags):
        print(f"ok: {len(sources)} file{'s' if len(sources) != 1 else ''} valid", file=sys.stderr)
    return EXIT_INVALID if any(d.severity == "error" for d in diags) else EXIT_OK


# ---------------------------------------------------------------- eval

def add_eval_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy layers, in order")
    parser.add_argument("--tool", required=True, help="tool name, e.g. stripe/refund or fs/read")
    parser.add_argument("--args", default="{}", help='tool arguments as a JSON object, e.g. \'{"amount": 800}\'')
    parser.add_argument("--session", metavar="FILE", help="keep session state (counts, history, budgets) in FILE between calls")
    parser.add_argument("--session-id", default="cli", help="session id (default: cli)")
    parser.add_argument("--agent", default="", help="agent id of the caller")


def _load_layers(files: list[str]):
    layers = []
    for f in files:
        layers.append(policy.load_policy(_read(f), f))
    return layers


def _parse_args_json(text: str):
    """The --args object, or an exit code after printing why it is unusable."""
    example = 'pass a JSON object, e.g. --args \'{"amount": 800}\''
    try:
        call_args = json.loads(text)
    except json.JSONDecodeError as exc:
        return _usage_error(f"--args is not valid JSON: {exc.msg} at column {exc.colno}", example)
    except RecursionError:
        return _usage_error("--args nests too deeply", "flatten the arguments; tool calls are shallow maps")
    except ValueError as exc:  # e.g. an integer with thousands of digits
        return _usage_error(f"--args is not valid JSON: {exc}", example)
    if not isinstance(call_args, dict):
        return _usage_error("--args must be a JSON object", 'wrap the values in braces: --args \'{"path": "/tmp/x"}\'')
    return call_args


def _load_session(path: Path):
    """The stored sessions, or an exit code after printing why the file is unusable."""
    fresh = "delete it to start a fresh session"
    if path.is_dir():
        return _usage_error(f"session file {path} is a directory", "name a file, e.g. --session session.json")
    if not path.parent.is_dir():
        return _usage_error(f"session file {path} cannot be created: {path.parent} does not exist",
                            "create the directory first, or choose another path")
    if not path.exists():
        return policy.SessionStore()
    try:
        return policy.SessionStore.from_json(path.read_text())
    except OSError as exc:
        return _usage_error(f"session file {path} cannot be read: {exc.strerror}", "check its permissions")
    except RecursionError:
        return _usage_error(f"session file {path} is not a valid session: it nests too deeply", fresh)
    except (ValueError, KeyError, TypeError) as exc:
        return _usage_error(f"session file {path} is not a valid session: {exc}", fresh)


def eval_main(args) -> int:
    call_args = _parse_args_json(args.args)
    if isinstance(call_args, int):
        return call_args
    try:
        layers = _load_layers(args.files)
    except PolicyError as exc:
        _print_diagnostics(exc.diagnostics, False)
        return EXIT_INVALID
    session_path = Path(args.session) if args.session else None
    store = _load_session(session_path) if session_path else policy.SessionStore()
    if isinstance(store, int):
        return store
    engine = policy.Engine(layers, store=store)
    call = policy.ToolCall(tool=args.tool, args=call_args, session_id=args.session_id,
                           agent_id=args.agent, call_id=f"cli-{time.time_ns()}", timestamp=time.time())
    decision = engine.decide(call)
    if session_path:
        try:
            session_path.write_text(store.to_json())
        except OSError as exc:
            return _usage_error(f"session file {session_path} cannot be written: {exc.strerror}",
                                "check the path and permissions")
    print(json.dumps(decision.to_dict(), indent=2))
    return EXIT_OK


# ---------------------------------------------------------------- fmt

def add_fmt_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--write", "-w", action="store_true", help="rewrite FILE in place")
    parser.add_argument("--json", action="store_true",
                        help='print {"file", "changed", "formatted"} (the canonical text) instead of the text')


def fmt_main(args) -> int:
    text = _read(args.file)
    try:
        doc = policy.parse(text, args.file)
    except PolicyError as exc:
        _print_diagnostics(exc.diagnostics, False)
        return EXIT_INVALID
    out = policy.format_document(doc)
    if args.json:
        print(json.dumps({"file": args.file, "changed": out.encode() != text, "formatted": out}))
    if args.write:
        try:
            Path(args.file).write_text(out)
        except OSError as exc:
            return _usage_error(f"cannot write {args.file}: {exc.strerror}", "check the path and permissions, "
                                "or print to stdout without --write")
    elif not args.json:
        sys.stdout.write(out)
    return EXIT_OK
