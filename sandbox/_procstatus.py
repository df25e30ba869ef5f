"""/proc/<pid>/status read safely while supervising.

Read as bytes and decoded as UTF-8 with replacement: the Name line is the task's name, raw bytes
the agent chose (prctl PR_SET_NAME), so a text read could raise UnicodeDecodeError, and opening a
file with another codec may have to load it from a library the launcher can no longer read. Split
on newlines only (the kernel escapes a newline in the name), not str.splitlines()'s other breaks."""

from __future__ import annotations


def status_fields(pid: int | str) -> dict[str, str]:
    """Field name -> its value, stripped. Raises OSError (FileNotFoundError, ProcessLookupError)
    when the task is gone."""
    with open(f"/proc/{pid}/status", "rb") as status:
        text = status.read().decode("utf-8", "replace")
    return {name: value.strip() for name, _, value in (line.partition(":") for line in text.split("\n")) if value}
