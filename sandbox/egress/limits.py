"""The egress's bounds on what agents may hold in it: each request's deadline and the bytes of
requests not yet decided across connections (sandbox/egress/proxy.py; docs/egress.md)."""

from __future__ import annotations

import socket
import threading
import time

IDLE_TIMEOUT = 300.0  # seconds a connection may wait, silent, for its next request (or the first)


class RequestTimeout(Exception):
    """A request (or TLS handshake) did not arrive whole within its deadline."""


class Overloaded(Exception):
    """Reading more of a request would take the bytes held across connections over the limit."""


class ByteBudget:
    """Bytes of requests read but not yet decided and forwarded, shared by all connections."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, count: int, own: int, limit: int | None = None) -> bool:
        """Charge ``count`` more bytes to a holder already charged ``own``; refused when the total
        would exceed the limit, unless nobody else holds any (one request alone always fits)."""
        limit = self.limit if limit is None else limit
        with self._lock:
            if self.used + count > limit and self.used - own > 0:
                return False
            self.used += count
            return True

    def add(self, count: int) -> None:
        with self._lock:
            self.used += count

    def give(self, count: int) -> None:
        with self._lock:
            self.used -= count


class RequestReader:
    """The agent's socket as read_request (forward.py) reads it: the wait for a request's first byte
    is bounded by IDLE_TIMEOUT, the rest of it by one deadline (each recv gets the time left), and
    the bytes read are charged to the proxy's ByteBudget until the request is done with."""

    def __init__(self, sock: socket.socket, proxy):
        self.sock, self.proxy = sock, proxy
        self.deadline: float | None = None  # set by the request's first byte
        self.held = 0  # bytes of this request charged to the budget
        self.started = False  # some of this request has arrived
        self.overloaded: str | None = None  # why this request is refused for the budget

    def next_request(self, buffered: int = 0) -> None:
        """Done with the last request; ``buffered`` bytes of the next one are already read."""
        self.release()
        if buffered:
            self.proxy.budget.add(buffered)  # held already: counted, not refused
            self.held, self.started = buffered, True
            self.deadline = time.monotonic() + self.proxy.request_deadline
        else:
            self.deadline, self.started = None, False
        self.overloaded = None

    def start_deadline(self, deadline: float) -> None:
        """This request's clock started earlier: its first byte was seen with MSG_PEEK."""
        self.deadline = deadline

    def release(self) -> None:
        if self.held:
            self.proxy.budget.give(self.held)
            self.held = 0

    def _wait(self) -> None:
        self.check()
        if self.deadline is None:
            self.sock.settimeout(IDLE_TIMEOUT)
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout(self._late())
        self.sock.settimeout(left)

    def _late(self) -> str:
        return f"the request did not arrive whole within {self.proxy.request_deadline:g} s of its first byte " \
               "(headers and body)"

    def _charge(self, count: int) -> None:
        if not count:
            return
        if self.deadline is None:
            self.deadline = time.monotonic() + self.proxy.request_deadline
        self.started = True
        budget, limit = self.proxy.budget, self.proxy.buffer_limit()
        if not budget.take(count, self.held, limit):
            # This chunk is read already: it still goes to h11 (its headers let the refusal be
            # answered), and the next read, or the end of the request, refuses it.
            self.overloaded = (f"the egress already holds {budget.used} bytes of requests not yet decided; "
                               f"{count} more would pass its {limit}-byte limit: refused, retry later")
            budget.add(count)
        self.held += count

    def check(self) -> None:
        """Overloaded when a read of this request went over the budget."""
        if self.overloaded is not None:
            raise Overloaded(self.overloaded)

    def recv(self, size: int, flags: int = 0) -> bytes:
        self._wait()
        try:
            data = self.sock.recv(size, flags) if flags else self.sock.recv(size)
        except TimeoutError:
            if self.deadline is None:
                raise  # idle: the connection just ends
            raise RequestTimeout(self._late()) from None
        self._charge(len(data))
        return data

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        self._wait()
        try:
            count = self.sock.recv_into(buffer, nbytes, flags) if flags else self.sock.recv_into(buffer, nbytes)
        except TimeoutError:
            if self.deadline is None:
                raise
            raise RequestTimeout(self._late()) from None
        self._charge(count)
        return count

    def sendall(self, data) -> None:  # 100 Continue: within the request's time
        self._wait()
        self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)
