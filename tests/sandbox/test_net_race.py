"""A thread rewriting the sockaddr while the supervisor decides never gets a denied address through."""

from __future__ import annotations

import socket

import pytest

from tests.sandbox.conftest import run_sandboxed
from tests.sandbox.test_net_connect import NET_TRAPPED, decider

TRIES = 20_000


@pytest.fixture
def ports():
    """Two bound UDP sockets on 127.0.0.1: (allowed, denied)."""
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sink in sinks:
        sink.bind(("127.0.0.1", 0))
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    yield sinks
    for sink in sinks:
        sink.close()


def drained(sink: socket.socket) -> int:
    sink.setblocking(False)
    count = 0
    while True:
        try:
            sink.recv(16)
        except BlockingIOError:
            return count
        count += 1


def race(cbin, mode: str, allowed: int, denied: int):
    rules = f"permit net/connect host: 127.0.0.1 port: {allowed}\n permit net/send host: 127.0.0.1 port: {allowed}"
    run = run_sandboxed([cbin("net_race"), mode, str(allowed), str(denied), str(TRIES)], decider(rules),
                        trapped=NET_TRAPPED, timeout=120, audit_sink=lambda record: None)
    assert run.status == 0, run.explain()
    fields = run.stdout.split()
    return {fields[i].decode(): int(fields[i + 1]) for i in range(0, len(fields), 2)}


def test_flipped_connect_address_never_connects_to_the_denied_port(cbin, ports):
    """20,000 UDP connects through a sockaddr another thread flips: none lands on the denied port."""
    allowed, denied = (sink.getsockname()[1] for sink in ports)
    counts = race(cbin, "connect", allowed, denied)
    assert counts["bypass"] == 0
    assert counts["ok"] + counts["refused"] == TRIES
    assert counts["ok"] > 0 and counts["refused"] > 0, counts  # the flip really raced both ways


def test_flipped_sendto_address_never_delivers_to_the_denied_port(cbin, ports):
    """20,000 datagrams through a flipping sockaddr: the denied port receives none, the allowed all sent."""
    allowed, denied = (sink.getsockname()[1] for sink in ports)
    counts = race(cbin, "sendto", allowed, denied)
    assert drained(ports[1]) == 0
    assert counts["ok"] + counts["refused"] == TRIES
    assert counts["ok"] > 0 and counts["refused"] > 0, counts
