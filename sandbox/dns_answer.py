"""Answerer: the reply to one DNS query message: FORMERR, NOTIMP, REFUSED, SERVFAIL or the relayed answer.

    parse (malformed: FORMERR, or nothing when even the header is unreadable or it is a response)
    -> check(name, type)            the supervisor's `net/dns` decision; False, or any error: REFUSED
    -> forward to the upstream servers (UDP, then TCP when truncated); none answers: SERVFAIL
    -> remember answered addresses in ``names``, then relay the answer with the agent's id
"""

from __future__ import annotations

import logging

import dns.edns
import dns.entropy
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query  # noqa: F401 - loaded with the Answerer, not by the first forward on a worker
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from sandbox.dns_names import NameMap
from sandbox.dns_stub import MAX_QUERY_BYTES, Check
from sandbox.dns_upstream import UpstreamError, forward

HEADER_BYTES = 12
REFUSED_TEXT = "denied by the sandbox policy"
_log = logging.getLogger("faramesh_sandbox.dns")

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


def name_text(name: dns.name.Name) -> str:
    """The form policies see: lower case, no trailing dot, special bytes escaped; the root is '.'."""
    return name.to_text(omit_final_dot=True).lower()


def answer_addresses(qname: dns.name.Name, response: dns.message.Message) -> list[tuple[str, int]]:
    """(address, ttl) of every A/AAAA record reached from ``qname`` through the answer's CNAMEs."""
    chain = {qname}
    cnames = {rrset.name: rrset[0].target for rrset in response.answer
              if rrset.rdtype == dns.rdatatype.CNAME and rrset.rdclass == dns.rdataclass.IN and len(rrset)}
    current = qname
    for _ in range(len(cnames)):  # bounded: a CNAME loop ends when every link was followed once
        current = cnames.get(current)
        if current is None or current in chain:
            break
        chain.add(current)
    return [(rdata.address, rrset.ttl) for rrset in response.answer
            if rrset.rdtype in _ADDRESS_TYPES and rrset.rdclass == dns.rdataclass.IN and rrset.name in chain
            for rdata in rrset]


def _reply(query: dns.message.Message, rcode: int, ede: tuple[int, str] | None = None) -> bytes:
    response = dns.message.make_response(query, recursion_available=True)
    response.set_rcode(rcode)
    if ede is not None and response.edns >= 0:
        response.use_edns(0, payload=response.payload, options=[dns.edns.EDEOption(*ede)])
    return response.to_wire()


def _header_only_formerr(wire: bytes) -> bytes | None:
    """FORMERR for a query whose header is readable but whose body is not; None when it is a response."""
    if len(wire) < HEADER_BYTES or wire[2] & 0x80:  # too short, or QR set: never answer an answer
        return None
    response = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
    response.flags = dns.flags.QR | (dns.flags.RD & int.from_bytes(wire[2:4], "big"))
    response.set_rcode(dns.rcode.FORMERR)
    return response.to_wire()


def _udp_limit(query: dns.message.Message) -> int:
    return max(512, query.payload) if query.edns >= 0 else 512


def servfail(wire: bytes) -> bytes | None:
    """SERVFAIL for a query, or None when it cannot be parsed."""
    try:
        return _reply(dns.message.from_wire(wire), dns.rcode.SERVFAIL)
    except Exception:  # noqa: BLE001 - unparseable: nothing to answer
        return None


class Answerer:
    """Decides and answers queries; thread-safe (``names`` has its own lock)."""

    def __init__(self, check: Check, upstream: list[tuple[str, int]], names: NameMap, timeout: float):
        self._check = check
        self._upstream = upstream
        self._names = names
        self._timeout = timeout

    def respond(self, wire: bytes, transport: str = "udp") -> bytes | None:
        """The reply to one query message (``transport`` "udp" or "tcp"), or None to send nothing."""
        try:
            return self._respond(wire, transport)
        except Exception as exc:  # noqa: BLE001 - fail closed: a bad packet never stops the stub
            _log.warning("dns: dropped a %d-byte query: %s: %s", len(wire), type(exc).__name__, exc)
            return None

    def _respond(self, wire: bytes, transport: str) -> bytes | None:
        if len(wire) > MAX_QUERY_BYTES:
            _log.warning("dns: dropped a %d-byte %s query (limit %d bytes)", len(wire), transport, MAX_QUERY_BYTES)
            return None
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - whatever dnspython rejects is malformed
            return _header_only_formerr(wire)
        if query.flags & dns.flags.QR:
            return None
        if query.opcode() != dns.opcode.QUERY:
            return _reply(query, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            return _reply(query, dns.rcode.FORMERR)
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:  # only Internet names are policy names
            return _reply(query, dns.rcode.REFUSED, (dns.edns.EDECode.NOT_SUPPORTED, "class not supported"))
        host, qtype = name_text(question.name), dns.rdatatype.to_text(question.rdtype)
        if not self._permitted(host, qtype):
            return _reply(query, dns.rcode.REFUSED, (dns.edns.EDECode.PROHIBITED, REFUSED_TEXT))
        agent_id = query.id
        query.id = dns.entropy.random_16()  # the upstream sees our id, never one the agent chose
        try:
            answer = forward(query, self._upstream, self._timeout)
        except UpstreamError as exc:
            _log.warning("dns: no upstream answer for %s %s: %s", host, qtype, exc)
            query.id = agent_id
            return _reply(query, dns.rcode.SERVFAIL)
        answer.id = agent_id
        self._names.record_all(host, answer_addresses(question.name, answer))  # before the agent can connect
        limit = _udp_limit(query) if transport == "udp" else 65535
        return answer.to_wire(max_size=limit, prefer_truncation=True)

    def _permitted(self, host: str, qtype: str) -> bool:
        try:
            return self._check(host, qtype) is True
        except Exception as exc:  # noqa: BLE001 - a failing decision denies
            _log.warning("dns: lookup of %s %s refused: the policy check failed: %s: %s",
                         host, qtype, type(exc).__name__, exc)
            return False

