"""Forwarding a permitted query to the host's resolvers: UDP first, TCP when the answer is truncated.

dnspython is imported by forward(), at the first lookup: a run whose agent never resolves a name
does not load it (about 60 ms of every start-up; docs/benchmarks.md)."""

from __future__ import annotations

import ipaddress
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


def host_nameservers(resolv_conf: str) -> list[tuple[str, int]]:
    """The servers of a resolv.conf as glibc reads them, each on port 53: the first MAX_NAMESERVERS
    ``nameserver`` lines whose address is an IP address (others are skipped, as glibc skips them).
    Read without dnspython, so a run whose agent never resolves a name does not load it. Raises
    DnsConfigError, naming what was wrong, when the file gives no usable server."""
    try:
        with open(resolv_conf, "rb") as conf:
            lines = conf.read().splitlines()
    except OSError as exc:
        raise _no_server(resolv_conf, exc.strerror) from None
    servers, unusable = [], []
    for line in lines:
        tokens = line.split()
        if tokens[:1] != [b"nameserver"]:
            continue
        try:
            servers.append((str(ipaddress.ip_address(tokens[1].decode("ascii"))), 53))
        except (IndexError, UnicodeDecodeError, ValueError):
            unusable.append(repr(line.decode("utf-8", "replace").strip()))
    if not servers:
        why = f"no IP address in {', '.join(unusable[:3])}" if unusable else "no nameserver line"
        raise _no_server(resolv_conf, why)
    return servers[:MAX_NAMESERVERS]


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
