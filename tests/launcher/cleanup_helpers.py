"""What a run may leave on the host, gathered for before/after comparisons in the clean-up tests."""

from __future__ import annotations

import glob
import os
import re
import threading
import time
from pathlib import Path

import psutil

from sandbox import cgroups, limits

PERMIT = "agent a {\n  default permit\n}\n"
SESSION = re.compile(r"^faramesh-sandbox: session ([0-9a-f]+),", re.MULTILINE)


def sessions_in(stderr: str) -> list[str]:
    return SESSION.findall(stderr)


def session_leftovers(session: str, runtime: Path, launcher_pid: int) -> list[str]:
    """Every host path a run of ``session`` (launched by ``launcher_pid``) may create, that exists."""
    paths = limits.cgroup_dirs(session) + [str(runtime / f"{session}.sock"), str(runtime / "runs" / f"{session}.run")]
    found = [p for p in paths if os.path.lexists(p)] + glob.glob(str(runtime / "sdk" / f"faramesh-sdk-{session}-*"))
    v2 = cgroups.v2_mount()
    if v2 is not None:
        parent = os.path.dirname(limits.cgroup_dirs(session)[0])
        found += glob.glob(os.path.join(parent, f"freeze-selftest-{launcher_pid}-*"))
    return found


def _children(patience: float = 10.0) -> list[int]:
    """This process's descendants, once those on their way out (a reaper, an approval service
    finishing after its run) have had time to go."""
    deadline = time.monotonic() + patience
    while True:
        alive = [p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def host_state(tmp: Path, runtime: Path) -> dict:
    """This process's fds, threads, children and mounts, plus the run's temp and runtime dirs."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass  # the directory listing's own descriptor
    return {
        "tmp": sorted(os.listdir(tmp)),
        "runtime": sorted(str(p.relative_to(runtime)) for p in runtime.rglob("*")),
        "mounts": [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                   if line.split()[4].split("/")[1:3] != ["run", "netns"]],  # named netns: other programs
        "fds": fds,
        "threads": threading.active_count(),
        "children": _children(),
    }
