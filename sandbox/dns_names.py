"""NameMap: which looked-up name each address came from, so `net/connect` can name its host.

An address is remembered for at least its record's TTL, and never less than ``min_ttl`` seconds:
a program connects right after it resolves, and a TTL of 0 or 5 seconds must not make that
connect lose its host name. Entries are capped at ``max_ttl`` and ``max_entries`` (oldest
evicted), so an agent that resolves many names cannot grow the supervisor's memory.

When several names resolve to one address (shared CDN and hosting addresses), the most recent
lookup wins: ``host_for`` names the last host the agent resolved to that address.

Decisions made with a name may be remembered elsewhere (the compiled connects of
sandbox/fastpath_net.py): ``generation`` counts the changes, and each ``subscribe``d callback
is told of every change before ``record`` returns, so before the DNS answer reaches the agent.
A change is a name added, replaced, evicted, or given a shorter life than it had; the same
name looked up again (as programs do before each connect) with at least its old life is none:
what was decided with it holds until its old expiry, when it is decided again.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from typing import Callable, Sequence

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MIN_TTL = 60.0
DEFAULT_MAX_TTL = 86_400.0


def normalize_ip(ip: str) -> str | None:
    """Canonical text of an address; an IPv4-mapped IPv6 address becomes its IPv4 form."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class NameMap:
    """Thread-safe address -> host name memory of one sandbox session."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, min_ttl: float = DEFAULT_MIN_TTL,
                 max_ttl: float = DEFAULT_MAX_TTL, clock: Callable[[], float] = time.monotonic):
        if max_entries < 1 or min_ttl < 0 or max_ttl < min_ttl:
            raise ValueError(f"NameMap(max_entries={max_entries}, min_ttl={min_ttl}, max_ttl={max_ttl}): "
                             "need max_entries >= 1 and 0 <= min_ttl <= max_ttl")
        self._max_entries = max_entries
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()  # ip -> (host, expires), oldest first
        self._generation = 0  # changes so far (see the module doc)
        self._listeners: list[Callable[[int], None]] = []

    def record(self, host: str, ip: str, ttl: float) -> None:
        """Remember that ``host`` resolved to ``ip``; replaces any earlier name for that address."""
        key = normalize_ip(ip)
        if key is None:
            return
        keep = min(max(float(ttl), self._min_ttl), self._max_ttl)
        with self._lock:
            now = self._clock()
            old = self._entries.pop(key, None)
            self._entries[key] = (host, now + keep)
            # The same name again, living at least as long: what was decided with it still holds.
            changed = old is None or old[0] != host or old[1] <= now or now + keep < old[1]
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
                changed = True
            if not changed:
                return
            self._generation += 1
            generation, listeners = self._generation, tuple(self._listeners)
        for listener in listeners:  # before the answer that taught the name is sent
            listener(generation)

    @property
    def generation(self) -> int:
        """How many changes there have been: read it before ``host_for``, and what was decided
        with that name holds only while the generation stays the same (and the name lives)."""
        return self._generation

    def subscribe(self, listener: Callable[[int], None]) -> Callable[[], None]:
        """Call ``listener(generation)`` after every change; returns the way to unsubscribe."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def record_all(self, host: str, addresses: Sequence[tuple[str, float]]) -> int:
        """Record each (address, ttl) of one answer for ``host`` (sandbox.dns_answer.answer_addresses);
        returns how many."""
        for ip, ttl in addresses:
            self.record(host, ip, ttl)
        return len(addresses)

    def host_for(self, ip: str) -> str | None:
        """The most recently looked-up name that resolved to ``ip``, or None (unknown or expired)."""
        found = self.lookup(ip)
        return found[0] if found else None

    def lookup(self, ip: str) -> tuple[str, float] | None:
        """(host_for(ip), seconds that name has left), or None (unknown or expired)."""
        key = normalize_ip(ip)
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            host, expires = entry
            left = expires - self._clock()
            if left <= 0:
                del self._entries[key]  # expiry is no change: host_for already said None
                return None
            return host, left

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
