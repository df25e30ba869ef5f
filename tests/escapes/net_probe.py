"""Network escape probe, run as the agent. Prints `key=value` lines.

  unix ADDRESS      connect to a unix socket (ADDRESS starting with @ is abstract), read its
                    banner and any descriptor passed with SCM_RIGHTS, print what it holds
  dns IP PORT NAME [lookup|nolookup]
                    send one DNS query for NAME straight to IP:PORT over UDP, then (unless
                    nolookup) look NAME up through the system resolver (getaddrinfo)
  fd N              read from descriptor N, inherited from whoever started us
"""

import array
import os
import socket
import struct
import sys


def err(exc: OSError) -> str:
    return f"errno:{exc.errno}"


def unix(address: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        sock.connect(target)
    except OSError as exc:
        print(f"connect={err(exc)}")
        return
    print("connect=ok")
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(64, socket.CMSG_SPACE(fds.itemsize))
    print(f"banner={data.decode().strip()}")
    for level, kind, payload in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    for fd in fds:
        print(f"passed_fd={os.pread(fd, 64, 0).decode().strip()}")


def dns_query(name: str) -> bytes:
    header = struct.pack(">HHHHHH", 0x4711, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return header + labels + b"\0" + struct.pack(">HH", 1, 1)  # type A, class IN


def dns(ip: str, port: str, name: str, lookup: str = "lookup") -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(dns_query(name), (ip, int(port)))
        print("send=ok")
    except OSError as exc:
        print(f"send={err(exc)}")
    if lookup != "lookup":
        return
    try:
        socket.getaddrinfo(name, 443)
        print("lookup=ok")
    except socket.gaierror as exc:
        print(f"lookup=gaierror:{exc.errno}")


def read_fd(number: str) -> None:
    try:
        print(f"read={os.pread(int(number), 64, 0).decode().strip()}")
    except OSError as exc:
        print(f"read={err(exc)}")


if __name__ == "__main__":
    {"unix": unix, "dns": dns, "fd": read_fd}[sys.argv[1]](*sys.argv[2:])
