"""The sandbox runs in a session of its own, on every set-up path: the agent's kill(0, sig) and
kill(-launcher's group, sig) reach no process of the launcher's group (where Landlock cannot scope
signals, ABI < 6: no Landlock floor here), and the agent has no controlling terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]

# In the agent: SIGTERM ignored, then sent to its own group and to the launcher's; what it sees of
# its session, group and terminal (stdin is a terminal that is the launcher's controlling one).
AGENT = """
import errno, fcntl, os, signal, sys, termios, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.kill(0, signal.SIGTERM)
try:
    os.kill(-int(sys.argv[1]), signal.SIGTERM)
    sent = "sent"
except OSError as err:
    sent = errno.errorcode[err.errno]
try:
    foreground = os.tcgetpgrp(0)
except OSError as err:
    foreground = errno.errorcode[err.errno]
tty_nr = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4])
print(sent, os.getsid(0), os.getpgid(0), foreground, tty_nr)
os.setsid()  # a session of its own cannot take the launcher's terminal either (stealing needs CAP_SYS_ADMIN)
try:
    fcntl.ioctl(0, termios.TIOCSCTTY, 1)
    print("terminal taken")
except OSError as err:
    print(errno.errorcode[err.errno])
time.sleep(0.3)  # a signal that reached the launcher's group has come by now
"""

# The launcher, started in a session of its own (pytest's group is never at risk), with a terminal
# it controls as stdin and a bystander in its process group; argv[1] picks the set-up path.
DRIVER = """
import fcntl, json, os, subprocess, sys, termios, time
from sandbox import agent_spawn, init_spawn, traced
from sandbox.launch import launch
from sandbox.spec import SandboxSpec
from policy.decision import Decision, Effect
if sys.argv[1] != "compiled init":
    init_spawn.available = lambda: False
if sys.argv[1] == "python stages":
    agent_spawn._spawn = None
controller, terminal = os.openpty()
fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)
os.dup2(terminal, 0)
bystander = subprocess.Popen(["sleep", "30"])
seen = {}

def session_and_group(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return [int(fields[3]), int(fields[2])]

def children(pid):
    return [int(child) for child in open(f"/proc/{pid}/task/{pid}/children").read().split()]

def started():  # init and then the agent appear: their sessions and groups, host view
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        inits = [child for child in children(os.getpid()) if child != bystander.pid]
        agents = children(inits[0]) if inits else []
        if agents:
            seen.update(init=inits[0], init_ids=session_and_group(inits[0]), agent_ids=session_and_group(agents[0]))
            return
        time.sleep(0.005)

spec = SandboxSpec(argv=[sys.executable, "-c", sys.argv[2], str(os.getpgrp())],
                   trapped=frozenset(row.name for row in traced.TABLE))
status = launch(spec, lambda call: Decision(Effect.PERMIT, rule_id="permit"), started=started)
seen.update(status=status, bystander=bystander.poll(), launcher_ids=[os.getsid(0), os.getpgrp()])
bystander.kill()
print(json.dumps(seen))
"""


@pytest.mark.parametrize("path", ["compiled init", "python init, agent set up in C", "python stages"])
def test_the_agents_signals_to_its_group_never_reach_the_launchers(path):
    launched = subprocess.run([sys.executable, "-c", DRIVER, path, AGENT], capture_output=True, text=True,
                              cwd=ROOT, timeout=60, start_new_session=True)
    assert launched.returncode == 0, launched.stderr
    *agent_lines, last = launched.stdout.splitlines()
    seen = json.loads(last)
    assert (seen["status"], seen["bystander"]) == (0, None)  # the bystander still runs
    # kill(-launcher's group) finds no such group; init (pid 1 inside) leads the agent's session
    # and group; the agent has no controlling terminal, and cannot take the launcher's
    assert agent_lines == ["ESRCH 1 1 ENOTTY 0", "EPERM"]
    init = seen["init"]
    assert seen["init_ids"] == seen["agent_ids"] == [init, init]
    assert seen["launcher_ids"][0] != init
