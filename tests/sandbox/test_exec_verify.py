"""What exec_verify.VerifiedExec relies on, checked against the real kernel, and a content change
that no time stamp records."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import sys

from sandbox import exec_verify
from tests.sandbox.conftest import run_sandboxed
from tests.sandbox.test_exec_race import exec_policy


def test_a_task_directory_has_two_links_more_than_threads():
    """procfs gives /proc/PID/task 2 + the thread count links, which VerifiedExec reads instead
    of the thread count of /proc/PID/stat; our own child is never verified."""
    child = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                              "[threading.Thread(target=time.sleep, args=(30,), daemon=True).start() for _ in range(2)]\n"
                              "print(flush=True); time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # both threads started
        threads = len(os.listdir(f"/proc/{child.pid}/task"))
        assert (threads, os.stat(f"/proc/{child.pid}/task").st_nlink) == (3, 5)
        assert exec_verify._single_threaded_stranger(child.pid) is False
    finally:
        child.kill()
        child.wait()


def test_only_a_single_threaded_process_that_is_not_our_child_is_verified():
    """A sleeping grandchild qualifies; the shell that started it, our own child, does not."""
    shell = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE)
    try:
        grandchild = int(shell.stdout.readline())
        assert exec_verify._single_threaded_stranger(grandchild) is True
        assert exec_verify._single_threaded_stranger(shell.pid) is False
    finally:
        os.kill(grandchild, 9)
        shell.kill()
        shell.wait()


def test_a_write_through_a_dirty_shared_mapping_after_the_decision_is_killed(cgroup_dir, tmp_path):
    """`prog` (a copy of /bin/true, named `true` by its content) is changed through a shared
    mapping dirtied before the decision: no ctime or mtime changes, yet the executed content is
    hashed again at the exec stop and the child dies unrun."""
    prog = tmp_path / "prog"
    shutil.copy("/bin/true", prog)
    fd = os.open(prog, os.O_RDWR)
    mapping = mmap.mmap(fd, 0)
    mapping[9] = mapping[9]  # EI_PAD: the write fault happens now, before anything is decided
    before = os.stat(prog)

    def rewrite_while_deciding(call):
        if call.tool == "shell/exec" and call.args["path"] == str(prog) and not mapping.closed:
            mapping[9] = 1  # no fault, so no time stamp; the kernel ignores EI_PAD
            mapping.close()
            os.close(fd)  # no writer left: the exec itself may proceed
        return exec_policy(call)

    run = run_sandboxed(["/bin/sh", "-c", f'"{prog}"; echo "status=$?"'], rewrite_while_deciding,
                        trapped=("execve", "execveat"), cgroup=cgroup_dir, timeout=60)
    after = os.stat(prog)
    assert (after.st_ctime_ns, after.st_mtime_ns) == (before.st_ctime_ns, before.st_mtime_ns)
    assert (run.status, run.stdout) == (0, b"status=137\n")
    changed = [r for r in run.audit if r["reason_code"] == "EXEC_CHANGED"]
    assert len(changed) == 1 and "program ('prog'" in changed[0]["reason"]
    decided = [r for r in run.audit if r["args"].get("path") == str(prog) and r["effect"] == "PERMIT"]
    assert [r["args"]["program"] for r in decided] == ["true"]

