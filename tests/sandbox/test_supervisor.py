"""The supervisor against real programs: decisions, audit, defer, fail-closed paths."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time

from policy.decision import Decision, Effect, deny
from sandbox import seccomp
from sandbox.decode import decode
from sandbox.supervisor import Supervisor
from tests.sandbox.conftest import run_sandboxed, spawn_filtered

FS_AND_EXEC = ("execve", "execveat", "open", "openat", "openat2", "creat")


def policy(denied_paths=(), deferred_paths=(), denied_programs=()):
    """A decide() that denies or defers by path and program name, permitting the rest."""
    def decide(call):
        path = call.args.get("path")
        if call.tool == "shell/exec" and call.args["program"] in denied_programs:
            return deny("exec-denied", f"{call.args['program']} is not allowed", rule_id="no-exec")
        if path in denied_paths:
            return deny("path-denied", f"{path} is protected", rule_id="protect")
        if path in deferred_paths:
            return Decision(Effect.DEFER, rule_id="ask", reason_code="needs-approval", reason="ask a human")
        return Decision(Effect.PERMIT, rule_id="allow-rest")
    return decide


def records(run, tool=None, path=None):
    return [r for r in run.audit if (tool is None or r["tool"] == tool) and (path is None or r["args"].get("path") == path)]


def test_permitted_program_runs_like_native(cgroup_dir):
    """cat under a permissive policy prints what it prints natively, and each call is audited."""
    native = subprocess.run(["/bin/cat", "/etc/hostname"], capture_output=True).stdout
    run = run_sandboxed(["/bin/cat", "/etc/hostname"], policy(), cgroup=cgroup_dir)
    assert (run.status, run.stdout) == (0, native), run.explain()
    exec_record = records(run, "shell/exec")[0]
    assert exec_record["args"]["path"] == os.path.realpath("/bin/cat")
    assert exec_record["args"]["argv"] == ["/bin/cat", "/etc/hostname"]
    assert exec_record["args"]["cmd"] == "/bin/cat /etc/hostname"  # argv[0] names the program: kept
    assert (exec_record["effect"], exec_record["rule_id"], exec_record["session"]) == ("PERMIT", "allow-rest", "test")
    read = records(run, "fs/read", "/etc/hostname")[0]
    assert (read["syscall"], read["effect"]) == ("openat", "PERMIT")
    assert run.stats["sync_wakeup"] == 1  # Linux 6.6+: the task is woken on our CPU
    assert set(read) == {"time", "session", "pid", "syscall", "tool", "args", "effect", "rule_id", "reason_code",
                         "reason", "policy_version", "latency_us"}


def test_denied_read_fails_with_eacces(cgroup_dir, cbin):
    """A denied fs/read fails with EACCES, the program keeps running, and the audit names the rule."""
    run = run_sandboxed([cbin("open_read"), "/etc/hostname"], policy(denied_paths={"/etc/hostname"}),
                        cgroup=cgroup_dir)
    assert (run.status, run.stdout) == (1, f"errno={errno.EACCES}\n".encode()), run.explain()
    denied = records(run, "fs/read", "/etc/hostname")[0]
    assert (denied["effect"], denied["rule_id"], denied["reason_code"]) == ("DENY", "protect", "path-denied")


def test_legacy_open_is_trapped_too(cgroup_dir, cbin):
    """The raw open(2) syscall is decided like openat (no bypass through the old call)."""
    run = run_sandboxed([cbin("open_read"), "/etc/hostname", "legacy"], policy(denied_paths={"/etc/hostname"}),
                        cgroup=cgroup_dir)
    assert run.stdout == f"errno={errno.EACCES}\n".encode(), run.explain()
    assert records(run, "fs/read", "/etc/hostname")[0]["syscall"] == "open"


def test_injected_fd_honours_cloexec(cgroup_dir, cbin):
    """An fd injected for open(O_CLOEXEC) has FD_CLOEXEC; one without it does not."""
    with_flag = run_sandboxed([cbin("open_read"), "/etc/hostname", "cloexec"], cgroup=cgroup_dir)
    without = run_sandboxed([cbin("open_read"), "/etc/hostname"], cgroup=cgroup_dir)
    hostname = open("/etc/hostname").read().strip()
    assert with_flag.stdout == f"cloexec=1 content={hostname}\n".encode(), with_flag.explain()
    assert without.stdout == f"cloexec=0 content={hostname}\n".encode(), without.explain()


def test_denied_exec_fails_with_eperm(cgroup_dir):
    """A denied shell/exec fails with EPERM; bash reports it and exits 126."""
    run = run_sandboxed(["/bin/bash", "-c", "/bin/true; echo after=$?"], policy(denied_programs={"true"}),
                        cgroup=cgroup_dir)
    assert run.stdout == b"after=126\n", run.explain()
    assert b"Operation not permitted" in run.stderr
    denied = [r for r in records(run, "shell/exec") if r["effect"] == "DENY"]
    assert [(r["args"]["program"], r["rule_id"]) for r in denied] == [("true", "no-exec")]


def test_decide_raising_denies(cgroup_dir, cbin):
    """An exception in decide() denies the call (fail closed) and the audit says why."""
    def broken(call):
        if call.tool == "fs/read" and call.args["path"] == "/etc/hostname":
            raise RuntimeError("policy bug")
        return Decision(Effect.PERMIT)
    run = run_sandboxed([cbin("open_read"), "/etc/hostname"], broken, cgroup=cgroup_dir)
    assert run.stdout == f"errno={errno.EACCES}\n".encode(), run.explain()
    record = records(run, "fs/read", "/etc/hostname")[0]
    assert (record["effect"], record["reason_code"]) == ("DENY", "DECIDE_ERROR")
    assert record["reason"] == "policy evaluation failed: RuntimeError: policy bug"


def test_defer_approved_and_refused(cgroup_dir, cbin):
    """A deferred call proceeds when approve() says yes and fails with EACCES when it says no."""
    hostname = open("/etc/hostname").read().strip()
    asked = []

    def approve(call, decision, timeout):
        asked.append((call.args["path"], decision.reason_code, timeout))
        return True
    run = run_sandboxed([cbin("open_read"), "/etc/hostname"], policy(deferred_paths={"/etc/hostname"}),
                        cgroup=cgroup_dir, approve=approve, approve_timeout=7.0)
    assert run.stdout == f"cloexec=0 content={hostname}\n".encode(), run.explain()
    assert asked == [("/etc/hostname", "needs-approval", 7.0)]
    assert records(run, "fs/read", "/etc/hostname")[0]["reason_code"] == "APPROVAL_GRANTED"
    refused = run_sandboxed([cbin("open_read"), "/etc/hostname"], policy(deferred_paths={"/etc/hostname"}),
                            cgroup=cgroup_dir, approve=lambda *a: False)
    assert refused.stdout == f"errno={errno.EACCES}\n".encode(), refused.explain()
    assert records(refused, "fs/read", "/etc/hostname")[0]["reason_code"] == "APPROVAL_DENIED"


def test_unanswered_defer_times_out_as_deny(cgroup_dir, cbin):
    """Without an approver a defer is denied after approve_timeout, and the audit says so."""
    run = run_sandboxed([cbin("open_read"), "/etc/hostname"], policy(deferred_paths={"/etc/hostname"}),
                        cgroup=cgroup_dir, approve_timeout=0.3)
    assert run.stdout == f"errno={errno.EACCES}\n".encode(), run.explain()
    record = records(run, "fs/read", "/etc/hostname")[0]
    assert (record["effect"], record["reason_code"]) == ("DENY", "APPROVAL_TIMEOUT")
    assert record["latency_us"] >= 300_000


def test_slow_decision_does_not_block_other_calls(cgroup_dir, cbin, tmp_path):
    """While one open waits for approval, another process's open is decided and finishes."""
    (tmp_path / "slow").write_text("slow\n")
    (tmp_path / "fast").write_text("fast\n")
    fast_done = threading.Event()

    def audit_watch(call):
        return Decision(Effect.DEFER, reason_code="ask") if call.args.get("path") == str(tmp_path / "slow") \
            else Decision(Effect.PERMIT)

    def approve(call, decision, timeout):
        return fast_done.wait(10)  # only approves once the fast open has completed

    reader = cbin("open_read")
    script = f"{reader} {tmp_path}/slow & {reader} {tmp_path}/fast; touch {tmp_path}/fast-finished; wait"

    def watcher():
        while not (tmp_path / "fast-finished").exists():
            threading.Event().wait(0.01)
        fast_done.set()
    threading.Thread(target=watcher, daemon=True).start()
    run = run_sandboxed(["/bin/sh", "-c", script], audit_watch, cgroup=cgroup_dir, approve=approve)
    assert sorted(run.stdout.decode().splitlines()) == ["cloexec=0 content=fast", "cloexec=0 content=slow"], (run.stderr, [(r["syscall"], r["args"].get("path"), r["effect"], r["reason"]) for r in run.audit])
    assert records(run, "fs/read", str(tmp_path / "slow"))[0]["reason_code"] == "APPROVAL_GRANTED"


def test_filesystem_changes_are_performed_for_the_agent(cgroup_dir, tmp_path):
    """mkdir, create, rename, symlink, chmod and unlink go through the policy and take effect."""
    script = ("mkdir d && echo hi > d/f && mv d/f d/g && ln -s g d/l && chmod 600 d/g && rm d/l && "
              "cat d/g")
    run = run_sandboxed(["/bin/sh", "-c", f"cd {tmp_path} && {script}"], policy(), cgroup=cgroup_dir)
    assert (run.status, run.stdout) == (0, b"hi\n"), run.explain()
    assert sorted(os.listdir(tmp_path / "d")) == ["g"]
    assert oct((tmp_path / "d" / "g").stat().st_mode & 0o777) == "0o600"
    tools = {r["tool"] for r in run.audit}
    assert {"fs/mkdir", "fs/write", "fs/rename", "fs/link", "fs/delete", "fs/read", "shell/exec"} <= tools


def test_supervisor_death_fails_closed(cbin):
    """With the listener gone every trapped call fails with ENOSYS: the agent never gets the file."""
    run = run_sandboxed([cbin("open_read"), "/etc/hostname", "legacy"], trapped=("open",), supervise=False)
    assert (run.status, run.stdout) == (1, f"errno={errno.ENOSYS}\n".encode()), run.explain()


def test_exec_without_freezer_is_denied(cbin):
    """With no cgroup to freeze, exec permits fail closed with EPERM and say why."""
    run = run_sandboxed([cbin("open_read"), "/etc/hostname"], policy(), trapped=FS_AND_EXEC)
    assert run.status == 127, run.explain()
    assert b"PermissionError" in run.stderr
    record = records(run, "shell/exec")[0]
    assert (record["effect"], record["reason_code"]) == ("DENY", "EXEC_FREEZE_UNAVAILABLE")


def test_deferred_exec_runs_once_approved(cgroup_dir):
    """A deferred exec waits (agent thawed), is re-read frozen after approval and runs."""
    def decide(call):
        if call.tool == "shell/exec" and call.args["program"] == "true":
            return Decision(Effect.DEFER, rule_id="ask-exec", reason_code="needs-approval", reason="ask")
        return Decision(Effect.PERMIT)
    asked = []
    run = run_sandboxed(["/bin/bash", "-c", "/bin/true approve-me; echo after=$?"], decide, cgroup=cgroup_dir,
                        approve=lambda call, decision, timeout: asked.append(call.args["cmd"]) is None)
    assert run.stdout == b"after=0\n", run.explain()
    assert asked == ["/bin/true approve-me"]
    record = [r for r in records(run, "shell/exec") if r["args"]["program"] == "true"][0]
    assert (record["effect"], record["reason_code"], record["rule_id"]) == ("PERMIT", "APPROVAL_GRANTED", "ask-exec")


def test_stalled_handler_does_not_stall_the_supervisor(cgroup_dir, cbin, tmp_path):
    """While decide() is stuck on one open, the watchdog lets another thread serve the rest."""
    (tmp_path / "stuck").write_text("stuck\n")
    (tmp_path / "fast").write_text("fast\n")
    release = threading.Event()

    def decide(call):
        if call.args.get("path") == str(tmp_path / "stuck"):
            release.wait(10)  # held until the fast open has been served
        return Decision(Effect.PERMIT)

    reader = cbin("open_read")
    script = f"{reader} {tmp_path}/stuck & sleep 0.1; {reader} {tmp_path}/fast; touch {tmp_path}/fast-done; wait"

    def watcher():
        while not (tmp_path / "fast-done").exists():
            threading.Event().wait(0.01)
        release.set()
    threading.Thread(target=watcher, daemon=True).start()
    run = run_sandboxed(["/bin/sh", "-c", script], decide, cgroup=cgroup_dir, timeout=30)
    assert run.stdout.decode().splitlines() == ["cloexec=0 content=fast", "cloexec=0 content=stuck"], run.explain()
    assert release.is_set()
    assert run.stats["threads"] >= 2


def test_a_receiver_that_cannot_start_leaves_the_current_one_receiving(cgroup_dir, cbin, tmp_path, monkeypatch):
    """No thread left when a stalled handler should be relieved: the stalled thread stays the
    receiver, and once its decision ends it serves the rest (the run ends, nothing hangs)."""
    (tmp_path / "stuck").write_text("stuck\n")
    (tmp_path / "fast").write_text("fast\n")

    def decide(call):
        if call.args.get("path") == str(tmp_path / "stuck"):
            time.sleep(1)  # far longer than the watchdog's STALL: it tries to start a new receiver
        return Decision(Effect.PERMIT)

    refused = []
    real_start = threading.Thread.start

    def start(thread):
        if thread.name.startswith("supervisor-") and thread.name[len("supervisor-"):].isdigit() \
                and thread.name != "supervisor-1":
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        return real_start(thread)
    monkeypatch.setattr(threading.Thread, "start", start)
    reader = cbin("open_read")
    script = f"{reader} {tmp_path}/stuck & sleep 0.1; {reader} {tmp_path}/fast; wait"
    run = run_sandboxed(["/bin/sh", "-c", script], decide, cgroup=cgroup_dir, timeout=30)
    assert sorted(run.stdout.decode().splitlines()) == ["cloexec=0 content=fast", "cloexec=0 content=stuck"], \
        run.explain()
    assert refused and run.stats["threads"] == 1


def test_a_write_into_agent_memory_waits_for_a_frozen_exec_decision(monkeypatch):
    """sendmmsg's msg_len is written into the agent only while no exec decision holds the gate
    (the write could change a path the decision read), and not at all once the task is gone."""
    from sandbox import freeze

    sup = Supervisor.__new__(Supervisor)
    sup._gate = freeze.Gate()
    waiting = [True]
    monkeypatch.setattr(sup, "_still_waiting", lambda notification: waiting[0])
    events = []
    decision_held = threading.Event()

    def exec_decision():
        with sup._gate.exclusive():
            decision_held.set()
            time.sleep(0.3)
            events.append("decision over")
    deciding = threading.Thread(target=exec_decision)
    deciding.start()
    decision_held.wait(5)
    assert sup._write_back(None, lambda: events.append("written")) is True
    deciding.join()
    assert events == ["decision over", "written"]
    waiting[0] = False
    assert sup._write_back(None, lambda: events.append("written again")) is False
    assert events == ["decision over", "written"]


def test_vfork_spawn_from_python_is_decided(cgroup_dir):
    """Python's subprocess (vfork + exec) runs an allowed command and is refused a denied one."""
    code = ("import subprocess\n"
            "print(subprocess.run(['/bin/echo', 'spawned'], capture_output=True).stdout.decode().strip())\n"
            "try:\n    subprocess.run(['/bin/true'])\nexcept PermissionError as err:\n    print('refused', err.errno)\n")
    run = run_sandboxed(["/usr/bin/python3", "-c", code], policy(denied_programs={"true"}), cgroup=cgroup_dir)
    assert run.stdout == b"spawned\nrefused 1\n", run.explain()


def test_syscall_missing_from_the_table_fails_closed(cbin):
    """A trapped syscall the table cannot decode is refused with ENOSYS and audited."""
    run = run_sandboxed([cbin("probe_denied")], trapped=("getpid",))
    assert f"getpid {errno.ENOSYS}".encode() in run.stdout.splitlines(), run.explain()
    # the probe calls getpid() three times (twice as an argument of the process_vm_* probes)
    assert [(r["syscall"], r["effect"], r["reason_code"]) for r in run.audit] == [("39", "DENY", "UNKNOWN_SYSCALL")] * 3


def test_unrecordable_permit_is_denied_and_nothing_is_done(cgroup_dir, tmp_path):
    """When the audit record cannot be written, a permitted create fails with EACCES and leaves no file."""
    target = tmp_path / "created"
    written = []

    def failing_audit(record):
        if record["tool"] == "fs/write":
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(record)

    run = run_sandboxed(["/bin/sh", "-c", f"echo x > {target}"], policy(), cgroup=cgroup_dir,
                        audit_sink=failing_audit)
    assert run.status != 0, run.explain()
    assert b"Permission denied" in run.stderr
    assert not target.exists()
    assert run.stats["audit_errors"] >= 1


def test_a_handler_that_fails_after_its_replacement_ends_serving_at_once(tmp_path):
    """A handler stalls (another thread takes over receiving), then fails outside any decision: the
    new receiver is woken and serve() raises at once, not when the agent next needs Python."""
    trigger = tmp_path / "trigger"
    trigger.write_text("x")
    code = ("import threading, time\n"
            f"threading.Thread(target=lambda: open({str(trigger)!r}), daemon=True).start()\n"
            "time.sleep(4)\n")
    program = seccomp.build_filter(["open", "openat"], {}, watch_credentials=True)
    with open(os.devnull, "wb") as sink:
        pid, listener = spawn_filtered([sys.executable, "-S", "-c", code], program, None, sink.fileno(),
                                       sink.fileno(), None)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    sup = Supervisor(listener, lambda call: Decision(Effect.PERMIT, rule_id="r"), session_id="t",
                     audit=lambda record: None, decision_keys=lambda tool: frozenset({"path"}),
                     fast_repeats=True, credentials_watched=True)
    handle, failed_at, ended = sup._handle, [], {}

    def failing_handle(notification):
        if not failed_at and getattr(notification, "nr", None) is not None and \
                decode(notification).get("path") == str(trigger).encode():
            time.sleep(0.2)  # the stall watchdog makes another thread the receiver meanwhile
            failed_at.append(time.monotonic())
            raise RuntimeError("handler bug")
        return handle(notification)
    sup._handle = failing_handle

    def serve():
        try:
            sup.serve()
        except RuntimeError as err:
            ended["error"] = str(err)
        ended["at"] = time.monotonic()
    serving = threading.Thread(target=serve)
    serving.start()
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    serving.join(10)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sup.stop()
    os.close(listener)
    assert ended.get("error") == "handler bug"
    assert ended["at"] - failed_at[0] < 1.0  # 3.8 s (the agent's sleep) when the receiver was not woken


def test_cmd_names_the_program_that_runs_whatever_argv0_says(cgroup_dir):
    """`exec -a innocent echo`: argv[0] is the caller's choice, so cmd starts with the program
    (a rule on `args.cmd matches "^echo"` still sees echo); argv keeps what was given."""
    rules = policy_engine('agent a {\n  deny! shell/exec when args.cmd matches "^echo( |$)"\n  permit shell/exec\n'
                          '  permit fs/*\n}\n')
    for argv0 in ("innocent", "x y/echo"):
        run = run_sandboxed(["/bin/bash", "-c", f"exec -a '{argv0}' echo hi; echo ran"], rules, cgroup=cgroup_dir)
        assert run.stdout == b"", run.explain()
        denied = [r for r in records(run, "shell/exec") if r["effect"] == "DENY"]
        assert denied and denied[0]["args"]["argv"] == [argv0, "hi"], run.explain()
        assert denied[0]["args"]["cmd"] == f"{denied[0]['args']['program']} hi"


def policy_engine(text: str):
    import policy as fpl

    return fpl.Engine([fpl.load_policy(text, "p.fpl")]).decide
