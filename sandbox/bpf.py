"""Classic BPF as seccomp uses it: return actions, arch tokens and instruction decoding."""

from __future__ import annotations

import struct
from typing import NamedTuple

# seccomp return actions (include/uapi/linux/seccomp.h); the low 16 bits carry data.
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
RET_ACTION_FULL = 0xFFFF0000
RET_DATA = 0x0000FFFF

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7, "i386": 0x40000003}
X32_SYSCALL_BIT = 0x40000000

# Offsets into struct seccomp_data: nr, arch, instruction_pointer, args[6].
OFFSET_NR, OFFSET_ARCH, OFFSET_IP, OFFSET_ARGS = 0, 4, 8, 16
SECCOMP_DATA = struct.Struct("<iIQ6Q")

_INSN = struct.Struct("<HBBI")


class Insn(NamedTuple):
    code: int
    jt: int
    jf: int
    k: int


def errno_action(err: int) -> int:
    return RET_ERRNO | (err & RET_DATA)


def decode(program: bytes) -> list[Insn]:
    """Split a sock_filter array into instructions."""
    if len(program) % _INSN.size:
        raise ValueError(f"BPF program length {len(program)} is not a multiple of {_INSN.size}")
    return [Insn(*_INSN.unpack_from(program, off)) for off in range(0, len(program), _INSN.size)]


def seccomp_data(nr: int, arch: int, args: tuple[int, ...] = (), ip: int = 0) -> bytes:
    """Pack a struct seccomp_data as the kernel hands it to a filter."""
    padded = tuple(args) + (0,) * (6 - len(args))
    return SECCOMP_DATA.pack(nr, arch, ip, *padded)
