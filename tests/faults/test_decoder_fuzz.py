"""Fuzzing the syscall argument decoders against the real kernel: strings cut off by an unmapped
page, non-UTF-8 names, over-long paths and pointer arrays, bad pointers."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.memory import MAX_ARGS, PATH_MAX, RemoteMemory
from tests.faults.conftest import FS_TRAPPED
from tests.faults.layout_target import LayoutTarget, hexed

pytestmark = pytest.mark.kernel
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Mostly path-like bytes, with NULs, slashes and bytes that are not UTF-8.
NAME_BYTES = st.binary(max_size=40) | st.sampled_from([b"\xff\xfe", b"\x80", b"/", b"\0", b"..", b"f", b"d/"])
PREFIXES = st.sampled_from([b"", b"./", b"d/", b"f/", b"/nonexistent/"])


@pytest.fixture
def native_layout(cbin):
    target = LayoutTarget(cbin("layout"))
    yield target
    assert target.close() == 0


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A cwd holding a file f and a directory d/ with a file g, for relative names."""
    (tmp_path / "f").write_text("f")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "g").write_text("g")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def kernel_cstring(data: bytes) -> bytes | int:
    """What the kernel's strncpy_from_user(PATH_MAX) makes of ``data`` ending at an unmapped page."""
    end = data.find(b"\0")
    if end < 0:
        return errno.ENAMETOOLONG if len(data) >= PATH_MAX else errno.EFAULT
    return data[:end] if end < PATH_MAX else errno.ENAMETOOLONG


def read_cstring(memory: RemoteMemory, address: int) -> bytes | int:
    try:
        return memory.cstring(address)
    except OSError as err:
        return err.errno


@FUZZ
@given(data=st.binary(max_size=64) | st.binary(min_size=4090, max_size=4100).map(lambda b: b.replace(b"\0", b"a")),
       suffix=st.sampled_from([b"", b"\0", b"\0tail"]))
def test_cstring_ending_at_an_unmapped_page_reads_as_the_kernel_would(native_layout, data, suffix):
    """A string placed flush against a PROT_NONE page reads as its bytes up to the NUL, else EFAULT,
    or ENAMETOOLONG past PATH_MAX, exactly as the kernel's own copy."""
    placed = data + suffix
    address = int(native_layout.ask("put", hexed(placed)).split("=")[1], 16)
    assert read_cstring(RemoteMemory(native_layout.pid), address) == kernel_cstring(placed)


@pytest.mark.parametrize(("count", "terminated", "expected"), [
    (0, True, []), (3, True, [b"x"] * 3), (3, False, errno.EFAULT), (MAX_ARGS, True, [b"x"] * MAX_ARGS),
    (MAX_ARGS + 1, True, errno.E2BIG)])
def test_pointer_array_ending_at_an_unmapped_page(native_layout, count, terminated, expected):
    """argv arrays flush against a PROT_NONE page: read up to the NULL, EFAULT without one, E2BIG past MAX_ARGS."""
    address = int(native_layout.ask("ptrs", str(count), str(int(terminated))).split("=")[1], 16)
    try:
        got = RemoteMemory(native_layout.pid).argv(address)
    except OSError as err:
        got = err.errno
    assert got == expected


def test_bad_pointers_read_as_efault(native_layout):
    """NULL, a kernel address and an unmapped user address all read as EFAULT."""
    memory = RemoteMemory(native_layout.pid)
    assert [read_cstring(memory, a) for a in (0, 0xFFFF_FFFF_FFFF_F000, 0x1000)] == [errno.EFAULT] * 3


@FUZZ
@given(prefix=PREFIXES, parts=st.lists(NAME_BYTES, max_size=4), long_tail=st.sampled_from([0, 4095, 4200]),
       terminated=st.booleans())
def test_sandboxed_opens_answer_as_the_kernel_does(cbin, world, prefix, parts, long_tail, terminated):
    """The same open, natively and under the supervisor (which permits everything), returns the same
    result, whatever the name's bytes, length or termination; the supervisor keeps answering."""
    name = prefix + b"".join(parts) + b"n" * long_tail + (b"\0" if terminated else b"")
    results = []
    for trapped in (None, FS_TRAPPED):
        target = LayoutTarget(cbin("layout"), trapped=trapped)
        try:
            results.append((target.ask("open", hexed(name)), target.ask("canary", str(world / "f"))))
        finally:
            assert target.close() == 0
        if trapped:  # the canary was decided by the supervisor, not let through
            assert str(world / "f") in [r["args"].get("path") for r in target.audit]
    native, sandboxed = results
    assert sandboxed == native
    assert native[1] == "ret=0"


def test_opens_of_bad_pointers_fail_with_efault_and_leave_the_supervisor_answering(cbin, world):
    """open() of NULL, address 1, a kernel address and the PROT_NONE page: EFAULT (14) under the
    supervisor as natively, each recorded as DECODE_ERROR; the canary open afterwards still succeeds."""
    addresses = ("0", "1", "ffffffffffff0000", "guard")
    answers = []
    for trapped in (None, FS_TRAPPED):
        target = LayoutTarget(cbin("layout"), trapped=trapped)
        try:
            answers.append([target.ask("rawopen", a) for a in addresses] + [target.ask("canary", str(world / "f"))])
        finally:
            assert target.close() == 0
    assert answers == [["ret=-14"] * 4 + ["ret=0"]] * 2
    assert [r["reason_code"] for r in target.audit if r["effect"] == "DENY"] == ["DECODE_ERROR"] * 4


def test_rename_between_names_that_are_not_utf8(cbin, world, cgroup_dir):
    """rename of a file named b"\\xff\\xfe" to b"\\x80x" under the supervisor succeeds and is
    recorded; the supervisor answers the next call."""
    old, new = os.fsencode(world) + b"/\xff\xfe", os.fsencode(world) + b"/\x80x"
    open(old, "wb").close()
    target = LayoutTarget(cbin("layout"), trapped=FS_TRAPPED, cgroup=cgroup_dir)
    try:
        answers = (target.ask("rename", hexed(old + b"\0"), hexed(new)), target.ask("canary", str(world / "f")))
    finally:
        assert target.close() == 0
    assert answers == ("ret=0", "ret=0")
    assert (os.path.exists(old), os.path.exists(new)) == (False, True)
    assert [(r["effect"], r["args"]["path"], r["args"]["dest"]) for r in target.audit if r["tool"] == "fs/rename"] == \
        [("PERMIT", os.fsdecode(old), os.fsdecode(new))]
