"""The ``faramesh-sandbox`` command: one table of subcommands, each a module with
``add_arguments(parser)`` and ``main(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Nested groups use a dict of the same shape.
COMMANDS: dict[str, object] = {
    "run": ("launcher.run", "run a command under a policy, every trapped syscall decided"),
    "serve": ("launcher.serve", "keep a sandbox made ahead for each next command (start-up in milliseconds)"),
    "doctor": ("launcher.doctor", "report what this kernel offers and what degrades without it"),
    "learn": ("launcher.learn", "run a command permitting what the base policy allows, then write a policy for it"),
    "init": ("launcher.init_cmd", "write a commented starter policy (--template coding-agent|data-agent|ci)"),
    "policy": {
        "check": ("launcher.policy_cmd", "check FPL files: syntax, names, deny! guarantees"),
        "eval": ("launcher.policy_cmd", "decide one tool call against FPL files, print JSON"),
        "fmt": ("launcher.policy_cmd", "print an FPL file in canonical form"),
    },
    "audit": {
        "verify": ("launcher.audit_cmd", "check the audit store's hash chain; exit 0 intact, 1 tampered"),
        "show": ("launcher.audit_cmd", "print audit records as a table"),
        "export": ("launcher.audit_cmd", "write audit records as JSON Lines"),
    },
    "approvals": {
        "list": ("launcher.approvals_cmd", "list a run's deferred calls waiting for approval"),
        "show": ("launcher.approvals_cmd", "show one waiting call: tool, arguments, rule, reason"),
        "approve": ("launcher.approvals_cmd", "let a waiting call proceed"),
        "deny": ("launcher.approvals_cmd", "refuse a waiting call"),
        "watch": ("launcher.approvals_cmd", "print approvals as they arrive and are answered"),
    },
    "ui": ("launcher.ui", "serve a local web page to answer approvals and read the audit trail"),
    "completion": ("launcher.completion", "print a shell completion script (bash, zsh or fish)"),
}


def _version() -> str:
    from importlib import metadata  # slow to import (email, zipfile): only for --version

    try:
        return metadata.version("faramesh-sandbox")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(message=f"faramesh-sandbox {_version()}\n")


def _selected(table: dict, argv: list[str]) -> list[str]:
    """The command path ``argv`` names (["policy", "check"]), read before parsing so that only
    that command's module is imported; [] when it names none (``--help``, a typo)."""
    words = [word for index, word in enumerate(argv)
             if not word.startswith("-") and argv[index - 1:index] != ["--color"]]  # --color's value
    path: list[str] = []
    for word in words:
        entry = table.get(word) if isinstance(table, dict) else None
        if entry is None:
            break
        path.append(word)
        table = entry
    return path


def _add(sub: argparse._SubParsersAction, table: dict, prefix: str, only: list[str] | None = None) -> None:
    """Add ``table``'s commands; with ``only`` (a command path), import just that command's
    module: the others get their name and help, which is all a parse of ``argv`` can reach."""
    for name, entry in table.items():
        wanted = only is None or only[:1] == [name]
        if isinstance(entry, dict):
            group = sub.add_parser(name, help=f"{name} commands")
            _add(group.add_subparsers(dest=f"{prefix}{name}_cmd", required=True), entry, f"{prefix}{name}_",
                 None if only is None else (only[1:] if wanted else []))
            continue
        module_name, help_text = entry
        parser = sub.add_parser(name, help=help_text, description=help_text)
        if not wanted or only == []:
            continue
        module = importlib.import_module(module_name)
        adder = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
        adder(parser)
        _add_output_options(parser, after_command=True)  # also after the command: `run --quiet`
        runner = getattr(module, f"{name}_main", None) or module.main
        parser.set_defaults(_runner=runner)


def _add_output_options(parser: argparse.ArgumentParser, after_command: bool) -> None:
    """--color and --quiet, taken before or after the command name (docs/cli.md). After it they
    default to SUPPRESS, so a command's parser does not overwrite what was given before it."""
    parser.add_argument("--color", choices=("auto", "always", "never"),
                        default=argparse.SUPPRESS if after_command else "auto",
                        help="colour the output: auto (a terminal, NO_COLOR unset), always or never")
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS if after_command else False,
                        help="print nothing on stdout but requested --json (errors and warnings still go to stderr)")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; given the ``argv`` it will parse, only the command it names is
    imported (start-up time: ``run`` does not load the modules of ``ui`` or ``audit``)."""
    parser = argparse.ArgumentParser(
        prog="faramesh-sandbox",
        description="Enforce FPL policies on unmodified agents at the Linux kernel boundary.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    _add_output_options(parser, after_command=False)
    _add(parser.add_subparsers(dest="command", required=True), COMMANDS, "",
         None if argv is None else _selected(COMMANDS, argv))
    return parser


def _open_standard_streams() -> None:
    """A closed stdin, stdout or stderr becomes /dev/null, before anything else takes the number
    (a held descriptor of the sandbox's, which a service's runner would later replace with its
    client's). ``run`` leaves them as they are: the agent gets what its caller gave."""
    for number, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(number)
        except OSError:
            fd = os.open(os.devnull, os.O_RDWR)
            if fd != number:
                os.dup2(fd, number)
                os.close(fd)
        if getattr(sys, name) is None:  # Python found it closed at start
            setattr(sys, name, open(number, mode, closefd=False, encoding="utf-8", errors="replace"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if _selected(COMMANDS, argv)[:1] == ["serve"]:
        _open_standard_streams()
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from launcher import term

    term.configure(args.color, args.quiet)
    if args.quiet and not getattr(args, "json", False):
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # Python's stdout only: the agent keeps its own
    try:
        return int(args._runner(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
