"""Reading an agent task's memory: strings, pointer arrays and structs.

Every read stays inside one page, because process_vm_readv fails a whole iovec that
touches an unmapped page; a string that ends just before an unmapped page must still
read. Readers raise OSError with the errno the kernel itself would give (EFAULT,
ENAMETOOLONG, E2BIG), so a decode failure can be answered faithfully as a denial.
The caller re-checks SECCOMP_IOCTL_NOTIF_ID_VALID after reading: the pid could have
died and been reused while we read.
"""

from __future__ import annotations

import errno
import mmap
import struct

from sandbox._libc import process_vm_readv

PAGE_SIZE = mmap.PAGESIZE
PATH_MAX = 4096  # including the terminating NUL, as the kernel counts
MAX_ARG_STRLEN = 32 * PAGE_SIZE  # the kernel's limit for one argv or envp string
MAX_ARGS = 16384  # an exec with more arguments is refused with E2BIG
MAX_ARGV_BYTES = 1 << 20  # total argv string bytes; more is refused with E2BIG
MAX_ENV = 65536
_POINTER = struct.Struct("<Q")


class RemoteMemory:
    """The address space of task ``pid`` (in the supervisor's pid namespace)."""

    def __init__(self, pid: int):
        self.pid = pid

    def read(self, address: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``address``, page by page, or OSError(EFAULT)."""
        if address == 0 and length:
            raise OSError(errno.EFAULT, "NULL pointer argument")
        chunks, done = [], 0
        while done < length:
            at = address + done
            size = min(length - done, PAGE_SIZE - at % PAGE_SIZE)
            chunk = self._read_page(at, size)
            if len(chunk) != size:
                raise OSError(errno.EFAULT, f"short read at {at:#x} in pid {self.pid}")
            chunks.append(chunk)
            done += size
        return b"".join(chunks)

    def cstring(self, address: int, limit: int = PATH_MAX, too_long: int = errno.ENAMETOOLONG) -> bytes:
        """A NUL-terminated string of at most ``limit`` bytes including the NUL."""
        if address == 0:
            raise OSError(errno.EFAULT, "NULL string pointer")
        parts, total = [], 0
        while True:
            at = address + total
            size = min(PAGE_SIZE - at % PAGE_SIZE, limit - total)
            if size <= 0:
                raise OSError(too_long, f"string at {address:#x} longer than {limit - 1} bytes")
            chunk = self._read_page(at, size)
            if not chunk:
                raise OSError(errno.EFAULT, f"unreadable string at {at:#x} in pid {self.pid}")
            end = chunk.find(b"\0")
            if end >= 0:
                parts.append(chunk[:end])
                return b"".join(parts)
            parts.append(chunk)
            total += len(chunk)

    def pointers(self, address: int, limit: int) -> list[int]:
        """A NULL-terminated array of pointers (argv, envp), at most ``limit`` entries."""
        found: list[int] = []
        at = address
        while True:
            # Up to the page end; a misaligned last pointer straddles pages and read() splits it.
            count = max(1, (PAGE_SIZE - at % PAGE_SIZE) // _POINTER.size)
            block = self.read(at, min(count, limit + 1 - len(found)) * _POINTER.size)
            for (value,) in _POINTER.iter_unpack(block):
                if value == 0:
                    return found
                if len(found) == limit:
                    raise OSError(errno.E2BIG, f"more than {limit} pointers at {address:#x}")
                found.append(value)
            at += len(block)

    def argv(self, address: int) -> list[bytes]:
        """The exec argument vector, bounded by MAX_ARGS and MAX_ARGV_BYTES (else E2BIG).

        A NULL argv is an empty list, as Linux treats it."""
        if address == 0:
            return []
        strings, total = [], 0
        for pointer in self.pointers(address, MAX_ARGS):
            value = self.cstring(pointer, MAX_ARG_STRLEN, too_long=errno.E2BIG)
            total += len(value) + 1
            if total > MAX_ARGV_BYTES:
                raise OSError(errno.E2BIG, f"argv longer than {MAX_ARGV_BYTES} bytes")
            strings.append(value)
        return strings

    def count(self, address: int, limit: int = MAX_ENV) -> int:
        """How many entries a NULL-terminated pointer array has (envp)."""
        return 0 if address == 0 else len(self.pointers(address, limit))

    def _read_page(self, address: int, size: int) -> bytes:
        try:
            return process_vm_readv(self.pid, address, size)
        except OSError as err:
            if err.errno in (errno.EFAULT, errno.EIO, errno.ENOMEM):
                return b""
            raise
