"""Regenerate sandbox/_syscalls_generated.py from libseccomp's syscall tables.

Usage: python3 tools/gen_syscalls.py > sandbox/_syscalls_generated.py

libseccomp (through pyseccomp) names every syscall number it knows on x86_64 and
aarch64. Syscalls newer than the installed libseccomp are listed in KERNEL_ADDITIONS
from the kernel's unified syscall table (numbers >= 424 are shared by all arches).
"""

from __future__ import annotations

import pyseccomp

MAX_NR = 600
ARCHES = (("x86_64", pyseccomp.Arch.X86_64), ("aarch64", pyseccomp.Arch.AARCH64))

# Added to Linux after libseccomp 2.5.4 was released (include/uapi/asm-generic/unistd.h).
KERNEL_ADDITIONS = {
    "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459, "lsm_set_self_attr": 460,
    "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463, "getxattrat": 464,
    "listxattrat": 465, "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468,
    "file_setattr": 469,
}


def collect() -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for arch_name, arch in ARCHES:
        for nr in range(MAX_NR):
            try:
                name = pyseccomp.resolve_syscall(arch, nr).decode()
            except ValueError:
                continue
            table.setdefault(name, {})[arch_name] = nr
    for name, nr in KERNEL_ADDITIONS.items():
        for arch_name, _ in ARCHES:
            table.setdefault(name, {}).setdefault(arch_name, nr)
    return table


def render(table: dict[str, dict[str, int]]) -> str:
    lines = [
        '"""Syscall numbers per architecture. GENERATED, do not edit.',
        "",
        "Regenerate with: python3 tools/gen_syscalls.py > sandbox/_syscalls_generated.py",
        '"""',
        "",
        "# name: {arch: number}; a syscall missing on an arch has no entry for it.",
        "SYSCALLS: dict[str, dict[str, int]] = {",
    ]
    for name in sorted(table):
        arches = ", ".join(f'"{a}": {n}' for a, n in sorted(table[name].items()))
        lines.append(f'    "{name}": {{{arches}}},')
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(collect()), end="")
