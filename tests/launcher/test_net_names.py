"""`faramesh-sandbox run` resolves through its DNS stub: lookups are decisions, connects carry the
name, a name that resolves to loopback is refused, and curl and urllib work unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launcher.scratch_netns import SERVER_IP, server_in_scratch_netns
from tests.sandbox import dns_fake
from tests.sandbox.test_net_connect import Greeter

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]

AGENT = r"""
import socket, sys, urllib.request
def attempt(label, action):
    try:
        print(label, action())
    except OSError as err:
        print(label, type(err).__name__, getattr(err, "errno", None))
attempt("urllib", lambda: urllib.request.urlopen("http://svc.test:8080/", timeout=10).read().decode().strip())
attempt("lookup-denied", lambda: socket.getaddrinfo("exfil-secret.test", 80, type=socket.SOCK_STREAM)[0][4][0])
attempt("rebind", lambda: socket.create_connection(("rebind.test", int(sys.argv[2])), timeout=5).recv(5).decode())
attempt("explicit", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).recv(5).decode())
"""

POLICY = """agent a {
  default deny
  rules {
    permit fs/*
    permit shell/exec
    permit net/dns when host in ["svc.test", "rebind.test"]
    permit net/connect host: svc.test port: 8080
    permit net/connect host: rebind.test
    permit net/connect host: 127.0.0.1 port: %(port)d
  }
}
"""


@pytest.fixture
def scratch_server(tmp_path_factory):
    """An HTTP server on SERVER_IP:8080 in its own network namespace, routed from the host by a veth."""
    site = tmp_path_factory.mktemp("site")
    (site / "index.html").write_text("hello from svc\n")
    command = [sys.executable, "-m", "http.server", "8080", "--bind", SERVER_IP, "--directory", str(site)]
    with server_in_scratch_netns(command, 8080):
        yield


@pytest.fixture
def upstream(monkeypatch):
    monkeypatch.setitem(dns_fake.ZONE, "svc.test.", [("A", 300, SERVER_IP)])
    monkeypatch.setitem(dns_fake.ZONE, "rebind.test.", [("A", 300, "127.0.0.1")])
    monkeypatch.setitem(dns_fake.ZONE, "exfil-secret.test.", [("A", 300, "192.0.2.99")])
    fake = dns_fake.FakeUpstream()
    yield fake
    fake.close()


def run_agent(tmp_path, upstream, *command: str, port: int) -> tuple[subprocess.CompletedProcess, list[dict]]:
    policy = tmp_path / "p.fpl"
    policy.write_text(POLICY % {"port": port})
    audit = tmp_path / "audit.jsonl"
    host, dns_port = upstream.address
    done = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy), "--audit", str(audit),
                           "--no-audit-db", "--dns-upstream", f"{host}:{dns_port}", "--", *command],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done, [json.loads(line) for line in audit.read_text().splitlines()]


def test_names_are_decided_remembered_and_guarded(tmp_path, upstream, scratch_server):
    """urllib reaches a permitted name, a denied lookup never leaves, a permitted name that
    resolves to loopback is refused (rebinding), and a loopback port named by address is permitted."""
    greeter, loopback_only = Greeter(), Greeter()
    try:
        done, records = run_agent(tmp_path, upstream, sys.executable, "-c", AGENT, str(greeter.port),
                                  str(loopback_only.port), port=greeter.port)
        assert loopback_only.accepted == 0
    finally:
        greeter.close()
        loopback_only.close()
    assert done.stdout.splitlines() == [
        "urllib hello from svc",
        "lookup-denied gaierror -3",  # EAI_AGAIN: the stub answers REFUSED (docs/network.md)
        "rebind PermissionError 1",
        "explicit hello",
    ], done.stderr
    asked = {name for name, _type, _transport, _id in upstream.seen}
    assert "exfil-secret.test." not in asked and "svc.test." in asked
    connects = [(r["args"].get("host"), r["args"]["port"], r["effect"], r["reason_code"])
                for r in records if r["tool"] == "net/connect"]
    assert connects == [("svc.test", 8080, "PERMIT", "RULE_PERMIT"),
                        ("127.0.0.1", loopback_only.port, "DENY", "UNMATCHED_DENY"),  # host is the address, not the name
                        ("127.0.0.1", greeter.port, "PERMIT", "RULE_PERMIT")]
    lookups = {(r["args"]["host"], r["effect"]) for r in records if r["tool"] == "net/dns"}
    assert ("exfil-secret.test", "DENY") in lookups and ("svc.test", "PERMIT") in lookups


def test_curl_resolves_through_the_stub(tmp_path, upstream, scratch_server):
    """curl, unmodified, fetches from a permitted name through the sandbox's resolver."""
    done, records = run_agent(tmp_path, upstream, "curl", "-sS", "--max-time", "10", "http://svc.test:8080/", port=1)
    assert (done.returncode, done.stdout) == (0, "hello from svc\n"), done.stderr
    assert [r["args"]["host"] for r in records if r["tool"] == "net/connect"] == ["svc.test"]
