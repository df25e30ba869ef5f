"""The web page's HTTP server: static page files plus a small JSON API, on 127.0.0.1 only.

Every request must name this server in its Host header (127.0.0.1:PORT or localhost:PORT), so a
page on another site cannot reach it through DNS rebinding. Every API request must carry the
per-start access token as ``Authorization: Bearer``; a cross-site form can set neither that
header nor the JSON content type an answer needs. The page files hold no secret and load without
the token (it travels in the URL fragment, which browsers never send)."""

from __future__ import annotations

import hmac
import json
import sys
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from launcher import audit_store, control, ui_audit
from launcher.ui_live import Hub, valid_session

LOOPBACK = "127.0.0.1"
MAX_BODY = 4096
KEEPALIVE = 15.0  # seconds between event-stream comments, so a dead page is noticed
ANSWERS = ("approve", "deny")
SCOPES = ("once", "session")
APPROVER = "web page"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# URL path -> (file in launcher/ui_static, content type)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui.js": ("ui.js", "text/javascript; charset=utf-8"),
    "/ui.css": ("ui.css", "text/css; charset=utf-8"),
}


class UIError(Exception):
    """The server cannot start as asked; the message has the fix."""


class Refusal(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class UIServer(ThreadingHTTPServer):
    daemon_threads = True  # open event streams never hold up shutdown

    def __init__(self, port: int, token: str, hub: Hub, db: str | None, *, host: str = LOOPBACK,
                 verbose: bool = False):
        if host != LOOPBACK:
            raise UIError(f"the approvals page serves on {LOOPBACK} only, not {host!r}: anyone who can reach "
                          "it could answer approvals — use an SSH tunnel (ssh -L) to reach it from elsewhere")
        self.token, self.hub, self.db, self.verbose = token, hub, db, verbose
        self.pages = {path: (_page(name), kind) for path, (name, kind) in STATIC.items()}
        try:
            super().__init__((host, port), Handler)
        except OSError as err:
            raise UIError(f"cannot listen on {host}:{port}: {err.strerror} — pick another --port") from None
        self.port = self.server_address[1]
        self.hosts = {f"{LOOPBACK}:{self.port}", f"localhost:{self.port}"}
        self.origins = {f"http://{host}" for host in self.hosts}

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/#token={self.token}"


def _page(name: str) -> bytes:
    try:
        return resources.files("launcher").joinpath("ui_static", name).read_bytes()
    except OSError as err:
        raise UIError(f"the page file ui_static/{name} is missing ({err.strerror}) — reinstall faramesh-sandbox") from None


class Handler(BaseHTTPRequestHandler):
    server: UIServer
    server_version = "faramesh-sandbox-ui"

    def version_string(self) -> str:
        return self.server_version

    # -- dispatch --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch(GET_ROUTES, static=True)

    def do_POST(self) -> None:
        self._dispatch(POST_ROUTES, static=False)

    def _dispatch(self, routes: dict, static: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        try:
            self._check_host()
            if static and url.path in STATIC:
                body, kind = self.server.pages[url.path]
                return self._send(HTTPStatus.OK, body, kind)
            route = routes.get(url.path)
            if route is None:
                raise Refusal(HTTPStatus.NOT_FOUND, f"no such page {url.path}")
            self._check_token()
            route(self, urllib.parse.parse_qs(url.query))
        except Refusal as refusal:
            self._json(refusal.status, {"ok": False, "error": str(refusal)})
        except OSError:
            pass  # the browser went away mid-answer
        except Exception as err:  # noqa: BLE001 - one request fails, the server keeps serving
            sys.stderr.write(f"faramesh-sandbox ui: {self.command} {url.path} failed: {type(err).__name__}: {err}\n")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"ok": False, "error": f"{type(err).__name__}: {err}"})

    def _check_host(self) -> None:
        if self.headers.get("Host", "") not in self.server.hosts:
            raise Refusal(HTTPStatus.MISDIRECTED_REQUEST,
                          f"this server answers only to {' or '.join(sorted(self.server.hosts))}")

    def _check_token(self) -> None:
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.server.token.encode()):
            raise Refusal(HTTPStatus.UNAUTHORIZED, "missing or wrong access token: open the URL that "
                                                   "`faramesh-sandbox ui` printed, with its #token=")

    # -- API ------------------------------------------------------------------------------------

    def _state(self, _query) -> None:
        self._json(HTTPStatus.OK, self.server.hub.state())

    def _events(self, _query) -> None:
        """Server-Sent Events: the whole state at once, then again after every change."""
        hub = self.server.hub
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        state: dict | None = hub.state()
        try:
            while not hub.stopping:
                if state is None:
                    self.wfile.write(b": keepalive\n\n")
                else:
                    self.wfile.write(b"event: state\ndata: " + json.dumps(state, default=str).encode() + b"\n\n")
                    seen = state["version"]
                self.wfile.flush()
                state = hub.wait_state(seen, KEEPALIVE)
        except OSError:
            pass  # the page went away

    def _audit(self, query) -> None:
        db = self._db()
        try:
            limit, filters = ui_audit.parse_query(query)
        except ui_audit.QueryError as err:
            raise Refusal(HTTPStatus.BAD_REQUEST, str(err)) from None
        try:
            rows = ui_audit.records(db, limit, filters)
        except audit_store.AuditStoreError as err:
            raise Refusal(HTTPStatus.NOT_FOUND, str(err)) from None
        self._json(HTTPStatus.OK, {"ok": True, "db": db, "records": rows})

    def _verify(self, _query) -> None:
        db = self._db()
        try:
            result = ui_audit.verdict(db)
        except audit_store.AuditStoreError as err:
            raise Refusal(HTTPStatus.NOT_FOUND, str(err)) from None
        self._json(HTTPStatus.OK, {"ok": True, "db": db, "verdict": result})

    def _answer(self, _query) -> None:
        request = self._body()
        session, approval, answer = request.get("session"), request.get("id"), request.get("answer")
        scope = request.get("scope", "once")
        if answer not in ANSWERS or scope not in SCOPES:
            raise Refusal(HTTPStatus.BAD_REQUEST, f"answer must be one of {ANSWERS} and scope one of {SCOPES}")
        if not isinstance(approval, str) or not 0 < len(approval) <= 64:
            raise Refusal(HTTPStatus.BAD_REQUEST, "id must be the approval id the page lists")
        if not valid_session(session) or not self.server.hub.knows(session):
            raise Refusal(HTTPStatus.NOT_FOUND, f"no live session {session!r} is shown on this page")
        try:
            reply = control.request({"op": answer, "id": approval, "scope": scope, "by": APPROVER},
                                    session, self.server.hub.directory)
        except (control.ControlError, OSError, ValueError) as err:
            raise Refusal(HTTPStatus.BAD_GATEWAY, f"session {session}: {err}") from None
        if not isinstance(reply, dict):
            raise Refusal(HTTPStatus.BAD_GATEWAY, f"session {session}: the run sent a malformed reply")
        if not reply.get("ok"):
            raise Refusal(HTTPStatus.CONFLICT, str(reply.get("error", "the run refused the answer")))
        self._json(HTTPStatus.OK, {"ok": True, "approval": reply.get("approval")})

    # -- helpers --------------------------------------------------------------------------------

    def _db(self) -> str:
        if self.server.db is None:
            raise Refusal(HTTPStatus.NOT_FOUND, "no audit store: start the page with --db PATH")
        return self.server.db

    def _body(self) -> dict:
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.server.origins:
            raise Refusal(HTTPStatus.FORBIDDEN, f"requests from {origin} may not answer approvals")
        if self.headers.get_content_type() != "application/json":
            raise Refusal(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the answer as application/json")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise Refusal(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required") from None
        if not 0 < length <= MAX_BODY:
            raise Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body must be 1..{MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            raise Refusal(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Refusal(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def end_headers(self) -> None:
        """Every response gets the security headers, error pages from the base class included."""
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def _json(self, status: HTTPStatus, obj: dict) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="faramesh-sandbox"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        if self.server.verbose:
            sys.stderr.write(f"faramesh-sandbox ui: {self.address_string()} {format % args}\n")


GET_ROUTES = {"/api/state": Handler._state, "/api/events": Handler._events, "/api/audit": Handler._audit,
              "/api/verify": Handler._verify}
POST_ROUTES = {"/api/answer": Handler._answer}
