"""Floor of a compiled supervisor's exec path: the bash loop with every execve trapped.

    python3 bench/bench_exec_floor.py [--rounds 5] [--loop 2000]

Compiles bench/c/exec_floor.c with gcc into a temporary directory and runs the loop
`bash -c 'for i in $(seq N); do /bin/true; done'` natively and under that C supervisor at
each level of the exec path (see the C file: CONTINUE at once; + the ptrace round trip
sandbox.exec_verify.VerifiedExec makes; + reading path and argv and opening the file; + checking
the new image at its exec stop), with and without SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, each
placed three ways: unpinned; everything on one CPU (sandbox.placement.on_one_cpu, as
`run --same-cpu`); the supervisor on CPU 0 and the loop on CPU 1. Needs root (ptrace of a
grandchild) and gcc. Configurations run interleaved, round by round; each figure is the
median over rounds; ratios are against native in the same run, unpinned and placed alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import placement  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "c" / "exec_floor.c"
# (row label, exec_floor arguments before "--"); "native" runs the same fork/exec/timing path.
LEVELS = (
    ("native", ("native",)),
    ("CONTINUE at once", ("continue",)),
    ("CONTINUE at once, sync wake-up", ("continue", "--sync")),
    ("+ seize, interrupt, wait for the exec stop, detach", ("ptrace",)),
    ("+ seize, interrupt, wait for the exec stop, detach, sync wake-up", ("ptrace", "--sync")),
    ("+ read path and argv, open+fstat+pread, ID_VALID, sync wake-up", ("decide", "--sync")),
    ("+ check /proc/PID/exe and cmdline at the stop", ("verify",)),
    ("+ check /proc/PID/exe and cmdline at the stop, sync wake-up", ("verify", "--sync")),
)
PLACEMENTS = ("unpinned", "one CPU", "split")  # split: supervisor on CPU 0, the loop on CPU 1


def compile_harness(workdir: Path) -> Path:
    binary = workdir / "exec_floor"
    subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def run_once(binary: Path, arguments: tuple[str, ...], placement_name: str, loops: int) -> tuple[float, float]:
    """(Seconds from fork to the loop's exit, the supervisor's CPU seconds), after checking that every exec was trapped
    (the loop's execs are bash, seq and one /bin/true per iteration) and none mismatched."""
    extra = ("--split",) if placement_name == "split" else ()
    bash = ["/bin/bash", "-c", f"for i in $(seq {loops}); do /bin/true; done"]
    with placement.on_one_cpu(placement_name == "one CPU"):
        done = subprocess.run([str(binary), *arguments, *extra, "--", *bash], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"exec_floor {' '.join(arguments + extra)}: exited {done.returncode}: {done.stderr.strip()}")
    seconds, trapped, mismatched, cpu = done.stdout.split()
    expected = 0 if arguments[0] == "native" else loops + 2
    if int(trapped) != expected or int(mismatched) != 0:
        raise SystemExit(f"exec_floor {' '.join(arguments + extra)}: {trapped} execs trapped (expected {expected}), "
                         f"{mismatched} new images differing from the decision (expected 0)")
    return float(seconds), float(cpu)


def measure(binary: Path, rounds: int, loops: int, placements: tuple[str, ...]) -> dict[tuple[str, str], tuple]:
    """(label, placement) -> (median seconds, median supervisor CPU seconds)."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for label, arguments in LEVELS:
            for where in placements:
                samples.setdefault((label, where), []).append(run_once(binary, arguments, where, loops))
    return {key: (statistics.median(wall for wall, _cpu in values), statistics.median(cpu for _wall, cpu in values))
            for key, values in samples.items()}


def table(medians: dict[tuple[str, str], tuple], loops: int, placements: tuple[str, ...]) -> list[str]:
    """One row per level and placement: seconds, × native unpinned, × native placed the same
    way, µs added per exec against native unpinned, supervisor CPU µs per exec."""
    native = medians[("native", "unpinned")][0]
    lines = ["| supervisor does | placed | s | × native | × native placed alike | +µs per exec | supervisor CPU µs per exec |",
             "|---|---|---|---|---|---|---|"]
    for label, _arguments in LEVELS:
        for where in placements:
            (seconds, cpu), alike = medians[(label, where)], medians[("native", where)][0]
            lines.append(f"| {label} | {where} | {seconds:.2f} | {seconds / native:.2f} | {seconds / alike:.2f} | "
                         f"{(seconds - native) / loops * 1e6:+.0f} | {cpu / (loops + 2) * 1e6:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", type=int, default=2000)
    options = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_exec_floor: needs root (it ptraces the loop's children)")
    placements = PLACEMENTS if {0, 1} <= os.sched_getaffinity(0) else PLACEMENTS[:2]
    started_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        binary = compile_harness(Path(tmp))
        medians = measure(binary, options.rounds, options.loop, placements)
    print(f"### compiled exec floor ({options.loop} iterations, median of {options.rounds}, "
          f"load average {started_load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end)\n")
    print("\n".join(table(medians, options.loop, placements)))


if __name__ == "__main__":
    main()
