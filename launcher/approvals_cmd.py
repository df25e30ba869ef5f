"""``faramesh-sandbox approvals list|show|approve|deny|watch``: answer a run's deferred calls from
another terminal, through the run's control socket (launcher/control.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from launcher import control, term
from launcher.prompt import describe


WATCH_STYLES = {"pending": "DEFER", "approved": "PERMIT"}  # an approval's state -> its colour


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", metavar="ID", help="the run to talk to (needed when several are live)")
    parser.add_argument("--json", action="store_true", help="print the protocol's JSON instead of text")


def _with_id(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("id", metavar="ID", help="the approval id, as `approvals list` shows it")


def add_list_arguments(parser):
    _common(parser)


def add_show_arguments(parser):
    _with_id(parser)


def _add_answer_arguments(parser):
    _with_id(parser)
    parser.add_argument("--for-session", action="store_true",
                        help="also answer every later call with the same tool, arguments and origin (sandbox or sdk) in this run")


add_approve_arguments = add_deny_arguments = _add_answer_arguments


def add_watch_arguments(parser):
    _common(parser)


def _ask(args, request: dict) -> dict | None:
    try:
        reply = control.request(request, args.session)
    except (control.ControlError, OSError, ValueError) as err:
        print(f"faramesh-sandbox: {err}", file=sys.stderr)
        return None
    if not reply.get("ok"):
        print(f"faramesh-sandbox: {reply.get('error')}", file=sys.stderr)
        return None
    return reply


def _cells(view: dict) -> list[str]:
    """ID, TOOL, ORIGIN, ARGUMENTS (JSON, ASCII only: a name cannot disguise itself), RULE, EXPIRES."""
    left = max(0, round(view["expires_at"] - time.time()))
    args = {k: v for k, v in view["args"].items() if k not in ("session",)}
    return [view["id"], view["tool"], view.get("origin") or "unknown", json.dumps(args, default=str),
            view["rule_id"] or "-", f"in {left}s"]


def _line(view: dict) -> str:
    approval_id, tool, origin, args, rule, expires = _cells(view)
    return f"{approval_id}  {tool:<12} {origin:<7} {args}  rule {rule}  expires {expires}"


def list_main(args) -> int:
    reply = _ask(args, {"op": "list"})
    if reply is None:
        return 1
    if args.json:
        print(json.dumps(reply))
    elif not reply["pending"]:
        print(f"no approvals pending in session {reply['session']}")
    else:
        rows = [["ID", "TOOL", "ORIGIN", "ARGUMENTS", "RULE", "EXPIRES"]] + [_cells(view) for view in reply["pending"]]
        for line in term.table(rows, {1: lambda _: "DEFER"}):
            print(line)
    return 0


def show_main(args) -> int:
    reply = _ask(args, {"op": "show", "id": args.id})
    if reply is None:
        return 1
    view = reply["approval"]
    if args.json:
        print(json.dumps(view))
        return 0
    print(describe(view).strip("\n"))
    print(f"  state:  {view['state']}" + (f" by {view['approver']} ({view['scope']})" if view["approver"] else ""))
    for outcome in view["deliveries"]:
        print(f"  notify: {outcome['channel']} via {outcome['via']}: "
              + ("delivered" if outcome["ok"] else f"failed: {outcome.get('error')}"))
    return 0


def _answer(args, op: str) -> int:
    scope = "session" if args.for_session else "once"
    reply = _ask(args, {"op": op, "id": args.id, "scope": scope})
    if reply is None:
        return 1
    view = reply["approval"]
    print(json.dumps(view) if args.json else f"{view['id']} {view['state']} ({scope})")
    return 0


def approve_main(args) -> int:
    return _answer(args, "approve")


def deny_main(args) -> int:
    return _answer(args, "deny")


def watch_main(args) -> int:
    try:
        for message in control.watch(args.session):
            if args.json:
                print(json.dumps(message), flush=True)
            elif "event" in message:
                view = message["approval"]
                state = "pending" if message["event"] == "pending" else f"{view['state']} by {view['approver']}"
                style = WATCH_STYLES.get(view["state"], "DENY")
                print(f"{term.paint(f'{state:<10}', style)} {_line(view)}", flush=True)
            elif not message.get("ok"):
                print(f"faramesh-sandbox: {message.get('error')}", file=sys.stderr)
                return 1
    except control.ControlError as err:
        print(f"faramesh-sandbox: {err}", file=sys.stderr)
        return 1
    return 0
