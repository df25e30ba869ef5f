"""A stand-in agent: it tries a few things an agent might do and prints what happened.

It knows nothing about the sandbox; the sandbox decides each action at the syscall."""

import os
import subprocess
import sys
from pathlib import Path


def attempt(label, action):
    try:
        result = action()
        print(f"  ok      {label}{': ' + result if result else ''}")
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"  refused {label}: {exc.strerror if isinstance(exc, OSError) else exc}")


def run(*argv):
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return out.stdout.strip()


workspace = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
print(f"agent: pid {os.getpid()}, hostname {os.uname().nodename}")
attempt("run `uname -s`", lambda: run("uname", "-s"))
attempt("run `curl example.com`", lambda: run("curl", "-sS", "example.com"))
attempt("read /etc/hostname", lambda: Path("/etc/hostname").read_text().strip())
attempt("read /etc/shadow", lambda: Path("/etc/shadow").read_text()[:10])
attempt("write the workspace", lambda: (workspace / "notes.txt").write_text("done\n") and "")
attempt("delete its own notes", lambda: (workspace / "notes.txt").unlink())
attempt("write /root/.bashrc", lambda: Path("/root/.bashrc").open("a").close())
