"""``faramesh-sandbox serve``: a service that keeps a sandbox made ahead for the next command.

`run` pays for Python's start, its imports and the sandbox's making before the agent's first
instruction. The service pays them ahead: it reads the policies once, and keeps a spare, a forked
runner that has already done everything `run` does before the command is known (the engine, the
audit, the approval service, the DNS stub, the egress, the SDK socket, the filter, the cgroup and
init waiting in its namespaces). The compiled client (launcher/_client) hands a command over
(launcher/serve_request.py); the spare takes it, releases init with it, and is replaced. Each
command still gets a sandbox, session and budgets of its own, as under `run`.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

from launcher import run, serve_request
from launcher.serve_request import Refused
from launcher.serve_spare import DONE, RETIRED, SPARE_MAX_AGE, TAKEN, spare, turn_away
from sandbox import _libc, _libc_ns
from sandbox.launch import EXIT_SETUP

CLIENT = Path(__file__).with_name("_client")
PER_RUN_OUTPUTS = ("report", "json", "fail_on_deny", "prompt_shared_terminal")  # options that need `run`
BACKOFF = (0.5, 30.0)  # a spare that failed to set up: the first wait, the longest
# The next spare is made when a run ends, or SPARE_DELAY after it began: making one takes both
# CPUs for tens of ms, and a short command should not share them with it.
SPARE_DELAY = 0.05
_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def default_socket() -> str:
    """The abstract name of this user's service (launcher/serve_request.py: why abstract)."""
    return f"faramesh-sandbox-{os.geteuid()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="NAME",
                        help=f"the abstract socket name clients connect to (default: $FARAMESH_SANDBOX_SOCKET, "
                             f"else {default_socket()} for this user)")
    parser.add_argument("--spare-max-age", type=_seconds, default=SPARE_MAX_AGE, metavar="SECONDS",
                        help=f"replace a sandbox made ahead that waited this long (default {SPARE_MAX_AGE:.0f}): "
                             "what it was made with (resolver, egress CA) is never older")
    run.add_arguments(parser)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main(args: argparse.Namespace) -> int:
    given = [name for name in PER_RUN_OUTPUTS if getattr(args, name)]
    if given or args.command:
        what = "command" if args.command else "--" + given[0].replace("_", "-")
        return run._fail(f"serve takes no {what}", "clients give commands: "
                         f"{CLIENT} -- CMD; per-run reports need `faramesh-sandbox run`")
    if not args.policy:
        return run._fail("no policy given", "pass --policy FILE")
    loaded = run.load_policies(args.policy)
    if isinstance(loaded, int):
        return loaded
    args.no_prompt = True  # no terminal is the run's: waiting calls are answered with `approvals`
    name = args.socket or os.environ.get("FARAMESH_SANDBOX_SOCKET") or default_socket()
    try:
        listener = _listen(name)
    except (OSError, ValueError) as err:
        return run._fail(f"cannot serve at @{name}: {getattr(err, 'strerror', None) or err}",
                         "stop the other service, or give --socket another name")
    print(f"faramesh-sandbox: serving {', '.join(args.policy)} at @{name}; run a command with: "
          f"{CLIENT} --socket {name} -- CMD", file=sys.stderr, flush=True)
    try:
        return _Service(args, listener, loaded).loop()
    finally:
        listener.close()


def _listen(name: str) -> socket.socket:
    """The abstract socket ``name`` in this network namespace (a sandbox's agents have their own)."""
    if not name or "/" in name or "\0" in name:
        raise ValueError("the name must be non-empty, without '/' or NUL (an abstract socket name, not a path)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(serve_request.address(name))
        raise ValueError("a service already answers there")
    except ConnectionRefusedError:
        pass
    finally:
        probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    serve_request.refuse_descriptors(listener)  # inherited by each connection until it is let in
    listener.bind(serve_request.address(name))
    listener.listen(64)
    return listener


class _Service:
    """Keeps one spare runner; a client that comes while none can be made is told so."""

    def __init__(self, args: argparse.Namespace, listener: socket.socket, loaded):
        self.args, self.listener, self.loaded = args, listener, loaded
        self.taken_read, self.taken_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.wake_read, self.wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.spare = 0  # its pid
        self.make_at = 0.0  # when to make the next spare (monotonic), while there is none
        self.failures = 0
        self.stopping = False
        self.pid = os.getpid()

    def loop(self) -> int:
        for signum in (*_STOP, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self.wake_write)
        while not self.stopping:
            self._hear_runners()
            if not self.spare and time.monotonic() >= self.make_at:
                self.spare = self._fork_spare()
            # no spare is coming soon (set-up failed): a client is told so rather than kept waiting
            failing = not self.spare and self.failures > 0
            watched = [self.taken_read, self.wake_read] + ([self.listener.fileno()] if failing else [])
            timeout = None if self.spare else max(0.0, self.make_at - time.monotonic())
            ready, _, _ = select.select(watched, [], [], timeout)
            _drain(self.wake_read)
            if self.listener.fileno() in ready:
                self._turn_away_one()
        self._hear_runners()  # a spare taken at the last moment is a client's run: it goes on
        if self.spare:  # blocked in accept(), its signals held for init: only SIGKILL ends it
            os.kill(self.spare, signal.SIGKILL)  # init dies with it; its reaper removes what it left
        return 0

    def _on_signal(self, signum, _frame) -> None:
        if signum in _STOP:
            self.stopping = True

    def _fork_spare(self) -> int:
        pid = os.fork()
        if pid:
            return pid
        status = EXIT_SETUP
        try:
            signal.set_wakeup_fd(-1)
            os.setsid()  # the service's terminal signals are not its runs'
            _libc.prctl(_libc_ns.PR_SET_PDEATHSIG, signal.SIGKILL)  # no spare outlives the service
            if os.getppid() != self.pid:
                return  # the service died before the line above
            for signum in (*_STOP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for fd in (self.taken_read, self.wake_read, self.wake_write):
                os.close(fd)
            status = spare(self.args, self.listener, self.taken_write, self.loaded)
        finally:
            os._exit(status)  # a child never returns into the service's loop

    def _hear_runners(self) -> None:
        """Which runners ended, then what they said (taken, done): read after the reaping, so a
        spare that ended taken has said so; one that ended untaken failed to set up."""
        ended = set()
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            ended.add(pid)
        said = _drain(self.taken_read)
        now = time.monotonic()
        if TAKEN in said:
            self.spare, self.failures = 0, 0  # a client's run now, however it ends
            self.make_at = now + SPARE_DELAY
        if DONE in said:
            self.make_at = min(self.make_at, now)
        if RETIRED in said:  # old, not failed: replaced at once (it no longer accepts)
            self.spare, self.make_at = 0, now
        if self.spare in ended:
            self.spare = 0
            self.failures += 1
            self.make_at = now + min(BACKOFF[1], BACKOFF[0] * 2 ** (self.failures - 1))

    def _turn_away_one(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            command = serve_request.take(conn)
        except Refused as refused:
            turn_away(conn, refused)
            return
        except Exception as err:  # noqa: BLE001 - one client's request never ends the service
            turn_away(conn, Refused(f"a request that failed: {type(err).__name__}", serve_request.CLIENT_HINT))
            return
        for fd in command.stdio:
            os.close(fd)
        turn_away(conn, Refused("the service cannot set a sandbox up now (its output says why)",
                                "see the service's stderr; it retries on its own"))


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk
