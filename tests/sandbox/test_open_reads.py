"""An open that writes but whose descriptor also reads is decided as a read too: a file the
policy will not let be read cannot be read through O_RDWR, O_RDONLY|O_CREAT or O_RDONLY|O_TRUNC."""

from __future__ import annotations

import sys

import pytest

import policy
from sandbox import seccomp
from tests.sandbox.conftest import run_sandboxed

POLICY = ('agent a {\n  deny! fs/read when args.path endsWith ".env"\n  permit fs/read\n'
          '  permit fs/write\n  permit shell/exec\n}\n')
OPENER = """
import os, sys
for name in sys.argv[2:]:
    flags = getattr(os, name) if "|" not in name else eval("|".join("os." + n for n in name.split("|")))
    try:
        fd = os.open(sys.argv[1], flags)
    except OSError as err:
        print(name, "refused", err.errno)
    else:
        readable = flags & os.O_ACCMODE != os.O_WRONLY
        print(name, "read" if readable and os.read(fd, 100) else "opened")
"""
EXEC_IN_KERNEL = {"shell/exec": seccomp.ALLOW}  # the opens are what is tested


def engine_decide():
    return policy.Engine([policy.load_policy(POLICY, "p.fpl")]).decide


@pytest.mark.parametrize("flags, refused", [
    ("O_RDONLY", True), ("O_RDWR", True), ("O_RDONLY|O_CREAT", True), ("O_RDWR|O_APPEND", True),
    ("O_WRONLY", False), ("O_WRONLY|O_CREAT", False)])
def test_opens_that_read_are_decided_as_reads(tmp_path, flags, refused):
    secret = tmp_path / "app.env"
    secret.write_text("SECRET=hunter2\n")
    run = run_sandboxed([sys.executable, "-c", OPENER, str(secret), flags], engine_decide(), tmp=tmp_path,
                        kernel_decided=EXEC_IN_KERNEL)
    assert run.status == 0, run.explain()
    outcome = run.stdout.decode().split()
    assert outcome[1] == ("refused" if refused else "opened"), run.explain()
    if refused:
        assert outcome[2] == "13"
        denied = [r for r in run.audit if r["args"].get("path") == str(secret)]
        assert denied and denied[-1]["effect"] == "DENY" and denied[-1]["tool"] in ("fs/read", "fs/write")
    assert secret.read_text() == "SECRET=hunter2\n"  # nothing truncated it


def test_a_new_file_made_exclusively_needs_no_read(tmp_path):
    """O_CREAT|O_EXCL makes a new, empty file: there is nothing to read, so only fs/write is decided."""
    fresh = tmp_path / "new.env"
    run = run_sandboxed([sys.executable, "-c", OPENER, str(fresh), "O_RDWR|O_CREAT|O_EXCL"], engine_decide(),
                        tmp=tmp_path, kernel_decided=EXEC_IN_KERNEL)
    assert run.status == 0, run.explain()
    assert run.stdout.decode().split()[:2] == ["O_RDWR|O_CREAT|O_EXCL", "opened"]
    assert fresh.exists()
