"""A small classic-BPF interpreter for seccomp programs, to test filters without the kernel."""

from __future__ import annotations

from sandbox.bpf import Insn, decode

# Instruction classes and fields (linux/filter.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, ABS, IMM, MEM = 0x00, 0x20, 0x00, 0x60
K, X, A = 0x00, 0x08, 0x10
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
ALU_OPS = {
    0x00: lambda a, b: a + b, 0x10: lambda a, b: a - b, 0x20: lambda a, b: a * b,
    0x30: lambda a, b: a // b, 0x40: lambda a, b: a | b, 0x50: lambda a, b: a & b,
    0x60: lambda a, b: a << b, 0x70: lambda a, b: a >> b, 0x90: lambda a, b: a % b,
    0xA0: lambda a, b: a ^ b, 0x80: lambda a, b: -a,
}
MASK32 = 0xFFFFFFFF


class BpfError(Exception):
    pass


def run(program: bytes | list[Insn], data: bytes, max_steps: int = 100_000) -> int:
    """Run ``program`` on ``data`` (a packed seccomp_data); returns the 32-bit action."""
    insns = decode(program) if isinstance(program, bytes) else program
    acc = index = 0
    scratch = [0] * 16
    pc = 0
    for _ in range(max_steps):
        if not 0 <= pc < len(insns):
            raise BpfError(f"pc {pc} out of range")
        code, jt, jf, k = insns[pc]
        cls = code & 0x07
        pc += 1
        if cls == LD and code & 0xE0 == ABS:
            if k % 4 or k + 4 > len(data):
                raise BpfError(f"misaligned or out-of-range load at {k}")
            acc = int.from_bytes(data[k:k + 4], "little")
        elif cls == LD and code & 0xE0 == IMM:
            acc = k
        elif cls == LD and code & 0xE0 == MEM:
            acc = scratch[k]
        elif cls == LDX and code & 0xE0 == MEM:
            index = scratch[k]
        elif cls == LDX:
            index = k
        elif cls == ST:
            scratch[k] = acc
        elif cls == STX:
            scratch[k] = index
        elif cls == ALU:
            operand = index if code & X else k
            acc = ALU_OPS[code & 0xF0](acc, operand) & MASK32
        elif cls == JMP:
            op = code & 0xF0
            operand = index if code & X else k
            if op == JA:
                pc += k
                continue
            taken = {JEQ: acc == operand, JGT: acc > operand, JGE: acc >= operand, JSET: bool(acc & operand)}[op]
            pc += jt if taken else jf
        elif cls == RET:
            return acc if code & 0x18 == A else k
        elif cls == MISC:
            if code & 0xF8 == 0x00:  # TAX
                index = acc
            else:  # TXA
                acc = index
        else:
            raise BpfError(f"unsupported instruction {code:#x}")
    raise BpfError("program did not return")
