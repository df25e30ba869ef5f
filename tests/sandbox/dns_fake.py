"""A tiny authoritative DNS server on 127.0.0.1 for the DNS stub's tests (UDP and TCP on one port)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

# name -> records as (type, ttl, rdata text); documentation addresses, never contacted
ZONE = {
    "www.allowed.test.": [("CNAME", 300, "edge.cdn.test.")],
    "edge.cdn.test.": [("A", 120, "192.0.2.10"), ("AAAA", 120, "2001:db8::10")],
    "plain.test.": [("A", 5, "192.0.2.20")],
    "txt.test.": [("TXT", 300, '"hello world"')],
    "big.test.": [("TXT", 300, '"' + "x" * 200 + f'{i}"') for i in range(10)],
    "shared-a.test.": [("A", 300, "192.0.2.50")],
    "shared-b.test.": [("A", 300, "192.0.2.50")],
    "slow.test.": [("A", 300, "192.0.2.60")],
}
SLOW_SECONDS = 0.3


class FakeUpstream:
    """A tiny authoritative server for ZONE on one 127.0.0.1 port, UDP and TCP; records what it saw."""

    def __init__(self):
        self.seen: list[tuple[str, str, str, int]] = []  # (name, type, transport, id)
        for _ in range(50):  # dnspython falls back to TCP on the same port: find one free for both
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.tcp.bind(self.udp.getsockname())
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(16)
        self.address = self.udp.getsockname()
        self._pool = ThreadPoolExecutor(16)
        for loop in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=loop, daemon=True).start()

    def answer(self, wire: bytes, transport: str) -> bytes:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        self.seen.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype), transport, query.id))
        if question.name.to_text() == "slow.test.":
            time.sleep(SLOW_SECONDS)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        records = ZONE.get(question.name.to_text().lower())
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        owner = question.name
        while records:
            kinds = {rtype for rtype, _, _ in records}
            wanted = [r for r in records if r[0] == dns.rdatatype.to_text(question.rdtype)]
            chosen = wanted or ([r for r in records if r[0] == "CNAME"] if "CNAME" in kinds else [])
            if not chosen:
                break
            rtype, ttl = chosen[0][0], chosen[0][1]
            response.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, *[r[2] for r in chosen]))
            if rtype != "CNAME":
                break
            owner = dns.name.from_text(chosen[0][2])
            records = ZONE.get(owner.to_text())
        limit = (max(512, query.payload) if query.edns >= 0 else 512) if transport == "udp" else 65535
        return response.to_wire(max_size=limit, prefer_truncation=True)

    def _serve_udp(self):
        while True:
            try:
                wire, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            if not wire:  # shut down
                return
            self._pool.submit(lambda w=wire, p=peer: self.udp.sendto(self.answer(w, "udp"), p))

    def _serve_tcp(self):
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                length = int.from_bytes(conn.recv(2), "big")
                wire = b""
                while len(wire) < length:
                    wire += conn.recv(length - len(wire))
                reply = self.answer(wire, "tcp")
                conn.sendall(len(reply).to_bytes(2, "big") + reply)

    def close(self):
        for sock in (self.udp, self.tcp):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recvfrom or accept
            except OSError:
                pass
            sock.close()
        self._pool.shutdown(wait=False)
