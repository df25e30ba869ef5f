"""The audit store: records chained by hash in SQLite, durable on return, every tampering found."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import threading

import pytest

from launcher.audit import AuditLog, AuditTrail
from launcher.audit_store import (GENESIS, AuditStore, AuditStoreError, Problem, Verdict, check_anchor,
                                  default_path, open_readonly, verify)

RECORD = {"time": 1767322800.25, "session": "s1", "pid": 42, "syscall": "openat", "tool": "fs/read",
          "args": {"path": "/etc/hosts", "flags": ("O_RDONLY",)}, "effect": "PERMIT", "rule_id": "r1",
          "reason_code": "RULE_PERMIT", "reason": "ok", "policy_version": "abc", "latency_us": 31}


def filled(tmp_path, count: int = 5) -> str:
    path = str(tmp_path / "audit.db")
    with AuditStore(path) as store:
        for pid in range(1, count + 1):
            store.append({**RECORD, "pid": pid})
    return path


def verdict_of(path: str):
    con = open_readonly(path)
    try:
        return verify(con)
    finally:
        con.close()


def tamper(path: str, *statements: str) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        con.execute(statement)
    con.close()


def test_hash_is_sha256_of_sorted_compact_json_chained_from_genesis(tmp_path):
    """Record 1 hashes {prev_hash: 64 zeros, record, seq: 1}; record 2 chains to record 1's hash."""
    with AuditStore(str(tmp_path / "audit.db")) as store:
        first = store.append(RECORD)
        second = store.append({**RECORD, "pid": 43})
    stored = {**RECORD, "time": "2026-01-02T03:00:00.250000Z", "kind": "decision",
              "args": {"path": "/etc/hosts", "flags": ["O_RDONLY"]}}

    def expected(seq, prev, record):
        text = json.dumps({"seq": seq, "prev_hash": prev, "record": record}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
    assert GENESIS == "0" * 64
    assert first == (1, expected(1, GENESIS, stored))
    assert second == (2, expected(2, first[1], {**stored, "pid": 43}))


def test_store_file_is_0600_in_a_new_0700_directory(tmp_path):
    """A new store and its directory are private to the owner."""
    path = tmp_path / "state" / "faramesh-sandbox" / "audit.db"
    AuditStore(str(path)).close()
    assert (oct(path.stat().st_mode & 0o777), oct(path.parent.stat().st_mode & 0o777)) == ("0o600", "0o700")


def test_records_are_read_back_as_written(tmp_path):
    """The stored record is the normalized one: ISO time, kind, lists, extra keys kept."""
    path = str(tmp_path / "audit.db")
    with AuditStore(path) as store:
        store.append({**RECORD, "kind": "approval", "approved_by": "ada"})
    row = sqlite3.connect(path).execute("SELECT seq, time, kind, session, tool, effect, record FROM records").fetchone()
    assert row[:6] == (1, "2026-01-02T03:00:00.250000Z", "approval", "s1", "fs/read", "PERMIT")
    assert json.loads(row[6]) == {**RECORD, "time": "2026-01-02T03:00:00.250000Z", "kind": "approval",
                                  "approved_by": "ada", "args": {"path": "/etc/hosts", "flags": ["O_RDONLY"]}}


def test_intact_store_verifies(tmp_path):
    """An untouched store verifies: every record counted, the head is the last record."""
    path = filled(tmp_path)
    head = sqlite3.connect(path).execute("SELECT hash FROM records WHERE seq = 5").fetchone()[0]
    assert verdict_of(path) == Verdict(5, 5, head, None)


@pytest.mark.parametrize(("statements", "problem"), [
    (["UPDATE records SET record = replace(record, '\"pid\":3', '\"pid\":99') WHERE seq = 3"],
     (3, "edited", "seq 3 does not match its hash: its record, seq or hash was changed")),
    (["UPDATE records SET effect = 'DENY' WHERE seq = 4"],
     (4, "edited", "column effect of seq 4 is 'DENY' but its hashed record says 'PERMIT'")),
    (["DELETE FROM records WHERE seq = 3"],
     (3, "missing", "seq 3 deleted: the chain jumps to seq 4")),
    (["DELETE FROM records WHERE seq IN (2, 3)"],
     (2, "missing", "seq 2..3 deleted: the chain jumps to seq 4")),
    (["UPDATE records SET seq = -1 WHERE seq = 2", "UPDATE records SET seq = 2 WHERE seq = 3",
      "UPDATE records SET seq = 3 WHERE seq = -1"],
     (2, "reordered", "seq 2 holds the record written as seq 3")),
    (["DELETE FROM records WHERE seq = 2", "UPDATE records SET seq = seq - 1 WHERE seq > 2"],
     (2, "missing", "seq 2 holds the record written as seq 3, and the record before that one is gone "
                    "(deleted, then renumbered)")),
    (["DELETE FROM records WHERE seq >= 4"],
     (4, "missing", "seq 4..5 deleted from the end: the store's head marker says seq 5")),
])
def test_tampering_is_found_at_the_first_bad_seq(tmp_path, statements, problem):
    """An edited field, a deleted row, two swapped rows and a cut tail each name the first bad seq."""
    path = filled(tmp_path)
    tamper(path, *statements)
    assert verdict_of(path).problem == Problem(*problem)


def test_a_cut_tail_with_its_marker_rewritten_needs_an_anchor(tmp_path):
    """Cutting the tail and fixing the head marker passes the walk; a head kept elsewhere catches it."""
    path = filled(tmp_path)
    head = sqlite3.connect(path).execute("SELECT hash FROM records WHERE seq = 5").fetchone()[0]
    seq4 = sqlite3.connect(path).execute("SELECT hash FROM records WHERE seq = 4").fetchone()[0]
    tamper(path, "DELETE FROM records WHERE seq = 5", "UPDATE meta SET value = '4' WHERE key = 'head_seq'",
           f"UPDATE meta SET value = '{seq4}' WHERE key = 'head_hash'")
    con = open_readonly(path)
    assert verify(con).problem is None
    assert check_anchor(con, 5, head, "the saved head") == Problem(
        5, "missing", "seq 5 is in the saved head but not in the store (deleted from the end)")
    con.close()


def test_eight_threads_share_commits_and_keep_one_chain(tmp_path):
    """8 writers append 800 records: seqs 1..800 with none lost, fewer commits than records."""
    path = str(tmp_path / "audit.db")
    store = AuditStore(path)
    seqs: list[int] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(100):
            seq, _ = store.append({**RECORD, "pid": n * 1000 + i})
            with lock:
                seqs.append(seq)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert sorted(seqs) == list(range(1, 801))
    assert store.commits < 800
    assert verdict_of(path).records == 800 and verdict_of(path).problem is None
    pids = sorted(r[0] for r in sqlite3.connect(path).execute("SELECT json_extract(record, '$.pid') FROM records"))
    assert pids == sorted(n * 1000 + i for n in range(8) for i in range(100))


def test_verify_while_a_run_appends_never_reports_tampering(tmp_path):
    """verify reads one snapshot: records committed during the walk are not taken for a cut tail."""
    path = filled(tmp_path, 50)
    store = AuditStore(path)
    writer = threading.Thread(target=lambda: [store.append(RECORD) for _ in range(300)])
    writer.start()
    verdicts = []
    while writer.is_alive():
        verdicts.append(verdict_of(path))
    writer.join()
    store.close()
    assert len(verdicts) >= 1
    assert [v.problem for v in verdicts] == [None] * len(verdicts)
    assert verdict_of(path).records == 350


def test_two_processes_append_to_one_chain(tmp_path):
    """A second process appending to the same store continues the same chain, never forks it."""
    path = str(tmp_path / "audit.db")
    AuditStore(path).close()
    child = os.fork()
    if child == 0:
        try:
            with AuditStore(path) as store:
                for i in range(100):
                    store.append({**RECORD, "pid": 100000 + i})
        finally:
            os._exit(0)
    with AuditStore(path) as store:
        for i in range(100):
            store.append({**RECORD, "pid": i})
    os.waitpid(child, 0)
    verdict = verdict_of(path)
    assert (verdict.records, verdict.problem) == (200, None)


def test_a_record_that_cannot_be_written_raises_and_reaches_no_file(tmp_path):
    """A closed store raises AuditStoreError, and the trail writes no JSON line for that record."""
    store = AuditStore(str(tmp_path / "audit.db"))
    store.close()
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    with pytest.raises(AuditStoreError, match=r"cannot write audit store .*audit\.db: the store is closed"):
        AuditTrail(store, log)(RECORD)
    log.close()
    assert (tmp_path / "audit.jsonl").read_bytes() == b""


def test_after_an_io_error_the_store_refuses_every_record(tmp_path):
    """A write the kernel refuses (immutable WAL) fails, and later writes fail too once it is lifted."""
    store = AuditStore(str(tmp_path / "audit.db"))
    store.append(RECORD)
    subprocess.run(["chattr", "+i", str(tmp_path / "audit.db-wal")], check=True)
    try:
        with pytest.raises(AuditStoreError, match=r"audit\.db: disk I/O error$"):
            store.append(RECORD)
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "audit.db-wal")], check=True)
    with pytest.raises(AuditStoreError, match=r"an earlier write failed \(disk I/O error\); nothing written since is "
                                              "trusted$"):
        store.append(RECORD)
    store.close()
    assert verdict_of(str(tmp_path / "audit.db")).records == 1


def test_trail_writes_the_same_record_with_its_anchor_to_the_file(tmp_path):
    """The JSON line carries the store's seq and hash, and the same time as the stored record."""
    trail = AuditTrail(AuditStore(str(tmp_path / "audit.db")), AuditLog(str(tmp_path / "audit.jsonl")))
    trail({**RECORD, "time": None})
    trail.close()
    line = json.loads((tmp_path / "audit.jsonl").read_text())
    seq, digest, text = sqlite3.connect(tmp_path / "audit.db").execute("SELECT seq, hash, record FROM records").fetchone()
    assert (line.pop("seq"), line.pop("hash")) == (seq, digest)
    assert line == json.loads(text)


def test_a_batch_is_one_commit_in_order_on_both_sinks(tmp_path):
    """trail.many (the records of calls answered in compiled code): one store commit and one
    file fsync for the lot, in the order given, each line anchored to its own stored record."""
    store = AuditStore(str(tmp_path / "audit.db"))
    trail = AuditTrail(store, AuditLog(str(tmp_path / "audit.jsonl")))
    trail(RECORD)
    trail.many([{**RECORD, "pid": pid} for pid in range(100, 400)])
    trail.close()
    assert store.commits == 2
    assert verdict_of(str(tmp_path / "audit.db")).records == 301
    assert verdict_of(str(tmp_path / "audit.db")).problem is None
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    stored = sqlite3.connect(tmp_path / "audit.db").execute("SELECT seq, hash, record FROM records ORDER BY seq")
    for line, (seq, digest, text) in zip(lines, stored, strict=True):
        assert (line.pop("seq"), line.pop("hash")) == (seq, digest)
        assert line == json.loads(text)
    assert [line["pid"] for line in lines] == [42, *range(100, 400)]


def test_a_batch_that_cannot_be_committed_writes_none_of_it(tmp_path):
    """All or nothing: a record that cannot be stored fails its whole batch, and the store
    holds none of the batch (the supervisor then stops answering in compiled code)."""
    path = str(tmp_path / "audit.db")
    store = AuditStore(path)
    store.append(RECORD)
    with sqlite3.connect(path) as con:  # the third row of the batch fails to insert
        con.execute("CREATE TRIGGER refuse BEFORE INSERT ON records WHEN json_extract(NEW.record, '$.pid') = 3 "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(AuditStoreError, match="refused"):
        store.append_many([{**RECORD, "pid": pid} for pid in range(1, 6)])
    store.close()
    assert verdict_of(path).records == 1


def test_a_refused_batch_is_retried_record_by_record_losing_only_what_cannot_be_stored(tmp_path):
    """The trail's batch fails as a whole in the store (nothing of it stored); each record is then
    tried on its own, so one that cannot be stored loses only itself, and the error is raised."""
    path = str(tmp_path / "audit.db")
    trail = AuditTrail(AuditStore(path), AuditLog(str(tmp_path / "audit.jsonl")))
    with sqlite3.connect(path) as con:
        con.execute("CREATE TRIGGER refuse BEFORE INSERT ON records WHEN json_extract(NEW.record, '$.pid') = 3 "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(AuditStoreError, match="refused"):
        trail.many([{**RECORD, "pid": pid} for pid in range(1, 6)])
    trail.close()
    stored = [json.loads(text)["pid"] for (text,) in sqlite3.connect(path).execute(
        "SELECT record FROM records ORDER BY seq")]
    assert stored == [1, 2, 4, 5]
    lines = [json.loads(line)["pid"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 4, 5]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_bytes(b"not a database at all, just text" * 100), "file is not a database"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE mine (x)"), "is not a faramesh-sandbox audit store"),
    (lambda p: p.symlink_to(p.parent / "elsewhere.db"), "Too many levels of symbolic links"),
])
def test_refuses_what_is_not_a_store(tmp_path, make, message):
    """Another file, someone else's database, or a symlink at the path is refused, not changed."""
    path = tmp_path / "audit.db"
    make(path)
    with pytest.raises(AuditStoreError, match=message):
        AuditStore(str(path))
    assert not (tmp_path / "elsewhere.db").exists()


@pytest.mark.parametrize(("environ", "euid", "expected"), [
    ({"FARAMESH_AUDIT_DB": "/x/a.db", "XDG_STATE_HOME": "/s"}, 0, "/x/a.db"),
    ({}, 0, "/var/lib/faramesh-sandbox/audit.db"),
    ({"XDG_STATE_HOME": "/s", "HOME": "/home/u"}, 1000, "/s/faramesh-sandbox/audit.db"),
    ({"XDG_STATE_HOME": "rel", "HOME": "/home/u"}, 1000, "/home/u/.local/state/faramesh-sandbox/audit.db"),
])
def test_default_location(monkeypatch, environ, euid, expected):
    """$FARAMESH_AUDIT_DB wins; root uses /var/lib; others their XDG state directory (absolute only)."""
    monkeypatch.setenv("HOME", environ.get("HOME", "/root"))
    assert default_path(environ, euid) == expected
