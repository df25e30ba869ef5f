"""`git push` over HTTPS, unmodified, through the egress: the push is decided as github/push with the
refs it updates, and the token the server sees is the launcher's, injected after the decision."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from tests.launcher.test_egress_run import ROOT, SERVER_IP, fake_dns, scratch_https_server
from tests.sandbox import dns_fake

pytestmark = pytest.mark.kernel
TOKEN = "ghp_held_by_the_launcher"

# A stand-in for github.com: `git http-backend` behind HTTPS on SERVER_IP:443; logs Authorization.
SERVER = r"""
import json, ssl, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
pem, root, log = sys.argv[2], sys.argv[3], sys.argv[4]
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        url = urlsplit(self.path)
        with open(log, "a") as f:
            f.write(json.dumps([self.command, url.path, self.headers.get("Authorization")]) + "\n")
        env = {"GIT_PROJECT_ROOT": root, "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command,
               "PATH_INFO": url.path, "QUERY_STRING": url.query, "REMOTE_USER": "agent",
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body))}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line]
        status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
        self.send_response(status)
        for k, v in headers:
            if k.lower() != "status":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    do_GET = do_POST = handle_any
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer((sys.argv[1], 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(pem)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""

POLICY = """agent a {
  default deny
  credential github {
    scope push discover_refs
    backend env
    path "GIT_PUSH_TOKEN"
  }
  rules {
    permit shell/exec
    permit fs/*
    permit net/dns when host == "github.com"
    permit net/connect host: github.com port: 443
    permit github/discover_refs when args.service == "git-receive-pack"
    permit github/push when args.repo == "app" && args.owner == "acme"
  }
}
"""


@pytest.fixture
def github(tmp_path, monkeypatch):
    """A fake github.com serving acme/app.git (bare) on SERVER_IP:443."""
    root = tmp_path / "repos"
    subprocess.run(["git", "init", "-q", "--bare", str(root / "acme" / "app.git")], check=True)
    subprocess.run(["git", "-C", str(root / "acme" / "app.git"), "config", "http.receivepack", "true"], check=True)
    log = tmp_path / "requests.jsonl"
    log.touch()
    monkeypatch.setitem(dns_fake.ZONE, "github.com.", [("A", 300, SERVER_IP)])
    dns = fake_dns()
    try:
        with scratch_https_server(tmp_path, "github.com", SERVER, str(root), str(log)) as ca:
            yield {"tmp": tmp_path, "log": log, "root": root, "dns": dns, "ca": ca}
    finally:
        dns.close()


AGENT = r"""
set -e
cd "$1"
git init -q -b main work && cd work
git -c user.name=a -c user.email=a@example.com commit -q --allow-empty -m first
git push -q https://github.com/acme/app.git main && echo pushed
"""


def test_git_push_is_decided_as_github_push_with_the_injected_token(github):
    """git push reaches the fake GitHub: discover_refs then push (refs/heads/main), both permitted,
    both carrying the launcher's token as Basic auth; the agent's environment has no token."""
    work = github["tmp"] / "agent"
    work.mkdir()
    (github["tmp"] / "p.fpl").write_text(POLICY)
    (github["tmp"] / "agent.sh").write_text(AGENT)
    host, port = github["dns"].address
    audit = github["tmp"] / "audit.jsonl"
    done = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(github["tmp"] / "p.fpl"),
                           "--no-audit-db", "--no-sdk-socket", "--no-prompt", "--audit", str(audit),
                           "--dns-upstream", f"{host}:{port}", "--egress-upstream-ca", str(github["ca"]),
                           "--", "/bin/sh", str(github["tmp"] / "agent.sh"), str(work)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "GIT_PUSH_TOKEN": TOKEN, "HOME": str(work),
                               "GIT_TERMINAL_PROMPT": "0"})
    assert (done.returncode, done.stdout) == (0, "pushed\n"), done.stderr
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["tool"], r["args"].get("refs"), r["effect"], r.get("credential")) for r in records
            if r.get("syscall") == "http"] == [("github/discover_refs", None, "PERMIT", "github"),
                                               ("github/push", ["refs/heads/main"], "PERMIT", "github")]
    basic = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert [tuple(r) for r in map(json.loads, github["log"].read_text().splitlines())] == [
        ("GET", "/acme/app.git/info/refs", basic), ("POST", "/acme/app.git/git-receive-pack", basic)]
    shown = subprocess.run(["git", "-C", str(github["root"] / "acme" / "app.git"), "log", "--format=%s", "main"],
                           capture_output=True, text=True)
    assert shown.stdout == "first\n"
