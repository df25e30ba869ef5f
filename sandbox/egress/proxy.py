"""The egress proxy: intercepted connections arrive here, each request is decided on its own.

The socket broker connects an intercepted socket to this listener and registers where it was
going (Registry), keyed by the socket's own address. The proxy terminates TLS with the run's
CA (the SNI must be the name the agent connected to), reads each HTTP/1.1 request whole with
h11 (up to the decider's max_body), decides it, and only then opens a connection upstream, verified against
the host's trust store, and forwards the request; the response streams back as is."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass

import h11

from sandbox.egress.ca import CertificateAuthority
from sandbox.egress.deciding import Decider
from sandbox.egress.forward import READ_SIZE, Upstream, deny_response, read_request
from sandbox.egress.http_calls import BodyError

REGISTER_WAIT = 5.0  # seconds an accepted connection waits for the broker's registration
UNCLAIMED_TTL = 120.0  # seconds a registration waits for its connection (a non-blocking connect may be slow)
IDLE_TIMEOUT = 300.0
LINGER_SECONDS, LINGER_BYTES = 1.0, 16 << 20  # reading what the agent still sends before closing
TLS_RECORD = 0x16  # first byte of a TLS handshake
PINNING_HINT = "TLS handshake with the sandbox CA failed: the client may pin certificates"


@dataclass(frozen=True)
class Destination:
    name: str | None  # the DNS name the agent used, None when it used an address
    ip: str
    port: int

    @property
    def host(self) -> str:
        return self.name or self.ip


_handshake = threading.local()  # the host expected in this thread's handshake, and a mismatched SNI


def _check_sni(_ssl_socket, server_name, _context):
    """The SNI, when sent, must be the name the agent connected to (no fronting another host)."""
    if server_name is not None and server_name.lower().rstrip(".") != _handshake.expected:
        _handshake.mismatch = server_name
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
    return None


class Registry:
    """Broker -> proxy: where each intercepted socket (by its local address) was going."""

    def __init__(self):
        self._waiting: dict[tuple[str, int], Destination] = {}
        self._since: dict[tuple[str, int], float] = {}
        self._changed = threading.Condition()

    def register(self, local: tuple, destination: Destination) -> None:
        now = time.monotonic()
        with self._changed:
            for key in [k for k, t in self._since.items() if now - t > UNCLAIMED_TTL]:
                self._waiting.pop(key, None)  # a connect that failed never arrives
                self._since.pop(key, None)
            self._waiting[(local[0], local[1])] = destination
            self._since[(local[0], local[1])] = now
            self._changed.notify_all()

    def claim(self, peer: tuple, timeout: float | None = None) -> Destination | None:
        key = (peer[0], peer[1])
        with self._changed:
            self._changed.wait_for(lambda: key in self._waiting, REGISTER_WAIT if timeout is None else timeout)
            self._since.pop(key, None)
            return self._waiting.pop(key, None)


class EgressProxy:
    def __init__(self, ca: CertificateAuthority, decider: Decider, upstream_context: ssl.SSLContext):
        self.ca, self.decider, self.upstream_context = ca, decider, upstream_context
        self.registry = Registry()
        self.listeners: dict[str, socket.socket] = {}
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                listener = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                listener.bind((host, 0))
                listener.listen(128)
            except OSError:
                continue  # no IPv6 loopback: IPv6 sockets are then not intercepted (they fail to connect)
            self.listeners["inet" if family == socket.AF_INET else "inet6"] = listener
        self._closed = threading.Event()

    def address(self, family: str) -> tuple[str, int] | None:
        listener = self.listeners.get(family)
        return listener.getsockname()[:2] if listener is not None else None

    def start(self) -> None:
        for listener in self.listeners.values():
            threading.Thread(target=self._accept, args=(listener,), name="egress-accept", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        for listener in self.listeners.values():
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer), name="egress-conn", daemon=True).start()

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        with conn:
            destination = self.registry.claim(peer)
            if destination is None:
                return  # not a connection the broker made: nobody else can reach this port's purpose
            try:
                self._serve_registered(conn, destination)
            except Exception as err:  # noqa: BLE001 - fail closed: the connection ends, the audit says why
                self.decider.refuse("http/request", {"host": destination.host, "port": destination.port},
                                    "EGRESS_ERROR", f"the egress failed: {type(err).__name__}: {err}")

    def _serve_registered(self, conn: socket.socket, destination: Destination) -> None:
        conn.settimeout(IDLE_TIMEOUT)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if not first:
            return
        if first[0] == TLS_RECORD:
            agent = self._handshake(conn, destination)
            if agent is None:
                return
            self._relay(agent, destination, "https")
        else:
            self._relay(conn, destination, "http")

    def _handshake(self, conn: socket.socket, destination: Destination) -> ssl.SSLSocket | None:
        name = destination.host.lower().rstrip(".")  # certificates name hosts this way
        context = self.ca.context_for(name)
        context.sni_callback = _check_sni
        _handshake.expected, _handshake.mismatch = name, None
        try:
            return context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as err:
            args = {"host": destination.host, "ip": destination.ip, "port": destination.port}
            if _handshake.mismatch is not None:
                self.decider.refuse("net/tls", {**args, "sni": _handshake.mismatch}, "EGRESS_SNI_MISMATCH",
                                    f"the TLS server name {_handshake.mismatch!r} is not {destination.host!r}, "
                                    "the name the connection was made to")
            else:
                self.decider.refuse("net/tls", args, "EGRESS_TLS_FAILED", f"{PINNING_HINT} ({err})")
            return None

    def _relay(self, agent: socket.socket, destination: Destination, scheme: str) -> None:
        """Requests one after another on one agent connection, each decided on its own."""
        incoming = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        upstream = Upstream(destination, scheme, self.upstream_context)
        try:
            while True:
                try:
                    request = read_request(agent, incoming, destination, scheme, self.decider.max_body)
                except BodyError as err:
                    self.decider.refuse("http/request", {"host": destination.host, "port": destination.port},
                                        "EGRESS_UNREADABLE", str(err))
                    deny_response(agent, incoming, "EGRESS_UNREADABLE", str(err), None)
                    return
                if request is None:
                    return
                verdict = self.decider.request(request)
                if not verdict.decision.permitted:
                    deny_response(agent, incoming, verdict.decision.reason_code, verdict.decision.reason,
                                  verdict.decision.rule_id)
                else:
                    upstream.exchange(agent, incoming, request, verdict)
                if incoming.our_state is h11.DONE and incoming.their_state is h11.DONE:
                    incoming.start_next_cycle()
                else:
                    return
        except (OSError, h11.ProtocolError, ssl.SSLError):
            return
        finally:
            upstream.close()
            _close_after_reading(agent)


def _close_after_reading(sock: socket.socket) -> None:
    """Close without losing the answer: unread bytes at close() make the kernel send a reset that
    can overtake the refusal sent just before (a body refused for its size is still arriving)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(LINGER_SECONDS)
        drained = 0
        while drained < LINGER_BYTES:
            chunk = sock.recv(READ_SIZE)
            if not chunk:
                break
            drained += len(chunk)
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass
