"""``faramesh-sandbox run``: CMD in its own namespaces, every trapped syscall an FPL decision.

Exit status: the agent's; 128+N when signal N killed it; 126 when CMD cannot run (including an
exec the policy denies); 127 when CMD is not found; 125 when the sandbox cannot be set up or a
policy is invalid (one line on stderr says what failed, with a hint)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys

import policy
from launcher.audit import AuditLog
from policy.decision import Decision, deny
from sandbox import traced
from sandbox.errors import SandboxError
from sandbox.launch import EXIT_SETUP, launch
from sandbox.seccomp import ALLOW
from sandbox.spec import SandboxSpec


USAGE_HINT = "faramesh-sandbox run --policy FILE [--audit PATH] -- CMD [ARGS...]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", action="append", default=[], metavar="FILE",
                        help="FPL policy file; repeat to layer policies (later ones can only tighten)")
    parser.add_argument("--audit", metavar="PATH", help="append one JSON line per decision to PATH")
    parser.add_argument("--approve-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="deny a deferred call nobody approved after this long (default 300)")
    parser.add_argument("--audit-all", action="store_true",
                        help="trap every category, even ones the policy decides unconditionally")
    parser.add_argument("-v", "--verbose", action="store_true", help="print set-up notes on stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                        help="the program to run and its arguments")


def main(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        return _fail("no command given", f"usage: {USAGE_HINT}")
    if not args.policy:
        return _fail("no policy given", "pass --policy FILE; a file with `agent a { default permit }` "
                                        "permits everything while still auditing")
    if not args.approve_timeout >= 0:
        return _fail(f"--approve-timeout {args.approve_timeout} is negative", "give seconds, e.g. 300")
    layers = []
    for path in args.policy:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            return _fail(f"cannot read policy {path}: {getattr(err, 'strerror', None) or err}",
                         "check the path given to --policy")
        try:
            layers.append(policy.load_policy(text, path))
        except policy.PolicyError as err:
            print(err.render(), file=sys.stderr)
            return EXIT_SETUP
        for warning in layers[-1].warnings:
            print(warning.render(), file=sys.stderr)
    try:
        cwd = os.getcwd()
    except OSError as err:
        return _fail(f"cannot read the working directory: {err.strerror}", "cd to a directory that exists")
    engine = policy.Engine(layers, policy.SessionStore())
    session_id = secrets.token_hex(6)
    spec = SandboxSpec(
        argv=command,
        cwd=cwd,
        trapped=frozenset(row.name for row in traced.TABLE),
        kernel_decided={} if args.audit_all else kernel_decided(engine),
        approve_timeout=args.approve_timeout,
        audit_all=args.audit_all,
        session_id=session_id,
        verbose=args.verbose,
    )
    audit = None
    if args.audit:
        try:
            audit = AuditLog(args.audit)
        except OSError as err:
            return _fail(f"cannot open audit log {args.audit}: {err.strerror}",
                         "the directory must exist and be writable")
    if args.verbose:
        print(f"faramesh-sandbox: session {session_id}, {len(layers)} policy layer(s), "
              f"{len(spec.trapped)} trapped syscalls, decided in the kernel: "
              f"{', '.join(sorted(spec.kernel_decided)) or 'none'}", file=sys.stderr)
    try:
        return launch(spec, _fail_closed(engine.decide), audit=audit)
    except SandboxError as err:
        print(f"faramesh-sandbox: {err.render()}", file=sys.stderr)
        return EXIT_SETUP
    finally:
        if audit is not None:
            audit.close()


def kernel_decided(engine) -> dict[str, int]:
    """Tool categories the policy decides the same way for every call, for the
    seccomp filter to answer with no supervisor round trip (no audit record:
    --audit-all turns this off)."""
    decided = {}
    for tool in sorted({t for row in traced.TABLE for t in row.tool.split("|")}):
        effect = engine.static_effect(tool)
        if effect is policy.Effect.PERMIT:
            decided[tool] = ALLOW
        elif effect is policy.Effect.DENY:
            decided[tool] = traced.refusal_errno(tool)
    return decided


def _fail_closed(decide):
    """The engine promises never to raise; if it ever does, the call is denied."""
    def guarded(call) -> Decision:
        try:
            return decide(call)
        except Exception as exc:  # noqa: BLE001 - fail closed on any evaluation failure
            return deny("ENGINE_ERROR", f"policy evaluation failed: {type(exc).__name__}")
    return guarded


def _fail(what: str, hint: str) -> int:
    print(f"faramesh-sandbox: {what} — hint: {hint}", file=sys.stderr)
    return EXIT_SETUP
