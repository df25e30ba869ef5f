"""SandboxSpec: everything launch() needs, with the secure choices as defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# Namespaces the agent always gets; a user namespace is added when the launcher is not root.
DEFAULT_NAMESPACES = frozenset({"mount", "pid", "uts", "ipc", "net"})


@dataclass
class SandboxSpec:
    argv: list[str]
    env: dict[str, str] | None = None  # None: the launcher's environment
    cwd: str | None = None  # None: the launcher's working directory
    namespaces: frozenset[str] = DEFAULT_NAMESPACES
    user_namespace: bool | None = None  # None: only when the launcher is not root
    hostname: str = "sandbox"
    seccomp: bool = True  # False only for tests of the namespace layer
    trapped: frozenset[str] = frozenset()  # syscalls sent to the supervisor
    kernel_decided: dict[str, int] = field(default_factory=dict)  # syscall -> 0 (allow) or errno
    approve_timeout: float = 300.0
    audit_all: bool = False
    session_id: str = ""
    cgroup: bool = True  # put every agent task into a fresh cgroup v2 directory
    verbose: bool = False

    def wants_user_namespace(self) -> bool:
        if self.user_namespace is None:
            return os.geteuid() != 0
        return self.user_namespace
