"""Fixtures for the fault suite: compiled helpers, the launcher run as a subprocess, audit parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from sandbox import traced
from tests.sandbox.conftest import cgroup_dir  # noqa: F401 - a fixture the exec decoding tests use

ROOT = Path(__file__).resolve().parents[2]
C_DIR = Path(__file__).parent / "c"
FS_TRAPPED = tuple(row.name for row in traced.TABLE if row.tool.startswith("fs/"))
PERMIT_ALL = "agent a {\n  default permit\n}\n"


def pytest_configure(config):
    config.addinivalue_line("markers", "race: long race harness against the real kernel (runs in CI, ~1 min)")


@pytest.fixture(scope="session")
def cbin(tmp_path_factory):
    """Compile tests/faults/c/NAME.c on first use; returns the binary's path."""
    out = tmp_path_factory.mktemp("faultbin")
    os.chmod(out, 0o755)
    built: dict[str, str] = {}

    def build(name: str) -> str:
        if name not in built:
            target = out / name
            subprocess.run(["gcc", "-O2", "-pthread", "-o", str(target), str(C_DIR / f"{name}.c")],
                           check=True, capture_output=True)
            built[name] = str(target)
        return built[name]

    return build


class Launch:
    """One `faramesh-sandbox run` configuration: policy file, JSONL audit, private runtime dir."""

    def __init__(self, tmp: Path, policy_text: str = PERMIT_ALL, audit: Path | None = None):
        self.tmp = tmp
        self.policy = tmp / "policy.fpl"
        self.policy.write_text(policy_text)
        self.audit = audit or tmp / "audit.jsonl"
        self.runtime = tmp / "runtime"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(self.runtime),
                    "FARAMESH_SANDBOX_CONFIG": str(tmp / "no-config.toml")}

    def argv(self, command, options=(), audit_all: bool = True) -> list[str]:
        return [sys.executable, "-m", "launcher", "run", "--policy", str(self.policy), "--audit", str(self.audit),
                *(("--audit-all",) if audit_all else ()), "--no-audit-db", "--no-sdk-socket", "--no-prompt",
                *options, "--",
                *[str(a) for a in command]]

    def run(self, command, options=(), timeout: float = 120, audit_all: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command, options, audit_all), capture_output=True, text=True,
                              env=self.env, cwd=self.tmp, timeout=timeout)

    def start(self, command, options=(), **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(command, options), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env, cwd=self.tmp, start_new_session=True, **kwargs)

    def records(self) -> list[dict]:
        return read_audit(self.audit)


def read_audit(path: Path) -> list[dict]:
    """Complete JSON lines of an audit file (a line cut short by a full disk is not a record)."""
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def permitted_paths(records: list[dict], tool: str = "fs/write") -> list[str]:
    return [r["args"]["path"] for r in records if r.get("effect") == "PERMIT" and r.get("tool") == tool]


def opener_result(stdout: str) -> tuple[int, dict[str, int]]:
    """(opened=N, {path: errno}) from the opener/forker helpers' output."""
    opened, failed = -1, {}
    for line in stdout.splitlines():
        if line.startswith("opened="):
            opened = int(line.split("=", 1)[1])
        elif line.startswith("fail "):
            _, path, err = line.split(" ")
            failed[path] = int(err)
    return opened, failed


def processes_mentioning(token: str) -> list[int]:
    """Pids of live processes whose command line contains ``token`` (zombies excluded)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and token in " ".join(proc.info["cmdline"] or ()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found
