"""Execs under a racing path and argv rewrite never run a denied command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from policy.decision import Decision, Effect, deny
from tests.sandbox.conftest import WAIT_FOR_TRACER, outside_tracer, run_sandboxed


@pytest.fixture(scope="module")
def programs(cbin, tmp_path_factory):
    """Two binaries with equally long names: aaaa (allowed) and dddd (denied, exits 42)."""
    directory = tmp_path_factory.mktemp("exec")
    source = str(cbin.__globals__["C_DIR"] / "exit_code.c")
    for name, code in (("aaaa", 0), ("dddd", 42)):
        subprocess.run(["gcc", "-O2", f"-DEXIT_CODE={code}", "-o", str(directory / name), source], check=True)
    return str(directory / "aaaa"), str(directory / "dddd")


def exec_policy(call):
    """Deny running dddd and any command with the argument "evil"."""
    if call.tool == "shell/exec" and (call.args["program"] == "dddd" or "evil" in call.args["argv"]):
        return deny("exec-denied", "forbidden command", rule_id="no-dddd")
    return Decision(Effect.PERMIT)


def tally(output: bytes) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", output.decode())}


def race(cbin, programs, cgroup_dir, tries: int, seconds: float) -> dict[str, int]:
    run = run_sandboxed([cbin("exec_race"), *programs, str(tries), str(seconds)], exec_policy, cgroup=cgroup_dir,
                        timeout=seconds + 60)
    assert run.status == 0, run.stderr
    return tally(run.stdout)


def test_native_race_runs_denied_commands(cbin, programs):
    """Without the sandbox the flipping thread gets a denied command run (the harness works)."""
    counts = tally(subprocess.run([cbin("exec_race"), *programs, "300", "30"], capture_output=True).stdout)
    assert counts["bypass_path"] + counts["bypass_argv"] > 0


def test_racing_exec_never_runs_a_denied_command(cbin, programs, cgroup_dir):
    """300 racing execs with the agent frozen during each decision: zero bypasses."""
    counts = race(cbin, programs, cgroup_dir, 300, 60)
    assert counts["tries"] == 300
    assert (counts["bypass_path"], counts["bypass_argv"], counts["other"]) == (0, 0, 0)
    assert counts["allowed"] > 0 and counts["eperm"] > 0


@pytest.mark.race
def test_racing_exec_for_a_minute(cbin, programs, cgroup_dir):
    """As many racing execs as fit in 60 seconds: zero bypasses."""
    counts = race(cbin, programs, cgroup_dir, 1_000_000, 60)
    print(f"racing execs in 60 s: {counts}")  # shown with -s, for docs/benchmarks.md
    assert counts["tries"] > 1000
    assert (counts["bypass_path"], counts["bypass_argv"], counts["other"]) == (0, 0, 0)
    assert counts["allowed"] > 0 and counts["eperm"] > 0


def _cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_freezer_self_test_passes_on_this_kernel(cgroup_dir):
    """A frozen sleeping helper shows (S, get_signal), the state the per-task check relies on."""
    from sandbox import freeze
    freeze._run_self_test(os.path.dirname(cgroup_dir))
    assert freeze.FROZEN_WCHAN == ("S", "get_signal")


def test_freeze_stops_every_task_and_thaw_resumes_them(cgroup_dir):
    """freeze() returns only once a busy loop and a sleeper are stopped; thaw() lets them run."""
    from sandbox import freeze
    spinner = subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
    sleeper = subprocess.Popen(["/bin/sleep", "60"])
    try:
        for task in (spinner, sleeper):
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as fh:
                fh.write(str(task.pid))
        freezer = freeze.CgroupFreezer(cgroup_dir)
        freezer.freeze(holder=0)
        states = set()
        for _ in range(100):  # a frozen task may show a spurious wake-up for a moment
            states = {freeze.task_state(t.pid) for t in (spinner, sleeper)}
            if states == {("S", "get_signal")}:
                break
            time.sleep(0.001)
        assert states == {("S", "get_signal")}
        before = _cpu_ticks(spinner.pid)
        time.sleep(0.3)
        assert _cpu_ticks(spinner.pid) == before
        freezer.thaw()
        time.sleep(0.3)
        assert _cpu_ticks(spinner.pid) > before
    finally:
        for task in (spinner, sleeper):
            task.kill()
            task.wait()


# A single-threaded child execs (so the supervisor uses exec_verify.VerifiedExec, not the freezer)
# while another process rewrites what it execs: the path and argv through a shared mapping,
# or the symlink the path names, by rename. Prints the tally like exec_race ("enoent": a torn,
# half-rewritten path that names no file; "killed": the check after the kernel's copy saw a change).
SEPARATE_PROCESS_RACE = r'''
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
mode, allowed, denied, tries = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode(), int(sys.argv[4])
shared = mmap.mmap(-1, 4096)  # MAP_SHARED: the flipper's writes land in the child's memory
base = ctypes.addressof(ctypes.c_char.from_buffer(shared))
PATH, ARG1, ARGV = 0, 256, 512
link = os.path.join(os.path.dirname(allowed), b"prog-%d" % os.getpid())
ctypes.c_uint64.from_address(base + ARGV).value = base + PATH
ctypes.c_uint64.from_address(base + ARGV + 8).value = base + ARG1
def put(path, arg):
    shared[PATH:PATH + len(path) + 1] = path + b"\0"
    shared[ARG1:ARG1 + 5] = arg + b"\0"
def point(target):
    os.symlink(target, link + b".new")
    os.rename(link + b".new", link)
put(link if mode == "symlink" else allowed, b"okay")
point(allowed)
flipper = os.fork()
if flipper == 0:
    while True:
        if mode == "memory":
            put(denied, b"evil"); put(allowed, b"okay")
        else:
            point(denied); point(allowed)
tally = dict(tries=0, allowed=0, bypass_path=0, bypass_argv=0, eperm=0, enoent=0, killed=0, other=0)
for _ in range(tries):
    child = os.fork()
    if child == 0:
        libc.execve(ctypes.c_void_p(base + PATH), ctypes.c_void_p(base + ARGV), None)
        os._exit(100 + ctypes.get_errno())
    status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    key = {0: "allowed", 42: "bypass_path", 43: "bypass_argv", 101: "eperm", 102: "enoent", -9: "killed"}.get(status, "other")
    tally["tries"] += 1
    tally[key] += 1
os.kill(flipper, 9)
os.waitpid(flipper, 0)
for leftover in (link, link + b".new"):
    if os.path.lexists(leftover):
        os.unlink(leftover)
print(" ".join(f"{k}={v}" for k, v in tally.items()))
'''


def separate_process_race(programs, mode: str, tries: int, cgroup_dir=None):
    argv = [sys.executable, "-c", SEPARATE_PROCESS_RACE, mode, *programs, str(tries)]
    if cgroup_dir is None:
        return tally(subprocess.run(argv, capture_output=True, timeout=120).stdout), None
    run = run_sandboxed(argv, exec_policy, trapped=("execve", "execveat"), cgroup=cgroup_dir, timeout=120)
    assert run.status == 0, run.stderr
    return tally(run.stdout), run.stats


@pytest.mark.parametrize("mode", ["memory", "symlink"])
def test_native_separate_process_race_runs_denied_commands(programs, mode):
    """Without the sandbox the flipping process gets a denied command run (the harness works)."""
    counts, _ = separate_process_race(programs, mode, 1000)
    assert counts["bypass_path"] + counts["bypass_argv"] > 0


@pytest.mark.parametrize("mode", ["memory", "symlink"])
def test_verified_exec_never_runs_a_denied_command(programs, cgroup_dir, mode):
    """1,000 execs of a single-threaded child under a racing rewrite by another process, each
    checked after the kernel's copy (no freeze): zero bypasses."""
    counts, stats = separate_process_race(programs, mode, 1000, cgroup_dir)
    print(f"verified execs, {mode} race: {counts}")  # shown with -s
    assert counts["tries"] == 1000
    assert (counts["bypass_path"], counts["bypass_argv"], counts["other"]) == (0, 0, 0)
    assert counts["allowed"] > 0 and counts["eperm"] > 0
    assert stats["exec_verified"] >= 1000


def test_an_exec_changed_after_its_decision_is_killed_before_it_runs(programs, cgroup_dir, tmp_path):
    """The policy permits `prog` -> aaaa and, while deciding, repoints prog at dddd: the kernel
    execs dddd, the check at PTRACE_EVENT_EXEC sees it, and the child dies before dddd runs."""
    allowed, denied = programs
    link = tmp_path / "prog"
    link.symlink_to(allowed)

    def swap_while_deciding(call):
        if call.tool == "shell/exec" and call.args["program"] == "aaaa":
            (tmp_path / "next").symlink_to(denied)
            os.replace(tmp_path / "next", link)
        return exec_policy(call)

    run = run_sandboxed(["/bin/sh", "-c", f'"{link}" okay; echo "status=$?"'], swap_while_deciding,
                        trapped=("execve", "execveat"), cgroup=cgroup_dir, timeout=60)
    assert run.status == 0, run.stderr
    assert run.stdout == b"status=137\n"  # SIGKILL, not dddd's 42
    assert run.stats["exec_changed"] == 1
    changed = [r for r in run.audit if r["reason_code"] == "EXEC_CHANGED"]
    assert len(changed) == 1 and "/dddd' is not the decided" in changed[0]["reason"]


def test_a_script_is_decided_with_the_agent_frozen(cgroup_dir, tmp_path):
    """A #! script runs its interpreter, so /proc/PID/exe cannot be checked: the freezer decides
    it, while the ELF /bin/true forked by the same shell is verified."""
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    run = run_sandboxed(["/bin/sh", "-c", f'"{script}"; /bin/true; echo done'], exec_policy,
                        trapped=("execve", "execveat"), cgroup=cgroup_dir, timeout=60)
    assert (run.status, run.stdout) == (0, b"hello\ndone\n")
    assert run.stats["permitted"] == 3  # sh itself, the script, /bin/true
    assert run.stats["exec_verified"] == 1  # /bin/true only


def test_a_file_replaced_after_its_decision_by_a_system_program_is_killed(cgroup_dir, tmp_path):
    """Same path, new content: while `prog` (a copy of /bin/true) is decided, a copy of /usr/bin/id
    is renamed over it; the executed file is named `id` by content, so the child dies unrun."""
    prog = tmp_path / "prog"
    shutil.copy("/bin/true", prog)

    def swap_while_deciding(call):
        if call.tool == "shell/exec" and call.args["path"] == str(prog):
            shutil.copy("/usr/bin/id", tmp_path / "next")
            os.replace(tmp_path / "next", prog)
        return exec_policy(call)

    run = run_sandboxed(["/bin/sh", "-c", f'"{prog}"; echo "status=$?"'], swap_while_deciding,
                        trapped=("execve", "execveat"), cgroup=cgroup_dir, timeout=60)
    assert (run.status, run.stdout) == (0, b"status=137\n")  # killed: id's output never appears
    changed = [r for r in run.audit if r["reason_code"] == "EXEC_CHANGED"]
    assert len(changed) == 1 and "program ('id'" in changed[0]["reason"]


def test_a_holder_a_host_debugger_traces_is_decided_with_the_agent_frozen(cbin, cgroup_dir, tmp_path):
    """The supervisor cannot seize a holder another tracer holds (PTRACE_SEIZE: EPERM): its
    permitted exec is decided again with the agent frozen, and runs; its denied exec (refused
    without a seize) fails with EPERM. Both on record. The holder is the agent's child: the
    supervisor's own child is never verified, so no seize would be tried on it."""
    ready = tmp_path / "pid"
    agent = WAIT_FOR_TRACER + (
        "child = os.fork()\n"
        "if child:\n    os._exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))\n"
        f"wait_for_tracer({str(ready)!r})\n"
        "os.execv('/bin/sh', ['sh', '-c', 'exec /bin/true evil'])\n")
    with outside_tracer(cbin, ready) as tracer:
        run = run_sandboxed([sys.executable, "-S", "-c", agent], exec_policy, trapped=("execve", "execveat"),
                            cgroup=cgroup_dir, timeout=60)
    assert tracer["run"].stdout == b"seized\n", tracer["run"].stderr
    assert run.stdout == b"True\n"  # traced by the host's debugger before its execs
    assert b"Operation not permitted" in run.stderr and run.status != 0  # `true evil` refused
    execs = [(r["args"]["argv"], r["effect"]) for r in run.audit if r["tool"] == "shell/exec"]
    assert execs[1:] == [(["sh", "-c", "exec /bin/true evil"], "PERMIT"), (["/bin/true", "evil"], "DENY")]
    assert run.stats["exec_verified"] == 1  # the denial; the permit could not be seized (2 untraced)


@pytest.mark.parametrize("call", ["execve", "execveat"])
def test_an_exec_rewritten_by_a_dying_task_is_killed_before_it_runs(cbin, cgroup_dir, tmp_path, call):
    """Frozen tasks still write memory as they die (clear_child_tid): a script's path turned into a
    denied script's (same interpreter: only the filename differs, /dev/fd/N/... for execveat)
    between the decision and the kernel's copy is caught on the new image, still frozen, and
    killed (sandbox/exec_verify.py FrozenExec). The race is hit (some are killed) and never won."""
    for name, code in (("okZZZZ", 0), ("ok", 42)):
        (tmp_path / name).write_text(f"#!/bin/sh\nexit {code}\n")
        (tmp_path / name).chmod(0o755)

    def refuse_ok(call):
        if call.tool == "shell/exec" and call.args["path"].endswith("/ok"):
            return deny("exec-denied", "forbidden command", rule_id="no-ok")
        return Decision(Effect.PERMIT)
    argv = [cbin("exit_write_race"), str(tmp_path), "300", "500", "8000", *(["execveat"] if call == "execveat" else [])]
    run = run_sandboxed(argv, refuse_ok, cgroup=cgroup_dir, timeout=180)
    counts = tally(run.stdout)
    assert run.status == 0 and counts["tries"] == 300, run.explain()
    assert counts["ran_denied"] == 0, counts
    assert counts["killed"] > 0 and counts["script"] > 0, counts
    changed = [r for r in run.audit if r["reason_code"] == "EXEC_CHANGED"]
    assert len(changed) == counts["killed"] and all("ok" in r["reason"] for r in changed), changed[:2]


THREAD_EXEC = "import os, threading, time; threading.Thread(target=os.execv, args=(EXE, ARGV)).start(); time.sleep(5)"


@pytest.mark.parametrize("exe, argv, expected", [
    ("/bin/echo", ["echo", "ran"], "ran"),  # an ELF from a thread: de_thread moves it to the leader's pid
    ("/proc/self/exe", ["python3", "-c", "print('re-exec')"], "re-exec"),  # a magic link names the file
])
def test_legitimate_frozen_execs_run(cgroup_dir, exe, argv, expected):
    """What the freezer path decides and checks on the new image is run, not killed: an exec from
    a thread (waited for until the leader's pid holds the whole new image) and an exec through
    /proc/self/exe, five times each."""
    code = THREAD_EXEC.replace("EXE", repr(exe)).replace("ARGV", repr(argv))
    for _ in range(5):
        run = run_sandboxed([sys.executable, "-c", code], lambda call: Decision(Effect.PERMIT), cgroup=cgroup_dir)
        assert (run.status, run.stdout.decode().strip()) == (0, expected), run.explain()
        assert not [r for r in run.audit if r["reason_code"] == "EXEC_CHANGED"]


def test_an_exec_through_dev_fd_runs(cgroup_dir):
    """bash exec'ing /dev/fd/3 (open on /bin/echo): decided on the freezer path, runs."""
    run = run_sandboxed(["/bin/bash", "-c", "exec 3</bin/echo; exec /dev/fd/3 fd-ran"],
                        lambda call: Decision(Effect.PERMIT), cgroup=cgroup_dir)
    assert (run.status, run.stdout) == (0, b"fd-ran\n"), run.explain()
