"""The payment policy enforced on an unmodified agent using the real `stripe` package over HTTPS:
small refunds pass, large ones wait for a person, the secret is injected by the egress, shells are denied."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import control
from sandbox.egress.ca import CertificateAuthority
from tests.launcher.scratch_netns import SERVER_IP, server_in_scratch_netns
from tests.sandbox import dns_fake

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
PYTHON = os.path.realpath(sys.executable)
SECRET = "sk_live_held_by_the_launcher"

# A stand-in for api.stripe.com: HTTPS on SERVER_IP:443, one JSON line per request in argv[3].
SERVER = r"""
import json, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs
pem, log = sys.argv[2], sys.argv[3]
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, "body": body, "auth": self.headers.get("Authorization")}) + "\n")
        form = {k: v[0] for k, v in parse_qs(body).items()}
        reply = json.dumps({"id": "re_1", "object": "refund", "amount": int(form.get("amount", 0)),
                            "status": "succeeded"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    do_GET = do_POST
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer((sys.argv[1], 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(pem)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""

AGENT = r"""
import os, subprocess, stripe
stripe.api_key = "sk_agent_placeholder"
def attempt(label, action):
    try:
        print(label, action(), flush=True)
    except stripe.StripeError as err:
        print(label, type(err).__name__, err.http_status, flush=True)
    except OSError as err:
        print(label, type(err).__name__, err.errno, flush=True)
attempt("small", lambda: stripe.Refund.create(charge="ch_small", amount=30000).amount)
attempt("large", lambda: stripe.Refund.create(charge="ch_large", amount=80000).amount)
attempt("list", lambda: len(stripe.Customer.list().data))
attempt("shell", lambda: subprocess.run(["/bin/sh", "-c", "true"]).returncode)
attempt("secret", lambda: os.environ.get("STRIPE_TEST_SECRET"))
"""

# The payment rules as written in examples/payment-bot.fpl, plus what running Python needs.
POLICY = f"""agent payment-bot {{
  default deny
  credential stripe {{
    scope refund
    backend env
    path "STRIPE_TEST_SECRET"
  }}
  rules {{
    deny! shell/* when args.path != "{PYTHON}" reason: "payment agents never run shell commands"
    permit shell/exec
    permit fs/*
    permit net/dns when host == "api.stripe.com"

    permit stripe/refund when amount <= 500
    defer stripe/refund
      when amount > 500
      notify: "finance"
      reason: "refunds over $500 need finance approval"

    permit net/connect when args.host == "api.stripe.com" && args.port == 443
  }}
}}
"""


@contextlib.contextmanager
def scratch_https_server(tmp_path: Path, name: str, script: str, *args: str):
    """``script`` (argv: SERVER_IP, its key and certificate for ``name``, ``args``) serving
    SERVER_IP:443 in its own network namespace, routed from the host by a veth; yields the
    file of its CA certificate (a CA of its own, for --egress-upstream-ca)."""
    authority = CertificateAuthority("upstream test")
    (tmp_path / "server.pem").write_bytes(authority.leaf_pem(name))
    (tmp_path / "upstream-ca.pem").write_bytes(authority.cert_pem)
    (tmp_path / "server.py").write_text(script)
    command = [sys.executable, str(tmp_path / "server.py"), SERVER_IP, str(tmp_path / "server.pem"), *args]
    with server_in_scratch_netns(command, 443):
        yield tmp_path / "upstream-ca.pem"


def fake_dns() -> dns_fake.FakeUpstream:
    """The fake resolver; its UDP port may be taken for TCP by someone else, so try a few."""
    for _ in range(4):
        try:
            return dns_fake.FakeUpstream()
        except OSError:
            continue
    return dns_fake.FakeUpstream()


@pytest.fixture
def stripe_server(tmp_path):
    """A fake api.stripe.com on SERVER_IP:443 logging each request."""
    log = tmp_path / "requests.jsonl"
    log.touch()
    with scratch_https_server(tmp_path, "api.stripe.com", SERVER, str(log)) as ca:
        yield {"log": log, "ca": ca}


@pytest.fixture
def world(tmp_path, monkeypatch, stripe_server):
    monkeypatch.setitem(dns_fake.ZONE, "api.stripe.com.", [("A", 300, SERVER_IP)])
    dns = fake_dns()
    (tmp_path / "p.fpl").write_text(POLICY)
    (tmp_path / "agent.py").write_text(AGENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(tmp_path / "run"),
           "FARAMESH_SANDBOX_CONFIG": str(tmp_path / "none.toml"), "STRIPE_TEST_SECRET": SECRET}
    yield {"tmp": tmp_path, "env": env, "dns": dns, **stripe_server}
    dns.close()


def start(world, *options: str) -> subprocess.Popen:
    host, port = world["dns"].address
    argv = [sys.executable, "-m", "launcher", "run", "--policy", str(world["tmp"] / "p.fpl"), "--no-audit-db",
            "--no-sdk-socket", "--no-prompt", "--audit", str(world["tmp"] / "audit.jsonl"),
            "--dns-upstream", f"{host}:{port}", "--egress-upstream-ca", str(world["ca"]), *options,
            "--", PYTHON, str(world["tmp"] / "agent.py")]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=world["env"],
                            cwd=ROOT, start_new_session=True)


def wait_pending(world) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            pending = control.request({"op": "list"}, directory=world["env"]["FARAMESH_SANDBOX_RUNTIME_DIR"])["pending"]
        except control.ControlError:
            pending = []
        if pending:
            return pending[0]
        time.sleep(0.05)
    raise AssertionError("the large refund never became pending")


def http_records(world) -> list[tuple]:
    lines = [json.loads(line) for line in (world["tmp"] / "audit.jsonl").read_text().splitlines()]
    return [(r["tool"], r["args"].get("amount"), r["effect"], r["reason_code"])
            for r in lines if r.get("syscall") == "http" and r.get("kind", "decision") == "decision"]


def upstream_saw(world) -> list[tuple]:
    return [(r["path"], r["body"], r["auth"]) for r in map(json.loads, world["log"].read_text().splitlines())]


def test_large_refund_waits_for_approval_and_the_secret_is_injected(world):
    """$300 passes, $800 is held until `approvals approve`, a call outside the catalogue is refused,
    the shell is denied, and the API sees the launcher's secret, which the agent never had."""
    run = start(world)
    pending = wait_pending(world)
    assert (pending["tool"], pending["args"]["amount"], pending["args"]["charge"]) == ("stripe/refund", 800, "ch_large")
    answered = subprocess.run([sys.executable, "-m", "launcher", "approvals", "approve", pending["id"]],
                              capture_output=True, text=True, env=world["env"], cwd=ROOT, timeout=30)
    assert answered.returncode == 0, answered.stderr
    out, err = run.communicate(timeout=60)
    assert out.splitlines() == ["small 30000", "large 80000", "list PermissionError 403",
                                "shell PermissionError 1", "secret None"], err
    assert upstream_saw(world) == [
        ("/v1/refunds", "charge=ch_small&amount=30000", f"Bearer {SECRET}"),
        ("/v1/refunds", "charge=ch_large&amount=80000", f"Bearer {SECRET}"),
    ]
    assert http_records(world) == [("stripe/refund", 300, "PERMIT", "RULE_PERMIT"),
                                   ("stripe/refund", 800, "PERMIT", "APPROVAL_GRANTED"),
                                   ("http/get", None, "DENY", "UNMATCHED_DENY")]


def test_large_refund_nobody_approves_is_denied(world):
    """With --approve-timeout 1 and nobody answering, the $800 refund never reaches the API."""
    run = start(world, "--approve-timeout", "1")
    out, err = run.communicate(timeout=60)
    assert out.splitlines()[:2] == ["small 30000", "large PermissionError 403"], err
    assert [body for _path, body, _auth in upstream_saw(world)] == ["charge=ch_small&amount=30000"]
    assert http_records(world)[:2] == [("stripe/refund", 300, "PERMIT", "RULE_PERMIT"),
                                       ("stripe/refund", 800, "DENY", "APPROVAL_EXPIRED")]


CURL_POLICY = f"""agent a {{
  default deny
  rules {{
    permit shell/exec when args.path == "{PYTHON}" || args.program == "curl"
    permit fs/*
    permit net/dns when host == "api.stripe.com"
    permit net/connect host: api.stripe.com port: 443
    permit http/get host: api.stripe.com path: /v1/balance
  }}
}}
"""


CURL_AGENT = r"""
import subprocess, sys
base = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"]
for extra, path in (([], "/v1/balance"), ([], "/v1/customers"), (["--cacert", sys.argv[1]], "/v1/balance")):
    done = subprocess.run(base + extra + ["https://api.stripe.com" + path], capture_output=True, text=True)
    print(path, done.returncode, done.stdout, flush=True)
"""


def test_curl_through_the_egress_and_a_pinning_client_fails_closed(world):
    """curl trusts the sandbox CA through the system bundle and gets the permitted GET; a GET the
    rules do not name gets 403; curl pinning another CA fails its handshake, recorded as such."""
    (world["tmp"] / "p.fpl").write_text(CURL_POLICY)
    (world["tmp"] / "agent.py").write_text(CURL_AGENT)
    other = world["tmp"] / "other-ca.pem"
    other.write_bytes(CertificateAuthority("pinned").cert_pem)
    host, port = world["dns"].address
    done = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(world["tmp"] / "p.fpl"),
                           "--no-audit-db", "--no-sdk-socket", "--no-prompt",
                           "--audit", str(world["tmp"] / "audit.jsonl"),
                           "--dns-upstream", f"{host}:{port}", "--egress-upstream-ca", str(world["ca"]),
                           "--", PYTHON, str(world["tmp"] / "agent.py"), str(other)],
                          capture_output=True, text=True, env=world["env"], cwd=ROOT, timeout=90)
    assert done.stdout.splitlines() == ["/v1/balance 0 200", "/v1/customers 0 403", "/v1/balance 60 000"], done.stderr
    records = [json.loads(line) for line in (world["tmp"] / "audit.jsonl").read_text().splitlines()]
    assert [(r["tool"], r["args"].get("path"), r["effect"], r["reason_code"]) for r in records
            if r.get("syscall") == "http"] == [("http/get", "/v1/balance", "PERMIT", "RULE_PERMIT"),
                                               ("http/get", "/v1/customers", "DENY", "UNMATCHED_DENY"),
                                               ("net/tls", None, "DENY", "EGRESS_TLS_FAILED")]
    [tls] = [r for r in records if r["tool"] == "net/tls"]
    assert tls["reason"].startswith("TLS handshake with the sandbox CA failed: the client may pin certificates")
    assert [r["path"] for r in map(json.loads, world["log"].read_text().splitlines())] == ["/v1/balance"]
