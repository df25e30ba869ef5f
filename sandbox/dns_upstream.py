"""Forwarding a permitted query to the host's resolvers: UDP first, TCP when the answer is truncated.

dnspython is imported by forward(), at the first lookup: a run whose agent never resolves a name
does not load it (about 60 ms of every start-up; docs/benchmarks.md)."""

from __future__ import annotations

import os
import re
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.message

MAX_NAMESERVERS = 3  # glibc's MAXNS: the host's own resolver ignores the lines after these


class DnsConfigError(Exception):
    """The host's resolver configuration gives no server to forward to."""

    def __init__(self, message: str, hint: str):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} — hint: {hint}")


class UpstreamError(Exception):
    """No upstream server gave an answer."""


def _no_server(resolv_conf: str, why: object) -> DnsConfigError:
    return DnsConfigError(f"{resolv_conf}: no DNS server to forward the sandbox's lookups to ({why})",
                          f"add a 'nameserver ADDRESS' line to {resolv_conf}, or pass upstream servers explicitly")


# glibc's reading (resolv/res_init.c): "nameserver" at the start of a line, then spaces or tabs,
# then the address up to the next space, tab or newline (a "#" or ";" in it makes it unusable).
_NAMESERVER_LINE = re.compile(rb"nameserver[ \t]+([^ \t\n]*)")
_IPV4_TEXT = re.compile(rb"[0-9A-Fa-fXx.]+")  # inet_aton's alphabet: 10.1, 0x0a000003, 010.0.0.1 too


def host_nameservers(resolv_conf: str) -> list[tuple[str, int]]:
    """The servers of a resolv.conf as glibc reads them, each on port 53: the first MAX_NAMESERVERS
    ``nameserver`` lines with an address glibc takes (others are skipped, as glibc skips them).
    Read without dnspython, so a run whose agent never resolves a name does not load it. Raises
    DnsConfigError, naming what was wrong, when the file gives no usable server (where glibc would
    try 127.0.0.1: the stub does not guess)."""
    try:
        with open(resolv_conf, "rb") as conf:
            lines = [line.split(b"\0", 1)[0] for line in conf.read().split(b"\n")]  # C strings end at NUL
    except OSError as exc:
        raise _no_server(resolv_conf, exc.strerror) from None
    servers, unusable = [], []
    for line in lines:
        match = _NAMESERVER_LINE.match(line)
        if match is None:
            continue
        address = _server_address(match.group(1))
        if address is None:
            unusable.append(repr(line.decode("utf-8", "replace").strip()))
        elif len(servers) < MAX_NAMESERVERS:
            servers.append((address, 53))
    if not servers:
        why = f"no IP address in {', '.join(unusable[:3])}" if unusable else "no nameserver line"
        raise _no_server(resolv_conf, why)
    return servers


def _server_address(token: bytes) -> str | None:
    """The address glibc makes of a nameserver token, as text dnspython can send to; None if none.

    IPv4 in inet_aton's forms (the whole token); else IPv6 with an optional %scope, read as glibc
    reads it (__inet6_scopeid_pton). The scope is kept only where it matters, on link-scoped
    addresses: on a global address the kernel ignores it, and dnspython would refuse the replies."""
    if _IPV4_TEXT.fullmatch(token):
        try:
            return socket.inet_ntoa(socket.inet_aton(token.decode("ascii")))
        except OSError:
            return None
    address, has_scope, scope = token.partition(b"%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, address.decode("ascii"))
    except (OSError, UnicodeDecodeError):
        return None
    text = socket.inet_ntop(socket.AF_INET6, packed)
    scope_id = _scope_id(os.fsdecode(scope)) if has_scope and _link_scoped(packed) else 0
    return f"{text}%{scope_id}" if scope_id else text


def _link_scoped(packed: bytes) -> bool:
    """fe80::/10, or multicast of interface-local or link-local scope: where glibc looks a scope's
    interface name up."""
    return (packed[0] == 0xFE and packed[1] & 0xC0 == 0x80) or (packed[0] == 0xFF and packed[1] & 0x0F in (1, 2))


def _scope_id(scope: str) -> int:
    """glibc's: the interface of that name, else the scope when it is all digits and fits 32 bits, else 0."""
    try:
        return socket.if_nametoindex(scope)
    except (OSError, ValueError):  # ValueError: a NUL in it
        pass
    significant = scope.lstrip("0") or "0"  # strtoull's reading: leading zeros count for nothing
    if not (scope.isascii() and scope.isdigit() and len(significant) <= 10):  # int() refuses 4300+ digits
        return 0
    return int(significant) if int(significant) <= 0xFFFFFFFF else 0


def forward(query: dns.message.Message, upstream: list[tuple[str, int]], timeout: float) -> dns.message.Message:
    """The first useful answer from ``upstream``, tried in order; raises UpstreamError when none answers.

    dnspython checks that an answer matches the query (id, question, source address); anything
    else arriving on the query's socket is ignored until the timeout."""
    import dns.query
    import dns.rcode

    try_next = (dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP)  # "this server could not help"
    last_answer = None
    failures = []
    for host, port in upstream:
        try:
            answer, _ = dns.query.udp_with_fallback(query, host, timeout=timeout, port=port,
                                                    ignore_unexpected=True)
        except Exception as exc:  # noqa: BLE001 - timeouts, unreachable ports, malformed answers alike
            failures.append(f"{host}:{port}: {type(exc).__name__}: {exc or 'no answer'}")
            continue
        if answer.rcode() not in try_next:
            return answer
        last_answer = answer
        failures.append(f"{host}:{port}: {dns.rcode.to_text(answer.rcode())}")
    if last_answer is not None:
        return last_answer
    raise UpstreamError("; ".join(failures) or "no upstream server configured")
