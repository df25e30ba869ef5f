"""The ``faramesh-sandbox`` command: one table of subcommands, each a module with
``add_arguments(parser)`` and ``main(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

# name -> (module, one-line help). Nested groups use a dict of the same shape.
COMMANDS: dict[str, object] = {
    "run": ("launcher.run", "run a command under a policy, every trapped syscall decided"),
    "doctor": ("launcher.doctor", "report what this kernel offers and what degrades without it"),
    "policy": {
        "check": ("launcher.policy_cmd", "check FPL files: syntax, names, deny! guarantees"),
        "eval": ("launcher.policy_cmd", "decide one tool call against FPL files, print JSON"),
        "fmt": ("launcher.policy_cmd", "print an FPL file in canonical form"),
    },
}


def _version() -> str:
    try:
        return metadata.version("faramesh-sandbox")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _add(sub: argparse._SubParsersAction, table: dict, prefix: str) -> None:
    for name, entry in table.items():
        if isinstance(entry, dict):
            group = sub.add_parser(name, help=f"{name} commands")
            _add(group.add_subparsers(dest=f"{prefix}{name}_cmd", required=True), entry, f"{prefix}{name}_")
            continue
        module_name, help_text = entry
        parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        adder = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
        adder(parser)
        runner = getattr(module, f"{name}_main", None) or module.main
        parser.set_defaults(_runner=runner)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faramesh-sandbox",
        description="Enforce FPL policies on unmodified agents at the Linux kernel boundary.",
    )
    parser.add_argument("--version", action="version", version=f"faramesh-sandbox {_version()}")
    _add(parser.add_subparsers(dest="command", required=True), COMMANDS, "")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._runner(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
