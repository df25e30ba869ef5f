"""LD_PRELOAD: code injected into an allowed program runs inside that program's process, so it is
bound by the same policy as the program itself (every process of the agent is under the filter)."""

from __future__ import annotations

import pytest

from tests.escapes.conftest import DENY_SECRET, SECRET, native, sandboxed

pytestmark = pytest.mark.kernel


def test_preloaded_library_cannot_read_a_denied_file(cbin, secret, tmp_path):
    """A constructor preloaded into /bin/true reads the secret natively; in the sandbox its open is denied."""
    library = cbin("preload", "-shared", "-fPIC")
    argv = ["env", f"LD_PRELOAD={library}", f"ESCAPE_SECRET={secret}", "/bin/true"]
    assert native(argv).stdout == f"preload={SECRET}\n"
    run = sandboxed(DENY_SECRET, argv, tmp_path)
    assert (run.status, run.stdout) == (0, "preload=errno:13\n"), run.explain()
    assert [(r["tool"], r["args"]["path"], r["reason_code"]) for r in run.denials()] == [
        ("fs/read", str(secret), "FPL_STRICT_DENY")]
