"""``faramesh-sandbox run`` through the real CLI: exit statuses, errors, signals, clean-up, non-root."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import psutil
import pytest

import launcher.cli
import policy
from sandbox import _libc, _libc_ns, cgroups, traced

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
PERMIT = "agent a {\n  default permit\n}\n"
# Built before forking: as uid 65534 the interpreter's own library directory may be unreadable,
# so nothing may be imported lazily in the children below.
PARSER = launcher.cli.build_parser()


def cli_in_process(*args: str) -> int:
    parsed = PARSER.parse_args(list(args))
    return parsed._runner(parsed)


def supervised(args: tuple[str, ...]) -> list[str]:
    """`run` with --audit-all, so every category goes through the supervisor even under a
    permissive policy (tests/launcher/test_kernel_decided.py covers the kernel-decided path)."""
    return ["run", "--audit-all", *args[1:]] if args[:1] == ("run",) else list(args)


def cli(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "launcher", *supervised(args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


def start_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "launcher", *supervised(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


@pytest.fixture
def permit(tmp_path: Path) -> Path:
    path = tmp_path / "permit.fpl"
    path.write_text(PERMIT)
    return path


@pytest.mark.parametrize(("command", "status"), [
    (["/bin/true"], 0),
    (["sh", "-c", "exit 3"], 3),
    (["/etc/os-release"], 126),
    (["no-such-program-xyz"], 127),
    (["sh", "-c", "kill -KILL $$"], 137),
])
def test_exit_status(permit, command, status):
    """run exits with the agent's status, 126/127 like a shell, 128+N for signal N."""
    assert cli("run", "--policy", str(permit), "--", *command).returncode == status


def test_output_passes_through(permit):
    """The agent's stdout and stderr are the launcher's."""
    result = cli("run", "--policy", str(permit), "--", "sh", "-c", "echo out; echo err >&2; hostname")
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\nsandbox\n", "err\n")


def test_verbose_run_describes_the_sandbox(permit):
    """-v prints the session, the Landlock floor, the agent's cgroup, its limits and namespaces
    before the agent's own output."""
    result = cli("run", "-v", "--policy", str(permit), "--", "sh", "-c", "echo hi >&2")
    session = result.stderr.split()[2].rstrip(",")
    assert (result.returncode, result.stderr) == (0, (
        f"faramesh-sandbox: session {session}, 1 policy layer(s), {len(traced.TABLE)} trapped syscalls, "
        "decided in the kernel: none\n"
        "faramesh-sandbox: Landlock ABI 7 floor: fs rights handled: none\n"
        "faramesh-sandbox:   Landlock scopes: signals and abstract unix sockets stay inside the sandbox\n"
        "faramesh-sandbox:   Landlock: not handled, a rule can permit them anywhere: execute, read_file, read_dir, "
        "write_file, truncate, make_reg, make_char, make_block, make_fifo, make_sock, make_sym, make_dir, "
        "remove_file, remove_dir\n"
        "faramesh-sandbox:   Landlock: TCP connect and bind not handled: a rule can permit any port\n"
        f"faramesh-sandbox: agent cgroup /sys/fs/cgroup/unified/faramesh-{session}\n"
        f"faramesh-sandbox: pids limit via cgroup v1 /sys/fs/cgroup/pids/faramesh-{session}\n"
        "faramesh-sandbox: namespaces ipc, mount, net, pid, uts; agent is pid 2\n"
        "hi\n"))


def test_invalid_policy_prints_diagnostics_and_exits_125(tmp_path):
    """A policy error prints the rendered diagnostics (location, caret, help) and runs nothing."""
    bad = tmp_path / "bad.fpl"
    bad.write_text("agent a {\n  default permit\n  permit\n}\n")
    marker = tmp_path / "ran"
    result = cli("run", "--policy", str(bad), "--", "touch", str(marker))
    with pytest.raises(policy.PolicyError) as caught:
        policy.load_policy(bad.read_text(), str(bad))
    assert (result.returncode, result.stdout, result.stderr) == (125, "", caught.value.render() + "\n")
    assert result.stderr.startswith(f"{bad}:3:9: error[E107]: ")
    assert not marker.exists()


@pytest.mark.parametrize(("args", "line"), [
    (["--policy", "/no/such.fpl", "--", "/bin/true"],
     "faramesh-sandbox: cannot read policy /no/such.fpl: No such file or directory — hint: check the path "
     "given to --policy\n"),
    (["--", "/bin/true"],
     "faramesh-sandbox: no policy given — hint: pass --policy FILE; a file with `agent a { default permit }` "
     "permits everything while still auditing\n"),
    (["--policy", "{permit}"],
     "faramesh-sandbox: no command given — hint: usage: faramesh-sandbox run --policy FILE [--audit PATH] "
     "-- CMD [ARGS...]\n"),
    (["--policy", "{permit}", "--approve-timeout", "-1", "--", "/bin/true"],
     "faramesh-sandbox: --approve-timeout -1.0 is negative — hint: give seconds, e.g. 300\n"),
    (["--policy", "{permit}", "--audit", "/no/such/dir/audit.jsonl", "--", "/bin/true"],
     "faramesh-sandbox: cannot open audit log /no/such/dir/audit.jsonl: No such file or directory — hint: the "
     "directory must exist and be writable\n"),
])
def test_usage_errors_are_one_line_and_125(permit, args, line):
    """Each launcher error is one line on stderr with a hint, and status 125."""
    args = [str(permit) if a == "{permit}" else a for a in args]
    result = cli("run", *args)
    assert (result.returncode, result.stdout, result.stderr) == (125, "", line)


def test_exec_denied_by_policy_is_126_and_audited(tmp_path):
    """A policy that denies CMD's exec gives 126, the kernel's reason, and one DENY audit line."""
    policy = tmp_path / "p.fpl"
    policy.write_text('agent a {\n  default permit\n  deny shell/exec when args.program == "true" reason: "no"\n}\n')
    audit = tmp_path / "audit.jsonl"
    result = cli("run", "--policy", str(policy), "--audit", str(audit), "--", "/bin/true")
    assert (result.returncode, result.stderr) == (126, "faramesh-sandbox: /bin/true: Operation not permitted\n")
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["syscall"], r["tool"], r["effect"], r["rule_id"], r["args"]["path"]) for r in records] == [
        ("execve", "shell/exec", "DENY", "fpl-0", "/usr/bin/true")]


def test_sigterm_to_the_launcher_reaches_the_agent(permit):
    """SIGTERM sent to the launcher is forwarded through init to the agent, whose status comes back."""
    proc = start_cli("run", "--policy", str(permit), "--", "sh", "-c",
                     "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done")
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert (proc.returncode, out) == (7, "got TERM\n")


def _resize(terminal: int) -> None:
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))


@pytest.mark.parametrize(("name", "event", "echo"), [
    ("INT", lambda terminal: os.write(terminal, b"\x03"), b"^C"),  # Ctrl-C
    ("QUIT", lambda terminal: os.write(terminal, b"\x1c"), b"^\\"),  # Ctrl-backslash
    ("WINCH", _resize, b""),  # the window's size changed
], ids=["ctrl-c", "ctrl-backslash", "resize"])
def test_the_terminals_signals_reach_the_agent_exactly_once(permit, name, event, echo):
    """The terminal sends its signals to its foreground process group, which the agent (in a
    session of its own) is not in: the launcher forwards them through init, exactly once."""
    script = (f"n=0; trap 'n=$((n+1))' {name}; echo ready; while [ $n -eq 0 ]; do sleep 0.05; done; "
              "sleep 0.5; echo n=$n; exit 5")
    pid, terminal = pty.fork()
    if pid == 0:
        os.environ.update(PYTHONPATH=str(ROOT), TERM="dumb")  # no status line: the agent's output only
        os.execv(sys.executable, [sys.executable, "-m", "launcher", "run", "--policy", str(permit), "--timeout",
                                  "20", "--", "sh", "-c", script])
    seen = b""
    while b"ready" not in seen:
        seen += os.read(terminal, 100)
    event(terminal)
    out = b""
    while True:
        try:
            chunk = os.read(terminal, 100)
        except OSError:  # EIO: the other side of the terminal is gone
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert (os.waitstatus_to_exitcode(status), out) == (5, echo + b"n=1\r\n")


def test_launcher_death_takes_the_whole_sandbox(permit):
    """SIGKILL of the launcher leaves no process of the sandbox behind, and its cgroup goes too."""
    proc = start_cli("run", "--policy", str(permit), "--", "sh", "-c", "sleep 60 & sleep 60 & echo ready; wait")
    assert proc.stdout.readline() == "ready\n"
    tree = psutil.Process(proc.pid).children(recursive=True)
    cgroup_of = {p.pid: Path(f"/proc/{p.pid}/cgroup").read_text() for p in tree}
    sandboxed = [p for p in tree if "/faramesh-" in cgroup_of[p.pid]]
    assert len(sandboxed) == 4  # init, sh, two sleeps
    init = min(sandboxed, key=lambda p: p.pid)
    cgroup = Path(cgroups.v2_mount()) / cgroups.own_v2_path(cgroup_of[init.pid]).lstrip("/")
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(tree, timeout=5)  # the sandbox, the approval service, the reaper
    assert (len(gone), alive) == (len(tree), [])
    for _ in range(100):  # the reaper removes the cgroup once the launcher is gone
        if not cgroup.exists():
            break
        time.sleep(0.05)
    assert not cgroup.exists()


def _in_child(body) -> tuple[int, str, str]:
    """Run ``body()`` (returning a status) in a forked child; collect its stdout and stderr."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 99
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # pytest's capture objects are not fds 1 and 2
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            status = body()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out_f, os.fdopen(err_r) as err_f:
        out, err = out_f.read(), err_f.read()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), out, err


def test_vanished_working_directory_is_a_setup_error(permit, tmp_path):
    """A working directory deleted under the launcher is reported in one line, not a traceback."""
    doomed = tmp_path / "doomed"
    doomed.mkdir()

    def body() -> int:
        os.chdir(doomed)
        doomed.rmdir()
        return cli_in_process("run", "--policy", str(permit), "--", "/bin/true")
    assert _in_child(body) == (125, "", "faramesh-sandbox: cannot read the working directory: No such file or "
                                        "directory — hint: cd to a directory that exists\n")


def _become_nobody() -> None:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    _libc.prctl(_libc_ns.PR_SET_DUMPABLE, 1)  # as after an exec: setresuid cleared it, hiding /proc/self


def test_impossible_setup_is_one_line_with_a_hint(permit):
    """Where user namespaces are refused, run says which call failed and how to fix it, status 125."""
    def body() -> int:
        # An unmapped user namespace: its uid is unmapped, so no further user namespace may be made.
        _libc_ns.unshare(_libc_ns.CLONE_NEWUSER)
        # Unmapped, this root process reads as uid 65534: keep its run files out of that user's place.
        os.environ["FARAMESH_SANDBOX_RUNTIME_DIR"] = str(permit.parent / "run")
        return cli_in_process("run", "--policy", str(permit), "--", "/bin/true")
    status, out, err = _in_child(body)
    assert (status, out) == (125, "")
    assert err.splitlines()[-1] == (
        "faramesh-sandbox: cannot create user namespace: clone3(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID|"
        "CLONE_NEWNET|CLONE_NEWUTS|CLONE_NEWIPC): Operation not permitted — hint: "
        "user namespaces are disabled for unprivileged users (sysctl kernel.unprivileged_userns_clone=0, or on "
        "Ubuntu 24.04+ kernel.apparmor_restrict_unprivileged_userns=1: add an AppArmor profile with 'userns,' or "
        "run as root)")


def test_non_root_run_decides_execs_with_the_ptrace_freezer():
    """As uid 65534 the sandbox starts in a user namespace; with no cgroup it says so once, and exec
    decisions freeze the agent with ptrace instead: a permitted exec runs, a denied one fails."""
    shared = Path(tempfile.mkdtemp(prefix="faramesh-nonroot-", dir="/tmp"))  # pytest's tmp is root-only
    try:
        shared.chmod(0o777)
        (shared / "store").mkdir(mode=0o777)
        (shared / "store").chmod(0o777)
        (shared / "p.fpl").write_text('agent a {\n  default permit\n  deny shell/exec when args.program == "false"\n}\n')
        audit = shared / "audit.jsonl"

        def body() -> int:
            _become_nobody()
            os.chdir("/")
            os.environ["FARAMESH_SANDBOX_RUNTIME_DIR"] = str(shared / "run")
            return cli_in_process("run", "--policy", str(shared / "p.fpl"), "--audit", str(audit),
                                  "--audit-db", str(shared / "store" / "audit.db"),
                                  "--", "/bin/sh", "-c", "/bin/true && echo permitted; /bin/false; echo denied=$?")
        status, out, err = _in_child(body)
        assert (status, out) == (0, "permitted\ndenied=126\n"), err
        warning = err.splitlines()[0]
        assert warning.startswith("faramesh-sandbox: warning: no cgroup for the agent (mkdir(/sys/fs/cgroup/unified/")
        assert warning.endswith("): Permission denied): exec decisions freeze the agent's tasks with ptrace instead")
        execs = [json.loads(line) for line in audit.read_text().splitlines() if '"shell/exec"' in line]
        assert [(r["args"]["program"], r["effect"]) for r in execs] == [(os.path.basename(os.path.realpath("/bin/sh")), "PERMIT"), ("true", "PERMIT"),
                                                                       ("false", "DENY")]
    finally:
        shutil.rmtree(shared)
