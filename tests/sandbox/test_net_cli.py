"""The whole product: `faramesh-sandbox run` gives the agent its own network namespace and host sockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.sandbox.test_net_connect import Greeter

ROOT = Path(__file__).resolve().parents[2]
AGENT = """
import socket
print("interfaces", [name for _, name in socket.if_nameindex()])
for port in ({allowed}, {denied}):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            print(port == {allowed}, s.recv(5).decode())
    except OSError as err:
        print(port == {allowed}, "errno", err.errno)
"""


def test_run_connects_through_the_supervisor_from_a_loopback_only_namespace(tmp_path):
    """Inside `run` the agent sees only lo, yet reaches a host server the policy names, and no other."""
    server, other = Greeter(), Greeter()
    try:
        policy = tmp_path / "p.fpl"
        policy.write_text("agent a {\n default deny\n permit fs/*\n permit shell/exec\n"
                          f" permit net/connect host: 127.0.0.1 port: {server.port}\n}}\n")
        audit = tmp_path / "audit.jsonl"
        code = AGENT.format(allowed=server.port, denied=other.port)
        done = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy), "--audit", str(audit),
                               "--", sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert (done.returncode, done.stdout) == (0, "interfaces ['lo']\nTrue hello\nFalse errno 1\n"), done.stderr
        assert other.accepted == 0
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        net = [(r["args"]["port"], r["effect"]) for r in records if r.get("tool") == "net/connect"]
        assert net == [(server.port, "PERMIT"), (other.port, "DENY")]
    finally:
        server.close()
        other.close()
