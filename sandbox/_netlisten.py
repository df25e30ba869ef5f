"""listen() on the agent's behalf, and whether it binds: the kernel gives an unbound TCP socket
a port on the wildcard address (inet_autobind) in the supervisor's network namespace, the
host's, where anyone may connect in. Such a listen is decided as that bind would be.

Whether a listen binds is read from the socket's TCP state, not from its port alone: a port
assigned by connect() is released when the socket closes again (tcp_set_state(TCP_CLOSE),
unless a bind to a non-zero port locked it), and listen() needs a closed socket. So:

- LISTEN: already listening; only the backlog changes. (A shutdown() meanwhile frees the port
  only when it came from a bind or listen to port 0: a new free port is what that decided.)
- CLOSE with a port: bound by bind(), which was decided. Should another thread make it lose
  that port first (connect, then a reset), the kernel keeps the bound address and takes any
  free port, which the bind to port 0 that left the port unlocked has permitted.
- CLOSE without a port: listen() binds it: decided as a bind to the wildcard address, port 0.
- any other state (connecting, connected): listen() fails with EINVAL, here without a decision.
"""

from __future__ import annotations

import _socket
import errno
import socket

from sandbox import _libc

TCP_INFO = 11  # struct tcp_info; its first byte is tcpi_state
TCP_CLOSE, TCP_LISTEN = 7, 10
WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


def listen(fd: int, backlog: int) -> None:
    """listen(2) on our duplicate with the backlog as the agent gave it (the kernel caps it;
    Python's listen() would turn a negative one into 0). Releases the GIL, as connect does."""
    _libc.syscall("listen", fd, backlog)


def binds(fd: int, family: int) -> bool:
    """Whether listen() on TCP socket ``fd`` would bind it (see the module docstring);
    OSError(EINVAL) when listen() cannot succeed on it."""
    # Family, type and protocol given: the constructor calls nothing on the socket.
    probe = _socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fd)
    try:
        # TCP_INFO takes the socket's lock (briefly: TCP releases it while waiting) with the GIL held.
        state = probe.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)[0]
        if state == TCP_LISTEN:
            return False
        if state != TCP_CLOSE:
            raise OSError(errno.EINVAL, "listen on a connecting or connected socket")
        return probe.getsockname()[1] == 0  # the GIL released, as for every Python socket call that waits
    finally:
        probe.detach()
