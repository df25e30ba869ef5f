"""``faramesh-sandbox policy check|eval|fmt``: the FPL engine from the shell."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import policy
from policy.errors import Diagnostic, PolicyError

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(_usage_error(f"cannot read {path}: {exc.strerror}", "check the path and permissions"))


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
    if not args.json and not any(d.severity == "error" for d in diags):
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


def eval_main(args) -> int:
    try:
        call_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        return _usage_error(f"--args is not valid JSON: {exc.msg} at column {exc.colno}",
                            'pass a JSON object, e.g. --args \'{"amount": 800}\'')
    if not isinstance(call_args, dict):
        return _usage_error("--args must be a JSON object", 'wrap the values in braces: --args \'{"path": "/tmp/x"}\'')
    try:
        layers = _load_layers(args.files)
    except PolicyError as exc:
        _print_diagnostics(exc.diagnostics, False)
        return EXIT_INVALID
    store = policy.SessionStore()
    session_path = Path(args.session) if args.session else None
    if session_path and session_path.exists():
        try:
            store = policy.SessionStore.from_json(session_path.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            return _usage_error(f"session file {session_path} is not a valid session: {exc}",
                                "delete it to start a fresh session")
    engine = policy.Engine(layers, store=store)
    call = policy.ToolCall(tool=args.tool, args=call_args, session_id=args.session_id,
                           agent_id=args.agent, call_id=f"cli-{time.time_ns()}", timestamp=time.time())
    decision = engine.decide(call)
    if session_path:
        session_path.write_text(store.to_json())
    print(json.dumps(decision.to_dict(), indent=2))
    return EXIT_OK


# ---------------------------------------------------------------- fmt

def add_fmt_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--write", "-w", action="store_true", help="rewrite FILE in place")


def fmt_main(args) -> int:
    text = _read(args.file)
    try:
        doc = policy.parse(text, args.file)
    except PolicyError as exc:
        _print_diagnostics(exc.diagnostics, False)
        return EXIT_INVALID
    out = policy.format_document(doc)
    if args.write:
        Path(args.file).write_text(out)
    else:
        sys.stdout.write(out)
    return EXIT_OK
