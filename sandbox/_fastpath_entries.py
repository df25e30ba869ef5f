"""Numbered record entries for the decisions the compiled receiver repeats.

C answers a repeated call and queues only an entry number; Python turns the number back into
the call's arguments and decision when it writes the audit record. One entry per distinct key,
at most ``limit`` of them (then nothing more is learned)."""

from __future__ import annotations

import threading


class Entries:
    def __init__(self, limit: int):
        self.limit = limit
        self._values: list[tuple] = []
        self._numbers: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def number(self, key: tuple, value: tuple) -> int | None:
        """The entry of ``key``; a new one holds ``value``. None once ``limit`` entries exist."""
        with self._lock:
            entry = self._numbers.get(key)
            if entry is None:
                if len(self._values) >= self.limit:
                    return None
                entry = self._numbers[key] = len(self._values)
                self._values.append(value)
            return entry

    def __getitem__(self, entry: int) -> tuple:
        return self._values[entry]
