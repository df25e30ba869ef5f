"""``faramesh-sandbox doctor`` probes the real kernel by trying each feature."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import launcher.cli
from sandbox import _libc, _libc_ns, placement, probe

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
PARSER = launcher.cli.build_parser()  # built before forking: nothing may load lazily as uid 65534
NAMES = ["seccomp user notification", "seccomp ADDFD", "seccomp WAIT_KILLABLE_RECV", "seccomp SYNC_WAKE_UP",
         "Landlock", "cgroup v2", "cgroup v2 directory for the agent", "cgroup v1", "unprivileged user namespaces",
         "pid namespace", "mount namespace", "net namespace", "uts namespace", "ipc namespace",
         "io_uring_disabled sysctl", "YAMA ptrace_scope", "idle CPU wake-up", "compiled fast path",
         "compiled start-up", "compiled init", "serve client"]


def doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", "doctor", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_json_report_as_root_on_this_kernel():
    """As root on the project's reference machine (6.18, hybrid cgroups) every check is ok."""
    result = doctor("--json")
    report = json.loads(result.stdout)
    assert (result.returncode, report["uid"], report["run_possible"]) == (0, 0, True)
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == NAMES
    assert {c["status"] for name, c in checks.items() if name != "idle CPU wake-up"} == {"ok"}
    # A cost rather than a feature: limited where idle vCPUs halt at once, as on the reference VM.
    halting = placement.idle_cpu_state() == ("haltpoll", "0")
    assert checks["idle CPU wake-up"]["status"] == ("limited" if halting else "ok")
    assert checks["Landlock"]["detail"] == "ABI 7"
    assert checks["cgroup v2"]["detail"] == "/sys/fs/cgroup/unified, controllers: hugetlb"
    assert checks["unprivileged user namespaces"]["detail"] == "unshare(CLONE_NEWUSER) as uid 65534 succeeded"
    assert [c["essential"] for c in report["checks"]] == [True, True, True, False, False, False, False, False,
                                                          False, True, True, True, True, True, False, False, False,
                                                          False, False, False, False]


def test_table_names_each_check_and_a_verdict():
    """The text form prints one line per check, then the verdict."""
    result = doctor()
    every = result.stdout.splitlines()
    # a check that is not ok is followed by a line saying what is lost without it
    lost = [i for i, line in enumerate(every) if line.lstrip().startswith("without it: ")]
    assert all(every[i - 1].split()[0] in ("limited", "missing") for i in lost)
    lines = [line for i, line in enumerate(every) if i not in lost]
    assert result.returncode == 0
    assert lines[0].startswith("faramesh-sandbox doctor: Linux ")
    assert lines[0].endswith(", as root")
    assert len(lines) == 2 + len(NAMES) + 1 + 6  # the Landlock floor line; a header and one line per limit
    assert lines[len(NAMES) + 1].startswith("Landlock floor: ")
    assert [line.split()[0] for line in lines[len(NAMES) + 3:-1]] == ["memory", "pids", "cpus", "files", "timeout"]
    assert lines[-1] == "verdict: run can enforce policies here"
    assert lines[1].split() == ["ok", "seccomp", "user", "notification", "listener", "round", "trip:", "RECV,",
                                "ID_VALID,", "answer", "reached", "the", "trapped", "process"]


def test_as_an_ordinary_user_the_cgroup_is_missing_and_says_what_degrades():
    """As uid 65534 the namespaces work through a user namespace, and the missing cgroup is explained."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 99
        try:
            os.dup2(write_end, 1)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            _libc.prctl(_libc_ns.PR_SET_DUMPABLE, 1)  # as after an exec
            args = PARSER.parse_args(["doctor", "--json"])
            status = args._runner(args)
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        report = json.loads(f.read())
    _, wait_status = os.waitpid(pid, 0)
    checks = {c["name"]: c for c in report["checks"]}
    not_ok = {name: (c["status"], c["detail"]) for name, c in checks.items() if c["status"] != "ok"}
    assert (os.waitstatus_to_exitcode(wait_status), report["uid"], report["run_possible"]) == (0, 65534, True), \
        not_ok
    cgroup = checks["cgroup v2 directory for the agent"]
    assert cgroup["status"] == "missing"
    assert cgroup["detail"].startswith("mkdir(/sys/fs/cgroup/unified/faramesh-doctor-")
    assert cgroup["detail"].endswith("): Permission denied")
    assert cgroup["degrades"] == "run continues without a cgroup: no freezing for exec decisions, no cgroup.kill"
    assert [checks[f"{n} namespace"]["status"] for n in ("pid", "mount", "net", "uts", "ipc")] == ["ok"] * 5


def test_a_probe_that_raises_reports_the_error():
    """A probe failing in its child comes back as an error with the errno, not an exception."""
    def failing() -> dict:
        os.rmdir("/no/such/dir")
        return {"ok": True}
    assert probe.in_child(failing) == {"error": "[Errno 2] No such file or directory: '/no/such/dir'", "errno": 2}


def test_a_probe_that_hangs_is_killed_and_counts_as_missing(monkeypatch):
    """A probe child that never answers is killed after the timeout and reported as dead."""
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_MS", 200)
    started = time.monotonic()
    result = probe.in_child(time.sleep, 30)
    assert time.monotonic() - started < 5
    assert result == {"error": "probe process died (wait status 0x9)", "errno": None}


def test_compiled_start_up_row_says_which_set_up_runs(monkeypatch):
    """The row is ok with sandbox._spawn built and missing, naming the Python fallback, without it."""
    from sandbox import agent_spawn
    built = probe.compiled_spawn_check()
    monkeypatch.setattr(agent_spawn, "_spawn", None)
    fallback = probe.compiled_spawn_check()
    assert (built.status, built.detail) == (
        "ok", "sandbox._spawn is built: the agent is set up in C between clone and execve")
    assert (fallback.status, fallback.detail) == (
        "missing", "sandbox._spawn was not built (reinstall with gcc and the Python headers present)")
    assert fallback.degrades == ("the agent is set up in a forked copy of the Python process "
                                 "(start-up about 4-6 ms slower)")


def test_compiled_start_up_row_names_a_stage_list_that_differs(monkeypatch):
    """An extension built with other stages than sandbox.launch's is reported missing, saying why."""
    from sandbox import agent_spawn
    monkeypatch.setattr(agent_spawn._spawn, "STAGES", ("chdir", "restore_signals"))
    check = probe.compiled_spawn_check()
    assert (check.status, check.detail) == (
        "missing", "sandbox._spawn runs the stages ('chdir', 'restore_signals'), not sandbox.launch's "
                   "('restore_signals', 'chdir', 'close_fds', 'rlimits', 'drop_capabilities', 'no_new_privs', "
                   "'landlock', 'seccomp', 'hand_over_listener') (rebuild it: python3 setup.py build_ext --inplace)")


def test_compiled_init_row_says_which_init_runs(monkeypatch, tmp_path):
    """The row is ok with sandbox/_init built, and missing with the rebuild command when the program is absent."""
    from sandbox import init_spawn
    built = probe.compiled_init_check()
    monkeypatch.setattr(init_spawn, "PROGRAM", tmp_path / "_init")
    absent = probe.compiled_init_check()
    assert (built.status, built.detail) == (
        "ok", f"{Path(init_spawn.__file__).with_name('_init')} is built: the sandbox's pid 1 is a small program "
              "of its own (runs with a user namespace keep the Python init)")
    assert (absent.status, absent.detail) == (
        "missing", f"{tmp_path / '_init'} was not built (reinstall with gcc present: "
                   "python3 setup.py build_ext --inplace)")


def test_compiled_init_row_names_init_stages_that_differ(monkeypatch):
    """An extension whose init stages differ from sandbox.launch's is reported missing, saying why."""
    from sandbox import agent_spawn
    monkeypatch.setattr(agent_spawn._spawn, "INIT_STAGES", ("mounts",))
    check = probe.compiled_init_check()
    assert (check.status, check.detail) == (
        "missing", "sandbox._spawn runs the init stages ('mounts',), not sandbox.launch's ('die_with_launcher', "
                   "'close_fds', 'await_release', 'new_session', 'mounts', 'hostname', 'loopback', 'fork_agent') "
                   "(rebuild it: python3 setup.py build_ext --inplace)")
