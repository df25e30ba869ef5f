"""Sockets that reach past the policy: packet, raw, vsock and netlink families, host daemons
on abstract and pathname unix sockets, and descriptors passed over them (SCM_RIGHTS)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.escapes.conftest import PERMIT_ALL, SECRET, native, sandboxed

pytestmark = pytest.mark.kernel
PROBE = Path(__file__).parent / "net_probe.py"
EPERM, EACCES, EAFNOSUPPORT, EPROTONOSUPPORT, ECONNREFUSED = (
    "errno:1", "errno:13", "errno:97", "errno:93", "errno:111")


def test_packet_raw_vsock_and_netlink_sockets_are_refused(cbin, tmp_path):
    """Every family opens natively (as root); in the sandbox each is refused and netlink sees only lo."""
    native_links = len(socket.if_nameindex())
    assert native([cbin("socket_families")]).lines() == {
        "packet": "ok", "raw_ipv4": "ok", "icmp_ping": EACCES, "vsock": "ok", "netlink_audit": "ok",
        "netlink_netfilter": "ok", "links": str(native_links)}
    assert native_links > 1
    run = sandboxed(PERMIT_ALL, [cbin("socket_families")], tmp_path)
    assert run.lines() == {"packet": EAFNOSUPPORT, "raw_ipv4": EPERM, "icmp_ping": EPROTONOSUPPORT,
                           "vsock": EAFNOSUPPORT, "netlink_audit": EPROTONOSUPPORT,
                           "netlink_netfilter": EPROTONOSUPPORT, "links": "1"}, run.explain()


class HostDaemon:
    """A daemon on the host that greets every client and hands it the secret's descriptor."""

    def __init__(self, address: str, secret: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.listen(8)
        self.secret_fd = os.open(secret, os.O_RDONLY)
        self.sock.settimeout(0.1)  # accept() wakes to see close()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with client:
                socket.send_fds(client, [b"host-daemon\n"], [self.secret_fd])

    def close(self):
        self.stopped.set()
        self.thread.join(5)  # later tests launch sandboxes from this process: no thread may linger
        self.sock.close()
        os.close(self.secret_fd)


@pytest.fixture
def daemon(request, secret):
    made = []

    def start(address: str) -> HostDaemon:
        made.append(HostDaemon(address, secret))
        return made[-1]

    yield start
    for each in made:
        each.close()


def test_abstract_unix_socket_of_the_host_is_unreachable(daemon, tmp_path):
    """An abstract host socket hands over the secret natively; the sandbox's own network namespace
    has no such name (ECONNREFUSED)."""
    address = f"@faramesh-escape-{uuid.uuid4().hex[:8]}"
    daemon(address)
    argv = [sys.executable, PROBE, "unix", address]
    assert native(argv).lines() == {"connect": "ok", "banner": "host-daemon", "passed_fd": SECRET}
    run = sandboxed(PERMIT_ALL, argv, tmp_path)
    assert run.lines() == {"connect": ECONNREFUSED}, run.explain()


NO_DAEMON = ('agent a {\n  default permit\n'
             '  deny! net/* when args.path endsWith "daemon.sock" reason: "no host daemons"\n}\n')


def test_pathname_unix_socket_is_a_decided_connect(daemon, tmp_path):
    """A pathname host socket (reached through a symlink) is net/connect on the resolved path: denied
    and audited, so no descriptor is ever passed in."""
    sock_path = tmp_path / "daemon.sock"
    daemon(str(sock_path))
    (tmp_path / "innocent").symlink_to(sock_path)
    argv = [sys.executable, PROBE, "unix", tmp_path / "innocent"]
    assert native(argv).lines() == {"connect": "ok", "banner": "host-daemon", "passed_fd": SECRET}
    run = sandboxed(NO_DAEMON, argv, tmp_path)
    assert run.lines() == {"connect": EPERM}, run.explain()
    assert [(r["tool"], r["args"]["family"], r["args"]["path"], r["reason_code"]) for r in run.denials()] == [
        ("net/connect", "unix", str(sock_path), "FPL_STRICT_DENY")]


def test_inherited_descriptors_are_closed(tmp_path, secret):
    """A descriptor of the secret left open by the caller is readable natively, closed in the sandbox."""
    fd = os.open(secret, os.O_RDONLY)
    try:
        argv = [sys.executable, PROBE, "fd", str(fd)]
        assert native(argv, pass_fds=(fd,)).lines() == {"read": SECRET}
        run = sandboxed(PERMIT_ALL, argv, tmp_path, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert run.lines() == {"read": "errno:9"}, run.explain()
