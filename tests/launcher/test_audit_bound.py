"""What an audit record keeps: every record at most 64 KiB of canonical JSON, long values cut with
a marker and the SHA-256 of the whole, the same record in every sink (launcher/audit_bound.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import audit_store
from launcher.audit import AuditLog, AuditTrail, normalize
from launcher.audit_bound import MAX_RECORD, Bounded, BudgetSpent, bound, shorten
from launcher.audit_store import AuditStore, canonical
from launcher.report import RunReport
from policy.decision import Effect
from sandbox.decode.exec import command_line

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"…\[truncated: (\d+) bytes, sha256 ([0-9a-f]{64})\]\Z")
# bigexec's call: /bin/true with eight arguments of 127 KiB of 0xff bytes (the first numbered)
RAW_ARGV = [b"/bin/true", b"00000000" + b"\xff" * (127 * 1024 - 8)] + [b"\xff" * (127 * 1024)] * 7


def exec_record(raw_argv: list[bytes] = RAW_ARGV, effect=Effect.PERMIT) -> dict:
    argv = [os.fsdecode(arg) for arg in raw_argv]
    args = {"path": "/usr/bin/true", "requested": "/bin/true", "argv": argv, "program": "true", "cwd": "/tmp",
            "cmd": command_line("true", argv, ("/usr/bin/true", "/bin/true")), "pid": 7, "session": "s1"}
    return {"time": 1767322800.25, "session": "s1", "pid": 7, "syscall": "execve", "tool": "shell/exec",
            "args": args, "effect": effect, "rule_id": "fpl-0", "reason_code": "RULE_DENY", "reason": "no",
            "policy_version": "v", "latency_us": 900}


def cut(text: str) -> tuple[str, int, str]:
    """(the prefix kept, the size and the digest the marker gives) of a shortened string."""
    found = MARKER.search(text)
    assert found, f"no marker at the end of {text[-120:]!r}"
    return text[:found.start()], int(found[1]), found[2]


def test_an_exec_of_megabytes_is_kept_in_64_kib_and_says_what_it_cut():
    """A 12.5 MB exec record becomes at most 64 KiB; path, program and cwd stay whole, each argv item
    keeps a prefix and the size and SHA-256 of the argument as the agent passed it."""
    record = exec_record()
    assert len(canonical(normalize(record))) > 12_000_000
    kept = bound(record)
    assert len(canonical(kept)) <= MAX_RECORD
    assert {key: kept["args"][key] for key in ("path", "requested", "program", "cwd", "pid", "session")} == {
        "path": "/usr/bin/true", "requested": "/bin/true", "program": "true", "cwd": "/tmp", "pid": 7,
        "session": "s1"}
    assert (kept["effect"], kept["tool"], kept["reason"], kept["time"]) == (
        "PERMIT", "shell/exec", "no", "2026-01-02T03:00:00.250000Z")
    assert kept["args"]["argv"][0] == "/bin/true"
    for raw, item in zip(RAW_ARGV[1:], kept["args"]["argv"][1:], strict=True):
        prefix, size, digest = cut(item)
        assert (size, digest) == (len(raw), hashlib.sha256(raw).hexdigest())
        assert os.fsdecode(raw).startswith(prefix) and len(prefix) >= 256
    prefix, size, digest = cut(kept["args"]["cmd"])
    whole = record["args"]["cmd"].encode("utf-8", "surrogateescape")
    assert (size, digest) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert prefix.startswith("/bin/true '00000000\udcff")
    assert record["args"]["argv"][1] == os.fsdecode(RAW_ARGV[1])  # the caller's record is left as it was


def test_a_record_that_fits_is_only_normalized():
    """Ordinary records are kept exactly as before."""
    record = {**exec_record([b"/bin/ls", b"-la", b"/tmp"]), "extra": {"nested": [1, 2.5, None, True]}}
    assert bound(record) == normalize(record)


def test_each_level_one_limit_applies_even_when_the_record_would_fit():
    """No string is kept longer than 4,096 characters, no list or dict beyond 1,024 items."""
    record = {"tool": "sdk/x", "args": {"note": "a" * 5000, "items": list(range(2000)),
                                        "map": {f"k{n}": n for n in range(1030)}}}
    args = bound(record)["args"]
    prefix, size, digest = cut(args["note"])
    assert (prefix, size, digest) == ("a" * 4096, 5000, hashlib.sha256(b"a" * 5000).hexdigest())
    assert args["items"] == [*range(1024), "…[truncated: 976 more items]"]
    assert len(args["map"]) == 1025 and args["map"]["…[truncated: 6 more keys]"] is None


def test_data_nested_too_deep_for_every_level_still_fits():
    """An SDK report of nested lists (32**3 numbers) is over 64 KiB at every level: its args
    become a marker, and the fields that say what was decided stay."""
    nested = [[[n for n in range(32)]] * 32] * 32
    record = {"time": 1.0, "tool": "sdk/report", "args": {"data": nested}, "effect": "DENY", "reason": "no"}
    kept = bound(record)
    assert len(canonical(kept)) <= MAX_RECORD
    assert (kept["args"], kept["effect"], kept["tool"], kept["reason"]) == ("…[truncated]", "DENY", "sdk/report", "no")


def test_shorten_keeps_a_dict_within_any_limit():
    """The approvals' 4 KiB: still a dict, its short fields whole."""
    args = exec_record()["args"]
    kept = shorten(args, 4096)
    assert len(canonical(kept)) <= 4096 and kept["path"] == "/usr/bin/true" and kept["cwd"] == "/tmp"
    assert cut(kept["argv"][1])[1:] == (len(RAW_ARGV[1]), hashlib.sha256(RAW_ARGV[1]).hexdigest())


def test_store_log_and_report_behind_bounded_keep_the_same_shortened_record(tmp_path):
    """The store row, the JSON Lines line and the report's entry are all bounded, and the chain verifies."""
    db, jsonl = str(tmp_path / "audit.db"), tmp_path / "audit.jsonl"
    report = RunReport("s1", ["agent"], ["p.fpl"])
    audit = Bounded(report.tee(AuditTrail(AuditStore(db), AuditLog(str(jsonl)))))
    audit(exec_record(effect=Effect.DENY))
    audit.many([exec_record(effect=Effect.DENY)] * 2)
    audit.close()
    con = audit_store.open_readonly(db)
    rows = audit_store.select(con)
    assert len(rows) == 3 and all(len(row.text) <= MAX_RECORD for row in rows)
    assert audit_store.verify(con).problem is None
    lines = jsonl.read_bytes().splitlines()
    assert len(lines) == 3 and all(len(line) <= MAX_RECORD + 100 for line in lines)  # + seq and hash
    stored = json.loads(lines[0])
    assert {key: stored[key] for key in rows[0].record} == rows[0].record
    assert [v["args"]["cmd"] for v in report.summary(0)["violations"]] == [rows[0].record["args"]["cmd"]] * 3


POLICY = 'agent a {\n  default permit\n  deny shell/exec when args.cmd contains "NEEDLE" reason: "no needle"\n}\n'
AGENT = r"""
import os
big = b"\xff" * 100_000  # an argument may take 128 KiB
for tail in (b"", b"NEE" + b"DLE"):  # not in this script's own command line
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(b"/bin/true", [b"/bin/true", big, big + tail])
        except OSError as err:
            os._exit(err.errno)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.kernel
def test_a_run_decides_on_the_whole_argv_and_keeps_bounded_records(tmp_path):
    """The needle past the kept prefix is still denied; store, JSON Lines and report stay small."""
    db, jsonl, report, policy = (tmp_path / name for name in ("audit.db", "audit.jsonl", "r.json", "p.fpl"))
    policy.write_text(POLICY)
    done = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy), "--audit-db", str(db),
                           "--audit", str(jsonl), "--report", str(report), "--no-prompt", "--",
                           sys.executable, "-c", AGENT], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    permitted, denied = done.stdout.split()
    assert (permitted, denied != "0") == ("0", True), done.stdout + done.stderr
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    sizes = [size for (size,) in con.execute("SELECT length(record) FROM records")]
    execs = [json.loads(text) for (text,) in con.execute(
        "SELECT record FROM records WHERE tool = 'shell/exec' AND json_extract(record, '$.args.argv[2]') LIKE '%truncated%'")]
    assert max(sizes) <= MAX_RECORD
    assert [record["effect"] for record in execs] == ["PERMIT", "DENY"]
    assert cut(execs[1]["args"]["argv"][2])[1:] == (100_006, hashlib.sha256(b"\xff" * 100_000 + b"NEEDLE").hexdigest())
    assert max(len(line) for line in jsonl.read_bytes().splitlines()) <= MAX_RECORD + 100
    assert len(report.read_bytes()) < MAX_RECORD


def test_a_budget_lets_records_through_until_spent_then_refuses_each(tmp_path):
    """Records within the budget reach the sinks; the one that would pass it raises BudgetSpent (a
    writer denies what it cannot record), the spent callback hears it once, the sinks get no more."""
    kept, told = [], []
    record = {"time": 1.0, "session": "s", "tool": "fs/read", "args": {"path": "/x" * 100}, "effect": Effect.PERMIT}
    size = len(canonical(bound(record)))
    audit = Bounded(kept.append, budget=3 * size, spent=told.append)
    for _ in range(3):
        audit(record)
    for attempt in (lambda: audit(record), lambda: audit.many([record, record])):
        with pytest.raises(BudgetSpent, match=f"audit budget of {3 * size} bytes is spent"):
            attempt()
    assert (len(kept), told) == (3, [3 * size])
    unbounded = Bounded(kept.append, budget=None)
    for _ in range(10):
        unbounded(record)
    assert len(kept) == 13


def test_a_run_past_its_audit_budget_denies_what_it_cannot_record(tmp_path):
    """An agent making calls past --audit-max-bytes: the later calls are denied (the file stays at
    the budget), the warning says so once, and the agent keeps running to its end."""
    jsonl, policy = tmp_path / "audit.jsonl", tmp_path / "p.fpl"
    policy.write_text("agent a {\n  default permit\n}\n")
    agent = "for i in $(seq 400); do cat /etc/hostname >/dev/null 2>&1 || echo denied; done; echo end"
    done = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy), "--no-audit-db",
                           "--audit", str(jsonl), "--audit-all", "--audit-max-bytes", "64K", "--no-prompt", "--",
                           "sh", "-c", agent], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = done.stdout.splitlines()
    assert (done.returncode, lines[-1]) == (0, "end"), done.stderr
    assert "denied" in lines and done.stderr.count("audit budget of 65536 bytes is spent") == 1
    assert 60_000 < jsonl.stat().st_size <= 65536 + MAX_RECORD
