"""The run's DNS stub: the agent's resolver, every lookup a ``net/dns`` decision (docs/network.md).

The stub listens on the host's loopback; the agent's resolv.conf names 127.0.0.53 and the
socket broker redirects that address to the stub. Built before launch() (no threads may run
then) and started from launch()'s ``started`` hook."""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
import time

from policy.calls import ToolCall
from policy.decision import Decision, Effect, deny
from sandbox import dns_stub
from sandbox.dns_upstream import DnsConfigError
from sandbox.spec import SandboxSpec

RESOLV_CONF = "/etc/resolv.conf"


class DnsRun:
    def __init__(self, spec: SandboxSpec, decide, audit, upstream: list[tuple[str, int]] | None = None):
        self.spec, self.decide, self.audit = spec, decide, audit
        self.stub = dns_stub.DnsStub(self.check, upstream)  # DnsConfigError without any nameserver
        spec.files[RESOLV_CONF] = dns_stub.resolv_conf()

    def start(self) -> None:
        """Listen, then point the supervisor's network context at the stub."""
        self.stub.start()
        self.spec.net = dataclasses.replace(
            self.spec.net, names=self.stub.names.host_for,
            dns_redirect={"udp": self.stub.udp_address, "tcp": self.stub.tcp_address})

    def check(self, host: str, qtype: str) -> bool:
        """One lookup, decided and recorded before it is answered; anything unexpected refuses."""
        started = time.monotonic()
        call = ToolCall(tool="net/dns", args={"host": host, "type": qtype, "session": self.spec.session_id},
                        session_id=self.spec.session_id, timestamp=time.time())
        try:
            decision = self.decide(call)
        except Exception as err:  # noqa: BLE001 - fail closed
            decision = deny("DECIDE_ERROR", f"policy evaluation failed: {type(err).__name__}")
        if decision.effect is Effect.DEFER:
            # A resolver gives up after seconds and retries; a held lookup only piles up approvals.
            decision = _replace(decision, Effect.DENY, "DNS_NOT_DEFERRABLE",
                                f"a lookup cannot wait for approval ({decision.reason})")
        if self.audit is not None:
            try:
                self.audit(_record(call, decision, started))
            except Exception:  # noqa: BLE001 - an unrecorded lookup is refused
                return False
        return decision.effect is Effect.PERMIT

    def close(self) -> None:
        self.stub.close()


def _replace(decision: Decision, effect: Effect, code: str, reason: str) -> Decision:
    return Decision(effect, rule_id=decision.rule_id, reason_code=code, reason=reason,
                    policy_version=decision.policy_version, layer=decision.layer)


def _record(call: ToolCall, decision: Decision, started: float) -> dict:
    return {"kind": "decision", "time": call.timestamp, "session": call.session_id, "pid": None, "syscall": "dns",
            "tool": call.tool, "args": call.args, "effect": decision.effect.value, "rule_id": decision.rule_id,
            "reason_code": decision.reason_code, "reason": decision.reason,
            "policy_version": decision.policy_version, "latency_us": round((time.monotonic() - started) * 1e6)}


def parse_upstream(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; raises ValueError with what is wrong."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    ipaddress.ip_address(host)  # names would need a resolver to find the resolver
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} is not 1-65535")
    return host, int(port)


def start_dns(spec: SandboxSpec, decide, audit, upstream: list[str] = ()) -> DnsRun | None:
    """The stub for this run, or None (with a warning) when there is no nameserver: the agent
    then has no resolver, and lookups fail as they would offline. ``upstream``: --dns-upstream
    values (already checked with parse_upstream)."""
    try:
        return DnsRun(spec, decide, audit, [parse_upstream(u) for u in upstream] or None)
    except DnsConfigError as err:
        print(f"faramesh-sandbox: warning: no DNS for the agent: {err}", file=sys.stderr)
        return None
