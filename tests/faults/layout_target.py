"""The layout helper (c/layout.c) as a long-running process, natively or under the filter."""

from __future__ import annotations

import os
import subprocess
import threading

from sandbox import seccomp
from sandbox.supervisor import Supervisor
from tests.sandbox.conftest import permit_all, spawn_filtered


class LayoutTarget:
    """Sends commands to a running layout helper and reads its one-line answers."""

    def __init__(self, binary: str, trapped=None, decide=permit_all, cgroup: str | None = None):
        """``cgroup``: a v2 cgroup to run in, giving the supervisor a freezer (renames need one)."""
        self.audit: list[dict] = []
        cmd_read, self._cmd = os.pipe()
        out_read, out_write = os.pipe()
        os.set_inheritable(cmd_read, True)
        self.supervisor = None
        if trapped is None:
            self.proc = subprocess.Popen([binary, str(cmd_read)], stdout=out_write, pass_fds=(cmd_read,))
            self.pid = self.proc.pid
        else:
            self.proc = None
            program = seccomp.build_filter(trapped, {})
            self.pid, self._listener = spawn_filtered([binary, str(cmd_read)], program, cgroup, out_write, 2)
            self.supervisor = Supervisor(self._listener, decide, session_id="fuzz", audit=self.audit.append,
                                         cgroup_dir=cgroup)
            self._serving = threading.Thread(target=self.supervisor.serve, daemon=True)
            self._serving.start()
        os.close(cmd_read)
        os.close(out_write)
        self._out = os.fdopen(out_read, "r")

    def ask(self, *words: str) -> str:
        os.write(self._cmd, (" ".join(words) + "\n").encode())
        line = self._out.readline()
        if not line:
            raise AssertionError(f"the layout helper (pid {self.pid}) died on {words[0]}")
        return line.strip()

    def close(self) -> int:
        os.close(self._cmd)
        if self.proc is not None:
            status = self.proc.wait(timeout=10)
        else:
            _, raw = os.waitpid(self.pid, 0)
            status = os.waitstatus_to_exitcode(raw)
            self._serving.join(timeout=10)
            self.supervisor.stop()
            os.close(self._listener)
        self._out.close()
        return status


def hexed(data: bytes) -> str:
    return data.hex() or "-"
