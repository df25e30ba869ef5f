"""Other ABIs and io_uring: syscalls that reach the kernel under numbers the filter never names."""

from __future__ import annotations

import pytest

from tests.escapes.conftest import DENY_SECRET, SECRET, SIGSYS, native, sandboxed

pytestmark = pytest.mark.kernel


def test_i386_int80_open_is_killed(cbin, secret, tmp_path):
    """i386 `open` via int $0x80 reads the secret natively; in the sandbox the arch check kills it (SIGSYS)."""
    probe = cbin("int80_open")
    assert native([probe, secret]).stdout == f"read={SECRET}\n"
    run = sandboxed(DENY_SECRET, [probe, secret], tmp_path)
    assert (run.status, run.stdout) == (128 + SIGSYS, ""), run.explain()


def test_x32_openat_is_killed(cbin, secret, tmp_path):
    """x32 openat (nr | 0x40000000) is ENOSYS natively on this kernel; the filter kills it outright."""
    probe = cbin("x32_open")
    assert native([probe, secret]).stdout in (f"read={SECRET}\n", "openat=-1 errno=38\n")
    run = sandboxed(DENY_SECRET, [probe, secret], tmp_path)
    assert (run.status, run.stdout) == (128 + SIGSYS, ""), run.explain()


def test_io_uring_openat_is_refused(cbin, secret, tmp_path):
    """IORING_OP_OPENAT reads the secret natively; in the sandbox io_uring_setup is ENOSYS."""
    probe = cbin("io_uring_open")
    assert native([probe, secret]).stdout == f"read={SECRET}\n"
    run = sandboxed(DENY_SECRET, [probe, secret], tmp_path)
    assert (run.status, run.stdout) == (1, "io_uring_setup=-1 errno=38\n"), run.explain()
