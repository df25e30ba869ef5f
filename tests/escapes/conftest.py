"""Shared fixtures for the escape suite: compiled probes, a secret file, native and sandboxed runs.

Every escape test first runs its probe natively (as root, outside the sandbox) to show the
technique works on this machine, then under `faramesh-sandbox run` to show it is stopped,
asserting the audit record (a policy decision) or the kernel's refusal (the filter). Each runs
twice: with every call answered in Python (`--audit-all`) and with repeated reads answered by
the compiled fast path (`--fast-repeats`, every category trapped).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
C_DIR = Path(__file__).parent / "c"
SECRET = "TOPSECRET-4711"
PERMIT_ALL = "agent a {\n  default permit\n}\n"
DENY_SECRET = ('agent a {\n  default permit\n'
               '  deny! fs/* when args.path endsWith "/secret.txt" reason: "the secret is off limits"\n}\n')
SIGSYS = 31


@dataclass
class Outcome:
    status: int  # exit code, or -signal for the native runs
    stdout: str
    stderr: str
    audit: list = field(default_factory=list)

    def denials(self, tool_prefix: str = "") -> list[dict]:
        """Audit records with effect DENY whose tool starts with ``tool_prefix``."""
        return [r for r in self.audit if r.get("effect") == "DENY" and r.get("tool", "").startswith(tool_prefix)]

    def lines(self) -> dict[str, str]:
        """``key=value`` lines printed by a probe, as a dict."""
        return dict(line.split("=", 1) for line in self.stdout.splitlines() if "=" in line)

    def explain(self) -> str:
        denied = [(r["syscall"], r["tool"], r["args"].get("path") or r["args"].get("ip"), r["reason_code"])
                  for r in self.denials()]
        return f"status={self.status} stdout={self.stdout[-800:]!r} stderr={self.stderr[-800:]!r} denied={denied}"


@pytest.fixture(scope="session")
def cbin(tmp_path_factory):
    """Compile tests/escapes/c/NAME.c on first use (extra gcc flags allowed); returns its path."""
    out = tmp_path_factory.mktemp("escbin")
    os.chmod(out, 0o755)
    built: dict[tuple, str] = {}

    def build(name: str, *flags: str) -> str:
        key = (name, *flags)
        if key not in built:
            target = out / (name + ("-" + str(len(built)) if flags else ""))
            subprocess.run(["gcc", "-O2", "-pthread", "-o", str(target), str(C_DIR / f"{name}.c"), *flags],
                           check=True, capture_output=True)
            built[key] = str(target)
        return built[key]

    return build


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file named secret.txt that DENY_SECRET forbids, holding SECRET."""
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n")
    return path


@contextlib.contextmanager
def loopback_udp(timeout: float):
    """A UDP socket of the test's on 127.0.0.1, any free port, closed afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        yield sock
    finally:
        sock.close()


def native(argv, *, timeout: float = 60, **kwargs) -> Outcome:
    """Run ``argv`` outside the sandbox, as root."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    return Outcome(done.returncode, done.stdout, done.stderr)


# How the supervisor answers: every call in Python with its record first (--audit-all), or
# repeated reads in compiled code (--fast-repeats; --report keeps every category trapped). The
# options, given the audit file: the report goes beside it, never to /dev/null (a report replaces
# its path: /dev/null would become a regular file).
ANSWERING = {"python": lambda audit_file: ("--audit-all",),
             "compiled": lambda audit_file: ("--fast-repeats", "--report", f"{audit_file}.report")}


@pytest.fixture(autouse=True, params=sorted(ANSWERING))
def answering(request, monkeypatch):
    """Each escape is tried against both ways of answering."""
    monkeypatch.setattr(sys.modules[__name__], "MODE", request.param)
    return request.param


MODE = "python"


def launcher_argv(policy_file: Path, audit_file: Path, argv, options=(), kernel: bool = False) -> list[str]:
    return [sys.executable, "-m", "launcher", "run", "--policy", str(policy_file), "--audit", str(audit_file),
            *(() if kernel else ANSWERING[MODE](audit_file)), "--no-audit-db", "--no-sdk-socket", "--no-prompt", *options, "--",
            *[str(a) for a in argv]]


def sandboxed(policy_text: str, argv, workdir: Path, *, options=(), timeout: float = 60, kernel: bool = False,
              **kwargs) -> Outcome:
    """`faramesh-sandbox run --policy P --audit A --audit-all [options] -- argv` (or with the
    compiled fast path: ``answering``), in ``workdir``; with ``kernel`` neither, so what the policy
    decides outright is decided in the kernel, as a plain `run` does (no audit record for those);
    the agent's exit status is the launcher's (128+N for signal N). The config file (and any
    [limits] in it) is not read: only ``options`` apply."""
    policy_file, audit_file = workdir / "escape-policy.fpl", workdir / "escape-audit.jsonl"
    policy_file.write_text(policy_text)
    audit_file.write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_CONFIG": str(workdir / "no-config.toml"),
           **kwargs.pop("env", {})}
    done = subprocess.run(launcher_argv(policy_file, audit_file, argv, options, kernel), capture_output=True, text=True,
                          cwd=workdir, env=env, timeout=timeout, **kwargs)
    records = [json.loads(line) for line in audit_file.read_text().splitlines() if line.strip()]
    return Outcome(done.returncode, done.stdout, done.stderr, records)


def start_sandboxed(policy_text: str, argv, workdir: Path) -> tuple[subprocess.Popen, Path]:
    """Start a sandboxed run without waiting; returns the launcher process and its audit file."""
    policy_file, audit_file = workdir / "escape-policy.fpl", workdir / "escape-audit.jsonl"
    policy_file.write_text(policy_text)
    audit_file.write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_CONFIG": str(workdir / "no-config.toml")}
    proc = subprocess.Popen(launcher_argv(policy_file, audit_file, argv), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=workdir, env=env)
    return proc, audit_file


def finish(proc: subprocess.Popen, audit_file: Path, timeout: float = 60) -> Outcome:
    out, err = proc.communicate(timeout=timeout)
    records = [json.loads(line) for line in audit_file.read_text().splitlines() if line.strip()]
    return Outcome(proc.returncode, out, err, records)
