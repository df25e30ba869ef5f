"""A spare of ``faramesh-sandbox serve``: a runner that has done all of `run`'s set-up and waits
in its sandbox's release (sandbox/launch.py ``late``) for a client's command, then speaks for
that run: the client's stdio, signals, end and exit status (launcher/serve.py keeps one ready)."""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import select
import signal
import socket
import sys
import threading
import time

from launcher import run, serve_request
from launcher.serve_request import Refused
from sandbox import _libc, _libc_ns
from sandbox.launch import EXIT_SETUP

# What a runner tells the service: a client took it, its run ended, or it retired untaken
# (launcher/serve.py).
TAKEN, DONE, RETIRED = b"t", b"d", b"r"
# A spare waits this long at most (serve --spare-max-age): what it was made with (the host's
# resolver, the egress's CA, notification settings) is never older than that when a command gets it.
SPARE_MAX_AGE = 600.0


class Retired(Exception):
    """A spare that waited SPARE_MAX_AGE for a client: it ends, and the service makes a fresh one."""


def _readable(listener: socket.socket, timeout: float) -> bool:
    return bool(select.select([listener], [], [], max(0.0, timeout))[0])


def _tell(taken: int, what: bytes) -> None:
    try:
        os.write(taken, what)
    except OSError:
        pass  # the service is gone: a run goes on without it


class ClientCommand:
    """launch()'s ``late`` in a spare: waits for a client, then speaks for its run."""

    def __init__(self, listener: socket.socket, taken: int, max_age: float = SPARE_MAX_AGE):
        self.listener, self.taken, self.max_age = listener, taken, max_age
        self.conn: socket.socket | None = None
        self.pidfd: int | None = None
        self.finished = threading.Event()
        self.own_stdio: list[int] = []  # the service's stdio, back in place once the client has its status
        self.set_up_lines: _SetUpLines | None = None

    def wait(self, init_pid: int):
        """The next client's command. Inside launch() (``init_pid`` given) the relay starts here,
        its signals blocked as launch() blocked them; before it, run.main starts it (start_relay)
        once the sandbox exists: launch() refuses to clone with a second thread running."""
        retire_at = time.monotonic() + self.max_age
        while True:
            if not _readable(self.listener, retire_at - time.monotonic()):
                _tell(self.taken, RETIRED)
                raise Retired()
            conn, _ = self.listener.accept()
            try:
                command = serve_request.take(conn)
                break
            except Refused as refused:
                turn_away(conn, refused)
            except Exception as err:  # noqa: BLE001 - one client's request never ends the spare
                turn_away(conn, Refused(f"a request that failed: {type(err).__name__}", serve_request.CLIENT_HINT))
        _libc.prctl(_libc_ns.PR_SET_PDEATHSIG, 0)  # a client's run now: it ends with its client, not the service
        _tell(self.taken, TAKEN)
        self.listener.close()
        sys.stdout.flush()
        sys.stderr.flush()
        self.own_stdio = [fcntl.fcntl(number, fcntl.F_DUPFD_CLOEXEC, 3) for number in range(3)]
        for number, fd in enumerate(command.stdio):  # this run's own messages reach the client too
            os.dup2(fd, number)
            os.close(fd)
        command.stdio = (0, 1, 2)
        if self.set_up_lines is not None:  # from here on stderr is the client's: it reads them too
            sys.stderr = self.set_up_lines.through
            sys.stderr.write("".join(self.set_up_lines.kept))
            sys.stderr.flush()
        self.conn = conn
        if init_pid:
            self.pidfd = os.pidfd_open(init_pid)
            self.start_relay()
        return command

    def start_relay(self) -> None:
        threading.Thread(target=self._relay, name="faramesh-client", daemon=True).start()

    def _relay(self) -> None:
        """The client's signals, passed on as the terminal's would be (launch() forwards them);
        the client's end ends the run."""
        while True:
            try:
                message = self.conn.recv(64)
            except OSError:
                message = b""
            if self.finished.is_set():
                return
            if not message:
                break
            signum = serve_request.signal_of(message)
            if signum is not None:
                os.kill(os.getpid(), signum)
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)  # init's death takes the sandbox along
            except ProcessLookupError:
                pass  # init ended on its own meanwhile
        else:
            os.kill(os.getpid(), signal.SIGKILL)  # init unknown here: this runner's death ends it all

    def ended(self, status: int) -> None:
        """The status, to the client (once); the rest of the run is closed after it."""
        if self.conn is None or self.finished.is_set():
            return
        self.finished.set()
        sys.stdout.flush()
        sys.stderr.flush()
        for number, fd in enumerate(self.own_stdio):  # the client's pipes end with it, not with the clean-up
            os.dup2(fd, number)
            os.close(fd)
        serve_request.send_exit(self.conn, status)
        _tell(self.taken, DONE)
        try:
            self.conn.shutdown(socket.SHUT_RDWR)  # wakes the relay, which sees the run finished
        except OSError:
            pass


def turn_away(conn: socket.socket, refused: Refused) -> None:
    serve_request.tell(conn, refused.text, refused.hint)
    serve_request.send_exit(conn, EXIT_SETUP)
    serve_request.discard_pending(conn)  # closed with a message unread, the client would get a reset first
    conn.close()


class _SetUpLines(io.TextIOBase):
    """The spare's stderr while it sets up: written through to the service's, and kept, so the
    client whose run they concern reads them too (an audit store the agent can reach, a secret
    that is missing)."""

    def __init__(self, through):
        self.through, self.kept = through, []

    def write(self, text: str) -> int:
        self.kept.append(text)
        return self.through.write(text)

    def flush(self) -> None:
        self.through.flush()


def spare(args: argparse.Namespace, listener: socket.socket, taken: int, loaded) -> int:
    """A runner's life: the run's set-up, a client's command, its status."""
    late = ClientCommand(listener, taken, args.spare_max_age)
    late.set_up_lines = sys.stderr = _SetUpLines(sys.stderr)
    status = EXIT_SETUP
    try:
        status = run.main(args, late=late, loaded=loaded)
    except Retired:
        return 0  # launch() took its sandbox down on the way out
    finally:
        late.ended(status)
    return status
