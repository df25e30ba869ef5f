"""The supervisor out of file descriptors: calls fail with an error, none succeeds unrecorded."""

from __future__ import annotations

import os
import resource
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.faults.conftest import Launch, opener_result, permitted_paths

pytestmark = pytest.mark.kernel
THREADS, COUNT = 8, 200
EMFILE = 24


def starve(pid: int, spare: int) -> int:
    """Lower ``pid``'s RLIMIT_NOFILE to leave it ``spare`` descriptor numbers; returns the limit."""
    limit = max(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) + 1 + spare
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    return limit


def test_opens_under_descriptor_starvation_succeed_recorded_or_fail(cbin, tmp_path):
    """With the launcher left 1 spare descriptor, 8 threads x 200 creating opens each either fail with
    EMFILE or succeed on the right file with its own PERMIT record (a PERMIT whose on-behalf open then
    runs out of descriptors fails too: a record never stands for more than was done)."""
    scratch = Path(f"/tmp/faults-fd-{uuid.uuid4().hex[:8]}")
    scratch.mkdir()
    launch = Launch(tmp_path)
    run = launch.start([cbin("opener"), scratch, THREADS, COUNT, "wait"], stdin=subprocess.PIPE)
    try:
        assert run.stdout.readline() == "ready\n"
        starve(run.pid, 1)
        out, err = run.communicate("go\n", timeout=120)
        assert run.returncode == 0, err[-2000:]
        opened, failed = opener_result(out)
        every = {f"{scratch}/t{t}-{i}" for t in range(THREADS) for i in range(COUNT)}
        succeeded = every - set(failed)
        assert opened == len(succeeded)
        assert set(failed.values()) <= {EMFILE}
        assert "short" not in out
        recorded = permitted_paths(launch.records())
        assert len(recorded) == len(set(recorded))  # no decision duplicated
        assert succeeded <= set(recorded)  # each success decided and recorded (a permit may still fail to perform)
        assert {p.name: p.read_text() for p in scratch.iterdir() if str(p) in succeeded} == \
            {Path(p).name: Path(p).name for p in succeeded}
        assert failed, "the starved supervisor never ran out of descriptors: the fault was not exercised"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
            run.wait()
        for child in scratch.iterdir():
            child.unlink()
        scratch.rmdir()
