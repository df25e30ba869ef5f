"""Real programs under ``faramesh-sandbox run``: identical to native under a permissive policy, and
each denied category failing the way the program reports a kernel refusal, with its audit line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
PERMIT = "agent a {\n  default permit\n}\n"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.org", "GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z",
    "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.org",
    "GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent",
}
STDLIB = ["argparse", "asyncio", "collections", "csv", "dataclasses", "datetime", "decimal", "email", "hashlib",
          "http.client", "json", "logging", "pathlib", "re", "sqlite3", "subprocess", "tarfile", "tempfile",
          "unittest", "urllib.request", "uuid", "xml.etree.ElementTree", "zipfile", "zlib"]


def sandboxed(command: list[str], cwd: Path, policy: Path, audit: Path | None = None,
              env: dict | None = None) -> subprocess.CompletedProcess:
    # --audit-all: even under a permissive policy every call goes through the supervisor,
    # so identical output shows the on-behalf path is faithful.
    extra = ["--audit-all"] + (["--audit", str(audit)] if audit else [])
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy), *extra, "--", *command],
                          capture_output=True, text=True, cwd=cwd, env=full_env, timeout=60)


def native(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})},
                          timeout=60)


def same_as_native(command: list[str], tmp_path: Path, prepare=lambda d: None, env=None) -> subprocess.CompletedProcess:
    """Run ``command`` natively and sandboxed in twin directories; return the sandboxed result."""
    policy = tmp_path / "permit.fpl"
    policy.write_text(PERMIT)
    here, there = tmp_path / "native", tmp_path / "sandboxed"
    for directory in (here, there):
        directory.mkdir()
        prepare(directory)
    expected = native(command, here, env)
    got = sandboxed(command, there, policy, env=env)
    assert (got.returncode, got.stdout, got.stderr) == (expected.returncode, expected.stdout, expected.stderr)
    return got


def test_bash_script_matches_native(tmp_path):
    """A bash script with pipes, substitutions, redirections and child programs prints what it prints natively."""
    script = ("set -e; for i in 1 2 3; do echo \"n=$i\"; done; x=$(printf abc | tr a-c A-C); echo $x; "
              "seq 5 | paste -sd+ | bc; printf 'b\\na\\n' > f; sort f; wc -l < /etc/passwd >/dev/null; "
              "mkdir -p d/e && touch d/e/g && find d | sort; rm -r d f; ls -A")
    got = same_as_native(["bash", "-c", script], tmp_path)
    assert got.stdout == "n=1\nn=2\nn=3\nABC\n15\na\nb\nd\nd/e\nd/e/g\n"


def test_git_init_add_commit_matches_native(tmp_path):
    """git init, add and commit produce the same commit hash inside the sandbox as outside."""
    script = ("git init -q -b main . && echo hello > README && git add README && git commit -q -m first && "
              "git log --format='%H %s' && git status --porcelain")
    got = same_as_native(["sh", "-c", script], tmp_path, env=GIT_ENV)
    assert got.stdout == "4439a262cee2885825596ef39f9b432e950782d9 first\n"


def test_python_imports_the_standard_library(tmp_path):
    """python3 imports a spread of the standard library and computes the same results as natively."""
    code = (f"import importlib; mods = {STDLIB!r}; [importlib.import_module(m) for m in mods]; "
            "import hashlib, json, sqlite3; db = sqlite3.connect(':memory:'); "
            "print(len(mods), hashlib.sha256(b'x').hexdigest()[:16], json.dumps({'a': [1, 2]}), "
            "db.execute('select 6*7').fetchone()[0])")
    got = same_as_native([sys.executable, "-c", code], tmp_path)
    assert got.stdout == "24 2d711642b726b044 {\"a\": [1, 2]} 42\n"


def test_tar_create_and_extract_match_native(tmp_path):
    """tar creates a byte-identical archive and extracts the same tree as natively."""
    def prepare(directory: Path) -> None:
        (directory / "src" / "sub").mkdir(parents=True)
        (directory / "src" / "a.txt").write_text("alpha\n")
        (directory / "src" / "sub" / "b.txt").write_text("beta\n")
    script = ("tar --sort=name --mtime=2026-01-01 --owner=0 --group=0 --numeric-owner -cf out.tar src && "
              "sha256sum out.tar | cut -c1-16 && mkdir x && tar -xf out.tar -C x && find x -type f | sort && "
              "cat x/src/sub/b.txt")
    got = same_as_native(["sh", "-c", script], tmp_path, prepare)
    assert got.stdout == "36add32aa46da966\nx/src/a.txt\nx/src/sub/b.txt\nbeta\n"


DENY_POLICY = """agent a {
  default permit
  deny shell/exec when args.program == "ls" reason: "no listing"
  deny fs/read when args.path == "{dir}/secret" reason: "secret"
  deny fs/write when args.path == "{dir}/out" reason: "read-only output"
  deny fs/delete when args.path == "{dir}/keep" reason: "keep it"
}
"""


@pytest.mark.parametrize(("script", "status", "stderr", "audit"), [
    ("/bin/ls", 126, "bash: line 1: /bin/ls: Operation not permitted\n",
     ("execve", "shell/exec", "DENY", "fpl-0", "/usr/bin/ls")),
    ("cat secret", 1, "cat: secret: Permission denied\n",
     ("openat", "fs/read", "DENY", "fpl-1", "{dir}/secret")),
    ("echo hi > out", 1, "bash: line 1: out: Permission denied\n",
     ("openat", "fs/write", "DENY", "fpl-2", "{dir}/out")),
    ("rm keep", 1, "rm: cannot remove 'keep': Permission denied\n",
     ("unlinkat", "fs/delete", "DENY", "fpl-3", "{dir}/keep")),
])
def test_denied_category_fails_as_the_kernel_refused(tmp_path, script, status, stderr, audit):
    """Each denied category fails with the program's own error for EPERM/EACCES, and the audit log
    holds exactly one DENY line naming the syscall, tool, rule and path; the agent keeps running."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "secret").write_text("s3cret\n")
    (work / "keep").write_text("keep\n")
    policy = tmp_path / "deny.fpl"
    policy.write_text(DENY_POLICY.replace("{dir}", str(work)))
    log = tmp_path / "audit.jsonl"
    got = sandboxed(["bash", "-c", f"{script}; echo still running"], work, policy, log)
    assert (got.returncode, got.stdout, got.stderr) == (0, "still running\n", stderr)
    denied = [json.loads(line) for line in log.read_text().splitlines() if '"DENY"' in line]
    assert [(r["syscall"], r["tool"], r["effect"], r["rule_id"], r["args"]["path"]) for r in denied] == [
        tuple(field.replace("{dir}", str(work)) for field in audit)]
    assert (work / "keep").exists() and not (work / "out").exists()
    bare = sandboxed(["bash", "-c", script], work, policy)
    assert bare.returncode == status
