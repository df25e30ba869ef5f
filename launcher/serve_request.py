"""One client of ``faramesh-sandbox serve``: who it is, the command it hands over, and the
messages of the run (the protocol; the client is launcher/client_c/).

The service listens on an abstract unix socket (SOCK_SEQPACKET) of the host's network namespace.
No agent can reach it or take its name: every sandbox has a network namespace of its own, and
an agent's unix sockets, connected or bound by the supervisor on its behalf, stay in it. No path
of the filesystem is involved, so none can be renamed or raced.

A client connects, waits for ``ready`` (sent once it is let in: until then the kernel refuses
any descriptor it sends), and sends one message: REQUEST_MAGIC with four descriptors, a memfd holding
the request's records (tag byte, little-endian u32 length, payload: 'c' the working directory,
'a' each argument, 'e' each NAME=value, 'z' the end; strings end with their only NUL), then its
stdin, stdout and stderr. While the command runs the client may send ``sig\\0`` + u32 (a signal to
pass on). The service may send ``msg\\0`` + text (a line the client prints on its stderr) and
ends with ``exit`` + u32 (the status). A client that goes away ends the run: its sandbox is killed.
"""

from __future__ import annotations

import os
import socket
import struct

from sandbox.launch import FORWARDED, LateCommand

REQUEST_MAGIC = b"faramesh-run-1\0"
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5: a pidfd of the peer as it connected
SIGNAL_TAG, EXIT_TAG, TEXT_TAG, READY_TAG = b"sig\0", b"exit", b"msg\0", b"ready"
SO_PASSRIGHTS = getattr(socket, "SO_PASSRIGHTS", 83)  # Linux 6.16: 0 refuses descriptors sent to a socket
REQUEST_FDS = 4  # the request, stdin, stdout, stderr
MAX_REQUEST = 16 << 20  # argv and environment together are at most a few MiB (ARG_MAX)
MAX_TEXT = 4096
REQUEST_SECONDS = 1.0  # the client sends its request as it connects: one that does not is dropped
FORWARDABLE = frozenset(int(signum) for signum in FORWARDED)
CLIENT_HINT = "use the client of the same install"


class Refused(Exception):
    """A client turned away: ``text`` and ``hint`` are what it is told."""

    def __init__(self, text: str, hint: str):
        super().__init__(text)
        self.text, self.hint = text, hint


def address(name: str) -> bytes:
    """The abstract socket address of service ``name`` (no leading NUL in ``name``)."""
    return b"\0" + os.fsencode(name)


def refuse_descriptors(sock: socket.socket, refused: bool = True) -> None:
    """Descriptors sent to ``sock`` (and to each connection it accepts) are refused by the
    kernel: a peer not yet let in cannot queue one. Closing a descriptor can block (a TCP socket
    lingering on unsent data), and this process would be the one to close it. Kernels before
    6.16 lack the option: there, a local user can stall the service (docs/serve.md)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 0 if refused else 1)
    except OSError:
        pass


def take(conn: socket.socket) -> LateCommand:
    """A client's command, once the client is let in and its request read; Refused says why not.
    The peer is checked first: until it is let in (READY_TAG), it can send no descriptor and the
    service reads nothing of it."""
    check_peer(conn)
    refuse_descriptors(conn, False)
    try:
        conn.send(READY_TAG, socket.MSG_DONTWAIT)
    except OSError as err:
        raise Refused(f"the client went away ({err.strerror})", CLIENT_HINT) from None
    return receive(conn)


def check_peer(conn: socket.socket) -> None:
    """Only the service's own user, alive and in our pid namespace (not inside a sandbox). The
    peer is named by a pidfd taken at its connect (SO_PEERPIDFD), not by a pid that its exit
    could hand to another process."""
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.geteuid():
        raise Refused(f"uid {uid} may not use this service", "each user runs a service of their own")
    if not _in_our_pid_namespace(conn):
        raise Refused("a client in another pid namespace (a sandbox), or one already gone, may not use this "
                      "service", "run the client on the host")


def _in_our_pid_namespace(conn: socket.socket) -> bool:
    """The peer is alive and its pid has one level below ours: NSpid lists its pid in our pid
    namespace and in each one nested under it."""
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        return False  # a kernel without it (before 6.5): refused, as an unknown case
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as info:
            fields = dict(line.split(":", 1) for line in info if ":" in line)
    except OSError:
        return False
    finally:
        os.close(pidfd)
    pids = fields.get("NSpid", "").split()
    return fields.get("Pid", "").strip() not in ("", "-1", "0") and len(pids) == 1


def receive(conn: socket.socket) -> LateCommand:
    """The client's command, its stdio at the LateCommand's fds (the caller owns them)."""
    conn.settimeout(REQUEST_SECONDS)
    try:
        message, fds, flags, _addr = socket.recv_fds(conn, len(REQUEST_MAGIC) + 1, REQUEST_FDS + 1)
    except OSError as err:
        raise Refused(f"no request ({err})", CLIENT_HINT) from None
    finally:
        conn.settimeout(None)
    if message != REQUEST_MAGIC or len(fds) != REQUEST_FDS or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        _close_all(fds)
        raise Refused("a request this service does not understand", CLIENT_HINT)
    request, *stdio = fds
    try:
        argv, env, cwd = parse(_read_request(request))
    except Refused:
        _close_all(stdio)
        raise
    finally:
        os.close(request)
    return LateCommand(argv=argv, env=env, cwd=cwd, stdio=tuple(stdio))


def _close_all(fds) -> None:
    for fd in fds:
        os.close(fd)


def _read_request(fd: int) -> bytes:
    """The memfd's bytes; any descriptor that is not a readable file is refused, never raised."""
    try:
        size = os.fstat(fd).st_size
        if size > MAX_REQUEST:
            raise Refused(f"a request of {size} bytes (at most {MAX_REQUEST})", "pass fewer or shorter arguments")
        chunks, offset = [], 0
        while offset < size:
            chunk = os.pread(fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
    except OSError as err:
        raise Refused(f"a request that cannot be read ({err.strerror})", CLIENT_HINT) from None
    return b"".join(chunks)


def parse(data: bytes) -> tuple[list[str], dict[str, str], str]:
    """(argv, env, cwd) of a request's records; Refused when they are not exactly right."""
    fields: dict[bytes, list[str]] = {b"c": [], b"a": [], b"e": []}
    at, ended = 0, False
    while at < len(data):
        if ended or len(data) - at < 5:
            raise Refused("a malformed request (records after the end, or cut short)", CLIENT_HINT)
        tag, (length,) = data[at:at + 1], struct.unpack_from("<I", data, at + 1)
        payload, at = data[at + 5:at + 5 + length], at + 5 + length
        if len(payload) != length:
            raise Refused("a malformed request (a record cut short)", CLIENT_HINT)
        if tag == b"z" and not payload:
            ended = True
        elif tag in fields and payload.endswith(b"\0") and b"\0" not in payload[:-1]:
            fields[tag].append(os.fsdecode(payload[:-1]))
        else:
            raise Refused(f"a malformed request (record {tag!r})", CLIENT_HINT)
    env = dict(variable.split("=", 1) for variable in fields[b"e"] if "=" in variable)
    if not ended or not fields[b"a"] or len(fields[b"c"]) != 1 or not fields[b"c"][0].startswith("/"):
        raise Refused("a request without its end, its command or one absolute working directory", CLIENT_HINT)
    return fields[b"a"], env, fields[b"c"][0]


def tell(conn: socket.socket, text: str, hint: str) -> None:
    """One line for the client to print on its stderr: sent over the connection, never written to
    a descriptor the client passed (a full pipe there would block the service)."""
    line = f"faramesh-sandbox: {text} — hint: {hint}".encode()[:MAX_TEXT]
    try:
        conn.send(TEXT_TAG + line, socket.MSG_DONTWAIT)
    except OSError:
        pass  # the client is gone or not reading: the exit status still says it


def discard_pending(conn: socket.socket) -> None:
    """Drops what a refused client sent and was not read, closing any descriptors, and takes no
    more: closed with a message unread, the client would get a reset before our reply. Never
    waits (a client holding its end open must not hold the service)."""
    try:
        conn.shutdown(socket.SHUT_RD)  # a later send of the client's fails (EPIPE) instead of queueing
    except OSError:
        return
    conn.setblocking(False)
    space = socket.CMSG_SPACE((REQUEST_FDS + 1) * 4)
    for _ in range(16):
        try:
            message, ancillary, _flags, _addr = conn.recvmsg(4096, space)
        except OSError:
            return
        for level, kind, data in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                _close_all(struct.unpack(f"{len(data) // 4}i", data[:len(data) // 4 * 4]))
        if not message and not ancillary:
            return


def send_exit(conn: socket.socket, status: int) -> None:
    try:
        conn.send(EXIT_TAG + struct.pack("<I", status & 0xFF), socket.MSG_DONTWAIT)
    except OSError:
        pass  # the client is gone


def signal_of(message: bytes) -> int | None:
    """The signal a client's message asks to pass on, or None for anything else."""
    if len(message) == 8 and message.startswith(SIGNAL_TAG):
        signum = struct.unpack("<I", message[4:])[0]
        return signum if signum in FORWARDABLE else None
    return None
