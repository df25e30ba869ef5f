"""Namespaces for the agent: user (when not root), mount, pid, net, uts, ipc.

Each function serves one stage of sandbox.launch and is a no-op when the spec turns its part off."""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from sandbox import _libc_ns
from sandbox.spec import SandboxSpec

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH14x")  # ifr_name, ifr_flags, padding to sizeof(struct ifreq)


def clone_flags(spec: SandboxSpec) -> int:
    """The CLONE_NEW* flags for init's clone3: a user namespace too when the launcher is not root.

    Safe: new namespaces only take away the host's view (processes, mounts, network, hostname);
    a new user namespace grants capabilities only over namespaces it owns, never the host's."""
    flags = _libc_ns.CLONE_NEWUSER if spec.wants_user_namespace() else 0
    for name in sorted(spec.namespaces):
        flags |= _libc_ns.NAMESPACE_FLAGS[name]
    return flags


def map_user(spec: SandboxSpec, pid: int, uid: int, gid: int) -> None:
    """Map the caller's uid and gid to themselves in ``pid``'s user namespace (the launcher writes
    them, as the namespace's creator): inside, the agent is the same unprivileged user.

    Mapping to itself (not to 0) means the agent's first execve drops every capability of the
    namespace, so it cannot mount, unshare or change its identity even where the filter would allow."""
    if not spec.wants_user_namespace():
        return
    # setgroups must be denied before an unprivileged process may write a gid_map.
    _write_proc(f"/proc/{pid}/setgroups", "deny")
    _write_proc(f"/proc/{pid}/uid_map", f"{uid} {uid} 1\n")
    _write_proc(f"/proc/{pid}/gid_map", f"{gid} {gid} 1\n")


def set_hostname(spec: SandboxSpec) -> None:
    if "uts" in spec.namespaces:
        # Safe: the uts namespace is the agent's own; the host's hostname is unchanged.
        try:
            socket.sethostname(spec.hostname)
        except OSError as err:
            raise OSError(err.errno, f"sethostname({spec.hostname!r}): {os.strerror(err.errno)}") from None


def bring_up_loopback(spec: SandboxSpec) -> None:
    """A new network namespace starts with lo down; bring it up so localhost works inside."""
    if "net" not in spec.namespaces:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            req = bytearray(_IFREQ.pack(b"lo", 0))
            fcntl.ioctl(sock, SIOCGIFFLAGS, req, True)
            name, flags = _IFREQ.unpack(req)
            # Safe: lo exists only inside the agent's network namespace.
            fcntl.ioctl(sock, SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))
        except OSError as err:
            raise OSError(err.errno, f"ioctl(SIOCSIFFLAGS, 'lo', IFF_UP): {os.strerror(err.errno)}") from None


def _write_proc(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise OSError(err.errno, f"write({path}, {text.strip()!r}): {os.strerror(err.errno)}") from None
