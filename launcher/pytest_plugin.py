"""pytest plugin ``faramesh``: run each test under an FPL policy in its own sandbox.

    pytest --faramesh-policy ci.fpl            # every test
    pytest --faramesh-policy ci.fpl --faramesh-marked-only   # tests marked @pytest.mark.faramesh

Each selected test runs in a fresh ``faramesh-sandbox run --audit-all`` (a child pytest that runs
just that test, this plugin disabled). A test fails when it fails inside the sandbox or when any of
its syscalls was denied or deferred; the report lists those decisions. One sandbox per test costs
start-up time (docs/benchmarks.md) but keeps each test's violations its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
from _pytest.runner import CallInfo

MARKER = "faramesh"
VIOLATIONS = ("DENY", "DEFER")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faramesh", "run tests under an FPL policy in faramesh-sandbox")
    group.addoption("--faramesh-policy", action="append", default=[], metavar="FILE",
                    help="FPL policy file (repeat to layer); turns the sandbox on")
    group.addoption("--faramesh-marked-only", action="store_true",
                    help=f"sandbox only tests marked @pytest.mark.{MARKER}")
    group.addoption("--faramesh-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="kill a sandboxed test after this long (default 600)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: run this test under the --faramesh-policy sandbox")


def _selected(item: pytest.Item) -> bool:
    options = item.config.option
    if not options.faramesh_policy:
        return False
    return not options.faramesh_marked_only or item.get_closest_marker(MARKER) is not None


def pytest_runtest_protocol(item: pytest.Item, nextitem) -> bool | None:
    if not _selected(item):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    call = CallInfo.from_call(lambda: run_sandboxed(item), when="call")
    report = pytest.TestReport.from_item_and_call(item, call)
    if call.excinfo is None:
        outcome, text = call.result
        report.outcome = outcome
        report.longrepr = text if outcome == "failed" else None
        if outcome == "skipped":
            report.longrepr = (str(item.path), item.location[1] or 0, text)
    item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def run_sandboxed(item: pytest.Item) -> tuple[str, str]:
    """Run one test in the sandbox; returns (outcome, text for the report)."""
    options = item.config.option
    with tempfile.TemporaryDirectory(prefix="faramesh-pytest-") as scratch:
        audit = os.path.join(scratch, "audit.jsonl")
        command = [sys.executable, "-m", "launcher", "run", "--audit-all", "--audit", audit]
        for path in options.faramesh_policy:
            command += ["--policy", os.path.abspath(path)]
        command += ["--", sys.executable, "-m", "pytest", item.nodeid, "-p", f"no:{MARKER}", "-p", "no:cacheprovider",
                    "-q", "--no-header", "-rs",
                    "-W", "ignore::pytest.PytestUnknownMarkWarning"]  # the marker is ours, unregistered there
        try:
            proc = subprocess.run(command, cwd=str(item.config.rootpath), capture_output=True, text=True,
                                  timeout=options.faramesh_timeout)
        except subprocess.TimeoutExpired:
            return "failed", f"the sandboxed test did not finish within {options.faramesh_timeout:g}s"
        violations = read_violations(audit)
    return judge(proc.returncode, proc.stdout + proc.stderr, violations)


def read_violations(audit_path: str) -> list[dict]:
    try:
        with open(audit_path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [r for r in records if r.get("effect") in VIOLATIONS]


def judge(status: int, output: str, violations: list[dict]) -> tuple[str, str]:
    """pytest exits 0 passed, 1 failed, 5 nothing collected; a skip exits 0 with 's' in the output."""
    lines = [format_violation(v) for v in violations]
    if violations:
        return "failed", "faramesh-sandbox: the test tripped the policy:\n" + "\n".join(lines) + "\n\n" + output
    if status == 0:
        return ("skipped", _skip_reason(output)) if _only_skipped(output) else ("passed", "")
    return "failed", f"the test failed inside the sandbox (exit {status}):\n{output}"


def format_violation(record: dict) -> str:
    args = record.get("args") or {}
    subject = args.get("cmd") or args.get("path") or args.get("host") or args.get("ip") or ""
    rule = record.get("rule_id") or "-"
    return f"  {record.get('effect')} {record.get('tool')} {subject} (rule {rule}: {record.get('reason')})"


def _only_skipped(output: str) -> bool:
    tail = output.strip().splitlines()[-1:] or [""]
    return " skipped" in tail[0] and " passed" not in tail[0]


def _skip_reason(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("SKIPPED"):
            return line.split(": ", 1)[-1]
    return "skipped inside the sandbox"
