"""Opens under a racing path rewrite and path tricks never reach a denied file."""

from __future__ import annotations

import re
import subprocess

import pytest

from policy.decision import Decision, Effect, deny
from tests.sandbox.conftest import run_sandboxed

TRIES = 20_000
MARKER = "SECRET-MARKER"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "allowed.txt").write_text("hello\n")
    (tmp_path / "denied.txt").write_text(MARKER + "\n")
    return tmp_path


def deny_paths(*paths):
    """Deny every tool call naming one of ``paths`` (read, write, link...); permit the rest."""
    def decide(call):
        if call.args.get("path") in paths or call.args.get("dest") in paths:
            return deny("protected", "protected file", rule_id="protect")
        return Decision(Effect.PERMIT)
    return decide


def tally(output: bytes) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", output.decode())}


def test_native_race_reads_the_denied_file(files, cbin):
    """Without the sandbox the flipping thread gets the denied file opened (the harness works)."""
    out = subprocess.run([cbin("open_race"), files / "allowed.txt", files / "denied.txt", "200000"],
                         capture_output=True, check=True).stdout
    assert tally(out)["secret"] > 0


@pytest.mark.parametrize("flipper", ["thread", "process"])
def test_racing_path_never_opens_the_denied_file(files, cbin, cgroup_dir, flipper):
    """20,000 opens while a thread (or a sibling sharing the page) flips the path: zero bypasses."""
    denied = str(files / "denied.txt")
    run = run_sandboxed([cbin("open_race"), str(files / "allowed.txt"), denied, str(TRIES), flipper],
                        deny_paths(denied), cgroup=cgroup_dir)
    counts = tally(run.stdout)
    assert run.status == 0, run.stderr
    assert counts["secret"] == 0 and counts["other"] == 0
    assert counts["allowed"] + counts["failed"] == TRIES
    assert counts["allowed"] > 0 and counts["failed"] > 0  # both values were really raced
    assert any(r["args"].get("path") == denied and r["effect"] == "DENY" for r in run.audit)


# (name, command, outcome): "deny" = the policy saw the real file and denied it;
# "refused" = resolution refuses magic links (/proc/self/root, /proc/self/cwd) with ELOOP.
TRICKS = [
    ("symlink", "ln -s denied.txt link && cat link", "deny"),
    ("dotdot", "mkdir -p sub && cat sub/../denied.txt", "deny"),
    ("dot segments", "cat ./././denied.txt", "deny"),
    ("symlinked directory", "ln -s . dirlink && cat dirlink/denied.txt", "deny"),
    ("absolute symlink", "ln -s $PWD/denied.txt abslink && cat abslink", "deny"),
    ("symlink chain", "ln -s denied.txt one && ln -s one two && cat two", "deny"),
    ("proc fd of a directory", "exec 3< . && cat /proc/self/fd/3/denied.txt", "deny"),
    ("proc fd dotdot", "mkdir -p sub && exec 3< sub && cat /proc/self/fd/3/../denied.txt", "deny"),
    ("hard link", "ln denied.txt hard && cat hard", "deny"),
    ("dangling symlink create", "ln -s new-secret.txt dangling && echo x > dangling && cat new-secret.txt", "deny"),
    ("proc cwd", "cat /proc/self/cwd/denied.txt", "refused"),
    ("proc root", "cat /proc/self/root$PWD/denied.txt", "refused"),
]


@pytest.mark.parametrize("name,command,outcome", TRICKS, ids=[t[0] for t in TRICKS])
def test_path_tricks_cannot_reach_the_denied_file(files, cgroup_dir, name, command, outcome):
    """Symlinks, `..`, hard links and /proc/self/fd resolve to the denied file and are denied;
    /proc/self/root and /proc/self/cwd magic links are refused outright."""
    denied, created = str(files / "denied.txt"), str(files / "new-secret.txt")
    run = run_sandboxed(["/bin/bash", "-c", f"cd {files} && {command}"], deny_paths(denied, created),
                        cgroup=cgroup_dir)
    assert MARKER.encode() not in run.stdout
    assert run.status == 1
    assert not (files / "new-secret.txt").exists()
    denials = sorted({r["args"].get("path") for r in run.audit if r["effect"] == "DENY"})
    if outcome == "deny":
        assert denials in ([denied], [created]), run.stderr
        assert b"Permission denied" in run.stderr
    else:
        assert denials == []
        assert b"Too many levels of symbolic links" in run.stderr
