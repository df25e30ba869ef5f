"""The policy-compiled filter: categories a policy decides unconditionally are answered in the kernel."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

import policy
from launcher.run import kernel_decided

ROOT = Path(__file__).resolve().parents[2]


def engine(text: str) -> policy.Engine:
    return policy.Engine([policy.load_policy(text, "p.fpl")])


def test_unconditional_categories_are_kernel_decided():
    """A bare permit allows in the kernel; a default deny refuses with the category's errno."""
    decided = kernel_decided(engine("agent a {\n  permit fs/read\n  permit fs/write when args.path startsWith \"/tmp/\"\n}\n"))
    assert decided["fs/read"] == 0
    assert decided["shell/exec"] == errno.EPERM
    assert decided["fs/delete"] == errno.EACCES
    assert "fs/write" not in decided


def test_conditional_strict_deny_keeps_the_category_trapped():
    """A conditional deny! on fs/* keeps every fs category with the supervisor."""
    decided = kernel_decided(engine("agent a {\n  default permit\n  deny! fs/* when args.path startsWith \"/etc\"\n}\n"))
    assert not any(tool.startswith("fs/") for tool in decided)
    assert decided["shell/exec"] == 0


@pytest.mark.parametrize("text, in_kernel", [
    ("agent a {\n  default permit\n}\n", True),
    ("agent a {\n  default permit\n  deny fs/read when args.path endsWith \"/secret\"\n}\n", False),
    ("agent a {\n  default permit\n  deny fs/write when args.path endsWith \"/secret\"\n}\n", False),
])
def test_links_and_renames_are_permitted_in_the_kernel_only_with_reads_and_writes(text, in_kernel):
    """A new name is also a read and a write of the file: an outright permit of fs/link or
    fs/rename goes to the kernel only when fs/read and fs/write are permitted outright too."""
    decided = kernel_decided(engine(text))
    assert ("fs/link" in decided, "fs/rename" in decided) == (in_kernel, in_kernel)
    assert decided["fs/mkdir"] == 0


@pytest.mark.parametrize("tool", ["fs/delete", "fs/mkdir", "fs/link"])
def test_renames_go_to_the_supervisor_while_any_fs_category_is_conditional(tool):
    """A rename deletes its old name and moves all a directory holds: with any fs rule left to
    decide, the supervisor decides renames (links need only reads and writes)."""
    decided = kernel_decided(engine(f"agent a {{\n  default permit\n  deny {tool} when args.path endsWith \"/k\"\n}}\n"))
    assert "fs/rename" not in decided
    assert ("fs/link" in decided) is (tool != "fs/link")


def test_refused_links_and_renames_stay_in_the_kernel():
    """A refusal needs no check of what else the call amounts to."""
    decided = kernel_decided(engine("agent a {\n  permit fs/read when args.path startsWith \"/w\"\n}\n"))
    assert (decided["fs/link"], decided["fs/rename"]) == (errno.EACCES, errno.EACCES)


def run(policy_path: Path, audit: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy_path),
                           "--audit", str(audit), *extra, "--", "/bin/cat", "/etc/hostname"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def tools_in(audit: Path) -> list[str]:
    return [json.loads(line)["tool"] for line in audit.read_text().splitlines()]


def test_kernel_decided_reads_make_no_round_trip_and_audit_all_traps_them(tmp_path: Path):
    """With `permit fs/read` reads never reach the supervisor; --audit-all brings them back."""
    policy_path = tmp_path / "p.fpl"
    policy_path.write_text("agent a {\n  permit fs/read\n  permit shell/exec when args.program == \"cat\"\n}\n")
    native = Path("/etc/hostname").read_text()
    fast = run(policy_path, tmp_path / "fast.jsonl")
    assert (fast.returncode, fast.stdout) == (0, native), fast.stderr
    assert "fs/read" not in tools_in(tmp_path / "fast.jsonl")
    assert tools_in(tmp_path / "fast.jsonl").count("shell/exec") == 1
    full = run(policy_path, tmp_path / "full.jsonl", "--audit-all")
    assert (full.returncode, full.stdout) == (0, native), full.stderr
    assert "fs/read" in tools_in(tmp_path / "full.jsonl")
