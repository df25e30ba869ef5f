"""The audit log: one JSON object per line, fields in a fixed order, safe across threads and processes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading

import pytest

from launcher.audit import FIELDS, AuditLog, encode
from policy.decision import Effect

RECORD = {"time": 1767322800.25, "session": "s1", "pid": 42, "syscall": "openat", "tool": "fs/read",
          "args": {"path": "/etc/hosts", "flags": ["O_RDONLY"]}, "effect": Effect.DENY, "rule_id": "fpl-1",
          "reason_code": "RULE_DENY", "reason": "no", "policy_version": "abc", "latency_us": 31}


def test_record_is_one_line_with_fields_in_order():
    """Known fields come first in the documented order; time becomes ISO 8601 UTC; effect its name;
    kind defaults to decision."""
    line = encode(RECORD)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert list(json.loads(line)) == list(FIELDS)
    assert json.loads(line) == {**RECORD, "time": "2026-01-02T03:00:00.250000Z", "kind": "decision", "effect": "DENY"}


def test_missing_fields_are_null_and_extras_kept():
    """A record without a field still has the key (null); extra keys follow the known ones."""
    decoded = json.loads(encode({"tool": "shell/exec", "effect": "PERMIT", "approved_by": "ada"}))
    assert list(decoded)[-1] == "approved_by"
    assert (decoded["rule_id"], decoded["latency_us"], decoded["time"].endswith("Z")) == (None, None, True)


def test_bytes_arguments_are_readable_text():
    """Undecodable bytes in arguments are escaped, never dropped or crashing the writer."""
    line = encode({"args": {"path": b"/tmp/\xff.txt", "dest": "/tmp/\udcff.txt"}})
    decoded = json.loads(line)
    assert b'"dest":"/tmp/\\udcff.txt"' in line  # a JSON escape: the line stays valid UTF-8
    assert (decoded["args"]["path"], decoded["args"]["dest"]) == ("/tmp/\\xff.txt", "/tmp/\udcff.txt")


def test_appends_and_is_readable_when_write_returns(tmp_path):
    """Each write is on the file when write() returns; reopening appends rather than truncates."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(str(path)) as log:
        log(RECORD)
        assert len(path.read_bytes().splitlines()) == 1
    with AuditLog(str(path)) as log:
        log.write({**RECORD, "pid": 43})
    assert [json.loads(line)["pid"] for line in path.read_text().splitlines()] == [42, 43]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_many_threads_and_a_second_process_never_interleave(tmp_path):
    """8 threads and a forked writer append 1,700 records; every line is whole JSON."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    child = os.fork()
    if child == 0:
        try:
            for i in range(100):
                log({**RECORD, "pid": 100000 + i})
        finally:
            os._exit(0)
    threads = [threading.Thread(target=lambda n=n: [log({**RECORD, "pid": n * 1000 + i}) for i in range(200)])
               for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.waitpid(child, 0)
    log.close()
    pids = sorted(json.loads(line)["pid"] for line in path.read_text().splitlines())
    assert pids == sorted([n * 1000 + i for n in range(8) for i in range(200)] + [100000 + i for i in range(100)])


def test_a_batch_cut_short_by_a_full_disk_closes_the_file_to_later_records(tmp_path):
    """A batch that does not fit leaves part of a line behind: the error is raised, and no later
    record is appended onto the fragment, even once there is room again (as after a failed fsync)."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        log = AuditLog(str(small / "audit.jsonl"))
        records = [{"time": 1.0, "session": "s", "reason": "x" * 500, "pid": n} for n in range(400)]
        with pytest.raises(OSError) as full:
            log.write_many(records)
        assert full.value.errno == errno.ENOSPC
        written = (small / "audit.jsonl").read_bytes()
        assert written and not written.endswith(b"\n")  # the kernel took part of the batch
        (small / "audit.jsonl").write_bytes(written[:written.rindex(b"\n") + 1])  # room again
        with pytest.raises(OSError, match="failed earlier"):
            log.write({"time": 2.0, "session": "s"})
        log.close()
    finally:
        subprocess.run(["umount", str(small)], check=True)
