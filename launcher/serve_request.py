"""One client of ``faramesh-sandbox serve``: who it is, the command it hands over, and the
messages of the run (the protocol; the client is launcher/client_c/).

A client connects (AF_UNIX, SOCK_SEQPACKET) and sends one message: REQUEST_MAGIC with four
descriptors, a memfd holding the request's records (tag byte, little-endian u32 length, payload:
'c' the working directory, 'a' each argument, 'e' each NAME=value, 'z' the end; strings end with
their only NUL), then its stdin, stdout and stderr. While the command runs the client may send
``sig\\0`` + u32 (a signal to pass on); the service ends with ``exit`` + u32 (the status). A client
that goes away ends the run: its sandbox is killed.
"""

from __future__ import annotations

import os
import socket
import struct

from sandbox.launch import FORWARDED, LateCommand

REQUEST_MAGIC = b"faramesh-run-1\0"
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5: a pidfd of the peer as it connected
SIGNAL_TAG, EXIT_TAG = b"sig\0", b"exit"
REQUEST_FDS = 4  # the request, stdin, stdout, stderr
MAX_REQUEST = 16 << 20  # argv and environment together are at most a few MiB (ARG_MAX)
REQUEST_SECONDS = 5.0  # a client that connects and sends nothing is not waited for longer
FORWARDABLE = frozenset(int(signum) for signum in FORWARDED)


class Refused(Exception):
    """A client turned away: ``text`` is what it is told on its stderr (when it sent one)."""

    def __init__(self, text: str, hint: str, stderr: int | None = None):
        super().__init__(text)
        self.text, self.hint, self.stderr = text, hint, stderr


def check_peer(conn: socket.socket) -> None:
    """Only the service's own user, and never from inside a sandbox (another pid namespace: an
    agent reaching the socket would start a sandbox outside its own limits and session). The
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


def take(conn: socket.socket) -> LateCommand:
    """A client's command once its request is read and the client is let in (Refused says why
    not, on its stderr: a client told nothing would only see the connection close)."""
    command = receive(conn)
    try:
        check_peer(conn)
    except Refused as refused:
        refused.stderr = os.dup(command.stdio[2])
        for fd in command.stdio:
            os.close(fd)
        raise
    return command


def receive(conn: socket.socket) -> LateCommand:
    """The client's command, its stdio at the LateCommand's fds (the caller owns them)."""
    conn.settimeout(REQUEST_SECONDS)
    try:
        message, fds, flags, _addr = socket.recv_fds(conn, len(REQUEST_MAGIC) + 1, REQUEST_FDS + 1)
    except OSError as err:
        raise Refused(f"no request ({err})", "use the faramesh-sandbox client") from None
    finally:
        conn.settimeout(None)
    if message != REQUEST_MAGIC or len(fds) != REQUEST_FDS or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        # with its four descriptors, an older or newer client still hears why, on its stderr
        stderr = os.dup(fds[-1]) if len(fds) == REQUEST_FDS else None
        for fd in fds:
            os.close(fd)
        raise Refused("a request this service does not understand", "use the client of the same install", stderr)
    request, *stdio = fds
    try:
        argv, env, cwd = parse(_read_request(request))
    except Refused as err:
        err.stderr = os.dup(stdio[2])
        for fd in stdio:
            os.close(fd)
        raise
    finally:
        os.close(request)
    return LateCommand(argv=argv, env=env, cwd=cwd, stdio=tuple(stdio))


def _read_request(fd: int) -> bytes:
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
    return b"".join(chunks)


def parse(data: bytes) -> tuple[list[str], dict[str, str], str]:
    """(argv, env, cwd) of a request's records; Refused when they are not exactly right."""
    fields: dict[bytes, list[str]] = {b"c": [], b"a": [], b"e": []}
    at, ended = 0, False
    while at < len(data):
        if ended or len(data) - at < 5:
            raise Refused("a malformed request (records after the end, or cut short)", "use the client of the same install")
        tag, (length,) = data[at:at + 1], struct.unpack_from("<I", data, at + 1)
        payload, at = data[at + 5:at + 5 + length], at + 5 + length
        if len(payload) != length:
            raise Refused("a malformed request (a record cut short)", "use the client of the same install")
        if tag == b"z" and not payload:
            ended = True
        elif tag in fields and payload.endswith(b"\0") and b"\0" not in payload[:-1]:
            fields[tag].append(os.fsdecode(payload[:-1]))
        else:
            raise Refused(f"a malformed request (record {tag!r})", "use the client of the same install")
    env = dict(variable.split("=", 1) for variable in fields[b"e"] if "=" in variable)
    if not ended or not fields[b"a"] or len(fields[b"c"]) != 1 or not fields[b"c"][0].startswith("/"):
        raise Refused("a request without its end, its command or one absolute working directory",
                      "use the client of the same install")
    return fields[b"a"], env, fields[b"c"][0]


def tell(fd: int, text: str, hint: str) -> None:
    """One line on a client's stderr, as the CLI writes its errors."""
    try:
        os.write(fd, f"faramesh-sandbox: {text} — hint: {hint}\n".encode())
    except OSError:
        pass  # its stderr is closed: the exit status still says it


def send_exit(conn: socket.socket, status: int) -> None:
    try:
        conn.send(EXIT_TAG + struct.pack("<I", status & 0xFF))
    except OSError:
        pass  # the client is gone


def signal_of(message: bytes) -> int | None:
    """The signal a client's message asks to pass on, or None for anything else."""
    if len(message) == 8 and message.startswith(SIGNAL_TAG):
        signum = struct.unpack("<I", message[4:])[0]
        return signum if signum in FORWARDABLE else None
    return None
