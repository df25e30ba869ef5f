"""Internet sockets under the supervisor: created on the host side, every address decided."""

from __future__ import annotations

import functools
import socket
import sys
import threading

import pytest

import policy
from sandbox import netops, supervisor, traced
from tests.sandbox import conftest
from tests.sandbox.conftest import run_sandboxed

BASE_RULES = "permit fs/*\n permit shell/exec\n"
# Only the network rows: the agent's own exec and file opens stay with the kernel here.
NET_TRAPPED = tuple(row.name for row in traced.TABLE if row.tool.startswith("net/"))


def decider(rules: str):
    """An engine's decide() for an agent policy with ``rules`` (files and exec permitted)."""
    layer = policy.load_policy(f"agent a {{\n default deny\n {BASE_RULES} {rules}\n}}", "net-test.fpl")
    return policy.Engine([layer], policy.SessionStore()).decide


def run_python(code: str, rules: str, *, net: netops.NetContext | None = None, monkeypatch=None):
    """Run ``python3 -c code`` sandboxed under ``rules``; with ``net`` the supervisor gets it."""
    if net is not None:
        monkeypatch.setattr(conftest, "Supervisor", functools.partial(supervisor.Supervisor, net=net))
    return run_sandboxed([sys.executable, "-c", code], decider(rules), trapped=NET_TRAPPED, timeout=60)


def net_records(run) -> list[tuple]:
    return [(r["syscall"], r["tool"], r["args"].get("ip"), r["args"].get("port"), r["effect"], r["reason_code"])
            for r in run.audit if r["tool"].startswith("net/")]


class Greeter:
    """A TCP server on ``host`` that sends b"hello" to each client, in a thread."""

    def __init__(self, host: str = "127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.sendall(b"hello")
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def greeter():
    server = Greeter()
    yield server
    server.close()


@pytest.fixture
def greeter6():
    server = Greeter("::1")
    yield server
    server.close()


CONNECT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=5) as s:
        print("got", s.recv(5).decode())
except OSError as err:
    print("errno", err.errno)
"""


def connect_code(host: str, port: int) -> str:
    return CONNECT.replace("sys.argv[1], int(sys.argv[2])", f"{host!r}, {port}")


def test_permitted_tcp_connect_reaches_the_server(greeter):
    """A connect the policy permits by address and port gets the server's greeting."""
    run = run_python(connect_code("127.0.0.1", greeter.port), f"permit net/connect host: 127.0.0.1 port: {greeter.port}")
    assert run.stdout == b"got hello\n", run.explain()
    assert net_records(run) == [("connect", "net/connect", "127.0.0.1", greeter.port, "PERMIT", "RULE_PERMIT")]


def test_denied_tcp_connect_fails_with_eperm_and_never_arrives(greeter):
    """A connect to a port no rule permits fails with EPERM and the server sees nobody."""
    run = run_python(connect_code("127.0.0.1", greeter.port), "permit net/connect host: 127.0.0.1 port: 1")
    assert run.stdout == b"errno 1\n", run.explain()
    assert greeter.accepted == 0
    assert net_records(run) == [("connect", "net/connect", "127.0.0.1", greeter.port, "DENY", "UNMATCHED_DENY")]


def test_ipv6_tcp_connect_permitted_and_denied(greeter6):
    """IPv6 connects are decided on the ::1 literal: permitted on the named port, denied elsewhere."""
    allowed = run_python(connect_code("::1", greeter6.port), f'permit net/connect host: "::1" port: {greeter6.port}')
    denied = run_python(connect_code("::1", greeter6.port), 'permit net/connect host: "::1" port: 2')
    assert (allowed.stdout, denied.stdout) == (b"got hello\n", b"errno 1\n"), allowed.explain() + denied.explain()
    assert net_records(allowed)[0][1:] == ("net/connect", "::1", greeter6.port, "PERMIT", "RULE_PERMIT")


UDP = """
import socket
s = socket.socket(socket.{family}, socket.SOCK_DGRAM)
for port in ({allowed}, {denied}):
    try:
        print("sent", s.sendto(b"ping", ({host!r}, port)))
    except OSError as err:
        print("errno", err.errno)
"""


@pytest.mark.parametrize("host,family", [("127.0.0.1", "AF_INET"), ("::1", "AF_INET6")])
def test_udp_sendto_is_net_send_per_datagram(host, family):
    """Each datagram to an address is a net/send decision: the permitted one arrives, the other fails."""
    family_id = getattr(socket, family)
    sinks = [socket.socket(family_id, socket.SOCK_DGRAM) for _ in range(2)]
    for sink in sinks:
        sink.bind((host, 0))
        sink.settimeout(5)
    allowed, denied = (sink.getsockname()[1] for sink in sinks)
    try:
        code = UDP.format(family=family, allowed=allowed, denied=denied, host=host)
        run = run_python(code, f'permit net/send host: "{host}" port: {allowed}')
        assert run.stdout == b"sent 4\nerrno 1\n", run.explain()
        assert sinks[0].recv(16) == b"ping"
        sinks[1].setblocking(False)
        with pytest.raises(BlockingIOError):
            sinks[1].recv(16)
        assert [r[1:] for r in net_records(run)] == [("net/send", host, allowed, "PERMIT", "RULE_PERMIT"),
                                                     ("net/send", host, denied, "DENY", "UNMATCHED_DENY")]
    finally:
        for sink in sinks:
            sink.close()


NONBLOCKING = """
import errno, select, socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
rc = s.connect_ex(("127.0.0.1", {port}))
print("connect", errno.errorcode.get(rc, rc))
select.select([], [s], [], 5)
print("so_error", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
select.select([s], [], [], 5)
print("got", s.recv(5).decode())
"""


def test_nonblocking_connect_returns_einprogress_as_natively(greeter):
    """A non-blocking connect performed on the agent's behalf answers EINPROGRESS, then completes."""
    run = run_python(NONBLOCKING.format(port=greeter.port), f"permit net/connect host: 127.0.0.1 port: {greeter.port}")
    assert run.stdout == b"connect EINPROGRESS\nso_error 0\ngot hello\n", run.explain()


SOCKET_INFO = """
import fcntl, os, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
flags = fcntl.fcntl(s.fileno(), fcntl.F_GETFL)
print(s.family.name, s.type.name, bool(flags & os.O_NONBLOCK), bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & 1))
"""


def test_socket_is_injected_with_the_agents_type_and_flags():
    """socket() returns a supervisor-made socket with the asked family, type, NONBLOCK and CLOEXEC."""
    run = run_python(SOCKET_INFO, "")
    assert run.stdout == b"AF_INET6 SOCK_DGRAM True True\n", run.explain()


BIND = """
import socket
for port in (0, {denied}):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        print("listening", s.getsockname()[1] != 0)
    except OSError as err:
        print("errno", err.errno)
"""


def test_bind_is_net_listen_on_ip_and_port():
    """bind() of an internet socket is net/listen {ip, port}: port 0 permitted here, another port denied."""
    run = run_python(BIND.format(denied=1), "permit net/listen when args.port == 0")
    assert run.stdout == b"listening True\nerrno 1\n", run.explain()
    assert [r[:2] + r[2:4] + r[4:5] for r in net_records(run)] == [("bind", "net/listen", "127.0.0.1", 0, "PERMIT"),
                                                                   ("bind", "net/listen", "127.0.0.1", 1, "DENY")]


FASTOPEN = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.sendto(b"early", socket.MSG_FASTOPEN, ("127.0.0.1", {port}))
    print("got", s.recv(5).decode())
except OSError as err:
    print("errno", err.errno)
"""


def test_tcp_fast_open_send_is_a_connect_decision(greeter):
    """sendto with MSG_FASTOPEN connects, so it is net/connect: denied here, and nothing arrives."""
    run = run_python(FASTOPEN.format(port=greeter.port), "permit net/connect host: 127.0.0.1 port: 1")
    assert run.stdout == b"errno 1\n", run.explain()
    assert greeter.accepted == 0
    assert [r[:2] + r[-2:] for r in net_records(run)] == [("sendto", "net/connect", "DENY", "UNMATCHED_DENY")]
