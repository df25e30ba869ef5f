"""Keep every test's runs off the machine's own audit store and configuration, and launch() tests single-threaded."""

from __future__ import annotations

import os
import threading
import traceback
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_audit_store(tmp_path_factory, monkeypatch):
    """Runs started by a test write a store of their own, never /var/lib/faramesh-sandbox."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("FARAMESH_AUDIT_DB", str(state / "audit.db"))
    # A path nobody has: readable as "no such file" by any user, including the non-root tests.
    monkeypatch.setenv("FARAMESH_SANDBOX_CONFIG", "/nonexistent/faramesh-sandbox/config.toml")


# Modules that call launch() in this process. launch() refuses a process with other threads
# (clone3 skips libc's fork handlers), and a test elsewhere may leave a server thread behind; when
# one does, these tests run in a forked child, which has only the calling thread.
# module -> the tests in it that launch (None: all of them)
IN_PROCESS_LAUNCH = {
    "launcher/test_doctor.py": "test_as_an_ordinary_user", "launcher/test_cleanup.py": None, "launcher/test_cleanup_kill.py": None, "launcher/test_run.py": None,
    "launcher/test_start_parts.py": "test_a_part_failing_to_start",
    "sandbox/test_compiled_init.py": None, "sandbox/test_capabilities.py": "test_the_compiled_receiver",
    "sandbox/test_dns_stub.py": "test_launched_agent", "sandbox/test_fs_placement.py": None,
    "sandbox/test_landlock_kernel.py": None, "sandbox/test_launch.py": None, "sandbox/test_launch_spawn.py": None,
    "sandbox/test_limits.py": None,
    "sandbox/test_namespaces.py": None, "sandbox/test_startup_paths.py": None,
}


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    for item in items:
        module = str(Path(item.path).relative_to(root))
        if module in IN_PROCESS_LAUNCH and item.name.startswith(IN_PROCESS_LAUNCH[module] or ""):
            item.runtest = _single_threaded(item.runtest)


def _single_threaded(runtest):
    def run():
        if threading.active_count() == 1:
            return runtest()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: only this thread exists
            os.close(read_end)
            failure = b""
            try:
                runtest()
            except BaseException:  # noqa: BLE001 - reported to the parent
                failure = traceback.format_exc().encode() or b"failed"
            with os.fdopen(write_end, "wb") as out:
                out.write(failure)
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            failure = report.read()
        status = os.waitpid(pid, 0)[1]
        if failure or status != 0:
            pytest.fail(f"in a forked child (this process had {threading.active_count()} threads):\n"
                        f"{failure.decode(errors='replace') or f'exit status {status}'}", pytrace=False)
    return run
