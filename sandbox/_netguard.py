"""The address guard: loopback, link-local and the host's own addresses need a rule naming them.

The agent's connections leave from the host's network namespace, so 127.0.0.1 there is the
host's loopback and 169.254.169.254 a cloud metadata service. A rule such as
``permit net/connect host: *.example.com`` must not reach them through a name that resolves
to them (DNS rebinding). So for a guarded address the call's ``host`` is the IP literal, and
a PERMIT stands only when it depends on the address: the same call to a documentation
address (TEST-NET-1, 2001:db8::) in a scratch session must not be permitted by the same
rule. ``host: 127.0.0.1``, ``host: 127.*`` and ``when args.ip == "::1"`` name the address;
``default permit``, ``host: *`` and a rule naming only a port do not.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from typing import Callable

from policy.calls import ToolCall
from policy.decision import Decision, Effect, deny

_V6_HOST_ITSELF = (bytes(15) + b"\x01", bytes(16))  # ::1, ::
PROBE_ADDRESS = {4: "192.0.2.1", 6: "2001:db8::1"}  # reserved for documentation: never a real peer
PROBE_SESSION_SUFFIX = "/address-guard"  # probes never touch the agent's session state


def no_names(ip: str) -> str | None:
    """No DNS names known: ``host`` is the IP literal."""
    return None


def guarded_address(ip: str, host_addresses: frozenset[str]) -> bool:
    """Loopback, link-local (169.254.169.254 included), unspecified or "this network" (which
    connect to the host itself) or one of the host's own interface addresses."""
    if ip in host_addresses:
        return True
    if ":" not in ip:
        first, second = socket.inet_pton(socket.AF_INET, ip)[:2]
        return first in (0, 127) or (first, second) == (169, 254)
    packed = socket.inet_pton(socket.AF_INET6, ip)
    return packed in _V6_HOST_ITSELF or (packed[0] == 0xFE and packed[1] & 0xC0 == 0x80)


class ProbeCache:
    """Whether a rule names a guarded call's address, per (rule, arguments): a connect loop
    probes once. Bounded; cleared whole when full."""

    LIMIT = 4096

    def __init__(self):
        self._answers: dict[tuple, bool] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bool | None:
        return self._answers.get(key)

    def put(self, key: tuple, names_it: bool) -> None:
        with self._lock:
            if len(self._answers) >= self.LIMIT:
                self._answers.clear()
            self._answers[key] = names_it


def _names_the_address(call: ToolCall, decision: Decision, decide: Callable[[ToolCall], Decision]) -> bool:
    probe_ip = PROBE_ADDRESS[6 if ":" in call.args["ip"] else 4]
    probe = dataclasses.replace(call, args=dict(call.args, ip=probe_ip, host=probe_ip),
                                session_id=call.session_id + PROBE_SESSION_SUFFIX)
    answer = decide(probe)
    return not (answer.effect is Effect.PERMIT and answer.rule_id == decision.rule_id)


def guard_decision(call: ToolCall, decision: Decision, decide: Callable[[ToolCall], Decision],
                   cache: ProbeCache | None = None) -> Decision:
    """``decision`` for a call to a guarded address, or a GUARDED_ADDRESS denial when the
    permitting rule would permit any address alike."""
    if decision.effect is not Effect.PERMIT:
        return decision
    args = dict(call.args)
    args.pop("pid", None)
    args.pop("session", None)
    key = (decision.layer, decision.rule_id, call.tool, frozenset(args.items()))
    names_it = cache.get(key) if cache is not None else None
    if names_it is None:
        names_it = _names_the_address(call, decision, decide)
        if cache is not None:
            cache.put(key, names_it)
    if not names_it:
        return deny("GUARDED_ADDRESS",
                    f"{call.args['ip']} is loopback, link-local or this host's own address: only a rule "
                    f"naming it (host: {call.args['ip']}) may permit it, not rule {decision.rule_id or 'default'}",
                    policy_version=decision.policy_version)
    return decision
