"""`faramesh-sandbox init`: starter policies that check clean and decide as their comments say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import policy
from launcher.init_cmd import TEMPLATES, template_text
from policy.calls import ToolCall

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.fpl"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def decide(template: str, tool: str, **args) -> str:
    engine = policy.Engine([policy.load_policy(template_text(template), f"{template}.fpl")], policy.SessionStore())
    return engine.decide(ToolCall(tool=tool, args=args)).effect.value


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_passes_policy_check(name, tmp_path):
    """Every template is accepted by `policy check` with no warning."""
    path = tmp_path / f"{name}.fpl"
    path.write_text(template_text(name))
    proc = cli("policy", "check", str(path), cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "ok: 1 file valid\n")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_policy_check(path, tmp_path):
    """The shipped example policies are accepted by `policy check` with no warning."""
    proc = cli("policy", "check", str(path), cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "ok: 1 file valid\n")


@pytest.mark.parametrize("template, tool, args, effect", [
    ("coding-agent", "fs/read", {"path": "/home/u/.ssh/id_ed25519"}, "DENY"),
    ("coding-agent", "fs/write", {"path": "/work/src/app.py"}, "PERMIT"),
    ("coding-agent", "fs/write", {"path": "/etc/passwd"}, "DENY"),
    ("coding-agent", "shell/exec", {"path": "/usr/bin/git", "program": "git", "cmd": "git push origin main"}, "DEFER"),
    ("coding-agent", "shell/exec", {"path": "/usr/bin/git", "program": "git", "cmd": "git status"}, "PERMIT"),
    ("coding-agent", "shell/exec", {"path": "/usr/bin/ssh", "program": "ssh", "cmd": "ssh host"}, "DENY"),
    ("coding-agent", "net/connect", {"host": "pypi.org", "ip": "151.101.0.223", "port": 443}, "PERMIT"),
    ("coding-agent", "net/connect", {"host": "evil.example", "ip": "203.0.113.9", "port": 443}, "DENY"),
    ("coding-agent", "net/connect", {"family": "unix", "path": "/run/docker.sock"}, "DENY"),
    ("data-agent", "shell/exec", {"path": "/usr/bin/ls", "program": "ls", "cmd": "ls"}, "DENY"),
    ("data-agent", "fs/write", {"path": "/data/reports/q3.csv"}, "PERMIT"),
    ("data-agent", "fs/write", {"path": "/data/inputs/q3.csv"}, "DENY"),
    ("data-agent", "net/connect", {"host": "api.example.com", "ip": "203.0.113.7", "port": 443}, "PERMIT"),
    ("data-agent", "net/connect", {"host": "api.example.com", "ip": "203.0.113.7", "port": 80}, "DENY"),
    ("ci", "shell/exec", {"path": "/usr/bin/git", "program": "git", "cmd": "git push"}, "DENY"),
    ("ci", "shell/exec", {"path": "/usr/bin/pytest", "program": "pytest", "cmd": "pytest -q"}, "PERMIT"),
    ("ci", "net/connect", {"host": "127.0.0.1", "ip": "127.0.0.1", "port": 8080}, "PERMIT"),
    ("ci", "net/connect", {"host": "pypi.org", "ip": "151.101.0.223", "port": 443}, "DENY"),
])
def test_template_decides_as_commented(template, tool, args, effect):
    """Each template permits, denies and defers what its comments promise."""
    assert decide(template, tool, **args) == effect


def test_init_writes_and_refuses_to_overwrite(tmp_path):
    """init writes the template once; a second run without --force fails and keeps the edit."""
    first = cli("init", "--template", "ci", cwd=tmp_path)
    assert first.returncode == 0
    assert (tmp_path / "ci.fpl").read_text() == template_text("ci")
    (tmp_path / "ci.fpl").write_text("# edited\n")
    second = cli("init", "--template", "ci", cwd=tmp_path)
    assert second.returncode == 1
    assert "already exists" in second.stderr and "--force" in second.stderr
    assert (tmp_path / "ci.fpl").read_text() == "# edited\n"
    forced = cli("init", "--template", "ci", "--force", "-o", "ci.fpl", cwd=tmp_path)
    assert forced.returncode == 0
    assert (tmp_path / "ci.fpl").read_text() == template_text("ci")


def test_init_rejects_unknown_template(tmp_path):
    """An unknown template name is a usage error listing the valid ones, with no file written."""
    proc = cli("init", "--template", "web", cwd=tmp_path)
    assert proc.returncode == 2
    assert "coding-agent" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
