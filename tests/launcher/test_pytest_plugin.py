"""The `faramesh` pytest plugin: each test runs in the sandbox and fails when it trips the policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]

POLICY = """agent suite {
  default deny
  rules {
    deny! fs/* when args.path startsWith "/etc/shadow" reason: "credentials are off limits"
    permit shell/exec
    permit fs/read
    permit fs/write when args.path startsWith "%(work)s" || args.path startsWith "/tmp" || args.path startsWith "/dev/"
    permit fs/mkdir when args.path startsWith "%(work)s" || args.path startsWith "/tmp/"
    permit fs/rename when args.path startsWith "%(work)s" || args.path startsWith "/tmp/"
    permit fs/delete when args.path startsWith "%(work)s" || args.path startsWith "/tmp/"
    permit fs/link when args.path startsWith "/tmp/"
  }
}
"""

TESTS = '''
import pytest

def test_writes_its_workspace(tmp_path):
    (tmp_path / "out.txt").write_text("ok")
    assert (tmp_path / "out.txt").read_text() == "ok"

def test_swallows_a_denied_read():
    try:
        open("/etc/shadow").read()
    except PermissionError:
        pass

def test_plain_failure():
    assert 1 == 2

def test_skipped():
    pytest.skip("the sample suite's own skip, which the report must count")

@pytest.mark.faramesh
def test_marked_denied():
    with pytest.raises(PermissionError):
        open("/etc/shadow")
'''


def run_pytest(work: Path, *extra: str) -> subprocess.CompletedProcess:
    policy_path = work / "suite.fpl"
    policy_path.write_text(POLICY % {"work": str(work) + "/"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "test_agent.py",
                           "--faramesh-policy", str(policy_path), "-rA", "-p", "no:cacheprovider", *extra],
                          cwd=work, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "test_agent.py").write_text(TESTS)
    return tmp_path


def outcome_lines(proc: subprocess.CompletedProcess) -> set[str]:
    wanted = ("PASSED", "FAILED", "SKIPPED")
    return {" ".join(line.split()[:2]) for line in proc.stdout.splitlines() if line.startswith(wanted)}


def test_every_test_judged_in_its_own_sandbox(project):
    """A denied read fails the test even when the test swallowed the error; outcomes are kept."""
    proc = run_pytest(project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert outcome_lines(proc) == {
        "PASSED test_agent.py::test_writes_its_workspace",
        "FAILED test_agent.py::test_swallows_a_denied_read",
        "FAILED test_agent.py::test_plain_failure",
        "SKIPPED [1]",
        "FAILED test_agent.py::test_marked_denied",
    }
    assert "DENY fs/read /etc/shadow (rule fpl-0: credentials are off limits)" in proc.stdout
    assert "the test failed inside the sandbox (exit 1)" in proc.stdout


def test_marked_only_leaves_other_tests_outside(project):
    """With --faramesh-marked-only only the marked test is sandboxed; the others run natively."""
    proc = run_pytest(project, "--faramesh-marked-only", "-k", "swallows or marked")
    lines = outcome_lines(proc)
    assert lines == {"PASSED test_agent.py::test_swallows_a_denied_read",
                     "FAILED test_agent.py::test_marked_denied"}, proc.stdout + proc.stderr
