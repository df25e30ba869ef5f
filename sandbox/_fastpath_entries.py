"""Numbered record entries for the decisions the compiled receiver repeats.

C answers a repeated call and queues only an entry number; Python turns the number back into
the call's arguments and decision when it writes the audit record. One entry per distinct key,
at most ``limit`` of them and, where the caller gives each a size, at most ``max_bytes`` in all
(then nothing more is learned)."""

from __future__ import annotations

import threading


class Entries:
    def __init__(self, limit: int, max_bytes: float = float("inf")):
        self.limit, self.max_bytes = limit, max_bytes
        self.bytes = 0  # the sizes of the entries made
        self._values: list[tuple] = []
        self._numbers: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def number(self, key, value: tuple, size: int = 0) -> int | None:
        """The entry of ``key``; a new one holds ``value``, of ``size`` bytes. None once ``limit``
        entries exist, or when the new one would take the sizes past ``max_bytes``."""
        with self._lock:
            entry = self._numbers.get(key)
            if entry is None:
                if len(self._values) >= self.limit or self.bytes + size > self.max_bytes:
                    return None
                entry = self._numbers[key] = len(self._values)
                self._values.append(value)
                self.bytes += size
            return entry

    def __getitem__(self, entry: int) -> tuple:
        return self._values[entry]
