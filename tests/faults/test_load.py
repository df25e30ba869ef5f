"""Trapped opens under load: every one decided and recorded exactly once, nothing mixed up."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.faults.conftest import Launch, opener_result, permitted_paths

pytestmark = pytest.mark.kernel


@pytest.fixture
def scratch():
    """A fresh directory under /tmp the agent creates its files in."""
    path = Path(f"/tmp/faults-{uuid.uuid4().hex[:8]}")
    path.mkdir()
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def check_exact(launch: Launch, scratch: Path, stdout: str, expected: set[str]) -> None:
    opened, failed = opener_result(stdout)
    assert (opened, failed) == (len(expected), {}), stdout[-500:]
    recorded = permitted_paths(launch.records())
    assert len(recorded) == len(expected)  # no decision lost or duplicated
    assert set(recorded) == expected  # each attributed to the call that made it
    assert {p.name for p in scratch.iterdir()} == {Path(p).name for p in expected}


@pytest.mark.race
def test_eight_threads_times_ten_thousand_opens_are_each_recorded_once(cbin, tmp_path, scratch):
    """8 threads x 10,000 creating opens: 80,000 PERMIT records, one per path, each file holding its own name."""
    launch = Launch(tmp_path)
    done = launch.run([cbin("opener"), scratch, 8, 10_000], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = {f"{scratch}/t{t}-{i}" for t in range(8) for i in range(10_000)}
    check_exact(launch, scratch, done.stdout, expected)
    sample = [f"t{t}-{i}" for t in range(8) for i in (0, 4_999, 9_999)]
    assert [(scratch / name).read_text() for name in sample] == sample


def test_hundred_processes_at_once_are_each_recorded_once(cbin, tmp_path, scratch):
    """100 processes released together, 20 creating opens each: 2,000 PERMIT records, one per path."""
    launch = Launch(tmp_path)
    done = launch.run([cbin("forker"), scratch, 100, 20], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    check_exact(launch, scratch, done.stdout, {f"{scratch}/p{p}-{i}" for p in range(100) for i in range(20)})
