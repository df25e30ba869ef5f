"""Cost of trapped and untrapped syscalls: native vs the supervisor vs strace, in one run.

    python3 bench/bench_trap.py [--rounds 5] [--opens 20000] [--getpids 2000000] [--loop 2000] [--opens-only]
    python3 bench/bench_trap.py --stages 5000 [--same-cpu]   # where one trapped open spends its time
    python3 bench/bench_trap.py --exec-stages 2000           # where one verified exec spends its time
    python3 bench/bench_trap.py --exec-floors 5              # the bash loop with parts of the exec path removed

Needs root (a cgroup v2 directory for the exec freezer), gcc and strace
(`apt-get install -y strace`). Configurations run interleaved, round by round, and
each figure is the median over rounds; ratios are against native in the same run.
The open loop also runs with the compiled fast path for repeated reads (sandbox/fastpath.py)
and under `python_floor` (the least a Python supervisor can do per open) to show how much of
the cost is the mechanism and how much our handling; the "-unheld" rows answer opens without
holding the agent's thread on the supervisor's CPU (sandbox/fastpath_c/cpu_hold.c).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy.decision import Decision, Effect  # noqa: E402
from sandbox import fastpath, notify, placement, seccomp, traced  # noqa: E402
from sandbox._libc import process_vm_readv  # noqa: E402
from sandbox.seccomp import ALLOW  # noqa: E402
from tests.sandbox.conftest import CGROUP2_ROOT, run_sandboxed, spawn_filtered  # noqa: E402

OPEN_LOOP = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    int getpid_mode = argv[1][0] == '-';
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        if (getpid_mode) { syscall(SYS_getpid); continue; }
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.4f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n);
    return 0;
}
"""
# Every filesystem and exec row of the table; the loops below make no network calls.
TRAPPED = tuple(row.name for row in traced.TABLE if not row.tool.startswith("net/"))
TRAPPED_FOR_STRACE = "trace=execve,execveat,open,openat,openat2,creat,unlink,unlinkat,rename,renameat,renameat2,mkdir"


def permit(call):
    return Decision(Effect.PERMIT, rule_id="bench")


def path_only(tool: str) -> frozenset:
    """What Engine.decision_keys says of a policy such as `deny fs/read when args.path == ...`."""
    return frozenset({"path"})


def build(workdir: Path) -> str:
    source, binary = workdir / "loop.c", workdir / "loop"
    source.write_text(OPEN_LOOP)
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return str(binary)


class Cgroup:
    """A scratch cgroup v2 parent with an agent directory for each sandboxed run."""

    def __init__(self):
        self.parent = os.path.join(CGROUP2_ROOT, f"bench-{uuid.uuid4().hex[:8]}")
        os.mkdir(self.parent)

    def fresh(self) -> str:
        path = os.path.join(self.parent, f"agent-{uuid.uuid4().hex[:6]}")
        os.mkdir(path)
        return path

    def cleanup(self) -> None:
        for entry in os.scandir(self.parent):
            if entry.is_dir():
                os.rmdir(entry.path)
        os.rmdir(self.parent)


same_cpu = placement.on_one_cpu  # what `run --same-cpu` does, for the duration of one run


@contextlib.contextmanager
def held_cpu(wanted: bool):
    """The compiled receiver holding the agent's thread on its CPU for ADDFD, or not."""
    before, fastpath.HOLD_AGENT_CPU = fastpath.HOLD_AGENT_CPU, wanted
    try:
        yield
    finally:
        fastpath.HOLD_AGENT_CPU = before


def python_floor(argv: list[str]) -> bytes:
    """The least a Python supervisor can do per open: only openat trapped, then RECV, one
    process_vm_readv of the path, open it ourselves, ADDFD. No policy, no resolution in the
    agent's view, no ID_VALID: not safe, only the floor of the mechanism on this machine."""
    out_r, out_w = os.pipe()
    pid, listener = spawn_filtered(argv, seccomp.build_filter(["openat"], {}), None, out_w, 2)
    os.close(out_w)
    notify.set_sync_wakeup(listener)

    def serve() -> None:
        while True:
            try:
                call = notify.recv(listener)
            except OSError:
                return  # the agent is gone
            path = process_vm_readv(call.pid, call.args[1], 4096 - call.args[1] % 4096).split(b"\0", 1)[0]
            try:
                fd = os.open(path, (call.args[2] & 0xFFFFFFFF) | os.O_CLOEXEC)
            except OSError as err:
                notify.send_error(listener, call.id, err.errno)
                continue
            try:
                notify.addfd_send(listener, call.id, fd, False)
            except OSError:
                pass
            os.close(fd)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    os.waitpid(pid, 0)
    out = b""
    while chunk := os.read(out_r, 4096):
        out += chunk
    os.close(out_r)
    os.close(listener)
    server.join(5)
    return out


def timed(argv: list[str], mode: str, cgroups: Cgroup) -> float:
    """Wall seconds (or the program's own µs/call when it prints one) for one config."""
    start = time.perf_counter()
    if mode == "native":
        out = subprocess.run(argv, capture_output=True, check=True).stdout
    elif mode.startswith("sandboxed"):
        # "sandboxed": every table syscall trapped; "sandboxed-kernel-read-exec": a policy that
        # permits fs/read and shell/exec unconditionally, compiled into the filter;
        # "sandboxed-same-cpu": supervisor threads and agent all on one CPU; "-compiled": repeated
        # reads answered by the compiled fast path (a policy whose fs/read decision reads only the path).
        decided = {"fs/read": ALLOW, "shell/exec": ALLOW} if mode.endswith("read-exec") else {}
        keys = path_only if "compiled" in mode else None
        # "-unheld": the agent's thread is not kept on the receiver's CPU for ADDFD (fastpath_c/cpu_hold.c)
        with same_cpu(mode.endswith("same-cpu")), held_cpu("unheld" not in mode):
            run = run_sandboxed(argv, permit, trapped=TRAPPED, cgroup=cgroups.fresh(), kernel_decided=decided,
                                decision_keys=keys)
        if run.status != 0:
            raise RuntimeError(f"sandboxed {argv} failed: {run.stderr.decode()}")
        out = run.stdout
    elif mode.startswith("python-floor"):
        with same_cpu(mode.endswith("same-cpu")):
            out = python_floor(argv)
    elif mode == "strace":
        out = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", *argv], capture_output=True, check=True).stdout
    else:  # strace with a seccomp-bpf prefilter on the same syscalls we trap
        out = subprocess.run(["strace", "-f", "-qq", "--seccomp-bpf", "-e", TRAPPED_FOR_STRACE, "-o", "/dev/null",
                              *argv], capture_output=True, check=True).stdout
    elapsed = time.perf_counter() - start
    text = out.decode().strip()
    return float(text) if text and text.replace(".", "", 1).isdigit() else elapsed


def measure(name: str, argv: list[str], modes: list[str], rounds: int, cgroups: Cgroup) -> dict[str, float]:
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            samples[mode].append(timed(argv, mode, cgroups))
    return {mode: statistics.median(values) for mode, values in samples.items()}


def report(title: str, unit: str, medians: dict[str, float]) -> list[str]:
    native = medians["native"]
    lines = [f"### {title}", "", f"| config | {unit} | × native | added |", "|---|---|---|---|"]
    for mode, value in medians.items():
        lines.append(f"| {mode} | {value:.3f} | {value / native:.2f} | {value - native:+.3f} |")
    return lines + [""]


@contextlib.contextmanager
def timed_stages(stages):
    """Time every call of the supervisor's handler (CPU time and wall) and of each (owner, name,
    label) in ``stages``; yields {label: [ns, ...]} and puts the originals back afterwards."""
    from sandbox import supervisor

    samples: dict[str, list[int]] = {}
    patched: list[tuple] = []

    def wrap(owner, name: str, label: str, clock=time.perf_counter_ns) -> None:
        original = getattr(owner, name)
        kept = samples.setdefault(label, [])

        def timed_call(*args, **kwargs):
            start = clock()
            try:
                return original(*args, **kwargs)
            finally:
                kept.append(clock() - start)
        patched.append((owner, name, original))
        setattr(owner, name, timed_call)

    wrap(supervisor.Supervisor, "_handle", "whole handler (CPU time)", time.thread_time_ns)
    wrap(supervisor.Supervisor, "_handle", "whole handler (wall)")
    for owner, name, label in stages:
        wrap(owner, name, label)
    try:
        yield samples
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def stage_timings(loop: str, target: str, calls: int, cgroups: Cgroup, pinned: bool) -> list[str]:
    """Median time per stage of one trapped open inside the supervisor (wrappers add ~1 µs each)."""
    from sandbox import fsops, notify, supervisor

    stages = ((supervisor, "decode", "decode (memory read)"),
              (supervisor, "fs_prepare", "fsops.prepare"),
              (notify, "id_valid", "ID_VALID ioctl"),
              (supervisor.Supervisor, "_call", "ToolCall"),
              (supervisor.Supervisor, "_record", "audit record"),
              (fsops.FsOp, "perform", "FsOp.perform"),
              (notify, "addfd_send", "ADDFD ioctl"),
              (fsops.FsOp, "close", "FsOp.close"))
    with timed_stages(stages) as samples, same_cpu(pinned):
        run = run_sandboxed([loop, target, str(calls)], permit, trapped=TRAPPED, cgroup=cgroups.fresh())
    where = "agent and supervisor on one CPU" if pinned else "no pinning"
    lines = [f"### stages of one trapped open ({calls} calls, {where}; loop {run.stdout.decode().strip()} µs/call)",
             "",
             "| stage | median µs |", "|---|---|"]
    lines += [f"| {label} | {statistics.median(values) / 1000:.1f} |" if values else f"| {label} | (not reached) |"
              for label, values in samples.items()]
    return lines + [""]


def exec_stage_timings(loops: int, cgroups: Cgroup) -> list[str]:
    """Median and mean time per stage of one exec decision (exec_verify.VerifiedExec) inside the
    supervisor, for `bash -c 'for ...; do /bin/true; done'` with only the execs trapped."""
    from sandbox import exec_identity, exec_verify, notify, supervisor
    from sandbox.decode import exec as decode_exec

    stages = ((supervisor, "decode", "decode (path and argv)"),
              (supervisor, "exec_arguments", "exec_arguments (all of the below)"),
              (decode_exec, "resolve_executable", "- resolve in the agent's root"),
              (exec_identity.ExecIdentity, "examine", "- open, name and read the file"),
              (exec_identity.ExecIdentity, "also_runs", "- interpreters and loader"),
              (exec_verify.VerifiedExec, "for_exec", "VerifiedExec.for_exec (/proc/PID/stat)"),
              (supervisor.Supervisor, "_call", "ToolCall"),
              (supervisor.Supervisor, "_decide", "decide()"),
              (exec_verify.VerifiedExec, "attach", "PTRACE_SEIZE + PTRACE_INTERRUPT"),
              (notify, "id_valid", "ID_VALID ioctl"),
              (supervisor.Supervisor, "_record", "audit record"),
              (notify, "send_continue", "CONTINUE ioctl (the agent may run the exec on our CPU)"),
              (exec_verify.VerifiedExec, "_next_status", "waiting for PTRACE_EVENT_EXEC"),
              (exec_verify.VerifiedExec, "_difference", "checking the new image"),
              (exec_verify.VerifiedExec, "_detach", "PTRACE_DETACH"))
    bash = ["/bin/bash", "-c", f"for i in $(seq {loops}); do /bin/true; done"]
    handlers = dict(supervisor._HANDLERS)
    with timed_stages(stages) as samples:
        # The handler table holds the function itself: point it at the class attribute again.
        supervisor._HANDLERS["shell"] = supervisor.Supervisor._handle_exec
        try:
            started = time.perf_counter()
            run = run_sandboxed(bash, permit, trapped=("execve", "execveat"), cgroup=cgroups.fresh())
            seconds = time.perf_counter() - started
        finally:
            supervisor._HANDLERS.update(handlers)
    lines = [f"### stages of one verified exec ({loops} loop iterations in {seconds:.2f} s, "
             f"{run.stats['exec_verified']} verified, load average {os.getloadavg()[0]:.2f})", "",
             "| stage | median µs | mean µs |", "|---|---|---|"]
    lines += [f"| {label} | {statistics.median(values) / 1000:.1f} | {statistics.mean(values) / 1000:.1f} |"
              if values else f"| {label} | (not reached) | |" for label, values in samples.items()]
    return lines + [""]


@contextlib.contextmanager
def exec_path_cut_to(level: str):
    """The supervisor with only part of the exec path (not safe: for measuring the rest):
    "floor" answers CONTINUE at once; "trace" also seizes the holder, waits for its exec stop
    and detaches; "decide" decodes, names and decides but neither traces nor checks."""
    from sandbox import exec_verify, notify, supervisor

    saved = [(supervisor.Supervisor, "_handle", supervisor.Supervisor._handle),
             (exec_verify.VerifiedExec, "attach", exec_verify.VerifiedExec.attach),
             (exec_verify.VerifiedExec, "finish", exec_verify.VerifiedExec.finish)]

    def trace_only(self, notification) -> None:
        if not exec_verify._single_threaded_stranger(notification.pid):  # bash itself is our child
            notify.send_continue(self.listener, notification.id)
            return
        verifier = exec_verify.VerifiedExec(notification.pid, "", "", [b"-"], b"")
        verifier.attach()
        notify.send_continue(self.listener, notification.id)
        verifier._difference = lambda: ""
        verifier.finish(True)
    if level == "floor":
        supervisor.Supervisor._handle = lambda self, notification: notify.send_continue(self.listener, notification.id)
    elif level == "trace":
        supervisor.Supervisor._handle = trace_only
    elif level == "decide":
        exec_verify.VerifiedExec.attach = lambda self: None
        exec_verify.VerifiedExec.finish = lambda self, continued: None
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def exec_floors(rounds: int, loops: int, cgroups: Cgroup) -> list[str]:
    """The bash loop natively and under the supervisor with its exec path cut to each level."""
    bash = ["/bin/bash", "-c", f"for i in $(seq {loops}); do /bin/true; done"]
    levels = {"CONTINUE at once (receiver floor)": "floor",
              "+ seize, wait for the exec stop, detach (no decode, decision or check)": "trace",
              "decode, name and decide, CONTINUE (no ptrace, no check)": "decide",
              "everything (VerifiedExec)": "full"}
    samples: dict[str, list[float]] = {"native": [], **{name: [] for name in levels}}
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(bash, check=True)
        samples["native"].append(time.perf_counter() - started)
        for name, level in levels.items():
            with exec_path_cut_to(level):
                started = time.perf_counter()
                run = run_sandboxed(bash, permit, trapped=("execve", "execveat"), cgroup=cgroups.fresh())
                samples[name].append(time.perf_counter() - started)
            if run.status != 0:
                raise SystemExit(f"{name}: the loop exited {run.status}")
    native = statistics.median(samples["native"])
    lines = [f"### the exec path cut short ({loops} iterations, median of {rounds}, "
             f"load average {os.getloadavg()[0]:.2f} at the end)", "",
             "| supervisor does | s | × native | added ms per exec |", "|---|---|---|---|"]
    for name, values in samples.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.2f} | {median / native:.2f} | {(median - native) / loops * 1000:+.3f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--opens", type=int, default=20000)
    parser.add_argument("--getpids", type=int, default=300000)
    parser.add_argument("--loop", type=int, default=2000)
    parser.add_argument("--stages", type=int, default=0, metavar="CALLS",
                        help="only time the stages of CALLS trapped opens inside the supervisor")
    parser.add_argument("--same-cpu", action="store_true", help="with --stages: as `run --same-cpu` places them")
    parser.add_argument("--opens-only", action="store_true", help="only the open+close loop")
    parser.add_argument("--exec-floors", type=int, default=0, metavar="ROUNDS",
                        help="only run the --loop bash loop with the exec path cut short, ROUNDS rounds")
    parser.add_argument("--exec-stages", type=int, default=0, metavar="LOOPS",
                        help="only time the stages of the exec decisions of a bash loop of LOOPS /bin/true")
    options = parser.parse_args()
    modes = ["native", "sandboxed", "sandboxed-same-cpu", "sandboxed-kernel-read-exec", "strace", "strace-seccomp-bpf"]
    # For the open loop only: the compiled fast path, and the floors, which trap openat alone.
    floor = ["sandboxed-unheld", "sandboxed-compiled", "sandboxed-compiled-unheld", "sandboxed-compiled-same-cpu",
             "python-floor", "python-floor-same-cpu"]
    cgroups = Cgroup()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            loop = build(Path(tmp))
            target = Path(tmp) / "file"
            target.write_text("x")
            if options.exec_floors:
                print("\n".join(exec_floors(options.exec_floors, options.loop, cgroups)))
                return
            if options.exec_stages:
                print("\n".join(exec_stage_timings(options.exec_stages, cgroups)))
                return
            if options.stages:
                print("\n".join(stage_timings(loop, str(target), options.stages, cgroups, options.same_cpu)))
                return
            lines = report(f"open+close loop ({options.opens} calls, per call)", "µs/call",
                           measure("open", [loop, str(target), str(options.opens)], modes + floor, options.rounds,
                                   cgroups))
            if options.opens_only:
                print("\n".join(lines))
                return
            lines += report(f"untrapped getpid loop ({options.getpids} calls, per call)", "µs/call",
                            measure("getpid", [loop, "-", str(options.getpids)], modes, options.rounds, cgroups))
            bash = ["/bin/bash", "-c", f"for i in $(seq {options.loop}); do /bin/true; done"]
            lines += report(f"`bash -c 'for i in $(seq {options.loop}); do /bin/true; done'`", "s",
                            measure("bash", bash, modes, options.rounds, cgroups))
    finally:
        cgroups.cleanup()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
