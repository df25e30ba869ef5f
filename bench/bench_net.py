"""Network overhead: connect latency and loopback throughput, native vs under the supervisor.

    python3 bench/bench_net.py [--rounds 5] [--connects 2000] [--bytes 1073741824]

Needs root and gcc. The agent (tests/sandbox/c/net_bench.c) connects to, or streams into, a
native sink on 127.0.0.1; under the supervisor its socket() is created on the host side and
each connect is a decision (`permit net/connect host: 127.0.0.1 port: P`: the address guard
adds a second, probing decision). Only the network rows are trapped, so the figures are the
network path alone. Configurations run interleaved, round by round; each figure is the median
over rounds of the per-round median (latency) or total (throughput).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import policy  # noqa: E402
from sandbox import traced  # noqa: E402
from tests.sandbox.conftest import run_sandboxed  # noqa: E402

SOURCE = Path(__file__).resolve().parents[1] / "tests" / "sandbox" / "c" / "net_bench.c"
NET_TRAPPED = tuple(row.name for row in traced.TABLE if row.tool.startswith("net/"))


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


def run(argv: list[str], sandboxed: bool, decide) -> bytes:
    if not sandboxed:
        return subprocess.run(argv, check=True, capture_output=True).stdout
    result = run_sandboxed(argv, decide, trapped=NET_TRAPPED, timeout=600, audit_sink=lambda record: None)
    if result.status != 0:
        raise SystemExit(f"sandboxed run failed: {result.explain()}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--bytes", type=int, default=1 << 30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))
        sink, port = start_sink(binary, Path(tmp))
        layer = policy.load_policy(f"agent bench {{\n default deny\n permit net/connect host: 127.0.0.1 port: {port}\n}}",
                                   "bench.fpl")
        decide = policy.Engine([layer], policy.SessionStore()).decide
        socket_ns = {False: [], True: []}
        connect_ns = {False: [], True: []}
        rate = {False: [], True: []}
        try:
            for round_number in range(args.rounds):
                order = (False, True) if round_number % 2 == 0 else (True, False)
                for sandboxed in order:
                    lines = run([binary, "connect", str(port), str(args.connects)], sandboxed, decide).split(b"\n")
                    pairs = [tuple(map(int, line.split())) for line in lines if line]
                    socket_ns[sandboxed].append(statistics.median(p[0] for p in pairs))
                    connect_ns[sandboxed].append(statistics.median(p[1] for p in pairs))
                for sandboxed in order:
                    seconds = float(run([binary, "send", str(port), str(args.bytes)], sandboxed, decide))
                    rate[sandboxed].append(args.bytes / seconds / 1e9)
        finally:
            sink.kill()
            sink.wait()
    med = {name: {k: statistics.median(v) for k, v in table.items()}
           for name, table in (("socket", socket_ns), ("connect", connect_ns), ("rate", rate))}
    print(f"rounds {args.rounds}, {args.connects} connects and {args.bytes} bytes per round and configuration")
    for name in ("socket", "connect"):
        native, sup = med[name][False] / 1e3, med[name][True] / 1e3
        print(f"{name}() median: native {native:.1f} us, supervised {sup:.1f} us, added {sup - native:.1f} us")
    native, sup = med["rate"][False], med["rate"][True]
    print(f"1 connection, {args.bytes >> 20} MiB: native {native:.2f} GB/s, supervised {sup:.2f} GB/s, "
          f"ratio {sup / native:.3f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
