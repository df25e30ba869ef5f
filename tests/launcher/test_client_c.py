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

from launcher.serve import default_socket
from launcher.serve_request import address
from sandbox import _libc, notify

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "launcher" / "_client"
MAGIC = b"faramesh-run-1\x00"
READY = b"ready"
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
    """One connection of a fake `serve`: lets the client in (``ready``), keeps the request (magic, fds,
    records), then `reply(conn, fds)`."""

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
                conn.send(READY)
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


def test_request_holds_magic_cwd_args_and_environment(client, name, tmp_path):
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


def test_request_carries_megabytes_of_arguments(client, name):
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


def test_fds_are_the_clients_stdin_stdout_stderr(client, name):
    """What the service reads from fd 1 and writes to fds 2 and 3 is the client's own stdin, stdout and stderr."""
    service = FakeService(name, use_standard_fds)
    done = run(client, ["--socket", name, "cat"], input=b"hello")
    service.join()
    assert (done.returncode, done.stdout, done.stderr) == (0, b"out:hello", b"err:hello")


@pytest.mark.parametrize("status", [0, 3, 255])
def test_exit_status_is_relayed(client, name, status):
    """The client exits with the status in the service's exit message."""
    service = FakeService(name, exits(status))
    done = run(client, ["--socket", name, "true"])
    service.join()
    assert (done.returncode, done.stderr) == (status, b"")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH])
def test_signal_is_forwarded(client, name, signum):
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
    "ready again": (lambda conn, fds: conn.send(READY), NOT_UNDERSTOOD),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_run_ended_without_a_status_is_125(client, name, ending):
    """A service that closes, or sends anything but an exit message, makes the client exit 125 with one line."""
    reply, message = ENDINGS[ending]
    service = FakeService(name, reply)
    done = run(client, ["--socket", name, "true"])
    service.join()
    assert (done.returncode, done.stdout, done.stderr.decode()) == (125, b"", message)


# How the client picks the name: (environment, arguments, the name it tries); the default is the
# one launcher/serve.py default_socket() gives this user.
SOCKET_NAMES = [
    ({}, ["--socket", "given"], "given"),
    ({"FARAMESH_SANDBOX_SOCKET": "from-env"}, [], "from-env"),
    ({"FARAMESH_SANDBOX_SOCKET": "from-env"}, ["--socket", "given"], "given"),
    ({}, [], f"faramesh-sandbox-{os.geteuid()}"),
    ({"FARAMESH_SANDBOX_SOCKET": ""}, [], f"faramesh-sandbox-{os.geteuid()}"),
]


@pytest.mark.kernel
@pytest.mark.parametrize("env, args, tried", SOCKET_NAMES)
def test_no_service_is_125_with_the_name_and_hint(client, env, args, tried):
    """With nothing listening (a network namespace of its own, where no service can be), the client
    names the abstract socket it tried and how to start a service."""
    done = run("unshare", ["--net", client, *args, "true"], env=env)
    expected = f"faramesh-sandbox: no service at @{tried} (Connection refused)"
    assert (done.returncode, done.stderr.decode()) == (125, expected + NO_SERVICE_HINT)


def test_default_name_is_the_services():
    """The client's default name (SOCKET_NAMES) is the one `serve` listens at by default."""
    assert default_socket() == f"faramesh-sandbox-{os.geteuid()}"


def test_a_name_bound_but_not_listening_is_no_service(client, name):
    """An abstract name bound by a socket that does not listen is 'no service' too (ECONNREFUSED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as bound_only:
        bound_only.bind(address(name))
        done = run(client, ["--socket", name, "true"])
    expected = f"faramesh-sandbox: no service at @{name} (Connection refused)"
    assert (done.returncode, done.stderr.decode()) == (125, expected + NO_SERVICE_HINT)


USAGE_ERRORS = [
    (["--bogus", "true"], "unknown option --bogus"),
    (["-x"], "unknown option -x"),
    (["--socket"], "--socket needs a NAME"),
    ([], "no command given"),
    (["--"], "no command after --"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS)
def test_bad_command_line_is_125_with_one_line(client, args, message):
    """A wrong option or a missing command is one line with a hint, status 125."""
    done = run(client, args)
    lines = done.stderr.decode().splitlines()
    assert (done.returncode, len(lines), message in lines[0], " — hint: " in lines[0]) == (125, 1, True, True), lines
    assert lines[0].startswith("faramesh-sandbox: ")


# (environment, arguments, the name refused): a path (an old --socket PATH), a '/' anywhere, no
# name at all, one byte over what sun_path holds after the abstract NUL.
BAD_NAMES = [
    ({}, ["--socket", "/run/faramesh-sandbox/service/run.sock"], "/run/faramesh-sandbox/service/run.sock"),
    ({}, ["--socket", "a/b"], "a/b"),
    ({"FARAMESH_SANDBOX_SOCKET": "/tmp/run.sock"}, [], "/tmp/run.sock"),
    ({}, ["--socket", ""], ""),
    ({}, ["--socket", "x" * 108], "x" * 108),
]


@pytest.mark.parametrize("env, args, refused", BAD_NAMES)
def test_a_name_that_is_not_abstract_is_125_before_connecting(client, env, args, refused):
    """A socket name that is empty, holds a '/' or is 108 bytes or more is refused with one line, 125."""
    done = run(client, [*args, "true"], env=env)
    assert (done.returncode, done.stdout, done.stderr.decode()) == (125, b"", BAD_NAME.format(name=refused))


@pytest.mark.kernel
def test_a_name_of_107_bytes_is_tried(client):
    """107 bytes, the most an abstract name holds, is a name the client connects to."""
    longest = "y" * 107
    done = run("unshare", ["--net", client, "--socket", longest, "true"])
    expected = f"faramesh-sandbox: no service at @{longest} (Connection refused)"
    assert (done.returncode, done.stderr.decode()) == (125, expected + NO_SERVICE_HINT)


def test_removed_cwd_is_125_with_hint(client, name, tmp_path):
    """A current directory that no longer exists is refused before connecting, with the hint to cd elsewhere."""
    script = 'mkdir gone && cd gone && rmdir ../gone && exec "$@"'
    done = run("sh", ["-c", script, "sh", client, "--socket", name, "true"], cwd=tmp_path)
    assert (done.returncode, done.stderr.decode()) == (
        125, "faramesh-sandbox: cannot read the current directory: No such file or directory — hint: cd to a "
             "directory that exists\n")


def test_help_prints_usage(client):
    """--help prints the usage on stdout and exits 0."""
    done = run(client, ["--help"])
    assert (done.returncode, done.stdout.decode().splitlines()[0], done.stderr) == (
        0, f"usage: {client} [--socket NAME] [--] CMD [ARGS...]", b"")


def test_reset_connection_is_125(client, name):
    """A service that closes with the client's signal message unread (ECONNRESET) is a run without a status."""
    service = FakeService(name, lambda conn, fds: conn.recv(64, socket.MSG_PEEK))
    proc = subprocess.Popen([client, "--socket", name, "true"], stderr=subprocess.PIPE)
    assert service.received.wait(TIMEOUT)
    proc.send_signal(signal.SIGWINCH)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    service.join()
    assert (proc.returncode, stderr.decode()) == (125, NO_STATUS)


def serve_as_nobody(name: str, report: int):
    """In a forked child: become uid 65534, listen at the abstract ``name``, write 'ready', then what
    one connection sent."""
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server.bind(address(name))  # abstract names have no owner or mode: any uid may take any free one
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
def test_service_of_another_user_is_refused(client, name):
    """A service run by uid 65534 at the client's name is refused, and it receives neither the request
    nor a single fd."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            serve_as_nobody(name, write_end)
        os.close(write_end)
        assert os.read(read_end, 5) == b"ready"
        done = run(client, ["--socket", name, "true"])
        os.waitpid(pid, 0)
        received = os.read(read_end, 100)
    finally:
        os.close(read_end)
    assert (done.returncode, done.stderr.decode()) == (
        125, f"faramesh-sandbox: the service at @{name} belongs to uid 65534, not to you" + NOT_YOURS_HINT)
    assert received == b" uid=65534 bytes=0 fds=0"


@pytest.mark.kernel
def test_a_root_service_is_refused_by_a_client_of_another_user(client, name):
    """A client run as uid 65534 refuses a service of root's at its name: only its own uid is trusted."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as server:
        server.bind(address(name))
        server.listen(1)
        done = run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", client, "--socket", name, "true"],
                   cwd="/")
        server.settimeout(TIMEOUT)
        conn, _ = server.accept()  # the client's connection, queued; what it sent, if anything
        with conn:
            conn.settimeout(TIMEOUT)
            message, fds, _, _ = socket.recv_fds(conn, 64, 8)
    assert (done.returncode, done.stderr.decode(), message, fds) == (
        125, f"faramesh-sandbox: the service at @{name} belongs to uid 0, not to you" + NOT_YOURS_HINT, b"", [])


# ---- lines from the service ---------------------------------------------------------------------------

def test_service_lines_are_printed_in_order_before_the_status(client, name):
    """Each msg\\0 message is one line on the client's stderr, in the order sent; the client waits on
    to the exit message and exits with its status."""
    service = FakeService(name, says(b"faramesh-sandbox: first", "faramesh-sandbox: second — é".encode(), status=4))
    done = run(client, ["--socket", name, "true"])
    service.join()
    assert (done.returncode, done.stdout, done.stderr) == (
        4, b"", "faramesh-sandbox: first\nfaramesh-sandbox: second — é\n".encode())


def test_a_line_after_the_status_is_not_printed(client, name):
    """The exit message ends the client: a message after it is never printed."""
    service = FakeService(name, lambda conn, fds: (says(b"before", status=0)(conn, fds), conn.send(b"msg\0after")))
    done = run(client, ["--socket", name, "true"])
    service.join()
    assert (done.returncode, done.stderr) == (0, b"before\n")


@pytest.mark.parametrize(("size", "printed"), [(4096, 4096), (5000, 4096)])
def test_a_line_is_printed_up_to_4096_bytes(client, name, size, printed):
    """A line of 4096 bytes, the most the service sends, is printed whole; a longer one is cut there."""
    service = FakeService(name, says(b"L" * size, status=0))
    done = run(client, ["--socket", name, "true"])
    service.join()
    assert (done.returncode, done.stderr) == (0, b"L" * printed + b"\n")


REFUSAL = "faramesh-sandbox: uid 1 may not use this service — hint: each user runs a service of their own".encode()


def test_refused_before_it_is_let_in_the_client_prints_the_line_and_status(client, name):
    """A service that sends its line and status without ``ready`` and closes, reading nothing, has
    the client print the line and exit with the status; the client never sends its request."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as server:
        server.bind(address(name))
        server.listen(1)
        server.settimeout(TIMEOUT)
        proc = subprocess.Popen([client, "--socket", name, "true"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            conn, _ = server.accept()
            with conn:
                conn.send(b"msg\0" + REFUSAL)
                conn.send(b"exit" + struct.pack("<I", 125))
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(TIMEOUT)
                sent = conn.recv(64)  # what the client sends before it ends: nothing
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err, sent) == (125, b"", REFUSAL + b"\n", b"")


HOLD_SENDMSG = r"""
import os, sys
from sandbox import _libc, seccomp
program, report, go = bytes.fromhex(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
_libc.set_no_new_privs()
listener = seccomp.install(program)
os.write(report, b"%d" % listener)
os.read(go, 1)  # the test has taken the listener: it goes with this process's exec (CLOEXEC)
os.execv(sys.argv[4], sys.argv[4:])
"""


def _sendmsg_notifies() -> bytes:
    """A seccomp filter that holds every sendmsg for a listener to answer, and allows the rest."""
    program = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    program.add_rule(pyseccomp.NOTIFY, "sendmsg")
    with open(os.memfd_create("sendmsg-held", os.MFD_CLOEXEC), "w+b") as sink:
        program.export_bpf(sink)
        sink.seek(0)
        return sink.read()


@pytest.mark.kernel
def test_refused_before_its_request_came_the_client_prints_the_line_and_status(client, name):
    """A service that lets the client in, then sends its line and status and closes before the
    request is sent (the client's sendmsg held by a seccomp listener until then, so it fails with
    EPIPE), still has the client print the line and exit with the status."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as server:
        server.bind(address(name))
        server.listen(1)
        server.settimeout(TIMEOUT)
        report_read, report_write = os.pipe()
        go_read, go_write = os.pipe()
        proc = subprocess.Popen([sys.executable, "-c", HOLD_SENDMSG, _sendmsg_notifies().hex(), str(report_write),
                                 str(go_read), client, "--socket", name, "true"], pass_fds=(report_write, go_read),
                                env={"PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(report_write)
        os.close(go_read)
        listener = pidfd = None
        try:
            number = int(os.read(report_read, 16))
            pidfd = os.pidfd_open(proc.pid)
            listener = _libc.pidfd_getfd(pidfd, number)
            os.write(go_write, b"g")
            conn, _ = server.accept()
            with conn:
                conn.send(READY)
                assert select.select([listener], [], [], TIMEOUT)[0], "the client never called sendmsg"
                held = notify.recv(listener)  # the request, not sent yet
                conn.send(b"msg\0" + REFUSAL)
                conn.send(b"exit" + struct.pack("<I", 125))
            notify.send_continue(listener, held.id)  # the kernel runs it now, on a closed connection
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            proc.kill()
            proc.wait()
            for fd in (report_read, go_write, pidfd, listener):
                if fd is not None:
                    os.close(fd)
    assert held.nr == _libc.syscall_number("sendmsg")
    assert (proc.returncode, out, err) == (125, b"", REFUSAL + b"\n")


SERVE_IN_A_PID_NAMESPACE = r"""
import socket, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.bind(b"\0" + sys.argv[1].encode())
server.listen(1)
server.settimeout(10)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(10)
message, fds, _, _ = socket.recv_fds(conn, 64, 8)
print(f"bytes={len(message)} fds={len(fds)}", flush=True)
"""


@pytest.mark.kernel
def test_a_service_in_another_pid_namespace_is_refused(client, name):
    """A process of our uid at the client's name but in a pid namespace of its own (a container
    sharing the network) is refused, and it receives neither the request nor a single fd."""
    fake = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c",
                             SERVE_IN_A_PID_NAMESPACE, name], stdout=subprocess.PIPE)
    try:
        assert fake.stdout.readline() == b"ready\n"
        done = run(client, ["--socket", name, "true"])
        received = fake.communicate(timeout=TIMEOUT)[0]
    finally:
        fake.kill()
        fake.wait()
    assert (done.returncode, done.stderr.decode(), received) == (
        125, f"faramesh-sandbox: the process at @{name} is in another pid namespace (a container), or gone"
             + NOT_YOURS_HINT, b"bytes=0 fds=0\n")


@pytest.mark.parametrize("closed", [0, 1, 2])
def test_closed_standard_fd_is_sent_as_dev_null(client, name, closed):
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
