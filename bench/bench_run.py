"""Start-up and exec cost of `faramesh-sandbox run`, against native and strace, measured in one run.

    python3 bench/bench_run.py [--rounds 30] [--loop-rounds 3] [--write docs/benchmarks.md | --startup-only
                               | --loop-only]

Start-up of /bin/true: native (subprocess), launch() in-process (the sandbox machinery alone,
with and without the filter; with init the compiled sandbox/_init and the agent set up by
sandbox._spawn and, for comparison, both by the Python stages), and the whole CLI (which adds the Python interpreter and imports).
The bash loop `for i in $(seq 2000); do /bin/true; done`: native; sandboxed (launch() in-process
with the real FPL engine) with every syscall trapped (a permit-all policy, no category left to the
kernel), and with a policy whose exec rule has a condition, so that every exec is trapped and
decided while reads, writes and the rest are left to the kernel (what `faramesh-sandbox run`
does for such a policy), the latter also with repeated execs answered by the compiled receiver
(`run --fast-repeats`: sandbox/fastpath_exec.py); `strace -f` and `strace -f --seccomp-bpf`; interleaved round by round
so that machine noise hits every configuration alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import policy  # noqa: E402
from launcher.audit import AuditLog  # noqa: E402
from bench.warm_cli import preload, run_in_fork  # noqa: E402
from launcher.run import kernel_decided  # noqa: E402
from sandbox import agent_spawn, traced  # noqa: E402
from sandbox.launch import launch  # noqa: E402
from sandbox.spec import SandboxSpec  # noqa: E402

PERMIT = "agent a {\n  default permit\n}\n"
EXEC_RULE = 'agent a {\n  default permit\n  deny shell/exec when args.program == "curl" reason: "no curl"\n}\n'
LOOP = "for i in $(seq 2000); do /bin/true; done"
TRAPPED = frozenset(row.name for row in traced.TABLE)
SECTION = "## Start-up and exec"
CONDITIONAL = "faramesh-sandbox, exec rule with a condition (execs trapped, the rest in the kernel)"
COMPILED = "the same, repeated execs answered in compiled code (--fast-repeats)"
COMPILED_ONE_CPU = "the same on one CPU (--fast-repeats --same-cpu)"
PYTHON_NAMESPACES = "launch(), namespaces only, init and agent set up in Python (no sandbox._spawn)"
PYTHON_SET_UP = "launch(), namespaces + filter + supervisor, init and agent set up in Python (no sandbox._spawn)"
WARM_CLI = "faramesh-sandbox run -- /bin/true, imports done (this process forks, the child runs the CLI's main)"
SERVED = "launcher/_client -- /bin/true, to `faramesh-sandbox serve` (a sandbox made ahead)"
CLIENT = ROOT / "launcher" / "_client"
SPARE_SETTLE = 0.3  # s before and after each served run, untimed: no other row overlaps its set-up


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (the sandbox's init waits
    for the agent): less sensitive than wall time to other load on a shared machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_with_cpu(action) -> tuple[float, float]:
    start, cpu = time.perf_counter(), cpu_seconds()
    action()
    return time.perf_counter() - start, cpu_seconds() - cpu


def engine(text: str = PERMIT) -> policy.Engine:
    return policy.Engine([policy.load_policy(text, "bench.fpl")], policy.SessionStore())


LATENCIES: dict[str, list[int]] = {}  # syscall -> latency_us of every decision, from the audit records


def _collect(record: dict) -> None:
    LATENCIES.setdefault(record["syscall"], []).append(record["latency_us"])


COMPILED_SPAWN = agent_spawn._spawn  # the agent's set-up in C (sandbox/spawn_c/), None when not built


def in_process(argv: list[str], seccomp: bool = True, audit_path: Path | None = None, text: str = PERMIT,
               kernel: bool = False, python_set_up: bool = False, fast: bool = False, same_cpu: bool = False) -> None:
    """launch() with stdout/stderr to /dev/null, checking the status so a failure is not timed as a success.
    ``kernel``: leave to the kernel what the policy decides unconditionally, as the CLI does;
    ``python_set_up``: init and the agent set up by the Python stages even when sandbox._spawn and
    sandbox/_init are built (without sandbox._spawn neither is used);
    ``fast``: repeated decisions answered by the compiled receiver, as `run --fast-repeats` does;
    ``same_cpu``: the agent and the supervisor on the launcher's CPU, as `run --same-cpu` does."""
    agent_spawn._spawn = None if python_set_up else COMPILED_SPAWN
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        decide = engine(text)
        spec = SandboxSpec(argv=argv, trapped=TRAPPED if seccomp else frozenset(), seccomp=seccomp,
                           kernel_decided=kernel_decided(decide) if kernel else {}, fast_repeats=fast,
                           same_cpu=same_cpu)
        decider = decide.decide
        if fast:  # as launcher/run.py: the engine's analysis tells which decisions may be repeated
            def decider(call, _decide=decide.decide):
                return _decide(call)
            decider.decision_keys = decide.decision_keys
        log = AuditLog(str(audit_path)) if audit_path else None

        def audit(record: dict) -> None:
            _collect(record)
            if log is not None:
                log.write(record)
        status = launch(spec, decider, audit=audit)
        if log is not None:
            log.close()
            audit_path.unlink()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
    if status != 0:
        raise SystemExit(f"sandboxed {argv} exited {status}")


def shell(argv: list[str], env: dict | None = None) -> None:
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{argv} exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")


def startup(rounds: int, policy_file: Path, pycache: Path) -> dict[str, tuple[float, float, float]]:
    """configuration -> (median ms, minimum ms, median CPU ms of all its processes). The Python
    configurations run with compiled bytecode (kept in ``pycache``, written by an untimed first
    round), as an installed package has."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(pycache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cli = [sys.executable, "-m", "launcher", "run", "--policy", str(policy_file), "--", "/bin/true"]
    served = [str(CLIENT), "--socket", f"bench-run-{os.getpid()}", "--", "/bin/true"]
    configs = {
        "native: subprocess.run(/bin/true)": lambda: shell(["/bin/true"]),
        "launch(), namespaces only": lambda: in_process(["/bin/true"], seccomp=False),
        "launch(), namespaces + filter + supervisor": lambda: in_process(["/bin/true"]),
        PYTHON_NAMESPACES: lambda: in_process(["/bin/true"], seccomp=False, python_set_up=True),
        PYTHON_SET_UP: lambda: in_process(["/bin/true"], python_set_up=True),
        "python3 -c pass (interpreter alone)": lambda: shell([sys.executable, "-c", "pass"]),
        "python3 -c 'import launcher.run' (imports)": lambda: shell([sys.executable, "-c", "import launcher.run"], env),
        WARM_CLI: lambda: warm_cli(cli[3:]),
        "faramesh-sandbox run -- /bin/true (whole CLI)": lambda: shell(cli, env),
        SERVED: lambda: shell(served),
    }
    preload(cli[3:])  # the forked-child row starts with everything a run imports already loaded
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    with serving(policy_file, served[2], env):  # the same policy and options as the CLI row
        for action in configs.values():  # untimed: writes the bytecode, builds the filter once
            action()
        for _ in range(rounds):
            for name, action in configs.items():
                if name == SERVED:
                    time.sleep(SPARE_SETTLE)  # the row before it is cleaned up
                samples[name].append(timed_with_cpu(action))
                if name == SERVED:
                    time.sleep(SPARE_SETTLE)  # the service makes its next spare before the next row
    return {name: (statistics.median(wall for wall, _ in values) * 1000, min(wall for wall, _ in values) * 1000,
                   statistics.median(cpu for _, cpu in values) * 1000) for name, values in samples.items()}


@contextlib.contextmanager
def serving(policy_file: Path, name: str, env: dict):
    """`faramesh-sandbox serve` at the abstract name ``name`` for the SERVED row, until the block ends."""
    if not os.access(CLIENT, os.X_OK):
        raise SystemExit(f"{CLIENT} is not built: python3 setup.py build_ext --inplace")
    service = subprocess.Popen([sys.executable, "-m", "launcher", "serve", "--policy", str(policy_file),
                                "--socket", name], env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while f"@{name}\n" not in Path("/proc/net/unix").read_text():  # listening: no connect needed to tell
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"faramesh-sandbox serve did not start (status {service.poll()})")
            time.sleep(0.05)
        yield
    finally:
        service.terminate()
        service.wait(timeout=30)


def warm_cli(argv: list[str]) -> None:
    status, _ = run_in_fork(argv)
    if status != 0:
        raise SystemExit(f"{argv} in a forked child exited {status}")


def strace_known(names) -> list[str]:
    """The trapped syscall names this strace knows (an old strace refuses newer ones such as fchmodat2)."""
    return [name for name in sorted(names)
            if subprocess.run(["strace", "-e", f"trace={name}", "-o", "/dev/null", "/bin/true"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0]


def loop(rounds: int) -> dict[str, float]:
    bash = ["bash", "-c", LOOP]
    same_set = ",".join(strace_known(TRAPPED))
    configs = {
        "native": lambda: shell(bash),
        "faramesh-sandbox, everything trapped (launch(), FPL engine)": lambda: in_process(bash),
        CONDITIONAL: lambda: in_process(bash, text=EXEC_RULE, kernel=True),
        COMPILED: lambda: in_process(bash, text=EXEC_RULE, kernel=True, fast=True),
        COMPILED_ONE_CPU: lambda: in_process(bash, text=EXEC_RULE, kernel=True, fast=True, same_cpu=True),
        "faramesh-sandbox + --audit (fsync per decision)": lambda: in_process(bash, audit_path=Path(
            f"/tmp/bench-run-audit-{os.getpid()}.jsonl")),
        "strace -f": lambda: shell(["strace", "-f", "-o", "/dev/null", *bash]),
        "strace -f --seccomp-bpf -e trace=<the trapped syscalls>": lambda: shell(
            ["strace", "-f", "--seccomp-bpf", "-e", f"trace={same_set}", "-o", "/dev/null", *bash]),
    }
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, action in configs.items():
            samples[name].append(timed(action))
    return {name: statistics.median(values) for name, values in samples.items()}


def report(start: dict[str, tuple[float, float, float]], latencies: dict[str, list[int]],
           loop_s: dict[str, float] | None, rounds: int, loop_rounds: int, load_before: float) -> str:
    native_ms = start["native: subprocess.run(/bin/true)"][0]
    sandbox_ms = start["launch(), namespaces + filter + supervisor"][0]
    cli_ms = start["faramesh-sandbox run -- /bin/true (whole CLI)"][0]
    warm_ms = start[WARM_CLI][0]
    served_ms = start[SERVED][0]
    lines = [
        SECTION, "",
        f"Command: `python3 bench/bench_run.py --rounds {rounds} "
        f"{'--startup-only' if loop_s is None else f'--loop-rounds {loop_rounds}'}`. "
        f"Machine: Linux {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"as root (cgroup freezer available), load average {load_before:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end. Medians; every configuration of a table ran interleaved in the "
        "same run, after one untimed round. The Python configurations use compiled bytecode, as an installed "
        "package does (the bench writes it to a temporary PYTHONPYCACHEPREFIX first).",
        "", f"### Start-up of `/bin/true` (median of {rounds})", "",
        "| configuration | median ms | over native | fastest ms | CPU ms (all processes) |", "|---|---|---|---|---|",
    ]
    for name, (ms, fastest, cpu) in start.items():
        lines.append(f"| {name} | {ms:.2f} | {ms - native_ms:+.2f} | {fastest:.2f} | {cpu:.2f} |")
    lines += [
        "",
        f"The sandbox machinery (`launch()`) costs {sandbox_ms - native_ms:+.1f} ms over native "
        f"(target ≤ 10 ms: {'met' if sandbox_ms - native_ms <= 10 else 'NOT met'}). The whole CLI costs "
        f"{cli_ms - native_ms:+.0f} ms, most of it the Python interpreter and imports, measured separately above; "
        f"with those done the CLI's own work still costs {warm_ms - native_ms:+.1f} ms (the forked-child row). "
        f"A command handed to `faramesh-sandbox serve` by its compiled client costs {served_ms - native_ms:+.1f} ms "
        f"(target ≤ 10 ms: {'met' if served_ms - native_ms <= 10 else 'NOT met'}); each of its runs had "
        f"{SPARE_SETTLE} s (untimed) before and after it, so no other row overlapped the making of the next sandbox.",
        "", "Decision latency inside those runs (audit `latency_us`, median): " + ", ".join(
            f"{name} {statistics.median(values) / 1000:.2f} ms" for name, values in sorted(latencies.items())) + ".",
    ]
    if loop_s is None:  # --startup-only
        return "\n".join(lines)
    return "\n".join(lines + loop_lines(loop_s, loop_rounds))


def loop_lines(loop_s: dict[str, float], loop_rounds: int) -> list[str]:
    base = loop_s["native"]
    lines = [
        "", f"### `bash -c '{LOOP}'` (median of {loop_rounds})", "",
        "| configuration | s | × native |", "|---|---|---|",
    ]
    for name, seconds in loop_s.items():
        lines.append(f"| {name} | {seconds:.2f} | {seconds / base:.2f} |")
    ratio, compiled, one_cpu = loop_s[CONDITIONAL] / base, loop_s[COMPILED] / base, loop_s[COMPILED_ONE_CPU] / base
    everything = loop_s["faramesh-sandbox, everything trapped (launch(), FPL engine)"] / base
    lines += ["", f"Target ≤ 1.3× native with execs trapped: {'met' if min(ratio, compiled) <= 1.3 else 'NOT met'} "
              f"({ratio:.2f}× decided in Python, {compiled:.2f}× with repeated execs answered in compiled code, "
              f"{one_cpu:.2f}× with that and the agent and supervisor on one CPU (native runs on both), "
              f"policy `{EXEC_RULE.splitlines()[2].strip()}`). Each iteration is one exec "
              "decision: bash's child is single-threaded and execs an ELF file, so it is decided without "
              "freezing and the new image is checked against the decision before its first instruction "
              f"(sandbox.exec_verify.VerifiedExec). With everything trapped ({everything:.2f}×) each iteration "
              "adds the loader's opens, performed on the agent's behalf.", "",
              "Where an exec decision spends its time (in order, all while the exec waits): reading the path "
              "and argv, resolving the path inside the agent's root and naming the program by content "
              "(sandbox.decode.exec, sandbox.exec_identity), checking that the exec qualifies, the policy "
              "decision, two ptrace calls, ID_VALID and the audit record; after CONTINUE, the kernel's exec, "
              "then the check of what it runs against the decision (sandbox.exec_verify.VerifiedExec: the "
              "executable and cwd as the supervisor sees them, the program's identity) and the detach. "
              "With --fast-repeats the first exec is decided so and taught to the compiled receiver; every "
              "later one with the same path, argv and cwd, of the same unchanged file, is answered there "
              "(sandbox/fastpath_c/exec.c) with the same seize, record and check at the exec stop.", ""]
    return lines


def write_section(path: Path, text: str) -> None:
    """Replace our section of ``path`` (or append it), leaving every other section untouched."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("" if end < 0 else old[end + 1:])
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--loop-rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, help="put the results in this markdown file's own section")
    parser.add_argument("--startup-only", action="store_true", help="measure and print start-up alone (no --write)")
    parser.add_argument("--loop-only", action="store_true", help="measure and print the exec loop alone (no --write)")
    args = parser.parse_args()
    if (args.startup_only or args.loop_only) and args.write:
        parser.error("--startup-only and --loop-only print a partial section: they cannot --write")
    if args.startup_only and args.loop_only:
        parser.error("--startup-only and --loop-only exclude each other")
    if shutil.which("strace") is None:
        print("strace is missing: apt-get install -y strace", file=sys.stderr)
        return 1
    policy_file = Path("/tmp") / f"bench-run-{os.getpid()}.fpl"
    policy_file.write_text(PERMIT)
    load_before = os.getloadavg()[0]
    if args.loop_only:
        policy_file.unlink()
        loop_s = loop(args.loop_rounds)
        print(f"Command: `python3 bench/bench_run.py --loop-only --loop-rounds {args.loop_rounds}`. Load average "
              f"{load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end.")
        print("\n".join(loop_lines(loop_s, args.loop_rounds)))
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="bench-run-pycache-") as pycache:
            start = startup(args.rounds, policy_file, Path(pycache))
        latencies = dict(LATENCIES)
        loop_s = None if args.startup_only else loop(args.loop_rounds)
        text = report(start, latencies, loop_s, args.rounds, args.loop_rounds, load_before)
    finally:
        policy_file.unlink()
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
