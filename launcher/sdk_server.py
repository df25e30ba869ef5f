"""The agent SDK socket: tool calls an instrumented agent reports itself (``stripe/refund``)
decided by the same engine, session and audit log as the agent's syscalls.

Agents using the ``faramesh-sdk`` package find the socket through ``FARAMESH_SOCKET``; inside
the sandbox it is always SANDBOX_SOCKET_PATH (see docs/sdk.md). One request and one reply per
connection (launcher.sdk_protocol); each connection is served on its own thread with a deadline,
so a slow, silent or oversized client only ever loses its own request.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from typing import Callable

from launcher import sdk_protocol as wire
from launcher.sdk_defer import Approve, DeferTable, Refused
from policy.calls import ToolCall
from policy.decision import Decision, Effect, deny

SANDBOX_SOCKET_DIR = "/run/faramesh"
SANDBOX_SOCKET_PATH = SANDBOX_SOCKET_DIR + "/faramesh.sock"
AUDIT_SYSCALL = "sdk"  # the audit records' "syscall" field for calls reported through the socket
REQUEST_DEADLINE = 5.0  # seconds a client has to send its request line, and again to take the reply
MAX_CONNECTIONS = 64  # served at once; more are closed unanswered (the SDK then fails closed)
ACCEPT_POLL = 0.2  # seconds between checks for close() while waiting for a connection

Decide = Callable[[ToolCall], Decision]


class SdkCall(ToolCall):
    """A call the agent reported over the socket, not one the sandbox observed: approvals show
    its origin and keep its "for this session" answers apart (launcher/approvals.py)."""

    __slots__ = ()
    origin = "sdk"


UNIX_PATH_MAX = 108


class SdkServer:
    def __init__(self, socket_path: str, decide: Decide, *, session_id: str,
                 audit: Callable[[dict], None] | None = None, approve: Approve | None = None,
                 approve_timeout: float = 300.0):
        self.socket_path = socket_path
        self.decide = decide
        self.session_id = session_id
        self.audit = audit
        self.defers = DeferTable(approve, approve_timeout, self._record_resolution)
        self._listener: socket.socket | None = None
        # (st_dev, st_ino) of the bound socket: how a connect() resolved in the agent's view is
        # recognised as a connect to this socket, whatever path or symlink led there
        self.socket_inode: tuple[int, int] | None = None
        self._accepting: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stop = threading.Event()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def start(self) -> "SdkServer":
        """listen(), then serve()."""
        return self.listen().serve()

    def listen(self) -> "SdkServer":
        """Bind the socket (owner-only) and queue connections; starts no thread, so it may run
        before the sandbox is launched from this (then single-threaded) process."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        directory = None
        try:
            if len(os.fsencode(self.socket_path)) < UNIX_PATH_MAX:
                listener.bind(self.socket_path)
            else:  # a deep $TMPDIR: bind through the directory's descriptor (sun_path holds 107 bytes)
                directory = os.open(os.path.dirname(self.socket_path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                listener.bind(f"/proc/self/fd/{directory}/{os.path.basename(self.socket_path)}")
            os.chmod(self.socket_path, 0o600)
            listener.listen(MAX_CONNECTIONS)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        finally:
            if directory is not None:
                os.close(directory)
        self._listener = listener
        st = os.stat(self.socket_path)
        self.socket_inode = (st.st_dev, st.st_ino)
        return self

    def serve(self) -> "SdkServer":
        """Answer connections on background threads."""
        accepting = threading.Thread(target=self._accept_loop, name="sdk-accept", daemon=True)
        accepting.start()  # kept only once running: close() after a failed start joins nothing
        self._accepting = accepting
        return self

    def close(self) -> None:
        """Stop serving, remove the socket, expire open approvals. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        os.write(self._wake_write, b"x")  # wakes the accept loop at once
        if self._accepting is not None:
            self._accepting.join(timeout=2 * ACCEPT_POLL + 1)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        self.defers.close()
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "SdkServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- connections ----------------------------------------------------------------

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stop.is_set():
            try:
                ready = {fd for fd, _ in poller.poll(ACCEPT_POLL * 1000)}
                if self._listener.fileno() not in ready:
                    continue
                conn, _ = self._listener.accept()
                conn.setblocking(True)
            except BlockingIOError:  # another wake-up took it, or the client gave up
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(ACCEPT_POLL)  # EMFILE and the like: back off, keep serving
                continue
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            try:
                threading.Thread(target=self._serve, args=(conn,), name="sdk-conn", daemon=True).start()
            except RuntimeError:  # no thread could be started
                self._slots.release()
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                deadline = time.monotonic() + REQUEST_DEADLINE
                line = _read_line(conn, deadline)
                if line is None:
                    return
                reply = self._answer(line, _peer_pid(conn))
                conn.settimeout(REQUEST_DEADLINE)  # a fresh window: deciding may have taken a while
                conn.sendall(wire.encode(reply))
        except Exception:  # noqa: BLE001 - gone, too slow, or a fault here: no answer, and the SDK fails closed
            pass
        finally:
            self._slots.release()

    def _answer(self, line: bytes, pid: int | None) -> dict:
        if len(line) > wire.MAX_LINE:
            return wire.error_reply(f"request longer than {wire.MAX_LINE} bytes", rpc=True)
        try:
            request = wire.parse(line)
        except wire.BadRequest as err:
            return err.reply
        if request.kind == "poll_defer":
            return wire.poll_reply(request, self.defers.poll(request.defer_token))
        return self._govern(request, pid)

    # -- decisions ------------------------------------------------------------------

    def _govern(self, request: wire.Request, pid: int | None) -> dict:
        import uuid  # ~5 ms to import: only once an SDK call arrives

        started = time.monotonic()
        call = SdkCall(tool=request.tool, args=request.args, session_id=self.session_id,
                       agent_id=request.agent_id, call_id=request.call_id or uuid.uuid4().hex,
                       timestamp=time.time())
        decision = self._decide(call)
        token = ""
        if decision.effect is Effect.DEFER:
            try:
                token = self.defers.open(call, decision)
            except Refused as refused:
                decision = deny(refused.code, f"{refused} ({decision.reason})",
                                rule_id=decision.rule_id, policy_version=decision.policy_version)
        if not self._record(call, decision, pid, started, token) and decision.effect is not Effect.DENY:
            decision = deny("AUDIT_WRITE_FAILED", f"the audit record could not be written ({decision.reason})",
                            rule_id=decision.rule_id, policy_version=decision.policy_version)
            if token:
                self.defers.cancel(token)  # nobody is asked to approve a defer that is not on record
                token = ""
            self._record(call, decision, pid, started, "")
        if token:
            self.defers.start(token)
        latency_ms = round((time.monotonic() - started) * 1000)
        return wire.govern_reply(request, decision, call_id=call.call_id, defer_token=token, latency_ms=latency_ms)

    def _decide(self, call: ToolCall) -> Decision:
        try:
            decision = self.decide(call)
        except Exception as err:  # fail closed
            return deny("DECIDE_ERROR", f"policy evaluation failed: {type(err).__name__}: {err}")
        if not isinstance(decision, Decision):
            return deny("DECIDE_ERROR", f"decide() returned {type(decision).__name__}, not a Decision")
        return decision

    def _record(self, call: ToolCall, decision: Decision, pid: int | None, started: float, token: str) -> bool:
        if self.audit is None:
            return True
        record = {
            "time": time.time(), "session": self.session_id, "pid": pid, "syscall": AUDIT_SYSCALL,
            "tool": call.tool, "args": call.args, "effect": decision.effect.value, "rule_id": decision.rule_id,
            "reason_code": decision.reason_code, "reason": decision.reason,
            "policy_version": decision.policy_version, "latency_us": round((time.monotonic() - started) * 1e6),
            "kind": "decision", "agent_id": call.agent_id, "call_id": call.call_id,
        }
        if token:
            record["defer_token"] = token
        try:
            self.audit(record)
            return True
        except Exception:
            return False

    def _record_resolution(self, call: ToolCall, decision: Decision, token: str) -> bool:
        return self._record(call, decision, None, time.monotonic(), token)


def _read_line(conn: socket.socket, deadline: float) -> bytes | None:
    """The request line (without its newline; end of stream also ends it), a line longer than
    MAX_LINE as MAX_LINE + 1 bytes (refused unparsed), or None when the client sent nothing in time."""
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        conn.settimeout(remaining)
        chunk = conn.recv(65536)
        if not chunk:
            return bytes(data) if data.strip() else None
        end = chunk.find(b"\n")
        if end >= 0:
            data += chunk[:end]
            return bytes(data[:wire.MAX_LINE + 1])
        data += chunk
        if len(data) > wire.MAX_LINE:
            return bytes(data[:wire.MAX_LINE + 1])


def _peer_pid(conn: socket.socket) -> int | None:
    """SO_PEERCRED pid, as this process's pid namespace sees it (recorded in the audit); None when
    the peer is this process: the sandbox performs the agent's connect() on its behalf
    (sandbox/netops.py), so the agent's own pid is not known and the launcher's would mislead."""
    try:
        pid, _uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
    except OSError:
        return None
    return pid if pid and pid != os.getpid() else None
