"""Secrets the egress adds to permitted requests, so the agent never holds them (docs/egress.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

BACKENDS = ("env", "file")


@dataclass(frozen=True)
class Credential:
    name: str
    tools: tuple[Callable[[str], bool], ...]
    backend: str  # env | file
    path: str  # the variable or file holding the secret

    def covers(self, tool: str) -> bool:
        return any(match(tool) for match in self.tools)

    def secret(self, environ: dict[str, str]) -> str | None:
        """The secret now (a file is re-read, so it may be rotated), or None when unavailable."""
        if self.backend == "env":
            value = environ.get(self.path)
        else:
            try:
                with open(self.path, encoding="utf-8") as f:
                    value = f.read().strip()
            except (OSError, UnicodeDecodeError):
                return None
        return value or None
