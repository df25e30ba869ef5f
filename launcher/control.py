"""The control socket: JSON lines over a unix socket, one per run, for answering approvals;
and the main loop of the approval service process that serves it.

Location: $FARAMESH_SANDBOX_RUNTIME_DIR if set, else /run/faramesh-sandbox as root, else
$XDG_RUNTIME_DIR/faramesh-sandbox (else /tmp/faramesh-sandbox-UID); the directory is 0700 and
the socket ``<session>.sock`` 0600.
The sandbox never sees the directory (a tmpfs covers it in the agent's mount namespace) and the
agent's network namespace keeps host abstract sockets out of reach. Every connection is checked
with SO_PEERCRED: only the launcher's own uid, or root. Protocol: docs/approvals.md.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import stat
import struct
import threading
import time
from typing import Iterator

from launcher import notify
from launcher import prompt as terminal
from launcher.approvals import MAX_REQUEST, READY, ApprovalError, Broker, Pending

SUFFIX = ".sock"
MAX_LINE = 64 * 1024
CLIENT_TIMEOUT = 10.0
TRANSIENT_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED)
ACCEPT_BACKOFF = 0.05


class ControlError(Exception):
    """The control socket cannot be set up or reached; the message has the fix."""


# -- location ---------------------------------------------------------------------------------

def runtime_dir() -> str:
    explicit = os.environ.get("FARAMESH_SANDBOX_RUNTIME_DIR")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "/run/faramesh-sandbox"
    base = os.environ.get("XDG_RUNTIME_DIR")
    try:
        if base and os.stat(base).st_uid == os.geteuid():
            return os.path.join(base, "faramesh-sandbox")
    except OSError:
        pass
    # No runtime directory of our own (a container, su): a per-user one in /tmp, checked by
    # private_dir() to be ours and 0700 before anything is put there.
    return f"/tmp/faramesh-sandbox-{os.geteuid()}"


def private_dir(path: str) -> str:
    """Create (or check) a directory only we can enter: ours, mode 0700, not a symlink."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as err:
        raise ControlError(f"cannot create {path}: {err.strerror} — check its parent's permissions") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ControlError(f"{path} is not a directory owned by uid {os.geteuid()} — remove it and retry")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def socket_path(directory: str, session: str) -> str:
    return os.path.join(directory, session + SUFFIX)


def live_sessions(directory: str | None = None) -> list[str]:
    """Sessions with a socket file (a run killed by SIGKILL can leave one behind: see request())."""
    directory = directory or runtime_dir()
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n[:-len(SUFFIX)] for n in names if n.endswith(SUFFIX))


# -- server -----------------------------------------------------------------------------------

def peer_uid(conn: socket.socket) -> tuple[int, int]:
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    return pid, uid


class ControlServer:
    """Serves one broker on ``<dir>/<session>.sock`` from a thread per connection."""

    def __init__(self, broker: Broker, directory: str):
        self.broker = broker
        self.path = socket_path(private_dir(directory), broker.session_id)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            if os.path.exists(self.path):
                os.unlink(self.path)
            self._sock.bind(self.path)
        except OSError as err:
            self._sock.close()
            raise ControlError(f"cannot bind {self.path}: {err.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._sock.listen(16)
        self._stopping = threading.Event()
        threading.Thread(target=self._accept, name="control-accept", daemon=True).start()

    def close(self) -> None:
        self._stopping.set()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError as err:
                if err.errno in TRANSIENT_ACCEPT_ERRORS and not self._stopping.is_set():
                    time.sleep(ACCEPT_BACKOFF)  # out of descriptors or memory for now: approvals must go on
                    continue
                return
            threading.Thread(target=self._serve, args=(conn,), name="control-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._converse(conn)
        except OSError:
            pass  # the client went away mid-answer

    def _converse(self, conn: socket.socket) -> None:
        pid, uid = peer_uid(conn)
        stream = conn.makefile("rwb")
        if uid not in (0, os.geteuid()):
            _send(stream, {"ok": False, "error": f"uid {uid} may not answer approvals of uid {os.geteuid()}"})
            return
        approver = f"socket uid={uid} pid={pid}"
        for line in iter(lambda: stream.readline(MAX_LINE), b""):
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
            except ValueError as err:
                _send(stream, {"ok": False, "error": f"bad request: {err}"})
                continue
            if request.get("op") == "watch":
                self._watch(stream)
                return
            _send(stream, self._answer(request, approver))

    def _answer(self, request: dict, approver: str) -> dict:
        op = request.get("op")
        try:
            if op == "list":
                return {"ok": True, "session": self.broker.session_id, "pending": self.broker.list()}
            if op == "show":
                return {"ok": True, "approval": self.broker.show(str(request.get("id", "")))}
            if op in ("approve", "deny"):
                by = request.get("by")
                who = f"{approver} ({by})" if isinstance(by, str) and by else approver
                view = self.broker.resolve(str(request.get("id", "")), op == "approve",
                                           str(request.get("scope", "once")), who)
                return {"ok": True, "approval": view}
        except ApprovalError as err:
            return {"ok": False, "error": str(err)}
        return {"ok": False, "error": f"unknown op {op!r}; use list, show, approve, deny or watch"}

    def _watch(self, stream) -> None:
        events = self.broker.watch()
        try:
            _send(stream, {"ok": True, "session": self.broker.session_id})
            while not self._stopping.is_set():
                event, view = events.get()
                _send(stream, {"event": event, "approval": view})
        except OSError:
            pass  # the watcher went away
        finally:
            self.broker.unwatch(events)


def _send(stream, obj: dict) -> None:
    stream.write(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")
    stream.flush()


# -- client -----------------------------------------------------------------------------------

def pick_session(session: str | None, directory: str | None = None) -> str:
    """The session to talk to: the one given, or the only live one."""
    if session:
        return session
    sessions = live_sessions(directory)
    if not sessions:
        raise ControlError(f"no run is live (no control socket in {directory or runtime_dir()}) "
                           "— start one with `faramesh-sandbox run`")
    if len(sessions) > 1:
        raise ControlError(f"{len(sessions)} runs are live ({', '.join(sessions)}) — pick one with --session")
    return sessions[0]


def connect(session: str | None, directory: str | None = None) -> socket.socket:
    directory = directory or runtime_dir()
    session = pick_session(session, directory)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CLIENT_TIMEOUT)
    try:
        conn.connect(socket_path(directory, session))
    except OSError as err:
        conn.close()
        hint = ("the run is over (a stale socket: remove it)" if err.errno == 111
                else "check --session and that you are the run's user or root")
        raise ControlError(f"cannot reach session {session}: {err.strerror} — {hint}") from None
    return conn


def request(obj: dict, session: str | None = None, directory: str | None = None) -> dict:
    with connect(session, directory) as conn:
        stream = conn.makefile("rwb")
        _send(stream, obj)
        line = stream.readline(MAX_LINE)
    if not line:
        raise ControlError("the run closed the connection without answering")
    return json.loads(line)


def watch(session: str | None = None, directory: str | None = None) -> Iterator[dict]:
    """Yields the watch acknowledgement, then events until the run ends."""
    conn = connect(session, directory)
    conn.settimeout(None)
    with conn:
        stream = conn.makefile("rwb")
        _send(stream, {"op": "watch"})
        for line in iter(lambda: stream.readline(MAX_LINE), b""):
            yield json.loads(line)


# -- the approval service process ------------------------------------------------------------

def serve_service(channel, session_id: str, directory: str, max_pending: int, prompt: bool, channels: dict) -> None:
    """The approval service's main loop (launcher/approvals.py forks it): a broker, its control
    socket, the prompt and notifications; each held call arrives on ``channel`` as a connection
    of its own, until the launcher closes the channel."""
    notifier = notify.Notifier(channels)
    broker: Broker

    def on_pending(item: Pending) -> None:
        if item.notify:
            notifier.send(item.notify, defer_event(item), lambda outcome: broker.record_delivery(item, outcome))

    broker = Broker(session_id, max_pending=max_pending, on_pending=on_pending)
    server = ControlServer(broker, directory)
    try:
        if prompt:  # True or "ask": a question on the terminal; "notice": one line per waiting call
            terminal.start(broker, ask=prompt != "notice")
        channel.send(READY)
        while True:
            _msg, fds, _flags, _addr = socket.recv_fds(channel, 16, 1)
            if not fds:
                break  # the launcher closed the channel: the run is over
            threading.Thread(target=_serve_call, args=(broker, fds[0]), name="approval", daemon=True).start()
    finally:
        broker.close()
        server.close()


def _serve_call(broker: Broker, fd: int) -> None:
    with socket.socket(fileno=fd) as conn:
        stream = conn.makefile("rb")

        def gone() -> bool:  # the launcher hung up: the task died or the run ends
            return bool(select.select([conn], [], [], 0)[0])

        try:
            request = json.loads(stream.readline(MAX_REQUEST))
            resolution = broker.submit(request["tool"], dict(request["args"]), dict(request["decision"]),
                                       float(request["timeout"]), gone, request["origin"])
        except (ValueError, KeyError, TypeError):
            return  # the launcher side treats a closed connection as a denial
        reply = {"approved": resolution.approved, "reason_code": resolution.reason_code,
                 "reason": resolution.reason, "record": resolution.record}
        try:
            conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
        except OSError:
            pass


def defer_event(item: Pending) -> dict:
    """The JSON a notification channel receives."""
    return {"event": "defer", "session": item.session, "id": item.id, "origin": item.origin, "tool": item.tool,
            "args": item.args, "rule_id": item.rule_id, "reason": item.reason, "notify": item.notify,
            "expires_at": item.expires_at, "defer_token": item.defer_token,
            "approve": f"faramesh-sandbox approvals approve {item.id} --session {item.session}",
            "deny": f"faramesh-sandbox approvals deny {item.id} --session {item.session}"}
