"""Socket options and control messages that would send a decided packet somewhere else: the
supervisor sends and connects on the agent's own socket, so a source route set on it goes to
the route's first hop, and an interface or a foreign source address leaves past the host's routing."""

from __future__ import annotations

import errno
import socket
import struct
import sys
import threading
import uuid
from pathlib import Path

import pytest

from sandbox import _netmsg, seccomp
from tests.escapes.conftest import loopback_udp, native, sandboxed

pytestmark = pytest.mark.kernel
OPTIONS = [option for options in seccomp.HOST_SOCKET_OPTIONS.values() for option, _level, _optname in options]
LOOPBACK_ONLY = """agent a {{
  default deny
  rules {{
    permit shell/exec
    permit fs/*
    permit net/send host: 127.0.0.1 port: {port}
    permit net/send host: "::1" port: {port}
  }}
}}
"""


def test_routing_and_binding_options_are_refused(cbin, tmp_path):
    """Each option is taken natively (its value read, EFAULT for an unreadable one); in the sandbox
    the filter refuses it before the value is read."""
    assert native([cbin("source_route")]).lines() == {option: "ok errno:14" for option in OPTIONS}
    run = sandboxed(LOOPBACK_ONLY.format(port=9), [cbin("source_route")], tmp_path)
    assert run.lines() == {option: "errno:1 errno:1" for option in OPTIONS}, run.explain()


AGENT = r"""
import socket, struct, sys
port, marker = int(sys.argv[1]), sys.argv[2].encode()
LSRR = bytes([0x83, 7, 4, 127, 0, 0, 77, 0])  # loose source route, first hop 127.0.0.77
LOOPBACK6 = socket.inet_pton(socket.AF_INET6, "::1")
SEGMENTS = bytes([0, 4, 4, 1, 1, 0, 0, 0]) + LOOPBACK6 * 2  # segment routing header (type 4)
HOME_ADDRESS = bytes([0, 2, 2, 1, 0, 0, 0, 0]) + LOOPBACK6  # type 2, taken with Mobile IPv6
IP_RETOPTS, IP_PKTINFO = 7, 8  # not in the socket module

def attempt(name, send):
    try:
        send()
        print(f"{name}=ok")
    except OSError as err:
        print(f"{name}=errno:{err.errno}")

def udp(family=socket.AF_INET):
    return socket.socket(family, socket.SOCK_DGRAM)

def route_by_option():
    s = udp()
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, LSRR)
    s.sendto(marker + b" option", ("127.0.0.1", port))

def route_by_message():
    udp().sendmsg([marker + b" message"], [(socket.IPPROTO_IP, IP_RETOPTS, LSRR)], 0, ("127.0.0.1", port))

def route6_by_option():
    s = udp(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, SEGMENTS)
    s.sendto(marker + b" option6", ("::1", port))

def route6_by_message():
    udp(socket.AF_INET6).sendmsg([marker + b" message6"], [(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, HOME_ADDRESS)],
                                 0, ("::1", port))

def interface_by_message():
    pktinfo = struct.pack("=i4s4s", 1, bytes(4), bytes(4))  # ifindex 1 (lo)
    udp().sendmsg([marker + b" interface"], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, ("127.0.0.1", port))

def plain():
    udp().sendto(marker + b" plain", ("127.0.0.1", port))

def hop_limit_and_source():
    pktinfo = struct.pack("=i4s4s", 0, socket.inet_aton("127.0.0.1"), bytes(4))  # a source address only
    udp().sendmsg([marker + b" ttl"], [(socket.IPPROTO_IP, socket.IP_TTL, struct.pack("=i", 9)),
                                       (socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, ("127.0.0.1", port))

for name, send in (("route_by_option", route_by_option), ("route_by_message", route_by_message),
                   ("route6_by_option", route6_by_option), ("route6_by_message", route6_by_message),
                   ("interface_by_message", interface_by_message), ("plain", plain),
                   ("hop_limit_and_source", hop_limit_and_source)):
    attempt(name, send)
"""


class LoopbackSniffer:
    """Every packet on lo that carries ``marker``, as (destination, IPv6 next header or IPv4
    protocol, payload), read by a packet socket in the test process."""

    def __init__(self, marker: bytes):
        self.marker, self.seen = marker, []
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stopped.is_set():
            try:
                frame, address = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if address[2] == socket.PACKET_OUTGOING or self.marker not in frame:
                continue  # each loopback packet is seen leaving and arriving: keep one
            kind, packet = struct.unpack_from("!H", frame, 12)[0], frame[14:]
            payload = frame[frame.index(self.marker):]
            if kind == 0x0800:
                self.seen.append((socket.inet_ntoa(packet[16:20]), packet[9], payload))
            elif kind == 0x86DD:
                self.seen.append((socket.inet_ntop(socket.AF_INET6, packet[24:40]), packet[6], payload))

    def stop(self) -> list[tuple]:
        self.stopped.wait(0.5)  # the last packets of the agent are still being read
        self.stopped.set()
        self.thread.join(5)  # later tests launch sandboxes from this process: no thread may linger
        self.sock.close()
        return sorted(self.seen, key=lambda seen: seen[2])


@pytest.fixture
def sink():
    """A UDP socket on 127.0.0.1 that permitted datagrams reach."""
    with loopback_udp(timeout=5) as made:
        yield made


def run_agent(run, sink, workdir: Path):
    """``run`` the agent with a fresh marker; its printed results and what lo carried."""
    marker = uuid.uuid4().hex.encode()
    port = sink.getsockname()[1]
    sniffer = LoopbackSniffer(marker)
    try:
        outcome = run(LOOPBACK_ONLY.format(port=port), [sys.executable, "-c", AGENT, port, marker.decode()], workdir)
    finally:
        seen = sniffer.stop()
    return outcome, [(destination, protocol, payload.removeprefix(marker)) for destination, protocol, payload in seen]


UDP, ROUTING = 17, 43


def test_a_source_route_sends_to_its_first_hop_natively(sink, tmp_path):
    """Natively a loose source route, by option or per message, sends the datagram to 127.0.0.77, not
    to the address it was sent to; an IPv6 routing header is carried."""
    outcome, seen = run_agent(lambda policy, argv, workdir: native(argv), sink, tmp_path)
    lines = outcome.lines()
    home_address = lines.pop("route6_by_message")
    assert home_address in ("ok", "errno:22"), outcome.stderr  # a type 2 header needs Mobile IPv6
    assert lines == {"route_by_option": "ok", "route_by_message": "ok", "route6_by_option": "ok",
                     "interface_by_message": "ok", "plain": "ok", "hop_limit_and_source": "ok"}, outcome.stderr
    expected = [("127.0.0.1", UDP, b" interface"), ("127.0.0.77", UDP, b" message"),
                ("127.0.0.77", UDP, b" option"), ("::1", ROUTING, b" option6"), ("127.0.0.1", UDP, b" plain"),
                ("127.0.0.1", UDP, b" ttl")]
    if home_address == "ok":
        expected.insert(2, ("::1", ROUTING, b" message6"))
    assert seen == expected


def test_a_source_route_is_refused_in_the_sandbox(sink, tmp_path):
    """In the sandbox the route options and control messages, and an interface index, are refused
    (EPERM); a plain send and harmless control messages still reach the permitted address."""
    outcome, seen = run_agent(sandboxed, sink, tmp_path)
    assert outcome.lines() == {"route_by_option": "errno:1", "route_by_message": "errno:1",
                               "route6_by_option": "errno:1", "route6_by_message": "errno:1",
                               "interface_by_message": "errno:1", "plain": "ok", "hop_limit_and_source": "ok"}, \
        outcome.explain()
    assert seen == [("127.0.0.1", UDP, b" plain"), ("127.0.0.1", UDP, b" ttl")]
    assert {sink.recv(64).split()[-1], sink.recv(64).split()[-1]} == {b"plain", b"ttl"}


def control(level: int, kind: int, data: bytes) -> bytes:
    message = _netmsg.CMSGHDR.pack(_netmsg.CMSGHDR.size + len(data), level, kind) + data
    return message.ljust((len(message) + 7) & ~7, b"\0")


REFUSED_MESSAGES = {
    "SCM_CREDENTIALS": (socket.SOL_SOCKET, 2, struct.pack("=iII", 1, 0, 0)),
    "SO_MARK": (socket.SOL_SOCKET, 36, struct.pack("=I", 1)),
    "IP_OPTIONS": (socket.IPPROTO_IP, 4, bytes([0x83, 7, 4, 127, 0, 0, 77, 0])),
    "IP_RETOPTS": (socket.IPPROTO_IP, 7, bytes([0x83, 7, 4, 127, 0, 0, 77, 0])),
    "IP_PKTINFO with an interface": (socket.IPPROTO_IP, 8, struct.pack("=i4s4s", 2, bytes(4), bytes(4))),
    "IPV6_RTHDR": (socket.IPPROTO_IPV6, 57, bytes([0, 2, 2, 1, 0, 0, 0, 0]) + bytes(16)),
    "IPV6_2292RTHDR": (socket.IPPROTO_IPV6, 5, bytes([0, 2, 2, 1, 0, 0, 0, 0]) + bytes(16)),
    "IPV6_2292PKTOPTIONS": (socket.IPPROTO_IPV6, 6, bytes(8)),
    "IPV6_PKTINFO with an interface": (socket.IPPROTO_IPV6, 50, bytes(16) + struct.pack("=i", 2)),
    "IPV6_HOPOPTS": (socket.IPPROTO_IPV6, 54, bytes(8)),
}


@pytest.mark.parametrize("name", sorted(REFUSED_MESSAGES))
def test_control_messages_outside_the_list_are_refused(name):
    """A control message not in the list, or a pktinfo naming an interface, is EPERM, also after a
    harmless one."""
    harmless = control(socket.IPPROTO_IP, socket.IP_TTL, struct.pack("=i", 9))
    with pytest.raises(OSError) as refused:
        _netmsg.translate_control(lambda number: number, harmless + control(*REFUSED_MESSAGES[name]), [])
    assert refused.value.errno == errno.EPERM


def test_harmless_control_messages_pass_unchanged():
    """TTL, traffic class, a source-only pktinfo and UDP segmentation pass byte for byte."""
    messages = (control(socket.IPPROTO_IP, socket.IP_TTL, struct.pack("=i", 9))
                + control(socket.IPPROTO_IP, _netmsg.IP_PKTINFO, struct.pack("=i4s4s", 0, bytes(4), bytes(4)))
                + control(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, struct.pack("=i", 4))
                + control(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, bytes(16) + struct.pack("=i", 0))
                + control(socket.SOL_UDP, 103, struct.pack("=H", 1200)))
    assert _netmsg.translate_control(lambda number: number, messages, []) == messages
