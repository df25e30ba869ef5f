"""The egress proxy's limits, on loopback: connections served at once, the time a request has to
arrive whole, the bytes held across connections, an accept loop that outlives EMFILE and a thread
that cannot start, plain HTTP to a TLS port, and the CA's bounded cache of server contexts."""

from __future__ import annotations

import errno
import json
import socket
import ssl
import threading
import time

import pytest

import policy
from launcher.run_egress import EgressPlan
from sandbox.egress import ca as ca_module
from sandbox.egress.ca import CertificateAuthority
from sandbox.egress.catalogue import Catalogue
from sandbox.egress.deciding import Decider
from sandbox.egress.proxy import Destination, EgressProxy

HOST = "api.svc.test"
POLICY = """agent a {
  default deny
  rules {
    permit http/get host: api.svc.test path: /v1/*
  }
}
"""
NOWHERE = 9  # discard: nothing here is ever contacted (every request below is refused before upstream)


@pytest.fixture(scope="module")
def authority():
    return CertificateAuthority("limits")


@pytest.fixture
def make_proxy(authority):
    made = []

    def make(start=True, **limits):
        engine = policy.Engine([policy.load_policy(POLICY, "p.fpl")], policy.SessionStore())
        catalogue = Catalogue.load()
        plan = EgressPlan.build([("p.fpl", policy.parse(POLICY, "p.fpl"))], catalogue)
        records: list[dict] = []
        decider = Decider(engine.decide, records.append, None, 0.1, "s1", catalogue, plan, environ={})
        proxy = EgressProxy(authority, decider, ssl.create_default_context(), **limits)
        proxy.records = records
        made.append(proxy)
        if start:
            proxy.start()
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def agent(proxy, port=NOWHERE) -> socket.socket:
    """A connection registered the way the socket broker registers it."""
    sock = socket.create_connection(proxy.address("inet"), timeout=5)
    proxy.registry.register(sock.getsockname(), Destination(HOST, "127.0.0.1", port))
    return sock


def get(path: str = "/admin") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def response(sock: socket.socket) -> tuple[int, dict] | None:
    """The status and JSON body of one response; None when the connection ends without one."""
    data = b""
    try:
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(body) >= length:
                    return int(head.split()[1]), json.loads(body[:length] or b"null")
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except ConnectionResetError:
        return None


def wait_for(check, seconds=5.0):
    until = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.01)


# -- connections served at once -----------------------------------------------------------------

def test_connections_over_the_cap_are_closed_at_once_and_the_proxy_keeps_serving(make_proxy):
    proxy = make_proxy(max_connections=2)
    held = [agent(proxy), agent(proxy)]  # registered and silent: each holds a place
    over = agent(proxy)
    started = time.monotonic()
    over.sendall(get())
    assert response(over) is None  # closed unanswered, at once
    assert time.monotonic() - started < 2
    assert response_to(held[1], get()) == (403, "UNMATCHED_DENY")  # those served are served still
    held[0].close()

    def served() -> bool:  # the place held[0] had is free again
        with agent(proxy) as sock:
            sock.sendall(get())
            answer = response(sock)
        return answer is not None and answer[1]["error"]["code"] == "UNMATCHED_DENY"
    wait_for(served)
    held[1].close()
    over.close()


def response_to(sock: socket.socket, request: bytes) -> tuple[int, str] | None:
    sock.sendall(request)
    answer = response(sock)
    return None if answer is None else (answer[0], answer[1]["error"]["code"])


# -- the time a request has to arrive -----------------------------------------------------------

def test_a_trickled_request_is_cut_at_its_deadline(make_proxy):
    """A body sent a byte at a time (each recv is answered in time) is still refused once the
    request has taken longer than the deadline, and the refusal is recorded."""
    proxy = make_proxy(request_deadline=0.5)
    sock = agent(proxy)
    sock.sendall(f"POST /v1/orders HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                 "Content-Length: 100\r\n\r\n{".encode())
    stop = threading.Event()

    def trickle():
        while not stop.wait(0.05):
            try:
                sock.send(b" ")
            except OSError:
                return
    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    started = time.monotonic()
    try:
        answer = response(sock)
    finally:
        stop.set()
        feeder.join()
    assert answer is not None and (answer[0], answer[1]["error"]["code"]) == (403, "EGRESS_TIMEOUT")
    assert time.monotonic() - started < 3
    assert [(r["tool"], r["effect"], r["reason_code"]) for r in proxy.records] == \
        [("http/request", "DENY", "EGRESS_TIMEOUT")]
    assert "0.5 s" in proxy.records[0]["reason"]


def test_the_deadline_counts_from_each_requests_first_byte(make_proxy):
    """A keep-alive connection silent between requests for longer than the deadline is not cut."""
    proxy = make_proxy(request_deadline=0.3)
    sock = agent(proxy)
    assert response_to(sock, get()) == (403, "UNMATCHED_DENY")
    time.sleep(0.6)
    assert response_to(sock, get("/other")) == (403, "UNMATCHED_DENY")


def test_a_stalled_tls_handshake_is_cut_at_the_deadline(make_proxy):
    proxy = make_proxy(request_deadline=0.5)
    sock = agent(proxy, port=443)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
    started = time.monotonic()
    assert response(sock) is None
    assert time.monotonic() - started < 3
    wait_for(lambda: proxy.records)
    assert [(r["tool"], r["reason_code"]) for r in proxy.records] == [("net/tls", "EGRESS_TIMEOUT")]


# -- bytes held across connections --------------------------------------------------------------

def test_a_request_that_would_pass_the_shared_byte_limit_is_refused(make_proxy):
    proxy = make_proxy(max_buffered=200_000)
    proxy.decider.max_body = 150_000  # the limit is then 150_000 + 64 KiB of headers: 215_536 bytes
    stalled = agent(proxy)
    stalled.sendall(f"POST /v1/orders HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\n"
                    "Content-Length: 150000\r\n\r\n".encode() + b"a" * 149_999)
    wait_for(lambda: proxy.budget.used >= 149_999)
    body = b"b" * 70_000
    request = (f"POST /v1/other HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with agent(proxy) as second:
        second.sendall(request)
        status, answer = response(second)
    assert (status, answer["error"]["code"]) == (403, "EGRESS_OVERLOADED")
    assert "215536-byte limit" in answer["error"]["message"]
    assert ("http/request", "EGRESS_OVERLOADED") in [(r["tool"], r["reason_code"]) for r in proxy.records]
    stalled.close()
    wait_for(lambda: proxy.budget.used == 0)  # given back with the connection
    with agent(proxy) as third:
        assert response_to(third, request) == (403, "UNMATCHED_DENY")  # read whole and decided
    wait_for(lambda: proxy.budget.used == 0)


# -- the accept loop ----------------------------------------------------------------------------

class FlakyListener:
    """A listening socket whose accept() fails as told first (a process out of descriptors)."""

    def __init__(self, sock: socket.socket, failures: list[OSError], forever: bool = False):
        self.sock, self.failures, self.forever = sock, failures, forever
        self.calls = 0

    def accept(self):
        self.calls += 1
        if self.forever:
            time.sleep(0.01)
            raise OSError(errno.EMFILE, "Too many open files")
        if self.failures:
            raise self.failures.pop(0)
        return self.sock.accept()

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_accept_loop_outlives_running_out_of_descriptors(make_proxy):
    proxy = make_proxy(start=False)
    proxy.listeners = {"inet": FlakyListener(proxy.listeners["inet"], [
        OSError(code, "injected") for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)])}
    proxy.start()
    with agent(proxy) as sock:
        assert response_to(sock, get()) == (403, "UNMATCHED_DENY")
    assert proxy.listeners["inet"].calls >= 5


def test_accept_loop_outlives_a_thread_that_cannot_start(make_proxy, monkeypatch):
    proxy = make_proxy(max_connections=1)
    failed = []

    class NoThread(threading.Thread):
        def start(self):
            if self.name == "egress-conn" and not failed:
                failed.append(self.name)
                raise RuntimeError("can't start new thread")
            super().start()
    monkeypatch.setattr(threading, "Thread", NoThread)
    with agent(proxy) as first:
        first.sendall(get())
        assert response(first) is None  # closed: nothing could serve it
    with agent(proxy) as second:  # its place was given back: max_connections=1
        assert response_to(second, get()) == (403, "UNMATCHED_DENY")
    assert failed == ["egress-conn"]


def test_close_is_prompt_while_accept_keeps_failing(make_proxy):
    proxy = make_proxy(start=False)
    proxy.listeners = {"inet": FlakyListener(proxy.listeners["inet"], [], forever=True)}
    proxy.start()
    wait_for(lambda: proxy.listeners["inet"].calls >= 3)  # backing off, still trying
    started = time.monotonic()
    proxy.close()
    for accepting in proxy._accepting:
        accepting.join(timeout=2)
        assert not accepting.is_alive()
    assert time.monotonic() - started < 1


# -- plain HTTP to a TLS port -------------------------------------------------------------------

def test_plain_http_to_port_443_is_refused_and_recorded(make_proxy):
    """A request the policy permits is still refused in cleartext to 443: nothing is decided or sent."""
    proxy = make_proxy()
    with agent(proxy, port=443) as sock:
        sock.sendall(f"GET /v1/items HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer x\r\n\r\n".encode())
        status, body = response(sock)
        assert (status, body["error"]["code"]) == (403, "EGRESS_CLEARTEXT")
        assert "use https://" in body["error"]["message"]
        assert sock.recv(1) == b""  # and the connection is closed
    assert [(r["tool"], r["effect"], r["reason_code"], r["args"]) for r in proxy.records] == [
        ("http/request", "DENY", "EGRESS_CLEARTEXT", {"host": HOST, "port": 443, "method": "GET",
                                                      "target": "/v1/items"})]


def test_plain_http_to_port_443_that_is_not_http_is_refused_too(make_proxy):
    proxy = make_proxy()
    with agent(proxy, port=443) as sock:
        sock.sendall(b"\x00\x01 not http at all\r\n\r\n")
        assert response(sock) is None
    wait_for(lambda: proxy.records)
    assert [(r["tool"], r["reason_code"]) for r in proxy.records] == [("http/request", "EGRESS_CLEARTEXT")]


# -- the CA's server contexts -------------------------------------------------------------------

def test_server_contexts_are_a_bounded_lru():
    authority = CertificateAuthority("lru", max_contexts=3)
    first = {name: authority.context_for(name) for name in ("a.test", "b.test", "c.test")}
    assert authority.context_for("a.test") is first["a.test"]  # a.test is now the most recent
    authority.context_for("d.test")  # b.test, the least recently used, goes
    assert list(authority._contexts) == ["c.test", "a.test", "d.test"]
    assert authority.context_for("a.test") is first["a.test"]
    assert authority.context_for("b.test") is not first["b.test"]  # made again when needed
    assert len(authority._contexts) == 3
    assert ca_module.MAX_CONTEXTS == 256 and CertificateAuthority()._max_contexts == 256
