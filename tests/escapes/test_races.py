"""Racing pointer arguments: the path is rewritten between the supervisor's read and the kernel's.

The supervisor opens files itself and injects the descriptor (ADDFD), so whatever the agent
writes into its buffer after the read cannot change what was opened."""

from __future__ import annotations

import pytest

from tests.escapes.conftest import DENY_SECRET, native, sandboxed

pytestmark = pytest.mark.kernel
TRIES = {"thread": 1500, "shm": 1500, "vfork": 800}


def counts(stdout: str) -> dict[str, int]:
    return {key: int(value) for key, value in (item.split("=") for item in stdout.split())}


@pytest.mark.parametrize("mode", ["thread", "shm", "vfork"])
def test_racing_open_never_reads_the_denied_file(cbin, secret, tmp_path, mode):
    """A flipped path buffer (thread, shared page of a sibling process, vfork child) never opens the secret."""
    allowed = tmp_path / "public.txt"  # as long as "secret.txt": a torn copy is still one of the two
    allowed.write_text("public\n")
    argv = [cbin("path_race"), mode, allowed, secret, TRIES[mode]]
    for _ in range(5):  # natively the race is won only now and then: a few rounds show it can be
        natively = counts(native(argv).stdout)
        if natively["secret"] > 0 and natively["allowed"] > 0:
            break
    assert natively["secret"] > 0 and natively["allowed"] > 0
    run = sandboxed(DENY_SECRET, argv, tmp_path, timeout=90)
    assert run.status == 0, run.explain()
    got = counts(run.stdout)
    assert got["secret"] == 0, run.explain()
    assert got["allowed"] > 0 and got["failed"] > 0  # denied opens fail with EACCES
    assert {(r["tool"], r["args"]["path"], r["reason_code"]) for r in run.denials("fs/")} == {
        ("fs/read", str(secret), "FPL_STRICT_DENY")}
