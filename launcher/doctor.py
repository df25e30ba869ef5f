"""``faramesh-sandbox doctor``: what this kernel offers the sandbox and what degrades without it."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from launcher import term
from sandbox import landlock, limits, probe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def client_check() -> probe.Check:
    """The compiled client of `serve` (docs/serve.md), built beside this module."""
    client = Path(__file__).with_name("_client")
    degrades = "`faramesh-sandbox serve` has no client: use `faramesh-sandbox run` (a third of a second per start)"
    if os.access(client, os.X_OK):
        return probe.Check("serve client", probe.OK, f"{client} is built", degrades)
    return probe.Check("serve client", probe.MISSING, f"{client} was not built (reinstall with gcc present: "
                       "python3 setup.py build_ext --inplace)", degrades)


def main(args: argparse.Namespace) -> int:
    """0 when `run` can work here; 1 when an essential feature is missing."""
    checks = probe.run_all() + [client_check()]
    runnable = all(c.status == probe.OK for c in checks if c.essential)
    header = {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "uid": os.geteuid(),
        "run_possible": runnable,
        "limits": limits.mechanisms(),  # resource limit -> how `run` would enforce it here
        "landlock_floor": landlock.doctor_summary(),  # docs/landlock.md
    }
    if args.json:
        print(json.dumps({**header, "checks": [c.to_dict() for c in checks]}, indent=2))
        return 0 if runnable else 1
    who = "root" if header["uid"] == 0 else f"uid {header['uid']}"
    print(f"faramesh-sandbox doctor: Linux {header['kernel']} {header['machine']}, as {who}")
    width = max(len(c.name) for c in checks)
    for check in checks:
        style = "ok" if check.status == probe.OK else ("error" if check.essential else "warning")
        print(f"  {term.paint(f'{check.status:<8}', style)} {check.name:<{width}}  {check.detail}")
        if check.status != probe.OK:
            print(f"  {'':<8} {'':<{width}}  without it: {check.degrades}")
    print(f"Landlock floor: {header['landlock_floor']}")
    print("resource limits (run --memory/--pids/--cpus/--files/--timeout):")
    for name, how in header["limits"].items():
        print(f"  {name:<8} {how if how != limits.NONE else 'cannot be enforced here: run refuses this limit'}")
    verdict = "run can enforce policies here" if runnable else "run cannot start here (an essential check failed)"
    print(f"verdict: {term.paint(verdict, 'ok' if runnable else 'error')}")
    return 0 if runnable else 1
