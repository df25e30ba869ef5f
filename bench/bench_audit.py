"""Audit write speed: records/s and per-record latency of each way a decision is made durable.

Run: python3 bench/bench_audit.py [--records N] [--rounds R] [--dir DIR] [--opens N]

Every configuration writes N records per round into fresh files under DIR (default: a temporary
directory on the same filesystem as /var/lib, where the default store lives), one writer thread or
8 at once; configurations are interleaved round by round. Prints per configuration the median
records/s over the rounds, the p50 and p99 latency of one audit() call over every round, and for
the store the median number of records per commit (group commit under concurrent writers).

With --opens N (as root), it also runs `faramesh-sandbox run` on a loop of N read-only opens of
one file, and prints the median time per open the agent measured itself: with --audit-all (each
open trapped, decided in Python and audited) without a store, with the store, and with the store
plus --audit; then with --fast-repeats and a policy that decides reads on the path alone (repeats
answered in compiled code, their records written after the answer, a batch per commit), without
a store and with each sink. "added" is against the first row of the same kind.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from launcher.audit import AuditLog, AuditTrail  # noqa: E402
from launcher.audit_store import AuditStore  # noqa: E402

RECORD = {"session": "bench", "pid": 1234, "syscall": "openat", "tool": "fs/read",
          "args": {"path": "/usr/lib/python3.11/encodings/__init__.py", "flags": ["O_RDONLY", "O_CLOEXEC"],
                   "mode": None, "pid": 1234, "session": "bench"},
          "effect": "PERMIT", "rule_id": "", "reason_code": "UNMATCHED_PERMIT",
          "reason": "no rule matched; default permit", "policy_version": "aae516de75097996", "latency_us": 196}


def jsonl(directory: pathlib.Path):
    log = AuditLog(str(directory / "audit.jsonl"))
    return log, log.close, None


def store(directory: pathlib.Path):
    s = AuditStore(str(directory / "audit.db"))
    return s, s.close, s


def store_and_jsonl(directory: pathlib.Path):
    s = AuditStore(str(directory / "audit.db"))
    trail = AuditTrail(s, AuditLog(str(directory / "audit.jsonl")))
    return trail, trail.close, s


CONFIGS = [  # (name, writer threads, factory)
    ("JSON Lines file (fsync per record)", 1, jsonl),
    ("store (commit per record)", 1, store),
    ("store + JSON Lines (run --audit)", 1, store_and_jsonl),
    ("JSON Lines file, 8 writers", 8, jsonl),
    ("store, 8 writers (group commit)", 8, store),
    ("store + JSON Lines, 8 writers", 8, store_and_jsonl),
]


def one_round(root: pathlib.Path, factory, threads: int, records: int) -> tuple[float, list[float], float | None]:
    directory = pathlib.Path(tempfile.mkdtemp(dir=root))
    write, close, the_store = factory(directory)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def writer(mine: list[float], count: int) -> None:
        start.wait()
        for i in range(count):
            began = time.perf_counter()
            write({**RECORD, "latency_us": i})
            mine.append(time.perf_counter() - began)
    workers = [threading.Thread(target=writer, args=(latencies[n], records // threads)) for n in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    close()
    shutil.rmtree(directory)
    per_commit = (records // threads * threads) / the_store.commits if the_store else None
    return (records // threads * threads) / elapsed, [x for mine in latencies for x in mine], per_commit


OPEN_LOOP = ("import os, sys, time\n"
             "n = int(sys.argv[1]); began = time.perf_counter()\n"
             "for _ in range(n):\n"
             "    os.close(os.open('/etc/hostname', os.O_RDONLY))\n"
             "print((time.perf_counter() - began) / n * 1e6)\n")
PERMIT_ALL = "agent a {\n  default permit\n}\n"
# fs/read decided on the path alone: trapped, and repeats may be answered in compiled code
PATH_RULE = 'agent a {\n  default permit\n  deny fs/read when args.path == "/etc/shadow" reason: "no"\n}\n'
NO_DB, FAST_NO_DB = "run --audit-all --no-audit-db", "run --fast-repeats --no-audit-db"
RUN_CONFIGS = [  # (name, extra run arguments ({dir}: a fresh directory), policy, compared with)
    (NO_DB, ["--audit-all", "--no-audit-db"], PERMIT_ALL, NO_DB),
    ("run --audit-all (store)", ["--audit-all", "--audit-db", "{dir}/audit.db"], PERMIT_ALL, NO_DB),
    ("run --audit-all --audit FILE (store + JSON Lines)",
     ["--audit-all", "--audit-db", "{dir}/audit.db", "--audit", "{dir}/audit.jsonl"], PERMIT_ALL, NO_DB),
    (FAST_NO_DB, ["--fast-repeats", "--no-audit-db"], PATH_RULE, FAST_NO_DB),
    ("run --fast-repeats (store)", ["--fast-repeats", "--audit-db", "{dir}/audit.db"], PATH_RULE, FAST_NO_DB),
    ("run --fast-repeats --audit FILE (store + JSON Lines)",
     ["--fast-repeats", "--audit-db", "{dir}/audit.db", "--audit", "{dir}/audit.jsonl"], PATH_RULE, FAST_NO_DB),
]


def open_loop(root: pathlib.Path, extra: list[str], policy_text: str, opens: int) -> float:
    directory = pathlib.Path(tempfile.mkdtemp(dir=root))
    policy = directory / "p.fpl"
    policy.write_text(policy_text)
    command = [sys.executable, "-m", "launcher", "run", "--no-prompt", "--no-sdk-socket",
               "--policy", str(policy), *[arg.replace("{dir}", str(directory)) for arg in extra],
               "--", sys.executable, "-c", OPEN_LOOP, str(opens)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            cwd=pathlib.Path(__file__).resolve().parents[1],
                            env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])})
    shutil.rmtree(directory)
    if result.returncode != 0:
        raise SystemExit(f"run failed ({result.returncode}): {result.stderr.strip()}")
    return float(result.stdout.split()[-1])


def run_table(root: pathlib.Path, opens: int, rounds: int) -> None:
    per_open: dict[str, list[float]] = {name: [] for name, *_ in RUN_CONFIGS}
    for _ in range(rounds):
        for name, extra, policy_text, _ in RUN_CONFIGS:
            per_open[name].append(open_loop(root, extra, policy_text, opens))
    print(f"\n{opens} trapped read-only opens of one file in `faramesh-sandbox run`, median of {rounds}\n")
    print("| configuration | µs per open | added by the audit |")
    print("|---|---|---|")
    for name, _, _, reference in RUN_CONFIGS:
        median = statistics.median(per_open[name])
        print(f"| {name} | {median:.0f} | {median - statistics.median(per_open[reference]):+.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="where the files are written (default /var/tmp)")
    parser.add_argument("--opens", type=int, default=0, help="also time N trapped opens through `run`")
    args = parser.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench-audit-", dir=args.dir))
    rates: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    latencies: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    batches: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    try:
        for _ in range(args.rounds):
            for name, threads, factory in CONFIGS:
                rate, lat, per_commit = one_round(root, factory, threads, args.records)
                rates[name].append(rate)
                latencies[name].extend(lat)
                if per_commit is not None:
                    batches[name].append(per_commit)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    reference = statistics.median(rates[CONFIGS[0][0]])
    print(f"{args.records} records per round, {args.rounds} rounds, files under {args.dir}\n")
    print("| configuration | records/s | × JSON Lines | p50 µs | p99 µs | records per commit |")
    print("|---|---|---|---|---|---|")
    for name, _, _ in CONFIGS:
        lat = sorted(latencies[name])
        rate = statistics.median(rates[name])
        per_commit = f"{statistics.median(batches[name]):.1f}" if batches[name] else "-"
        print(f"| {name} | {rate:,.0f} | {rate / reference:.2f} | {lat[len(lat) // 2] * 1e6:.0f} | "
              f"{lat[int(len(lat) * 0.99)] * 1e6:.0f} | {per_commit} |")
    if args.opens:
        root = pathlib.Path(tempfile.mkdtemp(prefix="bench-audit-", dir=args.dir))
        try:
            run_table(root, args.opens, args.rounds)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
