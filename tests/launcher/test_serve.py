"""`faramesh-sandbox serve` as a real service with launcher/_client: output, statuses, signals and
pipes as native, a fresh sandbox and session per command, the policy, refusals and clean-up."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import launcher.cli

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "launcher" / "_client"
SOURCES = ROOT / "launcher" / "client_c"
PERMIT = "agent a {\n  default permit\n}\n"
DENY_WRITE = 'agent a {\n  default permit\n  deny fs/write when args.path endsWith "/denied.txt" reason: "kept"\n}\n'
MAGIC = b"faramesh-run-1\0"
HINT = " — hint: clients give commands: {client} -- CMD; per-run reports need `faramesh-sandbox run`\n"
SANDBOX_SDK_SOCKET = "/run/faramesh/faramesh.sock"
PARSER = launcher.cli.build_parser()
TIMEOUT = 20


@pytest.fixture(scope="module")
def client() -> str:
    """launcher/_client, built (as setup.py builds it) when missing or older than its sources."""
    newest_source = max(path.stat().st_mtime for path in SOURCES.iterdir())
    if not CLIENT.exists() or CLIENT.stat().st_mtime < newest_source:
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, check=True,
                       capture_output=True)
    return str(CLIENT)


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


class Service:
    """`python3 -m launcher serve` with its socket, runtime directory and policy inside ``root``."""

    def __init__(self, root: Path, policy_text: str, *options: str):
        self.root = root
        root.mkdir(parents=True)
        (root / "policy.fpl").write_text(policy_text)
        self.socket = str(root / "svc" / "run.sock")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "FARAMESH_SANDBOX_RUNTIME_DIR": str(root / "rt"),
                    "FARAMESH_SANDBOX_CONFIG": "/nonexistent/faramesh-sandbox/config.toml"}
        self.env.pop("FARAMESH_SANDBOX_SOCKET", None)
        self.stderr = root / "service.err"
        with open(self.stderr, "wb") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-m", "launcher", "serve", "--policy",
                                          str(root / "policy.fpl"), "--socket", self.socket, "--no-audit-db", *options],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                         cwd=ROOT, env=self.env)
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(self.socket):
            assert self.proc.poll() is None, f"the service ended: {self.stderr.read_text()}"
            assert time.monotonic() < deadline, "the service never made its socket"
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

    def leftovers(self) -> list[str]:
        """Processes whose command line names this service's directory (its forks all do)."""
        return [f"{process.pid} {_cmdline(process)}" for process in psutil.process_iter()
                if str(self.root) in _cmdline(process)]

    def stop(self) -> tuple[int | None, list[str]]:
        """SIGTERM; its status, and what of its tree (captured just before) or its forks is still alive
        5 s later (killed then, so nothing outlives the test)."""
        tree = self.tree() if self.proc.poll() is None else []
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = None
        _gone, alive = psutil.wait_procs(tree, timeout=5)
        left = sorted({f"{process.pid} {_cmdline(process)}" for process in alive if _alive(process.pid)}
                      | set(self.leftovers()))
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        return status, left


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


def test_sigterm_to_the_client_reaches_the_agent(service, client):
    """SIGTERM sent to the client is passed on to the agent, whose trap decides the status."""
    script = 'trap "echo got; exit 3" TERM; echo ready; while :; do sleep 0.1; done'
    proc = subprocess.Popen(service.command(client, "sh", "-c", script), stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (3, b"got\n")


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


def test_a_client_killed_with_sigkill_kills_the_agent(service, client):
    """The client's death, even by SIGKILL, ends its command: the agent is gone within 5 s."""
    argv = ["sleep", f"1000.{os.getpid()}"]  # a command line no other process has
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
        assert [pid for pid in agents if _alive(pid)] == []
    finally:
        proc.kill()
        proc.wait()
        for pid in _processes_with_cmdline(argv):
            os.kill(pid, signal.SIGKILL)


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

def test_an_agent_cannot_reach_the_service(service, client):
    """Inside a sandbox the socket's directory is an empty one: neither a connect nor the client reaches it."""
    connect = ("import socket\ntry:\n socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).connect(%r)\n"
               "except OSError as err:\n print(type(err).__name__)\nelse:\n print('connected')\n" % service.socket)
    assert _outcome(service.run(client, sys.executable, "-c", connect)) == (0, b"FileNotFoundError\n", b"")
    nested = service.run(client, client, "--socket", service.socket, "--", "true")
    assert _outcome(nested) == (125, b"", (
        f"faramesh-sandbox: no service at {service.socket} (No such file or directory) — hint: start one with "
        "`faramesh-sandbox serve --policy FILE`\n").encode())


def test_a_client_in_another_pid_namespace_is_refused(service, client):
    """A client in a pid namespace of its own gets 125 and a line naming the pid namespace; the
    service serves the next client."""
    refused = subprocess.run(["unshare", "--pid", "--fork", *service.command(client, "true")], capture_output=True,
                             timeout=TIMEOUT)
    after = service.run(client, "true")
    assert (_outcome(refused), _outcome(after)) == (
        (125, b"", "faramesh-sandbox: a client in another pid namespace (a sandbox), or one already gone, may not "
                   "use this service — hint: run the client on the host\n".encode()),
        (0, b"", b""))


def _record(tag: bytes, payload: bytes = b"") -> bytes:
    return tag + struct.pack("<I", len(payload)) + payload


GOOD = _record(b"c", b"/\0") + _record(b"a", b"true\0") + _record(b"z")
MALFORMED = "a malformed request (records after the end, or cut short)"
INCOMPLETE = "a request without its end, its command or one absolute working directory"
# name -> (magic, records, descriptors sent of [request, stdin, stdout, stderr], what stderr is told)
BAD_REQUESTS = {
    "wrong magic": (b"faramesh-run-0\0", GOOD, 4, "a request this service does not understand"),
    "three fds": (MAGIC, GOOD, 3, None),
    "no fds": (MAGIC, GOOD, 0, None),
    "records after z": (MAGIC, GOOD + _record(b"a", b"x\0"), 4, MALFORMED),
    "cut short": (MAGIC, GOOD + b"a\0", 4, MALFORMED),
    "unknown record": (MAGIC, _record(b"q", b"x\0") + GOOD, 4, "a malformed request (record b'q')"),
    "no argument": (MAGIC, _record(b"c", b"/\0") + _record(b"z"), 4, INCOMPLETE),
    "relative cwd": (MAGIC, _record(b"c", b"tmp\0") + _record(b"a", b"true\0") + _record(b"z"), 4, INCOMPLETE),
    "no z": (MAGIC, GOOD[:-5], 4, INCOMPLETE),
}


def _raw_request(path: str, magic: bytes, records: bytes, sent: int) -> tuple[bytes, bytes, bytes]:
    """One request as a client other than launcher/_client sends it: the service's reply, and all that
    reached the stdout and stderr pipes sent (read to their end: the service must close them)."""
    memfd = os.memfd_create("request")
    os.write(memfd, records)
    stdin, feed = os.pipe()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(TIMEOUT)
        conn.connect(path)
        socket.send_fds(conn, [magic], [memfd, stdin, out_write, err_write][:sent])
        for fd in (memfd, stdin, out_write, err_write):
            os.close(fd)
        reply = conn.recv(64)
    written = []
    for fd in (out_read, err_read):
        with os.fdopen(fd, "rb") as pipe:
            written.append(pipe.read())
    os.close(feed)
    return reply, *written


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_a_bad_request_is_125_with_one_line(service, name):
    """A request the service cannot read gets exit 125; when its four descriptors came with it, one line on
    the stderr it sent (the last of four, even with another magic). Descriptors of a wrong count are closed
    unwritten."""
    magic, records, sent, told = BAD_REQUESTS[name]
    hint = " — hint: use the client of the same install\n"
    message = b"" if told is None else f"faramesh-sandbox: {told}{hint}".encode()
    assert _raw_request(service.socket, magic, records, sent) == (b"exit" + struct.pack("<I", 125), b"", message)


def test_the_service_serves_on_after_bad_requests(service, client):
    """After every kind of bad request, a good client's command runs."""
    for magic, records, sent, _told in BAD_REQUESTS.values():
        _raw_request(service.socket, magic, records, sent)
    assert _raw_request(service.socket, MAGIC, GOOD, 4) == (b"exit" + struct.pack("<I", 0), b"", b"")
    assert _outcome(service.run(client, "sh", "-c", "echo served")) == (0, b"served\n", b"")


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
def test_serve_refuses_per_run_options_and_a_command(tmp_path, capsys, option, named):
    """serve takes no per-run output option and no command: 125, one line naming it, with a hint."""
    parsed = PARSER.parse_args(["serve", "--policy", "/no/such.fpl", "--socket", str(tmp_path / "svc" / "run.sock"),
                                *option])
    assert parsed._runner(parsed) == 125
    assert capsys.readouterr().err == f"faramesh-sandbox: serve takes no {named}" + HINT.format(client=CLIENT)
    assert not (tmp_path / "svc").exists()


def test_a_second_service_on_the_same_socket_is_refused(service, client):
    """A second service at a socket a service answers at exits 125 and leaves the first one serving."""
    done = subprocess.run([sys.executable, "-m", "launcher", "serve", "--policy", str(service.root / "policy.fpl"),
                           "--socket", service.socket, "--no-audit-db"], capture_output=True, text=True,
                          timeout=TIMEOUT, env=service.env, cwd=ROOT)
    assert (done.returncode, done.stderr) == (
        125, f"faramesh-sandbox: cannot serve: a service already answers at {service.socket} — hint: give --socket "
             "a path in a directory of its own\n")
    assert _outcome(service.run(client, "true")) == (0, b"", b"")


def test_stopping_the_service_leaves_nothing(tmp_path, client):
    """SIGTERM ends the service with 0; its spare, the spare's init and helpers, and a finished run's
    runner are all gone, and the socket is removed."""
    started = Service(tmp_path / "stopping", PERMIT)
    try:
        assert _outcome(started.run(client, "true")) == (0, b"", b"")
        deadline = time.monotonic() + 5
        while not any(_cmdline(process) == "faramesh-sandbox-init" for process in started.tree()):
            assert time.monotonic() < deadline, "no spare made after the run"
            time.sleep(0.02)
    finally:
        status, left = started.stop()
    assert (status, left, os.path.exists(started.socket)) == (0, [], False)
