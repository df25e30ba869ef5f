"""Socket families and types decided by argument in the filter; real clients through the supervisor."""

from __future__ import annotations

import http.server
import shutil
import socket
import threading

import pytest

from tests.sandbox.conftest import run_sandboxed
from tests.sandbox.test_net_connect import NET_TRAPPED, decider, net_records, run_python

FAMILIES = """
import errno, socket
cases = [("inet raw", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
         ("inet6 raw", socket.AF_INET6, socket.SOCK_RAW, 58),
         ("packet", socket.AF_PACKET, socket.SOCK_RAW, 0),
         ("vsock", 40, socket.SOCK_STREAM, 0),
         ("netlink audit", socket.AF_NETLINK, socket.SOCK_RAW, 9),
         ("netlink route", socket.AF_NETLINK, socket.SOCK_RAW, 0),
         ("unix", socket.AF_UNIX, socket.SOCK_STREAM, 0),
         ("inet sctp", socket.AF_INET, socket.SOCK_SEQPACKET, 132),
         ("inet icmp dgram", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)]
for label, family, kind, proto in cases:
    try:
        socket.socket(family, kind, proto).close()
        print(label, "ok")
    except OSError as err:
        print(label, errno.errorcode[err.errno])
try:
    socket.socketpair(socket.AF_INET, socket.SOCK_STREAM)
except OSError as err:
    print("inet socketpair", errno.errorcode[err.errno])
print("if_nameindex has lo", "lo" in [name for _, name in socket.if_nameindex()])
"""


def test_socket_families_and_types():
    """Raw internet sockets get EPERM, packet, vsock and other families EAFNOSUPPORT; unix and netlink
    route work (glibc's if_nameindex sends to a netlink address, undecided)."""
    run = run_python(FAMILIES, "")
    assert run.stdout.decode().splitlines() == [
        "inet raw EPERM", "inet6 raw EPERM", "packet EAFNOSUPPORT", "vsock EAFNOSUPPORT",
        "netlink audit EPROTONOSUPPORT", "netlink route ok", "unix ok", "inet sctp ESOCKTNOSUPPORT",
        "inet icmp dgram EPROTONOSUPPORT", "inet socketpair EAFNOSUPPORT", "if_nameindex has lo True"], run.explain()


HOST_NAMESPACE_CONTROLS = """
import errno, fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for label, call in (("SIOCGIFCONF", lambda: fcntl.ioctl(s, 0x8912, struct.pack("iL", 0, 0))),
                    ("SIOCSIFFLAGS", lambda: fcntl.ioctl(s, 0x8914, b"lo" + bytes(38))),
                    ("IPT_SO_SET_REPLACE", lambda: s.setsockopt(socket.SOL_IP, 64, bytes(8))),
                    ("SO_MARK", lambda: s.setsockopt(socket.SOL_SOCKET, 36, 1)),
                    ("SO_REUSEADDR", lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1))):
    try:
        call()
        print(label, "ok")
    except OSError as err:
        print(label, errno.errorcode[err.errno])
"""


def test_host_namespace_controls_are_refused_on_supervisor_made_sockets():
    """Interface ioctls, netfilter options and SO_MARK fail with EPERM; ordinary options still work."""
    run = run_python(HOST_NAMESPACE_CONTROLS, "")
    assert run.stdout.decode().splitlines() == ["SIOCGIFCONF EPERM", "SIOCSIFFLAGS EPERM", "IPT_SO_SET_REPLACE EPERM",
                                                "SO_MARK EPERM", "SO_REUSEADDR ok"], run.explain()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server(tmp_path):
    (tmp_path / "hello.txt").write_text("served\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


URLLIB = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:{port}/hello.txt", timeout=10).read().decode(), end="")
"""


def test_urllib_fetches_from_a_permitted_local_server(http_server):
    """urllib, unchanged, fetches a page through a connection the policy permits."""
    run = run_python(URLLIB.format(port=http_server), f"permit net/connect host: 127.0.0.1 port: {http_server}")
    assert run.stdout == b"served\n", run.explain()


def test_curl_permitted_and_denied(http_server):
    """curl gets the page when permitted and fails to connect (exit 7) when denied."""
    curl = shutil.which("curl")
    argv = [curl, "-sS", "--max-time", "10", f"http://127.0.0.1:{http_server}/hello.txt"]
    allowed = run_sandboxed(argv, decider(f"permit net/connect host: 127.0.0.1 port: {http_server}"),
                            trapped=NET_TRAPPED, timeout=60)
    denied = run_sandboxed(argv, decider("permit net/connect host: 127.0.0.1 port: 1"), trapped=NET_TRAPPED,
                           timeout=60)
    assert (allowed.status, allowed.stdout) == (0, b"served\n"), allowed.explain()
    assert denied.status == 7, denied.explain()
    assert denied.stderr.startswith(b"curl: (7) Failed to connect to 127.0.0.1")
    assert [r[-2:] for r in net_records(denied)] == [("DENY", "UNMATCHED_DENY")]
