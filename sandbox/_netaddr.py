"""Socket addresses as the kernel reads them, and back to canonical ``struct sockaddr`` bytes.

``parse`` interprets the bytes the agent passed (read once from its memory) the way the
kernel would for a socket of the given family and call, including its compatibility rules:
an AF_UNSPEC address disconnects on connect(), is an IPv4 address for an IPv4 datagram
send and bind, and means "no address" for an IPv6 datagram send; an IPv4 address on an IPv6
datagram socket (and an IPv4-mapped IPv6 address) reaches IPv4, while an IPv6 stream socket
refuses an IPv4 address. The supervisor then performs the call
with ``Target.sockaddr()``, bytes rebuilt from the decided values only, so what was decided
is exactly what the kernel acts on.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import NamedTuple

SOCKADDR_STORAGE = 128
SIN6_LEN_RFC2133 = 24  # a sockaddr_in6 without the scope id: the least IPv6 takes
MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d
SUN_PATH_MAX = 108
_FAMILY = struct.Struct("=H")  # sa_family, host order
_IN = struct.Struct("=H2s4s8x")  # family (host order), port (network order), address
_IN6 = struct.Struct("=H2s4s16sI")  # family, port, flowinfo (network order), address, scope id
_PORT_IN = struct.Struct("!H4s")  # sockaddr_in after the family: port, address
_PORT = struct.Struct("!H")
_FLOWINFO = struct.Struct("!I")

DISCONNECT = "disconnect"  # connect(AF_UNSPEC): dissolve the association
NO_ADDRESS = "no-address"  # a send that goes to the connected peer
UNNAMED = "unnamed"  # an AF_UNIX address of just the family: autobind on bind()


def _fail(err: int, what: str) -> OSError:
    return OSError(err, f"{what}: {errno.errorcode.get(err, err)}")


class Target(NamedTuple):  # a tuple: built once per call, cheaper than a frozen dataclass
    """A decided address: inet / inet6 (ip, port) or unix (path, or an abstract name)."""

    family: str
    ip: str = ""  # where packets go: an IPv4-mapped IPv6 address is shown as IPv4
    port: int = 0
    flowinfo: int = 0
    scope_id: int = 0
    path: bytes = b""  # unix pathname, as the agent gave it
    abstract: bytes | None = None  # unix abstract name, without its leading NUL
    v6_socket: bool = False  # the address is sent as sockaddr_in6 (an IPv6 socket)

    def sockaddr(self) -> bytes:
        port = _PORT.pack(self.port)
        if self.family == "unix":
            name = b"\0" + self.abstract if self.abstract is not None else self.path + b"\0"
            return _FAMILY.pack(socket.AF_UNIX) + name
        if self.v6_socket:  # IPv4 on an IPv6 socket travels as a mapped address
            packed = socket.inet_pton(socket.AF_INET6, self.ip) if self.family == "inet6" \
                else MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, self.ip)
            return _IN6.pack(socket.AF_INET6, port, _FLOWINFO.pack(self.flowinfo), packed, self.scope_id)
        return _IN.pack(socket.AF_INET, port, socket.inet_pton(socket.AF_INET, self.ip))

    def with_ip_port(self, ip: str, port: int) -> "Target":
        family = "inet6" if ":" in ip else "inet"
        return Target(family, ip, port, v6_socket=self.v6_socket or family == "inet6")


def _inet(raw: bytes, v6_socket: bool) -> Target:
    if len(raw) < _IN.size:
        raise _fail(errno.EINVAL, f"sockaddr_in of {len(raw)} bytes")
    port, packed = _PORT_IN.unpack_from(raw, 2)
    return Target("inet", socket.inet_ntop(socket.AF_INET, packed), port, v6_socket=v6_socket)


def _inet6(raw: bytes) -> Target:
    if len(raw) < SIN6_LEN_RFC2133:
        raise _fail(errno.EINVAL, f"sockaddr_in6 of {len(raw)} bytes")
    padded = raw[:_IN6.size].ljust(_IN6.size, b"\0")
    _family, port, flowinfo, packed, scope_id = _IN6.unpack(padded)
    port_number = _PORT.unpack(port)[0]
    if packed.startswith(MAPPED_PREFIX):
        return Target("inet", socket.inet_ntop(socket.AF_INET, packed[12:]), port_number, v6_socket=True)
    return Target("inet6", socket.inet_ntop(socket.AF_INET6, packed), port_number, _FLOWINFO.unpack(flowinfo)[0],
                  scope_id, v6_socket=True)


def _unix(raw: bytes) -> Target | str:
    name = raw[2:]
    if not name:
        return UNNAMED
    if name[0] == 0:
        return Target("unix", abstract=name[1:])
    path = name.split(b"\0", 1)[0]
    if len(path) >= SUN_PATH_MAX:
        raise _fail(errno.EINVAL, "unix socket path longer than sun_path")
    return Target("unix", path=path)


def parse(sock_family: int, raw: bytes, call: str, datagram: bool = False) -> Target | str:
    """The address ``raw`` means for a ``sock_family`` socket in ``call`` (connect, bind, send).

    Returns a Target, DISCONNECT, NO_ADDRESS or UNNAMED; raises OSError with the errno the
    kernel would give for an address it refuses."""
    if len(raw) > SOCKADDR_STORAGE:
        raise _fail(errno.EINVAL, f"address of {len(raw)} bytes")
    if len(raw) < 2:
        raise _fail(errno.EINVAL, f"address of {len(raw)} bytes")
    family = _FAMILY.unpack_from(raw)[0]
    if sock_family == socket.AF_UNIX:
        if family == socket.AF_UNSPEC and call == "connect":
            return DISCONNECT
        if family != socket.AF_UNIX:
            raise _fail(errno.EINVAL, f"address family {family} on a unix socket")
        return _unix(raw)
    if sock_family not in (socket.AF_INET, socket.AF_INET6):
        raise _fail(errno.EAFNOSUPPORT, f"socket family {sock_family}")
    v6 = sock_family == socket.AF_INET6
    if family == socket.AF_UNSPEC:
        if call == "connect":
            return DISCONNECT
        if v6 and call == "send" and datagram:
            return NO_ADDRESS
        if v6:
            raise _fail(errno.EAFNOSUPPORT, "AF_UNSPEC address on an IPv6 socket")
        if call == "bind" and raw[4:8] != bytes(4):
            raise _fail(errno.EAFNOSUPPORT, "AF_UNSPEC bind of an address other than 0.0.0.0")
        family = socket.AF_INET  # IPv4 bind and datagram send read AF_UNSPEC as AF_INET
    if family == socket.AF_INET:
        if v6 and call == "bind":
            raise _fail(errno.EINVAL, "IPv4 address to bind an IPv6 socket")
        if v6 and not datagram:  # TCP over IPv6 takes only sockaddr_in6 (tcp_v6_connect); UDP maps it
            raise _fail(errno.EINVAL if len(raw) < SIN6_LEN_RFC2133 else errno.EAFNOSUPPORT,
                        "IPv4 address on an IPv6 stream socket")
        return _inet(raw, v6)
    if family == socket.AF_INET6 and v6:
        return _inet6(raw)
    raise _fail(errno.EAFNOSUPPORT, f"address family {family} on a family {sock_family} socket")
