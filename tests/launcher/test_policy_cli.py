"""`faramesh-sandbox policy check|eval|fmt` from the shell: exit codes, output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "fpl-corpus"
DEMO = ROOT / "examples" / "payment-bot.fpl"


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_check_accepts_the_demo_policy():
    """A valid policy checks with exit 0."""
    proc = cli("policy", "check", str(DEMO))
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)


def test_check_rejects_missing_agent_name_with_location():
    """The invalid conformance fixture fails with exit 1 and a path:line:col diagnostic."""
    fixture = CORPUS / "fpl-lang__conformance__invalid__missing-agent-name.fpl"
    proc = cli("policy", "check", str(fixture))
    assert proc.returncode == 1
    assert f"{fixture}:" in proc.stderr and "error[" in proc.stderr and "help:" in proc.stderr
    assert_no_traceback(proc)


def test_check_json_reports_every_error(tmp_path: Path):
    """--json lists all errors of all files, sorted, with valid=false."""
    bad1 = write(tmp_path, "a.fpl", 'agent a {\n  permit x when args.n >\n}\n')
    bad2 = write(tmp_path, "b.fpl", "agent {\n}\n")
    proc = cli("policy", "check", "--json", bad2, bad1)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["valid"] is False
    paths = [d["path"] for d in report["diagnostics"] if d["severity"] == "error"]
    assert bad1 in paths and bad2 in paths
    assert paths == sorted(paths)


def test_check_flags_permit_unreachable_behind_strict_deny(tmp_path: Path):
    """A permit that a deny! makes unreachable is an error naming both rules' lines."""
    path = write(tmp_path, "p.fpl", "agent a {\n  deny! shell/*\n  permit shell/exec\n}\n")
    proc = cli("policy", "check", "--json", path)
    assert proc.returncode == 1
    errors = [d for d in json.loads(proc.stdout)["diagnostics"] if d["severity"] == "error"]
    assert errors[0]["line"] == 3
    assert errors[0]["related"][0]["line"] == 2


def test_check_missing_file_is_a_clear_error():
    """A file that does not exist is reported in one line, exit 2."""
    proc = cli("policy", "check", "/nonexistent/policy.fpl")
    assert proc.returncode == 2
    assert "cannot read /nonexistent/policy.fpl" in proc.stderr
    assert_no_traceback(proc)


@pytest.mark.parametrize("tool,args,effect,code", [
    ("stripe/refund", {"amount": 120}, "PERMIT", "RULE_PERMIT"),
    ("stripe/refund", {"amount": 800}, "DEFER", "RULE_DEFER"),
    ("shell/exec", {"cmd": "ls"}, "DENY", "FPL_STRICT_DENY"),
    ("fs/read", {"path": "/etc/passwd"}, "DENY", "FPL_STRICT_DENY"),
    ("fs/read", {"path": "/workspace/a.txt"}, "PERMIT", "RULE_PERMIT"),
    ("email/send", {}, "DENY", "UNMATCHED_DENY"),
])
def test_eval_decides_demo_calls(tool, args, effect, code):
    """eval prints the decision as JSON with effect and reason code."""
    proc = cli("policy", "eval", str(DEMO), "--tool", tool, "--args", json.dumps(args))
    assert proc.returncode == 0, proc.stderr
    decision = json.loads(proc.stdout)
    assert (decision["effect"], decision["reason_code"]) == (effect, code)
    assert len(decision["policy_version"]) == 16


def test_eval_defer_carries_token_and_expiry():
    """A DEFER decision has a token and an expiry about five minutes out."""
    proc = cli("policy", "eval", str(DEMO), "--tool", "stripe/refund", "--args", '{"amount": 900}')
    decision = json.loads(proc.stdout)
    assert decision["defer_token"]
    assert decision["notify"] == "finance"


def test_eval_session_file_keeps_budget_between_calls(tmp_path: Path):
    """With --session, max_calls 1 permits the first call and denies the second."""
    path = write(tmp_path, "b.fpl", "agent a {\n  default permit\n  budget session {\n    max_calls 1\n  }\n}\n")
    state = str(tmp_path / "session.json")
    first = json.loads(cli("policy", "eval", path, "--tool", "x", "--session", state).stdout)
    second = json.loads(cli("policy", "eval", path, "--tool", "x", "--session", state).stdout)
    assert first["effect"] == "PERMIT"
    assert (second["effect"], second["reason_code"]) == ("DENY", "SESSION_TOOL_LIMIT")


def test_eval_rejects_bad_json_args():
    """Malformed --args is a one-line error with a fix, exit 2."""
    proc = cli("policy", "eval", str(DEMO), "--tool", "x", "--args", "{amount: 5")
    assert proc.returncode == 2
    assert "--args is not valid JSON" in proc.stderr and "help:" in proc.stderr
    assert_no_traceback(proc)


def test_eval_layers_cannot_loosen_a_strict_deny(tmp_path: Path):
    """A later layer's permit does not override an earlier layer's deny!."""
    base = write(tmp_path, "base.fpl", "agent a {\n  deny! shell/exec\n}\n")
    loose = write(tmp_path, "loose.fpl", "agent a {\n  default permit\n  permit shell/exec\n}\n")
    decision = json.loads(cli("policy", "eval", base, loose, "--tool", "shell/exec").stdout)
    assert (decision["effect"], decision["reason_code"]) == ("DENY", "FPL_STRICT_DENY")


def test_fmt_output_is_canonical_and_stable(tmp_path: Path):
    """fmt output parses to the same policy and formatting it again changes nothing."""
    once = cli("policy", "fmt", str(DEMO))
    assert once.returncode == 0, once.stderr
    path = write(tmp_path, "f.fpl", once.stdout)
    twice = cli("policy", "fmt", path)
    assert twice.stdout == once.stdout
    assert "deny! shell/*" in once.stdout


PERMISSIVE = "agent a {\n  default permit\n  budget session {\n    max $100\n  }\n}\n"


@pytest.mark.parametrize("raw,message", [
    ('{"amount": ' + "9" * 5000 + "}", "--args is not valid JSON"),
    ('{"n": ' + "[" * 5000 + "]" * 5000 + "}", "--args nests too deeply"),
], ids=["huge-integer", "deep-nesting"])
def test_eval_rejects_oversized_args_without_traceback(tmp_path: Path, raw: str, message: str):
    """A 5000-digit number or 5000 nested lists in --args is a usage error (exit 2), not a crash."""
    path = write(tmp_path, "p.fpl", PERMISSIVE)
    proc = cli("policy", "eval", path, "--tool", "pay", "--args", raw)
    assert proc.returncode == 2
    assert message in proc.stderr and "help:" in proc.stderr
    assert_no_traceback(proc)


def test_eval_nan_amount_is_denied_from_the_shell(tmp_path: Path):
    """--args with a NaN amount (Python's json accepts it) cannot pass a budget."""
    path = write(tmp_path, "p.fpl", PERMISSIVE)
    decision = json.loads(cli("policy", "eval", path, "--tool", "pay", "--args", '{"amount": NaN}').stdout)
    assert (decision["effect"], decision["reason_code"]) == ("DENY", "BUDGET_SESSION_EXCEEDED")


@pytest.mark.parametrize("where", ["missing-dir/s.json", "."], ids=["missing-directory", "directory"])
def test_eval_session_path_that_cannot_be_written_is_a_clear_error(tmp_path: Path, where: str):
    """--session in a missing directory, or naming a directory, is exit 2 with a hint and no traceback."""
    path = write(tmp_path, "p.fpl", PERMISSIVE)
    proc = cli("policy", "eval", path, "--tool", "x", "--session", str(tmp_path / where))
    assert proc.returncode == 2
    assert "session file" in proc.stderr and "help:" in proc.stderr
    assert proc.stdout == ""
    assert_no_traceback(proc)


@pytest.mark.parametrize("content", [
    '{"version": 1, "sessions": {"cli": {"cost_usd": NaN}}}',
    '{"version": 1, "sessions": {"cli": {"call_count": 1e400}}}',
    '{"version": 1, "sessions": {"cli": {"day": -Infinity}}}',
    '{"version": 1, "sessions": ' + "[" * 5000 + "]" * 5000 + "}",
], ids=["nan-spend", "infinite-count", "infinite-day", "deep-nesting"])
def test_eval_rejects_unusable_session_files(tmp_path: Path, content: str):
    """A session file with non-finite numbers or absurd nesting is rejected (exit 2), never used or crashed on."""
    path = write(tmp_path, "p.fpl", PERMISSIVE)
    state = write(tmp_path, "s.json", content)
    proc = cli("policy", "eval", path, "--tool", "pay", "--args", '{"amount": 500}', "--session", state)
    assert proc.returncode == 2
    assert "is not a valid session" in proc.stderr and "help:" in proc.stderr
    assert_no_traceback(proc)


def test_check_directory_and_binary_inputs_are_clear_errors(tmp_path: Path):
    """A directory is a usage error (exit 2); random bytes are an invalid policy (exit 1); neither crashes."""
    directory = cli("policy", "check", str(tmp_path))
    assert directory.returncode == 2 and "Is a directory" in directory.stderr
    binary = tmp_path / "b.fpl"
    binary.write_bytes(bytes(range(256)) * 4)
    proc = cli("policy", "check", str(binary))
    assert proc.returncode == 1 and "error[E103]" in proc.stderr
    for result in (directory, proc):
        assert_no_traceback(result)


def test_check_endless_device_is_rejected_without_reading_it_all():
    """/dev/zero as FILE is E115 (exit 1) after reading just past the 1 MiB limit, not a MemoryError."""
    proc = cli("policy", "check", "/dev/zero")
    assert proc.returncode == 1
    assert "/dev/zero:1:1: error[E115]: source is larger than the 1048576-byte limit (an endless stream)" in proc.stderr
    assert_no_traceback(proc)


def test_check_oversized_file_reports_its_real_size(tmp_path: Path):
    """A 3 MB file is E115 with its size from the file system."""
    path = write(tmp_path, "big.fpl", "permit a/b\n" * 300_000)
    proc = cli("policy", "check", path)
    assert proc.returncode == 1
    assert "source is larger than the 1048576-byte limit (3300000 bytes)" in proc.stderr
    assert_no_traceback(proc)


def test_fmt_write_to_a_read_only_file_is_a_clear_error(tmp_path: Path):
    """fmt --write on a read-only file system is exit 2 with the reason, not a traceback (real ro bind mount)."""
    path = write(tmp_path, "p.fpl", "permit a\n")
    script = (f"mount --bind -o ro {tmp_path} {tmp_path} && "
              f"{sys.executable} -m launcher policy fmt --write {path}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"cannot write {path}: Read-only file system" in proc.stderr and "help:" in proc.stderr
    assert_no_traceback(proc)
