"""A part of the run that cannot start serving once the agent runs ends the run as a set-up error."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from launcher import term
from launcher.run import _close_each, start_parts
from launcher.sdk_server import SdkServer
from policy.decision import Decision, Effect
from sandbox import traced
from sandbox.dns_stub import DnsStub
from sandbox.errors import SandboxError
from sandbox.launch import launch
from sandbox.spec import SandboxSpec

# The DNS stub's start refused as a host out of ports would refuse it; the rest of the run is real.
REFUSED_START = """
import sys
from sandbox import dns_stub
def refuse(self):
    raise OSError(98, "Address already in use")
dns_stub.DnsStub.start = refuse
from launcher.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_part_that_cannot_start_is_a_set_up_error_naming_it():
    """start_parts runs every hook; an OSError or RuntimeError becomes SandboxError with what failed."""
    started = []

    def no_thread():
        raise RuntimeError("can't start new thread")

    with pytest.raises(SandboxError) as err:
        start_parts([lambda: started.append("sdk"), no_thread, lambda: started.append("never")])
    assert started == ["sdk"]
    assert err.value.render() == (
        "cannot start the run's DNS stub, HTTP egress and SDK socket: RuntimeError: can't start new thread"
        " — hint: the host ran out of threads, file descriptors or ports; free some and run again")


@pytest.mark.kernel
def test_a_run_whose_dns_stub_cannot_start_ends_with_125_and_the_agent(tmp_path):
    """The stub failing to start after the agent is running: exit 125, one line on stderr saying
    what failed and a hint, and the agent (here sleeping 60 s) killed with the sandbox."""
    policy = tmp_path / "p.fpl"
    policy.write_text("agent a {\n  default permit\n}\n")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", REFUSED_START, "run", "--policy", str(policy), "--no-audit-db", "--no-sdk-socket",
         "--no-prompt", "--dns-upstream", "127.0.0.1:9", "--", "sleep", "60"],
        capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert time.monotonic() - started < 30
    assert done.returncode == 125, done.stderr
    assert done.stderr.splitlines() == [
        "faramesh-sandbox: cannot start the run's DNS stub, HTTP egress and SDK socket: OSError: [Errno 98] "
        "Address already in use — hint: the host ran out of threads, file descriptors or ports; free some and "
        "run again"]


@pytest.mark.kernel
@pytest.mark.parametrize("failure", [OSError(98, "Address already in use"), RuntimeError("can't start new thread")])
def test_a_part_failing_to_start_leaves_no_process_of_the_sandbox(failure):
    """launch() in this process with a part that cannot start: SandboxError, and init and the
    agent (waited for in the hook; it has not run CMD yet) are gone, not left running or unreaped."""
    seen: list[psutil.Process] = []
    before = {child.pid for child in psutil.Process().children(recursive=True)}

    def refuse():
        raise failure

    def started():
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:  # init forks the agent soon after
            inits = [child for child in psutil.Process().children() if child.pid not in before]
            seen[:] = [process for init in inits for process in (init, *init.children())]
            time.sleep(0.01)
        start_parts([refuse])

    spec = SandboxSpec(argv=["sleep", "60"], trapped=frozenset(row.name for row in traced.TABLE))
    with pytest.raises(SandboxError) as err:
        launch(spec, lambda call: Decision(Effect.PERMIT, rule_id="test-permit"), started=started)
    assert err.value.stage == "start_parts"
    assert type(failure).__name__ in err.value.render()
    assert len(seen) >= 2, "init and the agent should exist when started() runs"
    for process in seen:
        assert not process.is_running(), f"pid {process.pid} ({process.name()}) outlived the failed start"


class _NoThreadLeft(threading.Thread):
    def start(self):
        raise RuntimeError("can't start new thread")


def test_a_part_whose_thread_never_started_still_closes(tmp_path, monkeypatch):
    """DNS stub, SDK socket and status line: when start fails for want of a thread, close() (stop())
    neither raises nor waits for a thread that never ran, and the SDK socket file is removed."""
    stub = DnsStub(lambda name, qtype: True, upstream=[("127.0.0.1", 9)], listen=("127.0.0.1", 0))
    sdk = SdkServer(str(tmp_path / "sdk.sock"), lambda call: None, session_id="s").listen()
    devnull = os.open(os.devnull, os.O_WRONLY)
    line = term.StatusLine(term.DecisionCounter(), devnull)
    monkeypatch.setattr(threading, "Thread", _NoThreadLeft)
    for start in (stub.start, sdk.serve, line.start):
        with pytest.raises(RuntimeError):
            start()
    monkeypatch.undo()
    stub.close()
    sdk.close()
    line.stop()
    os.close(devnull)
    assert not (tmp_path / "sdk.sock").exists()


def test_each_part_is_closed_even_when_one_before_it_fails(capsys):
    """One close raising is one warning line; the parts after it are still closed."""
    closed = []

    class Part:
        def __init__(self, name, fails=False):
            self.name, self.fails = name, fails

        def close(self):
            if self.fails:
                raise RuntimeError("cannot join thread before it is started")
            closed.append(self.name)

    _close_each([("DNS stub", Part("dns", fails=True), "close"), ("egress proxy", None, "close"),
                 ("SDK socket", Part("sdk"), "close"), ("audit", Part("audit"), "close")])
    assert closed == ["sdk", "audit"]
    assert capsys.readouterr().err == ("faramesh-sandbox: warning: closing the DNS stub failed: RuntimeError: "
                                       "cannot join thread before it is started\n")
