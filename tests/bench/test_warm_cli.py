"""bench/warm_cli.py and bench/cli_breakdown.py time a real run: its status is the agent's, and
the profile finds the steps it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import cli_breakdown, warm_cli  # noqa: E402

pytestmark = pytest.mark.kernel


@pytest.fixture
def permit(tmp_path) -> str:
    policy = tmp_path / "permit.fpl"
    policy.write_text("agent a {\n  default permit\n}\n")
    return str(policy)


@pytest.mark.parametrize("command, status", [(["/bin/true"], 0), (["sh", "-c", "exit 7"], 7)])
def test_a_forked_run_returns_the_agents_status(permit, command, status):
    assert warm_cli.run_in_fork(["run", "--policy", permit, "--no-audit-db", "--", *command]) == (status, None)


def test_the_breakdown_finds_the_run_and_its_launch(permit):
    found = cli_breakdown.profiled_run(["run", "--policy", permit, "--no-audit-db", "--", "/bin/true"])
    whole, launch = found["the whole `run` (cli.main)"], found["launch(): the sandbox, the agent and its supervision"]
    assert 0 < launch < whole
