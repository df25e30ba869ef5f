"""launch(late=...): a sandbox made before its command is known, released with a late plan (the
command, its environment and working directory) and the agent's stdin, stdout and stderr; and the
compiled init's refusal of every plan of that kind that is not exactly right."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
import traceback
import types
from pathlib import Path

import pytest

from policy.decision import Decision, Effect
from sandbox import init_spawn, traced
from sandbox.errors import SandboxError
from sandbox.launch import LateCommand, late_release_supported, launch
from sandbox.limits import Limits
from sandbox.spec import SandboxSpec

pytestmark = pytest.mark.kernel
TRAPPED = frozenset(row.name for row in traced.TABLE)
LATE_TAGS = set("cPaexz")  # sandbox/init_c/init.h LATE_TAGS: what a late plan may hold


def permit_all(call):
    return Decision(Effect.PERMIT, rule_id="test-permit")


def in_child(body):
    """``body()`` in a forked child, which has only the calling thread (launch() refuses a process
    with others, and this one may hold some); returns its JSON-able result, or fails with its traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            outcome = {"value": body()}
        except BaseException:  # noqa: BLE001 - reported in the parent
            outcome = {"error": traceback.format_exc()}
        try:
            with os.fdopen(write_end, "w") as out:
                json.dump(outcome, out)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as report:
        data = report.read()
    _, status = os.waitpid(pid, 0)
    assert (status, bool(data)) == (0, True), f"the forked child ended with status {status} and no report"
    outcome = json.loads(data)
    if "error" in outcome:
        pytest.fail(f"in the forked child:\n{outcome['error']}", pytrace=False)
    return outcome["value"]


class Late:
    """launch()'s ``late``: logs what init looked like when wait() was called, and the status ended() heard."""

    def __init__(self, command: LateCommand, log: list, delay: float = 0.0):
        self.command, self.log, self.delay = command, log, delay

    def wait(self, init_pid: int) -> LateCommand:
        with open(f"/proc/{init_pid}/cmdline", "rb") as cmdline, \
                open(f"/proc/{init_pid}/task/{init_pid}/children") as children:
            self.log.append(["wait", cmdline.read().decode(), children.read()])
        time.sleep(self.delay)
        return self.command

    def ended(self, status: int) -> None:
        self.log.append(["ended", status])


class Stdio:
    """The late command's stdin (a pipe holding ``given``), stdout and stderr (files in ``where``)."""

    def __init__(self, where: Path, given: bytes = b""):
        self.out_path, self.err_path = where / "late.out", where / "late.err"
        stdin, feed = os.pipe()
        os.write(feed, given)
        os.close(feed)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.fds = (stdin, os.open(self.out_path, flags, 0o600), os.open(self.err_path, flags, 0o600))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def written(self) -> tuple[str, str]:
        return self.out_path.read_text(), self.err_path.read_text()


def launch_late(tmp_path: Path, argv: list[str], env: dict[str, str], given: bytes = b"", delay: float = 0.0,
                **fields) -> dict:
    """In a forked child: launch() with a Late giving ``argv``; the log (wait, ended, returned) and
    what the agent wrote to the late stdout and stderr."""
    def body():
        os.environ["LAUNCHER_ONLY"] = "the launcher's"  # the late command brings its own environment
        stdio = Stdio(tmp_path, given)
        log: list = []
        try:
            command = LateCommand(argv=argv, env=env, cwd=str(tmp_path), stdio=stdio.fds)
            status = launch(SandboxSpec(argv=[], trapped=TRAPPED, **fields), permit_all, late=Late(command, log, delay))
            log.append(["returned", status])
        except SandboxError as err:
            log.append(["raised", err.stage, err.message])
        finally:
            stdio.close()
        return {"log": log, "written": stdio.written()}
    result = in_child(body)
    # The supervised path calls ended() twice with the same status (once from _supervise, once from
    # launch()); launcher/serve.py's ended() acts on the first. What matters here is the order.
    result["log"] = [entry for at, entry in enumerate(result["log"]) if at == 0 or entry != result["log"][at - 1]]
    return result


PATH_ONLY = {"PATH": "/usr/bin:/bin"}


# ---- launch(late=...) ------------------------------------------------------------------------------

@pytest.mark.parametrize("seccomp", [True, False], ids=["supervised", "namespaces-only"])
def test_the_late_command_runs_with_its_env_cwd_and_stdio(tmp_path, capfd, seccomp):
    """wait() gets a live init with no agent yet; the agent runs the late argv with the late env, cwd
    and stdio (none of the launcher's), and ended() hears its status before launch() returns it."""
    script = 'read line; echo "in:$line"; echo "env:$LATE:${LAUNCHER_ONLY-unset}"; pwd; echo err >&2; exit 5'
    result = launch_late(tmp_path, ["sh", "-c", script], {**PATH_ONLY, "LATE": "late's"}, given=b"given\n",
                         seccomp=seccomp)
    assert result == {"log": [["wait", "faramesh-sandbox-init\0", ""], ["ended", 5], ["returned", 5]],
                      "written": [f"in:given\nenv:late's:unset\n{tmp_path}\n", "err\n"]}
    assert capfd.readouterr().out == ""  # the launcher's own stdout got none of it


def test_a_late_command_not_found_is_127_on_the_late_stderr(tmp_path):
    """A late argv[0] found nowhere on the late PATH is 127, with the shell-style line on the late stderr."""
    result = launch_late(tmp_path, ["no-such-program-xyz"], PATH_ONLY)
    assert result == {"log": [["wait", "faramesh-sandbox-init\0", ""], ["ended", 127], ["returned", 127]],
                      "written": ["", "faramesh-sandbox: no-such-program-xyz: No such file or directory\n"]}


def test_the_timeout_counts_from_the_late_command(tmp_path):
    """A 1 s timeout: a sandbox that waited 1.3 s for its command still gives the command its whole second."""
    result = launch_late(tmp_path, ["sh", "-c", "sleep 0.3; echo done"], PATH_ONLY, delay=1.3,
                         limits=Limits(timeout=1.0))
    assert (result["log"][1:], result["written"]) == ([["ended", 0], ["returned", 0]], ["done\n", ""])


def test_a_late_command_that_overstays_the_timeout_is_124(tmp_path):
    """The timeout still holds for the late command itself: killed after its second, status 124."""
    started = time.monotonic()
    result = launch_late(tmp_path, ["sleep", "10"], PATH_ONLY, limits=Limits(timeout=1.0))
    assert result["log"][1:] == [["ended", 124], ["returned", 124]]
    assert time.monotonic() - started < 5


def test_late_needs_the_compiled_init(tmp_path):
    """Without the compiled init, launch(late=...) fails stage release_init and never asks for the command."""
    def body():
        init_spawn.available = lambda: False  # this forked child's copy only
        log: list = []
        command = LateCommand(argv=["/bin/true"], env=PATH_ONLY, cwd="/", stdio=(0, 1, 2))
        try:
            launch(SandboxSpec(argv=[], trapped=TRAPPED), permit_all, late=Late(command, log))
        except SandboxError as err:
            return [err.stage, log]
        return ["returned", log]
    assert in_child(body) == ["release_init", []]


def test_late_release_is_supported_as_root_with_the_compiled_init(monkeypatch):
    """late_release_supported: True as root with sandbox/_init; False in a user namespace or without the program."""
    assert os.geteuid() == 0 and init_spawn.available()
    assert late_release_supported(SandboxSpec(argv=[])) is True
    assert late_release_supported(SandboxSpec(argv=[], user_namespace=True)) is False
    monkeypatch.setattr(init_spawn, "available", lambda: False)
    assert late_release_supported(SandboxSpec(argv=[])) is False


# ---- the plans, as the launcher writes them ---------------------------------------------------------

def _plan(argv: list[str], late: bool = True) -> init_spawn.Plan:
    """A Plan for a namespaces-only run (no filter), waiting for its command when ``late``."""
    spec = SandboxSpec(argv=argv, env=dict(PATH_ONLY), cwd="/", hostname="late", seccomp=False)
    run_state = types.SimpleNamespace(spec=spec, program=b"", cap_drop=[], late=object() if late else None,
                                      limits=types.SimpleNamespace(rlimit_list=lambda: [(resource.RLIMIT_NOFILE, 256)]))
    return init_spawn.Plan(run_state)


def _split(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A plan's head (magic and stage names) and its records (tag, payload)."""
    at = data.index(b"\0\0", len(init_spawn.MAGIC)) + 2
    head, records = data[:at], []
    while at < len(data):
        tag, (size,) = data[at:at + 1].decode(), struct.unpack_from("<I", data, at + 1)
        records.append((tag, data[at + 5:at + 5 + size]))
        at += 5 + size
    return head, records


def _record(tag: str, payload: bytes = b"") -> bytes:
    return tag.encode() + struct.pack("<I", len(payload)) + payload


def test_a_waiting_plan_holds_w_and_no_command():
    """The first plan of a late run says 'w' and holds no working directory, argument, variable or PATH."""
    plan = _plan(["echo", "x"])
    try:
        head, records = _split(plan.encode())
        assert head == _split(plan.encode_late())[0]
        tags = [tag for tag, _payload in records]
        assert (tags[-2:], set(tags) & set("cPaex")) == (["w", "z"], set())
    finally:
        plan.sources.unlink()


@pytest.mark.parametrize(("argv", "tags"), [
    (["echo", "a b"], ["c", "P", "a", "a", "e", "z"]),
    (["/bin/echo"], ["c", "a", "e", "z"]),  # a path: no PATH search
    (["a\0b"], ["c", "x", "z"]),  # cannot be run: init says so, status 127
])
def test_a_late_plan_holds_only_the_command(argv, tags):
    """encode_late: the head, then only cwd, PATH search, arguments, variables or cannot-run, and the end."""
    plan = _plan(argv)
    try:
        _head, records = _split(plan.encode_late())
        assert [tag for tag, _payload in records] == tags
        assert set(tags) <= LATE_TAGS
        assert [payload for tag, payload in records if tag == "a"] == (
            [] if "x" in tags else [os.fsencode(arg) + b"\0" for arg in argv])
    finally:
        plan.sources.unlink()


# ---- the compiled init's refusals ---------------------------------------------------------------------

# Runs inside new mount/uts/net/pid namespaces: sandbox/_init started as the launcher starts it (socket
# at fd 3, plan memfd at fd 4, every signal blocked) for each case: its first plan, then "go" with
# ``sent`` of [late plan memfd, stdin, stdout, stderr]. Reports init's message, its status and what
# reached the stdout and stderr pipes.
LATE_DRIVER = r"""
import json, os, signal, socket, sys
program, cases = sys.argv[1], json.loads(sys.stdin.read())
reserved = [os.open(os.devnull, os.O_RDONLY) for _ in range(2)]  # fds 3 and 4: what follows lands above
results = []
for first, late, sent in cases:
    launcher, init_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    memfd = os.memfd_create("plan", os.MFD_CLOEXEC)
    os.write(memfd, bytes.fromhex(first))
    pid = os.posix_spawn(program, ["faramesh-sandbox-init"], {}, setsigmask=range(1, signal.NSIG),
                         file_actions=[(os.POSIX_SPAWN_DUP2, init_end.fileno(), 3),
                                       (os.POSIX_SPAWN_DUP2, memfd, 4)])
    init_end.close()
    os.close(memfd)
    late_fd = os.memfd_create("late", os.MFD_CLOEXEC)
    os.write(late_fd, bytes.fromhex(late))
    stdin, feed = os.pipe()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    os.close(feed)
    fds = [late_fd, stdin, out_write, err_write][:sent]
    if fds:
        socket.send_fds(launcher, [b"go"], fds)
    else:
        launcher.send(b"go")
    for fd in (late_fd, stdin, out_write, err_write):
        os.close(fd)
    launcher.settimeout(5)
    message = launcher.recv(4096)
    launcher.close()
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    written = []
    for fd in (out_read, err_read):
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
        os.close(fd)
        written.append(data.decode("latin-1"))
    results.append([status, message.decode("latin-1"), *written])
print(json.dumps(results))
"""


def _refusal(why: str) -> str:
    return f"initfail\0clone_init\0" f"0\0-1\0{why}"


REFUSED = ("command after w", "command before w", "late hostname", "late mount", "late w", "late without z",
           "late without a command", "late of another build", "late empty", "w, no fds", "w, only the plan",
           "w, three fds", "fds for a plan holding its command")


def _cases() -> dict[str, tuple[bytes, bytes, int, list]]:
    """name -> (first plan, late plan, descriptors sent with "go", expected [status, message, stdout, stderr])."""
    waiting, holding = _plan(["echo", "ran"]), _plan(["echo", "ran"], late=False)
    try:
        first, own = waiting.encode(), holding.encode()
        late = waiting.encode_late()
    finally:
        waiting.sources.unlink()
        holding.sources.unlink()
    head, late_records = _split(late)
    end = _record("z")
    assert first.endswith(_record("w") + end) and late.endswith(end)
    argument = _record("a", b"ran\0")
    return {
        # refused while reading the first plan (init still waits for the release first)
        "command after w": (first[:-len(end)] + argument + end, late, 4,
                            [125, _refusal("a command in a plan that waits for one"), "", ""]),
        "command before w": (first[:-len(_record("w") + end)] + argument + _record("w") + end, late, 4,
                             [125, _refusal("a command in a plan that waits for one"), "", ""]),
        # refused in the late plan
        "late hostname": (first, late[:-len(end)] + _record("h", b"other\0") + end, 4,
                          [125, _refusal("a record a late command may not hold"), "", ""]),
        "late mount": (first, head + _record("m", struct.pack("<Q", 0) + b"\0/mnt\0\0\0") + late[len(head):], 4,
                       [125, _refusal("a record a late command may not hold"), "", ""]),
        "late w": (first, late[:-len(end)] + _record("w") + end, 4,
                   [125, _refusal("a record a late command may not hold"), "", ""]),
        "late without z": (first, late[:-len(end)], 4, [125, _refusal("a plan cut short"), "", ""]),
        "late without a command": (first, head + _record("c", b"/\0") + end, 4,
                                   [125, _refusal("no command to run"), "", ""]),
        "late of another build": (first, b"faramesh-init-plan-X\0" + late[len(init_spawn.MAGIC):], 4,
                                  [125, _refusal("it was written for another build of the sandbox "
                                                 "(reinstall: the stages differ)"), "", ""]),
        "late empty": (first, b"", 4, [125, _refusal("the late command cannot be read"), "", ""]),
        # a release without exactly the four descriptors, or with them for a plan holding its command
        "w, no fds": (first, late, 0, [125, "", "", ""]),
        "w, only the plan": (first, late, 1, [125, "", "", ""]),
        "w, three fds": (first, late, 3, [125, "", "", ""]),
        "fds for a plan holding its command": (own, late, 4, [125, "", "", ""]),
        # the only case that runs an agent
        "sound": (first, late, 4, [0, "ready", "ran\n", ""]),
    }


@pytest.fixture(scope="module")
def late_cases():
    """{case: (expected, what init did)}, each case run by the driver in namespaces of its own (a case
    that wrongly runs an agent leaves mounts behind, which would fail the next one for another reason)."""
    cases = _cases()
    assert list(cases) == [*REFUSED, "sound"]
    results = {}
    for name, (first, late, sent, expected) in cases.items():
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--uts", "--net", "--pid", "--fork",
                               "--kill-child", sys.executable, "-c", LATE_DRIVER, str(init_spawn.PROGRAM)],
                              input=json.dumps([[first.hex(), late.hex(), sent]]), capture_output=True, text=True,
                              timeout=30, check=True)
        results[name] = (expected, json.loads(done.stdout)[0])
    return results


def test_the_sound_late_plan_runs_the_agent(late_cases):
    """The driver is sound: a waiting plan released with a good late plan and four fds runs the late
    command, which writes to the stdout sent with the release."""
    expected, got = late_cases["sound"]
    assert got == expected


@pytest.mark.parametrize("case", REFUSED)
def test_a_late_plan_not_exactly_right_is_refused_and_runs_nothing(late_cases, case):
    """Each malformed first plan, late plan or release makes init exit 125 before any agent exists:
    with a clone_init message for a plan it read, silently for a release that is not the launcher's."""
    expected, got = late_cases[case]
    assert got == expected
