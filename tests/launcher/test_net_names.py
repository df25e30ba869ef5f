"""`faramesh-sandbox run` resolves through its DNS stub: lookups are decisions, connects carry the
name, a name that resolves to loopback is refused, and curl and urllib work unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.sandbox import dns_fake
from tests.sandbox.test_net_connect import Greeter

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
SERVER_IP = "198.18.0.2"  # benchmarking range, inside a network namespace the test creates
HOST_SIDE_IP = "198.18.0.1"

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
def scratch_server():
    """An HTTP server on SERVER_IP:8080 in its own network namespace, routed from the host by a veth."""
    ns, veth = f"fs-{uuid.uuid4().hex[:8]}", f"fv{uuid.uuid4().hex[:8]}"
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    server = None
    try:
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "addr", "add", f"{HOST_SIDE_IP}/30", "dev", veth)
        run("ip", "link", "set", veth, "up")
        run("ip", "-n", ns, "addr", "add", f"{SERVER_IP}/30", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        site = Path(f"/tmp/{ns}")
        site.mkdir()
        (site / "index.html").write_text("hello from svc\n")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "8080",
                                   "--bind", SERVER_IP, "--directory", str(site)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            probe = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                                    f"import socket; socket.create_connection(('{SERVER_IP}', 8080), 1)"],
                                   capture_output=True)
            if probe.returncode == 0:
                break
        yield
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["rm", "-rf", f"/tmp/{ns}"])


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
