"""Warnings that an agent cannot turn into a flood of log lines (the DNS stub, the egress)."""

from __future__ import annotations

import logging
import threading
import time


class Throttled:
    """A warning at most once per ``interval`` seconds, with the count of those held back."""

    def __init__(self, log: logging.Logger, interval: float = 1.0):
        self._log, self._interval, self._last, self._held = log, interval, float("-inf"), 0
        self._lock = threading.Lock()

    def warn(self, text: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._interval:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        self._log.warning("%s%s", text, f" ({held} more since the last report)" if held else "")
