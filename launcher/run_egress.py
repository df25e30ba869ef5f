"""The run's HTTP(S) egress: requests to the APIs the policy names are decided one by one (docs/egress.md).

Built before launch() (no thread may run then): the CA, the trust stores shown in the sandbox,
the agent's environment and the proxy's listeners. ``start`` (launch()'s ``started`` hook)
starts the proxy and points the socket broker at it."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

import policy
from policy import ast
from policy._checks import ordered_rules
from policy.glob import compile_glob
from sandbox.egress.catalogue import Catalogue, CatalogueError
from sandbox.egress.credentials import BACKENDS, Credential
from sandbox.errors import SandboxError
from sandbox.spec import SandboxSpec

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Variables common TLS stacks read for their trust store: all point at the sandbox's system bundle.
TRUST_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
                   "GIT_SSL_CAINFO", "AWS_CA_BUNDLE", "PIP_CERT")
# Bundles libraries ship and use regardless of the variables: (module, file inside its package).
PACKAGED_BUNDLES = (("certifi", "cacert.pem"), ("stripe", "data/ca-certificates.crt"))


HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace", "connect")
DEFAULT_PORTS = ("443", "80")  # inspected for an http/<method> rule with host: but no port:


class PlanError(Exception):
    """A credential block the egress cannot serve; the message says how to fix it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--egress-catalogue", action="append", default=[], metavar="DIR",
                        help="directory of *.toml API catalogue entries, added to the built-in ones "
                             "(repeatable; docs/egress.md)")
    parser.add_argument("--egress-upstream-ca", metavar="FILE",
                        help="verify the APIs' certificates against FILE instead of this host's trust store")
    parser.add_argument("--egress-max-body", type=int, default=None, metavar="BYTES",
                        help="largest request body read for a decision; larger requests are refused "
                             "(default 1048576)")
    parser.add_argument("--no-egress", action="store_true",
                        help="no HTTP(S) inspection: connections are decided as net/connect only")


def packaged_bundles() -> list[str]:
    """Files of PACKAGED_BUNDLES that exist for this interpreter (found without importing them)."""
    found = []
    for module, name in PACKAGED_BUNDLES:
        spec = importlib.util.find_spec(module)
        for directory in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                found.append(path)
    return found


# -- what the egress needs from the policy -------------------------------------------------
# A connection is inspected when its host (the name the agent looked up, or the address it used)
# and port are named by a rule for an http/<method> tool (its host: and port: clauses) or belong
# to a catalogue entry whose tool a rule names.


def _alternatives(value: str) -> list[str]:
    return [v for v in value.replace(",", " ").split() if v]


def _matchers(patterns: list[str], normalise=str.lower) -> tuple[Callable[[str], bool], ...]:
    return tuple(compile_glob(normalise(p).rstrip(".") if normalise else p) for p in patterns)


def _names_http(tool_pattern: str) -> bool:
    match = compile_glob(tool_pattern)
    return any(match(f"http/{m}") for m in HTTP_METHODS)


def _credential(block: ast.Block, where: str) -> Credential:
    settings = {s.key: s.value for s in block.settings}
    scopes = settings.get("scope", ())
    tools = []
    for scope in scopes if isinstance(scopes, tuple) else (scopes,):
        scope = str(scope)
        tools.append(compile_glob(scope))
        if "/" not in scope:
            tools.append(compile_glob(f"{block.name}/{scope}"))
    backend, path = str(settings.get("backend", "")), settings.get("path")
    if backend not in BACKENDS or not isinstance(path, str) or not path:
        raise PlanError(f"{where}: credential {block.name}: the egress injects secrets from `backend env` "
                        f"(path: a variable of the launcher's environment) or `backend file` (path: a file); "
                        f"got backend {backend or '(none)'!r}, path {path!r}")
    return Credential(block.name or "", tuple(tools), backend, path)


class EgressPlan:
    def __init__(self, targets: list[tuple[tuple, tuple]], credentials: list[Credential]):
        self.targets = targets  # (host matchers, port matchers)
        self.credentials = credentials

    @classmethod
    def build(cls, documents: list[tuple[str, ast.Document]], catalogue: Catalogue) -> "EgressPlan":
        """From the parsed policy layers ((path, document)); PlanError for a credential it cannot serve."""
        targets, credentials = [], []
        for path, doc in documents:
            for rule in ordered_rules(doc):
                if rule.tool.strip("*") == "":
                    continue  # `permit *` names no API
                if _names_http(rule.tool):
                    hosts = [a for c in rule.net if c.kind == "host" for a in _alternatives(c.value)]
                    ports = [a for c in rule.net if c.kind == "port" for a in _alternatives(c.value)]
                    if hosts:
                        targets.append((_matchers(hosts), _matchers(ports or list(DEFAULT_PORTS), None)))
                match = compile_glob(rule.tool)
                for endpoint in catalogue.endpoints:
                    if match(endpoint.tool):
                        targets.append((_matchers([endpoint.host]), _matchers([str(endpoint.port)], None)))
            for agent in doc.agents[:1]:
                credentials.extend(_credential(b, path) for b in agent.of(ast.Block) if b.kind == "credential")
        return cls(targets, credentials)

    def intercepts(self, host: str | None, ip: str, port: int) -> bool:
        name = (host or ip).lower().rstrip(".")
        return any(any(h(name) for h in hosts) and any(p(str(port)) for p in ports) for hosts, ports in self.targets)

    def credential_for(self, tool: str) -> Credential | None:
        for credential in self.credentials:
            if credential.covers(tool):
                return credential
        return None

    def secret_variables(self) -> set[str]:
        """Environment variables holding secrets: kept out of the agent's environment."""
        return {c.path for c in self.credentials if c.backend == "env"}

    def check_secrets(self, environ: dict[str, str] = os.environ) -> list[str]:
        """One warning per credential whose secret is unavailable now (its tools will be denied)."""
        return [f"credential {c.name}: no secret in {'$' if c.backend == 'env' else ''}{c.path}; "
                f"requests needing it are denied" for c in self.credentials if c.secret(dict(environ)) is None]


class EgressRun:
    def __init__(self, spec: SandboxSpec, decider, plan: EgressPlan, ca, upstream: ssl.SSLContext):
        from sandbox.egress.proxy import EgressProxy  # h11 and cryptography load only for runs that inspect

        self.spec, self.plan, self.ca = spec, plan, ca
        self.proxy = EgressProxy(ca, decider, upstream)
        for path in [SYSTEM_BUNDLE] + packaged_bundles():
            try:
                existing = Path(path).read_bytes()
            except OSError:
                continue
            spec.files[path] = ca.trust_bundle(existing)
        for name in plan.secret_variables():
            spec.env_changes[name] = None  # the agent never holds a brokered secret
        if SYSTEM_BUNDLE in spec.files:
            spec.env_changes.update({name: SYSTEM_BUNDLE for name in TRUST_VARIABLES})

    def start(self) -> None:
        self.proxy.start()
        self.spec.net = dataclasses.replace(self.spec.net, intercept=self.intercept)

    def intercept(self, name: str | None, ip: str, port: int, family: str):
        from sandbox.egress.proxy import Destination

        if not self.plan.intercepts(name, ip, port):
            return None
        # Without an IPv6 loopback listener an IPv6 socket reaches the IPv4 one as a mapped address.
        address = self.proxy.address(family) or self.proxy.address("inet")
        destination = Destination(name, ip, port)
        return address, lambda local: self.proxy.registry.register(local, destination)

    def close(self) -> None:
        self.proxy.close()


def start_egress(spec: SandboxSpec, decide, audit, approve, sources: list[tuple[str, str]],
                 args: argparse.Namespace) -> EgressRun | None:
    """The egress for this run, or None when the policy names no HTTP API (or --no-egress).
    Raises SandboxError for a catalogue, credential or CA file that cannot be used."""
    if getattr(args, "no_egress", False):
        return None
    try:
        catalogue = Catalogue.load(getattr(args, "egress_catalogue", []))
        plan = EgressPlan.build([(path, policy.parse(text, path)) for path, text in sources], catalogue)
    except (CatalogueError, PlanError) as err:
        raise SandboxError("start_egress", str(err), "see docs/egress.md") from None
    if not plan.targets:
        return None
    max_body = getattr(args, "egress_max_body", None)
    if max_body is not None and max_body <= 0:
        raise SandboxError("start_egress", f"--egress-max-body {max_body} is not a positive size",
                           "give bytes, e.g. 8388608 for git pushes up to 8 MiB")
    if "mount" not in spec.namespaces:
        raise SandboxError("start_egress", "the sandbox CA needs a mount namespace to be trusted",
                           "pass --no-egress to decide connections as net/connect only")
    upstream_ca = getattr(args, "egress_upstream_ca", None)
    import ssl  # ~10 ms: only for runs whose policy names an HTTP API

    try:
        upstream = ssl.create_default_context(cafile=upstream_ca)
    except (OSError, ssl.SSLError) as err:
        raise SandboxError("start_egress", f"--egress-upstream-ca {upstream_ca}: {err}",
                           "give a PEM file of CA certificates") from None
    upstream.set_alpn_protocols(["http/1.1"])
    try:  # loaded only for runs that inspect: cryptography alone adds ~150 ms to every start-up
        from sandbox.egress.ca import CertificateAuthority
        from sandbox.egress.deciding import Decider
        from sandbox.egress.proxy import EgressProxy  # noqa: F401 - EgressRun needs it loaded now
    except ImportError as err:
        raise SandboxError("start_egress", f"cannot load the HTTP egress: {err}",
                           "pip install cryptography h11, or pass --no-egress") from None
    for warning in plan.check_secrets():
        print(f"faramesh-sandbox: warning: {warning}", file=sys.stderr)
    decider = Decider(decide, audit, approve, spec.approve_timeout, spec.session_id, catalogue, plan,
                      **({"max_body": max_body} if max_body else {}))
    return EgressRun(spec, decider, plan, CertificateAuthority(spec.session_id), upstream)
