"""The socket broker's egress hook: a permitted connect to an inspected host goes to the proxy
instead, registered under the socket's local address; other connects are untouched."""

from __future__ import annotations


import pytest

from sandbox import netops
from tests.sandbox.test_net_connect import Greeter, net_records, run_python

INSPECTED = ("192.0.2.10", 443)  # documentation address: never contacted, the hook redirects it


class Hook:
    """Stands in for the egress: sends inspected connections to a greeter, records registrations."""

    def __init__(self, proxy: Greeter):
        self.proxy, self.registered, self.asked = proxy, [], []

    def __call__(self, name, ip, port, family):
        self.asked.append((name, ip, port, family))
        if (ip, port) != INSPECTED:
            return None
        address = ("::1" if family == "inet6" else "127.0.0.1", self.proxy.port)
        return address, lambda local: self.registered.append((local[0], local[1], ip, port))


class PeerGreeter(Greeter):
    """A greeter that also remembers each client's address."""

    def __init__(self, host="127.0.0.1"):
        self.peers = []
        super().__init__(host)

    def _serve(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append((peer[0], peer[1]))
            conn.sendall(b"hello")
            conn.close()


@pytest.fixture
def hook():
    proxy = PeerGreeter()
    yield Hook(proxy)
    proxy.close()


AGENT = """
import socket, sys
for host, port, label in (("192.0.2.10", 443, "inspected"), ("127.0.0.1", int(sys.argv[1]), "direct")):
    s = socket.create_connection((host, port), timeout=5)
    print(label, s.recv(5).decode(), flush=True)
"""


def test_inspected_connect_reaches_the_proxy_and_is_registered(hook, monkeypatch):
    """The agent's connect to 192.0.2.10:443 lands on the proxy, registered by the local address
    the proxy sees; a connect to another address goes where it was aimed."""
    direct = Greeter()
    try:
        net = netops.NetContext(intercept=hook)
        code = AGENT.replace("int(sys.argv[1])", str(direct.port))
        run = run_python(code, "permit net/connect host: 127.0.0.1\n permit net/connect", net=net,
                         monkeypatch=monkeypatch)
    finally:
        direct.close()
    assert run.stdout.decode().splitlines() == ["inspected hello", "direct hello"], run.explain()
    assert hook.registered == [(ip, port, "192.0.2.10", 443) for ip, port in hook.proxy.peers]
    assert len(hook.registered) == 1
    assert [r[1:5] for r in net_records(run)] == [("net/connect", "192.0.2.10", 443, "PERMIT"),
                                                  ("net/connect", "127.0.0.1", direct.port, "PERMIT")]


def test_denied_connect_never_reaches_the_proxy(hook, monkeypatch):
    """The hook only follows a permitted net/connect: a denied one fails with EPERM, unregistered."""
    code = ("import socket\ntry:\n socket.create_connection(('192.0.2.10', 443), timeout=5)\n"
            "except OSError as e:\n print(e.errno)")
    run = run_python(code, "permit net/connect port: 80", net=netops.NetContext(intercept=hook),
                     monkeypatch=monkeypatch)
    assert (run.stdout, hook.registered, hook.proxy.peers) == (b"1\n", [], [])


def test_fast_open_to_an_inspected_host_is_refused(hook, monkeypatch):
    """TCP Fast Open would carry data past the proxy: it fails with EOPNOTSUPP (95), nothing is sent."""
    code = ("import socket\ns = socket.socket()\ntry:\n s.sendto(b'GET / HTTP/1.1\\r\\n\\r\\n', socket.MSG_FASTOPEN, "
            "('192.0.2.10', 443))\nexcept OSError as e:\n print(e.errno)")
    run = run_python(code, "permit net/connect", net=netops.NetContext(intercept=hook), monkeypatch=monkeypatch)
    assert (run.stdout, hook.registered, hook.proxy.peers) == (b"95\n", [], [])


def test_ipv6_socket_reaches_the_ipv6_listener(monkeypatch):
    """An IPv6 socket aimed at an inspected IPv4-mapped address is sent to the proxy over IPv6."""
    proxy = PeerGreeter("::1")
    try:
        hook = Hook(proxy)
        code = ("import socket\ns = socket.socket(socket.AF_INET6)\ns.settimeout(5)\n"
                "s.connect(('::ffff:192.0.2.10', 443))\nprint(s.recv(5).decode())")
        run = run_python(code, "permit net/connect", net=netops.NetContext(intercept=hook), monkeypatch=monkeypatch)
    finally:
        proxy.close()
    assert run.stdout == b"hello\n", run.explain()
    assert hook.asked == [(None, "192.0.2.10", 443, "inet6")]
    assert hook.registered == [(proxy.peers[0][0], proxy.peers[0][1], "192.0.2.10", 443)]
