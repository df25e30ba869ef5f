"""What an audit record keeps. A run hands every writer of records (supervisor, SDK socket, DNS
stub, egress proxy, approvals) a ``Bounded`` audit callable (launcher/run.py), so each record is
shortened once, before any sink sees it: the store, the JSON Lines file, the run report, the
status line, and the web page (which reads the store). The decision was taken on the full
arguments; only what is kept is shortened. Format: docs/audit.md, "How large a record gets"."""

from __future__ import annotations

import hashlib
import threading
from itertools import islice

from launcher.audit import normalize
from launcher.audit_store import canonical
from sandbox import audit_sink

MAX_RECORD = 64 * 1024  # bytes of a record's canonical JSON: the text the store keeps and hashes
# (characters kept of a string, items kept of a list or dict), tried in turn until the value fits:
# an exec's 1 MiB argv would otherwise be kept twice (argv, cmd), 6 bytes per undecodable byte.
LEVELS = ((4096, 1024), (1024, 256), (256, 64), (64, 32), (16, 32))
STRING_CUT = "…[truncated: {size} bytes, sha256 {digest}]"
LIST_CUT = "…[truncated: {count} more items]"
DICT_CUT = "…[truncated: {count} more keys]"
FIELD_CUT = "…[truncated]"  # last resort: a field still too large at the last level


DEFAULT_BUDGET = 1 << 30  # bytes of records a run may write (--audit-max-bytes); each sink keeps about that


class BudgetSpent(OSError):
    """The run's audit budget is spent: a writer treats it as any failed write (a permit it cannot
    record is denied), so a runaway agent cannot fill the disk with records."""


class Bounded:
    """The audit callable of a run: ``audit`` (the sinks) given each record bounded, and at most
    ``budget`` bytes of them in all (None: no budget). ``spent(budget)`` is told once, when the
    budget runs out."""

    def __init__(self, audit, budget: int | None = DEFAULT_BUDGET, spent=lambda budget: None):
        self.audit, self.budget, self.on_spent = audit, budget, spent
        self.used = 0
        self.lock = threading.Lock()

    def __call__(self, record: dict) -> None:
        kept, size = bound_sized(record)
        self._charge(size)
        self.audit(kept)

    def many(self, records: list[dict]) -> None:
        sized = [bound_sized(record) for record in records]
        self._charge(sum(size for _kept, size in sized))
        audit_sink.write_all(self.audit, [kept for kept, _size in sized])

    def _charge(self, size: int) -> None:
        if self.budget is None:
            return
        with self.lock:
            first = self.used <= self.budget < self.used + size
            self.used += size
            over = self.used > self.budget
        if first:
            self.on_spent(self.budget)
        if over:
            raise BudgetSpent(f"the run's audit budget of {self.budget} bytes is spent")

    def close(self) -> None:
        close = getattr(self.audit, "close", None)
        if close is not None:
            close()


def bound(record: dict) -> dict:
    """The record as every sink keeps it: normalized, at most MAX_RECORD bytes of canonical JSON."""
    return bound_sized(record)[0]


def bound_sized(record: dict) -> tuple[dict, int]:
    """bound(record), and the size of its canonical JSON (what the budget counts)."""
    return shorten_sized(record, MAX_RECORD, normalize)


def shorten(value: dict, limit: int, finish=lambda value: value) -> dict:
    """``finish(value)`` with its strings, lists and dicts cut (as little as LEVELS allows) so
    that its canonical JSON takes at most ``limit`` bytes. ``value`` itself is left as it is."""
    return shorten_sized(value, limit, finish)[0]


def shorten_sized(value: dict, limit: int, finish=lambda value: value) -> tuple[dict, int]:
    markers: dict[int, str] = {}  # id(a string cut) -> its marker: hashed once, whatever the level
    for chars, items in LEVELS:
        out = finish(_cut(value, chars, items, markers))
        size = len(canonical(out))
        if size <= limit:
            return out, size
    out = _last_resort(out, limit)
    return out, len(canonical(out))


def _cut(value, chars: int, items: int, markers: dict):
    if isinstance(value, str):
        return value if len(value) <= chars else value[:chars] + _marker(value, markers)
    if isinstance(value, dict):
        kept = {_cut(key, chars, items, markers): _cut(item, chars, items, markers)
                for key, item in islice(value.items(), items)}
        if len(value) > items:
            kept[DICT_CUT.format(count=len(value) - items)] = None
        return kept
    if isinstance(value, (list, tuple)):
        kept = [_cut(item, chars, items, markers) for item in value[:items]]
        if len(value) > items:
            kept.append(LIST_CUT.format(count=len(value) - items))
        return kept
    return value  # numbers, None, and the writers' own small values (an Effect)


def _marker(text: str, markers: dict) -> str:
    marker = markers.get(id(text))
    if marker is None:
        try:
            data = text.encode("utf-8", "surrogateescape")  # an undecodable byte is hashed as itself
        except UnicodeEncodeError:  # a lone surrogate that stands for no byte (JSON from the SDK)
            data = text.encode("utf-8", "surrogatepass")
        marker = markers[id(text)] = STRING_CUT.format(size=len(data), digest=hashlib.sha256(data).hexdigest())
    return marker


def _last_resort(out: dict, limit: int) -> dict:
    """The fields in order, each still larger than limit/64 bytes replaced by FIELD_CUT, as many
    as fit, then DICT_CUT for the rest: a fit whatever the shape (deep nesting, long keys)."""
    kept, room = {}, limit - len(canonical({DICT_CUT.format(count=len(out)): None}))
    for key, value in out.items():
        if len(canonical(value)) > limit // 64:
            value = FIELD_CUT
        room -= len(canonical({key: value}))  # the field, its comma, and a spare byte
        if room < 0:
            break
        kept[key] = value
    if len(kept) < len(out):
        kept[DICT_CUT.format(count=len(out) - len(kept))] = None
    return kept
