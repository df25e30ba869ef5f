"""The approvals page's HTTP API against a real broker and control socket: token, Host check,
security headers, listing, answering, the event stream and the audit trail."""

from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher.approvals import Broker
from launcher.audit_store import AuditStore
from launcher.control import ControlServer
from launcher.ui_live import Hub
from launcher.ui_server import UIError, UIServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"
DEFER = {"rule_id": "fpl-3", "reason": "writes under /tmp/x need a person", "defer_token": "dfr_9"}
RECORD = {"session": "s1", "pid": 42, "tool": "fs/write", "args": {"path": "/tmp/x/a"}, "effect": "DENY",
          "rule_id": "fpl-1", "reason_code": "RULE_DENY", "reason": "no writes"}


class Lab:
    """A run's broker and control socket, a page server watching them, and an audit store."""

    def __init__(self, tmp_path: Path, session: str = "s1"):
        self.rundir, self.db = tmp_path / "run", tmp_path / "audit.db"
        self.broker = Broker(session)
        self.control = ControlServer(self.broker, str(self.rundir))
        self.hub = Hub(str(self.rundir), None, str(self.db)).start()
        self.server = UIServer(0, TOKEN, self.hub, str(self.db))
        self.port = self.server.port
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.answers: list = []

    def defer(self, path: str = "/tmp/x/a", timeout: float = 30.0) -> threading.Thread:
        """Submit one deferred call as the supervisor would; its Resolution lands in self.answers."""
        thread = threading.Thread(target=lambda: self.answers.append(
            self.broker.submit("fs/write", {"path": path, "pid": 4242, "session": "s1"}, DEFER, timeout)))
        thread.start()
        return thread

    def wait_pending(self, count: int = 1) -> list[dict]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pending = self.hub.state()["pending"]
            if len(pending) >= count:
                return pending
            time.sleep(0.02)
        raise AssertionError(f"{count} approval(s) never reached the page server")

    def close(self) -> None:
        self.broker.close()
        self.server.shutdown()
        self.server.server_close()
        self.hub.stop()
        self.control.close()


@pytest.fixture
def lab(tmp_path: Path):
    started = Lab(tmp_path)
    yield started
    started.close()


def call(target: Lab | UIServer, method: str, path: str, *, token: str | None = TOKEN, host: str | None = None,
         body: dict | None = None, headers: dict | None = None) -> tuple[int, dict, http.client.HTTPMessage]:
    """One request to the page server of ``target``; the reply's JSON (or raw bytes) and headers."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
    sent = {"Host": host or f"127.0.0.1:{target.port}", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    parsed = json.loads(raw) if response.getheader("Content-Type") == "application/json" else {"raw": raw}
    return response.status, parsed, response.headers


def test_api_without_token_is_401(lab):
    """Every API path refuses a request with no token or a wrong one, and says how to get it."""
    for path in ("/api/state", "/api/events", "/api/audit", "/api/verify"):
        assert call(lab, "GET", path, token=None)[0] == 401
        assert call(lab, "GET", path, token="wrong")[0] == 401
    status, reply, headers = call(lab, "GET", "/api/state", token=None)
    assert (status, reply["ok"], headers["WWW-Authenticate"]) == (401, False, 'Bearer realm="faramesh-sandbox"')
    assert "#token=" in reply["error"]


def test_answer_without_token_leaves_call_waiting(lab):
    """A POST without the token (what a cross-site form would send) cannot approve."""
    lab.defer()
    pending = lab.wait_pending()
    body = {"session": "s1", "id": pending[0]["id"], "answer": "approve"}
    assert call(lab, "POST", "/api/answer", token=None, body=body)[0] == 401
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert call(lab, "POST", "/api/answer", body=body, headers=form)[0] == 415
    assert call(lab, "POST", "/api/answer", body=body, headers={"Origin": "http://evil.example"})[0] == 403
    assert [p["state"] for p in lab.broker.list()] == ["pending"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "0.0.0.0:{port}"])
def test_wrong_host_header_is_refused(lab, host):
    """A Host other than 127.0.0.1:PORT or localhost:PORT (DNS rebinding) gets 421, even with the token."""
    status, reply, _ = call(lab, "GET", "/api/state", host=host.format(port=lab.port))
    assert (status, reply["ok"]) == (421, False)
    assert call(lab, "GET", "/", token=None, host=host.format(port=lab.port))[0] == 421


def test_localhost_host_header_is_accepted(lab):
    """localhost:PORT names the server as well as 127.0.0.1:PORT does."""
    assert call(lab, "GET", "/api/state", host=f"localhost:{lab.port}")[0] == 200


def test_security_headers_on_page_and_api(lab):
    """The page and the API carry a self-only CSP, X-Frame-Options DENY, nosniff and no caching."""
    for path, token in (("/", None), ("/ui.js", None), ("/api/state", TOKEN), ("/api/state", None)):
        headers = call(lab, "GET", path, token=token)[2]
        assert headers["Content-Security-Policy"].startswith("default-src 'self';")
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert (headers["X-Frame-Options"], headers["X-Content-Type-Options"], headers["Cache-Control"]) == (
            "DENY", "nosniff", "no-store")


def test_unsupported_method_error_has_security_headers(lab):
    """The base server's own error pages (here 501 for PUT) carry the same CSP and frame denial."""
    status, _, headers = call(lab, "PUT", "/api/state")
    assert (status, headers["X-Frame-Options"]) == (501, "DENY")
    assert headers["Content-Security-Policy"].startswith("default-src 'self';")


def test_page_has_no_inline_script(lab):
    """The page loads its script from /ui.js only, so the CSP needs no 'unsafe-inline'."""
    html = call(lab, "GET", "/", token=None)[1]["raw"].decode()
    assert html.count("<script") == 1
    assert '<script src="/ui.js" defer></script>' in html
    assert " on" not in html.split("<body>")[1].replace(" one", "")  # no onclick= style handlers


def test_server_refuses_other_addresses(lab):
    """Only 127.0.0.1 may be bound: 0.0.0.0 and ::1 are refused with the reason."""
    for host in ("0.0.0.0", "::", "192.168.1.1"):
        with pytest.raises(UIError, match="serves on 127.0.0.1 only"):
            UIServer(0, TOKEN, lab.hub, None, host=host)


def test_state_lists_pending_approval(lab):
    """/api/state shows the waiting call's session, tool, arguments, rule, reason and expiry."""
    lab.defer(timeout=60)
    lab.wait_pending()
    status, state, _ = call(lab, "GET", "/api/state")
    [view] = state["pending"]
    assert status == 200
    assert (view["session"], view["tool"], view["args"]["path"], view["rule_id"], view["reason"]) == (
        "s1", "fs/write", "/tmp/x/a", "fpl-3", "writes under /tmp/x need a person")
    assert 59 < view["expires_at"] - view["created"] <= 60
    assert state["sessions"] == [{"id": "s1", "state": "watching", "error": ""}]


@pytest.mark.parametrize(("answer", "scope", "approved", "code"), [
    ("approve", "once", True, "APPROVAL_GRANTED"),
    ("approve", "session", True, "APPROVAL_GRANTED"),
    ("deny", "once", False, "APPROVAL_DENIED"),
])
def test_answer_resolves_the_waiting_call(lab, answer, scope, approved, code):
    """POST /api/answer reaches the run's broker: the waiting call returns with that answer."""
    waiter = lab.defer()
    [view] = lab.wait_pending()
    status, reply, _ = call(lab, "POST", "/api/answer",
                            body={"session": "s1", "id": view["id"], "answer": answer, "scope": scope})
    waiter.join(10)
    assert (status, reply["ok"], reply["approval"]["scope"]) == (200, True, scope)
    [resolution] = lab.answers
    assert (resolution.approved, resolution.reason_code) == (approved, code)
    assert resolution.record["approver"].endswith("(web page)")


def test_answer_twice_is_a_conflict(lab):
    """A second answer to the same call gets 409 with the broker's reason."""
    waiter = lab.defer()
    [view] = lab.wait_pending()
    body = {"session": "s1", "id": view["id"], "answer": "deny"}
    assert call(lab, "POST", "/api/answer", body=body)[0] == 200
    waiter.join(10)
    status, reply, _ = call(lab, "POST", "/api/answer", body={**body, "answer": "approve"})
    assert (status, reply["error"]) == (409, f"approval {view['id']} is already denied "
                                              f"(by {lab.answers[0].record['approver']})")


@pytest.mark.parametrize(("body", "status"), [
    ({"session": "../etc", "id": "ab", "answer": "approve"}, 404),
    ({"session": "other", "id": "ab", "answer": "approve"}, 404),
    ({"session": "s1", "id": "ab", "answer": "maybe"}, 400),
    ({"session": "s1", "id": "ab", "answer": "approve", "scope": "forever"}, 400),
    ({"session": "s1", "id": 7, "answer": "approve"}, 400),
])
def test_bad_answers_are_refused(lab, body, status):
    """Unknown sessions, path-like session names and unknown answers or scopes are refused."""
    assert call(lab, "POST", "/api/answer", body=body)[0] == status


def read_event(stream) -> dict:
    """The next ``state`` event's data from a Server-Sent Events stream."""
    name, data = "", []
    for raw in stream:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and name == "state":
            return json.loads("\n".join(data))
    raise AssertionError("the event stream ended")


def test_event_stream_pushes_new_and_resolved_approvals(lab):
    """/api/events sends the state, then again when a call starts waiting and when it is answered."""
    conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=10)
    conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    assert (response.status, response.getheader("Content-Type")) == (200, "text/event-stream")
    assert read_event(response)["pending"] == []
    waiter = lab.defer()
    state = read_event(response)
    while not state["pending"]:
        state = read_event(response)
    approval_id = state["pending"][0]["id"]
    lab.broker.resolve(approval_id, False, "once", "tester")
    waiter.join(10)
    while state["pending"]:
        state = read_event(response)
    assert [(v["id"], v["state"], v["approver"]) for v in state["recent"]] == [(approval_id, "denied", "tester")]
    conn.close()


def test_audit_rows_and_intact_verdict(lab):
    """/api/audit returns the newest records first, filtered; /api/verify says the chain is intact."""
    with AuditStore(str(lab.db)) as store:
        store.append(RECORD)
        store.append({**RECORD, "tool": "shell/exec", "args": {"cmd": "ls"}, "effect": "PERMIT", "reason": "ok"})
        store.append({**RECORD, "session": "s2"})
    status, reply, _ = call(lab, "GET", "/api/audit")
    assert status == 200
    assert [(r["seq"], r["session"], r["tool"], r["argument"], r["effect"]) for r in reply["records"]] == [
        (3, "s2", "fs/write", "/tmp/x/a", "DENY"), (2, "s1", "shell/exec", "ls", "PERMIT"),
        (1, "s1", "fs/write", "/tmp/x/a", "DENY")]
    filtered = call(lab, "GET", "/api/audit?session=s1&effect=deny&limit=5")[1]["records"]
    assert [r["seq"] for r in filtered] == [1]
    assert [r["seq"] for r in call(lab, "GET", "/api/audit?tool=shell/*")[1]["records"]] == [2]
    verdict = call(lab, "GET", "/api/verify")[1]["verdict"]
    assert (verdict["intact"], verdict["records"], verdict["head_seq"], verdict["problem"]) == (True, 3, 3, None)


def test_tampered_store_verdict_names_the_record(lab):
    """An edited record makes /api/verify report the chain broken at that seq."""
    with AuditStore(str(lab.db)) as store:
        for pid in (1, 2, 3):
            store.append({**RECORD, "pid": pid})
    with sqlite3.connect(lab.db) as con:
        con.execute("UPDATE records SET record = replace(record, 'no writes', 'fine') WHERE seq = 2")
    verdict = call(lab, "GET", "/api/verify")[1]["verdict"]
    assert (verdict["intact"], verdict["problem"]["seq"], verdict["problem"]["what"]) == (False, 2, "edited")


def test_audit_errors_are_reported(lab):
    """A missing store is a 404 naming the path; a bad limit is a 400 saying why."""
    status, reply, _ = call(lab, "GET", "/api/audit")
    assert (status, reply["error"]) == (404, f"no audit store at {lab.db}")
    AuditStore(str(lab.db)).close()
    status, reply, _ = call(lab, "GET", "/api/audit?limit=0")
    assert (status, reply["error"]) == (400, "limit 0 is outside 1..1000")


def test_session_gone_drops_its_pending(lab):
    """When a run's control socket goes away, its waiting calls leave the page's list."""
    lab.defer()
    lab.wait_pending()
    lab.control.close()
    # The watch ends (and forgets its calls) first; the next directory scan drops the session.
    deadline = time.monotonic() + 5
    while (lab.hub.state()["pending"] or lab.hub.state()["sessions"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (lab.hub.state()["pending"], lab.hub.state()["sessions"]) == ([], [])


def test_cli_prints_tokened_url_and_refuses_bad_port(tmp_path):
    """`faramesh-sandbox ui` prints a 127.0.0.1 URL with a fresh #token=; --port 70000 is an error."""
    env = {"PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(tmp_path / "run"), "PATH": "/usr/bin:/bin"}
    bad = subprocess.run([sys.executable, "-m", "launcher", "ui", "--port", "70000"], capture_output=True,
                         text=True, env=env, timeout=30)
    assert (bad.returncode, bad.stderr) == (2, "faramesh-sandbox ui: --port 70000 is not a port number "
                                               "(0..65535; 0 picks a free one)\n")
    urls = []
    for _ in range(2):
        server = subprocess.Popen([sys.executable, "-m", "launcher", "ui", "--db", str(tmp_path / "a.db")],
                                  stdout=subprocess.PIPE, text=True, env=env)
        try:
            line = server.stdout.readline()
        finally:
            server.terminate()
            server.wait(10)
        prefix = "faramesh-sandbox ui: approvals page at http://127.0.0.1:"
        assert line.startswith(prefix)
        urls.append(line[len(prefix):].strip())
    tokens = [url.split("/#token=")[1] for url in urls]
    assert len(tokens[0]) == 43 and tokens[0] != tokens[1]


def test_session_option_limits_page_to_one_run(lab):
    """A page started for session s2 lists only s2's calls and refuses to answer s1's."""
    other = Broker("s2")
    other_control = ControlServer(other, str(lab.rundir))
    hub = Hub(str(lab.rundir), "s2", None).start()
    server = UIServer(0, TOKEN, hub, None)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        lab.defer()
        [s1_view] = lab.wait_pending()
        waiter = threading.Thread(target=other.submit, args=("shell/exec", {"cmd": "make"}, DEFER, 30.0))
        waiter.start()
        deadline = time.monotonic() + 10
        while not hub.state()["pending"] and time.monotonic() < deadline:
            time.sleep(0.02)
        state = call(server, "GET", "/api/state")[1]
        assert [(v["session"], v["tool"]) for v in state["pending"]] == [("s2", "shell/exec")]
        assert (state["only_session"], [s["id"] for s in state["sessions"]]) == ("s2", ["s2"])
        status, reply, _ = call(server, "POST", "/api/answer", body={"session": "s1", "id": s1_view["id"],
                                                                    "answer": "approve"})
        assert (status, reply["error"]) == (404, "no live session 's1' is shown on this page")
        other.close()
        waiter.join(10)
    finally:
        server.shutdown()
        server.server_close()
        hub.stop()
        other_control.close()


def test_unreadable_runtime_dir_is_reported(tmp_path):
    """A runtime directory that is a file, not a directory, shows up as an error in the state, not a crash."""
    blocker = tmp_path / "run"
    blocker.write_text("")
    hub = Hub(str(blocker), None, None).start()
    try:
        assert hub.state()["runtime_error"] == f"cannot list {blocker}: Not a directory"
    finally:
        hub.stop()
