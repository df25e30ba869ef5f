"""``faramesh-sandbox ui``: a local web page that lists the deferred calls of live runs as they
arrive, answers them (approve, approve for the session, deny) and shows the audit trail (docs/ui.md).

It listens on 127.0.0.1 only and prints a URL carrying a fresh access token; without that token
the page can read and answer nothing."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import urllib.parse
import webbrowser

from launcher import audit_store, control
from launcher.ui_live import Hub, valid_session
from launcher.ui_server import UIError, UIServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, metavar="N",
                        help="the port on 127.0.0.1 (default 0: any free one, printed at start)")
    parser.add_argument("--session", metavar="S", help="show only this run (default: every live run)")
    parser.add_argument("--db", metavar="PATH", default=None,
                        help=f"the audit store (default: $FARAMESH_AUDIT_DB, else {audit_store.default_path()})")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request on stderr")
    parser.add_argument("--json", action="store_true", help='print {"url": URL, "port": N} as one JSON line at start')


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        return _fail(f"--port {args.port} is not a port number (0..65535; 0 picks a free one)")
    if args.session is not None and not valid_session(args.session):
        return _fail(f"--session {args.session!r} is not a session id (letters, digits, . _ -), "
                     "as `faramesh-sandbox run` prints it")
    try:
        directory = control.runtime_dir()
    except control.ControlError as err:
        return _fail(str(err))
    hub = Hub(directory, args.session, args.db or audit_store.default_path()).start()
    try:
        server = UIServer(args.port, secrets.token_urlsafe(32), hub, hub.db, verbose=args.verbose)
    except UIError as err:
        hub.stop()
        return _fail(str(err))
    if args.json:
        print(json.dumps({"url": server.url, "port": urllib.parse.urlsplit(server.url).port}), flush=True)
    else:
        print(f"faramesh-sandbox ui: approvals page at {server.url}", flush=True)
        print("faramesh-sandbox ui: the token in that URL lets anyone on this machine answer approvals; "
              "stop with Ctrl-C", flush=True)
    if args.open:
        webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
        server.server_close()
    return 0


def _fail(message: str) -> int:
    print(f"faramesh-sandbox ui: {message}", file=sys.stderr)
    return 2
