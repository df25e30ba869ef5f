"""`faramesh-sandbox serve` as a real service with launcher/_client: output, statuses, signals and
pipes as native, a fresh sandbox and session per command, the policy, who may connect (its abstract
socket is out of every sandbox's reach), refusals sent over the connection, and clean-up."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

import launcher.cli
from launcher.serve_request import address

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "launcher" / "_client"
PERMIT = "agent a {\n  default permit\n}\n"
DENY_WRITE = 'agent a {\n  default permit\n  deny fs/write when args.path endsWith "/denied.txt" reason: "kept"\n}\n'
MAGIC = b"faramesh-run-1\0"
HINT = " — hint: clients give commands: {client} -- CMD; per-run reports need `faramesh-sandbox run`\n"
SANDBOX_SDK_SOCKET = "/run/faramesh/faramesh.sock"
PARSER = launcher.cli.build_parser()
TIMEOUT = 20
EXIT_125 = b"exit" + struct.pack("<I", 125)
READY = b"ready"


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _listening(name: str) -> bool:
    """Whether a socket of this network namespace listens at the abstract ``name`` (/proc/net/unix:
    Num RefCount Protocol Flags Type St Inode Path; Flags 0x10000 is __SO_ACCEPTCON)."""
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
        rows = [line.split() for line in table]
    return any(len(row) == 8 and row[7] == "@" + name and int(row[3], 16) & 0x10000 for row in rows[1:])


def _unique_name(label: str) -> str:
    return f"serve-test-{label}-{uuid.uuid4().hex[:12]}"


# The service with the compiled start-up switched off: init and the agent are set up by the Python
# stages, and a spare waits for its command before it makes the sandbox (launcher/run.py _late_or_now).
PYTHON_INIT = ("import sys\nfrom sandbox import agent_spawn\nagent_spawn._spawn = None\n"
               "from launcher.cli import main\nsys.exit(main(sys.argv[1:]))\n")


class Service:
    """`python3 -m launcher serve` at an abstract name of its own, with its runtime directory and
    policy inside ``root``; started with the standard fds ``closed`` (some of 0, 1, 2) closed."""

    def __init__(self, root: Path, policy_text: str, *options: str, closed: tuple[int, ...] = (),
                 python_init: bool = False):
        self.root = root
        root.mkdir(parents=True)
        (root / "policy.fpl").write_text(policy_text)
        self.socket = _unique_name(root.name)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(root / "rt"),
                    "FARAMESH_SANDBOX_CONFIG": "/nonexistent/faramesh-sandbox/config.toml"}
        self.env.pop("FARAMESH_SANDBOX_SOCKET", None)
        self.stderr = root / "service.err"
        start = [sys.executable, "-c", PYTHON_INIT] if python_init else [sys.executable, "-m", "launcher"]
        argv = [*start, "serve", "--policy", str(root / "policy.fpl"), "--socket", self.socket, "--no-audit-db",
                *options]
        if closed:
            argv = ["sh", "-c", 'exec "$@" ' + " ".join(f"{fd}>&-" for fd in closed), "sh", *argv]
        with open(self.stderr, "wb") as stderr:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                         cwd=ROOT, env=self.env)
        deadline = time.monotonic() + TIMEOUT
        while not _listening(self.socket):
            assert self.proc.poll() is None, f"the service ended: {self.stderr.read_text()}"
            assert time.monotonic() < deadline, "the service never listened at its name"
            time.sleep(0.02)

    def command(self, client: str, *argv: str) -> list[str]:
        return [client, "--socket", self.socket, "--", *argv]

    def run(self, client: str, *argv: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(client, *argv), capture_output=True, timeout=TIMEOUT,
                              env=os.environ if env is None else env, **kwargs)

    def tree(self) -> list[psutil.Process]:
        """The service and every process below it (runners call setsid, but stay its children)."""
        service = psutil.Process(self.proc.pid)
        return [service, *service.children(recursive=True)]

    def wait_for_spare(self) -> None:
        """Until the spare's init waits in its namespaces."""
        deadline = time.monotonic() + 5
        while not any(_cmdline(process) == "faramesh-sandbox-init" for process in self.tree()):
            assert time.monotonic() < deadline, "no spare made"
            time.sleep(0.02)

    def leftovers(self) -> list[str]:
        """Processes whose command line names this service's directory (its forks all do)."""
        return [f"{process.pid} {_cmdline(process)}" for process in psutil.process_iter()
                if str(self.root) in _cmdline(process)]

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int | None, list[str]]:
        """``signum`` (SIGTERM); its status, and what of its tree (captured just before) or its forks
        is still alive 5 s later (killed then, so nothing outlives the test)."""
        tree = self.tree() if self.proc.poll() is None else []
        self.proc.send_signal(signum)
        try:
            status = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = None
        return status, _left_of(tree, self.leftovers)


def _left_of(tree: list[psutil.Process], leftovers) -> list[str]:
    """What of ``tree`` (and ``leftovers()``) is alive 5 s from now; killed then."""
    _gone, alive = psutil.wait_procs(tree, timeout=5)
    left = sorted({f"{process.pid} {_cmdline(process)}" for process in alive if _alive(process.pid)}
                  | set(leftovers()))
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    return left


@pytest.fixture(scope="module")
def service(tmp_path_factory, client):
    """A service of a permissive policy, shared by the module; stopping it must leave nothing."""
    started = Service(tmp_path_factory.mktemp("serve") / "permit", PERMIT)
    yield started
    assert started.stop() == (0, [])


@pytest.fixture(scope="module")
def strict(tmp_path_factory, client):
    """A service denying writes to */denied.txt, with an audit log, no SDK socket and a 2 s timeout."""
    root = tmp_path_factory.mktemp("serve") / "strict"
    started = Service(root, DENY_WRITE, "--audit", str(root.parent / "audit.jsonl"), "--no-sdk-socket",
                      "--timeout", "2s")
    yield started
    assert started.stop() == (0, [])


def _native(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, timeout=TIMEOUT, **kwargs)


def _outcome(done: subprocess.CompletedProcess) -> tuple[int, bytes, bytes]:
    return done.returncode, done.stdout, done.stderr


# ---- what a command gets -------------------------------------------------------------------------

def test_output_and_status_are_as_native(service, client):
    """stdout, stderr and the exit status through the service are those of the same command run natively."""
    argv = ("sh", "-c", "echo out; echo err >&2; exit 7")
    assert _outcome(service.run(client, *argv)) == _outcome(_native(*argv)) == (7, b"out\n", b"err\n")


def test_stdin_passes_through(service, client):
    """The client's stdin is the agent's: cat echoes what is piped in."""
    given = b"line one\nline two\n" * 1000
    assert _outcome(service.run(client, "cat", input=given)) == (0, given, b"")


def test_cwd_is_the_clients(service, client, tmp_path):
    """The agent starts in the client's working directory."""
    (tmp_path / "here").mkdir()
    assert _outcome(service.run(client, "pwd", cwd=tmp_path / "here")) == (0, f"{tmp_path}/here\n".encode(), b"")


def test_env_is_the_clients_with_the_sdk_socket(service, client):
    """A variable set only in the client's environment reaches the agent; FARAMESH_SOCKET is the
    sandbox's SDK socket, whatever the client had."""
    env = {**os.environ, "CLIENT_ONLY": "from the client", "FARAMESH_SOCKET": "/elsewhere.sock"}
    done = service.run(client, "sh", "-c", 'echo "$CLIENT_ONLY|$FARAMESH_SOCKET"', env=env)
    assert "CLIENT_ONLY" not in service.env
    assert _outcome(done) == (0, f"from the client|{SANDBOX_SDK_SOCKET}\n".encode(), b"")


def test_no_sdk_socket_means_no_faramesh_socket(strict, client):
    """A service given --no-sdk-socket sets no FARAMESH_SOCKET for the agent."""
    done = strict.run(client, "sh", "-c", 'echo "[${FARAMESH_SOCKET-unset}]"')
    assert _outcome(done) == (0, b"[unset]\n", b"")


# ---- status conventions, and a sandbox per command ---------------------------------------------------

@pytest.mark.parametrize(("argv", "status", "stderr"), [
    (("sh", "-c", "kill -TERM $$"), 143, b""),
    (("sh", "-c", "kill -KILL $$"), 137, b""),
    (("/etc/os-release",), 126, b"faramesh-sandbox: /etc/os-release: Permission denied\n"),
    (("no-such-program-xyz",), 127, b"faramesh-sandbox: no-such-program-xyz: No such file or directory\n"),
])
def test_status_follows_the_shell_convention(service, client, argv, status, stderr):
    """Killed by signal N is 128+N; not executable 126 and not found 127, each with the shell-style line."""
    done = service.run(client, *argv)
    assert (done.returncode, done.stderr) == (status, stderr)


def test_each_command_gets_a_fresh_sandbox(service, client):
    """Each command is pid 2 of a pid namespace of its own, on the sandbox's hostname."""
    first = service.run(client, "sh", "-c", "echo $$; hostname")
    second = service.run(client, "sh", "-c", "echo $$; hostname")
    assert _outcome(first) == _outcome(second) == (0, b"2\nsandbox\n", b"")


# ---- the policy --------------------------------------------------------------------------------------

def test_a_denied_write_fails_and_is_audited_per_session(strict, client, tmp_path):
    """The service's policy decides: a write it denies fails with EACCES, and each command's DENY is
    audited with a session of its own."""
    target = tmp_path / "denied.txt"
    script = f'echo x > {target}; echo "status $?"'
    runs = [strict.run(client, "sh", "-c", script) for _ in range(2)]
    assert [_outcome(done) for done in runs] == [
        (0, b"status 2\n", f"sh: 1: cannot create {target}: Permission denied\n".encode())] * 2
    assert not target.exists()
    records = [json.loads(line) for line in (strict.root.parent / "audit.jsonl").read_text().splitlines()]
    denied = [(r["tool"], r["args"]["path"], r["effect"], r["rule_id"], r["reason"]) for r in records
              if r["effect"] == "DENY" and r["args"].get("path") == str(target)]
    assert denied == [("fs/write", str(target), "DENY", "fpl-0", "kept")] * 2
    sessions = [r["session"] for r in records if r["effect"] == "DENY" and r["args"].get("path") == str(target)]
    assert len(set(sessions)) == 2 and all(len(session) == 12 for session in sessions)


def test_timeout_counts_from_the_command(strict, client):
    """--timeout 2s: a spare older than 2 s still gives a 1 s command its time; a longer one is killed (124)."""
    time.sleep(3)  # every spare of the service is now older than its timeout
    started = time.monotonic()
    assert _outcome(strict.run(client, "sleep", "1")) == (0, b"", b"")
    done = strict.run(client, "sleep", "10")
    assert (done.returncode, time.monotonic() - started < 6) == (124, True)
    assert done.stderr == b"faramesh-sandbox: time limit 2s reached: the sandbox was killed (exit status 124)\n"


# ---- several clients, signals, the client's end -------------------------------------------------------

def test_two_clients_at_once_are_both_served(service, client):
    """Two clients started together each get their own run and status within a few seconds."""
    started = time.monotonic()
    slow = subprocess.Popen(service.command(client, "sh", "-c", "sleep 0.5; echo A"), stdout=subprocess.PIPE)
    fast = subprocess.Popen(service.command(client, "sh", "-c", "echo B"), stdout=subprocess.PIPE)
    outputs = [proc.communicate(timeout=TIMEOUT) for proc in (slow, fast)]
    assert [(proc.returncode, out) for proc, (out, _err) in zip((slow, fast), outputs)] == [(0, b"A\n"), (0, b"B\n")]
    assert time.monotonic() - started < 5


def _sigterm_outcome(service, client: str) -> tuple[int, bytes]:
    """(status, stdout) of an agent that traps TERM, after SIGTERM was sent to its client."""
    script = 'trap "echo got; exit 3" TERM; echo ready; while :; do sleep 0.1; done'
    proc = subprocess.Popen(service.command(client, "sh", "-c", script), stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    return proc.returncode, out


def test_sigterm_to_the_client_reaches_the_agent(service, client):
    """SIGTERM sent to the client is passed on to the agent, whose trap decides the status."""
    assert _sigterm_outcome(service, client) == (3, b"got\n")


def _processes_with_cmdline(argv: list[str]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if cmdline.read().split(b"\0")[:-1] == [arg.encode() for arg in argv]:
                    found.append(int(entry))
        except (OSError, ValueError):
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _agents_left_after_sigkill_of_the_client(service, client: str, tag: str) -> list[int]:
    """The agent's processes still alive 5 s after its client was killed with SIGKILL."""
    argv = ["sleep", f"{tag}.{os.getpid()}"]  # a command line no other process has
    proc = subprocess.Popen(service.command(client, "sh", "-c", f'echo ready; exec {" ".join(argv)}'),
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 5
        while not (agents := _processes_with_cmdline(argv)):
            assert time.monotonic() < deadline, "the agent's sleep never appeared"
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in agents) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [pid for pid in agents if _alive(pid)]
    finally:
        proc.kill()
        proc.wait()
        for pid in _processes_with_cmdline(argv):
            os.kill(pid, signal.SIGKILL)


def test_a_client_killed_with_sigkill_kills_the_agent(service, client):
    """The client's death, even by SIGKILL, ends its command: the agent is gone within 5 s."""
    assert _agents_left_after_sigkill_of_the_client(service, client, "1000") == []


def _holders(pipe: int) -> list[str]:
    """Processes other than this one holding an end of ``pipe``."""
    name, holders = f"pipe:[{os.fstat(pipe).st_ino}]", []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") == name for fd in os.listdir(f"/proc/{entry}/fd")):
                holders.append(f"{entry} {_cmdline(psutil.Process(int(entry)))}")
        except (OSError, psutil.Error):
            pass
    return holders


@pytest.mark.parametrize("script", ["true", "(sleep 30) & echo started"])
def test_the_clients_pipes_end_with_its_command(service, client, script):
    """Once the client has exited with its command's status, no process (the runner tearing the run
    down, a command's background process) holds its stdout or stderr pipe: a reader sees their end
    at once, and the whole run with captured output takes well under 2 s."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    started = time.monotonic()
    proc = subprocess.Popen(service.command(client, "sh", "-c", script), stdout=out_write, stderr=err_write)
    os.close(out_write)
    os.close(err_write)
    try:
        status = proc.wait(TIMEOUT)
        holders = _holders(out_read) + _holders(err_read)
    finally:
        proc.kill()
        proc.wait()
        os.close(out_read)
        os.close(err_read)
    assert (status, holders) == (0, [])
    assert time.monotonic() - started < 2
    done = service.run(client, "sh", "-c", script)  # as subprocess.run(capture_output=True) sees it
    assert (done.returncode, time.monotonic() - started < 2) == (0, True)


# ---- who may use the service ------------------------------------------------------------------------

def test_the_service_says_where_it_serves(service):
    """The service's first line names its policy, its abstract name and the client's command line."""
    assert service.stderr.read_text().splitlines()[0] == (
        f"faramesh-sandbox: serving {service.root / 'policy.fpl'} at @{service.socket}; run a command with: "
        f"{CLIENT} --socket {service.socket} -- CMD")


def _in_sandbox(how: str, service: Service, client: str, *argv: str, **popen) -> subprocess.Popen:
    """``argv`` as an agent: a command of ``service`` ("served"), or of `faramesh-sandbox run` with the
    same policy ("run"); stdout and stderr piped."""
    if how == "served":
        argv = service.command(client, *argv)
    else:
        argv = [sys.executable, "-m", "launcher", "run", "--policy", str(service.root / "policy.fpl"), "--no-audit-db",
                "--", *argv]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=service.env, cwd=ROOT, **popen)


CONNECT = """
import socket, sys
probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
try:
    probe.connect(b"\\0" + sys.argv[1].encode())
except OSError as err:
    print(type(err).__name__)
else:
    print("connected")
"""


@pytest.mark.parametrize("how", ["served", "run"])
def test_an_agent_cannot_reach_the_service(service, client, how):
    """Inside a sandbox (a served command's, or `run`'s) the service's abstract name is unbound: the
    network namespace is the sandbox's own. A connect is refused, and so is the client."""
    script = f'{sys.executable} -c "$0" "$1"; {client} --socket "$1" -- true; echo "client status $?"'
    agent = _in_sandbox(how, service, client, "sh", "-c", script, CONNECT, service.socket)
    out, err = agent.communicate(timeout=TIMEOUT)
    assert (agent.returncode, out, err) == (0, b"ConnectionRefusedError\nclient status 125\n", (
        f"faramesh-sandbox: no service at @{service.socket} (Connection refused) — hint: start one with "
        "`faramesh-sandbox serve --policy FILE`\n").encode())


IMPERSONATE = """
import socket, sys
fake = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
fake.bind(b"\\0" + sys.argv[1].encode())
fake.listen(8)
print("bound", flush=True)
sys.stdin.readline()
fake.setblocking(False)
try:
    fake.accept()
    print("a client came")
except BlockingIOError:
    print("nobody came")
"""


@pytest.mark.parametrize("how", ["served", "run"])
def test_an_agent_cannot_take_the_services_name(service, client, how):
    """An agent may bind the service's abstract name inside its sandbox, but only in the sandbox's
    network namespace: a client on the host still reaches the real service, and none reaches the agent."""
    agent = _in_sandbox(how, service, client, sys.executable, "-c", IMPERSONATE, service.socket, stdin=subprocess.PIPE)
    try:
        bound = agent.stdout.readline()
        host = service.run(client, "sh", "-c", "echo from the real service")
        out, err = agent.communicate(b"\n", timeout=TIMEOUT)
    finally:
        agent.kill()
        agent.wait()
    assert (bound, _outcome(host)) == (b"bound\n", (0, b"from the real service\n", b""))
    assert (agent.returncode, out, err) == (0, b"nobody came\n", b"")


def test_a_client_in_another_pid_namespace_is_refused(service, client):
    """A client in a pid namespace of its own (its /proc still the host's, so it sees the service in
    its own) gets 125 and the service's line naming the pid namespace; the service serves the next client."""
    refused = subprocess.run(["unshare", "--pid", "--fork", *service.command(client, "true")], capture_output=True,
                             timeout=TIMEOUT)
    after = service.run(client, "true")
    assert (_outcome(refused), _outcome(after)) == (
        (125, b"", "faramesh-sandbox: a client in another pid namespace (a sandbox), or one already gone, may not "
                   "use this service — hint: run the client on the host\n".encode()),
        (0, b"", b""))


RAW_CLIENT = """
import json, socket, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.settimeout(5)
conn.connect(b"\\0" + sys.argv[1].encode())
replies = []
while not replies or not replies[-1].startswith(b"exit"):
    replies.append(conn.recv(8192))
print(json.dumps([reply.decode() for reply in replies]))
"""


def test_a_client_in_another_pid_namespace_is_never_let_in(service):
    """The service tells a client in another pid namespace why, and never sends it ``ready``."""
    done = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", RAW_CLIENT, service.socket],
                          capture_output=True, timeout=TIMEOUT)
    assert (done.returncode, [reply.encode() for reply in json.loads(done.stdout)], done.stderr) == (
        0, _refusal("a client in another pid namespace (a sandbox), or one already gone, may not use this service",
                    "run the client on the host"), b"")


def test_a_client_with_a_proc_of_its_own_refuses_the_service(service, client):
    """A client whose /proc is its own pid namespace's sees the service in another one, and refuses it
    before sending anything."""
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", *service.command(client, "true")],
                          capture_output=True, timeout=TIMEOUT)
    assert _outcome(done) == (125, b"", (
        f"faramesh-sandbox: the process at @{service.socket} is in another pid namespace (a container), or gone — "
        "hint: pass --socket or set FARAMESH_SANDBOX_SOCKET to the name of a service you started\n").encode())


def _replies(conn: socket.socket) -> list[bytes]:
    """The service's messages up to and with its exit message (or the connection's end)."""
    replies = []
    while not replies or not replies[-1].startswith(b"exit"):
        message = conn.recv(8192)
        if not message:
            break
        replies.append(message)
    return replies


def _served(service: Service, client: str) -> tuple[int, bytes, bytes] | str:
    """A good client's outcome, or "timed out" when the service did not serve it within 5 s."""
    try:
        return _outcome(subprocess.run(service.command(client, "sh", "-c", "echo served"), capture_output=True,
                                       timeout=5))
    except subprocess.TimeoutExpired:
        return "timed out"


def _refusal(text: str, hint: str = "use the client of the same install") -> list[bytes]:
    """What a refused client is sent: its line, then exit 125."""
    return [f"msg\0faramesh-sandbox: {text} — hint: {hint}".encode(), EXIT_125]


def _other_uid_client(name: str, report: int) -> None:
    """In a forked child: as uid 65534, connect to the abstract ``name`` and try to send a request with
    a descriptor at once; write (JSON) how that send ended, the replies and how long they took, then,
    once the connection ends or 3 s pass, whether it ended."""
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.settimeout(3)
            started = time.monotonic()
            conn.connect(address(name))
            try:
                socket.send_fds(conn, [MAGIC], [0])
                sent = "sent"
            except OSError as err:
                sent = errno.errorcode[err.errno]
            replies = _replies(conn)
            os.write(report, json.dumps([sent, [r.decode() for r in replies], time.monotonic() - started]).encode()
                     + b"\n")
            try:
                ended = conn.recv(64) == b""
            except TimeoutError:
                ended = False
            os.write(report, b"dropped" if ended else b"kept open")
    finally:
        os._exit(0)


def test_a_client_of_another_uid_is_refused_before_anything_is_read(service, client):
    """A client of uid 65534 cannot send a descriptor (the kernel refuses it: EPERM) before it is let
    in, which it never is: it is told at once (its peer checked before any read, not after the 1 s a
    request may take) that its uid may not, without ``ready``, and dropped; the service serves on."""
    service.wait_for_spare()  # its wait is the service's answer, not a spare's making
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        _other_uid_client(service.socket, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        sent, replies, took = json.loads(report.readline())
        served = _served(service, client)
        ended = report.read()
    os.waitpid(pid, 0)
    assert (sent, [reply.encode() for reply in replies]) == ("EPERM", _refusal(
        "uid 65534 may not use this service", "each user runs a service of their own"))
    assert (took < 0.5, ended, served) == (True, b"dropped", (0, b"served\n", b""))


def _record(tag: bytes, payload: bytes = b"") -> bytes:
    return tag + struct.pack("<I", len(payload)) + payload


GOOD = _record(b"c", b"/\0") + _record(b"a", b"true\0") + _record(b"z")
MALFORMED = "a malformed request (records after the end, or cut short)"
INCOMPLETE = "a request without its end, its command or one absolute working directory"
NOT_UNDERSTOOD = "a request this service does not understand"
# name -> (magic, the request: records in a memfd, or "directory" / "O_PATH" for a descriptor of that
# kind holding GOOD; descriptors sent of [request, stdin, stdout, stderr]; the line the client is sent)
BAD_REQUESTS = {
    "wrong magic": (b"faramesh-run-0\0", GOOD, 4, NOT_UNDERSTOOD),
    "three fds": (MAGIC, GOOD, 3, NOT_UNDERSTOOD),
    "no fds": (MAGIC, GOOD, 0, NOT_UNDERSTOOD),
    "records after z": (MAGIC, GOOD + _record(b"a", b"x\0"), 4, MALFORMED),
    "cut short": (MAGIC, GOOD + b"a\0", 4, MALFORMED),
    "unknown record": (MAGIC, _record(b"q", b"x\0") + GOOD, 4, "a malformed request (record b'q')"),
    "no argument": (MAGIC, _record(b"c", b"/\0") + _record(b"z"), 4, INCOMPLETE),
    "relative cwd": (MAGIC, _record(b"c", b"tmp\0") + _record(b"a", b"true\0") + _record(b"z"), 4, INCOMPLETE),
    "no z": (MAGIC, GOOD[:-5], 4, INCOMPLETE),
    "a directory as the request": (MAGIC, "directory", 4, "a request that cannot be read (Is a directory)"),
    "an O_PATH fd as the request": (MAGIC, "O_PATH", 4, "a request that cannot be read (Bad file descriptor)"),
}


def _request_fd(request: bytes | str) -> int:
    if request == "directory":
        assert os.stat(ROOT).st_size > 0  # a size the service tries to read
        return os.open(ROOT, os.O_RDONLY | os.O_DIRECTORY)
    if request == "O_PATH":
        memfd = os.memfd_create("request")
        os.write(memfd, GOOD)
        try:
            return os.open(f"/proc/self/fd/{memfd}", os.O_PATH)
        finally:
            os.close(memfd)
    memfd = os.memfd_create("request")
    os.write(memfd, request)
    return memfd


def _raw_request(name: str, magic: bytes, request: bytes | str, sent: int) -> tuple[list[bytes], bytes, bytes]:
    """One request as a client other than launcher/_client sends it once let in: the service's replies
    after ``ready``, and all that reached the stdout and stderr pipes sent (read to their end: the
    service must close them)."""
    request_fd = _request_fd(request)
    stdin, feed = os.pipe()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(TIMEOUT)
        conn.connect(address(name))
        assert conn.recv(64) == READY
        socket.send_fds(conn, [magic], [request_fd, stdin, out_write, err_write][:sent])
        for fd in (request_fd, stdin, out_write, err_write):
            os.close(fd)
        replies = _replies(conn)
    written = []
    for fd in (out_read, err_read):
        with os.fdopen(fd, "rb") as pipe:
            written.append(pipe.read())
    os.close(feed)
    return replies, *written


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_a_bad_request_is_125_with_its_line_sent_over_the_connection(service, name):
    """A request the service cannot read gets its line (msg\\0) and exit 125 over the connection;
    nothing is written to the stdout or stderr it sent, whose descriptors are closed."""
    magic, request, sent, told = BAD_REQUESTS[name]
    assert _raw_request(service.socket, magic, request, sent) == (_refusal(told), b"", b"")


def test_the_service_serves_on_after_bad_requests(service, client):
    """After every kind of bad request, a good client's command runs."""
    for magic, request, sent, _told in BAD_REQUESTS.values():
        _raw_request(service.socket, magic, request, sent)
    assert _raw_request(service.socket, MAGIC, GOOD, 4) == ([b"exit" + struct.pack("<I", 0)], b"", b"")
    assert _outcome(service.run(client, "sh", "-c", "echo served")) == (0, b"served\n", b"")


def test_a_refused_connection_is_closed_by_the_service(service):
    """Once a bad request has its line and status, the service closes the connection: the client
    sees its end without closing first."""
    memfd = os.memfd_create("request")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(3)
        conn.connect(address(service.socket))
        assert conn.recv(64) == READY
        socket.send_fds(conn, [b"faramesh-run-0\0"], [memfd, 0, 1, 2])
        os.close(memfd)
        replies = _replies(conn)
        try:
            end = conn.recv(64)
        except TimeoutError:
            end = "still open after 3 s"
    assert (replies, end) == (_refusal(NOT_UNDERSTOOD), b"")


def test_an_idle_connection_is_dropped_after_a_second(service, client):
    """A client let in (``ready``) that sends nothing is told so and dropped after about 1 s, even while
    it keeps its end open; a good client is served meanwhile."""
    service.wait_for_spare()  # its wait is the service's answer, not a spare's making
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as idle:
        idle.settimeout(3)
        started = time.monotonic()
        idle.connect(address(service.socket))
        replies = _replies(idle)
        waited = time.monotonic() - started
        try:
            end = idle.recv(64)
        except TimeoutError:
            end = "still open after 3 s"
        served = _served(service, client)
    assert (replies, 0.9 < waited < 3, end, served) == (
        [READY, *_refusal("no request (timed out)")], True, b"", (0, b"served\n", b""))


# ---- the service's own refusals and failures -----------------------------------------------------------

def test_a_service_that_cannot_set_up_says_so_promptly(tmp_path, client):
    """A spare that cannot set up (an audit log in a missing directory): a client gets 125 and the line
    saying so at once, each time, not a wait; the service's stderr says why."""
    failing = Service(tmp_path / "failing", PERMIT, "--audit", str(tmp_path / "missing" / "a.jsonl"))
    try:
        runs = []
        for _ in range(3):
            started = time.monotonic()
            done = failing.run(client, "true")
            runs.append((_outcome(done), time.monotonic() - started < 5))
    finally:
        status, left = failing.stop()
    assert runs == [((125, b"", "faramesh-sandbox: the service cannot set a sandbox up now (its output says why) — "
                                "hint: see the service's stderr; it retries on its own\n".encode()), True)] * 3
    assert (f"faramesh-sandbox: cannot open audit log {tmp_path}/missing/a.jsonl: No such file or directory"
            in failing.stderr.read_text())
    assert (status, left) == (0, [])


@pytest.mark.parametrize(("option", "named"), [
    (["--report", "/tmp/r.json"], "--report"),
    (["--json"], "--json"),
    (["--fail-on-deny"], "--fail-on-deny"),
    (["--prompt-shared-terminal"], "--prompt-shared-terminal"),
    (["--", "true"], "command"),
])
def test_serve_refuses_per_run_options_and_a_command(capsys, option, named):
    """serve takes no per-run output option and no command: 125, one line naming it, with a hint; it
    binds nothing."""
    name = _unique_name("refused")
    parsed = PARSER.parse_args(["serve", "--policy", "/no/such.fpl", "--socket", name, *option])
    assert parsed._runner(parsed) == 125
    assert capsys.readouterr().err == f"faramesh-sandbox: serve takes no {named}" + HINT.format(client=CLIENT)
    assert not _listening(name)


@pytest.mark.parametrize("name", ["/run/faramesh-sandbox/service/run.sock", "a/b"])
def test_serve_refuses_a_socket_name_with_a_slash(tmp_path, capsys, name):
    """--socket takes an abstract name, not a path: one with a '/' is refused (125) with a hint."""
    (tmp_path / "policy.fpl").write_text(PERMIT)
    parsed = PARSER.parse_args(["serve", "--policy", str(tmp_path / "policy.fpl"), "--socket", name, "--no-audit-db"])
    assert parsed._runner(parsed) == 125
    assert capsys.readouterr().err == (
        f"faramesh-sandbox: cannot serve at @{name}: the name must be non-empty, without '/' or NUL (an abstract "
        "socket name, not a path) — hint: stop the other service, or give --socket another name\n")


def test_a_second_service_on_the_same_name_is_refused(service, client):
    """A second service at a name a service answers at exits 125 and leaves the first one serving."""
    done = subprocess.run([sys.executable, "-m", "launcher", "serve", "--policy", str(service.root / "policy.fpl"),
                           "--socket", service.socket, "--no-audit-db"], capture_output=True, text=True,
                          timeout=TIMEOUT, env=service.env, cwd=ROOT)
    assert (done.returncode, done.stderr) == (
        125, f"faramesh-sandbox: cannot serve at @{service.socket}: a service already answers there — hint: stop "
             "the other service, or give --socket another name\n")
    assert _outcome(service.run(client, "true")) == (0, b"", b"")


# ---- stopping ---------------------------------------------------------------------------------------

def test_stopping_the_service_leaves_nothing(tmp_path, client):
    """SIGTERM ends the service with 0; its spare, the spare's init and helpers, and a finished run's
    runner are all gone, and its name is free."""
    started = Service(tmp_path / "stopping", PERMIT)
    try:
        assert _outcome(started.run(client, "true")) == (0, b"", b"")
        started.wait_for_spare()
    finally:
        status, left = started.stop()
    assert (status, left, _listening(started.socket)) == (0, [], False)


def test_a_service_killed_with_sigkill_takes_its_spare_along(tmp_path, client):
    """SIGKILL to the service, which cannot clean up: its spare (PR_SET_PDEATHSIG), the spare's init and
    helpers are all gone within 5 s, and its name is free."""
    started = Service(tmp_path / "killed", PERMIT)
    started.wait_for_spare()
    spare = [process.pid for process in psutil.Process(started.proc.pid).children()]
    status, left = started.stop(signal.SIGKILL)
    assert (len(spare), status, left, _listening(started.socket)) == (1, -signal.SIGKILL, [], False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_run_in_progress_outlives_the_service(tmp_path, client, signum):
    """A command running when the service is stopped (SIGTERM) or killed (SIGKILL) goes on to its end
    and its client gets its output and status; its runner then leaves nothing behind."""
    started = Service(tmp_path / f"outlived-{signum.name}", PERMIT)
    script = 'echo started; read line; echo "finished after $line"; exit 5'
    proc = subprocess.Popen(started.command(client, "sh", "-c", script), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        tree = started.tree()
        started.proc.send_signal(signum)
        status = started.proc.wait(TIMEOUT)
        running = proc.poll() is None  # the command waits for its line: the service ended first
        out, err = proc.communicate(b"the service\n", timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
        started.proc.kill()
    expected_status = 0 if signum == signal.SIGTERM else -signal.SIGKILL
    assert (first, status, running) == (b"started\n", expected_status, True)
    assert (proc.returncode, out, err) == (5, b"finished after the service\n", b"")
    assert _left_of(tree, started.leftovers) == []


@pytest.mark.parametrize("closed", [(0,), (1,), (2,), (0, 1, 2)], ids=["stdin", "stdout", "stderr", "all"])
def test_a_service_started_with_stdio_closed_serves(tmp_path, client, closed):
    """A service started with its stdin, stdout or stderr closed (each becomes /dev/null) serves: a
    command's output and status reach its client, and the service stops cleanly."""
    started = Service(tmp_path / "closed", PERMIT, closed=closed)
    try:
        done = started.run(client, "sh", "-c", "echo out; echo err >&2; exit 3")
    finally:
        status, left = started.stop()
    assert (_outcome(done), status, left) == ((3, b"out\n", b"err\n"), 0, [])


@pytest.fixture(scope="module")
def python_init_service(tmp_path_factory):
    started = Service(tmp_path_factory.mktemp("python-init") / "svc", PERMIT, python_init=True)
    yield started
    started.stop()


def test_with_init_in_python_a_command_runs_and_its_signals_and_end_reach_it(python_init_service, client):
    """Without the compiled init the spare takes the command before it makes the sandbox: the command
    still runs as pid 2 with the client's stdio and status, SIGTERM reaches it, and the client's
    death by SIGKILL ends it."""
    done = python_init_service.run(client, "sh", "-c", "echo $$; echo err >&2; exit 5")
    assert (done.returncode, done.stdout, done.stderr) == (5, b"2\n", b"err\n")
    assert _sigterm_outcome(python_init_service, client) == (3, b"got\n")
    assert _agents_left_after_sigkill_of_the_client(python_init_service, client, "1001") == []
