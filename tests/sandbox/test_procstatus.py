"""/proc/PID/status of a task whose name is not UTF-8 (an agent chooses its own with prctl) is read
without an exception by every reader on the supervision path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sandbox import ptrace_freeze
from sandbox._procstatus import status_fields
from sandbox.decode import exec as exec_decode

RENAMED = """
import ctypes, sys
ctypes.CDLL(None).prctl(15, b"ag\\xffent\\x1c\\x85", 0, 0, 0)  # PR_SET_NAME: a byte no codec reads, line breaks
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def renamed_task():
    child = subprocess.Popen([sys.executable, "-c", RENAMED], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    yield child.pid
    child.stdin.close()
    child.wait(timeout=10)


def test_a_task_name_that_is_not_utf8_is_read_with_replacement(renamed_task):
    fields = status_fields(renamed_task)
    assert fields["Name"].startswith("ag\ufffdent")
    assert fields["Pid"] == str(renamed_task)


def test_the_supervisions_status_readers_take_such_a_task(renamed_task):
    assert ptrace_freeze._ns_depth(renamed_task) == 1
    assert ptrace_freeze._parent_and_filtered(renamed_task) == (os.getpid(), False)
    assert exec_decode._proc_self(renamed_task, "self") == str(renamed_task)


def test_a_task_that_is_gone_is_reported_as_such():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(OSError):
        status_fields(child.pid)
    assert ptrace_freeze._ns_depth(child.pid) == 0
