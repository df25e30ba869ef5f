"""``faramesh-sandbox audit verify|show|export`` and the store behind ``run``, through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import launcher.cli
from launcher.audit_store import AuditStore
from sandbox import cgroups

ROOT = Path(__file__).resolve().parents[2]
PARSER = launcher.cli.build_parser()
PERMIT = "agent a {\n  default permit\n}\n"
RECORDS = [
    {"time": 1767322800.25, "session": "s1", "pid": 42, "syscall": "openat", "tool": "fs/read",
     "args": {"path": "/etc/hosts"}, "effect": "PERMIT", "rule_id": "", "reason_code": "UNMATCHED_PERMIT",
     "reason": "no rule matched; default permit", "policy_version": "v", "latency_us": 200},
    {"time": 1767322801.5, "session": "s1", "pid": 43, "syscall": "execve", "tool": "shell/exec",
     "args": {"cmd": "rm -rf /", "path": "/usr/bin/rm"}, "effect": "DENY", "rule_id": "fpl-0",
     "reason_code": "RULE_DENY", "reason": "no deleting everything", "policy_version": "v", "latency_us": 900},
    {"time": 1767322802.0, "session": "s2", "pid": 7, "syscall": "renameat2", "tool": "fs/rename",
     "args": {"path": "/w/a", "dest": "/w/b\x1b[31m"}, "effect": "PERMIT", "rule_id": "fpl-1",
     "reason_code": "RULE_PERMIT", "reason": "ok", "policy_version": "v", "latency_us": 300},
]


def audit(capsys, *args: str) -> tuple[int, str, str]:
    parsed = PARSER.parse_args(["audit", *args])
    status = parsed._runner(parsed)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "audit.db")
    with AuditStore(path) as store:
        for record in RECORDS:
            store.append(record)
    return path


def head_of(path: str, seq: int) -> str:
    return sqlite3.connect(path).execute("SELECT hash FROM records WHERE seq = ?", (seq,)).fetchone()[0]


def test_verify_intact_store_prints_its_head(capsys, db):
    """An intact store: exit 0, the record count and the head to keep elsewhere."""
    assert audit(capsys, "verify", "--db", db) == (0, (
        "ok: 3 records, chain intact from genesis to seq 3\n"
        f"head 3:{head_of(db, 3)}\n"), "")


@pytest.mark.parametrize(("statement", "line"), [
    ("UPDATE records SET record = replace(record, 'rm -rf /', 'ls') WHERE seq = 2",
     "TAMPERED at seq 2: edited: seq 2 does not match its hash: its record, seq or hash was changed\n"),
    ("DELETE FROM records WHERE seq = 2", "TAMPERED at seq 2: missing: seq 2 deleted: the chain jumps to seq 3\n"),
    ("UPDATE records SET seq = seq + 10 WHERE seq IN (1, 2); UPDATE records SET seq = 13 - seq WHERE seq > 10",
     "TAMPERED at seq 1: reordered: seq 1 holds the record written as seq 2\n"),
])
def test_verify_tampered_store_exits_1_naming_the_seq(capsys, db, statement, line):
    """An edit, a deletion and a swap made with sqlite3 each fail verify with the first bad seq."""
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript(statement)
    con.close()
    status, out, _ = audit(capsys, "verify", "--db", db)
    assert (status, out.splitlines(keepends=True)[0]) == (1, line)


def test_verify_json_verdict(capsys, db):
    """--json prints the verdict as one object."""
    sqlite3.connect(db, isolation_level=None).execute("DELETE FROM records WHERE seq = 3")
    status, out, _ = audit(capsys, "verify", "--db", db, "--json")
    assert (status, json.loads(out)) == (1, {
        "ok": False, "db": db, "records": 2, "head": f"2:{head_of(db, 2)}", "anchors": 0,
        "problem": {"seq": 3, "what": "missing",
                    "detail": "seq 3 deleted from the end: the store's head marker says seq 3"}})


def test_expect_head_catches_a_cut_tail_with_a_rewritten_marker(capsys, db):
    """Whoever also rewrites the head marker passes the walk, but not --expect-head."""
    head = f"3:{head_of(db, 3)}"
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript(f"DELETE FROM records WHERE seq = 3; UPDATE meta SET value = '2' WHERE key = 'head_seq';"
                      f"UPDATE meta SET value = '{head_of(db, 2)}' WHERE key = 'head_hash';")
    con.close()
    assert audit(capsys, "verify", "--db", db)[0] == 0
    assert audit(capsys, "verify", "--db", db, "--expect-head", head)[:2] == (1, (
        "TAMPERED at seq 3: missing: seq 3 is in --expect-head but not in the store (deleted from the end)\n"
        "records before it verify: 2 (seq 1..2)\n"))


def test_export_round_trips_through_verify_jsonl(capsys, db, tmp_path):
    """export -o writes a 0600 JSON Lines file whose seq/hash anchors verify; a rewritten chain fails."""
    out_file = tmp_path / "export.jsonl"
    assert audit(capsys, "export", "--db", db, "-o", str(out_file)) == (0, "", "")
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["seq"], r["tool"], r["hash"]) for r in lines] == [(n, RECORDS[n - 1]["tool"], head_of(db, n))
                                                                  for n in (1, 2, 3)]
    assert (lines[0]["prev_hash"], lines[1]["prev_hash"]) == ("0" * 64, head_of(db, 1))
    assert oct(out_file.stat().st_mode & 0o777) == "0o600"
    assert audit(capsys, "verify", "--db", db, "--jsonl", str(out_file))[1].startswith(
        "ok: 3 records, chain intact from genesis to seq 3; 3 anchor(s) match\n")
    con = sqlite3.connect(db, isolation_level=None)  # rebuild the chain from seq 2 on, as a forger would
    con.executescript("DELETE FROM records WHERE seq >= 2; UPDATE meta SET value = '1' WHERE key = 'head_seq';"
                      f"UPDATE meta SET value = '{head_of(db, 1)}' WHERE key = 'head_hash';")
    con.close()
    with AuditStore(db) as store:
        store.append({**RECORDS[1], "args": {"cmd": "ls"}})
        store.append(RECORDS[2])
    status, out, _ = audit(capsys, "verify", "--db", db, "--jsonl", str(out_file))
    assert (status, out.splitlines()[0]) == (1, f"TAMPERED at seq 2: edited: seq 2 has hash {head_of(db, 2)[:16]}… "
                                                f"in the store but {lines[1]['hash'][:16]}… in {out_file}:2: the "
                                                "chain was rewritten from there")


def test_export_to_stdout_with_filters(capsys, db):
    """export without -o writes JSON Lines to stdout; --tool takes a glob."""
    status, out, _ = audit(capsys, "export", "--db", db, "--tool", "fs/*", "--format", "jsonl")
    assert (status, [json.loads(line)["seq"] for line in out.splitlines()]) == (0, [1, 3])


def test_show_prints_an_aligned_table(capsys, db):
    """show: one aligned row per record; the key argument per tool; control characters escaped."""
    assert audit(capsys, "show", "--db", db) == (0, (
        "TIME                     SESSION  PID  TOOL        ARGUMENT             EFFECT  RULE   REASON\n"
        "2026-01-02 03:00:00.250  s1       42   fs/read     /etc/hosts           PERMIT         no rule matched; default permit\n"
        "2026-01-02 03:00:01.500  s1       43   shell/exec  rm -rf /             DENY    fpl-0  no deleting everything\n"
        "2026-01-02 03:00:02.000  s2       7    fs/rename   /w/a → /w/b\\x1b[31m  PERMIT  fpl-1  ok\n"), "")


def test_show_names_the_kind_of_other_records(capsys, tmp_path):
    """A record that is not a decision (an approval's expiry) shows its kind beside the effect."""
    db = str(tmp_path / "audit.db")
    with AuditStore(db) as store:
        store.append({**RECORDS[1], "kind": "expiry", "reason": "nobody answered"})
    status, out, _ = audit(capsys, "show", "--db", db, "--kind", "expiry")
    assert (status, out.splitlines()[1]) == (
        0, "2026-01-02 03:00:01.500  s1       43   shell/exec  rm -rf /  DENY (expiry)  fpl-0  nobody answered")


@pytest.mark.parametrize(("filters", "seqs"), [
    (["--session", "s1"], [1, 2]),
    (["--effect", "deny"], [2]),
    (["--tool", "fs/*"], [1, 3]),
    (["--tool", "fs/read", "--session", "s2"], []),
    (["--limit", "2"], [2, 3]),
    (["--kind", "decision", "--effect", "PERMIT"], [1, 3]),
])
def test_show_filters(capsys, db, filters, seqs):
    """--session, --effect (any case), --tool (glob), --kind and --limit select records."""
    status, out, _ = audit(capsys, "show", "--db", db, "--json", *filters)
    assert (status, [r["seq"] for r in json.loads(out)]) == (0, seqs)


@pytest.mark.parametrize("command", ["verify", "show", "export"])
def test_unreadable_store_exits_2(capsys, tmp_path, command):
    """A missing store or a file that is not one: one line on stderr, exit 2, nothing created."""
    missing = tmp_path / "none.db"
    assert audit(capsys, command, "--db", str(missing)) == (
        2, "", f"faramesh-sandbox: no audit store at {missing}\n")
    assert not missing.exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE mine (x)")
    status, _, err = audit(capsys, command, "--db", str(other))
    assert (status, err.startswith(f"faramesh-sandbox: {other} is not a faramesh-sandbox audit store")) == (2, True)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=60)


@pytest.mark.kernel
def test_run_writes_store_and_jsonl_with_the_same_anchors(tmp_path):
    """run --audit-db and --audit: each JSON line is a stored record, with its seq and hash."""
    (tmp_path / "p.fpl").write_text(PERMIT)
    db, log = tmp_path / "state" / "audit.db", tmp_path / "audit.jsonl"
    result = run_cli("run", "--audit-all", "--policy", str(tmp_path / "p.fpl"), "--audit", str(log),
                     "--audit-db", str(db), "--", "/bin/true")
    assert (result.returncode, result.stderr) == (0, "")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    stored = sqlite3.connect(db).execute("SELECT seq, hash, record FROM records ORDER BY seq").fetchall()
    assert sorted((r.pop("seq"), r.pop("hash"), r) for r in lines) == [(s, h, json.loads(t)) for s, h, t in stored]
    assert (lines[0]["kind"], lines[0]["tool"], lines[0]["args"]["path"]) == ("decision", "shell/exec", "/usr/bin/true")
    assert run_cli("audit", "verify", "--db", str(db), "--jsonl", str(log)).returncode == 0


@pytest.mark.kernel
def test_run_default_store_and_opting_out(tmp_path):
    """run uses $FARAMESH_AUDIT_DB by default; --no-audit-db keeps none; an unusable store is a 125."""
    (tmp_path / "p.fpl").write_text(PERMIT)
    db = tmp_path / "default.db"
    base = ("run", "--audit-all", "--policy", str(tmp_path / "p.fpl"))
    assert run_cli(*base, "--no-audit-db", "--", "/bin/true", env={"FARAMESH_AUDIT_DB": str(db)}).returncode == 0
    assert not db.exists()
    assert run_cli(*base, "--", "/bin/true", env={"FARAMESH_AUDIT_DB": str(db)}).returncode == 0
    assert [row[0] for row in sqlite3.connect(db).execute("SELECT tool FROM records ORDER BY seq")] == [
        "shell/exec", "fs/read", "fs/read"]  # /bin/true, then the loader's ld.so.cache and libc
    (tmp_path / "file").write_text("")
    result = run_cli(*base, "--audit-db", str(tmp_path / "file" / "audit.db"), "--", "/bin/true")
    assert (result.returncode, result.stderr) == (125, (
        f"faramesh-sandbox: cannot open audit store {tmp_path}/file/audit.db: {tmp_path}/file is not a directory "
        "— hint: pass "
        "--audit-db PATH (a writable place), or --no-audit-db\n"))


AGENT = """
import os, sys, threading
directory, seen = sys.argv[1], os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND)  # opened once: writes untrapped
def work(worker):
    for i in range(1000000):
        path = f"{directory}/w{worker}-{i}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # trapped: decided, audited, performed
        os.write(seen, (path + "\\n").encode())  # what the agent saw succeed
for worker in range(4):
    threading.Thread(target=work, args=(worker,)).start()
"""


@pytest.mark.kernel
def test_sigkill_mid_run_loses_no_decision_the_agent_saw(tmp_path):
    """SIGKILL of a busy launcher: the store still verifies and holds a PERMIT for every open that succeeded."""
    (tmp_path / "p.fpl").write_text(PERMIT)
    (tmp_path / "agent.py").write_text(AGENT)
    work, seen, db = tmp_path / "work", tmp_path / "seen", tmp_path / "audit.db"
    work.mkdir()
    seen.write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run", "--audit-all", "--audit-db", str(db),
                             "--policy", str(tmp_path / "p.fpl"), "--", sys.executable, str(tmp_path / "agent.py"),
                             str(work), str(seen)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while seen.read_text().count("\n") < 300 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    time.sleep(0.5)  # the agent dies with the launcher's pid namespace; let nothing more arrive
    succeeded = set(seen.read_text().splitlines())
    assert len(succeeded) >= 300
    assert run_cli("audit", "verify", "--db", str(db)).returncode == 0
    con = sqlite3.connect(db)
    permitted = {row[0] for row in con.execute("SELECT json_extract(record, '$.args.path') FROM records "
                                               "WHERE tool = 'fs/write' AND effect = 'PERMIT'")}
    assert succeeded - permitted == set()
    session = con.execute("SELECT session FROM records LIMIT 1").fetchone()[0]
    cgroup = Path(cgroups.v2_mount()) / cgroups.own_v2_path().lstrip("/") / f"faramesh-{session}"
    if cgroup.exists():  # a SIGKILLed launcher cannot remove it
        cgroup.rmdir()
