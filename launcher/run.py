"""``faramesh-sandbox run``: CMD in its own namespaces, every trapped syscall an FPL decision.

Exit status: the agent's; 128+N when signal N killed it; 126 when CMD cannot run (including an
exec the policy denies); 127 when CMD is not found; 125 when the sandbox cannot be set up or a
policy is invalid (one line on stderr says what failed, with a hint)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys

import policy
from launcher import approvals, cleanup, control, limits_cfg, notify, term
from launcher.audit import AuditLog, AuditTrail
from launcher.audit_bound import DEFAULT_BUDGET, MAX_RECORD, Bounded
from launcher.audit_store import AuditStore, AuditStoreError, default_path
from launcher.report import EXIT_VIOLATIONS, RunReport
from launcher.run_dns import parse_upstream, start_dns
from launcher.run_egress import add_arguments as add_egress_arguments, start_egress
from launcher.sdk_run import serve_run
from policy.decision import Decision, deny
from sandbox import landlock, traced
from sandbox.errors import SandboxError
from sandbox.launch import EXIT_SETUP, launch, late_release_supported
from sandbox.netops import NetContext
from sandbox.seccomp import ALLOW
from sandbox.spec import SandboxSpec


USAGE_HINT = "faramesh-sandbox run --policy FILE [--audit PATH] -- CMD [ARGS...]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", action="append", default=[], metavar="FILE",
                        help="FPL policy file; repeat to layer policies (later ones can only tighten)")
    parser.add_argument("--audit", metavar="PATH", help="append one JSON line per decision to PATH")
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--audit-db", metavar="PATH",
                       help=f"the hash-chained audit store (default: $FARAMESH_AUDIT_DB, else {default_path()})")
    store.add_argument("--no-audit-db", action="store_true",
                       help="keep no audit store (docs/audit.md says when that makes sense)")
    parser.add_argument("--audit-max-bytes", type=audit_budget, default=DEFAULT_BUDGET, metavar="SIZE",
                        help="bytes of audit records the run may write (default 1G; `none`); once spent, every call "
                             "that needs a record is denied (docs/audit.md)")
    parser.add_argument("--approve-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="deny a deferred call nobody approved after this long (default 300)")
    parser.add_argument("--max-pending", type=int, default=approvals.DEFAULT_MAX_PENDING, metavar="N",
                        help="deny at once a deferred call beyond N waiting ones "
                             f"(default {approvals.DEFAULT_MAX_PENDING}); docs/approvals.md")
    parser.add_argument("--no-prompt", action="store_true",
                        help="never ask on this terminal; answer with `faramesh-sandbox approvals`")
    parser.add_argument("--prompt-shared-terminal", action="store_true",
                        help="ask on this terminal even when the agent writes to it too (by default only announced "
                             "there: the agent could draw over the question); docs/approvals.md")
    parser.add_argument("--report", metavar="FILE",
                        help="write a JSON summary of the run (every deny and defer) to FILE; traps every "
                             "category, as --audit-all (docs/ci.md)")
    parser.add_argument("--fail-on-deny", action="store_true",
                        help=f"exit {EXIT_VIOLATIONS} when the agent succeeded but any call was denied or deferred")
    parser.add_argument("--audit-all", action="store_true",
                        help="trap every category, even ones the policy decides unconditionally, and "
                             "answer every call in Python with its record written first")
    parser.add_argument("--fast-repeats", action="store_true",
                        help="answer repeated identical reads, connects and execs in compiled code and "
                             "write their audit records just after (within 20 ms); docs/run.md")
    parser.add_argument("--dns-upstream", action="append", default=[], metavar="IP[:PORT]",
                        help="resolver the agent's lookups are forwarded to (repeatable; default: the "
                             "nameservers of this host's /etc/resolv.conf)")
    parser.add_argument("--no-sdk-socket", action="store_true",
                        help="no socket for agents using the faramesh SDK (docs/sdk.md)")
    parser.add_argument("--same-cpu", action="store_true",
                        help="run the agent and the supervisor on one CPU: cheaper trapped calls on an idle "
                             "machine, but the agent gets a single core (docs/run.md)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print set-up notes on stderr")
    parser.add_argument("--json", action="store_true",
                        help="when the agent exits, print the run's summary (as --report writes it) as one JSON "
                             "line on stderr; stdout stays the agent's. Traps every category, as --report")
    limits_cfg.add_arguments(parser)
    add_egress_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                        help="the program to run and its arguments")


def start_parts(hooks) -> None:
    """launch()'s ``started``, before CMD runs: the DNS stub, the HTTP egress and the SDK socket
    start serving, the status line redrawing. One that cannot (no thread or socket left) ends the
    run, init and the agent with it, as a set-up error (exit 125, one line), not a traceback."""
    for hook in hooks:
        try:
            hook()
        except (OSError, RuntimeError) as err:
            raise SandboxError("start_parts", f"{type(err).__name__}: {err}",
                               "the host ran out of threads, file descriptors or ports; "
                               "free some and run again") from None


def main(args: argparse.Namespace, wrap_decide=None, late=None, loaded=None) -> int:
    """``wrap_decide(decide) -> decide``: how `learn` records calls while deciding them.
    ``late`` (launcher/serve.py): the sandbox is made first, and the command comes from
    ``late.wait`` (sandbox.launch.launch); ``loaded``: the policies, already read by load_policies."""
    command = list(getattr(args, "command", None) or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if not command and late is None:
        return _fail("no command given", f"usage: {USAGE_HINT}")
    if not args.policy:
        return _fail("no policy given", "pass --policy FILE; a file with `agent a { default permit }` "
                                        "permits everything while still auditing")
    if not args.approve_timeout >= 0:
        return _fail(f"--approve-timeout {args.approve_timeout} is negative", "give seconds, e.g. 300")
    if args.report and not os.access(os.path.dirname(os.path.abspath(args.report)), os.W_OK):
        return _fail(f"cannot write report {args.report}", "the directory must exist and be writable")
    for upstream in args.dns_upstream:
        try:
            parse_upstream(upstream)
        except ValueError as err:
            return _fail(f"--dns-upstream {upstream}: {err}", "give an IP address, e.g. 192.0.2.53 or [2001:db8::53]:5353")
    if args.max_pending < 0:
        return _fail(f"--max-pending {args.max_pending} is negative", "give a count, e.g. 16")
    try:
        channels = notify.load_channels()
    except notify.ConfigError as err:
        return _fail(str(err), "see docs/approvals.md for the [notify.NAME] format")
    try:
        limits = limits_cfg.resolve(args)
    except (limits_cfg.LimitError, notify.ConfigError) as err:
        return _fail(str(err), "see the Limits section of docs/run.md")
    loaded = loaded or load_policies(args.policy)
    if isinstance(loaded, int):
        return loaded
    layers, sources = loaded
    cwd = None  # a late command brings its own
    if late is None:
        try:
            cwd = os.getcwd()
        except OSError as err:
            return _fail(f"cannot read the working directory: {err.strerror}", "cd to a directory that exists")
    engine = policy.Engine(layers, policy.SessionStore(), defer_ttl=args.approve_timeout)
    decide = _fail_closed(engine.decide if wrap_decide is None else wrap_decide(engine.decide))
    if wrap_decide is None:  # learn mode must see every call: nothing is repeated for it
        decide.decision_keys = engine.decision_keys
    session_id = secrets.token_hex(6)
    spec = SandboxSpec(
        argv=command,
        cwd=cwd,
        trapped=frozenset(row.name for row in traced.TABLE),
        kernel_decided={} if args.audit_all or args.report or args.fail_on_deny or args.json else kernel_decided(engine),
        approve_timeout=args.approve_timeout,
        audit_all=args.audit_all,
        fast_repeats=args.fast_repeats,
        session_id=session_id,
        verbose=args.verbose,
        same_cpu=args.same_cpu,
        net=NetContext.for_host(),  # the DNS stub adds names= and dns_redirect= (docs/network.md)
        limits=limits,
    )
    audit = None
    if args.audit:
        try:
            audit = AuditTrail(log=AuditLog(args.audit))
        except OSError as err:
            return _fail(f"cannot open audit log {args.audit}: {err.strerror}",
                         "the directory must exist and be writable")
    if not args.no_audit_db:
        try:
            audit = audit or AuditTrail()
            audit.store = AuditStore(args.audit_db or default_path())
        except AuditStoreError as err:
            audit.close()
            return _fail(str(err), "pass --audit-db PATH (a writable place), or --no-audit-db")
        _hide_store(spec, args.audit_db or default_path())
    spec.landlock, floor_lines = landlock.for_run(engine.envelope, spec.kernel_decided)  # docs/landlock.md
    if args.verbose:
        print(f"faramesh-sandbox: session {session_id}, {len(layers)} policy layer(s), "
              f"{len(spec.trapped)} trapped syscalls, decided in the kernel: "
              f"{', '.join(sorted(spec.kernel_decided)) or 'none'}", file=sys.stderr)
        for line in floor_lines:
            print(f"faramesh-sandbox: {line}", file=sys.stderr)
    sdk = dns = egress = report = None
    if args.report or args.fail_on_deny or args.json:  # sees every record: syscalls, lookups, SDK calls, approvals
        report = RunReport(session_id, command, args.policy)
        audit = report.tee(audit)
    status_line = None
    if late is None and term.StatusLine.wanted():  # live counts on the terminal (docs/run.md, Terminal output)
        counter = term.DecisionCounter()
        audit = counter.tee(audit)
        status_line = term.StatusLine(counter, sys.stderr.fileno())
    if audit is not None:  # the one place records are shortened and counted: every writer and sink is behind it
        audit = Bounded(audit, args.audit_max_bytes, _audit_budget_spent)
    try:  # forks the reaper: before any thread exists; it removes what the run leaves (docs/run.md)
        record = cleanup.record_run(session_id, control.private_dir(control.runtime_dir()))
    except (cleanup.CleanupError, control.ControlError) as err:
        print(f"faramesh-sandbox: warning: {err}; a launcher killed by SIGKILL would leave files behind",
              file=sys.stderr)
        record = cleanup.NoRecord()
    service = _start_approvals(spec, args, channels)  # forks: before any thread exists
    approve = service.approver(audit, engine.commit_approved) if service is not None else None
    if status_line is not None and approve is not None:
        approve = status_line.counter.approvals(approve)  # counts the calls waiting for a human
    try:
        if not args.no_sdk_socket:  # same engine, session and audit as the syscalls
            sdk = serve_run(spec, decide, audit=audit, approve=approve)
            record.add("tree", sdk.host_dir)
            spec.net = spec.net.trusting(sdk.agent_socket_path)  # the SDK socket is the sandbox's own
        dns = start_dns(spec, decide, audit, args.dns_upstream)
        egress = start_egress(spec, decide, audit, approve, sources, args)
        hooks = [part.start for part in (dns, egress) if part is not None] + ([sdk.serve] if sdk is not None else [])
        hooks += [status_line.start] if status_line is not None else []
        late = _late_or_now(spec, late, hooks)
        status = launch(spec, decide, audit=audit, approve=approve, started=lambda: start_parts(hooks), late=late)
        if status_line is not None:
            status_line.stop()
        return _finish_report(report, args, status)
    except SandboxError as err:
        if status_line is not None:
            status_line.stop()  # erased before the error is printed
        print(f"faramesh-sandbox: {err.render()}", file=sys.stderr)
        return EXIT_SETUP
    finally:  # the status line first: erased before anything else is printed
        _close_each([("status line", status_line, "stop"), ("DNS stub", dns, "close"),
                     ("egress proxy", egress, "close"), ("SDK socket", sdk, "close"),
                     ("approval service", service, "close"), ("audit", audit, "close"),
                     ("run record", record, "finish")])


def load_policies(paths: list[str]):
    """(layers, sources) of the policy files, sources as (path, text) for the egress
    (docs/egress.md); or EXIT_SETUP once what is wrong is printed. Warnings are printed too."""
    layers, sources = [], []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            return _fail(f"cannot read policy {path}: {getattr(err, 'strerror', None) or err}",
                         "check the path given to --policy")
        try:
            layers.append(policy.load_policy(text, path))
            sources.append((path, text))
        except policy.PolicyError as err:
            print(err.render(), file=sys.stderr)
            return EXIT_SETUP
        for warning in layers[-1].warnings:
            print(warning.render(), file=sys.stderr)
    return layers, sources


def _late_or_now(spec: SandboxSpec, late, hooks: list):
    """``late`` for launch() when init can take the command at its release; otherwise (init in
    Python) the command is waited for here, before the sandbox is made, and None returned: its
    relay then starts with the run's other parts, once the sandbox exists."""
    if late is None or late_release_supported(spec):
        return late
    command = late.wait(0)
    spec.argv, spec.env, spec.cwd = command.argv, command.env, command.cwd
    hooks.append(late.start_relay)
    return None


def _audit_budget_spent(budget: int) -> None:
    print(f"faramesh-sandbox: warning: the run's audit budget of {budget} bytes is spent: from now on every "
          "call that needs a record is denied (AUDIT_WRITE_FAILED) — hint: raise it with --audit-max-bytes",
          file=sys.stderr, flush=True)


def audit_budget(text: str) -> int | None:
    """--audit-max-bytes: a size (512M, 2G, bytes) or ``none``."""
    if text.strip().lower() == "none":
        return None
    found = limits_cfg.SIZE.match(text)
    value = int(float(found.group(1)) * limits_cfg.SIZE_UNITS[found.group(2).upper()]) if found else 0
    if value < MAX_RECORD:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size of at least 64K: write e.g. 512M, 2G, or none")
    return value


def _close_each(parts: list) -> None:
    """Close every part even when one before it fails: a failure is one warning line, never a
    traceback that would skip the rest (an SDK socket or audit left open)."""
    for name, part, method in parts:
        if part is None:
            continue
        try:
            getattr(part, method)()
        except Exception as err:  # noqa: BLE001 - teardown goes on whatever one part raises
            print(f"faramesh-sandbox: warning: closing the {name} failed: {type(err).__name__}: {err}",
                  file=sys.stderr)


def _start_approvals(spec: SandboxSpec, args: argparse.Namespace, channels: dict):
    """The approval service (docs/approvals.md), its directory hidden from the agent; without it
    a deferred call waits out --approve-timeout and is denied."""
    try:
        directory = control.private_dir(control.runtime_dir())
        service = approvals.ApprovalService(spec.session_id, directory, max_pending=args.max_pending,
                                            prompt=_prompt_mode(args), channels=channels)
    except (control.ControlError, approvals.ServiceError) as err:
        print(f"faramesh-sandbox: warning: approvals unavailable ({err}); deferred calls are denied "
              "after --approve-timeout", file=sys.stderr)
        return None
    spec.hidden.append(directory)
    return service


def _prompt_mode(args: argparse.Namespace):
    """"ask" on the terminal, "notice" there when the agent writes to it too (it could draw over
    the question), or False (--no-prompt)."""
    if args.no_prompt:
        return False
    from launcher.prompt import agent_shares_terminal

    return "ask" if args.prompt_shared_terminal or not agent_shares_terminal() else "notice"


def _hide_store(spec: SandboxSpec, path: str) -> None:
    """Keep the agent out of the audit store: its directory is covered by an empty tmpfs inside
    the sandbox when the store has the directory to itself (docs/audit.md)."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        dedicated = all(entry.startswith(name) for entry in os.listdir(directory))
    except OSError:
        dedicated = False
    if dedicated and directory != "/":
        spec.hidden.append(directory)
    else:
        print(f"faramesh-sandbox: warning: the audit store's directory {directory} holds other files, so the "
              "agent is not kept out of it — hint: give --audit-db a directory of its own", file=sys.stderr)


def _finish_report(report: RunReport | None, args: argparse.Namespace, status: int) -> int:
    if report is None:
        return status
    if args.json:
        print(json.dumps(report.summary(status), default=str), file=sys.stderr, flush=True)
    if args.report:
        try:
            report.write(args.report, status)
        except OSError as err:
            print(f"faramesh-sandbox: cannot write report {args.report}: {err.strerror} — hint: the directory "
                  "must exist and be writable", file=sys.stderr)
            return EXIT_SETUP
    if args.fail_on_deny and status == 0 and report.violated:
        print(f"faramesh-sandbox: {report.violation_count} call(s) denied or deferred (--fail-on-deny)",
              file=sys.stderr)
        return EXIT_VIOLATIONS
    return status


# A link or rename is also a read and a write of its source and a write of its destination, a
# rename a delete of its source and a rename of all a directory holds (sandbox/supervisor.py
# _implied_calls, _perform_rename): the kernel may permit one only when all that is permitted
# unconditionally as well. A refusal needs no such check.
PERMIT_NEEDS = {"fs/link": ("fs/read", "fs/write"),
                "fs/rename": ("fs/read", "fs/write", "fs/delete", "fs/mkdir", "fs/link")}


def kernel_decided(engine) -> dict[str, int]:
    """Tool categories the policy decides the same way for every call, for the
    seccomp filter to answer with no supervisor round trip (no audit record:
    --audit-all turns this off)."""
    decided = {}
    for tool in sorted({t for row in traced.TABLE for t in row.tool.split("|")}):
        if tool.startswith("net/"):
            continue  # always the supervisor's: DNS redirect and address guard (docs/network.md)
        effect = engine.static_effect(tool)
        if effect is policy.Effect.PERMIT and all(engine.static_effect(needed) is policy.Effect.PERMIT
                                                  for needed in PERMIT_NEEDS.get(tool, ())):
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
