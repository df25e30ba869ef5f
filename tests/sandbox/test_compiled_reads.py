"""The compiled fast path for repeated reads (sandbox/fastpath.py, sandbox/fastpath_c/), against
the real kernel: same answers and records as the Python path, race-free, the agent's identity kept."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from launcher.audit import AuditTrail
from launcher.audit_store import AuditStore, open_readonly
from policy.decision import Decision, Effect, deny
from sandbox import fastpath
from tests.sandbox.conftest import run_sandboxed

pytestmark = pytest.mark.kernel
OPENS = ["open", "openat"]


def path_keys(tool: str) -> frozenset:
    return frozenset({"path"})


def secret_denied(secret: str):
    def decide(call):
        if call.tool == "fs/read" and call.args.get("path") == secret:
            return deny("SECRET", "no secrets")
        return Decision(Effect.PERMIT, rule_id="rest")
    return decide


def agent(code: str) -> list[str]:
    return [sys.executable, "-S", "-c", textwrap.dedent(code)]


@pytest.fixture
def files(tmp_path):
    tmp_path.chmod(0o755)
    public, secret = tmp_path / "public", tmp_path / "secret"
    public.write_text("public text")
    secret.write_text("secret text")
    return public, secret


def test_extension_is_built():
    """The package installs the compiled fast path (a build failure would silently slow every run)."""
    assert fastpath.available() is True


def test_repeated_reads_answered_in_c_with_records(files):
    """200 reads of one file: one decided in Python, the rest in C, each with the same audit record."""
    public, secret = files
    run = run_sandboxed(agent(f"""
        for _ in range(200):
            with open({str(public)!r}) as f:
                assert f.read() == "public text"
        print("done")
    """), secret_denied(str(secret)), trapped=OPENS, decision_keys=path_keys)
    assert (run.status, run.stdout) == (0, b"done\n")
    assert run.stats["fast_hits"] >= 199
    reads = [r for r in run.audit if r["args"].get("path") == str(public)]
    assert len(reads) == 200
    assert {(r["tool"], r["effect"], r["rule_id"], r["args"]["flags"][0], r["session"]) for r in reads} == \
        {("fs/read", "PERMIT", "rest", "O_RDONLY", "test")}
    assert all(r["args"]["pid"] == r["pid"] and r["args"]["mode"] is None for r in reads)


def test_records_of_answers_given_in_c_are_committed_many_at_a_time(files, tmp_path):
    """With the audit store as the sink, the records of reads answered in C go in batches, one
    commit each: one commit (an fsync) per record would hold the compiled path to the disk's
    flush rate, with the ring full and Python answering. Every read is on record all the same."""
    public, secret = files
    store = AuditStore(str(tmp_path / "audit.db"))
    trail = AuditTrail(store)
    run = run_sandboxed(agent(f"""
        for _ in range(2000):
            open({str(public)!r}).close()
        print("done")
    """), secret_denied(str(secret)), trapped=OPENS, decision_keys=path_keys, audit_sink=trail)
    trail.close()
    assert (run.status, run.stdout) == (0, b"done\n")
    assert run.stats["fast_hits"] > 1000
    con = open_readonly(str(tmp_path / "audit.db"))
    reads = con.execute("SELECT count(*) FROM records WHERE json_extract(record, '$.args.path') = ?",
                        (str(public),)).fetchone()[0]
    con.close()
    assert reads == 2000
    assert store.commits < 200  # the interpreter's own opens are decided in Python, a commit each


def test_records_drained_but_not_yet_written_count_towards_the_bound(files, tmp_path):
    """At most MAX_UNRECORDED answers given in C wait for their record, those drained and being
    written included: while the first batch is stuck on a slow disk, C answers only until that
    batch and the ring together reach the bound; then Python answers, recording first."""
    public, secret = files
    done = tmp_path / "done"

    class SlowDisk:
        def __init__(self):
            self.batches, self.singles = [], []

        def __call__(self, record):
            self.singles.append(record)

        def many(self, records):
            if not self.batches:  # the first batch is written once the agent has made every call
                deadline = time.monotonic() + 60
                while not done.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
            self.batches.append(list(records))
    sink = SlowDisk()
    run = run_sandboxed(agent(f"""
        for _ in range(4000):
            open({str(public)!r}).close()
        open({str(done)!r}, "w").close()
        print("done")
    """), secret_denied(str(secret)), trapped=OPENS, decision_keys=path_keys, audit_sink=sink)
    assert (run.status, run.stdout) == (0, b"done\n")
    in_c = [r for batch in sink.batches for r in batch if r["args"].get("path") == str(public)]
    by_python = [r for r in sink.singles if r["args"].get("path") == str(public)]
    assert len(in_c) + len(by_python) == 4000
    assert 0 < len(sink.batches[0]) < len(in_c)
    assert len(in_c) <= fastpath.MAX_UNRECORDED  # each answered before the first batch was written


def test_repeated_denials_answered_in_c(files):
    """A denied read stays denied (EACCES) when repeated, and each denial is on record."""
    public, secret = files
    run = run_sandboxed(agent(f"""
        import errno
        codes = []
        for _ in range(50):
            try:
                open({str(secret)!r}).close()
                codes.append(0)
            except OSError as err:
                codes.append(err.errno)
        print(sorted(set(codes)) == [errno.EACCES], len(codes))
    """), secret_denied(str(secret)), trapped=OPENS, decision_keys=path_keys)
    assert run.stdout == b"True 50\n"
    denials = [r for r in run.audit if r["args"].get("path") == str(secret)]
    assert [r["effect"] for r in denials] == ["DENY"] * 50
    assert run.stats["fast_denied"] >= 49


def test_directory_listing_repeated(tmp_path):
    """Directories opened again and again (os.listdir) list the same entries as natively."""
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
    run = run_sandboxed(agent(f"""
        import os
        print(all(sorted(os.listdir({str(tmp_path)!r})) == ["a", "b", "c"] for _ in range(100)))
    """), secret_denied("/nonexistent"), trapped=OPENS, decision_keys=path_keys)
    assert run.stdout == b"True\n"
    assert run.stats["fast_hits"] >= 99


def test_symlink_planted_after_a_permit_is_decided_again(files, tmp_path):
    """A path first read as a plain file, then replaced by a symlink to the secret: the symlink
    is never followed in C, and Python denies the secret it names."""
    public, secret = files
    run = run_sandboxed(agent(f"""
        import os
        for _ in range(5):
            open({str(public)!r}).close()
        os.rename({str(public)!r}, {str(public)!r} + ".old")
        os.symlink({str(secret)!r}, {str(public)!r})
        try:
            open({str(public)!r}).read()
            print("read the secret")
        except PermissionError:
            print("refused")
    """), secret_denied(str(secret)), trapped=OPENS, decision_keys=path_keys)
    assert run.stdout == b"refused\n"
    assert [r["effect"] for r in run.audit if r["args"].get("path") == str(secret)] == ["DENY"]


def test_agent_identity_is_kept(files):
    """A child that became nobody reads a 0600 root file the fast path has opened for root:
    it gets EACCES, as natively, because C answers only tasks acting as the supervisor does."""
    public, _secret = files
    public.chmod(0o600)
    run = run_sandboxed(agent(f"""
        import os
        for _ in range(10):
            open({str(public)!r}).close()
        pid = os.fork()
        if pid == 0:
            os.setgid(65534)
            os.setuid(65534)
            try:
                open({str(public)!r}).close()
                os._exit(1)
            except PermissionError:
                os._exit(0)
        print(os.waitpid(pid, 0)[1])
    """), secret_denied("/nonexistent"), trapped=OPENS, decision_keys=path_keys)
    assert run.stdout == b"0\n"
    assert stat.S_IMODE(public.stat().st_mode) == 0o600


def test_racing_path_never_reads_the_secret(files):
    """A thread flips the path between a permitted (cached) and a denied file while the main
    thread opens it 20,000 times: no open ever returns the secret."""
    public, secret = files
    assert len(str(public)) == len(str(secret))
    code = f"""
        import ctypes, os, threading
        libc = ctypes.CDLL(None, use_errno=True)
        a, b = {str(public)!r}.encode(), {str(secret)!r}.encode()
        buf = ctypes.create_string_buffer(a, 4096)
        stop = False
        def flip():
            while not stop:
                ctypes.memmove(buf, b, len(b))
                ctypes.memmove(buf, a, len(a))
        threading.Thread(target=flip, daemon=True).start()
        leaks = opened = 0
        for _ in range(20000):
            fd = libc.open(buf, os.O_RDONLY)
            if fd >= 0:
                opened += 1
                leaks += os.read(fd, 64) == b"secret text"
                os.close(fd)
        stop = True
        print(leaks, opened > 0)
    """
    run = run_sandboxed(agent(code), secret_denied(str(secret)), trapped=OPENS, decision_keys=path_keys,
                        timeout=300)
    assert run.stdout == b"0 True\n"
    assert run.stats["fast_hits"] > 0


def test_policy_reading_more_than_the_path_keeps_python(files):
    """When the policy's decision reads other arguments (here the pid), nothing is repeated in C."""
    public, secret = files
    run = run_sandboxed(agent(f"""
        for _ in range(20):
            open({str(public)!r}).close()
    """), secret_denied(str(secret)), trapped=OPENS, decision_keys=lambda tool: frozenset({"path", "pid"}))
    assert run.status == 0
    assert run.stats["fast_hits"] == 0
    assert len([r for r in run.audit if r["args"].get("path") == str(public)]) == 20


def test_same_task_dropping_root_is_seen(files):
    """The task whose identity C remembered becomes nobody: its next read of a 0600 root file
    fails with EACCES, as natively (the set*id calls reach the supervisor first)."""
    public, _secret = files
    public.chmod(0o600)
    run = run_sandboxed(agent(f"""
        import os
        for _ in range(10):
            open({str(public)!r}).close()
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        try:
            open({str(public)!r}).close()
            print("read as nobody")
        except PermissionError:
            print("refused")
    """), secret_denied("/nonexistent"), trapped=OPENS, decision_keys=path_keys)
    assert run.stdout == b"refused\n"
    assert run.stats["fast_credential_calls"] >= 3
    assert run.stats["fast_status_reads"] >= 2


def test_doctor_reports_the_fast_path():
    """`doctor` lists the compiled fast path as present."""
    from sandbox import probe
    check = probe.compiled_reads_check()
    assert (check.name, check.status) == ("compiled fast path", "ok")


FUZZ_AGENT = """
import mmap, os, random, sys
root = sys.argv[1].encode()
rng = random.Random(7)
parts = [b"dir", b"file", b"link", b"dangling", b"nope", b".", b"..", b"", b"x" * 300, b"\\xff\\xfe", b"fifo"]
paths = [root + b"/" + b"/".join(rng.choice(parts) for _ in range(rng.randint(1, 4))) for _ in range(400)]
paths += [root + b"/dir/" + b"y" * (4096 - len(root) - 6), root + b"/file/", root + b"/dir/./file"]
# The page after the one holding each path is unmapped, so a reader that runs past the NUL faults.
area = mmap.mmap(-1, 2 * mmap.PAGESIZE)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
base = ctypes.addressof(ctypes.c_char.from_buffer(area))
libc.mprotect(ctypes.c_void_p(base + mmap.PAGESIZE), mmap.PAGESIZE, 0)
out = []
for round in range(3):  # the first round is decided in Python, the later ones may be repeated in C
    for path in paths:
        for flags in (os.O_RDONLY, os.O_RDONLY | os.O_DIRECTORY, os.O_RDONLY | os.O_NOFOLLOW):
            data = path[-(mmap.PAGESIZE - 1):] + b"\\0"
            area[mmap.PAGESIZE - len(data):mmap.PAGESIZE] = data
            fd = libc.open(ctypes.c_char_p(base + mmap.PAGESIZE - len(data)), flags | os.O_NONBLOCK)
            if fd < 0:
                out.append("errno %d" % ctypes.get_errno())
                continue
            try:
                out.append("ok %r" % os.read(fd, 16))
            except OSError as err:
                out.append("read errno %d" % err.errno)
            os.close(fd)
print(len(out), hash(tuple(out[: len(out) // 3])) == hash(tuple(out[len(out) // 3: 2 * len(out) // 3])))
print("\\n".join(out))
"""


def test_odd_paths_answer_as_natively(tmp_path):
    """400 generated paths (dots, doubled and trailing slashes, symlinks, FIFOs, long and
    non-UTF-8 names, each ending just before an unmapped page) opened three times: every
    answer is the one the same program gets with no sandbox."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("content")
    (tmp_path / "dir" / "file").write_text("inner")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    os.mkfifo(tmp_path / "fifo")
    argv = [sys.executable, "-S", "-c", FUZZ_AGENT, str(tmp_path)]
    native = subprocess.run(argv, capture_output=True, check=True).stdout
    run = run_sandboxed(argv, secret_denied("/nonexistent"), trapped=OPENS, decision_keys=path_keys)
    assert run.stdout.split(b"\n")[0] == native.split(b"\n")[0] == b"3627 True"
    assert run.stdout == native
    assert run.stats["fast_hits"] > 100


def test_threads_in_parallel_every_read_on_record(files):
    """Four threads open the same file 5,000 times each: every open succeeds and each has
    exactly one record, whether Python or C answered it."""
    public, secret = files
    run = run_sandboxed(agent(f"""
        import threading
        failures = []
        def reader():
            for _ in range(5000):
                try:
                    open({str(public)!r}).close()
                except OSError as err:
                    failures.append(err.errno)
        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(len(failures))
    """), secret_denied(str(secret)), trapped=OPENS, decision_keys=path_keys, timeout=300)
    assert run.stdout == b"0\n"
    assert len([r for r in run.audit if r["args"].get("path") == str(public)]) == 20000
    assert run.stats["fast_hits"] >= 19000


def test_failed_evaluation_is_not_repeated(files):
    """A denial because evaluation timed out is not reused: the next read is decided again."""
    public, _secret = files
    seen = []

    def flaky(call):
        seen.append(call.args.get("path"))
        if call.args.get("path") == str(public) and seen.count(str(public)) == 1:
            return deny("POLICY_EVAL_TIMEOUT", "evaluation exceeded its time")
        return Decision(Effect.PERMIT, rule_id="rest")
    run = run_sandboxed(agent(f"""
        results = []
        for _ in range(3):
            try:
                open({str(public)!r}).close()
                results.append("ok")
            except PermissionError:
                results.append("denied")
        print(results)
    """), flaky, trapped=OPENS, decision_keys=path_keys)
    assert run.stdout == b"['denied', 'ok', 'ok']\n"
    assert seen.count(str(public)) == 2


def test_chroot_is_refused(files, tmp_path):
    """chroot fails with EPERM (paths are decided as seen from the agent's root), and reads
    repeated in C before and after it still return the file the path names."""
    public, _secret = files
    run = run_sandboxed(agent(f"""
        import os
        for _ in range(10):
            assert open({str(public)!r}).read() == "public text"
        try:
            os.chroot({str(tmp_path)!r})
            print("chrooted")
        except PermissionError:
            print("refused", open({str(public)!r}).read())
    """), secret_denied("/nonexistent"), trapped=OPENS, decision_keys=path_keys)
    assert run.stdout == b"refused public text\n"
    assert run.stats["fast_hits"] >= 10


class FillingDisk:
    """A sink whose disk fills up after ``room`` records of ``path``; with ``batches`` it also
    takes batches (audit.many), a batch failing as a whole."""

    def __init__(self, path: str, room: int, batches: bool):
        self.path, self.room, self.written = path, room, []
        if batches:
            self.many = self._many

    def __call__(self, record):
        self._many([record])

    def _many(self, records):
        mine = [r for r in records if r["args"].get("path") == self.path]
        if mine and len(self.written) + len(mine) > self.room:
            raise OSError(28, "No space left on device")
        self.written += mine


@pytest.mark.parametrize("batches", [False, True])
def test_unwritable_records_stop_the_fast_path(files, batches):
    """Once a record of an answer given in C cannot be written, C answers nothing more: the
    next reads go to Python, which denies a permit it cannot record. With a sink taking
    records one by one or in batches."""
    public, _secret = files
    sink = FillingDisk(str(public), 3, batches)
    run = run_sandboxed(agent(f"""
        import time
        results = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                open({str(public)!r}).close()
                results.append("ok")
            except PermissionError:
                results.append("denied")
            time.sleep(0.001)
        first = results.index("denied")
        print(first > 0, set(results[first:]) == {{"denied"}})
    """), secret_denied("/nonexistent"), trapped=OPENS, decision_keys=path_keys, audit_sink=sink)
    assert run.stdout == b"True True\n"
    assert run.stats["audit_errors"] >= 1


def test_a_decision_python_cannot_record_stops_the_fast_path(files):
    """When Python cannot write a record of its own decision, C answers nothing more either: the
    reads after it are decided (and recorded) in Python again."""
    public, secret = files

    def sink(record):  # the disk is full exactly when the secret's denial is written
        if record["args"].get("path") == str(secret):
            raise OSError(28, "No space left on device")
    run = run_sandboxed(agent(f"""
        def read(path):
            try:
                open(path).close()
                return "ok"
            except PermissionError:
                return "denied"
        print([read({str(public)!r}) for _ in range(5)], read({str(secret)!r}),
              [read({str(public)!r}) for _ in range(5)])
    """), secret_denied(str(secret)), trapped=OPENS, decision_keys=path_keys, audit_sink=sink)
    assert run.stdout == b"['ok', 'ok', 'ok', 'ok', 'ok'] denied ['ok', 'ok', 'ok', 'ok', 'ok']\n"
    assert run.stats["fast_hits"] == 4  # the four repeats before the failed record; none after
