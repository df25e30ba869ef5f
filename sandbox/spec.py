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
    # what the run's parts change in that environment, whoever's it is: name -> value, or None to remove
    env_changes: dict[str, str | None] = field(default_factory=dict)
    cwd: str | None = None  # None: the launcher's working directory
    namespaces: frozenset[str] = DEFAULT_NAMESPACES
    user_namespace: bool | None = None  # None: only when the launcher is not root
    hostname: str = "sandbox"
    seccomp: bool = True  # False only for tests of the namespace layer
    trapped: frozenset[str] = frozenset()  # syscalls sent to the supervisor
    kernel_decided: dict[str, int] = field(default_factory=dict)  # syscall -> 0 (allow) or errno
    approve_timeout: float = 300.0
    audit_all: bool = False
    fast_repeats: bool = False  # repeated reads answered in C, recorded just after (sandbox/fastpath.py)
    session_id: str = ""
    cgroup: bool = True  # put every agent task into a fresh cgroup v2 directory
    # (host directory, existing sandbox directory) bind-mounted nosuid,nodev,noexec in the agent's mounts
    binds: list[tuple[str, str]] = field(default_factory=list)
    # path in the sandbox -> content shown read-only there over an existing file (e.g. /etc/resolv.conf)
    files: dict[str, bytes] = field(default_factory=dict)
    # host directories the agent must not reach (control sockets): each covered by an empty tmpfs
    hidden: list[str] = field(default_factory=list)
    net: object | None = None  # sandbox.netops.NetContext; None: no DNS names, no redirect, loopback guarded
    verbose: bool = False
    same_cpu: bool = False  # agent and supervisor on one CPU: cheaper traps when idle, one core (sandbox/placement.py)
    landlock: object | None = None  # sandbox.landlock.Plan applied in the agent; None: no Landlock floor
    limits: object | None = None  # sandbox.limits.Limits; None: no resource limits

    def agent_env(self) -> dict[str, str]:
        """The agent's environment: ``env`` (or the launcher's) with ``env_changes`` made."""
        env = dict(os.environ if self.env is None else self.env)
        for name, value in self.env_changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def wants_user_namespace(self) -> bool:
        if self.user_namespace is None:
            return os.geteuid() != 0
        return self.user_namespace
