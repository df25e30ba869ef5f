"""HTTP/1.1 on both sides of the egress (h11): read a request whole, refuse one, forward one."""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl

import h11

from sandbox.egress.http_calls import MAX_BODY, BodyError, HttpRequest

READ_SIZE = 65536
CONNECT_TIMEOUT = 30.0
UPSTREAM_TIMEOUT = 300.0
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
NOT_FORWARDED = HOP_BY_HOP | {b"content-length", b"expect"}  # the body is re-framed by length
KEPT_IN_RESPONSE = {b"transfer-encoding"}  # h11 frames the relayed body the way upstream did
HOST_VALUE = re.compile(r"(?:\[([0-9a-f:.]+)\]|([a-z0-9._-]+))(?::([0-9]{1,5}))?")  # host[:port], [v6][:port]
# Headers some servers and frameworks act on instead of the request line: the method or path the
# policy decided would not be the one performed. No API client needs them through the egress.
OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override", "x-original-method",
                              "x-original-url", "x-rewrite-url", "x-forwarded-host", "x-forwarded-prefix",
                              "x-forwarded-path"})


def _next(conn: h11.Connection, sock: socket.socket):
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(sock.recv(READ_SIZE))


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _host_of(value: str) -> str:
    """``name[:port]`` or ``[v6][:port]`` -> the host, lower case, no root dot. The Host header is
    forwarded as sent, so anything else (``host:1@evil``, ``[host]evil``, ``host/x``) is refused:
    a server could read another host in it."""
    return _host_and_port(value)[0]


def _host_and_port(value: str) -> tuple[str, int | None]:
    found = HOST_VALUE.fullmatch(value.lower())
    if found is None:
        raise BodyError(f"the Host header {value[:80]!r} is not host[:port] or [IPv6][:port]")
    return (found[1] or found[2]).rstrip("."), None if found[3] is None else int(found[3])


def read_request(sock: socket.socket, conn: h11.Connection, destination, scheme: str,
                 max_body: int = MAX_BODY) -> HttpRequest | None:
    """The next request with its whole body; None when the agent closed the connection first."""
    try:
        event = _next(conn, sock)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise BodyError(f"expected a request, got {type(event).__name__}")
        method, target = _text(event.method).upper(), _text(event.target)
        headers = [(_text(k), _text(v)) for k, v in event.headers.raw_items()]
        lower = {k.lower() for k, _ in headers}
        if method == "CONNECT" or "upgrade" in lower:
            raise BodyError(f"{method} with a protocol switch cannot be inspected")
        named = {_host_and_port(v) for k, v in headers if k.lower() == "host"}
        hosts = {host for host, _port in named}
        if hosts != {destination.host.lower().rstrip(".")}:
            raise BodyError(f"the Host header {sorted(hosts)} is not {destination.host!r}, "
                            "the name the connection was made to")
        if any(port not in (None, destination.port) for _host, port in named):  # virtual hosts by port
            raise BodyError(f"the Host header names a port other than {destination.port}, the one the connection "
                            "was made to")
        overriding = sorted(lower & OVERRIDE_HEADERS)
        if overriding:
            raise BodyError(f"header {overriding[0]} would make a server act on another method, path or host "
                            "than the one decided")
        for k, v in headers:
            if k.lower() == "content-length" and v.strip().isdigit() and int(v) > max_body:
                raise BodyError(f"request body of {int(v)} bytes is over the {max_body}-byte inspection limit")
        if conn.they_are_waiting_for_100_continue:
            sock.sendall(conn.send(h11.InformationalResponse(status_code=100, headers=[])))  # the body is needed
        body = bytearray()
        while True:
            event = _next(conn, sock)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise BodyError(f"request body is over the {max_body}-byte inspection limit")
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise BodyError("the request ended before its body did")
    except h11.RemoteProtocolError as err:
        raise BodyError(f"not valid HTTP/1.1: {err}") from None
    host = destination.host.lower().rstrip(".")  # as the catalogue and the policy spell names
    return HttpRequest(method, target, headers, bytes(body), host, destination.port, scheme)


def deny_response(sock: socket.socket, conn: h11.Connection, code: str, reason: str, rule_id: str | None) -> None:
    """A 403 the agent's HTTP client reports with the policy's reason."""
    if conn.our_state is not h11.SEND_RESPONSE:
        return  # no request to answer (unparseable): the connection is closed, the audit says why
    body = json.dumps({"error": {"type": "faramesh_policy", "code": code, "message": reason,
                                 "rule_id": rule_id}}).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body))),
               ("x-faramesh-decision", "deny"), ("x-faramesh-reason-code", code)]
    if conn.their_state is not h11.DONE:
        headers.append(("connection", "close"))  # the unread body cannot be skipped safely
    sock.sendall(conn.send(h11.Response(status_code=403, headers=headers)))
    sock.sendall(conn.send(h11.Data(data=body)))
    sock.sendall(conn.send(h11.EndOfMessage()))


def _auth_header(scheme: str, secret: str) -> tuple[str, str]:
    if scheme == "basic-token":  # git over HTTPS: any user name, the token as password
        return "authorization", "Basic " + base64.b64encode(f"x-access-token:{secret}".encode()).decode()
    return "authorization", f"Bearer {secret}"


class Upstream:
    """The connection to where the agent was going, opened for each permitted request."""

    def __init__(self, destination, scheme: str, context: ssl.SSLContext):
        self.destination, self.scheme, self.context = destination, scheme, context
        self.sock: socket.socket | None = None
        self.conn: h11.Connection | None = None

    def _open(self) -> None:
        raw = socket.create_connection((self.destination.ip, self.destination.port), timeout=CONNECT_TIMEOUT)
        try:
            sock = self.context.wrap_socket(raw, server_hostname=self.destination.host.lower().rstrip(".")) \
                if self.scheme == "https" else raw
        except BaseException:
            raw.close()
            raise
        sock.settimeout(UPSTREAM_TIMEOUT)
        self.sock, self.conn = sock, h11.Connection(h11.CLIENT)

    def exchange(self, agent: socket.socket, incoming: h11.Connection, request: HttpRequest, verdict) -> None:
        """Send ``request`` (with the brokered secret, if any) and relay the response to the agent."""
        if verdict.secret is not None and self.scheme != "https":  # the decider refuses it first
            raise BodyError("a brokered credential is never sent over plain HTTP")
        if self.conn is None:
            try:
                self._open()
            except (OSError, ssl.SSLError) as err:
                why = f"cannot reach {self.destination.host}:{self.destination.port}: {err}"
                _bad_gateway(agent, incoming, why)
                return
        headers = [(k, v) for k, v in request.headers if k.lower().encode() not in NOT_FORWARDED
                   and not (verdict.secret is not None and k.lower() == "authorization")]
        if verdict.secret is not None:
            headers.append(_auth_header(verdict.endpoint.auth if verdict.endpoint else "bearer", verdict.secret))
        if request.body or request.method in ("POST", "PUT", "PATCH"):
            headers.append(("content-length", str(len(request.body))))
        send = lambda event: self.sock.sendall(self.conn.send(event))  # noqa: E731
        send(h11.Request(method=request.method, target=request.target, headers=headers))
        if request.body:
            send(h11.Data(data=request.body))
        send(h11.EndOfMessage())
        while True:
            event = _next(self.conn, self.sock)
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue was for us; upgrades were refused before
            if isinstance(event, h11.Response):
                kept = [(k, v) for k, v in event.headers.raw_items()
                        if k.lower() not in HOP_BY_HOP or k.lower() in KEPT_IN_RESPONSE]
                agent.sendall(incoming.send(h11.Response(status_code=event.status_code, headers=kept,
                                                         reason=event.reason)))
            elif isinstance(event, h11.Data):
                agent.sendall(incoming.send(h11.Data(data=event.data)))
            elif isinstance(event, h11.EndOfMessage):
                agent.sendall(incoming.send(h11.EndOfMessage()))
                break
            else:
                raise OSError("upstream closed the connection mid-response")
        # One upstream connection per request: a kept-alive one the server dropped meanwhile would
        # fail a request after its decision, and a POST cannot safely be sent twice.
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = self.conn = None


def _bad_gateway(agent: socket.socket, incoming: h11.Connection, why: str) -> None:
    body = json.dumps({"error": {"type": "faramesh_upstream", "message": why}}).encode()
    agent.sendall(incoming.send(h11.Response(status_code=502, headers=[
        ("content-type", "application/json"), ("content-length", str(len(body)))])))
    agent.sendall(incoming.send(h11.Data(data=body)))
    agent.sendall(incoming.send(h11.EndOfMessage()))
