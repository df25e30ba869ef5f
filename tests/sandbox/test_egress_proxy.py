"""The egress proxy on loopback, fed the way the socket broker feeds it (a registered connection):
TLS with the run's CA, one decision per request, credentials injected, verified upstream."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import policy
from sandbox.egress.ca import CertificateAuthority
from sandbox.egress.catalogue import Catalogue
from sandbox.egress.deciding import Decider
from launcher.run_egress import EgressPlan
from sandbox.egress.proxy import Destination, EgressProxy

HOST = "api.svc.test"
POLICY = """agent a {
  default deny
  credential svc {
    scope http/post
    backend env
    path "SVC_TOKEN"
  }
  rules {
    permit http/post host: api.svc.test path: /v1/orders
    permit http/get host: api.svc.test path: /v1/*
  }
}
"""


class Upstream:
    """An HTTPS server for HOST on 127.0.0.1 with its own CA; records what reached it."""

    def __init__(self):
        self.authority = CertificateAuthority("upstream")
        self.seen: list[dict] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                seen.append({"method": self.command, "path": self.path, "body": body.decode(),
                             "auth": self.headers.get("Authorization")})
                reply = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            do_GET = do_POST = handle_any

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(_pem_file(self.authority.leaf_pem(HOST)))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.authority.cert_pem.decode())

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _pem_file(pem: bytes) -> str:
    import tempfile
    f = tempfile.NamedTemporaryFile(suffix=".pem", delete=False)
    f.write(pem)
    f.close()
    return f.name


@pytest.fixture
def rig():
    upstream = Upstream()
    engine = policy.Engine([policy.load_policy(POLICY, "p.fpl")], policy.SessionStore())
    records: list[dict] = []
    catalogue = Catalogue.load()
    plan = EgressPlan.build([("p.fpl", policy.parse(POLICY, "p.fpl"))], catalogue)
    decider = Decider(engine.decide, records.append, None, 0.1, "s1", catalogue, plan,
                      environ={"SVC_TOKEN": "real-token"})
    ca = CertificateAuthority("test")
    proxy = EgressProxy(ca, decider, upstream.trust())
    proxy.start()
    yield {"proxy": proxy, "ca": ca, "upstream": upstream, "records": records}
    proxy.close()
    upstream.close()


def connect(rig, sni: str | None = HOST, trust: bytes | None = None, port: int | None = None) -> socket.socket:
    """A connection to the proxy registered as the broker registers it, then TLS as the agent does it."""
    raw = socket.create_connection(rig["proxy"].address("inet"))
    rig["proxy"].registry.register(raw.getsockname(), Destination(HOST, "127.0.0.1", port or rig["upstream"].port))
    context = ssl.create_default_context(cadata=(trust or rig["ca"].cert_pem).decode())
    context.check_hostname = sni is not None
    return context.wrap_socket(raw, server_hostname=sni)


def exchange(sock, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(HOST)
    conn.sock = sock
    conn.request(method, path, body=body, headers={"Host": HOST, **(headers or {})})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"null")


def test_permitted_request_reaches_upstream_with_the_brokered_secret(rig):
    """A permitted POST goes upstream with the launcher's token in place of the agent's, and a
    denied GET on the same connection never does."""
    sock = connect(rig)
    assert exchange(sock, "POST", "/v1/orders", b'{"n": 1}',
                    {"Content-Type": "application/json", "Authorization": "Bearer agent-fake"}) == (200, {"ok": True})
    status, body = exchange(sock, "GET", "/admin")
    assert (status, body["error"]["code"]) == (403, "UNMATCHED_DENY")
    assert rig["upstream"].seen == [{"method": "POST", "path": "/v1/orders", "body": '{"n": 1}',
                                     "auth": "Bearer real-token"}]
    assert [(r["tool"], r["effect"], r.get("credential")) for r in rig["records"]] == [
        ("http/post", "PERMIT", "svc"), ("http/get", "DENY", None)]
    assert rig["records"][0]["args"]["headers"]["authorization"] == "Bearer <redacted>"


def test_client_that_does_not_trust_the_sandbox_ca_fails_closed(rig):
    """A client pinning another CA fails its handshake; the audit says it may pin certificates."""
    other = CertificateAuthority("pinned")
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(rig, trust=other.cert_pem)
    for _ in range(100):
        if rig["records"]:
            break
        threading.Event().wait(0.02)
    [record] = rig["records"]
    assert (record["tool"], record["effect"], record["reason_code"]) == ("net/tls", "DENY", "EGRESS_TLS_FAILED")
    assert "TLS handshake with the sandbox CA failed: the client may pin certificates" in record["reason"]


def test_sni_for_another_host_is_refused(rig):
    """Naming another host in the TLS handshake than the one connected to is refused."""
    with pytest.raises(ssl.SSLError):
        connect(rig, sni="evil.test")
    for _ in range(100):
        if rig["records"]:
            break
        threading.Event().wait(0.02)
    assert [(r["tool"], r["reason_code"], r["args"]["sni"]) for r in rig["records"]] == \
        [("net/tls", "EGRESS_SNI_MISMATCH", "evil.test")]


@pytest.mark.parametrize("headers,body,code", [
    ({"Host": "evil.test"}, None, "EGRESS_UNREADABLE"),
    ({"Host": f"{HOST}:1@evil.test"}, None, "EGRESS_UNREADABLE"),  # a server may read evil.test
    ({"Host": f"[{HOST}]evil.test"}, None, "EGRESS_UNREADABLE"),
    ({"Host": f"{HOST}:443/x"}, None, "EGRESS_UNREADABLE"),
    ({"Host": f"{HOST}:8443"}, None, "EGRESS_UNREADABLE"),  # another virtual host than the connection's
    ({"X-HTTP-Method-Override": "DELETE"}, None, "EGRESS_UNREADABLE"),  # POST decided, DELETE performed
    ({"X-Original-URL": "/admin"}, None, "EGRESS_UNREADABLE"),
    ({"X-Forwarded-Host": "evil.test"}, None, "EGRESS_UNREADABLE"),
    ({"Content-Type": "application/json"}, b"{broken", "EGRESS_UNREADABLE"),
    ({"Content-Type": "application/json", "Content-Length": str(2 << 20)}, None, "EGRESS_UNREADABLE"),
])
def test_requests_that_cannot_be_read_exactly_are_refused(rig, headers, body, code):
    """A foreign Host header (or one that is not host[:port], or names another port), a header that
    overrides the method, path or host, an unparseable body or an over-size body get a 403;
    upstream sees nothing."""
    sock = connect(rig)
    conn = http.client.HTTPConnection(HOST)
    conn.sock = sock
    conn.putrequest("POST", "/v1/orders", skip_host=True)
    for name, value in {"Host": HOST, **headers}.items():
        conn.putheader(name, value)
    if "Content-Length" not in headers:
        conn.putheader("Content-Length", str(len(body or b"")))
    conn.endheaders(body)
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["error"]["code"]) == (403, code)
    assert rig["upstream"].seen == []


def test_upstream_with_an_untrusted_certificate_is_not_contacted(rig):
    """The proxy verifies upstream against its trust store: a server it does not trust gets a 502."""
    rig["proxy"].upstream_context = ssl.create_default_context()  # the host's store: not the test CA
    status, body = exchange(connect(rig), "GET", "/v1/items")
    assert (status, body["error"]["type"]) == (502, "faramesh_upstream")
    assert "CERTIFICATE_VERIFY_FAILED" in body["error"]["message"]


def test_unregistered_connection_is_closed(rig, monkeypatch):
    """A connection the broker did not register gets no service."""
    monkeypatch.setattr("sandbox.egress.proxy.REGISTER_WAIT", 0.2)
    raw = socket.create_connection(rig["proxy"].address("inet"))
    raw.settimeout(10)
    assert raw.recv(1) == b""  # closed after the registration wait


def test_missing_secret_turns_the_permit_into_a_deny(rig):
    """A permitted request whose credential has no secret is refused, and upstream sees nothing."""
    rig["proxy"].decider.environ = {}
    status, body = exchange(connect(rig), "POST", "/v1/orders", b"{}", {"Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (403, "CREDENTIAL_UNAVAILABLE")
    assert rig["upstream"].seen == []
    assert [(r["tool"], r["effect"], r["reason_code"]) for r in rig["records"]] == \
        [("http/post", "DENY", "CREDENTIAL_UNAVAILABLE")]


def test_deferred_request_waits_for_the_approver(rig):
    """A DEFER holds the request until approve() answers; a refusal never reaches upstream."""
    asked = []
    decider = rig["proxy"].decider
    decider.decide = lambda call: policy.Decision(policy.Effect.DEFER, rule_id="r1", reason="needs a person")
    decider.approve = lambda call, decision, timeout: asked.append((call.tool, call.args["path"])) or False
    status, body = exchange(connect(rig), "GET", "/v1/items")
    assert (status, body["error"]["code"], asked) == (403, "APPROVAL_DENIED", [("http/get", "/v1/items")])
    assert rig["upstream"].seen == []


def test_chunked_request_body_is_read_whole_and_sent_by_length(rig):
    """A chunked upload is decided on its whole body and reaches upstream re-framed by its length."""
    conn = http.client.HTTPConnection(HOST)
    conn.sock = connect(rig)
    conn.request("POST", "/v1/orders", body=iter([b'{"n": ', b"2}"]), encode_chunked=True,
                 headers={"Host": HOST, "Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert conn.getresponse().status == 200
    assert [(s["path"], s["body"]) for s in rig["upstream"].seen] == [("/v1/orders", '{"n": 2}')]


def test_the_normalised_target_is_what_reaches_upstream(rig):
    """/v1/%69tems is decided as /v1/items, and upstream receives exactly that target."""
    assert exchange(connect(rig), "GET", "/v1/%69tems?q=%7e%41%2f")[0] == 200
    assert [s["path"] for s in rig["upstream"].seen] == ["/v1/items?q=~A%2F"]
    assert [(r["args"]["path"], r["args"]["url"]) for r in rig["records"]] == [
        ("/v1/items", f"https://{HOST}:{rig['upstream'].port}/v1/items?q=~A%2F")]


@pytest.mark.parametrize("target", ["//admin/v1/items", "/v1/items#/../../admin", "/v1/..;/admin",
                                    "/v1//items", "/v1/%2e%2e/admin"])
def test_targets_a_server_could_read_as_another_path_are_refused(rig, target):
    """//admin/v1/items was decided as /v1/items (permitted) and sent as is: now refused, unsent."""
    status, body = exchange(connect(rig), "GET", target)
    assert (status, body["error"]["code"]) == (403, "EGRESS_UNREADABLE")
    assert rig["upstream"].seen == []
    assert [(r["tool"], r["effect"]) for r in rig["records"]] == [("http/request", "DENY")]


def test_a_brokered_secret_is_not_sent_over_plain_http(rig):
    """Plain HTTP for a tool a credential covers is refused: anyone on the path would read the secret."""
    raw = socket.create_connection(rig["proxy"].address("inet"))
    rig["proxy"].registry.register(raw.getsockname(), Destination(HOST, "127.0.0.1", rig["upstream"].port))
    status, body = exchange(raw, "POST", "/v1/orders", b"{}", {"Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (403, "CREDENTIAL_NEEDS_TLS")
    assert rig["upstream"].seen == []
    assert [(r["tool"], r["effect"], r.get("credential")) for r in rig["records"]] == [("http/post", "DENY", None)]


def test_plain_http_is_inspected_too(rig):
    """A connection that does not start with TLS is read as plain HTTP and decided the same way."""
    raw = socket.create_connection(rig["proxy"].address("inet"))
    rig["proxy"].registry.register(raw.getsockname(), Destination(HOST, "127.0.0.1", 9))
    status, body = exchange(raw, "GET", "/admin")
    assert (status, body["error"]["code"]) == (403, "UNMATCHED_DENY")
    assert [(r["args"]["url"], r["effect"]) for r in rig["records"]] == [(f"http://{HOST}:9/admin", "DENY")]


def test_expect_100_continue_is_answered_so_the_body_arrives(rig):
    """A client waiting for 100 Continue gets it (the decision needs the body), then the response."""
    sock = connect(rig)
    body = b'{"n": 3}'
    sock.sendall(f"POST /v1/orders HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
    sock.settimeout(5)
    assert sock.recv(25).startswith(b"HTTP/1.1 100 ")
    sock.sendall(body)
    reply = b""
    while b'{"ok": true}' not in reply:
        chunk = sock.recv(4096)
        assert chunk, reply
        reply += chunk
    assert b"HTTP/1.1 200 " in reply
    assert [s["body"] for s in rig["upstream"].seen] == ['{"n": 3}']


def test_session_totals_span_requests(rig, tmp_path):
    """A catalogue tool's amounts add up across requests: the one that would pass the cap is denied."""
    (tmp_path / "shop.toml").write_text(
        f'[[endpoint]]\ntool = "shop/order"\nmethod = "POST"\nhost = "{HOST}"\nport = {rig["upstream"].port}\n'
        'path = "/v1/orders"\nbody = "json"\n[endpoint.args]\ntotal = { from = "body.total", type = "number" }\n')
    text = ('agent a {\n default deny\n rules {\n  deny shop/order when session.sum(shop/order.total, window=1h) '
            '+ args.total > 100 reason: "over the cap"\n  permit shop/order\n }\n}\n')
    catalogue = Catalogue.load([tmp_path])
    decider = rig["proxy"].decider
    decider.catalogue = catalogue
    decider.decide = policy.Engine([policy.load_policy(text, "cap.fpl")], policy.SessionStore()).decide
    answers = [exchange(connect(rig), "POST", "/v1/orders", f'{{"total": {total}}}'.encode(),
                        {"Content-Type": "application/json"})[0] for total in (60, 30, 20)]
    assert answers == [200, 200, 403]
    assert [(r["tool"], r["args"]["total"], r["effect"]) for r in rig["records"]] == [
        ("shop/order", 60, "PERMIT"), ("shop/order", 30, "PERMIT"), ("shop/order", 20, "DENY")]


def test_body_limit_is_the_deciders(rig):
    """--egress-max-body sets the limit: a 20-byte body passes a 64-byte limit, 100 bytes do not."""
    rig["proxy"].decider.max_body = 64
    sock = connect(rig)
    small = exchange(sock, "POST", "/v1/orders", b'{"n": "' + b"x" * 11 + b'"}', {"Content-Type": "application/json"})
    large = exchange(connect(rig), "POST", "/v1/orders", b'{"n": "' + b"x" * 91 + b'"}',
                     {"Content-Type": "application/json"})
    assert (small[0], large[0], large[1]["error"]["message"]) == (
        200, 403, "request body of 100 bytes is over the 64-byte inspection limit")


def test_names_compare_without_case_or_root_dot(rig):
    """A connection made to API.SVC.TEST. is decided with host api.svc.test and reaches upstream."""
    raw = socket.create_connection(rig["proxy"].address("inet"))
    rig["proxy"].registry.register(raw.getsockname(), Destination("API.SVC.TEST.", "127.0.0.1", rig["upstream"].port))
    context = ssl.create_default_context(cadata=rig["ca"].cert_pem.decode())
    sock = context.wrap_socket(raw, server_hostname="Api.Svc.Test")
    assert exchange(sock, "GET", "/v1/items")[0] == 200
    assert [(r["args"]["host"], r["effect"]) for r in rig["records"]] == [(HOST, "PERMIT")]
