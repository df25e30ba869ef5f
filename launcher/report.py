"""``run --report FILE [--fail-on-deny]``: a machine-readable summary of a run for CI jails.

The report counts every decision and lists each deny and defer (with approvals' outcomes) as
recorded in the audit trail, up to MAX_VIOLATIONS of them (the rest are only counted).
``--report`` traps every category (as ``--audit-all``), so a call the policy refuses
unconditionally is seen too. Format: docs/ci.md."""

from __future__ import annotations

import collections
import json
import os
import threading
import time

from sandbox import audit_sink

REPORT_VERSION = 1
VIOLATION_EFFECTS = ("DENY", "DEFER")
EXIT_VIOLATIONS = 3  # --fail-on-deny: the agent succeeded but the policy refused something
MAX_VIOLATIONS = 1000  # listed in full; beyond them only counted (an agent can be denied 10,000 times a second)
KEPT_ARGS = ("path", "dest", "cmd", "program", "host", "ip", "port", "family", "protocol", "type", "flags",
             "amount", "currency")


class RunReport:
    """Observes audit records (``observe``); ``write`` saves the summary."""

    def __init__(self, session: str, command: list[str], policies: list[str]):
        self.session, self.command, self.policies = session, list(command), list(policies)
        self.started = time.time()
        self.counts: collections.Counter = collections.Counter()
        self.violations: list[dict] = []  # the first MAX_VIOLATIONS
        self.violation_count = 0
        self._lock = threading.Lock()

    def observe(self, record: dict) -> None:
        effect = getattr(record.get("effect"), "value", record.get("effect"))
        kind = record.get("kind") or "decision"
        with self._lock:
            self.counts[f"{kind}:{effect}"] += 1
            deferred = str(record.get("reason_code") or "").startswith("APPROVAL_")  # a defer, settled
            violation = kind == "decision" and (effect in VIOLATION_EFFECTS or deferred)
            self.violation_count += violation
            if violation and len(self.violations) < MAX_VIOLATIONS:
                args = record.get("args") or {}
                self.violations.append({
                    "time": record.get("time"), "pid": record.get("pid"), "syscall": record.get("syscall"),
                    "tool": record.get("tool"), "effect": effect, "rule_id": record.get("rule_id"),
                    "reason_code": record.get("reason_code"), "reason": record.get("reason"),
                    "deferred": deferred or effect == "DEFER", "args": {k: args[k] for k in KEPT_ARGS if k in args}})

    def tee(self, audit):
        """An audit callable that records with ``audit`` first (which may raise), then observes."""
        def trail(record: dict) -> None:
            if audit is not None:
                audit(record)
            self.observe(record)

        def many(records: list[dict]) -> None:
            if audit is not None:
                audit_sink.write_all(audit, records)
            for record in records:
                self.observe(record)
        trail.close = getattr(audit, "close", lambda: None)
        trail.many = many
        return trail

    @property
    def violated(self) -> bool:
        return self.violation_count > 0

    def summary(self, exit_status: int) -> dict:
        with self._lock:
            decisions = {effect: self.counts.get(f"decision:{effect}", 0) for effect in ("PERMIT", "DENY", "DEFER")}
            return {"version": REPORT_VERSION, "session": self.session, "command": self.command,
                    "policies": self.policies, "started": self.started, "finished": time.time(),
                    "exit_status": exit_status, "decisions": decisions,
                    "violations": list(self.violations), "violation_count": self.violation_count,
                    "violations_truncated": self.violation_count > len(self.violations)}

    def write(self, path: str, exit_status: int) -> None:
        """Write atomically (a CI step reading it never sees half a file); anything that is not a
        regular file (/dev/stdout, a pipe, /dev/null) is written in place, never replaced."""
        text = json.dumps(self.summary(exit_status), indent=2, default=str) + "\n"
        if os.path.exists(path) and not os.path.isfile(path):
            with open(path, "w", encoding="utf-8") as out:
                out.write(text)
            return
        partial = f"{path}.{os.getpid()}.partial"
        with open(partial, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
