"""The web page's audit trail: the newest records of the audit store, filtered, and the verdict
of its hash chain, as JSON-ready dicts."""

from __future__ import annotations

import sqlite3

from launcher import audit_store
from launcher.audit_cmd import key_argument

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FILTERS = ("session", "effect", "tool", "kind")


class QueryError(Exception):
    """A filter the page sent is not usable; the message says which and why."""


def parse_query(query: dict[str, list[str]]) -> tuple[int, dict]:
    """(limit, filters) from a parsed query string; empty values mean "no filter"."""
    raw = (query.get("limit") or [str(DEFAULT_LIMIT)])[0]
    try:
        limit = int(raw)
    except ValueError:
        raise QueryError(f"limit {raw!r} is not a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit {limit} is outside 1..{MAX_LIMIT}")
    filters = {name: (query.get(name) or [""])[0].strip() or None for name in FILTERS}
    if filters["effect"]:
        filters["effect"] = filters["effect"].upper()
    return limit, filters


def records(db: str, limit: int, filters: dict) -> list[dict]:
    """The last ``limit`` matching records, newest first, each with the columns the page shows."""
    con = audit_store.open_readonly(db)
    try:
        rows = audit_store.select(con, limit, **filters)
    except sqlite3.Error as err:
        raise audit_store.AuditStoreError(f"cannot read audit store {db}: {err}") from None
    finally:
        con.close()
    return [_row(row) for row in reversed(rows)]


def verdict(db: str) -> dict:
    con = audit_store.open_readonly(db)
    try:
        result = audit_store.verify(con)
    except sqlite3.Error as err:
        raise audit_store.AuditStoreError(f"cannot read audit store {db}: {err}") from None
    finally:
        con.close()
    problem = result.problem
    return {"intact": problem is None, "records": result.records, "head_seq": result.head_seq,
            "head_hash": result.head_hash,
            "problem": None if problem is None else {"seq": problem.seq, "what": problem.what,
                                                     "detail": problem.detail}}


def _row(row: audit_store.Row) -> dict:
    record = row.record
    return {"seq": row.seq, "time": record.get("time"), "kind": record.get("kind") or "decision",
            "session": record.get("session"), "pid": record.get("pid"), "tool": record.get("tool"),
            "argument": key_argument(record.get("args")), "effect": record.get("effect"),
            "rule_id": record.get("rule_id"), "reason": record.get("reason") or record.get("reason_code"),
            "approver": record.get("approver")}
