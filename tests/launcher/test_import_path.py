"""Files the agent plants in the launcher's working directory never run inside the launcher."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sandbox import dns_fake

ROOT = Path(__file__).resolve().parents[2]

PLANTED = "import pathlib\npathlib.Path(__file__).with_name('RAN-' + __name__).write_text('planted code ran')\n"
POLICY = "agent a {\n  default deny\n  rules {\n    permit fs/*\n    permit shell/exec\n    permit net/dns\n  }\n}\n"
LOOKUP = "import socket\nprint(socket.getaddrinfo('plain.test', 80, type=socket.SOCK_STREAM)[0][4][0])\n"


@pytest.mark.kernel
@pytest.mark.parametrize("pythonpath", [None, ".", ":/nonexistent", "{workdir}"])
def test_modules_loaded_after_the_agent_starts_do_not_come_from_the_working_directory(tmp_path, pythonpath):
    """`python3 -m launcher run` from a directory holding a planted ``dns`` package and ``hmac.py``
    (dnspython and a module it imports are first loaded at the agent's first lookup, after the
    agent started), also with PYTHONPATH naming that directory again (".", an empty entry, its
    path): the lookup is answered by the real dnspython and no planted code runs."""
    workdir = tmp_path / "work"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath.format(workdir=workdir)
    (workdir / "dns").mkdir(parents=True)
    (workdir / "dns" / "__init__.py").write_text(PLANTED)
    (workdir / "hmac.py").write_text(PLANTED)
    (workdir / "p.fpl").write_text(POLICY)
    upstream = dns_fake.FakeUpstream()
    try:
        host, port = upstream.address
        done = subprocess.run(
            [sys.executable, "-m", "launcher", "run", "--policy", "p.fpl", "--no-audit-db", "--no-sdk-socket",
             "--no-prompt", "--dns-upstream", f"{host}:{port}", "--", sys.executable, "-c", LOOKUP],
            capture_output=True, text=True, timeout=120, cwd=workdir, env=env)
    finally:
        upstream.close()
    assert (done.returncode, done.stdout) == (0, "192.0.2.20\n"), done.stderr
    assert sorted(path.name for path in workdir.rglob("RAN-*")) == []


def test_a_checkout_run_in_place_keeps_its_own_directory(tmp_path):
    """Where the packages are importable only from the working directory (a copy of the tree, with
    site's .pth files, the editable install's among them, not read), `python3 -m launcher` still
    finds them there: its subcommands load policy and sandbox after the check."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for package in ("launcher", "policy", "sandbox"):
        shutil.copytree(ROOT / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    done = subprocess.run([sys.executable, "-S", "-m", "launcher", "policy", "check", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=checkout, env=env)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
