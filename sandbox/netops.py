"""Network calls performed on the agent's behalf: every connection, bind and datagram a decision.

The agent lives in a network namespace with only loopback. Its internet sockets are created
by the supervisor in the supervisor's own namespace and handed over (ADDFD). For connect,
bind, listen, sendto, sendmsg and sendmmsg the supervisor takes its own duplicate of the agent's
socket (pidfd_getfd: the same open file description, so non-blocking mode and options set
by the agent apply), reads the address and the data once, decides, and performs the call
on the duplicate; the agent gets the result. Nothing is ever CONTINUEd, so rewriting the
address after the read (another thread, shared memory) changes nothing.

``prepare`` resolves a call into a NetOp: the tool call to decide (None when nothing needs
a decision: socket creation, sends to the connected peer, the DNS stub redirect, abstract
and unnamed unix addresses) and the action to perform once it is permitted, or a refusal of
the broker's own (UDP to a host the egress inspects) recorded in place of a decision.
"""

from __future__ import annotations

import _socket
import dataclasses
import errno
import fcntl
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple

import psutil

from policy.decision import Decision, deny
from sandbox import _libc_net, _netaddr, _netlisten
from sandbox._netaddr import Target
from sandbox._netguard import ProbeCache, guarded_address, no_names
from sandbox._netmsg import translate_control
from sandbox._netpidfd import TaskFiles
from sandbox._netunix import UnixPath
from sandbox.dns_names import NameMap

STUB_ADDRESS = "127.0.0.53"  # sandbox.dns_stub.STUB_ADDRESS: the agent's resolv.conf names it
DNS_PORT = 53
MSG_FASTOPEN = 0x20000000
SOCK_NONBLOCK, SOCK_CLOEXEC = socket.SOCK_NONBLOCK, socket.SOCK_CLOEXEC
# (family, type) -> protocols the supervisor creates; anything else fails as unsupported.
PROTOCOLS = {socket.SOCK_STREAM: {0: "tcp", socket.IPPROTO_TCP: "tcp"},
             socket.SOCK_DGRAM: {0: "udp", socket.IPPROTO_UDP: "udp"}}
UNIX_KINDS = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", socket.SOCK_SEQPACKET: "seqpacket"}
FAMILY_NAMES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_UNIX: "unix"}


def host_addresses_now() -> frozenset[str]:
    """This host's interface addresses, spelled as the decoder spells them."""
    return frozenset(socket.inet_ntop(entry.family, socket.inet_pton(entry.family, entry.address.split("%", 1)[0]))
                     for entries in psutil.net_if_addrs().values() for entry in entries
                     if entry.family in (socket.AF_INET, socket.AF_INET6))


@dataclass(frozen=True)
class NetContext:
    """What the network decisions need from the launcher.

    ``names(ip)``: the DNS name the agent looked up for ``ip`` (the DNS stub's
    ``NameMap.host_for``), or None; ``dns_redirect``: "udp"/"tcp" -> the DNS stub's
    host-side address, where traffic to STUB_ADDRESS:53 goes; ``host_addresses``: the
    host's own interface addresses, guarded like loopback; ``trusted_unix_paths``: the
    sandbox's own sockets as the agent sees them (the SDK socket), connected undecided."""

    names: Callable[[str], str | None] = no_names
    dns_redirect: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    host_addresses: frozenset[str] = frozenset()
    trusted_unix_paths: frozenset[str] = frozenset()
    # (name or None, ip, port, socket family) -> (egress proxy address, register(local address)) or
    # None: TCP connections the egress inspects go to its proxy instead (docs/egress.md)
    intercept: Callable[[str | None, str, int, str], tuple[tuple[str, int], Callable] | None] | None = None
    probes: ProbeCache = field(default_factory=ProbeCache, compare=False)
    task_files: TaskFiles = field(default_factory=TaskFiles, compare=False)  # one pidfd per agent task
    # The NameMap behind ``names`` when it is a NameMap's host_for (its changes can be followed), else None.
    name_memory: NameMap | None = field(init=False, default=None, compare=False)

    def __post_init__(self):
        owner = getattr(self.names, "__self__", None)
        if isinstance(owner, NameMap) and getattr(self.names, "__func__", None) is NameMap.host_for:
            object.__setattr__(self, "name_memory", owner)

    @property
    def names_followed(self) -> bool:
        """Whether a decision's ``host`` can be known to still hold: no names, or a NameMap's."""
        return self.names is no_names or self.name_memory is not None

    @classmethod
    def for_host(cls, names: Callable[[str], str | None] | None = None,
                 dns_redirect: Mapping[str, tuple[str, int]] | None = None) -> "NetContext":
        """A context guarding the addresses this host's interfaces have right now."""
        return cls(names or no_names, dict(dns_redirect or {}), host_addresses_now())

    def with_host_addresses_now(self) -> "NetContext":
        """The same context guarding the addresses the host has now (a sandbox made ahead of its
        command: launcher/serve.py)."""
        return dataclasses.replace(self, host_addresses=host_addresses_now())

    def trusting(self, *agent_paths: str) -> "NetContext":
        """This context with ``agent_paths`` added to the trusted unix sockets."""
        return dataclasses.replace(self, trusted_unix_paths=self.trusted_unix_paths | frozenset(agent_paths))


@dataclass
class NetResult:
    kind: str  # "fd": inject value (ours, closed after), "value": the syscall's return value
    value: int
    cloexec: bool = False
    # A write into the agent's memory before it is answered (sendmmsg's msg_len): the supervisor
    # makes it only while no exec decision has the agent frozen, and only if the task still waits.
    write_back: Callable[[], None] | None = None


class Repeatable(NamedTuple):
    """A plain connect the compiled receiver may answer again (sandbox/fastpath_net.py): the
    socket's kind and the address bytes as the agent passed them, the address performed, the
    DNS names' generation read before ``host`` was, and when the name used expires."""

    domain: int
    kind: int
    protocol: int
    address: bytes
    target: bytes
    generation: int
    expires_ns: int  # time.monotonic_ns(); 0: no DNS name was used


NAME_EXPIRY_MARGIN_NS = 1_000_000  # a remembered decision ends this much before its name does


class NetOp:
    """One prepared call; holds our duplicate of the agent's socket until it is performed
    (or close()). ``reads_task``: preparing it read the task's fd table, memory or /proc,
    which count only if the notification is still valid afterwards (a socket() reads none).
    ``repeatable``: set for a plain internet connect (see Repeatable). ``refusal``: a DENY the
    supervisor records and answers instead of asking the policy (the action is never performed)."""

    def __init__(self, tool: str | None, args: dict, action: Callable[[], NetResult], fds: list[int],
                 guarded: bool = False, reads_task: bool = True, repeatable: Repeatable | None = None,
                 refusal: Decision | None = None):
        self.tool, self.args, self.guarded, self.reads_task = tool, args, guarded, reads_task
        self.repeatable, self.refusal = repeatable, refusal
        self._action, self._fds = action, fds

    def perform(self) -> NetResult:
        """Run the call, then drop our duplicates before the agent is answered: the agent's
        own close() of the socket stays the last one (a TCP close is its cost, as natively)."""
        try:
            return self._action()
        finally:
            self.close()

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())


@dataclass
class _Socket:
    fd: int  # our duplicate
    family: int
    kind: int  # SOCK_STREAM, SOCK_DGRAM...
    protocol: str
    proto: int = 0  # SO_PROTOCOL


def _value(call: Callable[[], int | None]) -> Callable[[], NetResult]:
    return lambda: NetResult("value", call() or 0)


def _create_socket(decoded: dict) -> NetOp:
    domain, requested, proto = decoded["domain"], decoded["type"], decoded["protocol"]
    kind = requested & 0xF
    if requested & ~(0xF | SOCK_NONBLOCK | SOCK_CLOEXEC):
        raise OSError(errno.EINVAL, f"socket type {requested:#x}")
    if domain not in (socket.AF_INET, socket.AF_INET6) or proto not in PROTOCOLS.get(kind, {}):
        raise OSError(errno.EPROTONOSUPPORT, f"socket({domain}, {requested:#x}, {proto})")

    def create() -> NetResult:
        made = _socket.socket(domain, kind | (requested & SOCK_NONBLOCK), proto)
        return NetResult("fd", made.detach(), cloexec=bool(requested & SOCK_CLOEXEC))
    return NetOp(None, {}, create, [], reads_task=False)


def socket_kind(fd: int) -> tuple[int, int, int]:
    """(family, type, protocol) of socket ``fd``: SO_DOMAIN, SO_TYPE, SO_PROTOCOL; ENOTSOCK otherwise."""
    # Family, type and protocol given, so the constructor calls nothing; the options are read
    # without the socket's lock (getsockname, which the bare constructor calls, waits for it
    # while holding the GIL: an agent thread blocked in a send would stall the supervisor).
    probe = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
    try:
        return (probe.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN), probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
                probe.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
    finally:
        probe.detach()


def _duplicate(ctx: NetContext, pid: int, number: int) -> _Socket:
    fd = ctx.task_files.duplicate(pid, number)
    try:
        family, kind, proto = socket_kind(fd)
    except BaseException:
        os.close(fd)
        raise
    name = PROTOCOLS.get(kind, {}).get(proto, "") if family != socket.AF_UNIX else UNIX_KINDS.get(kind, str(kind))
    return _Socket(fd, family, kind, name or str(proto), proto)


SIOCGSKNS = 0x894C  # ioctl: a descriptor of the network namespace a socket was made in


def _same_network_namespace(sock_fd: int, pid: int) -> None:
    """An abstract name is looked up in the namespace of the socket, not of the task: a host
    socket the agent was handed (an unconnected one as its stdin) would reach the host's abstract
    sockets (`faramesh-sandbox serve`'s among them). Refused unless it is the agent's own."""
    try:
        namespace = fcntl.ioctl(sock_fd, SIOCGSKNS)
        try:
            theirs = os.fstat(namespace)
        finally:
            os.close(namespace)
        agents = os.stat(f"/proc/{pid}/ns/net")
    except OSError as err:
        raise OSError(errno.EACCES, f"the socket's network namespace cannot be read ({err.strerror})") from None
    if (theirs.st_dev, theirs.st_ino) != (agents.st_dev, agents.st_ino):
        raise OSError(errno.EACCES, "an abstract unix address on a socket from outside the sandbox's network namespace")


class _Builder:
    """Turns one decoded call on one socket into (tool, args, action, guarded)."""

    def __init__(self, ctx: NetContext, pid: int, decoded: dict, sock: _Socket, fds: list[int]):
        self.ctx, self.pid, self.decoded, self.sock, self.fds = ctx, pid, decoded, sock, fds
        self.unix_path: UnixPath | None = None  # a resolved pathname: performed as the agent
        self.repeatable: Repeatable | None = None
        self.refusal: Decision | None = None

    # -- addresses ----------------------------------------------------------------

    def inet_args(self, target: Target, with_host: bool = True) -> tuple[dict, bool]:
        guarded = guarded_address(target.ip, self.ctx.host_addresses)
        args = {"ip": target.ip, "port": target.port, "family": target.family, "protocol": self.sock.protocol}
        if with_host:
            # A guarded address is named by its literal, never by a DNS name that led to it.
            args["host"] = target.ip if guarded else (self.ctx.names(target.ip) or target.ip)
        return args, guarded

    def redirect(self, target: Target) -> Target | None:
        """The DNS stub's real address for traffic to STUB_ADDRESS:53, else None."""
        if (target.ip, target.port) != (STUB_ADDRESS, DNS_PORT):
            return None
        real = self.ctx.dns_redirect.get(self.sock.protocol)
        return target.with_ip_port(*real) if real else None

    def unix(self, target: Target, call: str) -> tuple[str | None, dict, bytes]:
        """(tool, args, address to use) for a unix address: pathnames are resolved in the
        agent's view and decided; abstract names stay in the agent's network namespace."""
        if target.abstract is not None:
            _same_network_namespace(self.sock.fd, self.pid)
            return None, {}, target.sockaddr()
        resolved = UnixPath.resolve(self.pid, target.path, create=call == "bind")
        self.fds.extend(resolved.fds)
        path = resolved.path.decode("utf-8", "surrogateescape")
        self.unix_path = resolved
        if call != "bind" and path in self.ctx.trusted_unix_paths:
            return None, {}, resolved.sockaddr
        tool = "net/listen" if call == "bind" else "net/connect"
        return tool, {"family": "unix", "path": path, "protocol": self.sock.protocol}, resolved.sockaddr

    def as_agent(self, call: Callable[[], int | None]) -> Callable[[], NetResult]:
        resolved = self.unix_path
        if resolved is None:
            return _value(call)
        return lambda: NetResult("value", resolved.run_as_agent(call) or 0)

    def agent_fd(self, number: int) -> int:
        """Our duplicate of the agent's fd ``number`` (an SCM_RIGHTS fd it sends)."""
        return self.ctx.task_files.duplicate(self.pid, number)

    # -- calls ---------------------------------------------------------------------

    def local_family(self) -> bool:
        """Netlink (route only: the filter admits no other) is per network namespace: its
        addresses are performed as given, with no decision. Any other family fails closed."""
        if self.sock.family == socket.AF_NETLINK:
            return True
        if self.sock.family not in FAMILY_NAMES:
            raise OSError(errno.EAFNOSUPPORT, f"socket family {self.sock.family}")
        return False

    def connect(self):
        if self.local_family():
            fd, raw = self.sock.fd, self.decoded["addr"] or b""
            return None, {}, _value(lambda: _libc_net.connect(fd, raw)), False
        target = _netaddr.parse(self.sock.family, self.decoded["addr"] or b"", "connect",
                                datagram=self.sock.kind == socket.SOCK_DGRAM)
        fd = self.sock.fd
        if target == _netaddr.DISCONNECT:
            return None, {}, _value(lambda: _libc_net.connect(fd, b"\0\0" + b"\0" * 14)), False
        if target.family == "unix":
            tool, args, address = self.unix(target, "connect")
            return tool, args, self.as_agent(lambda: _libc_net.connect(fd, address)), False
        redirected = self.redirect(target)
        if redirected is not None:
            return None, {}, _value(lambda: _libc_net.connect(fd, redirected.sockaddr())), False
        memory = self.ctx.name_memory
        generation = memory.generation if memory is not None else 0  # before host is read
        args, guarded = self.inet_args(target)
        via = self.intercepted(args, target, guarded)
        if via is not None:
            return "net/connect", args, _value(lambda: _connect_via(fd, target, via)), guarded
        if self.refuse_datagram(args, target, guarded):
            return "net/connect", args, _refused, guarded
        address = target.sockaddr()
        self.repeatable = self.repeat(target, args, address, generation)
        return "net/connect", args, _value(lambda: _libc_net.connect(fd, address)), guarded

    def repeat(self, target: Target, args: dict, address: bytes, generation: int) -> Repeatable | None:
        """What the compiled receiver needs to answer this connect again, or None: the egress
        inspects connections (its proxy registers each), the socket is not TCP or UDP, or
        the DNS names behind ``host`` cannot be followed."""
        if self.ctx.intercept is not None or self.sock.protocol not in ("tcp", "udp") or not self.ctx.names_followed:
            return None
        expires_ns = 0
        if args["host"] != target.ip:  # named by a lookup: the decision lasts as long as the name
            looked_up_ns = time.monotonic_ns()  # before the lookup: the name lives at least ``left`` from here
            found = self.ctx.name_memory.lookup(target.ip)
            if found is None or found[0] != args["host"]:
                return None
            expires_ns = looked_up_ns + int(found[1] * 1e9) - NAME_EXPIRY_MARGIN_NS
            if expires_ns <= 0:
                return None
        raw = self.decoded["addr"] or b""
        return Repeatable(self.sock.family, self.sock.kind, self.sock.proto, raw, address, generation, expires_ns)

    def inspected(self, args: dict, target: Target, guarded: bool):
        """The egress proxy's (address, register) when the egress inspects ``target``, else None."""
        if self.ctx.intercept is None or guarded:
            return None
        name = args["host"] if args["host"] != target.ip else None
        return self.ctx.intercept(name, target.ip, target.port, "inet6" if target.v6_socket else "inet")

    def intercepted(self, args: dict, target: Target, guarded: bool):
        """The egress proxy's (address, register) when it inspects this TCP connection, else None."""
        return self.inspected(args, target, guarded) if self.sock.kind == socket.SOCK_STREAM else None

    def refuse_datagram(self, args: dict, target: Target, guarded: bool) -> bool:
        """A UDP connect or datagram to a host:port the egress inspects is refused (self.refusal):
        HTTP/3 (QUIC) to it would pass the HTTP rules by, permitted by the net/connect rule that
        lets the inspected TCP connections out."""
        if self.sock.kind != socket.SOCK_DGRAM or self.inspected(args, target, guarded) is None:
            return False
        self.refusal = deny("EGRESS_INSPECTED_UDP",
                            f"{args['host']}:{target.port} is inspected by the HTTP egress: UDP to it (HTTP/3, "
                            f"QUIC) would bypass the HTTP rules; only TCP through the egress reaches it")
        return True

    def bind(self):
        if self.local_family():
            fd, raw = self.sock.fd, self.decoded["addr"] or b""
            return None, {}, _value(lambda: _libc_net.bind(fd, raw)), False
        target = _netaddr.parse(self.sock.family, self.decoded["addr"] or b"", "bind")
        fd = self.sock.fd
        if target == _netaddr.UNNAMED:
            return None, {}, _value(lambda: _libc_net.bind(fd, b"\x01\x00")), False
        if target.family == "unix":
            tool, args, address = self.unix(target, "bind")
            return tool, args, self.as_agent(lambda: _libc_net.bind(fd, address)), False
        args, _ = self.inet_args(target, with_host=False)
        return "net/listen", args, _value(lambda: _libc_net.bind(fd, target.sockaddr())), False

    def listen(self):
        """listen() of an unbound TCP socket binds it to the wildcard address, any free port:
        decided as that bind (net/listen). A bound one (its bind was decided), a unix socket
        (unbound: EINVAL) and any other socket listen with no decision (sandbox/_netlisten.py)."""
        fd, backlog = self.sock.fd, self.decoded["backlog"]
        action = _value(lambda: _netlisten.listen(fd, backlog))
        wildcard = _netlisten.WILDCARD.get(self.sock.family)
        if wildcard is None or self.sock.kind != socket.SOCK_STREAM or not _netlisten.binds(fd, self.sock.family):
            return None, {}, action, False
        family = "inet6" if self.sock.family == socket.AF_INET6 else "inet"
        args, _ = self.inet_args(Target(family, wildcard, 0, v6_socket=family == "inet6"), with_host=False)
        return "net/listen", args, action, False

    def send(self, name: bytes | None, perform: Callable[[bytes | None], int]):
        """A send to ``name`` (None: the connected peer). TCP ignores an address unless
        MSG_FASTOPEN makes the send a connect."""
        flags = self.decoded.get("msg_flags", 0)
        stream_inet = self.sock.family != socket.AF_UNIX and self.sock.kind == socket.SOCK_STREAM
        if name is None or (stream_inet and not flags & MSG_FASTOPEN):
            return None, {}, _value(lambda: perform(None)), False
        if self.local_family():
            return None, {}, _value(lambda: perform(name)), False
        datagram = self.sock.kind == socket.SOCK_DGRAM
        target = _netaddr.parse(self.sock.family, name, "send", datagram=datagram)
        if target == _netaddr.NO_ADDRESS:
            return None, {}, _value(lambda: perform(None)), False
        if target == _netaddr.UNNAMED:
            raise OSError(errno.EINVAL, "send to an unnamed unix address")
        if target.family == "unix":
            tool, args, address = self.unix(target, "send")
            return tool, args, self.as_agent(lambda: perform(address)), False
        redirected = self.redirect(target)
        if redirected is not None:
            return None, {}, _value(lambda: perform(redirected.sockaddr())), False
        tool = "net/connect" if stream_inet else "net/send"
        args, guarded = self.inet_args(target)
        if stream_inet and self.intercepted(args, target, guarded) is not None:
            # TCP Fast Open would carry data past the egress: such hosts take a plain connect().
            raise OSError(errno.EOPNOTSUPP, "TCP Fast Open to a host the egress inspects")
        if self.refuse_datagram(args, target, guarded):
            return tool, args, _refused, guarded
        return tool, args, _value(lambda: perform(target.sockaddr())), guarded

    def sendto(self):
        fd, data, flags = self.sock.fd, self.decoded["data"], self.decoded["msg_flags"]
        return self.send(self.decoded["addr"], lambda address: _libc_net.sendto(fd, data, flags, address))

    def sendmsg(self):
        fd, flags, data = self.sock.fd, self.decoded["msg_flags"], self.decoded["data"]
        control = translate_control(self.agent_fd, self.decoded["control"], self.fds)
        return self.send(self.decoded["name"], lambda address: _libc_net.sendmsg(fd, address, data, control, flags))

    def sendmmsg(self):
        if self.decoded["vlen"] == 0:
            return None, {}, _value(lambda: 0), False
        tool, args, action, guarded = self.sendmsg()
        pid, where = self.pid, self.decoded["msg_len_at"]

        def first_message() -> NetResult:
            sent = action().value
            return NetResult("value", 1, write_back=lambda: _libc_net.write_u32(pid, where, sent))  # msg_len
        return tool, args, first_message, guarded


def _refused() -> NetResult:
    """The action of a call the broker refuses: never performed; fails closed if it ever is."""
    raise OSError(errno.EPERM, "refused by the socket broker")


def _connect_via(fd: int, target: Target, via) -> None:
    """Connect to the egress proxy; register where the socket was going under its local address
    (assigned by connect, even one still in progress)."""
    (proxy_ip, proxy_port), register = via
    try:
        _libc_net.connect(fd, target.with_ip_port(proxy_ip, proxy_port).sockaddr())
    finally:
        probe = socket.socket(fileno=fd)
        try:
            local = probe.getsockname()
        finally:
            probe.detach()
        register(local)


def prepare(pid: int, decoded: dict, ctx: NetContext) -> NetOp:
    """Resolve (never perform) one decoded network syscall of task ``pid``; OSError(errno)
    when it fails before any decision (a bad fd or address), as natively."""
    if decoded["syscall"] == "socket":
        return _create_socket(decoded)
    sock = _duplicate(ctx, pid, decoded["fd"])
    fds = [sock.fd]
    builder = _Builder(ctx, pid, decoded, sock, fds)
    try:
        tool, args, action, guarded = getattr(builder, decoded["syscall"])()
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return NetOp(tool, args, action, fds, guarded, repeatable=builder.repeatable, refusal=builder.refusal)
