"""Network overhead: connect latency and loopback throughput, native vs under the supervisor.

    python3 bench/bench_net.py [--rounds 5] [--connects 2000] [--bytes 1073741824]
    python3 bench/bench_net.py --stages 2000 [--same-cpu]   # where one socket() and one connect spend their time

Needs root and gcc. The agent (tests/sandbox/c/net_bench.c) connects to, or streams into, a
native sink on 127.0.0.1; under the supervisor its socket() is created on the host side and
each connect is a decision (`permit net/connect host: 127.0.0.1 port: P`: the address guard
adds a second, probing decision). Only the network rows are trapped, so the figures are the
network path alone. Configurations run interleaved, round by round: native; supervised with
repeated connects answered in C (sandbox/fastpath_net.py, as `run --fast-repeats` does) and
with every call answered in Python; each of those also with the supervisor and the agent on one
CPU (as `run --same-cpu`). Each figure is the median over rounds of the per-round median
(latency) or total (throughput).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import policy  # noqa: E402
from sandbox import placement, traced  # noqa: E402
from tests.sandbox.conftest import run_sandboxed  # noqa: E402

SOURCE = Path(__file__).resolve().parents[1] / "tests" / "sandbox" / "c" / "net_bench.c"
NET_TRAPPED = tuple(row.name for row in traced.TABLE if row.tool.startswith("net/"))
MODES = ("native", "supervised", "supervised-python", "supervised-same-cpu", "supervised-same-cpu-python")


def build(out: Path) -> str:
    binary = out / "net_bench"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SOURCE)], check=True)
    return str(binary)


def start_sink(binary: str, out: Path) -> tuple[subprocess.Popen, int]:
    port_file = out / "port"
    sink = subprocess.Popen([binary, "sink", str(port_file)])
    for _ in range(500):
        if port_file.exists() and port_file.read_text().endswith("\n"):
            return sink, int(port_file.read_text())
        time.sleep(0.01)
    sink.kill()
    raise SystemExit("the sink did not start")


same_cpu = placement.on_one_cpu  # what `run --same-cpu` does, for the duration of one run


def run(argv: list[str], mode: str, decide) -> bytes:
    if mode == "native":
        return subprocess.run(argv, check=True, capture_output=True).stdout
    compiled = None if mode.endswith("python") else decide.__self__.decision_keys  # repeated connects in C
    with same_cpu("same-cpu" in mode):
        result = run_sandboxed(argv, decide, trapped=NET_TRAPPED, timeout=600, audit_sink=lambda record: None,
                               decision_keys=compiled)
    if result.status != 0:
        raise SystemExit(f"sandboxed run failed: {result.explain()}")
    return result.stdout


def connect_pairs(out: bytes) -> list[tuple[int, int]]:
    """(socket ns, connect ns) per line the connect loop printed."""
    return [tuple(map(int, line.split())) for line in out.split(b"\n") if line]


def compare(binary: str, port: int, decide, options) -> list[str]:
    socket_ns = {mode: [] for mode in MODES}
    connect_ns = {mode: [] for mode in MODES}
    rate = {mode: [] for mode in MODES}
    for round_number in range(options.rounds):
        order = MODES if round_number % 2 == 0 else MODES[::-1]
        for mode in order:
            pairs = connect_pairs(run([binary, "connect", str(port), str(options.connects)], mode, decide))
            socket_ns[mode].append(statistics.median(p[0] for p in pairs))
            connect_ns[mode].append(statistics.median(p[1] for p in pairs))
        for mode in order:
            seconds = float(run([binary, "send", str(port), str(options.bytes)], mode, decide))
            rate[mode].append(options.bytes / seconds / 1e9)
    lines = [f"rounds {options.rounds}, {options.connects} connects and {options.bytes} bytes per round and "
             "configuration", "", "| config | socket() µs | added | connect() µs | added | GB/s | × native |",
             "|---|---|---|---|---|---|---|"]
    native = {name: statistics.median(table["native"]) for name, table in
              (("socket", socket_ns), ("connect", connect_ns), ("rate", rate))}
    for mode in MODES:
        sock, conn, gbs = (statistics.median(table[mode]) for table in (socket_ns, connect_ns, rate))
        lines.append(f"| {mode} | {sock / 1e3:.1f} | {(sock - native['socket']) / 1e3:+.1f} | {conn / 1e3:.1f} | "
                     f"{(conn - native['connect']) / 1e3:+.1f} | {gbs:.2f} | {gbs / native['rate']:.3f} |")
    return lines


# (module, attribute, label): what the stage timing wraps, in the order a connect meets them.
# A wrapper costs ~1 µs, so nested labels add up to a little more than the handler's wall time.
def _stage_points():
    from sandbox import _libc_net, netops, notify, supervisor
    return [(supervisor, "decode", "decode (memory read)"),
            (supervisor, "net_prepare", "netops.prepare (all of it)"),
            (_libc_net, "pidfd_open_task", "  pidfd_open"),
            (_libc_net, "pidfd_getfd", "  pidfd_getfd"),
            (netops, "socket_kind", "  socket kind (getsockopt)"),
            (notify, "id_valid", "ID_VALID ioctl (each)"),
            (supervisor.Supervisor, "_call", "ToolCall"),
            (supervisor.Supervisor, "_decide", "policy decision"),
            (supervisor, "guard_decision", "address guard"),
            (supervisor.Supervisor, "_record", "audit record"),
            (netops.NetOp, "perform", "perform (socket / connect on the duplicate)"),
            (_libc_net, "connect", "  connect(2) itself"),
            (notify, "addfd_send", "ADDFD ioctl (inject and answer)"),
            (notify, "send_value", "SEND ioctl (answer)"),
            (netops.NetOp, "close", "NetOp.close")]


def stage_timings(binary: str, port: int, decide, calls: int, pinned: bool, stages: bool = True) -> list[str]:
    """Median time per stage of one socket() and one connect() inside the supervisor; only the
    whole handler's without ``stages`` (no inner wrappers adding their own cost)."""
    from sandbox import supervisor
    from sandbox.decode import row_for

    current = threading.local()
    samples: dict[tuple[str, str], list[int]] = {}
    labels: list[str] = []  # in the order they are wrapped
    patched = []

    def wrap(owner, name: str, label: str, clock=time.perf_counter_ns, names_call: bool = False) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return  # not on this code path any more

        def timed_call(*args, **kwargs):
            if names_call:
                current.syscall = row_for(args[1]).name
            start = clock()
            try:
                return original(*args, **kwargs)
            finally:
                samples.setdefault((getattr(current, "syscall", "?"), label), []).append(clock() - start)
        patched.append((owner, name, original))
        labels.append(label)
        setattr(owner, name, timed_call)

    wrap(supervisor.Supervisor, "_handle", "whole handler (wall)", names_call=True)
    wrap(supervisor.Supervisor, "_handle", "whole handler (CPU time)", time.thread_time_ns, names_call=True)
    for owner, name, label in _stage_points() if stages else ():
        wrap(owner, name, label)
    try:
        mode = "supervised-same-cpu-python" if pinned else "supervised-python"  # the stages are Python's
        out = run([binary, "connect", str(port), str(calls)], mode, decide)
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
    pairs = connect_pairs(out)
    where = "agent and supervisor on one CPU" if pinned else "no pinning"
    lines = [f"{'stages' if stages else 'handler only'} of one socket() and one connect() ({calls} each, {where}; "
             "agent-side medians: socket() "
             f"{statistics.median(p[0] for p in pairs) / 1e3:.1f} µs, connect() "
             f"{statistics.median(p[1] for p in pairs) / 1e3:.1f} µs; load average {os.getloadavg()[0]:.2f})", "",
             "| stage | socket() median µs (calls) | connect() median µs (calls) |", "|---|---|---|"]
    for label in labels:
        cells = [f"{statistics.median(samples[(syscall, label)]) / 1e3:.1f} ({len(samples[(syscall, label)])})"
                 if (syscall, label) in samples else "-" for syscall in ("socket", "connect")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--bytes", type=int, default=1 << 30)
    parser.add_argument("--stages", type=int, default=0, metavar="CALLS",
                        help="only time the stages of CALLS socket()+connect() pairs inside the supervisor")
    parser.add_argument("--same-cpu", action="store_true", help="with --stages: as `run --same-cpu` places them")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))
        sink, port = start_sink(binary, Path(tmp))
        layer = policy.load_policy(f"agent bench {{\n default deny\n permit net/connect host: 127.0.0.1 port: {port}\n}}",
                                   "bench.fpl")
        decide = policy.Engine([layer], policy.SessionStore()).decide
        try:
            if options.stages:
                lines = stage_timings(binary, port, decide, options.stages, options.same_cpu, stages=False)
                lines += [""] + stage_timings(binary, port, decide, options.stages, options.same_cpu)
            else:
                lines = compare(binary, port, decide, options)
        finally:
            sink.kill()
            sink.wait()
    print("\n".join(lines))
    print(f"\nload average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
