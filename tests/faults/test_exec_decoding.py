"""Malformed execve arguments under the supervisor: the kernel's errno or a recorded refusal, and
the supervisor answers the next call."""

from __future__ import annotations

import subprocess

import pytest

from tests.faults.conftest import ROOT
from tests.sandbox.conftest import run_sandboxed

pytestmark = pytest.mark.kernel
TRAPPED = ("execve", "execveat", "open", "openat")
CANARY = str(ROOT / "README.md")


# (mode, what the exec does natively, what it does under the supervisor). 20,000 arguments or
# 70,000 environment entries fit the kernel's 2 MiB budget but exceed sandbox/memory.py's bounds
# (MAX_ARGS, MAX_ENV): refused with E2BIG, a deliberate fail-closed difference.
CASES = [
    ("argv-unmapped", "exec=-14\ncanary=0\n", "exec=-14\ncanary=0\n"),  # EFAULT
    ("argv-unterminated", "exec=-14\ncanary=0\n", "exec=-14\ncanary=0\n"),
    ("path-unterminated", "exec=-14\ncanary=0\n", "exec=-14\ncanary=0\n"),
    ("long-arg", "exec=-7\ncanary=0\n", "exec=-7\ncanary=0\n"),  # E2BIG
    ("many-args", "", "exec=-7\ncanary=0\n"),  # natively /bin/true runs
    ("many-env", "", "exec=-7\ncanary=0\n"),
]


@pytest.mark.parametrize(("mode", "native", "sandboxed"), CASES)
def test_malformed_exec_is_refused_with_the_kernels_errno(cbin, cgroup_dir, mode, native, sandboxed):
    """Each malformed exec fails with EFAULT or E2BIG, is on record as a DECODE_ERROR refusal, and the
    next open is still answered."""
    natively = subprocess.run([cbin("execer"), "/bin/true", mode, CANARY], capture_output=True, text=True, timeout=30)
    assert (natively.returncode, natively.stdout) == (0, native)
    run = run_sandboxed([cbin("execer"), "/bin/true", mode, CANARY], trapped=TRAPPED, cgroup=cgroup_dir, timeout=60)
    assert (run.status, run.stdout.decode()) == (0, sandboxed), run.explain()
    assert [(r["syscall"], r["reason_code"]) for r in run.audit if r["effect"] != "PERMIT"] == \
        [("execve", "DECODE_ERROR")]
    assert CANARY in [r["args"].get("path") for r in run.audit if r["effect"] == "PERMIT"]
