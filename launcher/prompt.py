"""The terminal prompt: pending approvals asked one at a time on the launcher's terminal.

It opens /dev/tty (the launcher's controlling terminal), never the agent's stdin, and only exists
when there is such a terminal. An approval answered elsewhere (control socket) while it is shown is
dropped from the prompt, with whatever was typed for it.
"""

from __future__ import annotations

import errno
import json
import os
import select
import termios
import threading
import time

from launcher.approvals import ORIGINS, ApprovalError, Broker

POLL = 1.0  # seconds between checks that the approval shown is still pending (events wake it sooner)
BACKGROUND_WAIT = 1.0
# typed answer -> (approve, scope)
CHOICES = {
    "a": (True, "once"),
    "s": (True, "session"),
    "d": (False, "once"),
    "n": (False, "session"),
}
QUESTION = "  approve [a] once, [s] for this session; deny [d] once, [n] for this session? "


def start(broker: Broker, ask: bool = True) -> bool:
    """Prompt on the controlling terminal from a thread of its own (``ask``), or only announce
    each waiting call there (Notices); False when there is no terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False  # no controlling terminal: answers come through the control socket only
    shown = TerminalPrompt(broker, fd) if ask else Notices(broker, fd)
    threading.Thread(target=shown.run, name="approval-prompt", daemon=True).start()
    return True


def agent_shares_terminal(fds=(0, 1, 2)) -> bool:
    """Whether the agent, given these descriptors, writes to the controlling terminal: it could
    then draw over a question (move the cursor up, paint another call) and have the wrong call
    approved, so approvals are announced there, not asked (docs/approvals.md)."""
    terminal = controlling_terminal()
    if terminal is None:
        return False
    for fd in fds:
        try:
            # /dev/tty (5, 0) opened by the caller (`run -- agent > /dev/tty`) is the controlling terminal
            if os.isatty(fd) and _device(os.fstat(fd).st_rdev) in (terminal, DEV_TTY):
                return True
        except OSError:
            continue
    return False


DEV_TTY = (5, 0)


def controlling_terminal() -> tuple[int, int] | None:
    """(major, minor) of this process's controlling terminal (/proc/self/stat tty_nr; a stat of
    /dev/tty names /dev/tty itself), or None."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            tty_nr = int(stat.read().rsplit(b")", 1)[1].split()[4])
    except (OSError, ValueError, IndexError):
        return None
    if tty_nr == 0:
        return None
    return (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)


def _device(rdev: int) -> tuple[int, int]:
    return os.major(rdev), os.minor(rdev)


def notice(view: dict) -> str:
    session = view["session"]
    return (f"\nfaramesh-sandbox: approval {view['id']} waits ({view['tool']}). The agent writes to this "
            f"terminal, so it is not asked here: from another terminal run\n"
            f"  faramesh-sandbox approvals show {view['id']} --session {session}\n")


class Notices:
    """One line per waiting call on a terminal the agent also writes to; the answer comes from
    another terminal (`approvals`), the web page or a notification channel, where the agent
    cannot draw."""

    def __init__(self, broker: Broker, fd: int):
        self.broker, self.fd = broker, fd

    def run(self) -> None:
        events = self.broker.watch()
        try:
            while True:
                kind, view = events.get()
                if kind == "pending":
                    os.write(self.fd, notice(view).encode(errors="replace"))
        except OSError:
            return  # the terminal is gone: the control socket still answers
        finally:
            self.broker.unwatch(events)


def origin_text(view: dict) -> str:
    """``sdk (reported by the agent ...)``: a person must know whether the sandbox saw the call."""
    origin = view.get("origin", "")
    return f"{origin} ({ORIGINS[origin]})" if origin in ORIGINS else f"unknown ({origin!r})"


def describe(view: dict) -> str:
    args = {k: v for k, v in view["args"].items() if k != "session"}
    seconds = max(0, round(view["expires_at"] - time.time()))
    status = f"waits, expires in {seconds}s" if view["state"] == "pending" else f"is {view['state']}"
    lines = [
        f"\nfaramesh-sandbox: approval {view['id']} (session {view['session']}) {status}",
        f"  tool:   {view['tool']}",
        f"  origin: {origin_text(view)}",
        # ASCII only: a file name with escape sequences or bidi overrides cannot disguise itself.
        f"  args:   {json.dumps(args, default=str)}",
        f"  rule:   {view['rule_id'] or '(default)'}",
        f"  reason: {view['reason']}",
    ]
    return "\n".join(lines) + "\n"


class TerminalPrompt:
    def __init__(self, broker: Broker, fd: int):
        self.broker = broker
        self.fd = fd
        self.approver = "tty " + _tty_name(fd)
        self._typed = b""
        # Broker events wake the prompt at once (an answer from the socket ends the question).
        self._wake, self._waker = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def run(self) -> None:
        events = self.broker.watch()
        threading.Thread(target=self._forward, args=(events,), name="approval-prompt-wake", daemon=True).start()
        try:
            while True:
                pending = self.broker.list()
                if not pending:
                    select.select([self._wake], [], [])  # sleep until something happens
                    self._drain()
                    continue
                if not self._ask(pending[0]["id"]):
                    return  # the terminal is gone (EOF): the control socket still answers
        except OSError:
            return
        finally:
            self.broker.unwatch(events)

    def _ask(self, approval_id: str) -> bool:
        """Ask about one approval until it is answered here or elsewhere; False on terminal EOF."""
        others = len(self.broker.list()) - 1
        self._write(describe(self.broker.show(approval_id)) + (f"  ({others} more waiting)\n" if others > 0 else ""))
        while True:
            self._write(QUESTION)
            line = self._read_line(approval_id)
            if line is None:
                state = self.broker.show(approval_id)["state"]
                self._write(f"\n  approval {approval_id} is {state} (answered elsewhere)\n")
                termios.tcflush(self.fd, termios.TCIFLUSH)  # what was typed was for that one
                self._typed = b""
                return True
            if line == b"":
                return False
            choice = CHOICES.get(line.strip().decode(errors="replace").lower())
            if choice is None:
                self._write("  please type a, s, d or n and Enter\n")
                continue
            approve, scope = choice
            try:
                view = self.broker.resolve(approval_id, approve, scope, self.approver)
            except ApprovalError as err:
                self._write(f"  {err}\n")
                return True
            self._write(f"  {view['state']} ({scope})\n")
            return True

    def _read_line(self, approval_id: str) -> bytes | None:
        """One typed line (b"" at EOF), or None once the approval is no longer pending."""
        while b"\n" not in self._typed:
            if self.broker.show(approval_id)["state"] != "pending":
                return None
            ready = select.select([self.fd, self._wake], [], [], POLL)[0]
            if self._wake in ready:
                self._drain()
            if self.fd in ready:
                try:
                    chunk = os.read(self.fd, 1024)
                except OSError as err:
                    if err.errno != errno.EIO:
                        raise
                    time.sleep(BACKGROUND_WAIT)  # the run is in the background: wait for fg
                    continue
                if not chunk:
                    return b""
                self._typed += chunk
        line, self._typed = self._typed.split(b"\n", 1)
        return line

    def _forward(self, events) -> None:
        while True:
            events.get()
            try:
                os.write(self._waker, b"!")
            except BlockingIOError:
                pass  # already awake

    def _drain(self) -> None:
        try:
            while os.read(self._wake, 4096):
                pass
        except BlockingIOError:
            pass

    def _write(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode(errors="replace"))
        except OSError as err:
            if err.errno != errno.EIO:  # EIO: in the background with tostop; the socket still answers
                raise


def _tty_name(fd: int) -> str:
    """The terminal's own name for the audit record (/dev/tty names whichever is controlling)."""
    for std in (0, 2, 1, fd):
        try:
            if os.isatty(std) and os.ttyname(std) != "/dev/tty":
                return os.ttyname(std)
        except OSError:
            continue
    return "/dev/tty"
