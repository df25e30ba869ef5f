"""The web page's live view: pending approvals of every live run, kept current from each run's
control socket ``watch`` stream, plus the audit store's newest sequence number.

One Hub per ``faramesh-sandbox ui``: a scanner thread notices runs starting and ending (their
control sockets appear and go) and opens one watch connection per run; every change bumps a
version number that the page's event stream waits on, then sends the whole state again."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time

from launcher import audit_store, control

SCAN_INTERVAL = 0.5  # seconds between looks for new runs and new audit records
RECENT = 20  # answered approvals kept for the page's "recently answered" list
SESSION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a socket file name, never a path


def valid_session(name: object) -> bool:
    return isinstance(name, str) and bool(SESSION_NAME.fullmatch(name)) and name not in (".", "..")


class _Watch:
    """One run's watch connection, read on its own thread."""

    def __init__(self, hub: "Hub", session: str, before: "_Watch | None" = None):
        self.hub, self.session = hub, session
        # A retry keeps showing the last outcome until it gets through, so retrying is no change.
        self.state, self.error = (before.state, before.error) if before else ("connecting", "")
        self.conn: socket.socket | None = None
        self.stopped = False
        threading.Thread(target=self._run, name=f"ui-watch-{session}", daemon=True).start()

    def stop(self) -> None:
        self.stopped = True
        conn = self.conn
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in readline
            except OSError:
                pass

    def _run(self) -> None:
        try:
            self.conn = control.connect(self.session, self.hub.directory)
            if self.stopped:
                self.conn.shutdown(socket.SHUT_RDWR)
            with self.conn:
                stream = self.conn.makefile("rwb")
                stream.write(b'{"op":"watch"}\n')
                stream.flush()
                self.conn.settimeout(None)
                for line in iter(lambda: stream.readline(control.MAX_LINE), b""):
                    self._message(json.loads(line))
            self.hub._ended(self, "ended", "")
        except (control.ControlError, OSError, ValueError) as err:
            self.hub._ended(self, "unreachable", str(err))

    def _message(self, message: dict) -> None:
        if "event" in message:
            self.hub._event(self, message["event"], message.get("approval") or {})
        elif message.get("ok"):
            self.hub._attached(self)
        else:
            raise ValueError(str(message.get("error", "the run refused to be watched")))


class Hub:
    def __init__(self, directory: str, session: str | None = None, db: str | None = None):
        self.directory, self.only_session, self.db = directory, session, db
        self._lock = threading.Condition()
        self._watches: dict[str, _Watch] = {}
        self._pending: dict[tuple[str, str], dict] = {}  # (session, id) -> approval view
        self._recent: list[dict] = []
        self._audit_head = 0
        self._audit_error = ""
        self._runtime_error = ""  # the runtime directory cannot be read
        self.version = 0
        self._stopping = threading.Event()

    def start(self) -> "Hub":
        self.scan()
        threading.Thread(target=self._scan_loop, name="ui-scan", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            watches = list(self._watches.values())
            self._lock.notify_all()
        for watch in watches:
            watch.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- what the page sees ------------------------------------------------------------------

    def state(self) -> dict:
        with self._lock:
            return self._state()

    def wait_state(self, seen: int, timeout: float) -> dict | None:
        """The state once its version differs from ``seen``; None after ``timeout`` without a change."""
        with self._lock:
            if not self._lock.wait_for(lambda: self.version != seen or self._stopping.is_set(), timeout):
                return None
            return self._state()

    def _state(self) -> dict:
        pending = sorted(self._pending.values(), key=lambda view: view.get("created", 0))
        sessions = [{"id": w.session, "state": w.state, "error": w.error}
                    for w in sorted(self._watches.values(), key=lambda w: w.session)]
        return {"version": self.version, "now": time.time(), "pending": pending, "recent": list(self._recent),
                "sessions": sessions, "only_session": self.only_session, "runtime_error": self._runtime_error,
                "audit": {"head": self._audit_head, "error": self._audit_error}}

    def knows(self, session: str) -> bool:
        with self._lock:
            return session in self._watches

    # -- scanning ------------------------------------------------------------------------------

    def _scan_loop(self) -> None:
        while not self._stopping.wait(SCAN_INTERVAL):
            self.scan()

    def scan(self) -> None:
        try:
            live = set(control.live_sessions(self.directory))
            error = ""
        except OSError as err:
            live, error = set(), f"cannot list {self.directory}: {err.strerror}"
        if self.only_session is not None:
            live &= {self.only_session}
        live = {name for name in live if valid_session(name)}
        with self._lock:
            gone = [w for name, w in self._watches.items() if name not in live]
            for watch in gone:
                self._drop(watch)
            for name in live:
                current = self._watches.get(name)
                if current is None or current.state in ("unreachable", "ended"):
                    if current is not None:
                        self._drop(current)
                    self._watches[name] = _Watch(self, name, current)
            if gone or error != self._runtime_error:
                self._runtime_error = error
                self._changed()
        self._scan_audit()

    def _scan_audit(self) -> None:
        if self.db is None:
            return
        head, error = self._audit_head, ""
        try:
            con = audit_store.open_readonly(self.db)
            try:
                head = con.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0]
            finally:
                con.close()
        except audit_store.AuditStoreError as err:
            error = str(err)
        except sqlite3.Error as err:
            error = f"cannot read audit store {self.db}: {err}"
        with self._lock:
            if (head, error) != (self._audit_head, self._audit_error):
                self._audit_head, self._audit_error = head, error
                self._changed()

    # -- watch callbacks (watch threads) -----------------------------------------------------

    def _attached(self, watch: _Watch) -> None:
        with self._lock:
            if self._watches.get(watch.session) is watch:
                watch.state, watch.error = "watching", ""
                self._changed()

    def _event(self, watch: _Watch, event: str, view: dict) -> None:
        key = (watch.session, str(view.get("id", "")))
        with self._lock:
            if self._watches.get(watch.session) is not watch:
                return  # a connection we already gave up on
            if event == "pending":
                self._pending[key] = view
            elif event == "resolved":
                self._pending.pop(key, None)
                self._recent = [view, *self._recent][:RECENT]
            self._changed()

    def _ended(self, watch: _Watch, state: str, error: str) -> None:
        with self._lock:
            if self._watches.get(watch.session) is not watch:
                return
            same = (watch.state, watch.error) == (state, error)
            watch.state, watch.error = state, error
            if not self._forget_pending(watch.session) and same:
                return
            self._changed()

    def _drop(self, watch: _Watch) -> None:
        """Caller holds the lock."""
        watch.stop()
        del self._watches[watch.session]
        self._forget_pending(watch.session)

    def _forget_pending(self, session: str) -> bool:
        keys = [k for k in self._pending if k[0] == session]
        for key in keys:
            del self._pending[key]
        return bool(keys)

    def _changed(self) -> None:
        self.version += 1
        self._lock.notify_all()
