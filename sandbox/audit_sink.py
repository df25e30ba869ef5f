"""The audit callback the supervisor is given: ``audit(record)`` returns once the record is
durable; a sink may also offer ``audit.many(records)``, the same for a batch of records under one
commit, which the records of calls answered in compiled code use (docs/audit.md)."""

from __future__ import annotations


def write_all(audit, records: list[dict]) -> None:
    """``records`` through ``audit``, in order: as one batch where the sink takes batches. Raises
    what the sink raises (the records of a failed batch are then not all on record)."""
    many = getattr(audit, "many", None)
    if many is not None:
        many(records)
        return
    for record in records:
        audit(record)
