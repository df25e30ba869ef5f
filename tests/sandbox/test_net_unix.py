"""Unix sockets: pathnames decided on the path the agent's lookup reaches; abstract names stay inside."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from sandbox import netops
from tests.sandbox.test_net_connect import Greeter, net_records, run_python

ROOT = Path(__file__).resolve().parents[2]

UNIX_RULES = ('deny net/connect when args.path endsWith "docker.sock"\n'
              ' permit net/connect when args.family == "unix"\n'
              ' permit net/listen when args.path endsWith "/allowed.sock"')


class UnixGreeter(Greeter):
    """Greeter's hello, on a unix socket at ``path``."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()


CONNECT_ALL = """
import socket
for path in {paths!r}:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print(path.rsplit("/", 1)[-1], s.recv(5).decode())
    except OSError as err:
        print(path.rsplit("/", 1)[-1], "errno", err.errno)
"""


def test_docker_style_socket_is_denied_even_through_a_symlink(tmp_path):
    """docker.sock is refused by path (also through a symlink); another socket works."""
    docker = UnixGreeter(str(tmp_path / "docker.sock"))
    UnixGreeter(str(tmp_path / "ok.sock"))
    os.symlink(tmp_path / "docker.sock", tmp_path / "innocent.sock")
    paths = [str(tmp_path / "ok.sock"), str(tmp_path / "docker.sock"), str(tmp_path / "innocent.sock")]
    run = run_python(CONNECT_ALL.format(paths=paths), UNIX_RULES)
    assert run.stdout == b"ok.sock hello\ndocker.sock errno 1\ninnocent.sock errno 1\n", run.explain()
    assert docker.accepted == 0
    assert [(r["args"]["path"], r["effect"]) for r in run.audit] == [
        (str(tmp_path / "ok.sock"), "PERMIT"), (str(tmp_path / "docker.sock"), "DENY"),
        (str(tmp_path / "docker.sock"), "DENY")]


ABSTRACT = """
import socket
server = socket.socket(socket.AF_UNIX)
server.bind(b"\\0faramesh-test-abstract")
server.listen(1)
client = socket.socket(socket.AF_UNIX)
client.connect(b"\\0faramesh-test-abstract")
conn, _ = server.accept()
conn.sendall(b"inside")
print(client.recv(6).decode())
"""


def test_abstract_names_connect_without_a_decision():
    """An abstract-name bind and connect work (they stay in the agent's namespace) and ask no policy."""
    run = run_python(ABSTRACT, "")
    assert run.stdout == b"inside\n", run.explain()
    assert net_records(run) == []


BIND = """
import os, socket
for name in ("allowed.sock", "other.sock"):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind({base!r} + "/" + name)
        print(name, "bound", os.path.exists({base!r} + "/" + name))
    except OSError as err:
        print(name, "errno", err.errno, os.path.exists({base!r} + "/" + name))
"""


def test_pathname_bind_is_net_listen_on_the_path(tmp_path):
    """Binding a unix socket file is net/listen on its path: the permitted one is created, the other not."""
    run = run_python(BIND.format(base=str(tmp_path)), UNIX_RULES)
    assert run.stdout == b"allowed.sock bound True\nother.sock errno 1 False\n", run.explain()
    assert [(r["tool"], r["args"]["path"], r["effect"]) for r in run.audit] == [
        ("net/listen", str(tmp_path / "allowed.sock"), "PERMIT"), ("net/listen", str(tmp_path / "other.sock"), "DENY")]


PASS_FD = """
import os, socket
left, right = socket.socketpair()
r, w = os.pipe()
os.write(w, b"through")
socket.send_fds(left, [b"fd"], [r])
msg, fds, _, _ = socket.recv_fds(right, 2, 1)
print(msg.decode(), os.read(fds[0], 7).decode())
"""


def test_scm_rights_pass_the_agents_own_files():
    """sendmsg with SCM_RIGHTS passes the very pipe the agent named (fd numbers translated)."""
    run = run_python(PASS_FD, "")
    assert run.stdout == b"fd through\n", run.explain()


def test_trusted_sandbox_socket_connects_without_a_decision(tmp_path, monkeypatch):
    """A socket in NetContext.trusted_unix_paths (the SDK socket) connects under a deny-all policy."""
    UnixGreeter(str(tmp_path / "sdk.sock"))
    paths = [str(tmp_path / "sdk.sock")]
    run = run_python(CONNECT_ALL.format(paths=paths), "", net=netops.NetContext().trusting(paths[0]),
                     monkeypatch=monkeypatch)
    assert run.stdout == b"sdk.sock hello\n", run.explain()
    assert run.audit == []


HANDED = """
import socket
s = socket.socket(fileno=0)  # a host socket the launcher was started with, not connected
try:
    s.connect(b"\\0faramesh-test-host-only")
    print("reached the host")
except OSError as err:
    print("refused", err.errno)
"""


def test_a_host_socket_handed_to_the_agent_reaches_no_host_abstract_name(tmp_path):
    """An abstract name is looked up in the socket's network namespace: through an unconnected unix
    socket of the host's (its stdin here) the agent would reach the host's abstract sockets.
    Refused with EACCES: only the agent's own sockets take abstract addresses."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(b"\0faramesh-test-host-only")
    listener.listen(1)
    handed = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    policy = tmp_path / "permit.fpl"
    policy.write_text("agent a {\n  default permit\n}\n")
    try:
        done = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy), "--no-audit-db",
                               "--no-prompt", "--", sys.executable, "-c", HANDED], stdin=handed.fileno(),
                              capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        handed.close()
        listener.close()
    assert done.stdout.split() == ["refused", str(errno.EACCES)], done.stderr
