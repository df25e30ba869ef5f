"""sandbox.exec_identity: system programs named as they were at start, on a real filesystem."""

from __future__ import annotations

import errno
import os
import shutil
import time

import pytest

from sandbox.exec_identity import ExecIdentity, ProgramIndex

TICK = 0.02  # longer than a coarse clock tick (4 ms at HZ=250)
TOOL = b"\x7fELF tool program"
TOOL_SHA256 = "ae017bfa8cbd45edb3616107367bb627812f160d0285118c804a33f7255b7669"


@pytest.fixture
def root(tmp_path):
    """A root with /usr/bin/tool, /usr/bin/other (same size), /bin -> usr/bin, and /work,
    all older than the start of any index made after it."""
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "tool").write_bytes(TOOL)
    (tmp_path / "usr" / "bin" / "other").write_bytes(b"\x7fELF other prog!!")
    for program in ("tool", "other"):
        (tmp_path / "usr" / "bin" / program).chmod(0o755)
    os.symlink("usr/bin", tmp_path / "bin")
    (tmp_path / "work").mkdir()
    time.sleep(TICK)
    return tmp_path


def named(identity: ExecIdentity, root, path: str) -> tuple[str, str | None]:
    name, digest, fd = identity.program(f"{root}{path}", path, os.path.basename(path))
    os.close(fd)
    return name, digest


def test_system_program_is_named_by_its_path_under_every_alias(root):
    """An unchanged system program is named by its listed path, through /bin as through /usr/bin."""
    identity = ExecIdentity(str(root))
    assert named(identity, root, "/usr/bin/tool") == ("tool", None)
    assert named(identity, root, "/bin/tool") == ("tool", None)
    assert identity._index._entries["/bin"] is identity._index._entries["/usr/bin"]  # listed once


def test_file_added_after_start_is_named_by_content(root):
    """A file created in a system directory after start is not a listed program: it is hashed."""
    identity = ExecIdentity(str(root))
    (root / "usr" / "bin" / "fetch").write_bytes(TOOL)
    assert named(identity, root, "/usr/bin/fetch") == ("tool", TOOL_SHA256)


def test_change_in_the_same_clock_tick_counts(root):
    """A program written right after start, within the same coarse clock tick, is hashed, not trusted by path."""
    identity = ExecIdentity(str(root))
    with open(root / "usr" / "bin" / "other", "r+b") as fh:
        fh.write(b'\x7fELF fresh code!!')  # the same size: compared by content, so it gets a digest
    assert named(identity, root, "/usr/bin/other") == ("other", "4239ac71f6f6d5931431275bb3997a3a79e176b0da96e32708a27e656d8e8e3c")


def test_copy_elsewhere_is_named_by_content(root):
    """A copy of a system program under another name is named by content, with its digest."""
    identity = ExecIdentity(str(root))
    shutil.copy(root / "usr" / "bin" / "tool", root / "work" / "fetch")
    assert named(identity, root, "/work/fetch") == ("tool", TOOL_SHA256)


def test_hard_link_does_not_launder_a_program(root):
    """Linking a system program (which changes its ctime) does not stop its copies being recognised."""
    identity = ExecIdentity(str(root))
    os.link(root / "usr" / "bin" / "tool", root / "work" / "link")
    shutil.copy(root / "usr" / "bin" / "tool", root / "work" / "fetch")
    assert named(identity, root, "/work/fetch") == ("tool", TOOL_SHA256)
    assert named(identity, root, "/work/link") == ("tool", TOOL_SHA256)


def test_only_the_loader_counts_in_library_directories(root):
    """Of /lib's entries only a dynamic loader is a program; other files there keep their basename."""
    (root / "lib").mkdir()
    for name in ("ld-linux-x86-64.so.2", "libc.so.6"):
        (root / "lib" / name).write_bytes(b"x")
    time.sleep(TICK)
    index = ProgramIndex(str(root))
    assert (index.listed("/lib/ld-linux-x86-64.so.2"), index.listed("/lib/libc.so.6")) == ("ld-linux-x86-64.so.2", None)


def test_a_loader_given_a_bare_program_name_is_refused(root):
    """`ld.so curl` looks curl up as a library would be, not from the cwd: nothing can be decided
    on the path the loader will take, so the exec is refused (EACCES)."""
    (root / "lib64").mkdir()
    loader = root / "lib64" / "ld-linux-x86-64.so.2"
    loader.write_bytes(b"\x7fELF loader")
    loader.chmod(0o755)
    identity = ExecIdentity(str(root))
    args = {"path": "/lib64/ld-linux-x86-64.so.2", "program": "ld-linux-x86-64.so.2",
            "argv": ["/lib64/ld-linux-x86-64.so.2", "tool", "--version"], "cwd": "/usr/bin"}
    with pytest.raises(OSError) as err:
        identity.also_runs(args, str(loader), str(root), lambda path, base: os.path.join(base, path))
    assert err.value.errno == errno.EACCES
    args["argv"][1] = "./tool"
    assert [run["path"] for run in identity.also_runs(args, str(loader), str(root),
                                                       lambda path, base: os.path.normpath(os.path.join(base, path)))] \
        == ["/usr/bin/tool"]
