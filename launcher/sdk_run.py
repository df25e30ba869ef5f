"""Per-run plumbing for the SDK socket: a private directory on the host holding the socket,
bind-mounted into the sandbox at SANDBOX_SOCKET_DIR, and FARAMESH_SOCKET in the agent's
environment pointing at it.

Every run's directory is made under one parent in the launcher's runtime directory, which the
sandbox covers (spec.hidden): an agent reaches its own run's socket through the bind mount, never
another run's (which would decide with that run's policy and write to its audit and approvals)."""

from __future__ import annotations

import os
import shutil
import tempfile

from launcher import control
from launcher.sdk_defer import Approve
from launcher.sdk_server import SANDBOX_SOCKET_DIR, Decide, SdkServer
from sandbox.errors import SandboxError
from sandbox.spec import SandboxSpec

SOCKET_NAME = "faramesh.sock"
SOCKETS_DIR = "sdk"  # under the runtime directory: every run's socket directory


class SdkRun:
    """The run's SdkServer and where the agent reaches it (``agent_socket_path``)."""

    def __init__(self, server: SdkServer, host_dir: str, agent_socket_path: str):
        self.server = server
        self.host_dir = host_dir
        self.agent_socket_path = agent_socket_path

    def serve(self) -> None:
        self.server.serve()

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.host_dir, ignore_errors=True)


def serve_run(spec: SandboxSpec, decide: Decide, *, audit=None, approve: Approve | None = None) -> SdkRun:
    """Bind the socket for ``spec`` and point the agent at it (edits spec.binds and spec.env_changes);
    pass ``.serve`` to launch() as ``started`` (no thread may run before the sandbox exists).
    Raises SandboxError when the socket cannot be created."""
    # Reached through the bind mount, the directory can sit under the runtime directory, which
    # the sandbox covers; given by its own path, it must stay where the agent can see it.
    fixed = _mount_point_ready(spec)
    try:
        parent = control.private_dir(os.path.join(control.runtime_dir(), SOCKETS_DIR)) if fixed else None
        host_dir = tempfile.mkdtemp(prefix=f"faramesh-sdk-{spec.session_id}-", dir=parent)  # 0700
    except (OSError, control.ControlError) as err:
        raise SandboxError("start_sdk_socket", f"no private directory: {getattr(err, 'strerror', None) or err}",
                           "set FARAMESH_SANDBOX_RUNTIME_DIR (or TMPDIR) to a writable directory, or pass "
                           "--no-sdk-socket") from None
    try:
        server = SdkServer(os.path.join(host_dir, SOCKET_NAME), decide, session_id=spec.session_id,
                           audit=audit, approve=approve, approve_timeout=spec.approve_timeout).listen()
    except OSError as err:
        shutil.rmtree(host_dir, ignore_errors=True)
        raise SandboxError("start_sdk_socket", f"{host_dir}: {err.strerror or err}",
                           "pass --no-sdk-socket to run without the agent SDK socket") from None
    agent_dir = SANDBOX_SOCKET_DIR if fixed else host_dir
    if fixed:
        spec.binds.append((host_dir, agent_dir))
        if not any(_inside(parent, hidden) for hidden in spec.hidden):  # covered after the binds are made
            spec.hidden.append(parent)
    agent_path = os.path.join(agent_dir, SOCKET_NAME)
    spec.env_changes["FARAMESH_SOCKET"] = agent_path
    return SdkRun(server, host_dir, agent_path)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _mount_point_ready(spec: SandboxSpec) -> bool:
    """The fixed path needs a mount namespace and an existing directory to mount on. The sandbox
    shares the host's filesystem, so the (empty) directory is made on the host, which only root
    can do under /run; otherwise the agent is given the private directory's own path."""
    if "mount" not in spec.namespaces:
        return False
    try:
        os.makedirs(SANDBOX_SOCKET_DIR, mode=0o755, exist_ok=True)
    except OSError:
        return False
    return os.path.isdir(SANDBOX_SOCKET_DIR) and not os.path.islink(SANDBOX_SOCKET_DIR)
