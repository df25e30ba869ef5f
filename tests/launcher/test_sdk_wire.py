"""The SDK socket at the byte level: request forms, defer tokens, and clients that misbehave."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

import policy
from launcher import sdk_defer, sdk_server
from launcher.sdk_server import SdkServer

POLICY = """agent a {
  default deny
  rules {
    defer stripe/refund when args.amount > 500
    permit stripe/refund
  }
}
"""


@pytest.fixture
def server(tmp_path: Path):
    approvals = threading.Event()
    records: list = []

    def approve(call, decision, timeout):
        return approvals.wait(timeout)
    engine = policy.Engine([policy.load_policy(POLICY, "p.fpl")], policy.SessionStore())
    srv = SdkServer(str(tmp_path / "s.sock"), engine.decide, session_id="sess", audit=records.append,
                    approve=approve, approve_timeout=5.0).start()
    srv.approvals, srv.records = approvals, records
    yield srv
    approvals.set()
    srv.close()


def exchange(path: str, data: bytes, timeout: float = 10.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(data)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


def rpc_govern(tool: str, operation: str, args: dict, rpc_id=7) -> bytes:
    params = {"agent_id": "a", "tool": tool, "operation": operation, "args": args, "principal_token": ""}
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": "govern", "params": params}).encode() + b"\n"


def poll(path: str, token: str) -> str:
    return exchange(path, json.dumps({"type": "poll_defer", "agent_id": "a", "defer_token": token}).encode()
                    + b"\n")["status"]


def wait_status(path: str, token: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = poll(path, token)
        if status != "pending" or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def test_jsonrpc_govern_reply_shape(server):
    """The JSON-RPC form joins tool and operation and answers with a result object."""
    reply = exchange(server.socket_path, rpc_govern("stripe", "refund", {"amount": 5}))
    assert reply["jsonrpc"] == "2.0" and reply["id"] == 7
    result = reply["result"]
    assert (result["effect"], result["rule_id"], result["reason_code"]) == ("PERMIT", "fpl-1", "RULE_PERMIT")
    assert len(result["call_id"]) == 32
    assert server.records[0]["tool"] == "stripe/refund"


def test_typed_govern_reply_is_flat(server):
    """The typed form (type: govern, tool_id) is answered with a flat object carrying the call id."""
    request = {"type": "govern", "call_id": "c-1", "agent_id": "a", "session_id": "ignored",
               "tool_id": "stripe/refund", "args": {"amount": 9}}
    reply = exchange(server.socket_path, json.dumps(request).encode() + b"\n")
    assert (reply["call_id"], reply["effect"], reply["reason_code"]) == ("c-1", "PERMIT", "RULE_PERMIT")
    assert server.records[0]["session"] == "sess"  # the run's session, never the client's


def test_tool_without_operation_slash(server):
    """A tool name sent with no operation is decided as the bare name (default deny here)."""
    request = {"jsonrpc": "2.0", "id": 1, "method": "govern", "params": {"tool": "search", "args": {}}}
    reply = exchange(server.socket_path, json.dumps(request).encode() + b"\n")
    assert (reply["result"]["effect"], reply["result"]["reason_code"]) == ("DENY", "UNMATCHED_DENY")
    assert server.records[0]["tool"] == "search"


def test_defer_token_is_single_use(server):
    """An approved token answers 'approved' once; polled again, or never issued, it is 'denied'."""
    result = exchange(server.socket_path, rpc_govern("stripe", "refund", {"amount": 900}))["result"]
    assert (result["effect"], result["reason_code"]) == ("DEFER", "RULE_DEFER")
    token = result["defer_token"]
    assert result["structured_denial"]["resolution"] == {"approval_id": token}
    assert poll(server.socket_path, token) == "pending"
    server.approvals.set()
    assert wait_status(server.socket_path, token) == "approved"
    assert poll(server.socket_path, token) == "denied"
    assert poll(server.socket_path, "dfr_00000000000000000000000000000000") == "denied"
    assert poll(server.socket_path, "") == "denied"


def test_two_defers_of_the_same_call_get_distinct_tokens(server):
    """Tokens are random per defer, not derived from what the agent sends."""
    first = exchange(server.socket_path, rpc_govern("stripe", "refund", {"amount": 900}))["result"]["defer_token"]
    second = exchange(server.socket_path, rpc_govern("stripe", "refund", {"amount": 900}))["result"]["defer_token"]
    assert first != second


def rpc_error(code: int, message: str) -> dict:
    return {"code": code, "message": message}


@pytest.mark.parametrize(("line", "error"), [
    (b"{not json\n", rpc_error(-32700, "invalid JSON: JSONDecodeError: Expecting property name enclosed in "
                                       "double quotes: line 1 column 2 (char 1)")),
    (b"[1, 2]\n", rpc_error(-32600, "a request is a JSON object")),
    (b'{"type": "approve_defer", "defer_token": "x", "approved": true}\n',
     "'approve_defer' is an operator request and is not served to the agent"),
    (b'{"type": "standing_grant_add"}\n', "'standing_grant_add' is an operator request and is not served to the agent"),
    (b'{"type": "bogus"}\n', "unknown request type 'bogus': this socket serves govern and poll_defer"),
    (b'{"tool_id": "x"}\n', "missing request type: send type \"govern\" or \"poll_defer\""),
    (b'{"type": "govern", "tool_id": "stripe/refund", "args": [1]}\n', "args must be an object"),
    (b'{"type": "govern", "args": {}}\n', "tool_id is required"),
    (b'{"type": "govern", "tool_id": 5}\n', "tool_id must be a string"),
])
def test_malformed_requests_get_an_error(server, line, error):
    """Bad or operator-only requests are answered with an error, which the SDK treats as a denial."""
    assert exchange(server.socket_path, line) == ({"jsonrpc": "2.0", "id": None, "error": error}
                                                  if isinstance(error, dict) else {"error": error})
    assert server.records == []


@pytest.mark.parametrize(("request_obj", "code", "message"), [
    ({"jsonrpc": "2.0", "id": 3, "method": "kill", "params": {}}, -32601,
     "'kill' is an operator request and is not served to the agent"),
    ({"jsonrpc": "2.0", "id": 3, "method": "govern", "params": []}, -32602, "params must be an object"),
    ({"jsonrpc": "2.0", "id": 3, "method": "govern", "params": {"tool": "x", "args": {"n": float("nan")}}},
     -32700, "invalid JSON: ValueError: NaN is not a JSON number"),
    ({"jsonrpc": "2.0", "id": 3, "method": "govern", "params": {"tool": "x" * 300}}, -32602,
     "tool is longer than 256 characters"),
])
def test_malformed_jsonrpc_requests_get_an_rpc_error(server, request_obj, code, message):
    """JSON-RPC requests that cannot be served get a JSON-RPC error object."""
    reply = exchange(server.socket_path, json.dumps(request_obj).encode() + b"\n")
    assert reply["error"] == {"code": code, "message": message}


def test_absurd_nesting_is_an_error_not_a_crash(server):
    """A deeply nested document is refused, and the server keeps serving."""
    reply = exchange(server.socket_path, b"[" * 200_000 + b"\n")
    assert reply["error"]["code"] == -32700
    assert exchange(server.socket_path, rpc_govern("stripe", "refund", {"amount": 1}))["result"]["effect"] == "PERMIT"


def test_oversized_request_is_refused_unparsed(server):
    """A line over 1 MiB is refused without parsing; the next client is served."""
    huge = rpc_govern("stripe", "refund", {"blob": "x" * (sdk_server.wire.MAX_LINE + 10)})
    assert exchange(server.socket_path, huge)["error"] == {"code": -32600, "message": "request longer than 1048576 bytes"}
    assert server.records == []
    assert exchange(server.socket_path, rpc_govern("stripe", "refund", {"amount": 1}))["result"]["effect"] == "PERMIT"


def test_silent_and_half_sent_clients_do_not_block_others(server, monkeypatch):
    """Clients that send nothing or half a line are dropped at the deadline; others are served meanwhile."""
    monkeypatch.setattr(sdk_server, "REQUEST_DEADLINE", 0.5)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(server.socket_path)
    half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half.connect(server.socket_path)
    half.sendall(b'{"type": "govern", "tool_id": "stri')
    started = time.monotonic()
    assert exchange(server.socket_path, rpc_govern("stripe", "refund", {"amount": 1}))["result"]["effect"] == "PERMIT"
    assert time.monotonic() - started < 0.4
    for conn in (silent, half):
        conn.settimeout(5)
        assert conn.recv(100) == b""  # closed unanswered at the deadline
        conn.close()
    assert [r["args"] for r in server.records] == [{"amount": 1}]


def test_request_without_newline_is_answered_at_end_of_stream(server):
    """A client that shuts down its side after the request still gets the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(server.socket_path)
        conn.sendall(rpc_govern("stripe", "refund", {"amount": 2}).rstrip(b"\n"))
        conn.shutdown(socket.SHUT_WR)
        assert json.loads(conn.recv(65536))["result"]["effect"] == "PERMIT"


def test_socket_is_owner_only(server):
    """The socket file is mode 0600."""
    assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o600


def test_connections_beyond_the_limit_are_closed_unanswered(tmp_path: Path, monkeypatch):
    """With every slot held by idle clients a new client is closed at once; a freed slot serves again."""
    monkeypatch.setattr(sdk_server, "MAX_CONNECTIONS", 2)
    engine = policy.Engine([policy.load_policy(POLICY, "p.fpl")], policy.SessionStore())
    with SdkServer(str(tmp_path / "s.sock"), engine.decide, session_id="sess") as srv:
        idle = []
        for _ in range(2):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(srv.socket_path)
            idle.append(conn)
        time.sleep(0.2)  # both accepted and waiting for their request
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
            extra.settimeout(5)
            extra.connect(srv.socket_path)
            started = time.monotonic()
            assert extra.recv(100) == b""
            assert time.monotonic() - started < 1.0  # not the 5 s request deadline
        for conn in idle:
            conn.close()
        time.sleep(0.2)
        assert exchange(srv.socket_path, rpc_govern("stripe", "refund", {"amount": 1}))["result"]["effect"] == "PERMIT"


RESERVED = ("is refused: fs/, net/, shell/ and http/ name the calls the sandbox observes itself (syscalls, DNS "
            "lookups, HTTP through the egress), which the agent cannot report; give the tool a name outside them")


@pytest.mark.parametrize("tool_id", ["fs/write", "net/connect", "net/dns", "shell/exec", "http/post", "http/request",
                                     "FS/write", "\u0455hell/exec", " fs//write", "/net/connect", "fs"])
def test_tool_ids_of_the_sandbox_namespaces_are_refused(server, tool_id):
    """An agent cannot report a call under the tool ids of what the sandbox observes (spelled in any way the
    engine would read as one of them): the SDK gets an error, nothing is decided or recorded."""
    request = {"type": "govern", "tool_id": tool_id, "args": {"path": "/etc/hosts", "flags": ["O_WRONLY"], "pid": 1}}
    assert exchange(server.socket_path, json.dumps(request).encode() + b"\n") == {
        "error": f"tool {tool_id!r} {RESERVED}"}
    assert server.records == []


def test_jsonrpc_tool_and_operation_in_a_sandbox_namespace_are_refused(server):
    """tool "shell" (the SDK sends a bare name as operation "invoke") gets a JSON-RPC error naming the joined id."""
    for tool, operation, joined in (("fs", "write", "fs/write"), ("shell", "invoke", "shell/invoke")):
        reply = exchange(server.socket_path, rpc_govern(tool, operation, {}))
        assert reply["error"] == {"code": -32602, "message": f"tool {joined!r} {RESERVED}"}
    assert server.records == []


@pytest.mark.parametrize("tool_id", ["stripe/refund", "files/write", "httpx/get", "network/ping", "search/invoke",
                                     "search", "myfs/write"])
def test_tool_ids_outside_the_sandbox_namespaces_are_decided(server, tool_id):
    """Names that only start like a sandbox namespace, and the SDK's own forms, are decided as usual."""
    request = {"type": "govern", "tool_id": tool_id, "args": {"amount": 1}}
    assert "effect" in exchange(server.socket_path, json.dumps(request).encode() + b"\n")
    assert [r["tool"] for r in server.records] == [tool_id]


def test_deferred_call_with_oversized_arguments_is_denied_unheld(server):
    """A DEFER whose arguments are too large to hold for a person is answered DENY DEFER_ARGS_TOO_LARGE: no token,
    no approval asked, nothing kept; a PERMIT of the same size is unaffected."""
    pad = "x" * sdk_defer.MAX_ARGS
    result = exchange(server.socket_path, rpc_govern("stripe", "refund", {"amount": 900, "pad": pad}))["result"]
    assert (result["effect"], result["reason_code"], "defer_token" in result) == ("DENY", "DEFER_ARGS_TOO_LARGE", False)
    assert result["reason"].startswith(f"the arguments of a call held for approval may take at most "
                                       f"{sdk_defer.MAX_ARGS} characters as JSON, these take ")
    assert server.defers.sizes() == (0, 0)
    assert [(r["effect"], r["reason_code"]) for r in server.records] == [("DENY", "DEFER_ARGS_TOO_LARGE")]
    result = exchange(server.socket_path, rpc_govern("stripe", "refund", {"amount": 9, "pad": pad}))["result"]
    assert result["effect"] == "PERMIT"
