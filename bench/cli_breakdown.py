"""Where the CLI's own start-up work goes once Python's start and imports are paid: what a
supervisor service that is already running, forking per run, would still spend on each run.

    python3 bench/cli_breakdown.py [--rounds 8]

Each round forks this (warm) process; the child profiles `run --policy P -- /bin/true` and sends
the cumulative time of the main steps back. Medians of the rounds after two untimed ones, in ms
under the profiler (about a fifth more than without it: compare the WARM_CLI row of bench_run.py).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.warm_cli import preload, run_in_fork  # noqa: E402

# (file, function) -> what the row is called
STEPS = {
    ("cli.py", "main"): "the whole `run` (cli.main)",
    ("cli.py", "build_parser"): "argparse parser, every subcommand",
    ("launch.py", "launch"): "launch(): the sandbox, the agent and its supervision",
    ("cgroups.py", "join"): "  of it: moving init into a cgroup v1 hierarchy",
    ("launch.py", "_build_filter"): "  of it: building the seccomp filter (libseccomp)",
    ("run_egress.py", "start_egress"): "HTTP egress catalogue, loaded to learn the policy names none",
    ("run.py", "_close_each"): "closing the run's parts",
    ("run.py", "_start_approvals"): "approval service (forked)",
    ("cleanup.py", "record_run"): "clean-up reaper (forked)",
    ("cleanup.py", "finish"): "clean-up reaper, finishing",
}


def profiled(run) -> dict[str, float]:
    """The cumulative ms of each step of STEPS found in the profile of ``run()``."""
    profile = cProfile.Profile()
    profile.runcall(run)
    return {STEPS[(os.path.basename(path), name)]: cumulative * 1000
            for (path, _line, name), (_, _, _, cumulative, _) in pstats.Stats(profile).stats.items()
            if (os.path.basename(path), name) in STEPS}


def profiled_run(argv: list[str]) -> dict[str, float]:
    status, found = run_in_fork(argv, profiled)
    if status != 0:
        raise SystemExit(f"{argv} in a forked child exited {status}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        policy_file = Path(tmp) / "permit.fpl"
        policy_file.write_text("agent a {\n  default permit\n}\n")
        argv = ["run", "--policy", str(policy_file), "--", "/bin/true"]
        preload(argv)
        for _ in range(2):
            profiled_run(argv)
        rounds = [profiled_run(argv) for _ in range(args.rounds)]
    print(f"| step (`python3 bench/cli_breakdown.py --rounds {args.rounds}`) | median ms |\n|---|---|")
    for name in STEPS.values():
        values = [found[name] for found in rounds if name in found]
        if values:
            print(f"| {name} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
