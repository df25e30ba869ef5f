"""Each agent stage of sandbox.launch.STAGES happens, in order, whether the agent is set up by the
compiled start-up (sandbox._spawn) or by the Python stages in a forked copy of init."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from policy.decision import Decision, Effect
from sandbox import _libc_landlock as ll
from sandbox import agent_spawn, init_spawn, landlock, traced
from sandbox.errors import SandboxError
from sandbox.launch import AGENT_STAGES, launch
from sandbox.limits import Limits
from sandbox.spec import SandboxSpec

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
TRAPPED = frozenset(row.name for row in traced.TABLE)
TOO_MANY_FILES = 2_000_000  # above fs.nr_open (1048576): even root may not set it


def permit_all(call):
    return Decision(Effect.PERMIT, rule_id="test-permit")


@pytest.fixture(params=["compiled", "python"])
def set_up_by(request, monkeypatch):
    """Runs the test with the compiled start-up, then with the Python stages."""
    if request.param == "python":
        monkeypatch.setattr(agent_spawn, "_spawn", None)
    else:
        assert agent_spawn.available(), "sandbox._spawn is not built: python3 setup.py build_ext --inplace"
    return request.param


def run(argv: list[str], **fields) -> int:
    fields.setdefault("trapped", TRAPPED)
    return launch(SandboxSpec(argv=argv, **fields), permit_all)


def test_compiled_stages_are_the_agent_rows_of_stages():
    """sandbox._spawn names its stages, from its C enum, exactly as the agent rows of STAGES."""
    assert AGENT_STAGES == ("restore_signals", "chdir", "close_fds", "rlimits", "drop_capabilities", "no_new_privs",
                            "landlock", "seccomp", "hand_over_listener")
    assert agent_spawn._spawn.STAGES == AGENT_STAGES
    assert agent_spawn.unavailable_reason() is None


def test_a_different_stage_list_runs_the_python_stages(monkeypatch):
    """When the built extension's stages differ from launch's, the Python stages set the agent up."""
    monkeypatch.setattr(agent_spawn._spawn, "STAGES", AGENT_STAGES[::-1])
    assert agent_spawn.available() is False
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], limits=Limits(files=TOO_MANY_FILES))
    assert (caught.value.stage, caught.value.message) == ("rlimits", "ValueError: not allowed to raise maximum limit")


def test_an_unknown_failed_stage_index_fails_closed(monkeypatch):
    """A failure index beyond the stages init knows is reported as fork_agent, not as some other stage."""
    import sandbox.launch
    monkeypatch.setattr(sandbox.launch, "AGENT_STAGES", AGENT_STAGES[:3])  # C fails at rlimits, index 3
    monkeypatch.setattr(agent_spawn, "available", lambda: True)
    monkeypatch.setattr(init_spawn, "available", lambda: False)  # the Python init reads the index
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], limits=Limits(files=TOO_MANY_FILES))
    assert (caught.value.stage, caught.value.message) == ("fork_agent", "the compiled start-up reported stage 3 of 3")


def _calls_from(disassembly: str, entry: str) -> set[str]:
    """Every call or jump target reachable from ``entry`` in objdump output, as objdump names it."""
    bodies, name = {}, None
    for line in disassembly.splitlines():
        if line.endswith(">:") and " <" in line:
            name = line.split(" <", 1)[1][:-2]
            bodies[name] = []
        elif name and ("call" in line or "\tj" in line) and "<" in line:
            target = line.rsplit("<", 1)[1].rstrip(">")
            bodies[name].append(target.split("+", 1)[0])
    seen, todo = set(), [entry]
    while todo:
        for target in bodies.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_vfork_child_calls_no_libc_function():
    """The child's code reaches no PLT entry (the dynamic linker must never run in it) and the .so binds now."""
    library = agent_spawn._spawn.__file__
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", library], capture_output=True,
                                 text=True, check=True).stdout
    headers = subprocess.run(["readelf", "-d", library], capture_output=True, text=True, check=True).stdout
    reached = _calls_from(disassembly, "spawn_agent_main")
    assert [target for target in reached if "@plt" in target] == []
    assert "leave" in reached  # the walk follows calls: the child exits through its own raw exit
    init_child = _calls_from(disassembly, "init_start_main")  # init's clone child, until its execve
    assert [target for target in init_child if "@plt" in target] == []
    assert "<init_start_main>:" in disassembly  # the walk started from the function itself
    assert "(FLAGS)              BIND_NOW" in headers


def _parent_during_clone() -> tuple[str, str, str]:
    """Starts /bin/true with sandbox._spawn while a helper process, holding the child at its
    listener hand-over, reads this (suspended) process's SigBlk and maps; returns those and the
    maps once spawn_agent has returned."""
    ours, childs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    readable, writable = os.pipe()
    parent = os.getpid()
    helper = os.fork()
    if helper == 0:
        try:
            childs.close()  # so a spawn that fails before the hand-over ends our recv, not hangs it
            ours.recv(64)  # "listener N": the child is waiting for our answer; its parent is in clone
            status = Path(f"/proc/{parent}/status").read_text()
            blocked = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
            seen = (blocked + "\n" + Path(f"/proc/{parent}/maps").read_text()).encode()
            ours.send(b"taken")  # before writing: more than a pipe's worth of maps would wait for a reader
            with os.fdopen(writable, "wb") as out:
                out.write(seen)
        finally:
            os._exit(0)
    os.close(writable)
    allow = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K SECCOMP_RET_ALLOW
    try:
        pid, failed, _err, exec_errno = agent_spawn._spawn.spawn_agent(
            sock=childs.fileno(), cwd=None, rlimits=[], ruleset=-1, program=allow,
            seccomp_flags=agent_spawn.SECCOMP_FLAGS, default_signals=[], drop_capabilities=[], path=b"/bin/true",
            argv=[b"true"],
            envp=[], exit_status=None)
        after = Path("/proc/self/maps").read_text()
        with os.fdopen(readable, "rb") as pipe:
            blocked, during = pipe.read().decode().split("\n", 1)
    finally:
        childs.close()
        os.waitpid(helper, 0)
        ours.close()
    assert (failed, exec_errno, os.waitpid(pid, 0)[1]) == (-1, 0, 0)
    return blocked, during, after


def test_every_signal_is_blocked_in_init_while_the_agent_is_set_up():
    """While the vfork child runs, its parent blocks every signal, libc's own 32 and 33 too, then unblocks."""
    blocked, _during, _after = _parent_during_clone()
    assert blocked == "SigBlk:\tfffffffffffbfeff"  # all but SIGKILL and SIGSTOP, which cannot be blocked
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()


def test_the_childs_stack_has_a_guard_page():
    """The child's stack mapping has one PROT_NONE page below its 64 KiB, and both are gone afterwards."""
    _blocked, during, after = _parent_during_clone()
    new = [line.split()[:2] for line in during.splitlines() if line not in after.splitlines()]
    spans = {tuple(int(end, 16) for end in span.split("-")): perms for span, perms in new}
    guards = [(low, high) for (low, high), perms in spans.items() if perms == "---p" and high - low == 4096]
    assert len(guards) == 1
    above = [(high - low, perms) for (low, high), perms in spans.items() if low == guards[0][1]]
    assert above == [(64 * 1024, "rw-p")]


def test_agent_has_no_new_privs_and_the_filter(set_up_by, capfd):
    """The agent runs with no_new_privs and under a seccomp filter (mode 2)."""
    assert run(["grep", "-E", "^(NoNewPrivs|Seccomp):", "/proc/self/status"]) == 0
    assert capfd.readouterr().out == "NoNewPrivs:\t1\nSeccomp:\t2\n"


def test_namespaces_only_still_sets_no_new_privs(set_up_by, capfd):
    """Without a filter the agent reports "ready" instead of a listener, and still has no_new_privs."""
    assert run(["grep", "-E", "^(NoNewPrivs|Seccomp):", "/proc/self/status"], trapped=frozenset(),
               seccomp=False) == 0
    assert capfd.readouterr().out == "NoNewPrivs:\t1\nSeccomp:\t0\n"


def test_agent_holds_only_stdin_stdout_stderr(set_up_by, capfd):
    """No launcher or init descriptor survives, the Landlock ruleset's included: ls sees 0-2 and its own 3."""
    keep_open = os.open("/dev/null", os.O_RDONLY)  # inheritable would not matter: close_fds closes it
    os.set_inheritable(keep_open, True)
    floor = landlock.Plan(ll.abi_version(), fs_handled=ll.FS_EXECUTE, paths={"/usr": ll.FS_EXECUTE})
    try:
        assert run(["/usr/bin/ls", "/proc/self/fd"], landlock=floor) == 0
    finally:
        os.close(keep_open)
    assert capfd.readouterr().out == "0\n1\n2\n3\n"


def _ignored_here() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)


def test_signal_mask_and_dispositions_are_default(set_up_by, capfd):
    """A blocked signal and ignored SIGTERM/SIGPIPE in the launcher do not reach the agent; a signal
    ignored where the tests run (SIGQUIT in a background job) stays ignored, as a shell passes it on."""
    listed = sum(1 << (signum - 1) for signum in agent_spawn.DEFAULT_SIGNALS)
    passed_on = _ignored_here() & ~listed
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        assert run(["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"]) == 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGTERM, old_term)
    assert capfd.readouterr().out == f"SigBlk:\t0000000000000000\nSigIgn:\t{passed_on:016x}\n"


def test_rlimits_are_applied_soft_and_hard(set_up_by, capfd):
    """--files sets RLIMIT_NOFILE's soft and hard limit in the agent."""
    assert run(["sh", "-c", "ulimit -n; ulimit -Hn"], limits=Limits(files=77)) == 0
    assert capfd.readouterr().out == "77\n77\n"


def test_working_directory_and_relative_path_search(set_up_by, capfd, tmp_path):
    """The agent starts in cwd, and a relative PATH entry is searched there."""
    program = tmp_path / "hello"
    program.write_text("#!/bin/sh\necho hello from $(pwd)\n")
    program.chmod(0o755)
    assert run(["hello"], cwd=str(tmp_path), env={"PATH": "."}) == 0
    assert capfd.readouterr().out == f"hello from {tmp_path}\n"


def test_landlock_refuses_exec_outside_the_floor(set_up_by, capfd, tmp_path):
    """With execute allowed only beneath /usr, a copy of true elsewhere cannot run though permitted."""
    copy = tmp_path / "true"
    shutil.copy("/usr/bin/true", copy)
    floor = landlock.Plan(ll.abi_version(), fs_handled=ll.FS_EXECUTE, paths={"/usr": ll.FS_EXECUTE})
    assert run(["/usr/bin/sh", "-c", f"{copy}; echo copy=$?; /usr/bin/true; echo usr=$?"], landlock=floor) == 0
    assert capfd.readouterr().out == "copy=126\nusr=0\n"


def test_missing_and_unrunnable_commands(set_up_by, capfd):
    """127 with the shell's message when CMD is not found, 126 when execve refuses it."""
    assert run(["no-such-program-xyz"]) == 127
    assert run(["/etc/os-release"]) == 126
    assert run(["/bin/true"], env={"BAD": "a\0b"}) == 126
    assert capfd.readouterr().err == ("faramesh-sandbox: no-such-program-xyz: No such file or directory\n"
                                      "faramesh-sandbox: /etc/os-release: Permission denied\n"
                                      "faramesh-sandbox: '/bin/true': embedded null byte\n")


def test_failing_chdir_names_its_stage(set_up_by):
    """A missing working directory stops the run at stage chdir, with the directory named."""
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], cwd="/no/such/dir")
    assert (caught.value.stage, caught.value.message, caught.value.hint) == (
        "chdir", "No such file or directory: /no/such/dir", "run from a directory that exists")


def test_working_directory_with_a_nul_byte_fails_stage_chdir(set_up_by):
    """A cwd with a NUL byte is refused at stage chdir, never entered cut short at the NUL."""
    with pytest.raises(SandboxError) as caught:
        run(["/bin/pwd"], cwd="/tmp\0/etc")
    assert (caught.value.stage, caught.value.message, caught.value.hint) == (
        "chdir", "ValueError: embedded null byte", "run from a directory that exists")


def test_command_name_with_a_nul_byte_is_not_found(set_up_by, capfd):
    """A NUL byte in CMD's name gives the shell's 127 and message, as for any name not found on PATH."""
    assert run(["tr\0ue"]) == 127
    assert capfd.readouterr().err == "faramesh-sandbox: tr\0ue: No such file or directory\n"


def test_rlimit_beyond_64_bits_fails_stage_rlimits(set_up_by):
    """An rlimit of 2**64 or more fails stage rlimits instead of wrapping around to a small limit."""
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], limits=Limits(files=2**64 + 77))
    message = {"compiled": "OverflowError: int too big to convert",
               "python": "OverflowError: Python int too large to convert to C long"}[set_up_by]
    assert (caught.value.stage, caught.value.message) == ("rlimits", message)


def test_failed_set_up_leaves_the_launcher_single_threaded(set_up_by):
    """After a stage fails, the supervisor's start-up threads are gone, so launches can follow at once."""
    stages = []
    for _ in range(3):
        with pytest.raises(SandboxError) as caught:
            run(["/bin/true"], cwd="/no/such/dir")
        stages.append(caught.value.stage)
    assert (stages, threading.active_count()) == (["chdir", "chdir", "chdir"], 1)


def test_failing_rlimit_names_its_stage(set_up_by):
    """An rlimit the kernel refuses stops the run at stage rlimits; the compiled path names its call."""
    with pytest.raises(SandboxError) as caught:
        run(["/bin/true"], limits=Limits(files=TOO_MANY_FILES))
    message = {"compiled": "prlimit64: Operation not permitted",
               "python": "ValueError: not allowed to raise maximum limit"}[set_up_by]
    assert (caught.value.stage, caught.value.message) == ("rlimits", message)


def test_cli_prints_the_failed_stage_and_exits_125(tmp_path):
    """`run` reports a stage that failed in the compiled agent as one line on stderr, status 125."""
    policy_file = tmp_path / "p.fpl"
    policy_file.write_text("agent a {\n  default permit\n}\n")
    done = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy_file), "--files",
                           str(TOO_MANY_FILES), "--", "/bin/true"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        125, "", "faramesh-sandbox: cannot apply the resource limits: prlimit64: Operation not permitted — hint: "
                 "raising a hard limit needs CAP_SYS_RESOURCE, and --files may not exceed fs.nr_open "
                 "(sysctl fs.nr_open): lower the limit\n")
