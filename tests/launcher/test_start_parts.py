"""A part of the run that cannot start serving once the agent runs ends the run as a set-up error."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from launcher.run import start_parts
from sandbox.errors import SandboxError

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
