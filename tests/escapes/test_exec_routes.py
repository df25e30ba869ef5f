"""A denied program must stay denied whatever route reaches it: PATH lookup, env, a symlink named
differently, a copy, a rename, a hard link, the dynamic loader, a shebang (absolute or relative), a memfd.

The policy is written the way a user would: `deny! shell/* when args.program == "curl"`. The
product decides on what will run (docs/tool-calls.md: `path` is the resolved executable,
`program` its basename). One script runs every route natively and once more in the sandbox;
each route prints `ROUTE=ran` when curl's version banner came out, `ROUTE=stopped` otherwise."""

from __future__ import annotations

import pytest

from tests.escapes.conftest import native, sandboxed

pytestmark = pytest.mark.kernel
NO_CURL = 'agent a {\n  default permit\n  deny! shell/* when args.program == "curl" reason: "no curl"\n}\n'
CURL = "/usr/bin/curl"
SETUP = f"""
route() {{ name=$1; shift; out=$("$@" 2>&1); case "$out" in *Protocols:*) echo "$name=ran";; *) echo "$name=stopped";; esac; }}
mkdir bin; cp {CURL} bin/curl; cp {CURL} fetch; cp {CURL} curl; mv curl kurl; ln {CURL} hardlink; ln -s {CURL} ls
printf '#!{CURL} --version\\n' > fetcher; chmod +x fetcher
mkdir -p usr/bin; ln -s {CURL} usr/bin/true; printf '#!usr/bin/true --version\\n' > relfetcher; chmod +x relfetcher
"""
ROUTES = {  # route -> command; each ends in the marker route-NAME so its audit record can be found
    "direct": "curl --version route-direct",
    "env": "env curl --version route-env",
    "symlink-named-ls": "./ls --version route-symlink-named-ls",
    "copy-same-name": "./bin/curl --version route-copy-same-name",
    "copy-renamed": "./fetch --version route-copy-renamed",
    "rename": "./kurl --version route-rename",
    "hard-link": "./hardlink --version route-hard-link",
    "loader": f"/lib64/ld-linux-x86-64.so.2 {CURL} --version route-loader",
    "shebang": "./fetcher route-shebang",
    # a relative #! is opened from the cwd, where usr/bin/true is curl (not /usr/bin/true)
    "shebang-relative": "./relfetcher route-shebang-relative",
    "memfd-execveat": "{memfd} execveat " + CURL + " curl curl --version route-memfd-execveat",
    "memfd-proc-fd": "{memfd} procfd " + CURL + " curl curl --version route-memfd-proc-fd",
}


def script(memfd: str) -> str:
    return SETUP + "".join(f"route {name} {command.format(memfd=memfd)}\n" for name, command in ROUTES.items())


@pytest.fixture(scope="module")
def outcomes(cbin, tmp_path_factory):
    """(native, sandboxed) outcomes of the route script, each in a fresh directory."""
    native_dir, boxed_dir = tmp_path_factory.mktemp("routes-native"), tmp_path_factory.mktemp("routes-boxed")
    text = script(cbin("memfd_exec"))
    return (native(["sh", "-c", text], cwd=native_dir),
            sandboxed(NO_CURL, ["sh", "-c", text], boxed_dir, timeout=90))


@pytest.mark.parametrize("route", list(ROUTES))
def test_denied_program_is_stopped_on_every_route(outcomes, route):
    """The route runs curl natively; in the sandbox curl never runs and a DENY shell/exec names the attempt."""
    natively, boxed = outcomes
    assert natively.lines()[route] == "ran"
    assert boxed.lines().get(route) == "stopped", boxed.explain()
    denials = [(r["tool"], r["reason_code"], r["reason"]) for r in boxed.denials("shell/")
               if f"route-{route}" in r["args"]["argv"]]
    assert denials and set(denials) == {("shell/exec", "FPL_STRICT_DENY", "no curl")}, \
        [r["args"] for r in boxed.audit if r["tool"] == "shell/exec" and f"route-{route}" in r["args"]["argv"]]
