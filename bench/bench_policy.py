"""Policy engine speed: per-decision latency, throughput and policy load time.

Run: python3 bench/bench_policy.py [--decisions N] [--rounds R]

Builds a 100-rule FPL policy with conditions (comparisons, regex, string
functions, history functions, network clauses, a deny!), decides a fixed mix of
calls N times per round (each round on a fresh engine and session store), and
prints p50/p99 latency and decisions per second of every round and of the best
one (shared or frequency-scaled CPUs disturb single rounds), plus the
parse+compile time of the largest file in the FPL corpus.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from policy import Engine, SessionStore, ToolCall, load_policy  # noqa: E402

CORPUS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fpl-corpus"  # shared/ beside the checkout


def hundred_rule_policy() -> str:
    """A 100-rule agent: 4 hand-written rules plus 96 generated ones of varied shapes."""
    lines = [
        "agent bench {",
        "  default deny",
        "  rules {",
        '    deny! shell/exec when args.cmd matches "rm\\\\s+-rf\\\\s+/" reason: "no wiping"',
        '    permit fs/read when args.path startsWith "/tmp/" or args.path startsWith "/home/agent/"',
        "    defer fs/write when args.size > 1048576",
        "    permit net/connect host: *.example.com port: 443",
    ]
    shapes = [
        "permit tool{n}/* when args.amount < 500",
        'deny tool{n}/run when args.cmd matches "curl|wget"',
        "defer tool{n}/call when history_tool_count(\"tool{n}/*\") > 3",
        'permit tool{n} when lower(args.mode) in ["read", "list"]',
    ]
    for n in range(96):
        lines.append("    " + shapes[n % len(shapes)].format(n=n))
    lines += ["    permit fs/write", "  }", "}"]
    return "\n".join(lines) + "\n"


CALLS = [
    ToolCall("fs/read", {"path": "/tmp/notes.txt"}, session_id="bench"),
    ToolCall("fs/read", {"path": "/etc/shadow"}, session_id="bench"),
    ToolCall("fs/write", {"path": "/tmp/out", "size": 4096}, session_id="bench"),
    ToolCall("shell/exec", {"cmd": "ls -la /tmp"}, session_id="bench"),
    ToolCall("net/connect", {"host": "api.example.com", "port": 443}, session_id="bench"),
    ToolCall("tool0/refund", {"amount": 120}, session_id="bench"),
    ToolCall("tool1/run", {"cmd": "echo hi"}, session_id="bench"),
    ToolCall("tool3", {"mode": "READ"}, session_id="bench"),
]


def percentile(sorted_values: list[int], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))] / 1000.0


def bench_decisions(count: int) -> tuple[float, float, float, float, float]:
    """p50, p99, mean latency (us), decisions/s and CPU us per decision over ``count`` decisions."""
    engine = Engine([load_policy(hundred_rule_policy(), "bench.fpl")], SessionStore())
    decide, clock = engine.decide, time.perf_counter_ns
    for call in CALLS * 200:  # warm the candidate caches
        decide(call)
    samples = []
    append = samples.append
    calls = (CALLS * (count // len(CALLS) + 1))[:count]
    started, cpu_started = clock(), time.thread_time_ns()
    for call in calls:
        before = clock()
        decide(call)
        append(clock() - before)
    wall = (clock() - started) / 1e9
    cpu = (time.thread_time_ns() - cpu_started) / 1000.0 / count  # includes the timing calls themselves
    samples.sort()
    return (percentile(samples, 0.50), percentile(samples, 0.99), statistics.fmean(samples) / 1000.0,
            count / wall, cpu)


def bench_load() -> tuple[str, float]:
    files = sorted((p for p in CORPUS.rglob("*.fpl")), key=lambda p: p.stat().st_size)
    largest = files[-1]
    text = largest.read_text()
    runs = []
    for _ in range(20):
        before = time.perf_counter_ns()
        load_policy(text, str(largest))
        runs.append(time.perf_counter_ns() - before)
    return f"{largest.name} ({len(text)} bytes)", statistics.median(runs) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000, help="decisions per round")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    rounds = [bench_decisions(options.decisions) for _ in range(options.rounds)]
    largest, load_ms = bench_load()
    rows = [("decisions per round", f"{options.decisions} x {options.rounds} rounds")]
    for n, (p50, p99, mean, rate, cpu) in enumerate(rounds, 1):
        rows.append((f"round {n}: p50 / p99 / mean / cpu", f"{p50:.2f} / {p99:.2f} / {mean:.2f} / {cpu:.2f} us"
                                                          f"  ({rate:,.0f} decisions/s)"))
    best = min(rounds)
    rows += [
        ("best round p50 per decision", f"{best[0]:.2f} us"),
        ("best round p99 per decision", f"{best[1]:.2f} us"),
        ("best round decisions per second", f"{best[3]:,.0f}"),
        ("load (parse+compile), median of 20", f"{load_ms:.2f} ms  {largest}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
