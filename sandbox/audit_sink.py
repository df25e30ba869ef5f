"""The audit callback the supervisor is given: ``audit(record)`` returns once the record is
durable; a sink may also offer ``audit.many(records)``, the same for a batch of records under one
commit, which the records of calls answered in compiled code use (docs/audit.md)."""

from __future__ import annotations


def write_all(audit, records: list[dict]) -> None:
    """``records`` through ``audit``, in order: as one batch where the sink takes batches, else
    each on its own, every one tried. Raises the first error (some records are then not on
    record: how many is the sink's to say)."""
    many = getattr(audit, "many", None)
    if many is not None:
        many(records)
        return
    errors = []
    for record in records:
        try:
            audit(record)
        except Exception as err:  # noqa: BLE001 - the rest are still tried, the first is raised
            errors.append(err)
    if errors:
        raise errors[0]
