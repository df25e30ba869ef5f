"""Resource exhaustion: a (bounded) fork bomb, a memory balloon and a descriptor flood.

The limits are options of `run` (--pids, --memory, --files; docs/run.md); the first test asks
whether a run with no options is bounded at all."""

from __future__ import annotations

import pytest

from tests.escapes.conftest import DENY_SECRET, PERMIT_ALL, native, sandboxed

pytestmark = pytest.mark.kernel
FORKS = 2000
EAGAIN, EACCES = "11", "errno:13"


def test_fork_bomb_is_bounded_by_default(cbin, tmp_path):
    """2,000 waiting children fork natively; a run given no limits must still stop a fork bomb (EAGAIN)."""
    assert native([cbin("fork_flood"), FORKS]).lines() == {"forked": str(FORKS), "errno": "0"}
    run = sandboxed(PERMIT_ALL, [cbin("fork_flood"), FORKS], tmp_path)
    got = run.lines()
    assert got.get("errno") == EAGAIN and int(got["forked"]) < FORKS, run.explain()


def test_fork_bomb_stops_at_the_pids_limit(cbin, tmp_path):
    """With --pids 64 the agent's tasks (init, the agent, its children) stop short of 64: fork fails with EAGAIN."""
    run = sandboxed(PERMIT_ALL, [cbin("fork_flood"), FORKS], tmp_path, options=("--pids", "64"))
    got = run.lines()
    assert got.get("errno") == EAGAIN and 50 <= int(got["forked"]) < 64, run.explain()


def test_memory_balloon_stops_at_the_memory_limit(cbin, tmp_path):
    """512 MiB are touched natively; with --memory 128M the agent is killed or refused before 128 MiB."""
    assert native([cbin("memory_balloon"), 512]).stdout.splitlines()[-2:] == ["touched=512", "done"]
    run = sandboxed(PERMIT_ALL, [cbin("memory_balloon"), 512], tmp_path, options=("--memory", "128M"))
    touched = [int(line.split("=")[1]) for line in run.stdout.splitlines() if line.startswith("touched=")]
    assert "done" not in run.stdout and max(touched, default=0) < 128, run.explain()
    assert run.status in (137, 1), run.explain()


def test_descriptor_flood_fails_closed(cbin, secret, tmp_path):
    """With --files 256 the table fills at 256; with one slot left the secret stays denied, other files open."""
    public = tmp_path / "public.txt"
    public.write_text("public\n")
    natively = native([cbin("fd_flood"), secret, public]).lines()
    assert (natively["fds"], natively["secret"], natively["public"]) == ("full", "read", "read")
    run = sandboxed(DENY_SECRET, [cbin("fd_flood"), secret, public], tmp_path, options=("--files", "256"))
    assert run.lines() == {"limit": "256", "fds": "full", "secret": EACCES, "public": "read"}, run.explain()
    assert [(r["args"]["path"], r["reason_code"]) for r in run.denials("fs/")] == [(str(secret), "FPL_STRICT_DENY")]
