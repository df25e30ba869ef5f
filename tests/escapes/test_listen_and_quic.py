"""Two ways past the network rules: a listener the kernel binds with no bind() (listen() on an
unbound TCP socket takes a port of the host's network), and UDP (HTTP/3, QUIC) to an API whose
HTTP the egress inspects, permitted by the net/connect rule that lets its TCP out."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.escapes.conftest import finish, native, sandboxed, start_sandboxed
from tests.launcher.scratch_netns import SERVER_IP
from tests.launcher.test_egress_run import fake_dns, scratch_https_server
from tests.sandbox import dns_fake

pytestmark = pytest.mark.kernel
LEAK = b"SECRET-TO-A-STRANGER"

# argv[1]: unbound or bound, with a 6 for IPv6. Prints port=N once listening, or listen=errno:N;
# then hands LEAK to whoever connects in.
LISTENER = r"""
import socket, sys
family = socket.AF_INET6 if sys.argv[1].endswith("6") else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
try:
    if sys.argv[1].startswith("bound"):
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    s.listen(1)
except OSError as err:
    print(f"listen=errno:{err.errno}", flush=True)
    sys.exit()
print(f"port={s.getsockname()[1]}", flush=True)
s.settimeout(20)
conn, _ = s.accept()
conn.sendall(LEAK)
conn.close()
print("accepted=ok", flush=True)
""".replace("LEAK", repr(LEAK))

LOOPBACK_ONLY = ('agent a {\n  default permit\n'
                 '  deny net/listen when args.ip != "127.0.0.1" && args.ip != "::1" reason: "listeners on loopback only"\n}\n')
ANY_LISTENER = 'agent a {\n  default deny\n  permit shell/exec\n  permit fs/*\n  permit net/listen when args.ip == "0.0.0.0"\n}\n'


def listener_argv(mode: str) -> list[str]:
    return [sys.executable, "-c", LISTENER, mode]


def connect_in(proc: subprocess.Popen, mode: str) -> tuple[str, bytes]:
    """The listener's first line and what a client on the host's loopback then receives from it."""
    first = proc.stdout.readline().strip()
    if not first.startswith("port="):
        return first, b""
    with socket.create_connection(("::1" if mode.endswith("6") else "127.0.0.1", int(first[5:])), timeout=20) as client:
        return "port=N", client.recv(64)


def net_records(run) -> list[tuple]:
    return [(r["syscall"], r["tool"], r["args"].get("ip"), r["args"].get("port"), r["effect"])
            for r in run.audit if r.get("tool", "").startswith("net/")]


def run_listener(policy: str, mode: str, tmp_path) -> tuple[str, bytes, object]:
    proc, audit = start_sandboxed(policy, listener_argv(mode), tmp_path)
    try:
        first, received = connect_in(proc, mode)
    except BaseException:
        proc.kill()
        raise
    return first, received, finish(proc, audit)


@pytest.mark.parametrize("mode, wildcard", [("unbound", "0.0.0.0"), ("unbound6", "::")])
def test_listen_without_bind_is_decided_as_a_wildcard_bind(mode, wildcard, tmp_path):
    """Natively listen() with no bind() serves a stranger on the host; sandboxed it is net/listen on
    the wildcard address, port 0, which this policy denies: EPERM, recorded."""
    proc = subprocess.Popen(listener_argv(mode), stdout=subprocess.PIPE, text=True)
    try:
        assert connect_in(proc, mode) == ("port=N", LEAK)
    finally:
        proc.communicate(timeout=30)
    first, received, run = run_listener(LOOPBACK_ONLY, mode, tmp_path)
    assert (first, received) == ("listen=errno:1", b""), run.explain()
    assert net_records(run) == [("listen", "net/listen", wildcard, 0, "DENY")], run.explain()
    assert [r["reason"] for r in run.denials("net/")] == ["listeners on loopback only"]


def test_listener_bound_by_a_permitted_bind_still_listens(tmp_path):
    """bind() to loopback is the decision; the listen() after it serves a client with no second one."""
    first, received, run = run_listener(LOOPBACK_ONLY, "bound", tmp_path)
    assert (first, received) == ("port=N", LEAK), run.explain()
    assert run.lines()["accepted"] == "ok"
    assert net_records(run) == [("bind", "net/listen", "127.0.0.1", 0, "PERMIT")]


def test_permitted_wildcard_listen_is_performed(tmp_path):
    """A policy permitting net/listen on 0.0.0.0 lets listen() bind and serve, recorded as permitted."""
    first, received, run = run_listener(ANY_LISTENER, "unbound", tmp_path)
    assert (first, received) == ("port=N", LEAK), run.explain()
    assert net_records(run) == [("listen", "net/listen", "0.0.0.0", 0, "PERMIT")]


def test_listen_is_never_decided_in_the_kernel(tmp_path):
    """A policy that denies net/listen outright still has listen() go to the supervisor (a record),
    as a plain `run` with kernel-decided categories does."""
    run = sandboxed('agent a {\n  default permit\n  deny net/listen\n}\n', listener_argv("unbound"), tmp_path,
                    kernel=True)
    assert run.lines() == {"listen": "errno:1"}, run.explain()
    assert net_records(run) == [("listen", "net/listen", "0.0.0.0", 0, "DENY")]


# -- B: UDP to an API the egress inspects ------------------------------------------------

# In the scratch namespace: the API over HTTPS (argv: SERVER_IP, its key and certificate) and a
# UDP :443 "HTTP/3 server" writing every datagram it gets to argv[3].
API_AND_QUIC = r"""
import ssl, sys, threading
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
ip, pem, log = sys.argv[1], sys.argv[2], sys.argv[3]
def quic():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((ip, 443))
    while True:
        data, peer = u.recvfrom(4096)
        with open(log, "ab") as f:
            f.write(data + b"\n")
        u.sendto(b"h3 reply", peer)
threading.Thread(target=quic, daemon=True).start()
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer((ip, 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(pem)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""

QUIC_AGENT = r"""
import socket, urllib.error, urllib.request
ip = socket.gethostbyname("api.stripe.com")
try:
    print("https=%d" % urllib.request.urlopen("https://api.stripe.com/v1/balance", timeout=20).status, flush=True)
except urllib.error.HTTPError as err:
    print("https=%d" % err.code, flush=True)
except OSError as err:
    print("https=error", flush=True)
for label, call in (("udp_sendto", lambda u: u.sendto(b"POST /v1/refunds amount=80000", (ip, 443))),
                    ("udp_connect", lambda u: u.connect((ip, 443)))):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    try:
        call(u)
        print(f"{label}=ok", flush=True)
    except OSError as err:
        print(f"{label}=errno:{err.errno}", flush=True)
"""

# examples/payment-bot.fpl's network rule, a send rule as broad, and one API call to inspect.
PAYMENT_POLICY = """agent a {
  default deny
  rules {
    permit shell/exec
    permit fs/*
    permit net/dns when host == "api.stripe.com"
    permit net/connect when args.host == "api.stripe.com" && args.port == 443
    permit net/send when args.host == "api.stripe.com" && args.port == 443
    permit http/get host: api.stripe.com path: /v1/balance
  }
}
"""


@pytest.fixture
def quic_world(tmp_path, monkeypatch):
    """api.stripe.com resolving to SERVER_IP in a scratch namespace: HTTPS and UDP on port 443."""
    log = tmp_path / "datagrams.log"
    log.touch()
    monkeypatch.setitem(dns_fake.ZONE, "api.stripe.com.", [("A", 300, SERVER_IP)])
    dns = fake_dns()
    try:
        with scratch_https_server(tmp_path, "api.stripe.com", API_AND_QUIC, str(log)) as ca:
            host, port = dns.address
            yield {"log": log, "options": ("--dns-upstream", f"{host}:{port}", "--egress-upstream-ca", str(ca))}
    finally:
        dns.close()


def test_udp_to_an_inspected_api_is_refused_while_https_goes_through_the_egress(quic_world, tmp_path):
    """Without the egress the rules let a datagram to api.stripe.com:443 out; with it the HTTPS
    GET is inspected and permitted, and UDP to that host and port fails with EPERM, recorded
    with the egress's reason, though net/connect and net/send rules permit it."""
    bare = sandboxed(PAYMENT_POLICY, [sys.executable, "-c", QUIC_AGENT], tmp_path,
                     options=(*quic_world["options"], "--no-egress"))
    assert (bare.lines()["udp_sendto"], bare.lines()["udp_connect"]) == ("ok", "ok"), bare.explain()
    assert quic_world["log"].read_bytes() == b"POST /v1/refunds amount=80000\n"
    quic_world["log"].write_bytes(b"")

    run = sandboxed(PAYMENT_POLICY, [sys.executable, "-c", QUIC_AGENT], tmp_path, options=quic_world["options"])
    assert run.lines() == {"https": "200", "udp_sendto": "errno:1", "udp_connect": "errno:1"}, run.explain()
    assert quic_world["log"].read_bytes() == b""
    assert [(r["syscall"], r["tool"], r["args"]["host"], r["args"]["port"], r["args"]["protocol"], r["reason_code"])
            for r in run.denials("net/")] == [
        ("sendto", "net/send", "api.stripe.com", 443, "udp", "EGRESS_INSPECTED_UDP"),
        ("connect", "net/connect", "api.stripe.com", 443, "udp", "EGRESS_INSPECTED_UDP")]
    assert [(r["tool"], r["args"].get("path"), r["effect"]) for r in run.audit if r.get("syscall") == "http"] == [
        ("http/get", "/v1/balance", "PERMIT")]
    assert all("HTTP/3" in r["reason"] for r in run.denials("net/"))
