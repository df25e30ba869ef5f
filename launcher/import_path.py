"""Keeping the agent's files out of the launcher's imports.

``python3 -m launcher`` puts the working directory first on sys.path, and the agent can often
write there. Some modules load only after the agent has started (dnspython at its first lookup,
docs/network.md; the webhook and SDK modules when first used): a ``dns/`` or ``hmac.py`` planted
in that directory would then run inside the launcher. The entry is dropped, unless this package
is only importable from there (a checkout run in place, not installed: whoever can write to the
checkout can change the launcher itself anyway)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

OWN_PACKAGES = ("launcher", "policy", "sandbox")
_HOME = Path(__file__).resolve().parents[1]  # the directory holding OWN_PACKAGES


def drop_working_directory() -> None:
    if not sys.path or sys.path[0] not in ("", os.getcwd()):
        return  # run as the installed command: sys.path[0] is the command's own directory
    entry = sys.path.pop(0)
    if not all(_found_at_home(name) for name in OWN_PACKAGES):
        sys.path.insert(0, entry)


def _found_at_home(package: str) -> bool:
    module = sys.modules.get(package)
    locations = getattr(module, "__path__", None)
    if locations is None:
        spec = importlib.util.find_spec(package)
        locations = spec.submodule_search_locations if spec is not None else None
    return bool(locations) and all(Path(place).resolve().parent == _HOME for place in locations)
