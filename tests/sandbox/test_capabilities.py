"""A root agent runs without the capabilities of sandbox/capabilities.py, on every set-up path,
even when the launcher itself holds them inheritable or ambient (a service's AmbientCapabilities=)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import capabilities

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
DROPPED = sum(1 << number for number in capabilities.to_drop(True))
CAP_CHOWN = 1 << 0

# Runs launch() with the agent printing its capability sets; argv[1] picks the set-up path.
DRIVER = """
import sys
from sandbox import agent_spawn, init_spawn, traced
from sandbox.launch import launch
from sandbox.spec import SandboxSpec
from policy.decision import Decision, Effect
if sys.argv[1] != "compiled init":
    init_spawn.available = lambda: False
if sys.argv[1] == "python stages":
    agent_spawn._spawn = None
spec = SandboxSpec(argv=["grep", "^Cap", "/proc/self/status"], trapped=frozenset(row.name for row in traced.TABLE))
sys.exit(launch(spec, lambda call: Decision(Effect.PERMIT, rule_id="permit")))
"""


@pytest.mark.parametrize("path", ["compiled init", "python init, agent set up in C", "python stages"])
def test_a_root_agent_holds_none_of_the_dropped_capabilities(path):
    launched = subprocess.run(
        ["setpriv", "--inh-caps", "+sys_admin,+net_admin,+mknod", "--ambient-caps", "+net_admin", "--",
         sys.executable, "-c", DRIVER, path], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert launched.returncode == 0, launched.stderr
    sets = {name: int(value, 16) for name, value in (line.split(":\t") for line in launched.stdout.splitlines())}
    assert {name: sets[name] & DROPPED for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0)
    assert sets["CapEff"] & CAP_CHOWN  # what root keeps


def test_an_unprivileged_agent_has_nothing_to_drop():
    assert capabilities.to_drop(False) == []
    assert capabilities.agent_is_privileged(wants_user_namespace=True)
