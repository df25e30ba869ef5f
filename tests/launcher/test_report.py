"""`run --report FILE --fail-on-deny`: the CI jail's summary of every deny and defer, and its exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.report import MAX_VIOLATIONS, RunReport

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
POLICY = """agent a {
  default deny
  rules {
    deny! fs/* when args.path startsWith "/etc/shadow" reason: "credentials are off limits"
    permit shell/exec
    permit fs/read
    permit fs/write when args.path startsWith "/tmp/" || args.path startsWith "/dev/"
    deny fs/delete reason: "keep files"
  }
}
"""
AGENT = r"""
import os, sys
for action in sys.argv[1:]:
    try:
        if action == "shadow":
            open("/etc/shadow").close()
        elif action == "delete":
            os.unlink("/tmp")
        elif action == "fail":
            sys.exit(7)
    except OSError as err:
        print(action, err.errno)
"""


def run(tmp_path: Path, *actions: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    policy = tmp_path / "p.fpl"
    policy.write_text(POLICY)
    return subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy), "--no-audit-db",
                           "--no-prompt", *extra, "--", sys.executable, "-c", AGENT, *actions],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_report_lists_each_violation_including_unconditional_denies(tmp_path):
    """The report counts decisions and lists the conditional deny! and the unconditional deny alike."""
    report = tmp_path / "violations.json"
    done = run(tmp_path, "shadow", "delete", extra=("--report", str(report)))
    assert (done.returncode, done.stdout) == (0, "shadow 13\ndelete 13\n"), done.stderr
    summary = json.loads(report.read_text())
    assert summary["exit_status"] == 0 and summary["version"] == 1
    assert summary["decisions"]["DENY"] == 2 and summary["decisions"]["PERMIT"] > 10
    assert [(v["tool"], v["args"]["path"], v["rule_id"], v["reason"]) for v in summary["violations"]] == [
        ("fs/read", "/etc/shadow", "fpl-0", "credentials are off limits"),
        ("fs/delete", "/tmp", "fpl-4", "keep files"),
    ]


def test_fail_on_deny_turns_a_clean_exit_into_status_3(tmp_path):
    """An agent that exits 0 after a denied call makes the run exit 3, with a line saying why."""
    done = run(tmp_path, "shadow", extra=("--fail-on-deny",))
    assert done.returncode == 3
    assert "1 call(s) denied or deferred (--fail-on-deny)" in done.stderr


def test_fail_on_deny_keeps_clean_runs_and_agent_failures(tmp_path):
    """Without violations the status is 0; an agent's own failure keeps its status."""
    assert run(tmp_path, extra=("--fail-on-deny",)).returncode == 0
    assert run(tmp_path, "shadow", "fail", extra=("--fail-on-deny",)).returncode == 7


def test_unwritable_report_is_a_setup_error(tmp_path):
    """A report path in a missing directory fails with 125 and a hint, not a traceback."""
    done = run(tmp_path, extra=("--report", str(tmp_path / "missing" / "r.json")))
    assert done.returncode == 125
    assert "cannot write report" in done.stderr and "Traceback" not in done.stderr


def test_violations_beyond_the_limit_are_counted_not_kept():
    """1,500 denials keep the first MAX_VIOLATIONS; the report counts every one and says it is cut."""
    report = RunReport("s1", ["agent"], ["p.fpl"])
    denial = {"kind": "decision", "tool": "fs/read", "effect": "DENY", "reason_code": "RULE_DENY",
              "args": {"path": "/etc/shadow"}}
    for pid in range(MAX_VIOLATIONS + 500):
        report.observe(dict(denial, pid=pid))
    summary = report.summary(0)
    assert len(report.violations) == len(summary["violations"]) == MAX_VIOLATIONS
    assert [v["pid"] for v in summary["violations"][:2]] == [0, 1]  # the first ones are kept
    assert (summary["decisions"]["DENY"], summary["violation_count"], summary["violations_truncated"]) == (
        MAX_VIOLATIONS + 500, MAX_VIOLATIONS + 500, True)
    assert report.violated
    small = RunReport("s1", ["agent"], ["p.fpl"])
    small.observe(denial)
    assert (small.summary(0)["violation_count"], small.summary(0)["violations_truncated"]) == (1, False)


def test_a_report_to_something_not_a_regular_file_is_written_in_place(tmp_path):
    """--report /dev/stdout or a FIFO is written to, never replaced by a regular file (an atomic
    rename over /dev/null once turned the host's /dev/null into a file)."""
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        RunReport("s", ["true"], []).write(str(fifo), 0)
        assert json.loads(os.read(reader, 1 << 20))["exit_status"] == 0
    finally:
        os.close(reader)
    assert fifo.is_fifo() and not list(tmp_path.glob("*.partial"))
