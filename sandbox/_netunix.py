"""Pathname unix sockets, resolved in the agent's view of the filesystem.

connect() and sendto() follow the path to the socket inode exactly as the agent's own
lookup would (sandbox/_fslocate: under the agent's root, with its identity, symlinks
included) and keep an O_PATH fd to it; the supervisor's duplicate socket then connects to
``/proc/self/fd/<fd>``, a magic link to that very inode, so the path is never looked up
again. bind() resolves the parent directory and creates the socket file in it through
``/proc/self/fd/<dirfd>/<name>``, as the agent (its fsuid and umask). The policy sees the
agent-visible path the lookup arrived at: ``deny net/connect when args.path endsWith
"docker.sock"`` holds through symlinks and relative paths.

A socket bound this way reports the /proc name to getsockname(); peers see the same.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable

from sandbox._fscreds import AgentIdentity, acting_as, read_identity
from sandbox._fslocate import locate, locate_slot
from sandbox._libc_fs import AT_FDCWD
from sandbox._resolve import AgentView

SUN_PATH_MAX = 108
_FAMILY = struct.pack("=H", socket.AF_UNIX)


@dataclass
class UnixPath:
    path: bytes  # agent-visible, resolved
    sockaddr: bytes  # what the duplicate connects or binds to
    agent: AgentIdentity
    create: bool
    fds: list[int] = field(default_factory=list)  # O_PATH fds the sockaddr names; closed by the op

    @classmethod
    def resolve(cls, pid: int, path: bytes, *, create: bool) -> "UnixPath":
        view = AgentView.open(read_identity(pid))
        try:
            if create:
                slot = locate_slot(view, AT_FDCWD, path, "create")
                name, visible = b"/proc/self/fd/%d/%s" % (slot.parent_fd, slot.name), slot.path
            else:
                obj = locate(view, AT_FDCWD, path, follow=True, writes=False)
                name, visible = b"/proc/self/fd/%d" % obj.fd, obj.path
            if len(name) >= SUN_PATH_MAX:
                raise OSError(errno.ENAMETOOLONG, f"unix socket name {visible!r} is too long to bind on behalf")
            fds = list(view.owned)
            view.owned.clear()
            return cls(visible, _FAMILY + name + b"\0", view.agent, create, fds)
        finally:
            view.close()

    def run_as_agent(self, call: Callable[[], int | None]) -> int | None:
        """Connect or bind with the agent's identity: the kernel checks its permissions."""
        with acting_as(self.agent, umask=self.create):
            return call()
