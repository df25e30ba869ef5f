"""Fixtures shared by the launcher's tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "launcher" / "_client"
SOURCES = ROOT / "launcher" / "client_c"


@pytest.fixture(scope="session")
def client() -> str:
    """launcher/_client (the serve client), built as setup.py builds it when missing or older than
    its sources."""
    newest_source = max(path.stat().st_mtime for path in SOURCES.iterdir())
    if not CLIENT.exists() or CLIENT.stat().st_mtime < newest_source:
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, check=True,
                       capture_output=True)
    return str(CLIENT)
