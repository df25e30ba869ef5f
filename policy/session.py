"""Per-session state the policy reads and updates: counters, history, spend.

One ``SessionState`` per session id (the agent id when a call has none), each
with its own lock: the evaluator holds it for the whole decision, so counting,
checking and recording a call are one atomic step even when the supervisor
decides from several threads. History is bounded; functions that would need an
evicted entry fail closed (see ``HistoryTruncated``).
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque

HISTORY_LIMIT = 4096
TOOL_COUNT_LIMIT = 4096
NUMERIC_FIELD_LIMIT = 16
_OVERFLOW = "\x00overflow"  # permit_counts key: too many tools to count, history_tool_count fails closed


class HistoryTruncated(Exception):
    """A history query needs entries that the bound has already evicted."""


# A history entry is a plain tuple (cheaper than a named one on the hot path):
# (tool, effect "PERMIT"|"DENY"|"DEFER", timestamp, ((field, number), ...) for session.sum).
# Entries are in time order; only PERMIT entries are calls that happened (policy/_functions.py).
TOOL, EFFECT, TIMESTAMP, NUMBERS = range(4)
HistoryEntry = tuple


class SessionState:
    """Counters and bounded history of one session. Use ``with state.lock``."""

    __slots__ = (
        "lock", "call_count", "history", "evicted_at", "permit_counts", "deny_count",
        "cost_usd", "daily_cost_usd", "day", "phase", "buckets", "invocations",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.call_count = 0
        self.history: deque[HistoryEntry] = deque()
        self.evicted_at: float | None = None  # timestamp of the newest evicted entry
        self.permit_counts: dict[str, int] = {}  # tool -> PERMIT entries, for history_tool_count
        self.deny_count = 0
        self.cost_usd = 0.0
        self.daily_cost_usd = 0.0
        self.day = -1  # UTC day number that daily_cost_usd belongs to
        self.phase: dict[int, str] = {}  # layer index -> current phase
        self.buckets: dict[str, list[float]] = {}  # rate-limit key -> [tokens, last refill]
        self.invocations: dict[str, int] = {}  # invoke_agent target -> count

    # ------------------------------------------------------------ recording

    def record(self, tool: str, effect: str, timestamp: float, numbers: tuple = ()) -> None:
        """Append one decided call to the history and counters."""
        history = self.history
        if len(history) >= HISTORY_LIMIT:
            self.evicted_at = history.popleft()[TIMESTAMP]
        history.append((tool, effect, timestamp, numbers))
        if effect == "PERMIT":
            self._count_permit(tool)
        elif effect == "DENY":
            self.deny_count += 1

    def _count_permit(self, tool: str) -> None:
        counts = self.permit_counts
        seen = counts.get(tool)
        if seen is not None:
            counts[tool] = seen + 1
        elif len(counts) < TOOL_COUNT_LIMIT:
            counts[tool] = 1
        else:
            counts[_OVERFLOW] = counts.get(_OVERFLOW, 0) + 1

    def newest_timestamp(self) -> float:
        """Timestamp of the latest entry (-inf when empty): windows rely on time order."""
        return self.history[-1][TIMESTAMP] if self.history else -math.inf

    def add_cost(self, amount: float, day: int) -> None:
        self.roll_day(day)
        self.cost_usd += amount
        self.daily_cost_usd += amount

    def roll_day(self, day: int) -> None:
        if day != self.day:
            self.day = day
            self.daily_cost_usd = 0.0

    # ------------------------------------------------------------ queries

    def window(self, since: float):
        """History entries at or after ``since``, newest first; fails closed if truncated."""
        if self.evicted_at is not None and self.evicted_at >= since:
            raise HistoryTruncated("session history no longer covers this window")
        for entry in reversed(self.history):
            if entry[TIMESTAMP] < since:
                return
            yield entry

    def whole_history(self):
        """All entries oldest first; fails closed once anything was evicted."""
        if self.evicted_at is not None:
            raise HistoryTruncated("session history is longer than the kept bound")
        return iter(self.history)

    def count_permitted(self, matcher) -> int:
        """PERMIT entries (evicted ones included) whose tool ``matcher`` accepts."""
        if _OVERFLOW in self.permit_counts:
            raise HistoryTruncated("too many distinct tool names in this session")
        return sum(n for tool, n in self.permit_counts.items() if matcher(tool))

    def history_view(self) -> list[dict]:
        """``session.history`` for conditions: newest first."""
        return [{"tool": e[TOOL], "effect": e[EFFECT], "timestamp": e[TIMESTAMP]} for e in reversed(self.history)]

    # ------------------------------------------------------------ persistence

    def _recount_permits(self) -> None:
        """permit_counts for a session file written before they existed (its ``tool_counts``
        counted refused calls too): from the history when it is whole, else fail closed."""
        self.permit_counts = {}
        if self.evicted_at is not None:
            self.permit_counts[_OVERFLOW] = 1
            return
        for entry in self.history:
            if entry[EFFECT] == "PERMIT":
                self._count_permit(entry[TOOL])

    def to_dict(self) -> dict:
        return {
            "call_count": self.call_count,
            "history": [[e[TOOL], e[EFFECT], e[TIMESTAMP], [list(p) for p in e[NUMBERS]]] for e in self.history],
            "evicted_at": self.evicted_at,
            "permit_counts": dict(self.permit_counts),
            "deny_count": self.deny_count,
            "cost_usd": self.cost_usd,
            "daily_cost_usd": self.daily_cost_usd,
            "day": self.day,
            "phase": {str(k): v for k, v in self.phase.items()},
            "buckets": {k: list(v) for k, v in self.buckets.items()},
            "invocations": dict(self.invocations),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SessionState":
        """Inverse of ``to_dict``. Raises ValueError (or TypeError/KeyError) on bad data,
        including NaN or infinite numbers: a NaN spend would pass every budget check."""
        state = cls()
        state.call_count = _int(data.get("call_count", 0))
        for tool, effect, ts, numbers in data.get("history", [])[-HISTORY_LIMIT:]:
            pairs = tuple((str(k), _float(v)) for k, v in numbers)
            state.history.append((str(tool), str(effect), _float(ts), pairs))
        evicted = data.get("evicted_at")
        state.evicted_at = None if evicted is None else _float(evicted)
        if "permit_counts" in data:
            state.permit_counts = {str(k): _int(v) for k, v in data["permit_counts"].items()}
        else:
            state._recount_permits()
        state.deny_count = _int(data.get("deny_count", 0))
        state.cost_usd = _float(data.get("cost_usd", 0.0))
        state.daily_cost_usd = _float(data.get("daily_cost_usd", 0.0))
        state.day = _int(data.get("day", -1))
        state.phase = {int(k): str(v) for k, v in data.get("phase", {}).items()}
        state.buckets = {str(k): [_float(v[0]), _float(v[1])] for k, v in data.get("buckets", {}).items()}
        state.invocations = {str(k): _int(v) for k, v in data.get("invocations", {}).items()}
        return state


def _float(value) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"number {value!r} is not finite")
    return number


def _int(value) -> int:
    if isinstance(value, float):
        return int(_float(value))
    return int(value)


class SessionStore:
    """Session states keyed by session id (agent id fallback). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionState] = {}

    def get(self, key: str) -> SessionState:
        """The state for ``key``, created on first use."""
        state = self._sessions.get(key)
        if state is None:
            with self._lock:
                state = self._sessions.setdefault(key, SessionState())
        return state

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def to_json(self) -> str:
        """All sessions as JSON, for ``policy eval --session FILE``."""
        with self._lock:
            items = list(self._sessions.items())
        payload = {}
        for key, state in items:
            with state.lock:
                payload[key] = state.to_dict()
        return json.dumps({"version": 1, "sessions": payload}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SessionStore":
        """Inverse of ``to_json``. Raises ValueError on malformed input."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != 1:
                raise ValueError("unsupported session file version")
            store = cls()
            for key, value in data.get("sessions", {}).items():
                store._sessions[str(key)] = SessionState.from_dict(value)
        except (TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise ValueError(f"malformed session file: {exc}") from None
        return store
