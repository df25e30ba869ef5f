"""The supervisor holds the agent's thread on its CPU while it hands a file over
(sandbox/fastpath_c/cpu_hold.c): only for that hand-over, never while the agent runs its own
code, and never against the agent's own set."""

from __future__ import annotations

import os
import re

import pytest

from sandbox import fastpath
from tests.sandbox.conftest import permit_all, run_sandboxed

pytestmark = pytest.mark.kernel
OPENS = ["open", "openat"]
COUNT = 3000
ANSWERED_BY = {"compiled": lambda tool: frozenset({"path"}), "python": None}  # decision_keys
SEVERAL_CPUS = len(os.sched_getaffinity(0)) > 1  # on one CPU there is nowhere else to wake: nothing is held


@pytest.fixture
def held(request):
    before, fastpath.HOLD_AGENT_CPU = fastpath.HOLD_AGENT_CPU, request.param
    yield request.param
    fastpath.HOLD_AGENT_CPU = before


def watched_opens(cbin, tmp_path, answered_by: str, *cpu: str) -> dict[str, int]:
    """Runs affinity_watch with its opens answered in C or in Python; its counts by name."""
    target = tmp_path / "file"
    target.write_text("x")
    tmp_path.chmod(0o755)
    count = COUNT if answered_by == "compiled" else COUNT // 10
    run = run_sandboxed([cbin("affinity_watch"), str(target), str(count), *cpu], permit_all, trapped=OPENS,
                        decision_keys=ANSWERED_BY[answered_by])
    assert run.status == 0, run.stderr
    assert (run.stats.get("fast_hits", 0) >= count * 0.9) == (answered_by == "compiled")
    return {key.decode(): int(value) for key, value in re.findall(rb"(\w+)=(\d+)", run.stdout)}


@pytest.mark.parametrize("answered_by", ANSWERED_BY)
@pytest.mark.parametrize("held", [True, False], indirect=True, ids=["held", "not-held"])
def test_the_opening_thread_is_held_on_one_cpu_only_during_the_hand_over(cbin, tmp_path, held, answered_by):
    """A sibling thread sees the opener's set narrowed to one CPU now and then when holding is on,
    never when it is off; the opener itself never does, and ends with the set it started with."""
    counts = watched_opens(cbin, tmp_path, answered_by)
    assert counts["before"] == len(os.sched_getaffinity(0))
    assert (counts["own"], counts["after"], counts["same"]) == (0, counts["before"], 1)
    assert (counts["held"] > 0) == (held and SEVERAL_CPUS)
    assert counts["other"] == counts["held"]  # a narrowed set is only ever the held one


def test_an_agent_confined_to_one_cpu_is_never_moved(cbin, tmp_path):
    """The agent's own one-CPU set is left alone: no read of it ever differs."""
    cpu = str(max(os.sched_getaffinity(0)))
    counts = watched_opens(cbin, tmp_path, "compiled", cpu)
    assert counts == {"before": 1, "held": 0, "other": 0, "own": 0, "after": 1, "same": 1}
