"""The audit log: JSON Lines, one object per decision, durable before the syscall is answered."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone

# Keys every record carries, in this order; a missing one is written as null.
FIELDS = ("time", "session", "pid", "syscall", "tool", "args", "effect", "rule_id", "reason_code",
          "reason", "policy_version", "latency_us")


class AuditLog:
    """Append-only writer; ``write(record)`` returns only after fsync, so the supervisor can
    answer the syscall knowing the decision is on disk. Safe to call from many threads."""

    def __init__(self, path: str):
        self.path = path
        # O_APPEND: each record lands at the end even if another process appends to the file.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = encode(record)
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"audit log {self.path} is closed")
            view = memoryview(line)
            while view:  # a regular file takes it in one write; loop for the exceptional short write
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)

    __call__ = write  # the supervisor's audit(record) callback

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode(record: dict) -> bytes:
    """One JSON object on one line; the known fields first, then any extra ones."""
    out = {key: record.get(key) for key in FIELDS}
    out.update((k, v) for k, v in record.items() if k not in out)
    if out["time"] is None:
        out["time"] = now_iso()
    elif isinstance(out["time"], (int, float)):
        out["time"] = iso(out["time"])
    effect = out.get("effect")
    if effect is not None and not isinstance(effect, str):
        out["effect"] = getattr(effect, "value", str(effect))
    text = json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=_jsonable) + "\n"
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
