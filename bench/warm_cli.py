"""`faramesh-sandbox run` in a forked child of a warm process: the CLI's own work without the
interpreter's start and imports, what a supervisor service that is already running and forks per
run would still pay (bench_run.py's WARM_CLI row, cli_breakdown.py)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launcher.cli import main as cli_main  # noqa: E402


def run_in_fork(argv: list[str], around=None) -> tuple[int, object]:
    """(exit status, what ``around`` returned) of the CLI run with ``argv`` in a forked child, its
    stdout and stderr on /dev/null. ``around(run) -> JSON-able`` wraps the call (a profiler)."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(reading)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            outcome = {}

            def run() -> None:
                try:
                    outcome["status"] = cli_main(argv)
                except SystemExit as end:
                    outcome["status"] = end.code if isinstance(end.code, int) else 1
            found = (around or (lambda call: call()))(run)
            status = outcome.get("status", 1)
            os.write(writing, json.dumps(found).encode())
        finally:  # a child never returns into the bench
            os._exit(status)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        data = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), json.loads(data) if data else None


def preload(argv: list[str]) -> None:
    """Import here every module such a run loads (a service would have them loaded already)."""
    status, names = run_in_fork(argv, lambda run: (run(), sorted(sys.modules))[1])
    if status != 0 or names is None:
        raise SystemExit(f"{argv} in a forked child exited {status}")
    for name in names:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module that only imports in its own context
                pass
