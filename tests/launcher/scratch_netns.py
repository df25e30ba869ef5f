"""A server in a network namespace the test creates, routed from the host by a veth pair: an
address that is neither loopback nor the host's own, so the address guard treats it as remote."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid

SERVER_IP = "198.18.0.2"  # benchmarking range, only ever inside the scratch namespace
HOST_SIDE_IP = "198.18.0.1"


@contextlib.contextmanager
def server_in_scratch_netns(command: list[str], port: int):
    """Run ``command`` in a fresh network namespace holding SERVER_IP; yields once it accepts on
    ``port``; removes the namespace and the veth afterwards."""
    ns, veth = f"fs-{uuid.uuid4().hex[:8]}", f"fv{uuid.uuid4().hex[:8]}"
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    server = None
    try:
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "addr", "add", f"{HOST_SIDE_IP}/30", "dev", veth)
        run("ip", "link", "set", veth, "up")
        run("ip", "-n", ns, "addr", "add", f"{SERVER_IP}/30", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")  # the readiness probe connects from inside
        server = subprocess.Popen(["ip", "netns", "exec", ns, *command], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        for _ in range(100):
            probe = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                                    f"import socket; socket.create_connection(('{SERVER_IP}', {port}), 1)"],
                                   capture_output=True)
            if probe.returncode == 0:
                break
        yield
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
