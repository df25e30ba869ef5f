"""The audit store: an embedded SQLite database of audit records, each chained to the one before
by a SHA-256 hash, one chain per store across sessions (docs/audit.md).

``AuditStore.append(record)`` returns only once the record is committed with an fsync (WAL,
synchronous=FULL). Threads calling it at the same time share one transaction: the first to
arrive commits everything queued so far while the others wait for that commit (group commit)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import urllib.parse
from dataclasses import dataclass

from launcher.audit import normalize

FORMAT = "faramesh-sandbox audit store 1"
GENESIS = "0" * 64  # prev_hash of the first record (seq 1)
BUSY_TIMEOUT_MS = 10_000  # another process (a second run) holding the write lock
# SQLite primary result codes after which nothing more is trusted to reach the disk: after a
# failed write-back Linux may report the next fsync as a success although the data is lost.
POISONING = {10: "SQLITE_IOERR", 11: "SQLITE_CORRUPT"}
INDEXED = ("time", "kind", "session", "tool", "effect")  # columns copied from the record, for filters

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL, kind TEXT NOT NULL, session TEXT, tool TEXT, effect TEXT,
    record TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_session ON records (session, seq);
CREATE INDEX IF NOT EXISTS records_effect ON records (effect, seq);
CREATE INDEX IF NOT EXISTS records_tool ON records (tool, seq);
CREATE INDEX IF NOT EXISTS records_time ON records (time);
"""


class AuditStoreError(Exception):
    """The store cannot be opened, read or written; the message names the path and the cause."""


def default_path(environ=os.environ, euid: int | None = None) -> str:
    """$FARAMESH_AUDIT_DB; else /var/lib/faramesh-sandbox/audit.db for root; else the user's
    ${XDG_STATE_HOME:-~/.local/state}/faramesh-sandbox/audit.db."""
    if environ.get("FARAMESH_AUDIT_DB"):
        return environ["FARAMESH_AUDIT_DB"]
    if (os.geteuid() if euid is None else euid) == 0:
        return "/var/lib/faramesh-sandbox/audit.db"
    state = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec says to ignore a relative value
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "faramesh-sandbox", "audit.db")


def canonical(value) -> str:
    """Sorted-key compact JSON, ASCII only: one text per value, the same on every machine."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def chain_hash(seq: int, prev_hash: str, record_text: str) -> str:
    """SHA-256 of canonical({"prev_hash": prev_hash, "record": record, "seq": seq}), built from
    the record's canonical text (keys already in sorted order)."""
    text = f'{{"prev_hash":"{prev_hash}","record":{record_text},"seq":{seq}}}'
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def open_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection to an existing store; AuditStoreError when there is none."""
    if not os.path.exists(path):
        raise AuditStoreError(f"no audit store at {path}")
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _check_format(con, path)
        return con
    except sqlite3.Error as err:
        raise AuditStoreError(f"cannot read audit store {path}: {err}") from None


def _check_format(con: sqlite3.Connection, path: str) -> None:
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.DatabaseError as err:
        raise AuditStoreError(f"{path} is not a faramesh-sandbox audit store ({err})") from None
    if row is None or row[0] != FORMAT:
        raise AuditStoreError(f"{path} is not a faramesh-sandbox audit store "
                              f"(format {row[0] if row else 'missing'!r}, expected {FORMAT!r})")


@dataclass(slots=True)
class _Pending:
    text: str  # canonical record
    columns: tuple
    seq: int = 0
    hash: str = ""
    error: BaseException | None = None
    done: bool = False


class AuditStore:
    """Appends records to the store at ``path``, creating it (0600, in a 0700 directory when
    the directory is new). Safe to call from many threads; other processes may append too."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._batch_done = threading.Condition(self._lock)
        self._queue: list[_Pending] = []
        self._committing = False
        self._failed: BaseException | None = None
        self.commits = 0  # transactions, for the benchmark: records per commit under load
        try:
            self._con = _create(path)
        except OSError as err:
            raise AuditStoreError(f"cannot open audit store {path}: {err.strerror}") from None
        except sqlite3.Error as err:
            raise AuditStoreError(f"cannot open audit store {path}: {err}") from None

    def append(self, record: dict) -> tuple[int, str]:
        """Chain and commit one record; returns (seq, hash) once it is on disk, else raises."""
        return self.append_many([record])[0]

    __call__ = append

    def append_many(self, records: list[dict], normalized: bool = False) -> list[tuple[int, str]]:
        """Chain and commit records, in order, in one transaction with the others waiting then:
        their (seq, hash) once all are on disk, else raises (then none of them is).
        ``normalized``: the records already went through launcher.audit.normalize."""
        pendings = []
        for record in records if normalized else map(normalize, records):
            pendings.append(_Pending(canonical(record), tuple(_column(record.get(name)) for name in INDEXED)))
        if not pendings:
            return []
        last = pendings[-1]  # the batch goes into one transaction: done together
        with self._lock:
            self._queue.extend(pendings)
            while not last.done:
                if self._committing:  # another caller is committing; ours goes in the next batch
                    self._batch_done.wait()
                    continue
                self._committing, batch, self._queue = True, self._queue, []
                self._lock.release()
                try:
                    self._commit(batch)
                finally:
                    self._lock.acquire()
                    self._committing = False
                    for item in batch:
                        item.done = True
                    self._batch_done.notify_all()
        if last.error is not None:
            raise AuditStoreError(f"cannot write audit store {self.path}: {last.error}") from last.error
        return [(pending.seq, pending.hash) for pending in pendings]

    many = append_many  # audit.many(records), for a batch (sandbox/audit_sink.py)

    def _commit(self, batch: list[_Pending]) -> None:
        con = self._con
        try:
            if con is None:
                raise ValueError("the store is closed")
            if self._failed is not None:
                raise ValueError(f"an earlier write failed ({self._failed}); nothing written since is trusted")
            # IMMEDIATE: the write lock is ours before the head is read, so a second process
            # appending to the same store cannot fork the chain.
            con.execute("BEGIN IMMEDIATE")
            try:
                seq, prev = _head(con)
                rows = []
                for item in batch:
                    seq += 1
                    item.seq, item.hash = seq, chain_hash(seq, prev, item.text)
                    rows.append((seq, *item.columns, item.text, prev, item.hash))
                    prev = item.hash
                con.executemany("INSERT INTO records (seq, time, kind, session, tool, effect, record, "
                                "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                [("head_seq", str(seq)), ("head_hash", prev)])
                con.execute("COMMIT")
                self.commits += 1
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except BaseException as err:  # every waiter in the batch learns its record was not written
            if getattr(err, "sqlite_errorcode", 0) & 0xFF in POISONING:
                self._failed = err
            for item in batch:
                item.error = err

    def close(self) -> None:
        with self._lock:
            self._batch_done.wait_for(lambda: not self._committing)
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> "AuditStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _create(path: str) -> sqlite3.Connection:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except FileExistsError:  # makedirs' own message names no path
        raise AuditStoreError(f"cannot open audit store {path}: {directory} is not a directory") from None
    # Created here rather than by SQLite so it is 0600 from the start (its -wal and -shm files
    # copy this mode); O_NOFOLLOW: a symlink planted at the path is refused, not written through.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        if con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            _check_format(con, path)  # never add our tables to someone else's database
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL journaling (got {mode!r})")
        con.execute("PRAGMA synchronous = FULL")  # the WAL is fsynced at every commit
        con.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, SCHEMA.split(";")):  # executescript would commit early
            con.execute(statement)
        con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (FORMAT,))
        con.execute("COMMIT")
    except BaseException:
        con.close()
        raise
    _fsync_dir(directory)  # the new database and WAL file names are durable too
    return con


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _head(con: sqlite3.Connection) -> tuple[int, str]:
    row = con.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else (0, GENESIS)


def _column(value):
    """An indexed column's copy of a record field (filters compare text)."""
    return value if value is None or isinstance(value, str) else canonical(value)


# ---- reading and verifying ------------------------------------------------------------------

FILTERS = {"session": "session = ?", "effect": "effect = ?", "tool": "tool GLOB ?", "kind": "kind = ?"}
ROW = "seq, time, kind, session, tool, effect, record, prev_hash, hash"


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    columns: tuple  # INDEXED, as stored
    text: str  # the canonical record that was hashed
    prev_hash: str
    hash: str

    @property
    def record(self) -> dict:
        return json.loads(self.text)


def _row(values) -> Row:
    return Row(values[0], tuple(values[1:6]), values[6], values[7], values[8])


def select(con: sqlite3.Connection, limit: int | None = None, **filters) -> list[Row]:
    """Rows in seq order matching every given filter (tool is a glob: ``fs/*``); with ``limit``,
    the last ``limit`` of them."""
    clauses = [FILTERS[name] for name, value in filters.items() if value is not None]
    values = [value for value in filters.values() if value is not None]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    if limit is None:
        return [_row(r) for r in con.execute(f"SELECT {ROW} FROM records{where} ORDER BY seq", values)]
    rows = con.execute(f"SELECT {ROW} FROM records{where} ORDER BY seq DESC LIMIT ?", [*values, limit])
    return [_row(r) for r in reversed(rows.fetchall())]


@dataclass(frozen=True, slots=True)
class Problem:
    seq: int  # the first bad sequence number
    what: str  # edited | missing | reordered
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    records: int
    head_seq: int
    head_hash: str
    problem: Problem | None


def verify(con: sqlite3.Connection) -> Verdict:
    """Walk the chain from the genesis hash; the first record that does not fit is the problem.
    One read transaction: a run committing meanwhile is not mistaken for a cut tail."""
    own_snapshot = not con.in_transaction
    if own_snapshot:
        con.execute("BEGIN")
    try:
        expected_seq, prev, count = 1, GENESIS, 0
        for values in con.execute(f"SELECT {ROW} FROM records ORDER BY seq"):
            row = _row(values)
            problem = _check_row(con, row, expected_seq, prev)
            if problem is not None:
                return Verdict(count, expected_seq - 1, prev, problem)
            expected_seq, prev, count = row.seq + 1, row.hash, count + 1
        return Verdict(count, expected_seq - 1, prev, _check_head_marker(con, expected_seq - 1, prev))
    finally:
        if own_snapshot:
            con.execute("ROLLBACK")


def _check_row(con, row: Row, expected_seq: int, prev: str) -> Problem | None:
    if row.seq > expected_seq:
        missing = str(expected_seq) if row.seq == expected_seq + 1 else f"{expected_seq}..{row.seq - 1}"
        return Problem(expected_seq, "missing", f"seq {missing} deleted: the chain jumps to seq {row.seq}")
    if row.seq < expected_seq:
        return Problem(row.seq, "edited", f"seq {row.seq} is not a valid sequence number")
    if chain_hash(row.seq, row.prev_hash, row.text) != row.hash:
        written_as = _written_as(con, row)
        if written_as is not None and _exists(con, row.prev_hash):
            return Problem(row.seq, "reordered", f"seq {row.seq} holds the record written as seq {written_as}")
        if written_as is not None:
            return Problem(row.seq, "missing", f"seq {row.seq} holds the record written as seq {written_as}, "
                                               "and the record before that one is gone (deleted, then renumbered)")
        return Problem(row.seq, "edited", f"seq {row.seq} does not match its hash: its record, seq or hash "
                                          "was changed")
    if row.prev_hash != prev:
        if _exists(con, row.prev_hash):
            return Problem(row.seq, "reordered", f"seq {row.seq} was not written after the record now at seq "
                                                 f"{row.seq - 1}")
        return Problem(row.seq, "missing", f"seq {row.seq} was written after a record that is no longer in "
                                           f"the store (seq {row.seq - 1} was replaced or removed)")
    try:
        record = json.loads(row.text)
    except ValueError:
        return Problem(row.seq, "edited", f"seq {row.seq} holds a record that is not JSON")
    for name, stored in zip(INDEXED, row.columns):
        if stored != _column(record.get(name)):
            return Problem(row.seq, "edited", f"column {name} of seq {row.seq} is {stored!r} but its hashed "
                                              f"record says {record.get(name)!r}")
    return None


def _written_as(con, row: Row) -> int | None:
    """The seq an intact record was written as, when it has been moved to another seq. Its
    predecessor may have moved too, so every seq is tried: a linear scan, on the error path only."""
    last = con.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
    return next((seq for seq in range(1, max(last, row.seq) + 2)
                 if chain_hash(seq, row.prev_hash, row.text) == row.hash), None)


def _exists(con, digest: str) -> bool:
    return digest == GENESIS or con.execute("SELECT 1 FROM records WHERE hash = ?", (digest,)).fetchone() is not None


def _check_head_marker(con, last_seq: int, last_hash: str) -> Problem | None:
    """The head marker, written in the same transaction as each batch, catches a plain
    ``DELETE`` of the newest records (not one that also rewrites the marker)."""
    marker = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('head_seq', 'head_hash')"))
    head_seq, head_hash = int(marker.get("head_seq", 0)), marker.get("head_hash", GENESIS)
    if head_seq > last_seq:
        missing = str(head_seq) if head_seq == last_seq + 1 else f"{last_seq + 1}..{head_seq}"
        return Problem(last_seq + 1, "missing", f"seq {missing} deleted from the end: the store's head "
                                                f"marker says seq {head_seq}")
    if (head_seq, head_hash) != (last_seq, last_hash):
        return Problem(head_seq + 1 if head_seq < last_seq else last_seq, "edited",
                       f"the head marker (seq {head_seq}) does not match the last record (seq {last_seq})")
    return None


def check_anchor(con: sqlite3.Connection, seq: int, digest: str, source: str) -> Problem | None:
    """A (seq, hash) kept outside the store (a JSON Lines line, a saved head) must still be in
    the chain: this is what catches records removed from the end, or a rewritten tail."""
    found = con.execute("SELECT hash FROM records WHERE seq = ?", (seq,)).fetchone()
    if found is None:
        return Problem(seq, "missing", f"seq {seq} is in {source} but not in the store (deleted from the end)")
    if found[0] != digest:
        return Problem(seq, "edited", f"seq {seq} has hash {found[0][:16]}… in the store but {digest[:16]}… in "
                                      f"{source}: the chain was rewritten from there")
    return None
