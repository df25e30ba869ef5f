"""The sandbox's init as the compiled sandbox/_init: what pid 1 holds, and the same errors, statuses
and clean-up as the Python init; its plan reader, fed every cut of a real plan, never crashes."""

from __future__ import annotations

import glob
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types

import psutil
import pytest

from policy.decision import Decision, Effect
from sandbox import _libc_landlock as ll
from sandbox import capabilities, init_spawn, landlock, traced
from sandbox.errors import SandboxError
from sandbox.launch import FORWARDED, launch
from sandbox.limits import Limits
from sandbox.spec import SandboxSpec

pytestmark = pytest.mark.kernel
TRAPPED = frozenset(row.name for row in traced.TABLE)


def permit_all(call):
    return Decision(Effect.PERMIT, rule_id="test-permit")


def run(argv: list[str], started=None, **fields) -> int:
    return launch(SandboxSpec(argv=argv, trapped=TRAPPED, **fields), permit_all, started=started)


@pytest.fixture(params=["compiled", "python"])
def init_kind(request, monkeypatch):
    """Runs the test with the compiled init, then with the Python init."""
    if request.param == "python":
        monkeypatch.setattr(init_spawn, "available", lambda: False)
    else:
        assert init_spawn.available(), "sandbox/_init is not built: python3 setup.py build_ext --inplace"
    return request.param


def _left_files(session_id: str) -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), f"faramesh-sandbox-file-{session_id}-*"))


# ---- what pid 1 is -----------------------------------------------------------------------------

def test_pid_1_is_the_small_compiled_program(capfd):
    """pid 1 is faramesh-sandbox-init holding only fds 0-2 while the agent runs, in a few MB of memory."""
    assert init_spawn.available()
    script = "tr '\\0' '|' < /proc/1/cmdline; echo; ls /proc/1/fd | tr '\\n' ' '; echo; grep VmRSS /proc/1/status"
    assert run(["sh", "-c", script], seccomp=False) == 0  # the supervisor refuses the agent /proc/1/fd
    cmdline, fds, rss = capfd.readouterr().out.splitlines()
    assert (cmdline, fds) == ("faramesh-sandbox-init|", "0 1 2 ")
    # The static binary runs in about 0.7 MB; a forked copy of this pytest launcher (the Python
    # init) holds about 35 MB. 8 MB separates the two with room for a larger libc.
    assert int(rss.split()[1]) < 8 * 1024
    launcher_rss = psutil.Process().memory_info().rss // 1024
    assert int(rss.split()[1]) * 10 < launcher_rss


# ---- the same errors from both inits -------------------------------------------------------------

@pytest.mark.parametrize(("fields", "stage", "message"), [
    ({"binds": [("/no/such/source", "/mnt")]}, "mounts",
     "mount('/no/such/source', '/mnt', None, MS_BIND): No such file or directory"),
    ({"hostname": "h" * 100}, "hostname", f"sethostname({'h' * 100!r}): Invalid argument"),
    ({"cwd": "/no/such/dir"}, "chdir", "No such file or directory: /no/such/dir"),
])
def test_a_failed_set_up_is_worded_the_same(init_kind, fields, stage, message, capfd):
    """A bind source, hostname or cwd that cannot be used fails the same stage with the same words."""
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], **fields)
    assert (caught.value.stage, caught.value.message) == (stage, message)


def test_a_command_that_cannot_run_is_126_or_127_with_the_reason(init_kind, capfd, tmp_path):
    """Not found is 127 and not executable 126, each with the shell-style line on stderr."""
    plain = tmp_path / "plain"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    assert run(["no-such-program-xyz"]) == 127
    assert run([str(plain)]) == 126
    assert run(["a\0b"]) == 127  # a NUL in the name: nothing on PATH can be called that
    assert capfd.readouterr().err == ("faramesh-sandbox: no-such-program-xyz: No such file or directory\n"
                                      f"faramesh-sandbox: {plain}: Permission denied\n"
                                      "faramesh-sandbox: a\0b: No such file or directory\n")


# ---- exit status and signals ---------------------------------------------------------------------

@pytest.mark.parametrize(("script", "status"), [
    ("exit 3", 3),
    ("kill -KILL $$", 128 + 9),
    ("kill -TERM $$", 128 + 15),
])
def test_the_agents_status_comes_back(init_kind, script, status, capfd):
    """init exits with the agent's status, 128+N when a signal N killed it."""
    assert run(["sh", "-c", script]) == status


@pytest.mark.parametrize("signum", FORWARDED, ids=lambda signum: signal.Signals(signum).name)
def test_a_signal_sent_to_the_launcher_reaches_the_agent(init_kind, signum, capfd, tmp_path):
    """Each forwarded signal (the terminal's too: the agent has a session of its own and gets no
    copy) sent to the launcher goes through init to the agent, whose trap decides the status."""
    ready = tmp_path / "ready"

    def signal_when_ready():
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signum)  # blocked in the launcher: its wait loop forwards it

    def started():  # threads may start once the sandbox exists
        threading.Thread(target=signal_when_ready, daemon=True).start()

    name = signal.Signals(signum).name[3:]
    script = f"trap 'echo got {name}; exit 7' {name}; touch {ready}; while :; do sleep 0.05; done"
    assert run(["sh", "-c", script], started=started, limits=Limits(timeout=20)) == 7
    assert capfd.readouterr().out == f"got {name}\n"


# ---- a refused plan, and the files shown inside ----------------------------------------------------

def test_a_refused_plan_fails_clone_init_and_leaves_nothing(monkeypatch, capfd):
    """A plan init cannot read ends in a clone_init error; init is reaped and its temp files are gone."""
    assert init_spawn.available()
    monkeypatch.setattr(init_spawn, "MAGIC", b"faramesh-init-plan-X\0")
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], session_id=f"t-refused-plan-{os.getpid()}", files={"/etc/hostname": b"inside\n"})
    assert (caught.value.stage, caught.value.message) == (
        "clone_init", "the sandbox init refused its plan: it was written for another build of the sandbox "
                      "(reinstall: the stages differ)")
    assert psutil.Process().children(recursive=True) == []
    assert _left_files(f"t-refused-plan-{os.getpid()}") == []


@pytest.mark.parametrize("fails", [False, True])
def test_files_shown_inside_leave_no_temp_file(init_kind, fails, capfd):
    """The host temp file behind a file shown inside is gone after a run, and after a failed one."""
    session = f"t-files-{init_kind}-{fails}-{os.getpid()}"  # not another run's left-overs
    spec = {"session_id": session, "files": {"/etc/hostname": b"inside\n"}}
    if fails:
        with pytest.raises(SandboxError) as caught:
            run(["cat", "/etc/hostname"], hostname="h" * 100, **spec)
        assert caught.value.stage == "hostname"
    else:
        assert run(["cat", "/etc/hostname"], **spec) == 0
        assert capfd.readouterr().out == "inside\n"
    assert _left_files(session) == []


# ---- the plan reader, fed every cut of a real plan --------------------------------------------------

# Runs inside new mount/uts/net/pid namespaces: sandbox/_init for each prefix of the plan on stdin,
# started as the launcher starts it (socket at fd 3, plan memfd at fd 4, every signal blocked).
DRIVER = r"""
import json, os, signal, socket, sys
program, plan = sys.argv[1], sys.stdin.buffer.read()
reserved = [os.open(os.devnull, os.O_RDONLY) for _ in range(2)]  # fds 3 and 4: what follows lands above
results = []
for length in [len(plan), *range(len(plan))]:  # the whole plan first, while nothing is mounted yet
    launcher, init_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    memfd = os.memfd_create("plan", os.MFD_CLOEXEC)
    os.write(memfd, plan[:length])
    pid = os.posix_spawn(program, ["faramesh-sandbox-init"], {}, setsigmask=range(1, signal.NSIG),
                         file_actions=[(os.POSIX_SPAWN_DUP2, init_end.fileno(), 3),
                                       (os.POSIX_SPAWN_DUP2, memfd, 4)])
    init_end.close()
    os.close(memfd)
    launcher.send(b"go")
    launcher.settimeout(5)
    message = launcher.recv(4096)
    if message.startswith(b"listener "):
        launcher.send(b"taken")
    launcher.close()
    results.append([length, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), message.decode("latin-1")])
print(json.dumps(results))
"""
RET_ALLOW = struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K, SECCOMP_RET_ALLOW


def _real_plan() -> tuple[bytes, init_spawn.Plan]:
    """A plan with a record of every kind launch writes for a seccomp run (no file shown: the temp
    file's name would change its length)."""
    found = landlock.Plan(ll.abi_version(), fs_handled=ll.FS_EXECUTE, net_handled=ll.NET_BIND_TCP,
                          paths={"/usr": ll.FS_EXECUTE}, ports={8080: ll.NET_BIND_TCP})
    spec = SandboxSpec(argv=["/bin/true", "x"], env={"PATH": "/usr/bin:/bin", "A": "b"}, cwd="/",
                       hostname="cut", binds=[("/tmp", "/mnt")], landlock=found)
    run_state = types.SimpleNamespace(spec=spec, program=RET_ALLOW, cap_drop=capabilities.to_drop(True),
                                      limits=types.SimpleNamespace(rlimit_list=lambda: [(resource.RLIMIT_NOFILE, 256)]))
    plan = init_spawn.Plan(run_state)
    return plan.encode(), plan


def _complete_record_ends(plan: bytes) -> list[int]:
    """Each length at which a record of the plan ends, from the first argument record on."""
    at, ends, seen_argument = plan.index(b"\0\0", len(init_spawn.MAGIC)) + 2, [], False
    while at < len(plan):
        tag, (size,) = plan[at:at + 1], struct.unpack_from("<I", plan, at + 1)
        at += 5 + size
        seen_argument = seen_argument or tag == b"a"
        if seen_argument:
            ends.append(at)
    return ends


@pytest.fixture(scope="module")
def plan_cuts():
    """(plan length, record ends from the first argument on, {length: (status, message)})."""
    data, plan = _real_plan()
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--uts", "--net", "--pid",
                               "--fork", "--kill-child", sys.executable, "-c", DRIVER, str(init_spawn.PROGRAM)],
                              input=data, capture_output=True, timeout=30, check=True)
    finally:
        plan.sources.unlink()
    return len(data), _complete_record_ends(data), {length: (status, message)
                                                    for length, status, message in json.loads(done.stdout)}


def test_the_whole_plan_runs_the_agent(plan_cuts):
    """The driver is sound: the uncut plan sets everything up and the agent hands over its listener."""
    size, _ends, results = plan_cuts
    # the stage names, then the records (30 capabilities to drop: 9 bytes each; the /dev steps: 909)
    assert size == 1768
    assert results[size] == (0, "listener 4")


def test_a_plan_cut_anywhere_is_refused_without_crashing(plan_cuts):
    """Every strict prefix of the plan, inside a record or between two, exits 125 naming clone_init."""
    size, _ends, results = plan_cuts
    cut = {length: results[length] for length in range(size)}
    assert {status for status, _message in cut.values()} == {125}  # never a signal (a negative status)
    assert [length for length, (_status, message) in cut.items()
            if not message.startswith("initfail\0clone_init\0")] == []
    assert cut[0][1] == "initfail\0clone_init\0" "0\0-1\0it cannot be read"
    assert cut[size - 1][1] == "initfail\0clone_init\0" "0\0-1\0a truncated record"


def test_a_plan_cut_between_records_says_so(plan_cuts):
    """A prefix that ends just after a whole record (an argument, a variable) is a plan cut short."""
    size, ends, results = plan_cuts
    assert [results[length][1] for length in ends if length < size] == [
        "initfail\0clone_init\0" "0\0-1\0a plan cut short"] * 4  # after each of two arguments and two variables


# ---- review findings: each failed before its fix ------------------------------------------------

def test_many_binds_and_landlock_rules_fit(init_kind, tmp_path, capfd):
    """40 bind mounts (80 mount calls) and 300 Landlock path rules are set up, as the Python init does."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "seen").write_text("here\n")
    targets = []
    for index in range(40):
        target = tmp_path / f"target{index}"
        target.mkdir()
        targets.append((str(source), str(target)))
    paths = {str(tmp_path / f"target{index % 40}" / f"rule{index}"): ll.FS_READ_FILE for index in range(300)}
    floor = landlock.Plan(ll.abi_version(), fs_handled=ll.FS_READ_FILE | ll.FS_READ_DIR | ll.FS_EXECUTE,
                          paths={"/": ll.FS_READ_FILE | ll.FS_READ_DIR | ll.FS_EXECUTE, **paths})
    assert run(["cat", str(tmp_path / "target39" / "seen")], binds=targets, landlock=floor) == 0
    assert capfd.readouterr().out == "here\n"


def test_a_ruleset_that_cannot_be_built_is_worded_the_same(init_kind, tmp_path):
    """A Landlock rule on a symlink loop fails stage landlock with the errno alone, from both inits."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    floor = landlock.Plan(ll.abi_version(), fs_handled=ll.FS_READ_FILE, paths={str(tmp_path / "a"): ll.FS_READ_FILE})
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], landlock=floor)
    assert (caught.value.stage, caught.value.message) == ("landlock", "Too many levels of symbolic links")


def test_a_nul_in_the_hostname_fails_stage_hostname(init_kind):
    """A hostname with a NUL byte is refused at stage hostname by both inits, never cut short."""
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], hostname="a\0b")
    assert caught.value.stage == "hostname"


def test_an_ignored_sigchld_still_gives_the_agents_status(init_kind):
    """With SIGCHLD ignored by the caller, the run still returns the agent's status, and the ignore is restored."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        assert run(["sh", "-c", "exit 5"]) == 5
        assert signal.getsignal(signal.SIGCHLD) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_a_failed_plan_leaks_no_descriptor(tmp_path):
    """A plan refused in the launcher (a file to show at a path that does not exist) closes the socket pair."""
    assert init_spawn.available()
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], files={str(tmp_path / "missing"): b"x"})
    assert caught.value.stage == "mounts"
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_signal_pending_at_inits_end_is_taken_first():
    """When init has ended and a forwarded signal is pending too, the watch returns the signal first."""
    from sandbox import launch as launching
    old = signal.pthread_sigmask(signal.SIG_BLOCK, launching._BLOCKED)
    try:
        child = os.fork()
        if child == 0:
            os._exit(7)
        while not os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        watch = launching._InitWatch(child, compiled=True)
        try:
            assert watch.wait(1.0) == signal.SIGINT
            assert watch.wait(1.0) == launching.INIT_EXIT_SIGNAL
        finally:
            watch.close()
        assert signal.SIGINT not in signal.sigpending()
        os.waitpid(child, 0)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


DROP_LEASE = """
import ctypes, os, sys
sys.path.insert(0, sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
header, data = Header(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(header), data) == 0
data[0].effective &= ~(1 << 28)  # CAP_LEASE: below the bounding set, which keeps it
data[0].permitted &= ~(1 << 28)
assert libc.capset(ctypes.byref(header), data) == 0
from sandbox.launch import launch
from sandbox.spec import SandboxSpec
launch(SandboxSpec(argv=["sleep", "30"], seccomp=False, cgroup=False), decide=None)  # no cgroup to leave behind
"""


def test_init_dies_with_a_launcher_whose_capabilities_its_execve_raised():
    """A launcher below its bounding set (init's execve regains capabilities and clears the death
    signal) killed with SIGKILL still takes init and the agent along."""
    assert init_spawn.available()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    launcher = subprocess.Popen([sys.executable, "-c", DROP_LEASE, root])
    tree = []
    try:
        deadline = time.monotonic() + 10
        while not [child for child in psutil.Process(launcher.pid).children(recursive=True)
                   if child.name() == "sleep"]:
            assert time.monotonic() < deadline, "the agent never started"
            time.sleep(0.02)
        tree = psutil.Process(launcher.pid).children(recursive=True)
        assert [process.cmdline() for process in tree] == [["faramesh-sandbox-init"], ["sleep", "30"]]
        launcher.kill()
        launcher.wait()
        assert psutil.wait_procs(tree, timeout=5)[1] == []  # nothing left alive
    finally:
        launcher.kill()
        launcher.wait()
        for process in tree:  # when the assertion above failed
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
