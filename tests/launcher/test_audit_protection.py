"""The agent cannot reach the audit store: its directory is empty inside the sandbox."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
PERMIT = "agent a {\n  default permit\n}\n"
AGENT = r"""
import os, sys
store = sys.argv[1]
print(sorted(os.listdir(os.path.dirname(store))))
try:
    open(store, "r+b").write(b"tampered")
except OSError as err:
    print("errno", err.errno)
"""


def run(tmp_path: Path, store: Path) -> subprocess.CompletedProcess:
    (tmp_path / "p.fpl").write_text(PERMIT)
    return subprocess.run([sys.executable, "-m", "launcher", "run", "--audit-all", "--no-prompt", "--policy",
                           str(tmp_path / "p.fpl"), "--audit-db", str(store), "--", sys.executable, "-c", AGENT,
                           str(store)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_store_directory_is_empty_and_unwritable_inside(tmp_path):
    """A permissive policy still cannot let the agent see or write the store in its own directory."""
    store = tmp_path / "state" / "audit.db"
    store.parent.mkdir()
    done = run(tmp_path, store)
    assert (done.returncode, done.stdout) == (0, "[]\nerrno 2\n"), done.stderr
    tools = [row[0] for row in sqlite3.connect(store).execute("SELECT tool FROM records")]
    assert "fs/write" not in tools or all(
        path != str(store) for (path,) in sqlite3.connect(store).execute(
            "SELECT json_extract(record, '$.args.path') FROM records WHERE tool = 'fs/write'"))
    verify = subprocess.run([sys.executable, "-m", "launcher", "audit", "verify", "--db", str(store)],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_shared_directory_is_named_in_a_warning(tmp_path):
    """A store beside other files is not hidden (that would hide them too); the run says so."""
    (tmp_path / "notes.txt").write_text("x")
    done = run(tmp_path, tmp_path / "audit.db")
    assert "the audit store's directory" in done.stderr and "holds other files" in done.stderr
