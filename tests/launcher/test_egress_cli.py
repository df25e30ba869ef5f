"""`faramesh-sandbox run` egress options: bad catalogue, credential or CA files stop the run with a
hint; the agent's environment and trust store are prepared; a policy naming no API inspects nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
PYTHON = os.path.realpath(sys.executable)
POLICY = """agent a {
  default deny
  credential stripe {
    scope refund
    backend %s
    path "EGRESS_CLI_SECRET"
  }
  rules {
    permit shell/exec
    permit fs/*
    permit stripe/refund when amount <= 500
  }
}
"""
SHOW = ("import os, stripe\nprint(os.environ.get('EGRESS_CLI_SECRET'), os.environ.get('REQUESTS_CA_BUNDLE'))\n"
        "print(*(open(p).read().strip()[-80:].replace(chr(10), '')\n"
        "        for p in ('/etc/ssl/certs/ca-certificates.crt', stripe.ca_bundle_path)), sep='|')\n")


def host_tails() -> list[str]:
    import stripe
    return [Path(p).read_text().strip()[-80:].replace("\n", "")
            for p in ("/etc/ssl/certs/ca-certificates.crt", stripe.ca_bundle_path)]


def run(tmp_path, backend="env", *options):
    (tmp_path / "p.fpl").write_text(POLICY % backend)
    return subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(tmp_path / "p.fpl"),
                           "--no-audit-db", "--no-sdk-socket", *options, "--", PYTHON, "-c", SHOW],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "EGRESS_CLI_SECRET": "s3cret"})


def test_agent_gets_the_sandbox_ca_and_never_the_secret(tmp_path):
    """The secret variable is removed, the trust variables point at the system bundle, and both
    the system bundle and stripe's own end with the run's CA (one certificate, not the host's last)."""
    done = run(tmp_path)
    lines = done.stdout.splitlines()
    assert (done.returncode, lines[0]) == (0, "None /etc/ssl/certs/ca-certificates.crt"), done.stderr
    system_tail, stripe_tail = lines[1].split("|")
    assert system_tail == stripe_tail and system_tail not in host_tails()


def test_no_egress_leaves_environment_and_trust_alone(tmp_path):
    """--no-egress inspects nothing: the agent's environment and trust store are the host's."""
    done = run(tmp_path, "env", "--no-egress")
    assert (done.returncode, done.stdout) == (
        0, f"s3cret {os.environ.get('REQUESTS_CA_BUNDLE')}\n{'|'.join(host_tails())}\n"), done.stderr


@pytest.mark.parametrize("backend,options,message", [
    ("vault", (), "credential stripe: the egress injects secrets from `backend env`"),
    ("env", ("--egress-catalogue", "/nonexistent-dir"), "/nonexistent-dir: not a directory of *.toml catalogue files"),
    ("env", ("--egress-upstream-ca", "/nonexistent.pem"), "--egress-upstream-ca /nonexistent.pem"),
    ("env", ("--egress-max-body", "0"), "--egress-max-body 0 is not a positive size"),
])
def test_unusable_egress_settings_stop_the_run(tmp_path, backend, options, message):
    """A credential, catalogue or CA the egress cannot use exits 125 with the reason and a hint."""
    done = run(tmp_path, backend, *options)
    assert done.returncode == 125 and message in done.stderr and "hint:" in done.stderr, done.stderr
