"""Keeping the agent's files out of the launcher's imports.

Some modules load only after the agent has started (dnspython at its first lookup,
docs/network.md; the webhook and SDK modules when first used). ``python3 -m launcher`` puts the
working directory first on sys.path, PYTHONPATH can name it again (``.``, an empty entry), and
the agent can often write there: a ``dns/`` or ``hmac.py`` planted in it would then run inside
the launcher. Every entry naming the working directory is dropped. Where the launcher's own
packages are importable only from there (a checkout run in place, not installed) they are
imported first, and the entries dropped all the same.

Uses only modules Python has loaded before running ``-m`` (sys, os, importlib.util), so
nothing is imported from the working directory here; what Python itself imports before this
runs is out of its reach (docs/network.md: use the installed command, or ``python3 -P``)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

OWN_PACKAGES = ("launcher", "policy", "sandbox")
_HOME = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # the directory holding OWN_PACKAGES


def drop_working_directory() -> None:
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # removed: only "" can name it
        cwd = None
    kept = [entry for entry in sys.path if entry != "" and (cwd is None or os.path.realpath(entry) != cwd)]
    if len(kept) == len(sys.path):
        return
    before, sys.path[:] = list(sys.path), kept
    missing = [name for name in OWN_PACKAGES if not _found_at_home(name)]
    if missing:  # a checkout run in place: load them from it, then drop it anyway
        sys.path[:] = before
        for name in missing:
            importlib.import_module(name)
        sys.path[:] = kept


def _found_at_home(package: str) -> bool:
    module = sys.modules.get(package)
    locations = getattr(module, "__path__", None)
    if locations is None:
        spec = importlib.util.find_spec(package)
        locations = spec.submodule_search_locations if spec is not None else None
    return bool(locations) and all(os.path.dirname(os.path.realpath(place)) == _HOME for place in locations)
