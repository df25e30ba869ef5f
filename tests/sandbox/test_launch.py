"""launch() on the real kernel with the seccomp filter: exit statuses, cgroup, listener hand-over, errors."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time

import pytest

import policy

from policy.decision import Decision, Effect
from sandbox import cgroups, supervisor, traced
from sandbox import launch as launch_module
from sandbox.errors import SandboxError
from sandbox.limits import Limits
from sandbox.launch import STAGES, _thread_count, launch
from sandbox.spec import SandboxSpec

pytestmark = pytest.mark.kernel
TRAPPED = frozenset(row.name for row in traced.TABLE)


def permit_all(call):
    return Decision(Effect.PERMIT, rule_id="test-permit")


def deny_exec_of(program: str):
    def decide(call):
        if call.tool == "shell/exec" and call.args.get("program") == program:
            return Decision(Effect.DENY, rule_id="test-deny", reason_code="RULE_DENY")
        return Decision(Effect.PERMIT, rule_id="test-permit")
    return decide


def run(argv: list[str], decide=permit_all, audit=None, **fields) -> int:
    return launch(SandboxSpec(argv=argv, trapped=TRAPPED, **fields), decide, audit=audit)


@pytest.mark.parametrize(("argv", "status"), [
    (["/bin/true"], 0),
    (["sh", "-c", "exit 3"], 3),
    (["/etc/os-release"], 126),  # exists, not executable
    (["no-such-program-xyz"], 127),
    (["sh", "-c", "kill -KILL $$"], 128 + 9),
    (["sh", "-c", "kill -TERM $$"], 128 + 15),
])
def test_exit_status_follows_the_shell_convention(argv, status, capfd):
    """The agent's status passes through; signals give 128+N; cannot run 126; not found 127."""
    assert run(argv) == status


def test_not_found_and_not_executable_say_why(capfd, tmp_path):
    """126 and 127 come with the shell-style reason on stderr."""
    plain, garbage = tmp_path / "plain", tmp_path / "garbage"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    garbage.write_bytes(b"\x00\x01 not an executable format")
    garbage.chmod(0o755)
    assert run(["no-such-program-xyz"]) == 127
    assert run([str(plain)]) == 126
    assert run([str(garbage)]) == 126
    assert capfd.readouterr().err == ("faramesh-sandbox: no-such-program-xyz: No such file or directory\n"
                                      f"faramesh-sandbox: {plain}: Permission denied\n"
                                      f"faramesh-sandbox: {garbage}: Exec format error\n")


def test_first_exec_is_decided_by_the_policy(capfd):
    """The agent's own execve of CMD is trapped: denying it gives 126 and one audited decision."""
    records = []
    assert run(["/bin/true"], decide=deny_exec_of("true"), audit=records.append) == 126
    assert capfd.readouterr().err == "faramesh-sandbox: /bin/true: Operation not permitted\n"
    assert [(r["syscall"], r["tool"], r["effect"], r["rule_id"]) for r in records] == [
        ("execve", "shell/exec", "DENY", "test-deny")]


def test_agent_runs_in_a_fresh_cgroup_that_is_removed(capfd):
    """Every agent task is in faramesh-<session> under our v2 cgroup; the directory is gone afterwards."""
    assert run(["cat", "/proc/self/cgroup"], session_id="t-cgroup") == 0
    out = capfd.readouterr().out
    assert "0::/faramesh-t-cgroup\n" in out
    assert not os.path.exists(os.path.join(cgroups.v2_mount(), "faramesh-t-cgroup"))


def test_an_empty_cgroup_left_under_our_pid_is_replaced(capfd):
    """With no session given the cgroup is named by our pid; an empty one a killed process with that
    pid left behind is replaced (no warning, no ptrace freezer), and removed after the run."""
    stale = os.path.join(cgroups.v2_mount(), cgroups.own_v2_path().lstrip("/"), f"faramesh-{os.getpid()}")
    os.mkdir(stale)
    try:
        assert run(["cat", "/proc/self/cgroup"]) == 0
        out, err = capfd.readouterr()
        assert f"0::/faramesh-{os.getpid()}\n" in out
        assert err == ""
        assert not os.path.exists(stale)
    finally:
        if os.path.exists(stale):
            os.rmdir(stale)


def test_a_cgroup_of_the_given_session_is_never_replaced(capfd):
    """A session's cgroup that already exists (another run of that session) is left alone: this run
    goes on without a cgroup and says so."""
    taken = os.path.join(cgroups.v2_mount(), cgroups.own_v2_path().lstrip("/"), "faramesh-t-taken")
    os.mkdir(taken)
    try:
        assert run(["/bin/true"], session_id="t-taken") == 0
        assert "no cgroup for the agent (mkdir(" in capfd.readouterr().err
        assert os.path.isdir(taken)
    finally:
        os.rmdir(taken)


def test_agent_never_holds_the_listener(capfd):
    """After exec the agent has only stdin, stdout, stderr (and ls's directory); no seccomp listener."""
    assert run(["sh", "-c", "ls -l /proc/self/fd | grep -c seccomp; ls /proc/self/fd"]) == 0
    assert capfd.readouterr().out == "0\n0\n1\n2\n3\n"


def test_filter_and_no_new_privs_are_in_force(capfd):
    """The agent runs with no_new_privs and a seccomp filter (Seccomp: 2 = filter mode)."""
    assert run(["grep", "-E", "^(NoNewPrivs|Seccomp):", "/proc/self/status"]) == 0
    assert capfd.readouterr().out == "NoNewPrivs:\t1\nSeccomp:\t2\n"


def test_setup_failure_names_the_stage_and_call(capfd):
    """A stage that fails raises SandboxError naming the stage and the kernel call, then the errno."""
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], hostname="h" * 100)
    assert caught.value.stage == "hostname"
    assert caught.value.message == f"sethostname({'h' * 100!r}): Invalid argument"


def test_missing_working_directory_fails_with_a_hint(capfd):
    """A working directory that does not exist is a set-up failure with a hint, not a traceback."""
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], cwd="/no/such/dir")
    assert (caught.value.stage, caught.value.message, caught.value.hint) == (
        "chdir", "No such file or directory: /no/such/dir", "run from a directory that exists")
    assert caught.value.render().startswith("cannot enter the working directory: No such file or directory")


def test_a_threaded_launcher_is_refused(capfd):
    """launch() refuses to clone3 from a process with other threads, whose locks init could inherit held."""
    release = threading.Event()
    helper = threading.Thread(target=release.wait)
    helper.start()
    try:
        with pytest.raises(SandboxError) as caught:
            run(["/bin/true"])
    finally:
        release.set()
        helper.join()
    assert (caught.value.stage, caught.value.message) == (
        "clone_init", "the launcher has 2 threads; the sandbox must be started from a single-threaded process")


def test_stages_run_in_a_fixed_security_order():
    """One ordered list: init is tied to the launcher first and forks the agent last; the agent sets
    no_new_privs before the filter, and the filter and the hand-over come last."""
    stages = [(name, role) for name, role, _step in STAGES]
    at = {pair: index for index, pair in enumerate(stages)}
    of = {role: [name for name, r in stages if r == role] for role in ("launcher", "init", "agent")}
    assert (of["init"][0], of["init"][-1]) == ("die_with_launcher", "fork_agent")
    assert of["agent"][-2:] == ["seccomp", "hand_over_listener"]
    assert at["no_new_privs", "agent"] < at["seccomp", "agent"]
    assert at["filter", "launcher"] < at["cgroup", "launcher"] < at["clone_init", "launcher"]
    assert at["close_fds", "init"] < at["map_user", "launcher"] < at["release_init", "launcher"]
    assert at["release_init", "launcher"] < at["await_release", "init"] < at["mounts", "init"]
    assert at["await_release", "init"] < at["new_session", "init"] < at["fork_agent", "init"]


def test_supervisor_threads_are_gone_when_launch_returns(capfd, monkeypatch):
    """Threads the supervisor's constructor starts are joined too, so the next launch() finds one thread."""
    from sandbox import supervisor

    make_freezer = supervisor._make_freezer

    def slow_make_freezer(*args):  # outlives the agent: its exec is verified, not frozen
        threading.Event().wait(0.2)
        return make_freezer(*args)

    monkeypatch.setattr(supervisor, "_make_freezer", slow_make_freezer)
    assert run(["/bin/true"]) == 0
    # a joined thread may stay in the kernel a moment after join(): counted as launch() counts
    assert (threading.active_count(), _thread_count()) == (1, 1)
    assert run(["/bin/true"]) == 0


def _context_switches_of_this_thread() -> int:
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as status:
        fields = dict(line.split(":\t") for line in status.read().splitlines() if "ctxt_switches" in line)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def _exec_decider(compiled: bool):
    """permit_all, or a policy engine whose exec decisions the compiled receiver repeats."""
    if not compiled:
        return permit_all
    rules = policy.Engine([policy.load_policy('agent a {\n  default permit\n}\n', "p.fpl")], policy.SessionStore())

    def decide(call):
        return rules.decide(call)
    decide.decision_keys = rules.decision_keys
    return decide


@pytest.mark.parametrize("compiled", [False, True], ids=["python-execs", "compiled-execs"])
def test_the_launcher_sleeps_through_the_agents_exec_stops(compiled):
    """Every exec decision stops the agent under ptrace, and each stop sends the tracer's process
    SIGCHLD; the launcher waits for signals with sigtimedwait (init's end told by a thread on its
    pidfd), so 200 execs do not wake it 200 times, even where the compiled receiver takes each
    SIGCHLD (a signalfd would be woken by every one of them)."""
    before = _context_switches_of_this_thread()
    assert run(["bash", "-c", "for i in $(seq 200); do /bin/true; done"], _exec_decider(compiled),
               fast_repeats=compiled) == 0
    assert _context_switches_of_this_thread() - before < 100  # about 10 here; 400 when each SIGCHLD woke it


def test_init_exit_signal_is_not_left_pending():
    """init's exit signal (a real-time signal, whose default action ends a process) is consumed:
    nothing of it is left blocked and pending once launch() returns."""
    assert run(["sh", "-c", "exit 4"]) == 4
    assert launch_module.INIT_EXIT_SIGNAL not in signal.sigpending()
    assert launch_module.INIT_EXIT_SIGNAL not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_receiver_that_fails_ends_the_sandbox(monkeypatch):
    """If receiving notifications itself fails (not one call's handling), nothing would answer the
    agent any more: launch() kills the sandbox and says why instead of leaving the agent waiting."""
    received = []
    receive = supervisor.Supervisor._receive

    def failing_receive(self, poller):
        if received:
            raise OSError(errno.EIO, "the listener broke")
        received.append(True)
        return receive(self, poller)
    monkeypatch.setattr(supervisor.Supervisor, "_receive", failing_receive)
    started = time.monotonic()
    with pytest.raises(SandboxError, match="the listener broke"):
        run(["sh", "-c", "cat /etc/hostname; cat /etc/hostname; sleep 30"], limits=Limits(timeout=20))
    assert time.monotonic() - started < 10  # not the agent's sleep, nor the timeout


def test_without_a_thread_for_inits_end_the_periodic_look_still_sees_it(monkeypatch):
    """Out of descriptors for init's pidfd: launch() still returns the agent's status."""
    pidfd_open = os.pidfd_open

    def no_pidfd_for_the_watch(pid, flags=0):
        if isinstance(sys._getframe(1).f_locals.get("self"), launch_module._InitWatch):
            raise OSError(errno.EMFILE, "Too many open files")
        return pidfd_open(pid, flags)
    monkeypatch.setattr(launch_module.os, "pidfd_open", no_pidfd_for_the_watch)
    assert run(["sh", "-c", "exit 5"]) == 5
    assert threading.active_count() == 1
