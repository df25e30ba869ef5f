"""A stand-in agent: it tries what an agent might do and prints what happened.

It knows nothing about the sandbox; the sandbox decides each action at the syscall (or, for the
refund, at the faramesh SDK socket the sandbox serves: docs/sdk.md).

    python3 demo_agent.py WORKSPACE PERMITTED_PORT FORBIDDEN_PORT   # the agent
    python3 demo_agent.py --serve                                  # two loopback servers for it
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def attempt(label, action):
    try:
        result = action()
        print(f"  ok      {label}{': ' + result if result else ''}", flush=True)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        print(f"  refused {label}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}", flush=True)


def run(*argv):
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def fetch(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.recv(100).decode().strip()


def sdk(request):
    """One request line to the faramesh SDK socket, one reply line back (docs/sdk.md)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(os.environ["FARAMESH_SOCKET"])
        conn.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(conn.makefile("rb").readline())


def refund(amount):
    """Ask before refunding, as an agent using the SDK does; a defer is polled until settled."""
    reply = sdk({"type": "govern", "call_id": f"refund-{amount}", "agent_id": "demo-agent",
                 "tool_id": "stripe/refund", "args": {"amount": amount, "currency": "usd"}})
    if reply.get("effect") == "DEFER":
        print(f"  waiting refund ${amount}: {reply.get('reason')}; a human must approve", flush=True)
        status = "pending"
        while status == "pending":
            time.sleep(0.2)
            status = sdk({"type": "poll_defer", "agent_id": "demo-agent",
                          "defer_token": reply["defer_token"]}).get("status")
        if status != "approved":
            raise RuntimeError(f"approval {status}")
        return "approved"
    if reply.get("effect") != "PERMIT":
        raise RuntimeError(f"{reply.get('reason_code') or reply.get('error')}: {reply.get('reason', '')}")
    return ""


def serve():
    """Two loopback servers that greet whoever connects; prints their ports, runs until killed."""
    listeners = []
    for name in ("permitted", "forbidden"):
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append((listener, f"hello from the {name} server\n".encode()))
    print(" ".join(str(listener.getsockname()[1]) for listener, _ in listeners), flush=True)
    import selectors
    selector = selectors.DefaultSelector()
    for listener, greeting in listeners:
        selector.register(listener, selectors.EVENT_READ, greeting)
    while True:
        for key, _ in selector.select():
            conn, _ = key.fileobj.accept()
            with conn:
                conn.sendall(key.data)


def main():
    if sys.argv[1:] == ["--serve"]:
        return serve()
    workspace, permitted, forbidden = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(f"agent: pid {os.getpid()}, hostname {os.uname().nodename}", flush=True)
    attempt("run `uname -s`", lambda: run("uname", "-s"))
    attempt("run `curl example.com`", lambda: run("curl", "-sS", "example.com"))
    attempt("read /etc/hostname", lambda: Path("/etc/hostname").read_text().strip())
    attempt("read /etc/shadow", lambda: Path("/etc/shadow").read_text()[:10])
    attempt("write the workspace", lambda: (workspace / "notes.txt").write_text("done\n") and "")
    attempt("delete its own notes", lambda: (workspace / "notes.txt").unlink())
    attempt("write /root/.bashrc", lambda: Path("/root/.bashrc").open("a").close())
    attempt(f"connect to 127.0.0.1:{permitted}", lambda: fetch(permitted))
    attempt(f"connect to 127.0.0.1:{forbidden}", lambda: fetch(forbidden))
    attempt("refund $120", lambda: refund(120))
    attempt("refund $800", lambda: refund(800))


if __name__ == "__main__":
    main()
