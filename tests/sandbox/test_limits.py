"""Resource limits against the real kernel: a memory balloon, a fork bomb, an fd flood, a CPU hog
and a sleeper are each stopped by their limit, reported on stderr, and leave the host unharmed."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import launcher.cli
from sandbox import limits

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
PARSER = launcher.cli.build_parser()
PERMIT = "agent a {\n  default permit\n}\n"
BALLOON = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"
FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
FD_FLOOD = ("import os, errno\nn = 0\ntry:\n    while True:\n        os.open('/dev/null', os.O_RDONLY)\n"
            "        n += 1\nexcept OSError as e:\n    print(n, errno.errorcode[e.errno])\n")
CPU_HOG = ("import time\nt, c = time.monotonic(), time.process_time()\nwhile time.monotonic() - t < 1.5:\n"
           "    pass\nprint(round(time.process_time() - c, 2))\n")


@pytest.fixture
def run(tmp_path, monkeypatch, capfd):
    """`faramesh-sandbox run` in this process (permit-all policy); returns (status, stdout, stderr)."""
    policy = tmp_path / "permit.fpl"
    policy.write_text(PERMIT)
    monkeypatch.setenv("FARAMESH_SANDBOX_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("FARAMESH_SANDBOX_RUNTIME_DIR", str(tmp_path / "runtime"))

    def run_cli(*args: str) -> tuple[int, str, str]:
        capfd.readouterr()
        parsed = PARSER.parse_args(["run", "--policy", str(policy), "--no-audit-db", "--no-prompt", *args])
        status = parsed._runner(parsed)
        out, err = capfd.readouterr()
        return status, out, err
    return run_cli


def limit_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "limit" in line and "reached" in line]


def test_memory_balloon_is_oom_killed_and_reported(run):
    """A process allocating without end is OOM-killed at --memory; status 137 and one line say so."""
    status, _, err = run("--memory", "64M", "--", sys.executable, "-c", BALLOON)
    assert status == 137
    # The balloon's task, and under load sometimes a second one caught in the same reclaim.
    assert re.fullmatch(r"faramesh-sandbox: memory limit 64M reached \(OOM kill of (1 task|2 tasks)\)",
                        "\n".join(limit_lines(err))), err


def test_fork_bomb_is_contained_by_pids_and_ended_by_the_timeout(run):
    """A fork bomb stops at --pids (forks fail), --cpus keeps it off the host's CPUs, --timeout ends it (124)."""
    started = time.monotonic()
    status, _, err = run("--pids", "48", "--cpus", "0.5", "--timeout", "2s", "--", sys.executable, "-c", FORK_BOMB)
    elapsed = time.monotonic() - started
    lines = limit_lines(err)
    assert (status, lines[0]) == (124, "faramesh-sandbox: time limit 2s reached: the sandbox was killed "
                                       "(exit status 124)")
    assert lines[1].startswith("faramesh-sandbox: pids limit 48 reached (fork refused ")
    assert 2.0 <= elapsed < 6.0
    assert psutil.Process().children(recursive=True) == []


def test_fd_flood_stops_at_the_files_limit(run):
    """Opening files without end fails with EMFILE once --files descriptors are open."""
    status, out, err = run("--files", "64", "--", sys.executable, "-c", FD_FLOOD)
    opened, code = out.split()
    assert (status, code, limit_lines(err)) == (0, "EMFILE", [])
    assert 50 <= int(opened) <= 61  # 64 minus stdin, stdout, stderr and the interpreter's own


def test_cpu_quota_throttles_without_killing(run):
    """A busy loop under --cpus 0.2 gets about a fifth of a CPU and exits normally, nothing reported."""
    status, out, err = run("--cpus", "0.2", "--", sys.executable, "-c", CPU_HOG)
    assert (status, limit_lines(err)) == (0, [])
    assert float(out) <= 0.5  # 1.5 s of wall time; unthrottled it would be close to 1.5


def test_timeout_kills_the_whole_sandbox_with_124(run):
    """--timeout kills every task of the sandbox, not just the agent, and exits 124 like timeout(1)."""
    started = time.monotonic()
    status, _, err = run("--timeout", "1", "--", "sh", "-c", "sleep 30 & sleep 30 & wait")
    assert (status, limit_lines(err)) == (124, ["faramesh-sandbox: time limit 1s reached: the sandbox was "
                                                "killed (exit status 124)"])
    assert time.monotonic() - started < 4.0
    assert psutil.Process().children(recursive=True) == []


def test_limits_under_the_limits_report_nothing(run):
    """A run that stays within every limit has the agent's own status and no limit line."""
    status, out, err = run("--memory", "256M", "--pids", "64", "--cpus", "1", "--files", "256", "--timeout", "30s",
                           "--", "sh", "-c", "ulimit -n; echo done")
    assert (status, out, limit_lines(err)) == (0, "256\ndone\n", [])


def test_verbose_run_names_the_mechanism_of_each_limit(run):
    """-v says where each limit lives: cgroup v1 for memory, pids and cpu on this hybrid host."""
    _, _, err = run("-v", "--memory", "128M", "--pids", "64", "--cpus", "1", "--files", "128", "--", "true")
    notes = sorted(" ".join(line.split()[1:6]) for line in err.splitlines() if " limit via " in line)
    assert notes == ["cpus limit via cgroup v1", "files limit via rlimit RLIMIT_NOFILE",
                     "memory limit via cgroup v1", "pids limit via cgroup v1"]


def test_every_limit_cgroup_is_removed_after_the_run(run):
    """The v1 directories made for the limits are gone when the run returns."""
    status, _, err = run("-v", "--memory", "128M", "--pids", "64", "--cpus", "1", "--", "true")
    dirs = [line.split(" limit via cgroup v1 ")[1] for line in err.splitlines() if " limit via cgroup v1 " in line]
    assert (status, len(dirs), [d for d in dirs if os.path.exists(d)]) == (0, 3, [])


def test_doctor_reports_the_mechanism_per_limit():
    """doctor --json lists how each limit is enforced on this host (v1 controllers, rlimit, timer)."""
    result = subprocess.run([sys.executable, "-m", "launcher", "doctor", "--json"], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    own = {line.split(":")[1]: line.split(":", 2)[2]
           for line in Path("/proc/self/cgroup").read_text().splitlines()}
    assert json.loads(result.stdout)["limits"] == {
        "memory": "cgroup v1 " + os.path.normpath("/sys/fs/cgroup/memory" + own["memory"]),
        "pids": "cgroup v1 " + os.path.normpath("/sys/fs/cgroup/pids" + own["pids"]),
        "cpus": "cgroup v1 " + os.path.normpath("/sys/fs/cgroup/cpu" + own["cpu"]),
        "files": "rlimit RLIMIT_NOFILE",
        "timeout": "launcher timer (kills the pid namespace)",
    }


def test_enforcer_without_limits_creates_nothing():
    """No limits: no cgroup directory, no rlimit, and the agent's status passes through."""
    enforcer = limits.Enforcer(None, "nolimits", None)
    enforcer.prepare()
    assert (enforcer.v1_dirs, enforcer.rlimits, enforcer.used, enforcer.exit_status(3)) == ({}, {}, {}, 3)
    assert [d for d in limits.cgroup_dirs("nolimits") if os.path.exists(d)] == []


def test_the_agent_never_gets_real_time_scheduling_or_a_lower_nice_value():
    """RLIMIT_RTPRIO and RLIMIT_NICE are 0 in every agent, whatever the launcher's hard limits allow
    (this machine's are 0 already and its root cannot raise them: the list is what the agent gets)."""
    enforcer = limits.Enforcer(None, "sched", None)
    enforcer.prepare()
    given = dict(enforcer.rlimit_list())
    assert (given[resource.RLIMIT_RTPRIO], given[resource.RLIMIT_NICE]) == (0, 0)
    enforcer.rlimits[resource.RLIMIT_NOFILE] = 64
    assert dict(enforcer.rlimit_list()) == {resource.RLIMIT_RTPRIO: 0, resource.RLIMIT_NICE: 0, resource.RLIMIT_NOFILE: 64}


def test_config_file_limits_apply_and_options_override_them(run, tmp_path):
    """[limits] in the config file reaches the agent; an option replaces it; `none` removes it."""
    (tmp_path / "config.toml").write_text("[limits]\nfiles = 100\n")
    inherited = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    outputs = [run("--", "sh", "-c", "ulimit -n")[:2], run("--files", "200", "--", "sh", "-c", "ulimit -n")[:2],
               run("--files", "none", "--", "sh", "-c", "ulimit -n")[:2]]
    assert outputs == [(0, "100\n"), (0, "200\n"), (0, f"{inherited}\n")]


def test_a_malformed_limit_is_one_line_and_125(run):
    """A bad option value stops the run before anything starts, with one line saying what to write."""
    status, out, err = run("--memory", "lots", "--", "true")
    assert (status, out, err) == (125, "", "faramesh-sandbox: --memory 'lots' is not a size — write e.g. 512M, 2G "
                                           "or a number of bytes — hint: see the Limits section of docs/run.md\n")


def test_a_run_without_limit_options_still_bounds_a_fork_bomb(run):
    """With no options the default of 1024 tasks holds: the 1,500 sleepers stop short of it."""
    status, out, err = run("--", "sh", "-c", "i=0; while [ $i -lt 1500 ]; do sleep 30 & i=$((i+1)); echo $i; done")
    started = int(out.split()[-1])
    assert (status, limit_lines(err)) == (2, ["faramesh-sandbox: pids limit 1024 reached (fork refused 1 time)"])
    assert started == 1022  # init and sh are the other two of the 1024


def test_the_agent_leaves_a_real_time_policy_the_launcher_had(tmp_path):
    """A launcher started under SCHED_FIFO: the agent runs SCHED_OTHER, and cannot take SCHED_FIFO
    back (RLIMIT_RTPRIO 0, no CAP_SYS_NICE)."""
    policy = tmp_path / "permit.fpl"
    policy.write_text(PERMIT)
    agent = "import os\nprint(os.sched_getscheduler(0))\ntry:\n    os.sched_setscheduler(0, os.SCHED_FIFO, " \
            "os.sched_param(1))\n    print('fifo')\nexcept OSError as err:\n    print(err.errno)\n"
    done = subprocess.run(["chrt", "-f", "10", sys.executable, "-m", "launcher", "run", "--policy", str(policy),
                           "--no-audit-db", "--no-prompt", "--", sys.executable, "-c", agent],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    native = subprocess.run(["chrt", "-f", "10", sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                            capture_output=True, text=True, timeout=30)
    assert native.stdout.split() == [str(os.SCHED_FIFO)]  # the launcher really had it
    assert done.stdout.split() == [str(os.SCHED_OTHER), "1"], done.stderr
