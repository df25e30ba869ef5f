"""The dependency direction is launcher -> sandbox -> policy types, enforced by reading imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POLICY_FORBIDDEN = {"os", "ctypes", "socket", "subprocess", "pyroute2", "fcntl", "select",
                    "signal", "shutil", "pathlib", "mmap", "multiprocessing", "sandbox", "launcher"}
SANDBOX_ALLOWED_POLICY = {"policy.calls", "policy.decision"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_each_package_has_modules():
    """The three packages exist and hold code, so the checks below cannot pass vacuously."""
    for package in ("policy", "sandbox", "launcher"):
        assert len(modules(package)) >= 2, package


@pytest.mark.parametrize("path", modules("policy"), ids=lambda p: p.name)
def test_policy_is_pure(path: Path):
    """policy/ imports no OS-facing module and neither of the other packages."""
    bad = {name for name in imports_of(path) if name.split(".")[0] in POLICY_FORBIDDEN}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("sandbox"), ids=lambda p: p.name)
def test_sandbox_sees_only_policy_types(path: Path):
    """sandbox/ reaches policy only through ToolCall and Decision, and never imports launcher/."""
    names = imports_of(path)
    bad = {n for n in names if n.split(".")[0] == "launcher"}
    bad |= {n for n in names if n.split(".")[0] == "policy"
            and not any(n == ok or n.startswith(ok + ".") for ok in SANDBOX_ALLOWED_POLICY)
            and n != "policy"}
    if "policy" in names:
        bad.add("policy")
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("sandbox") + modules("launcher") + modules("policy"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_ctypes_only_in_libc_modules(path: Path):
    """Only sandbox/_libc*.py may use ctypes: one audited place for raw kernel calls."""
    uses = any(n.split(".")[0] == "ctypes" for n in imports_of(path))
    allowed = path.parent.name == "sandbox" and path.name.startswith("_libc")
    assert allowed or not uses, f"{path.relative_to(ROOT)} imports ctypes"


def test_checker_catches_a_violation(tmp_path: Path):
    """The import reader sees both import forms, so a violation would be reported."""
    sample = tmp_path / "m.py"
    sample.write_text("import os\nfrom sandbox.launch import launch\nfrom policy.calls import ToolCall\n")
    assert imports_of(sample) == {"os", "sandbox.launch", "sandbox.launch.launch",
                                  "policy.calls", "policy.calls.ToolCall"}
