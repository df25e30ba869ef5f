"""launcher/_client, the compiled client of `faramesh-sandbox serve`, against a fake service at an
abstract socket name: the request it sends, the fds it hands over, the lines and status it relays,
the signals it forwards and the errors it prints."""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pyseccomp
import pytest

from launcher.serve_request import address
from sandbox import _libc, notify, seccomp

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "launcher" / "_client"
SOURCES = ROOT / "launcher" / "client_c"
MAGIC = b"faramesh-run-1\x00"
NO_STATUS = ("faramesh-sandbox: the service ended the run without an exit status — hint: see the service's "
             "output\n")
NOT_UNDERSTOOD = ("faramesh-sandbox: the service sent a message this client does not understand — hint: see the "
                  "service's output; the service and this client may be from different versions\n")
NO_SERVICE_HINT = " — hint: start one with `faramesh-sandbox serve --policy FILE`\n"
NOT_YOURS_HINT = (" — hint: pass --socket or set FARAMESH_SANDBOX_SOCKET to the name of a service you "
                  "started\n")
BAD_NAME = ("faramesh-sandbox: the socket name \"{name}\" is not an abstract name of 1 to 107 bytes without "
            "'/' — hint: give --socket or FARAMESH_SANDBOX_SOCKET a shorter name\n")
TIMEOUT = 10


@pytest.fixture(scope="session")
def client() -> str:
    """launcher/_client, built once (as setup.py builds it) when missing or older than its sources."""
    newest_source = max(path.stat().st_mtime for path in SOURCES.iterdir())
    if not CLIENT.exists() or CLIENT.stat().st_mtime < newest_source:
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, check=True,
                       capture_output=True)
    return str(CLIENT)


@pytest.fixture
def name() -> str:
    """An abstract socket name no other test or service uses."""
    return f"client-c-test-{uuid.uuid4().hex}"


def read_records(memfd: int) -> list[tuple[str, bytes]]:
    """The memfd's records, read from its current offset as a service would."""
    data = b""
    while chunk := os.read(memfd, 1 << 20):
        data += chunk
    records, at = [], 0
    while at < len(data):
        tag, length = data[at:at + 1].decode(), struct.unpack_from("<I", data, at + 1)[0]
        records.append((tag, data[at + 5:at + 5 + length]))
        at += 5 + length
    return records


class FakeService:
    """One connection of a fake `serve`: keeps the request (magic, fds, records), then `reply(conn, fds)`."""

    def __init__(self, name: str, reply):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(address(name))
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        self.reply, self.received, self.failure = reply, threading.Event(), None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                self.magic, self.fds, self.flags, _ = socket.recv_fds(conn, 64, 8)
                self.records = read_records(self.fds[0])
                self.received.set()
                self.reply(conn, self.fds)
                for fd in self.fds:  # the client's stdout/stderr: its reader waits for their EOF
                    os.close(fd)
        except BaseException as err:  # noqa: BLE001 - reported by join()
            self.failure = err
        finally:
            self.received.set()

    def join(self):
        self.thread.join(TIMEOUT)
        self.listener.close()
        if self.failure:
            raise self.failure


def exits(status: int):
    return lambda conn, fds: conn.send(b"exit" + struct.pack("<I", status))


def says(*lines: bytes, status: int):
    """A reply of one msg\\0 message per line, 0.1 s apart, then the exit status."""
    def reply(conn, fds):
        for line in lines:
            conn.send(b"msg\0" + line)
            time.sleep(0.1)
        exits(status)(conn, fds)
    return reply


def run(client: str, args: list[str], env: dict | None = None, **popen):
    return subprocess.run([client, *args], capture_output=True, timeout=TIMEOUT, env=env or {}, **popen)


def test_request_holds_magic_cwd_args_and_environment(client, tmp_path):
    """One message, the magic with 4 fds; the memfd holds cwd, each argument and variable as given, then 'z'."""
    service = FakeService(name, exits(0))
    env = {"FOO": "bar baz", "EMPTY": "", "FARAMESH_SANDBOX_SOCKET": name}
    done = run(client, ["--", "printf", "a b", "", "-x"], env=env, cwd=tmp_path)
    service.join()
    assert (done.returncode, done.stderr, service.magic, len(service.fds), service.flags) == (0, b"", MAGIC, 4, 0)
    assert service.records == [("c", str(tmp_path).encode() + b"\0"),
                               ("a", b"printf\0"), ("a", b"a b\0"), ("a", b"\0"), ("a", b"-x\0"),
                               *[("e", f"{name}={value}".encode() + b"\0") for name, value in env.items()],
                               ("z", b"")]


def test_request_carries_megabytes_of_arguments(client, tmp_path):
    """A megabyte of arguments, some bigger than the client's 64 KiB buffer, arrives whole and in order."""
    service = FakeService(name, exits(0))
    args = [letter * size for letter in "abcdefghij" for size in (100_000, 3)]
    done = run(client, ["--socket", name, *args])
    service.join()
    assert done.returncode == 0
    assert [payload for tag, payload in service.records if tag == "a"] == [arg.encode() + b"\0" for arg in args]


def use_standard_fds(conn, fds):
    """Reads the client's stdin and writes to its stdout and stderr through the fds it sent."""
    line = os.read(fds[1], 100)
    os.write(fds[2], b"out:" + line)
    os.write(fds[3], b"err:" + line)
    exits(0)(conn, fds)


def test_fds_are_the_clients_stdin_stdout_stderr(client, tmp_path):
    """What the service reads from fd 1 and writes to fds 2 and 3 is the client's own stdin, stdout and stderr."""
    service = FakeService(name, use_standard_fds)
    done = run(client, ["--socket", name, "cat"], input=b"hello")
    service.join()
    assert (done.returncode, done.stdout, done.stderr) == (0, b"out:hello", b"err:hello")


@pytest.mark.parametrize("status", [0, 3, 255])
def test_exit_status_is_relayed(client, tmp_path, status):
    """The client exits with the status in the service's exit message."""
    service = FakeService(name, exits(status))
    done = run(client, ["--socket", name, "true"])
    service.join()
    assert (done.returncode, done.stderr) == (status, b"")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH])
def test_signal_is_forwarded(client, tmp_path, signum):
    """A signal to the client reaches the service as sig\\0 + its number; the client lives on to relay the status."""
    got = []
    service = FakeService(name, lambda conn, fds: (got.append(conn.recv(64)), exits(7)(conn, fds)))
    proc = subprocess.Popen([client, "--socket", name, "sleep", "9"], stderr=subprocess.PIPE)
    assert service.received.wait(TIMEOUT)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    service.join()
    assert (proc.returncode, stderr, got) == (7, b"", [b"sig\0" + struct.pack("<I", signum)])


ENDINGS = {
    "closed": (lambda conn, fds: None, NO_STATUS),
    "short": (lambda conn, fds: conn.send(b"exit\0\0\0"), NOT_UNDERSTOOD),
    "long": (lambda conn, fds: conn.send(b"exit" + struct.pack("<II", 0, 0)), NOT_UNDERSTOOD),
    "wrong tag": (lambda conn, fds: conn.send(b"quit" + struct.pack("<I", 0)), NOT_UNDERSTOOD),
    "status over 255": (lambda conn, fds: conn.send(b"exit" + struct.pack("<I", 256)), NOT_UNDERSTOOD),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_run_ended_without_a_status_is_125(client, tmp_path, ending):
    """A service that closes, or sends anything but an exit message, makes the client exit 125 with one line."""
    reply, message = ENDINGS[ending]
    service = FakeService(name, reply)
    done = run(client, ["--socket", name, "true"])
    service.join()
    assert (done.returncode, done.stdout, done.stderr.decode()) == (125, b"", message)


# How the client finds the socket: (environment, arguments, the path it tries) with {tmp} for tmp_path.
SOCKET_PATHS = [
    ({}, ["--socket", "{tmp}/given.sock"], "{tmp}/given.sock"),
    ({"FARAMESH_SANDBOX_SOCKET": "{tmp}/env.sock"}, [], "{tmp}/env.sock"),
    ({"FARAMESH_SANDBOX_SOCKET": "", "FARAMESH_SANDBOX_RUNTIME_DIR": "{tmp}/rt"}, [], "{tmp}/rt/service/run.sock"),
    ({"FARAMESH_SANDBOX_SOCKET": "{tmp}/env.sock"}, ["--socket", "{tmp}/given.sock"], "{tmp}/given.sock"),
]


@pytest.mark.parametrize("env, args, path", SOCKET_PATHS)
def test_no_service_is_125_with_the_path_and_hint(client, tmp_path, env, args, path):
    """With nothing listening, the client names the socket it tried and how to start a service."""
    env = {name: value.format(tmp=tmp_path) for name, value in env.items()}
    done = run(client, [arg.format(tmp=tmp_path) for arg in args] + ["true"], env=env)
    expected = f"faramesh-sandbox: no service at {path.format(tmp=tmp_path)} (No such file or directory)"
    assert (done.returncode, done.stderr.decode()) == (125, expected + NO_SERVICE_HINT)


def test_refused_connection_is_no_service(client, tmp_path):
    """A socket file nobody listens on is 'no service' too (ECONNREFUSED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as bound_only:
        bound_only.bind(str(tmp_path / "dead.sock"))
        done = run(client, ["--socket", str(tmp_path / "dead.sock"), "true"])
    expected = f"faramesh-sandbox: no service at {tmp_path}/dead.sock (Connection refused)"
    assert (done.returncode, done.stderr.decode()) == (125, expected + NO_SERVICE_HINT)


USAGE_ERRORS = [
    (["--bogus", "true"], "unknown option --bogus"),
    (["-x"], "unknown option -x"),
    (["--socket"], "--socket needs a PATH"),
    ([], "no command given"),
    (["--"], "no command after --"),
    (["--socket", "/tmp/" + "x" * 200, "true"], "longer than the 107 a unix socket allows"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS)
def test_bad_command_line_is_125_with_one_line(client, args, message):
    """A wrong option, a missing command or an impossible socket path is one line with a hint, status 125."""
    done = run(client, args)
    lines = done.stderr.decode().splitlines()
    assert (done.returncode, len(lines), message in lines[0], " — hint: " in lines[0]) == (125, 1, True, True), lines
    assert lines[0].startswith("faramesh-sandbox: ")


def test_removed_cwd_is_125_with_hint(client, tmp_path):
    """A current directory that no longer exists is refused before connecting, with the hint to cd elsewhere."""
    script = 'mkdir gone && cd gone && rmdir ../gone && exec "$@"'
    done = run("sh", ["-c", script, "sh", client, "--socket", str(tmp_path / "none.sock"), "true"], cwd=tmp_path)
    assert (done.returncode, done.stderr.decode()) == (
        125, "faramesh-sandbox: cannot read the current directory: No such file or directory — hint: cd to a "
             "directory that exists\n")


def test_help_prints_usage(client):
    """--help prints the usage on stdout and exits 0."""
    done = run(client, ["--help"])
    assert (done.returncode, done.stdout.decode().splitlines()[0], done.stderr) == (
        0, f"usage: {client} [--socket PATH] [--] CMD [ARGS...]", b"")


def test_reset_connection_is_125(client, tmp_path):
    """A service that closes with the client's signal message unread (ECONNRESET) is a run without a status."""
    service = FakeService(name, lambda conn, fds: conn.recv(64, socket.MSG_PEEK))
    proc = subprocess.Popen([client, "--socket", name, "true"], stderr=subprocess.PIPE)
    assert service.received.wait(TIMEOUT)
    proc.send_signal(signal.SIGWINCH)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    service.join()
    assert (proc.returncode, stderr.decode()) == (125, NO_STATUS)


def serve_as_nobody(path: str, report: int):
    """In a forked child: become uid 65534, listen at path, write 'ready', then what one connection sent."""
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server.bind(path)
        server.listen(1)
        server.settimeout(TIMEOUT)
        os.write(report, b"ready")
        conn, _ = server.accept()
        conn.settimeout(TIMEOUT)
        message, fds, _, _ = socket.recv_fds(conn, 64, 8)
        os.write(report, f" uid={os.getuid()} bytes={len(message)} fds={len(fds)}".encode())
    finally:
        os._exit(0)


@pytest.mark.kernel
def test_service_of_another_user_is_refused(client):
    """A service run by uid 65534 is refused, and it receives neither the request nor a single fd."""
    directory = tempfile.mkdtemp(prefix="client-c-")  # in /tmp: the other user can reach it
    path = os.path.join(directory, "run.sock")
    read_end, write_end = os.pipe()
    try:
        os.chmod(directory, 0o777)
        pid = os.fork()
        if pid == 0:
            serve_as_nobody(path, write_end)
        os.close(write_end)
        assert os.read(read_end, 5) == b"ready"
        done = run(client, ["--socket", path, "true"])
        os.waitpid(pid, 0)
        received = os.read(read_end, 100)
    finally:
        os.close(read_end)
        shutil.rmtree(directory)
    assert (done.returncode, done.stderr.decode()) == (
        125, f"faramesh-sandbox: the service at {path} belongs to uid 65534, not to you — hint: pass --socket or "
             "set FARAMESH_SANDBOX_SOCKET to the socket of a service you started\n")
    assert received == b" uid=65534 bytes=0 fds=0"


@pytest.mark.parametrize("closed", [0, 1, 2])
def test_closed_standard_fd_is_sent_as_dev_null(client, tmp_path, closed):
    """A closed stdin, stdout or stderr reaches the service as /dev/null; the others stay what they were."""
    kinds = []
    service = FakeService(name, lambda conn, fds: (
        kinds.extend(os.fstat(fd) for fd in fds[1:]), exits(0)(conn, fds)))
    done = run("sh", ["-c", f'exec "$@" {closed}>&-', "sh", client, "--socket", name, "true"],
               stdin=subprocess.PIPE)
    service.join()
    null = os.stat("/dev/null")
    is_null = [stat.S_ISCHR(info.st_mode) and info.st_rdev == null.st_rdev for info in kinds]
    assert (done.returncode, is_null) == (0, [fd == closed for fd in range(3)])
