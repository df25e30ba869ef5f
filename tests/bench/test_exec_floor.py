"""bench/bench_exec_floor.py and its C supervisor measure what they claim: every exec trapped, the check able to fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import bench_exec_floor  # noqa: E402

pytestmark = pytest.mark.kernel
LOOP = ["/bin/bash", "-c", "for i in $(seq 4); do /bin/true; done"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    return bench_exec_floor.compile_harness(tmp_path_factory.mktemp("exec_floor"))


@pytest.mark.parametrize("mode, trapped", [("native", "0"), ("continue", "6"), ("ptrace", "6"), ("verify", "6")])
def test_every_exec_of_the_loop_is_trapped_and_the_loop_succeeds(harness, mode, trapped):
    """bash, seq and four /bin/true are six execs; each level answers all of them and none mismatches."""
    done = subprocess.run([str(harness), mode, "--sync", "--", *LOOP], capture_output=True, text=True, timeout=10)
    assert (done.returncode, done.stdout.split()[1:3]) == (0, [trapped, "0"])


def test_the_check_at_the_exec_stop_sees_a_different_image(harness, tmp_path):
    """A script runs its interpreter, so /proc/PID/exe is not the decided file: all three count as mismatches."""
    script = tmp_path / "script"
    script.write_text("#!/bin/true\n")
    script.chmod(0o755)
    loop = ["/bin/bash", "-c", f"for i in 1 2 3; do {script}; done"]
    done = subprocess.run([str(harness), "verify", "--", *loop], capture_output=True, text=True, timeout=10)
    assert (done.returncode, done.stdout.split()[1:3]) == (0, ["4", "3"])


def test_the_driver_prints_one_row_per_level_and_placement():
    """One tiny round gives 8 levels × 3 placements, native unpinned at exactly 1.00."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_exec_floor.py"), "--rounds", "1", "--loop", "3"],
                          capture_output=True, text=True, timeout=60, check=True)
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 8 * 3
    assert rows[1][:2] + rows[1][3:5] == ["| native", "unpinned", "1.00", "1.00"]
    assert [row[1] for row in rows[1:4]] == ["unpinned", "one CPU", "split"]
