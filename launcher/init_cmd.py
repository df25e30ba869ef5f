"""``faramesh-sandbox init``: write a commented starter policy to edit and check."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources

# template name -> what it is for (shown by --help)
TEMPLATES = {
    "coding-agent": "works on a checkout, runs system tools, fetches packages by name; `git push` waits for a human",
    "data-agent": "reads inputs and writes reports under /data, one API by name, never a shell",
    "ci": "jails a test suite: builds and tests run, loopback only, nothing publishes",
}


def template_text(name: str) -> str:
    return resources.files("launcher").joinpath("templates", f"{name}.fpl").read_text(encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="coding-agent",
                        help="; ".join(f"{name}: {text}" for name, text in TEMPLATES.items()))
    parser.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: TEMPLATE.fpl here)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    parser.add_argument("--json", action="store_true", help='print {"written": FILE, "template": NAME} instead of text')


def main(args: argparse.Namespace) -> int:
    output = args.output or f"{args.template}.fpl"
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        fd = os.open(output, flags, 0o644)
    except FileExistsError:
        print(f"faramesh-sandbox: {output} already exists — hint: pass --force to overwrite it, "
              "or -o to write elsewhere", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"faramesh-sandbox: cannot write {output}: {err.strerror} — hint: check the directory exists "
              "and is writable", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(template_text(args.template))
    if args.json:
        print(json.dumps({"written": output, "template": args.template}))
        return 0
    print(f"wrote {output} ({args.template}). Next: edit the paths and hosts it marks, then\n"
          f"  faramesh-sandbox policy check {output}\n"
          f"  faramesh-sandbox run --policy {output} -- CMD")
    return 0
