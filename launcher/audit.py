"""The audit log: JSON Lines, one object per decision, durable before the syscall is answered;
and ``AuditTrail``, the callable the supervisor is given, which writes the chained store
(launcher/audit_store.py) and the JSON Lines file before it returns."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone

from sandbox import audit_sink

# Keys every record carries, in this order; a missing one is written as null ("kind": "decision").
FIELDS = ("time", "kind", "session", "pid", "syscall", "tool", "args", "effect", "rule_id", "reason_code",
          "reason", "policy_version", "latency_us")


class AuditLog:
    """Append-only writer; ``write(record)`` returns only after fsync, so the supervisor can
    answer the syscall knowing the decision is on disk. Safe to call from many threads: one
    fsync covers every line written before it started, so concurrent writers share fsyncs."""

    def __init__(self, path: str):
        self.path = path
        # O_APPEND: each record lands at the end even if another process appends to the file.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()
        self._synced_cond = threading.Condition(self._lock)
        self._written = self._synced = 0  # writes made (a line or a batch), writes known to be on disk
        self._syncing = False
        self._failed: OSError | None = None

    def write(self, record: dict) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict], normalized: bool = False) -> None:
        """The records' lines, in order, under one fsync (``normalized``: as normalize() left them)."""
        if not records:
            return
        lines = b"".join(encode(record, normalized) for record in records)
        with self._lock:
            self._check_usable()
            view = memoryview(lines)
            try:
                while view:  # a regular file takes it in one write; loop for the exceptional short write
                    view = view[os.write(self._fd, view):]
            except OSError as err:  # e.g. a full disk mid-batch: the file may end in part of a line
                self._failed = err
                raise
            self._written += 1
            mine = self._written
            while self._synced < mine:
                self._check_usable()
                if self._syncing:  # a running fsync may have started before our write: wait, recheck
                    self._synced_cond.wait()
                    continue
                self._sync_locked()

    def _check_usable(self) -> None:
        if self._fd < 0:
            raise ValueError(f"audit log {self.path} is closed")
        if self._failed is not None:
            # After a failed fsync Linux may report the next one as a success although the data
            # is lost: nothing written from then on counts as durable.
            raise OSError(self._failed.errno, f"audit log {self.path} failed earlier: {self._failed.strerror}")

    def _sync_locked(self) -> None:
        """fsync with the lock released, so other threads can append lines the next fsync covers."""
        self._syncing, covered = True, self._written
        self._lock.release()
        try:
            os.fsync(self._fd)
        except OSError as err:
            self._lock.acquire()
            self._failed = err
            raise
        else:
            self._lock.acquire()
            self._synced = covered
        finally:
            self._syncing = False
            self._synced_cond.notify_all()

    __call__ = write  # the supervisor's audit(record) callback
    many = write_many  # and audit.many(records), for a batch (sandbox/audit_sink.py)

    def close(self) -> None:
        with self._lock:
            self._synced_cond.wait_for(lambda: not self._syncing)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AuditTrail:
    """``trail(record)`` writes the record to the store, then to the JSON Lines file (with the
    store's seq and hash, an anchor kept outside the store), each durable before it returns;
    a record that cannot be written raises, and the supervisor then refuses the call."""

    def __init__(self, store=None, log: AuditLog | None = None):
        self.store, self.log = store, log

    def __call__(self, record: dict) -> None:
        self.many([record])

    def many(self, records: list[dict]) -> None:
        """The records, in order, each sink written once for all of them (one commit, one fsync)."""
        records = [normalize(record) for record in records]  # once, so both copies carry the same time
        if self.store is not None:
            try:
                chained = self.store.append_many(records, normalized=True)
            except Exception as err:
                from launcher.audit_store import AuditStoreError  # here: that module imports this one
                if len(records) < 2 or not isinstance(err, AuditStoreError):
                    raise
                # None of the batch is stored: each record on its own, so one that cannot be
                # stored loses only itself (the first error is raised).
                audit_sink.write_all(lambda record: self.many([record]), records)
                return
            records = [{**record, "seq": seq, "hash": digest} for record, (seq, digest) in zip(records, chained)]
        if self.log is not None:
            self.log.write_many(records, normalized=True)

    def close(self) -> None:
        for sink in (self.log, self.store):
            if sink is not None:
                sink.close()


def normalize(record: dict) -> dict:
    """The record as plain JSON values: known fields first, then extra ones; time in ISO 8601
    UTC, kind "decision" unless given, effect by name, bytes as escaped text. Idempotent."""
    out = {key: record.get(key) for key in FIELDS}
    out.update((k, v) for k, v in record.items() if k not in out)
    if out["time"] is None:
        out["time"] = now_iso()
    elif isinstance(out["time"], (int, float)):
        out["time"] = iso(out["time"])
    if out["kind"] is None:
        out["kind"] = "decision"
    effect = out.get("effect")
    if effect is not None and not isinstance(effect, str):
        out["effect"] = getattr(effect, "value", str(effect))
    # A round trip turns tuples into lists and non-string keys into strings, so the record read
    # back from the store is the record that was hashed.
    return json.loads(json.dumps(out, allow_nan=False, default=_jsonable))


def encode(record: dict, normalized: bool = False) -> bytes:
    """One JSON object on one line; the known fields first, then any extra ones."""
    text = json.dumps(record if normalized else normalize(record), ensure_ascii=False, separators=(",", ":")) + "\n"
    return text.encode("utf-8", "backslashreplace")  # a lone surrogate (undecodable path) stays visible


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return getattr(value, "value", str(value))
