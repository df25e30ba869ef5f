"""Datagrams through sendmsg and sendmmsg, and the DNS stub redirect."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sandbox import netops
from tests.sandbox.test_net_connect import net_records, run_python


@pytest.fixture
def sinks():
    """Two UDP sockets on 127.0.0.1 that tests read from."""
    made = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sink in made:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(5)
    yield made
    for sink in made:
        sink.close()


SENDMSG = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in ({allowed}, {denied}):
    try:
        print("sent", s.sendmsg([b"two ", b"parts"], [], 0, ("127.0.0.1", port)))
    except OSError as err:
        print("errno", err.errno)
"""


def test_udp_sendmsg_with_an_address_is_decided_and_sends_every_buffer(sinks):
    """sendmsg to an address is net/send: the permitted datagram arrives whole, the denied one fails."""
    allowed, denied = (sink.getsockname()[1] for sink in sinks)
    run = run_python(SENDMSG.format(allowed=allowed, denied=denied), f"permit net/send host: 127.0.0.1 port: {allowed}")
    assert run.stdout == b"sent 9\nerrno 1\n", run.explain()
    assert sinks[0].recv(32) == b"two parts"
    assert [r[:2] + r[-2:] for r in net_records(run)] == [("sendmsg", "net/send", "PERMIT", "RULE_PERMIT"),
                                                          ("sendmsg", "net/send", "DENY", "UNMATCHED_DENY")]


SENDMMSG = r"""
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", {port}))
data = [ctypes.create_string_buffer(b"first"), ctypes.create_string_buffer(b"second")]
iovs = [struct.pack("=QQ", ctypes.addressof(d), len(d.value)) for d in data]
iov_buffers = [ctypes.create_string_buffer(v, 16) for v in iovs]
entries = b"".join(struct.pack("=QI4xQQQQi4xI4x", 0, 0, ctypes.addressof(b), 1, 0, 0, 0, 0) for b in iov_buffers)
vec = ctypes.create_string_buffer(entries, len(entries))
sent = libc.syscall(307, s.fileno(), vec, 2, 0)
lengths = [struct.unpack_from("=I", vec.raw, 56 + 64 * i)[0] for i in range(2)]
print(sent, lengths[0])
"""


def test_sendmmsg_sends_the_first_message_and_reports_its_length(sinks):
    """sendmmsg on a connected socket sends one message, returns 1 and fills in its msg_len."""
    port = sinks[0].getsockname()[1]
    run = run_python(SENDMMSG.format(port=port), f"permit net/connect host: 127.0.0.1 port: {port}")
    assert run.stdout == b"1 5\n", run.explain()
    assert sinks[0].recv(32) == b"first"


DNS = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"query", ("127.0.0.53", 53))
print(s.recv(16).decode())
"""


def test_dns_to_the_stub_address_is_redirected_without_a_decision(sinks, monkeypatch):
    """A datagram to 127.0.0.53:53 goes to the stub's real address, with no net/send decision."""
    stub = sinks[0]
    net = netops.NetContext(dns_redirect={"udp": stub.getsockname()})
    agent = run_python_async(DNS, net, monkeypatch)
    query, sender = stub.recvfrom(16)
    stub.sendto(b"answer", sender)
    run = agent()
    assert (query, run.stdout) == (b"query", b"answer\n"), run.explain()
    assert net_records(run) == []


def run_python_async(code: str, net, monkeypatch):
    """Start run_python in a thread; returns a function that waits for its Run."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(run=run_python(code, "", net=net, monkeypatch=monkeypatch)))
    thread.start()
    return lambda: (thread.join(30), box["run"])[1]


GLIBC_LOOKUP = """
import functools, socket, sys, threading
sys.path.insert(0, {repo!r})
import dns.message, dns.rrset
from sandbox import netops, supervisor
from tests.sandbox import conftest
from tests.sandbox.test_net_connect import NET_TRAPPED, decider
stub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
stub.bind(("127.0.0.1", 0))
def serve():
    while True:
        wire, peer = stub.recvfrom(4096)
        query = dns.message.from_wire(wire)
        reply = dns.message.make_response(query)
        if query.question[0].rdtype == 1:
            reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.55"))
        stub.sendto(reply.to_wire(), peer)
threading.Thread(target=serve, daemon=True).start()
net = netops.NetContext(dns_redirect={{"udp": stub.getsockname()}})
conftest.Supervisor = functools.partial(supervisor.Supervisor, net=net)
run = conftest.run_sandboxed(["getent", "hosts", "probe.example.test"], decider(""), trapped=NET_TRAPPED, timeout=30)
print(run.status, run.stdout.decode().split(), [r["tool"] for r in run.audit])
"""


def test_glibc_resolver_accepts_answers_through_the_redirect(tmp_path):
    """getent (glibc) with resolv.conf naming 127.0.0.53 gets the stub's answer via the redirect."""
    repo = str(Path(__file__).resolve().parents[2])
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\noptions timeout:2 attempts:1\n")
    script = tmp_path / "lookup.py"
    script.write_text(GLIBC_LOOKUP.format(repo=repo))
    done = subprocess.run(["unshare", "--mount", "--", "sh", "-c",
                           f'mount --bind "{resolv}" /etc/resolv.conf && exec "{sys.executable}" "{script}"'],
                          capture_output=True, timeout=60, cwd=repo)
    assert done.stdout == b"0 ['192.0.2.55', 'probe.example.test'] []\n", done.stderr.decode()[-2000:]
