"""``faramesh-sandbox audit verify|show|export``: check the store's hash chain, print records as a
table, export them as JSON Lines (docs/audit.md).

Exit status: 0 ok; 1 the chain is broken (verify); 2 the store or a file cannot be read."""

from __future__ import annotations

import argparse
import json
import os
import sys

from launcher import audit_store, term
from launcher.audit import encode
from launcher.audit_store import AuditStoreError, Problem

EXIT_OK, EXIT_TAMPERED, EXIT_UNREADABLE = 0, 1, 2
# show: heading -> how to get the cell from a record; ARGUMENT and REASON are cut to fit
COLUMNS = (
    ("TIME", lambda r: _time(r.get("time"))),
    ("SESSION", lambda r: r.get("session")),
    ("PID", lambda r: r.get("pid")),
    ("TOOL", lambda r: r.get("tool")),
    ("ARGUMENT", lambda r: key_argument(r.get("args"))),
    ("EFFECT", lambda r: _effect(r)),
    ("RULE", lambda r: r.get("rule_id")),
    ("REASON", lambda r: r.get("reason") or r.get("reason_code")),
)
WIDTH_LIMITS = {"ARGUMENT": 60, "REASON": 50}
KEY_ARGS = ("cmd", "path", "address", "host", "url", "target")  # the first present one is shown
SECOND_ARGS = ("dest", "port")  # shown after it: "src → dest", "host:port"


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="PATH", default=None,
                        help=f"the audit store (default: $FARAMESH_AUDIT_DB, else {audit_store.default_path()})")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", metavar="S", help="only this session")
    parser.add_argument("--effect", metavar="E", type=str.upper, help="only this effect: PERMIT, DENY, DEFER")
    parser.add_argument("--tool", metavar="T", help="only this tool; a glob such as 'fs/*' matches a family")
    parser.add_argument("--kind", metavar="K", help="only this kind: decision, approval, expiry, ...")
    parser.add_argument("--limit", metavar="N", type=int, help="only the last N matching records")


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    _add_db(parser)
    parser.add_argument("--expect-head", metavar="SEQ:HASH",
                        help="a head printed by an earlier verify: fails if that record is gone or changed")
    parser.add_argument("--jsonl", metavar="FILE",
                        help="a JSON Lines file written with the store (run --audit) or by export: "
                             "every line's seq and hash must still be in the chain")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    _add_db(parser)
    _add_filters(parser)
    parser.add_argument("--wide", action="store_true", help="do not cut long arguments and reasons")
    parser.add_argument("--json", action="store_true", help="print a JSON array of records (with seq and hash)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    _add_db(parser)
    _add_filters(parser)
    parser.add_argument("--format", choices=("jsonl",), default="jsonl", help="output format (default jsonl)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE (mode 0600) instead of stdout")


def verify_main(args: argparse.Namespace) -> int:
    path = args.db or audit_store.default_path()
    try:
        expected = _parse_head(args.expect_head) if args.expect_head else None
        con = audit_store.open_readonly(path)
        try:
            con.execute("BEGIN")  # one snapshot for the walk and the anchors
            verdict = audit_store.verify(con)
            anchors, problem = 0, verdict.problem
            if problem is None and expected is not None:
                anchors, problem = 1, audit_store.check_anchor(con, *expected, "--expect-head")
            if problem is None and args.jsonl:
                anchors, problem = _check_jsonl(con, args.jsonl)
        finally:
            con.close()
    except AuditStoreError as err:
        return _unreadable(str(err), args.json)
    except audit_store.sqlite3.Error as err:
        return _unreadable(f"cannot read audit store {path}: {err}", args.json)
    head = f"{verdict.head_seq}:{verdict.head_hash}"
    if args.json:
        print(json.dumps({"ok": problem is None, "db": path, "records": verdict.records, "head": head,
                          "anchors": anchors, "problem": None if problem is None else
                          {"seq": problem.seq, "what": problem.what, "detail": problem.detail}}))
    elif problem is None:
        checked = f"; {anchors} anchor(s) match" if anchors else ""
        print(f"ok: {verdict.records} records, chain intact from genesis to seq {verdict.head_seq}{checked}")
        print(f"head {head}")
    else:
        print(f"TAMPERED at seq {problem.seq}: {problem.what}: {problem.detail}")
        print(f"records before it verify: {verdict.records} (seq 1..{verdict.head_seq})")
    return EXIT_OK if problem is None else EXIT_TAMPERED


def show_main(args: argparse.Namespace) -> int:
    rows, code = _select(args)
    if rows is None:
        return code
    if args.json:
        print(json.dumps([{**row.record, "seq": row.seq, "hash": row.hash} for row in rows]))
        return EXIT_OK
    table = [[heading for heading, _ in COLUMNS]]
    for row in rows:
        record = row.record
        table.append([_cell(get(record), None if args.wide else WIDTH_LIMITS.get(heading))
                      for heading, get in COLUMNS])
    effect = [heading for heading, _ in COLUMNS].index("EFFECT")
    for line in term.table(table, {effect: lambda cell: cell.split(" ")[0]}):
        print(line)
    return EXIT_OK


def export_main(args: argparse.Namespace) -> int:
    rows, code = _select(args)
    if rows is None:
        return code
    lines = (encode({**row.record, "seq": row.seq, "prev_hash": row.prev_hash, "hash": row.hash}) for row in rows)
    if not args.output:
        for line in lines:
            sys.stdout.buffer.write(line)
        sys.stdout.flush()
        return EXIT_OK
    try:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as out:
            out.writelines(lines)
    except OSError as err:
        return _unreadable(f"cannot write {args.output}: {err.strerror}", False)
    return EXIT_OK


def key_argument(args) -> str:
    """The argument that says what a call was about: the command, the path (→ destination)."""
    if not isinstance(args, dict):
        return ""
    key = next((args[name] for name in KEY_ARGS if args.get(name) not in (None, "")), "")
    second = next(((name, args[name]) for name in SECOND_ARGS if args.get(name) not in (None, "")), None)
    if second is None:
        return str(key)
    return f"{key}:{second[1]}" if second[0] == "port" else f"{key} → {second[1]}"


def _select(args: argparse.Namespace):
    path = args.db or audit_store.default_path()
    if args.limit is not None and args.limit < 0:
        return None, _unreadable(f"--limit {args.limit} is negative", False)
    try:
        con = audit_store.open_readonly(path)
        try:
            return audit_store.select(con, args.limit, session=args.session, effect=args.effect,
                                      tool=args.tool, kind=args.kind), EXIT_OK
        finally:
            con.close()
    except AuditStoreError as err:
        return None, _unreadable(str(err), False)
    except audit_store.sqlite3.Error as err:
        return None, _unreadable(f"cannot read audit store {path}: {err}", False)


def _check_jsonl(con, path: str) -> tuple[int, Problem | None]:
    """Every line carrying seq and hash is an anchor; the lowest bad seq is reported."""
    anchors = []
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    raise AuditStoreError(f"{path}:{number}: not a JSON object") from None
                anchor = (record.get("seq"), record.get("hash")) if isinstance(record, dict) else (None, None)
                if isinstance(anchor[0], int) and isinstance(anchor[1], str):
                    anchors.append((*anchor, f"{path}:{number}"))
    except OSError as err:
        raise AuditStoreError(f"cannot read {path}: {err.strerror}") from None
    for seq, digest, source in sorted(anchors):
        problem = audit_store.check_anchor(con, seq, digest, source)
        if problem is not None:
            return len(anchors), problem
    return len(anchors), None


def _parse_head(text: str) -> tuple[int, str]:
    seq, _, digest = text.partition(":")
    if not (seq.isdigit() and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise AuditStoreError(f"--expect-head {text!r} is not SEQ:HASH (copy the `head` line printed by verify)")
    return int(seq), digest


def _effect(record: dict) -> str:
    """The effect, and the kind of a record that is not a decision: ``DENY (expiry)``."""
    effect, kind = record.get("effect") or "", record.get("kind")
    return effect if kind in (None, "decision") else f"{effect} ({kind})".strip()


def _time(value) -> str:
    """ISO 8601 UTC shortened to milliseconds: 2026-01-02 03:00:00.250."""
    if isinstance(value, str) and len(value) >= 23 and value[10:11] == "T":
        return f"{value[:10]} {value[11:23]}"
    return "" if value is None else str(value)


def _cell(value, limit: int | None) -> str:
    """Printable text: control characters from an agent's paths are escaped, never sent to the terminal."""
    text = "" if value is None else str(value)
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def _unreadable(message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": False, "error": message}))
    else:
        print(f"faramesh-sandbox: {message}", file=sys.stderr)
    return EXIT_UNREADABLE
