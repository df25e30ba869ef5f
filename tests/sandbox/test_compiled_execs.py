"""Repeated execs answered by the compiled receiver (sandbox/fastpath_c/exec.c) on the real kernel."""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import policy
from policy.decision import Decision, Effect
from sandbox import _fastpath, fastpath_exec
from sandbox.decode.exec import command_line
from sandbox.exec_verify import VerifiedExec
from sandbox.freeze import FreezeError
from tests.sandbox.conftest import WAIT_FOR_TRACER, outside_tracer, run_sandboxed


CURL_RULE = 'agent a {\n  default permit\n  deny shell/exec when args.program == "curl" reason: "no curl"\n}\n'
NO_FALSE = ('agent a {\n  default permit\n  deny shell/exec when args.program == "false" reason: "no false"\n'
            '  deny shell/exec when contains(args.argv, "exit 42") reason: "no 42"\n}\n')
EXECS = ("execve", "execveat")  # only execs trapped: the race's other calls run at native speed
VARYING = ("time", "latency_us", "pid")  # what differs between two records of the same decision


def engine(text: str) -> policy.Engine:
    return policy.Engine([policy.load_policy(text, "p.fpl")], policy.SessionStore())


def sandboxed(script: str, cgroup: str, text: str = CURL_RULE, **kwargs):
    rules = engine(text)
    return run_sandboxed(["/usr/bin/dash", "-c", script], rules.decide, cgroup=cgroup,
                         decision_keys=rules.decision_keys, **kwargs)


def exec_records(run, program: str | None = None) -> list[dict]:
    return [r for r in run.audit if r["tool"] == "shell/exec" and program in (None, r["args"].get("program"))]


def same_record(record: dict) -> dict:
    """The record without what differs between two execs decided alike (time, latency, pid)."""
    kept = {key: value for key, value in record.items() if key not in VARYING}
    return dict(kept, args={key: value for key, value in record["args"].items() if key != "pid"})


def test_repeated_execs_are_answered_in_c_with_exact_records(cgroup_dir):
    """200 execs of /bin/true: the first decided in Python, 199 in C, all with the same permit record."""
    run = sandboxed("for i in $(seq 200); do /bin/true; done", cgroup_dir)
    assert run.status == 0, run.stderr
    records = exec_records(run, "true")
    assert len(records) == 200
    assert run.stats["fast_exec_hits"] == 199
    assert run.stats["fast_exec_changed"] == 0
    first = same_record(records[0])
    assert first["effect"] == "PERMIT" and first["syscall"] == "execve"
    assert first["args"]["argv"] == ["/bin/true"] and first["args"]["path"] == "/usr/bin/true"
    assert all(same_record(r) == first for r in records[1:])
    assert all(r["args"]["pid"] == r["pid"] for r in records)


def test_a_repeat_a_host_debugger_traces_is_decided_afresh_in_python(cbin, cgroup_dir, tmp_path):
    """The compiled receiver cannot seize a holder another tracer holds (PTRACE_SEIZE: EPERM):
    the repeated exec goes back to Python untouched (nothing answered or recorded in C), which
    decides it afresh with the agent frozen; it runs, on record like the first."""
    ready = tmp_path / "pid"
    agent = WAIT_FOR_TRACER + (
        "def child(traced):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        f"        if traced:\n            wait_for_tracer({str(ready)!r})\n"
        "        os.execv('/bin/true', ['/bin/true', 'again'])\n"
        "    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
        "print(child(False), child(True))\n")
    rules = engine(CURL_RULE)
    with outside_tracer(cbin, ready) as tracer:
        run = run_sandboxed([sys.executable, "-S", "-c", agent], rules.decide, cgroup=cgroup_dir,
                            decision_keys=rules.decision_keys, trapped=EXECS, timeout=60)
    assert tracer["run"].stdout == b"seized\n", tracer["run"].stderr
    assert (run.status, run.stdout) == (0, b"True\n0 0\n"), run.stderr
    again = [r for r in exec_records(run, "true") if r["args"]["argv"] == ["/bin/true", "again"]]
    assert [r["effect"] for r in again] == ["PERMIT", "PERMIT"]
    assert run.stats["fast_exec_hits"] == 0  # untraced, the repeat is answered in C (1)
    assert run.stats["exec_verified"] == 1  # the first; the repeat could not be seized


def test_repeated_denial_is_answered_in_c(cgroup_dir):
    """A denied program run 30 times: every try gets EPERM, 29 from C, all with the same deny record."""
    run = sandboxed("n=0; for i in $(seq 30); do /usr/bin/false 2>/dev/null || n=$((n+$?)); done; echo $n",
                    cgroup_dir, NO_FALSE)
    assert run.status == 0, run.stderr
    assert run.stdout == b"3780\n"  # 30 times 126: the shell's "cannot execute"
    records = exec_records(run, "false")
    assert len(records) == 30
    assert run.stats["fast_exec_denied"] == 29
    first = same_record(records[0])
    assert (first["effect"], first["reason"]) == ("DENY", "no false")
    assert all(same_record(r) == first for r in records[1:])


def test_cwd_change_is_decided_afresh(cgroup_dir):
    """The same exec from another working directory is decided by Python first, then repeated in C."""
    run = sandboxed("cd /tmp; /bin/true; /bin/true; cd /; /bin/true; /bin/true", cgroup_dir)
    assert run.status == 0, run.stderr
    # (records of calls answered in C are written just after the answer: sorted, not in order)
    assert sorted(r["args"]["cwd"] for r in exec_records(run, "true")) == ["/", "/", "/tmp", "/tmp"]
    assert run.stats["fast_exec_hits"] == 2
    assert run.stats["fast_exec_entries"] == 2


def test_repointed_symlink_is_decided_afresh(cgroup_dir, tmp_path):
    """A symlink re-pointed from true to false between execs: the third exec is decided (denied) by Python."""
    link = tmp_path / "tool"
    link.symlink_to("/usr/bin/true")
    run = sandboxed(f"{link}; {link}; ln -sfn /usr/bin/false {link}; {link} 2>/dev/null; echo $?", cgroup_dir,
                    NO_FALSE)
    assert run.status == 0, run.stderr
    assert run.stdout == b"126\n"
    # (records of calls answered in C are written just after the answer: in the order of their times)
    records = sorted((r for r in exec_records(run) if r["args"]["requested"] == str(link)), key=lambda r: r["time"])
    assert [r["effect"] for r in records] == ["PERMIT", "PERMIT", "DENY"]
    assert run.stats["fast_exec_hits"] == 1
    assert run.stats["fast_exec_denied"] == 0


@pytest.fixture
def listed_program():
    """A copy of /usr/bin/true in /usr/local/bin made before the sandbox starts: a listed system program."""
    path = f"/usr/local/bin/fstest-{uuid.uuid4().hex[:8]}"
    shutil.copy2("/usr/bin/true", path)
    time.sleep(0.02)  # a coarse clock tick: its ctime is older than the program index
    yield path
    for leftover in (path, path + ".new"):
        if os.path.lexists(leftover):
            os.unlink(leftover)


def test_replaced_file_is_decided_afresh(cgroup_dir, listed_program):
    """A listed program replaced by a copy between execs is decided by Python again (by content)."""
    run = sandboxed(f"P={listed_program}; $P; $P; cp /usr/bin/true $P.new; mv $P.new $P; $P; $P", cgroup_dir)
    assert run.status == 0, run.stderr
    records = [r for r in exec_records(run) if r["args"]["requested"] == listed_program]
    assert [r["args"].get("sha256") is None for r in records] == [True, True, False, False]
    assert run.stats["fast_exec_hits"] == 1


def test_our_child_and_threaded_holders_go_to_python(cgroup_dir, cbin):
    """A learned exec by a multi-threaded holder or by the supervisor's own child is decided in Python."""
    race = cbin("exec_race")
    run = sandboxed(f"/usr/bin/true okay; /usr/bin/true okay; {race} /usr/bin/true /usr/bin/false 10 20; "
                    "exec /usr/bin/true okay", cgroup_dir, NO_FALSE)
    assert run.status == 0, run.stderr
    assert re.search(rb"tries=10 ", run.stdout)
    assert run.stats["fast_exec_hits"] == 1
    threaded = [r for r in exec_records(run) if r["args"]["argv"] == ["/usr/bin/true", "okay"]]
    # learned, repeated in C, the race's threaded holders that drew "okay" (how many varies), and
    # our own child's exec: every one after the second decided in Python (fast_exec_hits above)
    assert len(threaded) >= 3


def test_scripts_and_the_loader_are_never_learned(cgroup_dir, tmp_path):
    """A #! script and a program run by the dynamic loader, three times each: nothing learned, nothing from C."""
    script = tmp_path / "s.sh"
    script.write_text("#!/usr/bin/dash\nexit 0\n")
    script.chmod(0o755)
    run = sandboxed(f"for i in 1 2 3; do {script}; /lib64/ld-linux-x86-64.so.2 /usr/bin/true; done", cgroup_dir)
    assert run.status == 0, run.stderr
    assert len(exec_records(run)) == 7
    assert (run.stats["fast_exec_entries"], run.stats["fast_exec_hits"]) == (0, 0)


def test_racing_sibling_never_runs_a_denied_program(cgroup_dir, cbin):
    """A CLONE_VM sibling flipping path and argv during 20,000 execs: nothing denied runs, changes are killed."""
    race = cbin("exec_vm_race")
    run = sandboxed(f"{race} /usr/bin/dash /usr/bin/false 20000 100 2>/dev/null", cgroup_dir, NO_FALSE,
                    timeout=130, trapped=EXECS)
    assert run.status == 0, run.stderr
    counts = {k: int(v) for k, v in re.findall(rb"(\w+)=(\d+)", run.stdout)}
    assert counts[b"tries"] == 20000
    assert (counts[b"bypass_path"], counts[b"bypass_argv"]) == (0, 0)
    assert counts[b"allowed"] > 0 and counts[b"eperm"] > 0
    assert run.stats["fast_exec_hits"] > 0 and run.stats["fast_exec_denied"] > 0
    changed = [r for r in run.audit if r["reason_code"] == "EXEC_CHANGED"]
    assert len(changed) >= run.stats["fast_exec_changed"] > 0
    assert all(re.fullmatch(r"pid \d+: .* is not the decided .*; killed before it ran", r["reason"], re.S)
               for r in changed)
    assert counts[b"killed"] >= run.stats["fast_exec_changed"]


def test_no_thread_outlives_the_execs(cgroup_dir):
    """The exec stop's watchdog thread ends by itself once nothing is watched, so a launcher is
    single-threaded again for its next sandbox (threads counted in /proc/self/task)."""
    before = len(os.listdir("/proc/self/task"))
    run = sandboxed("for i in $(seq 20); do /bin/true; done", cgroup_dir)
    assert run.status == 0, run.stderr
    assert run.stats["fast_exec_hits"] == 19
    deadline = time.monotonic() + 1.0
    while len(os.listdir("/proc/self/task")) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir("/proc/self/task")) <= before  # other tests' threads may end meanwhile


@pytest.mark.parametrize(("wait_here", "finished_here"), [(1.0, True), (0.0, False)])
def test_receiver_or_python_finish_with_the_same_records(cgroup_dir, monkeypatch, wait_here, finished_here):
    """The receiver finishes a repeated exec itself when its stop comes within WAIT_HERE; otherwise
    Python takes the stop over (the locks still held). Either way: the same records, nothing killed."""
    monkeypatch.setattr(fastpath_exec, "WAIT_HERE", wait_here)
    run = sandboxed("for i in $(seq 100); do /bin/true; done", cgroup_dir)
    assert run.status == 0, run.stderr
    assert (run.stats["fast_exec_hits"], run.stats["fast_exec_changed"]) == (99, 0)
    here, waiting = run.stats["fast_exec_here"], run.stats["fast_exec_waiting"]
    assert here + waiting == 99  # nothing left to Python for want of the locks
    assert run.stats["fast_exec_proc_checks"] == 0  # argv and AT_EXECFN read from the new stack
    if finished_here:
        assert waiting == 0
    else:  # one look, no wait: a stop already in then is finished here, any other by Python
        assert waiting > 0
    records = exec_records(run, "true")
    assert len(records) == 100
    assert all(same_record(r) == same_record(records[0]) for r in records[1:])


def test_exec_waits_for_filesystem_operations(cgroup_dir, monkeypatch):
    """While a filesystem operation holds the gate, the receiver leaves the exec to Python, which
    finishes it once the gate is free: every exec runs, recorded, none killed."""
    natives = []
    learn = fastpath_exec.FastExecs.__init__

    def keep_native(self, native, *args, **kwargs):
        natives.append(native)
        learn(self, native, *args, **kwargs)
    monkeypatch.setattr(fastpath_exec.FastExecs, "__init__", keep_native)
    done = threading.Event()

    def busy_filesystem():  # as fs handlers: the gate shared for about a millisecond at a time
        while not natives and not done.is_set():
            time.sleep(0.001)
        while not done.is_set():
            natives[0].gate_enter_shared()
            time.sleep(0.001)
            natives[0].gate_leave_shared()
            time.sleep(0.0002)
    holder = threading.Thread(target=busy_filesystem)
    holder.start()
    try:
        run = sandboxed("for i in $(seq 100); do /bin/true; done", cgroup_dir)
    finally:
        done.set()
        holder.join()
    assert run.status == 0, run.stderr
    assert run.stats["fast_exec_busy"] > 0
    assert (run.stats["fast_exec_hits"], run.stats["fast_exec_changed"]) == (99, 0)
    assert len(exec_records(run, "true")) == 100


def test_gate_is_shared_by_filesystem_operations_and_exclusive_for_an_exec():
    """ExecGate as freeze.Gate: an exec waits for filesystem operations (FreezeError after its
    timeout), and a filesystem operation waits for the exec; ExecLock lets one exec in at a time."""
    read_end, write_end = os.pipe()
    native = _fastpath.FastPath(listener=read_end, stop_fd=write_end, nr_open=-1, nr_openat=-1, arch=0,
                                valid_flags=0, fsuid=0, fsgid=0, groups=[], caps=0, record=False, watched=[])
    try:
        gate = fastpath_exec.ExecGate(native, timeout=0.05)
        gate.enter_shared()
        started = time.monotonic()
        with pytest.raises(FreezeError, match="filesystem operations still running"):
            with gate.exclusive():
                pass
        assert time.monotonic() - started >= 0.05
        gate.leave_shared()
        entered = threading.Event()
        with gate.exclusive():
            reader = threading.Thread(target=lambda: (gate.enter_shared(), entered.set(), gate.leave_shared()))
            reader.start()
            assert not entered.wait(0.05)  # held off while the exec is decided
        assert entered.wait(5)
        reader.join()
        locked = threading.Event()
        with fastpath_exec.ExecLock(native):  # one exec decision at a time
            other = threading.Thread(target=lambda: (native.exec_lock(), locked.set(), native.exec_unlock()))
            other.start()
            assert not locked.wait(0.05)
        assert locked.wait(5)
        other.join()
    finally:
        native.close()
        os.close(read_end)
        os.close(write_end)


@pytest.fixture
def exec_table():
    """A compiled receiver's exec table, never started: what FastExecs.learn teaches it."""
    read_end, write_end = os.pipe()
    native = _fastpath.FastPath(listener=read_end, stop_fd=write_end, nr_open=-1, nr_openat=-1, arch=0,
                                valid_flags=0, fsuid=0, fsgid=0, groups=[], caps=0, record=False, watched=[],
                                nr_execve=59, execs=fastpath_exec.MAX_EXECS)
    yield native
    native.close()
    os.close(read_end)
    os.close(write_end)


def learn(execs: fastpath_exec.FastExecs, argv: list[bytes]) -> bool:
    """Teach a permitted exec of /usr/bin/true with ``argv``, as the supervisor does after deciding it."""
    verified = VerifiedExec(os.getpid(), "/usr/bin/true", "/", argv, b"/usr/bin/true")
    verified.identity = (None, ("true", None), os.stat("/usr/bin/true"))
    decoded = [os.fsdecode(arg) for arg in argv]
    args = {"path": "/usr/bin/true", "requested": "/usr/bin/true", "argv": decoded, "program": "true", "cwd": "/",
            "cmd": command_line("true", decoded), "pid": 1, "session": "s1"}
    return execs.learn(args, verified, Decision(Effect.PERMIT, reason_code="RULE_PERMIT", reason="ok"))


def test_execs_the_compiled_receiver_cannot_answer_are_not_learned(exec_table):
    """An argv past exec.c's limits (64 KiB, 256 arguments) leaves nothing in Python either."""
    execs = fastpath_exec.FastExecs(exec_table, frozenset(), time.time_ns() + 10**18)
    assert not learn(execs, [b"/usr/bin/true", b"A" * (1 << 20)])
    assert not learn(execs, [b"/usr/bin/true", b"A" * fastpath_exec.ARGV_BYTES])
    assert not learn(execs, [b"/usr/bin/true"] + [b"a"] * fastpath_exec.ARGV_LIMIT)
    assert learn(execs, [b"/usr/bin/true"] + [b"a"] * (fastpath_exec.ARGV_LIMIT - 1))
    assert len(execs._entries._values) == 1


def test_learned_execs_keep_at_most_their_byte_budget(exec_table):
    """100 distinct 60 KB argvs: learning stops at the budget, and the entries hold no more than it;
    each is keyed by a digest, not by its argv."""
    execs = fastpath_exec.FastExecs(exec_table, frozenset(), time.time_ns() + 10**18, max_bytes=1 << 20)
    learned = [learn(execs, [b"/usr/bin/true", b"%05d" % n + b"A" * 60_000]) for n in range(100)]
    assert learned[0] and not learned[-1]
    kept = sum(len(verified.cmdline) + sys.getsizeof(template["cmd"]) + sum(map(sys.getsizeof, template["argv"]))
               for template, _decision, verified in execs._entries._values)
    assert kept <= 1 << 20
    assert all(len(key) == 32 for key in execs._entries._numbers)


def test_python_knows_the_limits_of_exec_c():
    """fastpath_exec's copies of exec.c's limits are the header's."""
    header = (Path(__file__).resolve().parents[2] / "sandbox/fastpath_c/fastpath.h").read_text()
    defined = dict(re.findall(r"^#define (\w+) (\d+)", header, re.MULTILINE))
    assert {name: int(defined[name]) for name in ("PATH_LIMIT", "ARGV_LIMIT", "ARGV_BYTES")} == {
        "PATH_LIMIT": fastpath_exec.PATH_LIMIT, "ARGV_LIMIT": fastpath_exec.ARGV_LIMIT,
        "ARGV_BYTES": fastpath_exec.ARGV_BYTES}


def test_large_environment_is_checked_through_proc(cgroup_dir):
    """The exec stop's check reads argv and AT_EXECFN from the new image's stack; an environment too
    large for one read of it (600 variables) is checked through /proc/PID/cmdline and auxv instead:
    the same records, nothing killed."""
    exports = "; ".join(f"export FASTPATH_ENV_{i}=x" for i in range(600))
    run = sandboxed(f"{exports}; for i in $(seq 20); do /bin/true; done", cgroup_dir)
    assert run.status == 0, run.stderr
    assert (run.stats["fast_exec_hits"], run.stats["fast_exec_changed"]) == (19, 0)
    assert run.stats["fast_exec_proc_checks"] == 19
    records = exec_records(run, "true")
    assert len(records) == 20 and all(same_record(r) == same_record(records[0]) for r in records[1:])
