"""The curated public API of the policy package."""

import ast as pyast
import pathlib

import policy


def test_public_names_are_pinned():
    """policy.__all__ lists exactly the supported entry points."""
    assert policy.__all__ == [
        "CompiledPolicy",
        "Decision",
        "Diagnostic",
        "Effect",
        "Engine",
        "Envelope",
        "PolicyError",
        "SessionStore",
        "ToolCall",
        "check_sources",
        "compile_policy",
        "format_document",
        "load_policy",
        "parse",
    ]
    assert all(hasattr(policy, name) for name in policy.__all__)


def test_policy_package_imports_nothing_impure():
    """The policy package never imports os, socket, ctypes, subprocess, pyroute2, sandbox or launcher."""
    banned = {"os", "socket", "ctypes", "subprocess", "pyroute2", "sandbox", "launcher"}
    found = []
    for path in sorted(pathlib.Path(policy.__file__).parent.glob("*.py")):
        for node in pyast.walk(pyast.parse(path.read_text())):
            names = []
            if isinstance(node, pyast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, pyast.ImportFrom) and node.module:
                names = [node.module]
            found += [(path.name, n) for n in names if n.split(".")[0] in banned]
    assert found == []
