"""An audit log that cannot take records: permits turn into denials, nothing happens unrecorded."""

from __future__ import annotations

import json
import shlex
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.faults.conftest import Launch, opener_result, permitted_paths, read_audit

pytestmark = pytest.mark.kernel
EACCES = 13
COUNT = 400
# Exec is decided in the kernel (a bare permit); writes under /nonexistent keep fs/write trapped.
WRITES_TRAPPED = ('agent a {\n  default permit\n  rules {\n    deny fs/write when args.path startsWith '
                  '"/nonexistent/" reason: "keeps fs/write with the supervisor"\n  }\n}\n')


@pytest.fixture
def scratch():
    path = Path(f"/tmp/faults-audit-{uuid.uuid4().hex[:8]}")
    path.mkdir()
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def test_the_agent_never_starts_when_no_record_can_be_written(cbin, tmp_path, scratch):
    """--audit /dev/full --audit-all (every write fails with ENOSPC): the agent's own exec is refused
    (exit 126) and no file is made."""
    launch = Launch(tmp_path, audit=Path("/dev/full"))
    done = launch.run([cbin("opener"), scratch, 1, 50], timeout=60)
    assert (done.returncode, done.stdout) == (126, ""), done.stderr[-2000:]
    assert done.stderr.endswith(": Operation not permitted\n")
    assert list(scratch.iterdir()) == []


def test_every_open_is_refused_when_no_record_can_be_written(cbin, tmp_path, scratch):
    """--audit /dev/full with fs/write trapped: all 50 creating opens fail with EACCES, no file is made."""
    launch = Launch(tmp_path, WRITES_TRAPPED, audit=Path("/dev/full"))
    done = launch.run([cbin("opener"), scratch, 1, 50], timeout=60, audit_all=False)
    opened, failed = opener_result(done.stdout)
    assert (opened, set(failed.values()), len(failed)) == (0, {EACCES}, 50), done.stderr[-2000:]
    assert list(scratch.iterdir()) == []


def test_opens_after_the_audit_disk_fills_are_refused(cbin, tmp_path, scratch):
    """The audit log on a 64 KiB tmpfs that fills mid-run: each open that succeeded has a complete
    PERMIT record, and from the first refusal on every open fails with EACCES (AUDIT_WRITE_FAILED)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    kept = tmp_path / "audit-copy.jsonl"
    launch = Launch(tmp_path, WRITES_TRAPPED, audit=disk / "audit.jsonl")
    command = shlex.join(launch.argv([cbin("opener"), scratch, 1, COUNT], audit_all=False))
    script = (f"mount -t tmpfs -o size=64k faults-audit {shlex.quote(str(disk))} && {{ {command}; status=$?; "
              f"cp {shlex.quote(str(disk / 'audit.jsonl'))} {shlex.quote(str(kept))}; exit $status; }}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, env=launch.env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    opened, failed = opener_result(done.stdout)
    names = [f"{scratch}/t0-{i}" for i in range(COUNT)]
    succeeded = [p for p in names if p not in failed]
    assert 0 < opened == len(succeeded) < COUNT  # the disk filled part way through
    assert succeeded == names[:opened]  # once full, every later open was refused
    assert set(failed.values()) == {EACCES}
    assert permitted_paths(read_audit(kept)) == succeeded
    assert sorted(p.name for p in scratch.iterdir()) == sorted(Path(p).name for p in succeeded)


def test_opens_after_the_audit_store_fills_are_refused(cbin, tmp_path, scratch):
    """The hash-chained store on a 256 KiB tmpfs that fills mid-run: the opens that succeeded are
    exactly those with a PERMIT in the store, and the rest fail with EACCES."""
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    launch = Launch(tmp_path, WRITES_TRAPPED)
    argv = launch.argv([cbin("opener"), scratch, 1, COUNT], audit_all=False)
    argv = [a for a in argv if a not in ("--no-audit-db", "--audit", str(launch.audit))]
    argv[argv.index("--"):argv.index("--")] = ["--audit-db", str(disk / "audit.db")]
    script = (f"mount -t tmpfs -o size=256k faults-store {shlex.quote(str(disk))} && {{ {shlex.join(argv)}; "
              f"status=$?; cp -r {shlex.quote(str(disk))} {shlex.quote(str(kept))}; exit $status; }}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, env=launch.env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    opened, failed = opener_result(done.stdout)
    names = [f"{scratch}/t0-{i}" for i in range(COUNT)]
    succeeded = [p for p in names if p not in failed]
    assert 0 < opened == len(succeeded) < COUNT  # the store filled part way through
    assert set(failed.values()) == {EACCES}
    with sqlite3.connect(kept / "audit.db") as con:
        rows = con.execute("SELECT record FROM records WHERE effect = 'PERMIT' AND tool = 'fs/write'").fetchall()
    assert sorted(json.loads(row[0])["args"]["path"] for row in rows) == sorted(succeeded)
