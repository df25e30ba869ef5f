"""Terminal output: colour, aligned tables, and the status line `run` keeps while an agent runs.

Colour is used only on a terminal and only when NO_COLOR is unset (https://no-color.org), unless
``--color always|never`` says otherwise. Nothing here changes what is printed to a pipe or a file.
"""

from __future__ import annotations

import collections
import os
import sys
import threading

from launcher.report import RunReport

COLOR_MODES = ("auto", "always", "never")
RESET = "\x1b[0m"
# what a word means -> SGR code; effects as decisions and tables print them
STYLES = {
    "PERMIT": "32", "DENY": "31", "DEFER": "33",
    "ok": "32", "error": "1;31", "warning": "33", "heading": "1", "dim": "2",
}
REDRAW_SECONDS = 0.25  # the status line is redrawn at most four times a second
_settings = {"color": "auto", "quiet": False}


def configure(color: str = "auto", quiet: bool = False) -> None:
    """Set the global ``--color`` and ``--quiet`` choices (the command line calls this once)."""
    if color not in COLOR_MODES:
        raise ValueError(f"--color {color!r}: choose one of {', '.join(COLOR_MODES)}")
    _settings.update(color=color, quiet=quiet)


def quiet() -> bool:
    return _settings["quiet"]


def color_enabled(stream=None) -> bool:
    """Whether text for ``stream`` (default stdout) gets colour."""
    mode = _settings["color"]
    if mode != "auto":
        return mode == "always"
    if os.environ.get("NO_COLOR"):
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return False


def paint(text: str, style: str | None, stream=None) -> str:
    """``text`` in the colour ``style`` names (a key of STYLES), or as it is."""
    code = STYLES.get(style or "")
    if code is None or not text or not color_enabled(stream):
        return text
    return f"\x1b[{code}m{text}{RESET}"


def table(rows: list[list[str]], styles: dict[int, callable] | None = None, stream=None) -> list[str]:
    """Rows as aligned lines (two spaces between columns); the first row is the heading.
    ``styles`` maps a column index to ``cell -> style``; colour is added after padding, so the
    escape codes never upset the alignment."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    lines = []
    for number, row in enumerate(rows):
        cells = []
        for index, (cell, width) in enumerate(zip(row, widths)):
            padded = cell.ljust(width) if index < len(row) - 1 else cell
            style = "heading" if number == 0 else (styles or {}).get(index, lambda _: None)(cell)
            cells.append(paint(padded, style, stream) if cell else padded)
        lines.append("  ".join(cells).rstrip())
    return lines


class DecisionCounter:
    """Counts the run's decisions as audit records go by (``tee``, as the run report does), and
    the calls waiting for a human as they pass through the approver (``approvals``)."""

    tee = RunReport.tee  # record with the real trail first, then observe()

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def observe(self, record: dict) -> None:
        if (record.get("kind") or "decision") != "decision":
            return  # the approval service's own records: the call's outcome is its decision record
        effect = getattr(record.get("effect"), "value", record.get("effect"))
        with self._lock:
            self.counts[effect] += 1

    def approvals(self, approver):
        """``approver`` (the supervisor's approve callable), counting the calls it holds."""
        return _CountingApprover(approver, self)

    def _waiting(self, change: int) -> None:
        with self._lock:
            self.counts["waiting"] += change

    def snapshot(self) -> tuple[int, int, int]:
        """(permitted, denied, waiting for approval)."""
        with self._lock:
            return self.counts["PERMIT"], self.counts["DENY"], self.counts["waiting"]


class _CountingApprover:
    """Answers exactly as the approver it wraps (``answer`` and the plain call), counting the
    calls waiting in it."""

    def __init__(self, approver, counter: DecisionCounter):
        self._approver, self._counter = approver, counter

    def answer(self, call, decision, timeout: float):
        self._counter._waiting(+1)
        try:
            return self._approver.answer(call, decision, timeout)
        finally:
            self._counter._waiting(-1)

    def __call__(self, call, decision, timeout: float) -> bool:
        self._counter._waiting(+1)
        try:
            return self._approver(call, decision, timeout)
        finally:
            self._counter._waiting(-1)


class StatusLine:
    """One line at the bottom of the terminal, redrawn in place from a thread while the agent runs:
    ``faramesh-sandbox: 12 permitted, 1 denied, 0 waiting for approval``.

    The terminal's scrolling region is narrowed by one row, and the line is drawn on that last row
    with the cursor saved and restored in the same write(). So the agent's output and the approval
    prompt scroll above it, and the line never lands in the middle of theirs (\r alone would leave
    half-overwritten lines in the agent's output)."""

    def __init__(self, counter: DecisionCounter, fd: int):
        self.counter, self.fd = counter, fd
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown, self._rows = "", 0

    @classmethod
    def wanted(cls, stream=None) -> bool:
        """A terminal that takes a redrawn line: stderr is a tty, not --quiet, TERM is not dumb."""
        stream = sys.stderr if stream is None else stream
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        return tty and not quiet() and os.environ.get("TERM", "") not in ("", "dumb")

    def text(self) -> str:
        permitted, denied, waiting = self.counter.snapshot()
        out = _Fd(self.fd)
        return (f"faramesh-sandbox: {paint(str(permitted), 'PERMIT', out)} permitted, "
                f"{paint(str(denied), 'DENY', out)} denied, {paint(str(waiting), 'DEFER', out)} waiting for approval")

    def start(self) -> None:
        """Begin redrawing; call from launch()'s ``started`` hook (threads are allowed from then on)."""
        drawing = threading.Thread(target=self._loop, name="status-line", daemon=True)
        drawing.start()  # kept only once running: stop() after a failed start joins nothing
        self._thread = drawing

    def stop(self) -> None:
        """Stop, erase the line and give the terminal its whole height back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._rows:  # save; bottom row; erase it; whole-screen region (homes the cursor); restore
            self._write(f"\x1b7\x1b[{self._rows};1H\x1b[2K\x1b[r\x1b8")
            self._rows = 0

    def _loop(self) -> None:
        while True:
            self._draw()
            if self._stop.wait(REDRAW_SECONDS):
                return

    def _draw(self) -> None:
        try:
            rows = os.get_terminal_size(self.fd).lines
        except OSError:
            return
        if rows < 3:
            return  # no row to spare
        if rows != self._rows:  # first draw or a resize: keep the last row out of the scrolling region
            reserve = "\n\x1b[1A" if not self._rows else ""  # scrolls first when the cursor is on that row
            self._write(f"{reserve}\x1b7\x1b[1;{rows - 1}r\x1b8")
            self._rows, self._shown = rows, ""
        text = self.text()
        if text != self._shown:
            self._write(f"\x1b7\x1b[{rows};1H\x1b[2K{text}\x1b8")
            self._shown = text

    def _write(self, sequence: str) -> None:
        try:
            os.write(self.fd, sequence.encode())  # one write: never split by the agent's or prompt's output
        except OSError:
            pass  # the terminal went away: nothing to show the line on


class _Fd:
    """A stream-like view of a descriptor, for color_enabled()."""

    def __init__(self, fd: int):
        self.fd = fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)
