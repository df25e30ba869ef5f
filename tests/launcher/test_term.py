"""Terminal output: colour only where it belongs, aligned tables, the live status line of `run`,
and the --quiet, --color and --json options every command takes."""

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from launcher import term
from tests.launcher.test_approvals_control import ask_async, cli, rundir, service  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]
POLICY = 'agent a {\n  default permit\n  rules {\n    deny fs/read when args.path == "/etc/shadow"\n  }\n}\n'
HELD_POLICY = 'agent a {\n  default permit\n  rules {\n    defer fs/write when args.path startsWith "/tmp/held"\n  }\n}\n'


@pytest.fixture(autouse=True)
def default_settings():
    yield
    term.configure("auto", False)


@pytest.fixture
def terminal():
    """A real pseudo-terminal, 24 rows by 80 columns: (controller fd, terminal fd)."""
    controller, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    yield controller, tty
    os.close(controller)
    os.close(tty)


def read_all(fd: int, until: float) -> bytes:
    out = b""
    while time.monotonic() < until and select.select([fd], [], [], max(0.0, until - time.monotonic()))[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every copy of the terminal side is closed
            break
        if not chunk:
            break
        out += chunk
    return out


def test_colour_only_on_a_terminal_without_no_color(terminal, monkeypatch):
    """auto colours a tty, not a pipe, and not a tty when NO_COLOR is set; always/never override."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    with open(terminal[1], "w", closefd=False) as tty, open(os.devnull, "w") as pipe:
        assert (term.paint("DENY", "DENY", tty), term.paint("DENY", "DENY", pipe)) == ("\x1b[31mDENY\x1b[0m", "DENY")
        monkeypatch.setenv("NO_COLOR", "1")
        assert term.paint("DENY", "DENY", tty) == "DENY"
        term.configure("always")
        assert term.paint("ok", "ok", pipe) == "\x1b[32mok\x1b[0m"
        monkeypatch.delenv("NO_COLOR")
        term.configure("never")
        assert term.paint("ok", "ok", tty) == "ok"


def test_table_aligns_on_visible_width_when_coloured():
    """Colour is added after padding: the columns line up as they do without it."""
    rows = [["TOOL", "EFFECT", "RULE"], ["fs/read", "PERMIT", ""], ["shell/exec", "DENY", "fpl-0"]]
    assert term.table(rows) == ["TOOL        EFFECT  RULE", "fs/read     PERMIT", "shell/exec  DENY    fpl-0"]
    term.configure("always")
    assert term.table(rows, {1: lambda cell: cell}) == [
        "\x1b[1mTOOL      \x1b[0m  \x1b[1mEFFECT\x1b[0m  \x1b[1mRULE\x1b[0m",
        "fs/read     \x1b[32mPERMIT\x1b[0m",
        "shell/exec  \x1b[31mDENY  \x1b[0m  fpl-0"]


def test_a_tee_passes_a_batch_on_whole_and_counts_each_record():
    """The records of calls answered in compiled code come as a batch: a tee over a sink that
    takes batches hands it the batch in one call (one commit), over one that does not, record by
    record; either way each record is counted, and counted after it was written."""
    class BatchSink(list):
        def many(self, records):
            self.append(list(records))

    for sink, written in ((BatchSink(), [[{"effect": "PERMIT"}, {"effect": "DENY"}]]),
                          ([], [{"effect": "PERMIT"}, {"effect": "DENY"}])):
        counter = term.DecisionCounter()
        trail = counter.tee(sink if isinstance(sink, BatchSink) else sink.append)
        trail.many([{"effect": "PERMIT"}, {"effect": "DENY"}])
        assert sink == written
        assert counter.snapshot() == (1, 1, 0)
    failing = term.DecisionCounter()

    def full(record):
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        failing.tee(full).many([{"effect": "PERMIT"}])
    assert failing.snapshot() == (0, 0, 0)


def test_decision_counter_counts_decisions_and_calls_held_for_approval():
    """Decision records count once each; a call is waiting while the wrapped approver holds it."""
    counter = term.DecisionCounter()
    seen = []
    trail = counter.tee(seen.append)
    for record in ({"effect": "PERMIT"}, {"kind": "decision", "effect": "DENY"},
                   {"kind": "expiry", "effect": "DENY", "reason_code": "APPROVAL_EXPIRED"}):
        trail(record)
    assert (counter.snapshot(), len(seen)) == ((1, 1, 0), 3)

    class Approver:
        def __init__(self):
            self.release = threading.Event()

        def answer(self, call, decision, timeout):
            self.release.wait(5)
            return ("answered", call, decision, timeout)

        def __call__(self, call, decision, timeout):
            self.release.wait(5)
            return True

    approver = Approver()
    wrapped = counter.approvals(approver)
    results = []
    threads = [threading.Thread(target=lambda: results.append(wrapped.answer("c", "d", 1.0))),
               threading.Thread(target=lambda: results.append(wrapped("c", "d", 1.0)))]
    for thread in threads:
        thread.start()
    for _ in range(100):
        if counter.snapshot()[2] == 2:
            break
        time.sleep(0.01)
    held = counter.snapshot()
    approver.release.set()
    for thread in threads:
        thread.join()
    assert (held, counter.snapshot(), sorted(results, key=str)) == \
        ((1, 1, 2), (1, 1, 0), [("answered", "c", "d", 1.0), True])


def test_status_line_keeps_the_bottom_row_and_gives_it_back(terminal):
    """The line is drawn on row 24 outside a 1..23 scrolling region, then erased and the region reset."""
    controller, tty = terminal
    term.configure("never")
    counter = term.DecisionCounter()
    line = term.StatusLine(counter, tty)
    counter.observe({"effect": "PERMIT"})
    counter.observe({"effect": "DENY"})
    line.start()
    time.sleep(0.1)
    line.stop()
    out = read_all(controller, time.monotonic() + 0.5).decode()
    assert out == ("\r\n\x1b[1A\x1b7\x1b[1;23r\x1b8"
                   "\x1b7\x1b[24;1H\x1b[2Kfaramesh-sandbox: 1 permitted, 1 denied, 0 waiting for approval\x1b8"
                   "\x1b7\x1b[24;1H\x1b[2K\x1b[r\x1b8")


def test_status_line_is_wanted_only_on_a_terminal_and_not_when_quiet(terminal, monkeypatch):
    """stderr a tty with a real TERM: yes; a pipe, TERM=dumb or --quiet: no."""
    monkeypatch.setenv("TERM", "xterm")
    with open(terminal[1], "w", closefd=False) as tty, open(os.devnull, "w") as pipe:
        assert (term.StatusLine.wanted(tty), term.StatusLine.wanted(pipe)) == (True, False)
        monkeypatch.setenv("TERM", "dumb")
        assert term.StatusLine.wanted(tty) is False
        monkeypatch.setenv("TERM", "xterm")
        term.configure(quiet=True)
        assert term.StatusLine.wanted(tty) is False


def test_run_on_a_terminal_shows_live_counts_and_erases_them(terminal, tmp_path):
    """`run` on a terminal shows a call held for approval, then its denial, and resets the region at the agent's exit."""
    controller, tty = terminal
    policy = tmp_path / "p.fpl"
    policy.write_text(HELD_POLICY)
    agent = ("import time\ntry:\n    open('/tmp/held-by-status-test', 'w')\nexcept OSError as err:\n"
             "    print('refused', err.errno)\ntime.sleep(0.3)\nprint('agent done')")
    env = {**os.environ, "TERM": "xterm", "PYTHONPATH": str(ROOT)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run", "--policy", str(policy), "--no-audit-db",
                             "--no-prompt", "--approve-timeout", "1", "--", sys.executable, "-c", agent],
                            stdin=subprocess.DEVNULL, stdout=tty, stderr=tty, env=env, cwd=tmp_path)
    out, deadline = b"", time.monotonic() + 20
    while time.monotonic() < deadline:  # until the launcher has exited and its output is read
        if select.select([controller], [], [], 0.1)[0]:
            out += os.read(controller, 65536)
        elif proc.poll() is not None:
            break
    assert proc.wait(timeout=5) == 0
    text = out.decode()
    drawn = text.index("\x1b7\x1b[24;1H\x1b[2Kfaramesh-sandbox: \x1b[32m")
    assert "permitted, \x1b[31m0\x1b[0m denied, \x1b[33m1\x1b[0m waiting for approval\x1b8" in text[drawn:]
    assert "permitted, \x1b[31m1\x1b[0m denied, \x1b[33m0\x1b[0m waiting for approval\x1b8" in text[drawn:]
    assert "refused 13" in text
    assert text.index("agent done") < text.index("\x1b[r\x1b8") == len(text) - len("\x1b[r\x1b8")


def test_quiet_prints_nothing_unless_json_is_asked_for(tmp_path):
    """--quiet before or after the command silences stdout; with --json the JSON still comes out."""
    def init(*args):
        return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    quiet = init("--quiet", "init", "-o", "a.fpl")
    after = init("init", "-o", "b.fpl", "--quiet")
    as_json = init("init", "-o", "c.fpl", "--quiet", "--json")
    check = init("--color", "never", "policy", "check", "a.fpl", "--quiet")
    assert [(r.returncode, r.stdout, r.stderr) for r in (quiet, after, check)] == [(0, "", "")] * 3
    assert json.loads(as_json.stdout) == {"written": "c.fpl", "template": "coding-agent"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fpl", "b.fpl", "c.fpl"]


def test_approvals_list_prints_an_aligned_table(rundir, service):  # noqa: F811 - fixtures
    """`approvals list` shows a heading and one aligned row per waiting call."""
    audit: list = []
    thread, _ = ask_async(service, audit)
    try:
        for _ in range(100):
            listed = cli(rundir, "list")
            if "fs/write" in listed.stdout:
                break
            time.sleep(0.05)
        lines = listed.stdout.splitlines()
        approval_id = lines[1].split()[0]
        assert lines[0].split() == ["ID", "TOOL", "ORIGIN", "ARGUMENTS", "RULE", "EXPIRES"]
        assert [lines[0].index(word) for word in ("TOOL", "ORIGIN", "ARGUMENTS", "RULE", "EXPIRES")] == \
            [lines[1].index(cell) for cell in ("fs/write", "sandbox", '{"path": "/tmp/x/a"', "fpl-0", "in ")]
        assert lines[1].startswith(f"{approval_id}  fs/write  sandbox  ")
    finally:
        cli(rundir, "deny", approval_id)
        thread.join()


def test_run_json_prints_the_summary_on_stderr(tmp_path):
    """`run --json` leaves stdout to the agent and ends stderr with the run's summary as one JSON line."""
    policy = tmp_path / "p.fpl"
    policy.write_text(POLICY)
    done = subprocess.run([sys.executable, "-m", "launcher", "run", "--policy", str(policy), "--no-audit-db",
                           "--json", "--", "cat", "/etc/shadow"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)
    summary = json.loads(done.stderr.splitlines()[-1])
    assert (done.returncode, done.stdout, summary["exit_status"], summary["command"]) == \
        (1, "", 1, ["cat", "/etc/shadow"])
    assert summary["decisions"]["DENY"] == 1 and summary["decisions"]["PERMIT"] > 0
    assert [(v["tool"], v["args"]["path"]) for v in summary["violations"]] == [("fs/read", "/etc/shadow")]
