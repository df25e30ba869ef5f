"""`faramesh-sandbox learn`: the written policy permits what the run did and nothing new."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import policy
from launcher.learn_writer import render_policy, rules_for
from policy.calls import ToolCall

ROOT = Path(__file__).resolve().parents[2]
AGENT = r"""
import os, subprocess, sys
work = sys.argv[1]
os.makedirs(work + "/out", exist_ok=True)
with open(work + "/out/report.txt", "w") as f:
    f.write("x")
open("/etc/hostname").read()
subprocess.run(["/bin/ls", work], check=True, capture_output=True)
for extra in sys.argv[2:]:
    try:
        open(extra).read()
        print("read", extra)
    except OSError as err:
        print("refused", extra, err.errno)
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, timeout=180,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.kernel
def test_learned_policy_replays_and_refuses_something_new(tmp_path):
    """The agent succeeds under the policy learned from it; the same agent reading one more file is refused."""
    (tmp_path / "agent.py").write_text(AGENT)
    work = tmp_path / "ws"
    work.mkdir()
    learned = cli("learn", "--no-audit-db", "-o", "agent.fpl", "--", sys.executable, "agent.py", str(work),
                  cwd=tmp_path)
    assert learned.returncode == 0, learned.stderr
    text = (tmp_path / "agent.fpl").read_text()
    assert "permit shell/exec when args.path in [" in text and '"/usr/bin/ls"' in text
    assert cli("policy", "check", "agent.fpl", cwd=tmp_path).returncode == 0
    replay = cli("run", "--no-audit-db", "--policy", "agent.fpl", "--", sys.executable, "agent.py", str(work),
                 cwd=tmp_path)
    assert (replay.returncode, replay.stdout) == (0, ""), replay.stderr
    variant = cli("run", "--no-audit-db", "--policy", "agent.fpl", "--", sys.executable, "agent.py", str(work),
                  "/etc/passwd", cwd=tmp_path)
    assert (variant.returncode, variant.stdout) == (0, "refused /etc/passwd 13\n"), variant.stderr


@pytest.mark.kernel
def test_base_policy_denials_are_not_learned(tmp_path):
    """A call the base policy denies stays denied while learning and is named in the header, not permitted."""
    (tmp_path / "agent.py").write_text(AGENT)
    (tmp_path / "base.fpl").write_text('agent base {\n default permit\n rules {\n'
                                       '  deny! fs/* when args.path == "/etc/passwd"\n }\n}\n')
    work = tmp_path / "ws"
    work.mkdir()
    learned = cli("learn", "--no-audit-db", "--policy", "base.fpl", "-o", "agent.fpl", "--", sys.executable,
                  "agent.py", str(work), "/etc/passwd", cwd=tmp_path)
    assert (learned.returncode, learned.stdout) == (0, "refused /etc/passwd 13\n"), learned.stderr
    text = (tmp_path / "agent.fpl").read_text()
    assert "# Not learned: 1 fs/read call(s) the base policy denied or deferred." in text
    assert '"/etc/passwd"' not in text


def test_learn_refuses_to_overwrite(tmp_path):
    """An existing output file is kept unless --force is given."""
    (tmp_path / "agent.fpl").write_text("# mine\n")
    done = cli("learn", "-o", "agent.fpl", "--", "/bin/true", cwd=tmp_path)
    assert done.returncode == 125 and "already exists" in done.stderr
    assert (tmp_path / "agent.fpl").read_text() == "# mine\n"


def decide(text: str, tool: str, **args) -> str:
    engine = policy.Engine([policy.load_policy(text, "learned.fpl")], policy.SessionStore())
    return engine.decide(ToolCall(tool=tool, args=args)).effect.value


def test_writer_groups_trees_and_never_widens_shallow_directories():
    """Three files in one deep directory become a prefix; /etc files stay exact; temp files go by root."""
    calls = [("fs/read", {"path": p}) for p in ("/usr/lib/python3.11/os.py", "/usr/lib/python3.11/re.py",
                                                "/usr/lib/python3.11/json/decoder.py", "/etc/hostname")]
    calls.append(("fs/write", {"path": "/tmp/tmpq1w2e3/out"}))
    text = render_policy("learned", calls, workdir=None, command="agent", skipped={})
    assert decide(text, "fs/read", path="/usr/lib/python3.11/ast.py") == "PERMIT"
    assert decide(text, "fs/read", path="/etc/hostname") == "PERMIT"
    assert decide(text, "fs/read", path="/etc/shadow") == "DENY"
    assert decide(text, "fs/write", path="/tmp/tmpzzz/out") == "PERMIT"
    assert decide(text, "fs/write", path="/usr/lib/python3.11/os.py") == "DENY"


def test_writer_names_hosts_and_addresses():
    """Connections by name become host: clauses, by address exact ip and port conditions."""
    calls = [("net/connect", {"host": "pypi.org", "ip": "151.101.0.223", "port": 443, "family": "inet"}),
             ("net/connect", {"host": "::1", "ip": "::1", "port": 8080, "family": "inet6"}),
             ("net/dns", {"host": "pypi.org", "type": "A"})]
    text = render_policy("learned", calls, workdir=None, command="agent", skipped={})
    assert [rule.body for rule in rules_for(calls)] == [
        'when args.ip == "::1" && args.port == 8080', "host: pypi.org port: 443", 'when host in ["pypi.org"]']
    assert decide(text, "net/connect", host="pypi.org", ip="151.101.0.1", port=443) == "PERMIT"
    assert decide(text, "net/connect", host="pypi.org", ip="151.101.0.1", port=80) == "DENY"
    assert decide(text, "net/connect", host="::1", ip="::1", port=8080) == "PERMIT"
    assert decide(text, "net/dns", host="evil.example", type="A") == "DENY"
