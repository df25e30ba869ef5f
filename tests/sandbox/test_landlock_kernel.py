"""The Landlock floor on the real kernel: what no rule can permit fails even if the supervisor says yes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import policy
from policy.decision import Decision, Effect
from sandbox import _libc, landlock, traced
from sandbox import _libc_landlock as ll
from sandbox.landlock import Bound, Floor
from sandbox.launch import launch
from sandbox.seccomp import ALLOW
from sandbox.spec import SandboxSpec

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
TRAPPED = frozenset(row.name for row in traced.TABLE)
SYSTEM_ONLY = """agent a {
  default deny
  rules {
    permit shell/exec when args.path startsWith "/usr/"
    permit fs/read when args.path startsWith "/usr/" || args.path startsWith "/etc/"
  }
}
"""


def buggy_supervisor(call):
    """A supervisor that wrongly permits every call."""
    return Decision(Effect.PERMIT, rule_id="bug")


def floor_of(text: str) -> landlock.Plan:
    found, _lines = landlock.for_run(policy.Engine([policy.load_policy(text)]).envelope, {})
    return found


def run(script: str, **fields) -> int:
    spec = SandboxSpec(argv=["/usr/bin/sh", "-c", script], trapped=TRAPPED, **fields)
    return launch(spec, buggy_supervisor)


def test_exec_outside_the_envelope_is_refused_even_when_the_supervisor_permits(tmp_path, capfd):
    """A copy of true in a temporary directory cannot run under a policy permitting exec only under /usr."""
    copy = tmp_path / "true"
    shutil.copy("/usr/bin/true", copy)
    script = f"{copy}; echo copy=$?; /usr/bin/true; echo usr=$?"
    assert run(script) == 0
    assert capfd.readouterr().out == "copy=0\nusr=0\n"  # without the floor the bug lets it run
    assert run(script, landlock=floor_of(SYSTEM_ONLY)) == 0
    captured = capfd.readouterr()
    assert captured.out == "copy=126\nusr=0\n"
    assert captured.err == f"/usr/bin/sh: 1: {copy}: Permission denied\n"


def test_kernel_decided_read_outside_the_envelope_is_refused(tmp_path, capfd):
    """When the filter lets reads through by itself, Landlock still refuses files no rule can permit."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    script = f"/usr/bin/cat {secret}; echo tmp=$?; /usr/bin/head -c 0 /etc/hostname; echo etc=$?"
    reads = {"fs/read": ALLOW}
    assert run(script, kernel_decided=reads) == 0
    assert capfd.readouterr().out == "s3cret\ntmp=0\netc=0\n"
    assert run(script, kernel_decided=reads, landlock=floor_of(SYSTEM_ONLY)) == 0
    captured = capfd.readouterr()
    assert captured.out == "tmp=1\netc=0\n"
    assert captured.err == f"/usr/bin/cat: {secret}: Permission denied\n"


def test_signal_to_the_sandbox_init_is_refused_by_scope(capfd):
    """The agent cannot signal pid 1 of its namespace (outside its Landlock domain)."""
    script = "kill -0 1; echo init=$?; kill -0 $$; echo self=$?"
    assert run(script, landlock=floor_of(SYSTEM_ONLY)) == 0
    captured = capfd.readouterr()
    assert captured.out == "init=1\nself=0\n"
    assert captured.err.split() == "/usr/bin/sh: 1: kill: Operation not permitted".split()  # dash adds a blank line


# ---- the plan applied directly in a forked child (no supervisor): each right on its own ----------

def in_restricted_child(found: landlock.Plan, probe) -> dict:
    """Fork, restrict the child with ``found``, run ``probe()`` there and return what it reports."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            _libc.set_no_new_privs()
            landlock.apply(found)
            result = probe()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            result = {"error": repr(exc)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def errno_of(action) -> int:
    try:
        action()
    except OSError as err:
        return err.errno
    return 0


def only(**bounds) -> landlock.Plan:
    keys = {key: Bound() for key in landlock.ARGUMENTS}
    keys.update({key: None for key in landlock.ARGUMENTS if key[1] != "port"})  # filesystem left open
    for name, bound in bounds.items():
        keys[(name.replace("_", "/", 1).rsplit("_", 1)[0], name.rsplit("_", 1)[1])] = bound
    return landlock.plan(Floor(keys), ll.abi_version())


def test_signal_to_the_launcher_is_refused_by_scope():
    """A restricted process cannot signal its parent, but can signal its own child."""
    launcher = os.getpid()

    def probe():
        child = os.fork()
        if child == 0:
            signal.pause()
            os._exit(0)
        result = {"launcher": errno_of(lambda: os.kill(launcher, 0)), "child": errno_of(lambda: os.kill(child, 0))}
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        return result

    assert in_restricted_child(only(), probe) == {"launcher": errno.EPERM, "child": 0}


def test_abstract_unix_socket_outside_the_domain_is_refused():
    """An abstract socket made outside the sandbox cannot be reached; one made inside can."""
    name = f"\0faramesh-landlock-{os.getpid()}"
    outside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    outside.bind(name)
    outside.listen(1)

    def probe():
        inside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        inside.bind(name + "-inside")
        inside.listen(1)
        return {"outside": errno_of(lambda: socket.socket(socket.AF_UNIX).connect(name)),
                "inside": errno_of(lambda: socket.socket(socket.AF_UNIX).connect(name + "-inside"))}

    try:
        assert in_restricted_child(only(), probe) == {"outside": errno.EPERM, "inside": 0}
    finally:
        outside.close()


def test_tcp_connect_outside_the_port_envelope_is_refused():
    """Only ports some rule can permit may be connected to; the others get EACCES."""
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    allowed, other = (s.getsockname()[1] for s in servers)

    def probe():
        return {str(port): errno_of(lambda: socket.create_connection(("127.0.0.1", port), timeout=5).close())
                for port in (allowed, other)}

    try:
        found = only(net_connect_port=Bound(exact=frozenset({allowed})))
        assert in_restricted_child(found, probe) == {str(allowed): 0, str(other): errno.EACCES}
    finally:
        for server in servers:
            server.close()


def test_plan_that_handles_nothing_restricts_nothing(tmp_path):
    """On ABI 3 with every argument unbounded nothing is handled: reads and signals still work."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    found = landlock.plan(Floor({key: None for key in landlock.ARGUMENTS}), 3)
    launcher = os.getpid()
    assert (found.fs_handled, found.net_handled, found.scoped) == (0, 0, 0)
    assert in_restricted_child(found, lambda: {"read": secret.read_text(),
                                               "signal": errno_of(lambda: os.kill(launcher, 0))}) == \
        {"read": "s3cret", "signal": 0}


# ---- through the CLI: permitted work still works, and the run log says what was applied ------------

def test_permitted_work_runs_under_the_floor_and_the_log_lists_it(tmp_path):
    """Writes, reads and execs the policy permits succeed with the floor applied; -v names the rules."""
    work = tmp_path / "work"
    work.mkdir()
    policy_file = tmp_path / "p.fpl"
    policy_file.write_text(SYSTEM_ONLY.replace(
        "  }\n}", f'    permit fs/write when args.path startsWith "{work}/"\n'
                  f'    permit fs/read when args.path startsWith "{work}/"\n  }}\n}}'))
    result = subprocess.run(
        [sys.executable, "-m", "launcher", "run", "-v", "--no-audit-db", "--no-sdk-socket", "--no-prompt",
         "--policy", str(policy_file), "--", "/usr/bin/sh", "-c", f"echo hi > {work}/out; /usr/bin/cat {work}/out"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr
    assert f"faramesh-sandbox:   Landlock allows read_file, read_dir, write_file, truncate, make_reg, make_char, " \
           f"make_block, make_fifo, make_sock beneath {work}" in result.stderr.splitlines()
    assert "faramesh-sandbox:   Landlock allows execute, read_file, read_dir beneath /usr" in result.stderr.splitlines()


def test_doctor_reports_whether_run_applies_the_floor():
    """doctor's JSON names the ABI and the parts of the floor run applies on this kernel (ABI 7)."""
    result = subprocess.run([sys.executable, "-m", "launcher", "doctor", "--json"], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert json.loads(result.stdout)["landlock_floor"] == \
        "applied by run (ABI 7): filesystem, TCP ports, signal and abstract-socket scopes (docs/landlock.md)"
