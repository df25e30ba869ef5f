"""Forwarding a permitted query to the host's resolvers: UDP first, TCP when the answer is truncated."""

from __future__ import annotations

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.resolver

# Answers that say "this server could not help": the next upstream server is tried.
_TRY_NEXT = frozenset({dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP})


class DnsConfigError(Exception):
    """The host's resolver configuration gives no server to forward to."""

    def __init__(self, message: str, hint: str):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} — hint: {hint}")


class UpstreamError(Exception):
    """No upstream server gave an answer."""


def host_nameservers(resolv_conf: str) -> list[tuple[str, int]]:
    """The ``nameserver`` entries of a resolv.conf file, each on port 53."""
    try:
        resolver = dns.resolver.Resolver(filename=resolv_conf, configure=True)
    except (OSError, dns.exception.DNSException) as exc:
        raise DnsConfigError(f"{resolv_conf}: no DNS server to forward the sandbox's lookups to ({exc})",
                             f"add a 'nameserver ADDRESS' line to {resolv_conf}, or pass upstream servers "
                             "explicitly") from None
    return [(str(server), 53) for server in resolver.nameservers]


def forward(query: dns.message.Message, upstream: list[tuple[str, int]], timeout: float) -> dns.message.Message:
    """The first useful answer from ``upstream``, tried in order; raises UpstreamError when none answers.

    dnspython checks that an answer matches the query (id, question, source address); anything
    else arriving on the query's socket is ignored until the timeout."""
    last_answer = None
    failures = []
    for host, port in upstream:
        try:
            answer, _ = dns.query.udp_with_fallback(query, host, timeout=timeout, port=port,
                                                    ignore_unexpected=True)
        except Exception as exc:  # noqa: BLE001 - timeouts, unreachable ports, malformed answers alike
            failures.append(f"{host}:{port}: {type(exc).__name__}: {exc or 'no answer'}")
            continue
        if answer.rcode() not in _TRY_NEXT:
            return answer
        last_answer = answer
        failures.append(f"{host}:{port}: {dns.rcode.to_text(answer.rcode())}")
    if last_answer is not None:
        return last_answer
    raise UpstreamError("; ".join(failures) or "no upstream server configured")
