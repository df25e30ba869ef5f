"""The address guard: loopback and the host's own addresses need a rule that names them."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import _netaddr, netops
from sandbox._netguard import guarded_address
from tests.sandbox.test_net_connect import Greeter, connect_code, net_records, run_python


@pytest.fixture
def greeter():
    server = Greeter()
    yield server
    server.close()


def test_loopback_through_a_permitted_name_is_refused(greeter, monkeypatch):
    """A name that resolves to 127.0.0.1 does not carry its permit: host is the literal, and it is denied."""
    names = {"127.0.0.1": "db.example.test"}.get
    run = run_python(connect_code("127.0.0.1", greeter.port), "permit net/connect host: db.example.test",
                     net=netops.NetContext(names=names), monkeypatch=monkeypatch)
    assert run.stdout == b"errno 1\n", run.explain()
    assert [r["args"]["host"] for r in run.audit] == ["127.0.0.1"]
    assert greeter.accepted == 0


@pytest.mark.parametrize("rules", ["permit net/connect port: {port}", "permit net/connect host: *",
                                   "permit net/connect"])
def test_a_rule_that_does_not_name_the_address_is_not_enough(greeter, rules):
    """Rules matching any address (a port only, host: *, no clause) are refused with GUARDED_ADDRESS."""
    run = run_python(connect_code("127.0.0.1", greeter.port), rules.format(port=greeter.port))
    assert run.stdout == b"errno 1\n", run.explain()
    assert [r[-2:] for r in net_records(run)] == [("DENY", "GUARDED_ADDRESS")]


@pytest.mark.parametrize("rules", ['permit net/connect host: 127.0.0.1', 'permit net/connect host: "127.*"',
                                   'permit net/connect when args.ip == "127.0.0.1"'])
def test_a_rule_naming_the_address_permits_it(greeter, rules):
    """host: 127.0.0.1, a loopback glob, or a condition on args.ip name the address: permitted."""
    run = run_python(connect_code("127.0.0.1", greeter.port), rules)
    assert run.stdout == b"got hello\n", run.explain()


def test_guarded_address_classes():
    """Loopback, link-local, metadata, unspecified and the host's own addresses are guarded; others not."""
    own = frozenset({"192.168.7.9"})
    checked = ["127.0.0.1", "127.8.0.1", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "::", "192.168.7.9",
               "192.168.7.10", "93.184.216.34", "2606:2800::1"]
    assert [guarded_address(ip, own) for ip in checked] == [True] * 8 + [False] * 3


def test_parse_follows_the_kernels_address_rules():
    """AF_UNSPEC, IPv4 on IPv6 sockets and mapped addresses are read as the kernel reads them."""
    v4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 53) + bytes([127, 0, 0, 53]) + bytes(8)
    unspec = struct.pack("=H", socket.AF_UNSPEC) + v4[2:]
    mapped = (struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 80) + bytes(4)
              + socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1") + bytes(4))
    assert _netaddr.parse(socket.AF_INET, unspec, "send", datagram=True).ip == "127.0.0.53"
    assert _netaddr.parse(socket.AF_INET, unspec, "connect") == _netaddr.DISCONNECT
    assert _netaddr.parse(socket.AF_INET6, unspec, "send", datagram=True) == _netaddr.NO_ADDRESS
    target = _netaddr.parse(socket.AF_INET6, mapped, "connect")
    assert (target.family, target.ip, target.port) == ("inet", "127.0.0.1", 80)
    assert target.sockaddr() == mapped[:8] + mapped[8:24] + bytes(4)
    assert _netaddr.parse(socket.AF_INET6, v4, "connect", datagram=True).sockaddr()[8:24] == \
        mapped[8:24][:12] + bytes([127, 0, 0, 53])
    for raw, expected in ((v4, 22), (v4 + bytes(12), 97)):  # tcp_v6_connect: too short, then the wrong family
        with pytest.raises(OSError) as raised:
            _netaddr.parse(socket.AF_INET6, raw, "connect")
        assert raised.value.errno == expected
    with pytest.raises(OSError) as raised:
        _netaddr.parse(socket.AF_INET, v4[:15], "connect")
    assert raised.value.errno == 22
    with pytest.raises(OSError) as raised:  # AF_UNSPEC binds only 0.0.0.0, as the kernel's compatibility rule
        _netaddr.parse(socket.AF_INET, unspec, "bind")
    assert raised.value.errno == 97


BY_NAME = """
import json, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", "198.18.0.7/32", "dev", "lo"], check=True)
sys.path.insert(0, {repo!r})
from sandbox import netops
from tests.sandbox import test_net_connect as t
import pytest
server = t.Greeter("198.18.0.7")
names = {{"198.18.0.7": "api.example.test"}}.get
mp = pytest.MonkeyPatch()
out = {{}}
for label, rules in (("named", "permit net/connect host: api.example.test"),
                     ("other", "permit net/connect host: other.example.test")):
    run = t.run_python(t.connect_code("198.18.0.7", server.port), rules, net=netops.NetContext(names=names),
                       monkeypatch=mp)
    out[label] = [run.stdout.decode(), [r["args"]["host"] for r in run.audit]]
print(json.dumps(out))
"""


def test_connect_is_decided_on_the_dns_name_of_an_unguarded_address():
    """In a scratch network namespace, 198.18.0.7 known as api.example.test is permitted by name only."""
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", BY_NAME.format(repo=repo)],
                          capture_output=True, timeout=60, cwd=repo)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout) == {"named": ["got hello\n", ["api.example.test"]],
                                       "other": ["errno 1\n", ["api.example.test"]]}
