"""DnsStub: the sandbox's only resolver. Each lookup is a policy decision; permitted ones are forwarded.

The agent's /etc/resolv.conf names STUB_ADDRESS; the socket broker sends the agent's port-53
traffic for that address to this stub's host-side listeners (``udp_address``, ``tcp_address``).
What each query gets is decided in dns_answer.py; this module serves the sockets and keeps the
limits: queries over MAX_QUERY_BYTES are dropped; at most ``max_inflight`` queries are being
decided or forwarded at once (more get SERVFAIL at once); at most ``max_tcp_connections`` TCP
clients are served, each dropped after ``tcp_idle`` seconds of silence.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from typing import TYPE_CHECKING, Callable

from sandbox.dns_names import NameMap
from sandbox.dns_upstream import host_nameservers
from sandbox.throttled import Throttled

if TYPE_CHECKING:
    from sandbox.dns_answer import Answerer

Check = Callable[[str, str], bool]  # (name, type) -> answer it
MAX_QUERY_BYTES = 4096  # a longer query is dropped
STUB_ADDRESS = "127.0.0.53"
STUB_PORT = 53
DEFAULT_MAX_INFLIGHT = 32
DEFAULT_MAX_TCP_CONNECTIONS = 16
LOAD_RETRY_SECONDS = 5
_log = logging.getLogger("faramesh_sandbox.dns")


def resolv_conf() -> bytes:
    """The sandbox's /etc/resolv.conf: the stub only, no search domains of the host.

    edns0 lets answers up to 1200 bytes come over UDP; trust-ad is left out because the stub
    does not validate DNSSEC, so glibc clears the AD bit instead of passing it on."""
    return f"nameserver {STUB_ADDRESS}\noptions edns0\n".encode()


class DnsStub:
    """UDP and TCP listeners in the host's network namespace, served on a daemon thread."""

    def __init__(self, check: Check, upstream: list[tuple[str, int]] | None = None,
                 host_resolv_conf: str = "/etc/resolv.conf", *, listen: tuple[str, int] = ("127.0.0.1", 0),
                 names: NameMap | None = None, timeout: float = 2.0, max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 max_tcp_connections: int = DEFAULT_MAX_TCP_CONNECTIONS, tcp_idle: float = 10.0):
        servers = list(upstream) if upstream is not None else host_nameservers(host_resolv_conf)  # DnsConfigError
        self.names = names if names is not None else NameMap()
        self._answerer_args = (check, servers, timeout)
        self._answerer: Answerer | None = None
        self._answerer_retry_at = float("-inf")  # after a failed load: when to try again
        self._answerer_lock = threading.Lock()
        self._listen = listen
        self._max_inflight = max_inflight
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._workers = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="dns-stub")
        self._max_tcp = max_tcp_connections
        self._tcp_slots = threading.BoundedSemaphore(max_tcp_connections)
        self._tcp_open: set[socket.socket] = set()
        self._tcp_idle = tcp_idle
        self._overload = Throttled(_log)
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "DnsStub":
        family = socket.AF_INET6 if ":" in self._listen[0] else socket.AF_INET
        self._udp = socket.socket(family, socket.SOCK_DGRAM)
        self._tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._udp.bind(self._listen)
            self._udp.setblocking(False)
            self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._tcp.bind(self._listen)
            self._tcp.listen(64)
            self._tcp.setblocking(False)
        except OSError:
            self.close()
            raise
        try:  # one worker now: a query queued when no new worker can start always has one to run it
            self._workers.submit(int)
        except RuntimeError:
            pass  # none could start: the first query's submit tries again
        serving = threading.Thread(target=self._serve, name="dns-stub", daemon=True)
        serving.start()  # kept only once running: close() after a failed start joins nothing
        self._thread = serving
        return self

    @property
    def udp_address(self) -> tuple[str, int]:
        return self._bound(self._udp)

    @property
    def tcp_address(self) -> tuple[str, int]:
        return self._bound(self._tcp)

    def _bound(self, sock: socket.socket | None) -> tuple[str, int]:
        if sock is None or self._closed:
            raise RuntimeError("DnsStub has no listening address: call start() first (and not after close())")
        return sock.getsockname()[:2]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for conn in list(self._tcp_open):
            _shutdown(conn)  # wakes its thread out of recv
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._workers.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "DnsStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def respond(self, wire: bytes, transport: str = "udp") -> bytes | None:
        """The reply to one query message (``transport`` "udp" or "tcp"), or None to send nothing
        (also while the resolver library cannot be loaded: nothing could be checked)."""
        answerer = self._answerer_now()
        return answerer.respond(wire, transport) if answerer is not None else None

    def _answerer_now(self) -> Answerer | None:
        """The Answerer, made at the first lookup: dnspython is loaded then, not at start. None
        while it cannot be loaded (said each time a load fails, tried again LOAD_RETRY_SECONDS on)."""
        if self._answerer is not None or time.monotonic() < self._answerer_retry_at:
            return self._answerer
        with self._answerer_lock:
            if self._answerer is None and time.monotonic() >= self._answerer_retry_at:
                try:
                    from sandbox.dns_answer import Answerer
                    check, servers, timeout = self._answerer_args
                    self._answerer = Answerer(check, servers, self.names, timeout)
                except Exception as exc:  # noqa: BLE001 - fail closed: no lookup is answered
                    _log.error("dns: no lookup is answered for %d s: the resolver library cannot be "
                               "loaded: %s: %s", LOAD_RETRY_SECONDS, type(exc).__name__, exc)
                    self._answerer_retry_at = time.monotonic() + LOAD_RETRY_SECONDS
            return self._answerer

    def _overloaded(self, wire: bytes, transport: str) -> bytes | None:
        if self._answerer is None:  # nothing in flight has loaded dnspython: nothing to answer with
            return None
        from sandbox.dns_answer import servfail

        self._overload.warn(f"dns: SERVFAIL for a {transport} query: {self._max_inflight} queries "
                            "already in flight")
        return servfail(wire)

    # ---- serving --------------------------------------------------------------------------------

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ, self._on_udp)
            selector.register(self._tcp, selectors.EVENT_READ, self._on_tcp)
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            while not self._closed:
                for key, _ in selector.select():
                    if key.data is None or self._closed:
                        return
                    try:
                        key.data()
                    except Exception as exc:  # noqa: BLE001 - e.g. no thread to start: this query is lost, not the stub
                        self._overload.warn(f"dns: a query or connection was dropped: {type(exc).__name__}: {exc}")

    def _on_udp(self) -> None:
        # The first lookup loads dnspython (about 60 ms) here, before any query takes an in-flight
        # place: a burst waits in the socket's buffer, not holding places it would then overflow.
        self._answerer_now()
        if self._closed:  # closed during the load: the sockets are gone
            return
        for _ in range(64):  # drain a burst, then let the listener have its turn
            try:
                wire, peer = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log.warning("dns: UDP receive failed: %s", exc)
                return
            if not self._slots.acquire(blocking=False):
                self._send_udp(self._overloaded(wire, "udp"), peer)
                continue
            try:
                self._workers.submit(self._answer_udp, wire, peer)
            except RuntimeError as exc:
                if self._closed:  # shut down: never queued
                    self._slots.release()
                    return
                # No new worker could start: the query is queued, keeping its place, and the
                # worker start() made (a pool never shrinks) will answer it.
                self._overload.warn(f"dns: a query waits for a busy worker: {exc}")

    def _answer_udp(self, wire: bytes, peer) -> None:
        try:
            self._send_udp(self.respond(wire, "udp"), peer)
        finally:
            self._slots.release()

    def _send_udp(self, reply: bytes | None, peer) -> None:
        if reply is None:
            return
        try:
            self._udp.sendto(reply, peer)
        except OSError as exc:  # full buffer or closed stub: the client retries or gives up
            _log.debug("dns: reply to %s lost: %s", peer, exc)

    def _on_tcp(self) -> None:
        try:
            conn, peer = self._tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            _log.warning("dns: TCP accept failed: %s", exc)
            return
        if not self._tcp_slots.acquire(blocking=False):
            self._overload.warn(f"dns: closed a TCP connection from {peer}: "
                                f"{self._max_tcp} already open")
            conn.close()
            return
        self._tcp_open.add(conn)
        try:
            threading.Thread(target=self._serve_tcp, args=(conn,), name="dns-stub-tcp", daemon=True).start()
        except BaseException:
            self._tcp_open.discard(conn)
            conn.close()
            self._tcp_slots.release()
            raise

    def _serve_tcp(self, conn: socket.socket) -> None:
        try:
            if self._answerer_now() is None:  # loaded before taking an in-flight place, as for UDP
                return
            conn.setblocking(True)
            conn.settimeout(self._tcp_idle)
            while not self._closed:
                prefix = _recv_exact(conn, 2)
                if prefix is None:
                    return
                length = int.from_bytes(prefix, "big")
                if length > MAX_QUERY_BYTES:
                    _log.warning("dns: dropped a %d-byte TCP query (limit %d bytes)", length, MAX_QUERY_BYTES)
                    return
                wire = _recv_exact(conn, length)
                if wire is None:
                    return
                if self._slots.acquire(blocking=False):
                    try:
                        reply = self.respond(wire, "tcp")
                    finally:
                        self._slots.release()
                else:
                    reply = self._overloaded(wire, "tcp")
                if reply is not None:
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:  # idle timeout, reset, or the stub closing
            return
        finally:
            self._tcp_open.discard(conn)
            conn.close()
            self._tcp_slots.release()


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _recv_exact(conn: socket.socket, count: int) -> bytes | None:
    """``count`` bytes, or None when the peer closes first."""
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data
