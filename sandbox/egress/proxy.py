"""The egress proxy: intercepted connections arrive here, each request is decided on its own.

The socket broker connects an intercepted socket to this listener and registers where it was
going (Registry), keyed by the socket's own address. The proxy terminates TLS with the run's
CA (the SNI must be the name the agent connected to), reads each HTTP/1.1 request whole with
h11 (up to the decider's max_body), decides it, and only then opens a connection upstream, verified against
the host's trust store, and forwards the request; the response streams back as is.

Limits (docs/egress.md): at most ``max_connections`` connections are served at once (more are
closed at once); a TLS handshake, and each request (headers and body), must arrive whole within
``request_deadline`` seconds of its first byte; the requests not yet answered hold at most
``max_buffered`` bytes together (one request alone always fits); plain HTTP to a TLS port
(TLS_PORTS) is refused."""

from __future__ import annotations

import errno
import logging
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
from sandbox.egress.limits import IDLE_TIMEOUT, ByteBudget, Overloaded, RequestReader, RequestTimeout
from sandbox.throttled import Throttled

REGISTER_WAIT = 5.0  # seconds an accepted connection waits for the broker's registration
UNCLAIMED_TTL = 120.0  # seconds a registration waits for its connection (a non-blocking connect may be slow)
MAX_CONNECTIONS = 128  # served at once; more are closed at once, unanswered
REQUEST_DEADLINE = 60.0  # seconds from a request's first byte until it is read whole (headers and body)
MAX_BUFFERED = 32 << 20  # bytes of requests not yet decided, across connections (one request alone always fits)
HEAD_LIMIT = 64 * 1024  # bytes of a request's line and headers
SEND_TIMEOUT = 5.0  # seconds to hand a refusal to the agent (its request may have run out of time)
ACCEPT_BACKOFF = 0.1  # seconds between accepts while descriptors, memory or threads run out
TLS_PORTS = frozenset({443})  # plain HTTP here is refused (the catalogue's entries name no scheme)
LINGER_SECONDS, LINGER_BYTES = 1.0, 16 << 20  # reading what the agent still sends before closing
TLS_RECORD = 0x16  # first byte of a TLS handshake
_log = logging.getLogger("faramesh_sandbox.egress")
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
    def __init__(self, ca: CertificateAuthority, decider: Decider, upstream_context: ssl.SSLContext, *,
                 max_connections: int = MAX_CONNECTIONS, request_deadline: float = REQUEST_DEADLINE,
                 max_buffered: int = MAX_BUFFERED):
        self.ca, self.decider, self.upstream_context = ca, decider, upstream_context
        self.registry = Registry()
        self.max_connections, self.request_deadline = max_connections, request_deadline
        self._slots = threading.BoundedSemaphore(max_connections)
        self.budget = ByteBudget(max_buffered)
        self._overload = Throttled(_log)
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
        self._accepting: list[threading.Thread] = []

    def address(self, family: str) -> tuple[str, int] | None:
        listener = self.listeners.get(family)
        return listener.getsockname()[:2] if listener is not None else None

    def buffer_limit(self) -> int:
        """The budget's limit, never below one request of the largest size the decider reads."""
        return max(self.budget.limit, self.decider.max_body + HEAD_LIMIT)

    def start(self) -> None:
        for listener in self.listeners.values():
            accepting = threading.Thread(target=self._accept, args=(listener,), name="egress-accept", daemon=True)
            accepting.start()
            self._accepting.append(accepting)

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
            except OSError as err:
                if self._closed.is_set():
                    return
                # EMFILE, ENFILE, ENOBUFS, ENOMEM, an aborted connection...: the listener is still
                # there, and so are the connections queued on it; try again shortly.
                if err.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    self._overload.warn(f"egress: accepting a connection failed ({err}); trying again")
                    self._closed.wait(ACCEPT_BACKOFF)
                continue
            if not self._slots.acquire(blocking=False):
                self._overload.warn(f"egress: closed a connection at once: {self.max_connections} already served")
                _close_now(conn)
                continue
            try:
                threading.Thread(target=self._serve, args=(conn, peer), name="egress-conn", daemon=True).start()
            except Exception as err:  # noqa: BLE001 - RuntimeError: no thread could start; keep accepting
                self._slots.release()
                _close_now(conn)
                self._overload.warn(f"egress: closed a connection at once: no thread to serve it ({err})")
                self._closed.wait(ACCEPT_BACKOFF)

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        try:
            with conn:
                destination = self.registry.claim(peer)
                if destination is None:
                    return  # not a connection the broker made: nobody else can reach this port's purpose
                try:
                    self._serve_registered(conn, destination)
                except Exception as err:  # noqa: BLE001 - fail closed: the connection ends, the audit says why
                    self.decider.refuse("http/request", {"host": destination.host, "port": destination.port},
                                        "EGRESS_ERROR", f"the egress failed: {type(err).__name__}: {err}")
        finally:
            self._slots.release()

    def _serve_registered(self, conn: socket.socket, destination: Destination) -> None:
        conn.settimeout(IDLE_TIMEOUT)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if not first:
            return
        deadline = time.monotonic() + self.request_deadline  # for the handshake, or the first request
        if first[0] == TLS_RECORD:
            agent = self._handshake(conn, destination, deadline)
            if agent is None:
                return
            self._relay(agent, destination, "https")  # the first request has a clock of its own
        elif destination.port in TLS_PORTS:
            self._refuse_cleartext(conn, destination, deadline)
        else:
            self._relay(conn, destination, "http", deadline)  # the byte seen is the request's first

    def _handshake(self, conn: socket.socket, destination: Destination, deadline: float) -> ssl.SSLSocket | None:
        name = destination.host.lower().rstrip(".")  # certificates name hosts this way
        context = self.ca.context_for(name)
        context.sni_callback = _check_sni
        _handshake.expected, _handshake.mismatch = name, None
        args = {"host": destination.host, "ip": destination.ip, "port": destination.port}
        try:
            conn.settimeout(max(deadline - time.monotonic(), 0.001))  # ssl counts it for the whole handshake
            return context.wrap_socket(conn, server_side=True)
        except TimeoutError:
            self.decider.refuse("net/tls", args, "EGRESS_TIMEOUT",
                                f"the TLS handshake did not complete within {self.request_deadline:g} s")
            return None
        except (ssl.SSLError, OSError) as err:
            if _handshake.mismatch is not None:
                self.decider.refuse("net/tls", {**args, "sni": _handshake.mismatch}, "EGRESS_SNI_MISMATCH",
                                    f"the TLS server name {_handshake.mismatch!r} is not {destination.host!r}, "
                                    "the name the connection was made to")
            else:
                self.decider.refuse("net/tls", args, "EGRESS_TLS_FAILED", f"{PINNING_HINT} ({err})")
            return None

    def _refuse_cleartext(self, conn: socket.socket, destination: Destination, deadline: float) -> None:
        """Plain HTTP to a TLS port: what it carries (and a credential added to it) would cross the
        network unencrypted. Refused with a 403 once its request line is read, and recorded."""
        code = "EGRESS_CLEARTEXT"
        reason = (f"plain HTTP to {destination.host} port {destination.port}, a TLS port: refused "
                  "(the request would cross the network unencrypted); use https://")
        args: dict = {"host": destination.host, "port": destination.port}
        incoming = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        reader = RequestReader(conn, self)
        reader.start_deadline(deadline)
        event = h11.NEED_DATA
        try:
            while event is h11.NEED_DATA:
                event = incoming.next_event()
                if event is h11.NEED_DATA:
                    incoming.receive_data(reader.recv(READ_SIZE))
            reader.check()
        except (OSError, h11.ProtocolError, RequestTimeout, Overloaded):
            pass  # not HTTP that can be answered: refused all the same, the connection closes
        finally:
            reader.release()
        if isinstance(event, h11.Request):
            args.update(method=event.method.decode("latin-1"), target=event.target.decode("latin-1"))
        self.decider.refuse("http/request", args, code, reason)
        try:
            conn.settimeout(SEND_TIMEOUT)
            deny_response(conn, incoming, code, reason, None)
        except (OSError, h11.ProtocolError):
            pass
        finally:
            _close_after_reading(conn)

    def _relay(self, agent: socket.socket, destination: Destination, scheme: str,
               deadline: float | None = None) -> None:
        """Requests one after another on one agent connection, each decided on its own."""
        incoming = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        upstream = Upstream(destination, scheme, self.upstream_context)
        reader = RequestReader(agent, self)
        if deadline is not None:
            reader.start_deadline(deadline)
        where = {"host": destination.host, "port": destination.port}
        try:
            while True:
                try:
                    request = read_request(reader, incoming, destination, scheme, self.decider.max_body)
                    reader.check()
                except BodyError as err:
                    self.decider.refuse("http/request", where, "EGRESS_UNREADABLE", str(err))
                    agent.settimeout(SEND_TIMEOUT)
                    deny_response(agent, incoming, "EGRESS_UNREADABLE", str(err), None)
                    return
                except (RequestTimeout, Overloaded) as err:
                    code = "EGRESS_TIMEOUT" if isinstance(err, RequestTimeout) else "EGRESS_OVERLOADED"
                    if reader.started:  # silence between requests just ends the connection
                        self.decider.refuse("http/request", where, code, str(err))
                        agent.settimeout(SEND_TIMEOUT)
                        deny_response(agent, incoming, code, str(err), None)
                    return
                if request is None:
                    return
                agent.settimeout(IDLE_TIMEOUT)  # the answer is sent in time of its own
                verdict = self.decider.request(request)
                if not verdict.decision.permitted:
                    deny_response(agent, incoming, verdict.decision.reason_code, verdict.decision.reason,
                                  verdict.decision.rule_id)
                else:
                    upstream.exchange(agent, incoming, request, verdict)
                del request, verdict  # the body goes with its budget
                if incoming.our_state is h11.DONE and incoming.their_state is h11.DONE:
                    incoming.start_next_cycle()
                    reader.next_request(len(incoming.trailing_data[0]))
                else:
                    return
        except (OSError, h11.ProtocolError, ssl.SSLError):
            return
        finally:
            reader.release()
            upstream.close()
            _close_after_reading(agent)


def _close_now(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _close_after_reading(sock: socket.socket) -> None:
    """Close without losing the answer: unread bytes at close() make the kernel send a reset that
    can overtake the refusal sent just before (a body refused for its size is still arriving).
    Reads for LINGER_SECONDS at most, however the agent trickles."""
    try:
        sock.shutdown(socket.SHUT_WR)
        until = time.monotonic() + LINGER_SECONDS
        drained = 0
        while drained < LINGER_BYTES:
            left = until - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
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
