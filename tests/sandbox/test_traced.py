"""The trapped-syscall table, its decoders and remote memory reads (on this process)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import memory, traced
from sandbox._libc import syscall_number
from sandbox._syscalls_generated import SYSCALLS
from sandbox.decode import decode
from sandbox.decode.exec import lexical_absolute, resolve_in_root
from sandbox.decode.readers import READERS
from sandbox.notify import Notification

REPO = Path(__file__).resolve().parents[2]
# Legacy calls that aarch64 (asm-generic) never had.
NOT_ON_AARCH64 = {"open", "creat", "unlink", "rmdir", "rename", "mkdir", "link", "symlink", "chmod", "chown",
                  "lchown", "futimesat", "utimes", "utime", "mknod"}
REQUIRED_TOOLS = {
    "execve": "shell/exec", "execveat": "shell/exec", "open": "fs/read|fs/write", "openat": "fs/read|fs/write",
    "openat2": "fs/read|fs/write", "creat": "fs/read|fs/write", "unlink": "fs/delete", "unlinkat": "fs/delete",
    "rmdir": "fs/delete", "rename": "fs/rename", "renameat": "fs/rename", "renameat2": "fs/rename",
    "mkdir": "fs/mkdir", "mkdirat": "fs/mkdir", "link": "fs/link", "linkat": "fs/link", "symlink": "fs/link",
    "symlinkat": "fs/link", "truncate": "fs/write", "chmod": "fs/write", "fchmodat": "fs/write",
    "fchmodat2": "fs/write", "chown": "fs/write", "lchown": "fs/write", "fchownat": "fs/write",
    "utimensat": "fs/write", "utimes": "fs/write", "utime": "fs/write", "futimesat": "fs/write",
    "setxattr": "fs/write", "lsetxattr": "fs/write", "removexattr": "fs/write", "lremovexattr": "fs/write",
}
AT_FDCWD = -100


def test_table_covers_every_required_syscall():
    """Each syscall of each category is trapped with the documented tool."""
    table = {row.name: row.tool for row in traced.TABLE}
    assert {name: table.get(name) for name in REQUIRED_TOOLS} == REQUIRED_TOOLS


@pytest.mark.parametrize("row", traced.TABLE, ids=lambda r: r.name)
def test_every_row_has_readers_and_numbers(row):
    """Every role has a reader, and the syscall has a number on x86_64 (and aarch64 unless legacy)."""
    assert all(role in READERS for role in row.roles)
    assert SYSCALLS[row.name]["x86_64"] > 0
    assert ("aarch64" in SYSCALLS[row.name]) is (row.name not in NOT_ON_AARCH64)


def test_tool_calls_doc_is_current():
    """docs/tool-calls.md is exactly what `python3 -m sandbox.traced` prints."""
    generated = subprocess.run([sys.executable, "-m", "sandbox.traced"], cwd=REPO, capture_output=True,
                               check=True, text=True).stdout
    assert (REPO / "docs" / "tool-calls.md").read_text() == generated


def test_open_tool_by_flags():
    """Write access, O_CREAT or O_TRUNC make an open fs/write."""
    assert traced.open_tool(os.O_RDONLY) == "fs/read"
    assert traced.open_tool(os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY) == "fs/read"
    assert traced.open_tool(os.O_WRONLY) == "fs/write"
    assert traced.open_tool(os.O_RDWR) == "fs/write"
    assert traced.open_tool(os.O_RDONLY | os.O_CREAT) == "fs/write"
    assert traced.open_tool(os.O_RDONLY | os.O_TRUNC) == "fs/write"


def _address(buffer) -> int:
    return ctypes.addressof(buffer)


def _notification(name: str, *args: int) -> Notification:
    padded = tuple(a & 0xFFFFFFFFFFFFFFFF for a in args) + (0,) * (6 - len(args))
    return Notification(1, os.getpid(), 0, syscall_number(name), 0xC000003E, 0, padded)


def test_decode_openat_reads_path_and_cuts_ints_to_kernel_width():
    """openat: dirfd sign-extended from 32 bits, path read once, flags and mode."""
    path = ctypes.create_string_buffer(b"/etc/hostname")
    flags = (1 << 40) | os.O_WRONLY | os.O_CREAT  # high bits are ignored by the kernel
    decoded = decode(_notification("openat", AT_FDCWD, _address(path), flags, 0o640))
    assert decoded == {"syscall": "openat", "pid": os.getpid(), "dirfd": -100, "path": b"/etc/hostname",
                       "flags": os.O_WRONLY | os.O_CREAT, "mode": 0o640}


def test_decode_creat_implies_its_flags():
    """creat(path, mode) decodes as an open with O_CREAT|O_WRONLY|O_TRUNC."""
    path = ctypes.create_string_buffer(b"new.txt")
    decoded = decode(_notification("creat", _address(path), 0o600))
    assert decoded["flags"] == os.O_CREAT | os.O_WRONLY | os.O_TRUNC and decoded["path"] == b"new.txt"


def test_decode_openat2_reads_open_how():
    """openat2's struct open_how gives flags, mode and resolve; unknown trailing fields are E2BIG."""
    path = ctypes.create_string_buffer(b"a")
    how = ctypes.create_string_buffer(struct.pack("<QQQ", os.O_RDONLY, 0, 0x10) + b"\0" * 8)
    decoded = decode(_notification("openat2", 3, _address(path), _address(how), 32))
    assert (decoded["dirfd"], decoded["flags"], decoded["mode"], decoded["resolve"]) == (3, 0, 0, 0x10)
    bad = ctypes.create_string_buffer(struct.pack("<QQQQ", 0, 0, 0, 1))
    with pytest.raises(OSError) as caught:
        decode(_notification("openat2", 3, _address(path), _address(bad), 32))
    assert caught.value.errno == errno.E2BIG


def test_decode_renameat2_symlink_and_times():
    """Two-path calls, symlink content and utimensat's NULL path and timespec pair decode."""
    old, new = ctypes.create_string_buffer(b"old"), ctypes.create_string_buffer(b"new")
    decoded = decode(_notification("renameat2", 4, _address(old), 5, _address(new), 1))
    assert (decoded["dirfd"], decoded["path"], decoded["newdirfd"], decoded["newpath"], decoded["at_flags"]) == \
        (4, b"old", 5, b"new", 1)
    decoded = decode(_notification("symlink", _address(old), _address(new)))
    assert (decoded["target"], decoded["newpath"]) == (b"old", b"new")
    times = ctypes.create_string_buffer(struct.pack("<qqqq", 10, 20, 30, (1 << 30) - 2))
    decoded = decode(_notification("utimensat", 7, 0, _address(times), 0))
    assert (decoded["path"], decoded["at_flags"], decoded["times"]) == (b"", 0x1000, ((10, 20), (30, (1 << 30) - 2)))


def test_decode_execve_argv_and_env_count():
    """execve reads path, every argv string and counts envp."""
    strings = [ctypes.create_string_buffer(s) for s in (b"/bin/ls", b"-l", b"/tmp")]
    argv = (ctypes.c_char_p * 4)(*[ctypes.cast(s, ctypes.c_char_p) for s in strings], None)
    env_strings = [ctypes.create_string_buffer(b"A=1"), ctypes.create_string_buffer(b"B=2")]
    envp = (ctypes.c_char_p * 3)(*[ctypes.cast(s, ctypes.c_char_p) for s in env_strings], None)
    decoded = decode(_notification("execve", _address(strings[0]), _address(argv), _address(envp)))
    assert decoded == {"syscall": "execve", "pid": os.getpid(), "path": b"/bin/ls",
                       "argv": [b"/bin/ls", b"-l", b"/tmp"], "envp_count": 2}


def _guarded_pages():
    """Two pages; the second is PROT_NONE, so any read touching it fails."""
    region = mmap.mmap(-1, 2 * mmap.PAGESIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(base + mmap.PAGESIZE), mmap.PAGESIZE, 0) == 0
    return region, base


def test_string_ending_at_an_unreadable_page_still_reads():
    """A string whose NUL is the last byte before an unreadable page is read page by page."""
    region, base = _guarded_pages()
    text = b"/tmp/edge-of-page"
    start = mmap.PAGESIZE - len(text) - 1
    region[start:mmap.PAGESIZE] = text + b"\0"
    assert memory.RemoteMemory(os.getpid()).cstring(base + start) == text
    region[mmap.PAGESIZE - 4:mmap.PAGESIZE] = b"abcd"  # no NUL before the guard page
    with pytest.raises(OSError) as caught:
        memory.RemoteMemory(os.getpid()).cstring(base + mmap.PAGESIZE - 4)
    assert caught.value.errno == errno.EFAULT


def test_bounds_give_the_kernels_errnos():
    """A path over PATH_MAX is ENAMETOOLONG, NULL is EFAULT, an argv over the limit E2BIG."""
    remote = memory.RemoteMemory(os.getpid())
    long_path = ctypes.create_string_buffer(b"a" * memory.PATH_MAX)
    with pytest.raises(OSError) as caught:
        remote.cstring(_address(long_path))
    assert caught.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as caught:
        remote.cstring(0)
    assert caught.value.errno == errno.EFAULT
    arg = ctypes.create_string_buffer(b"x")
    many = (ctypes.c_void_p * (memory.MAX_ARGS + 2))(*([_address(arg)] * (memory.MAX_ARGS + 1)), None)
    with pytest.raises(OSError) as caught:
        remote.argv(_address(many))
    assert caught.value.errno == errno.E2BIG
    big = ctypes.create_string_buffer(b"y" * 100_000)
    bulky = (ctypes.c_void_p * 12)(*([_address(big)] * 11), None)
    with pytest.raises(OSError) as caught:
        remote.argv(_address(bulky))
    assert caught.value.errno == errno.E2BIG


def test_resolve_in_root_follows_symlinks_and_clamps_dotdot(tmp_path):
    """Executable paths resolve symlinks (relative and absolute) and stop `..` at the root."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text("")
    (tmp_path / "alias").symlink_to("bin/tool")
    (tmp_path / "abs").symlink_to(str(tmp_path / "bin"))
    pid = os.getpid()
    assert resolve_in_root(pid, f"{tmp_path}/alias") == f"{tmp_path}/bin/tool"
    assert resolve_in_root(pid, f"{tmp_path}/abs/tool") == f"{tmp_path}/bin/tool"
    assert resolve_in_root(pid, f"{tmp_path}/abs/../alias") == f"{tmp_path}/bin/tool"
    assert resolve_in_root(pid, "/../../..") == "/"
    assert lexical_absolute("/home/a", "../../../etc/./passwd") == "/etc/passwd"
    with pytest.raises(FileNotFoundError):
        resolve_in_root(pid, f"{tmp_path}/missing")
