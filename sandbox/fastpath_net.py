"""Repeated connects answered by the compiled receiver (sandbox/fastpath_c/connect.c).

When a policy's decision for ``net/connect`` reads nothing but the call's own address
arguments (``Engine.decision_keys``), a plain connect of a TCP or UDP socket to an internet
address that Python has decided (PERMIT or DENY, after the address guard: the final effect)
is handed to the compiled receiver, keyed by the socket's domain, type and protocol and the
address bytes exactly as the agent passed them. From then on C answers connects matching that
key itself: the address is read once, the connect is performed on our duplicate of the socket
with the address Python built from the decided values, and the agent gets its result (a
denial its refusal errno). Nothing is learned for a unix address, the DNS stub redirect, a
disconnect, or while the egress inspects connections (its proxy must register each one).

``host`` comes from the DNS names the agent looked up (sandbox/dns_names.NameMap), which
change: every change makes C forget all it learned (synchronously, before the lookup's answer
reaches the agent), a decision made under older names is not learned, and a decision made
with a name ends when that name expires.

A connect may wait for long (a blocking socket, a TCP listener with a full backlog, or the
socket's lock held by an agent thread blocked in a send, even for UDP), so C decides and records
it, then hands it to the receiving thread (a PendingConnect), which performs it with the GIL
released like any other slow call: after supervisor.STALL another thread takes over receiving.
"""

from __future__ import annotations


from policy.decision import Decision, Effect
from sandbox._fastpath_entries import Entries
from sandbox.netops import NetContext, Repeatable

# What an internet connect's arguments hold besides pid and session (sandbox/netops.py), and the
# other keys a network clause reads (path for unix, method/query/headers for HTTP): never set on
# an internet connect, so they decide every one of them alike.
CONNECT_KEYS = frozenset({"host", "ip", "port", "family", "protocol", "path", "method", "query", "headers"})
MAX_CONNECTS = 1024  # distinct (socket kind, address) decisions remembered at once
# Distinct records kept for them over a run (a name change makes the same address a new one);
# beyond it nothing more is learned.
MAX_CONNECT_RECORDS = 8 * MAX_CONNECTS


class PendingConnect:
    """A decided, recorded connect for the receiving thread to perform: (notification id, our
    duplicate of the agent's socket, the address to connect to)."""

    __slots__ = ("native", "id", "sock", "target")

    def __init__(self, native, notification_id: int, sock: int, target: bytes):
        self.native, self.id, self.sock, self.target = native, notification_id, sock, target

    def perform(self) -> None:
        """Connect, close our duplicate, answer the agent with the result."""
        self.native.answer_connect(self.id, self.sock, self.target)


class FastConnects:
    """The connect decisions a compiled receiver repeats, and their audit records."""

    def __init__(self, native, net: NetContext, refusal: int, failed_evaluation: frozenset[str], limit: int):
        self.native, self.refusal = native, refusal
        self._failed = failed_evaluation
        self._entries = Entries(limit)  # -> (args template, decision)
        memory = net.name_memory
        self._unsubscribe = memory.subscribe(self._names_changed) if memory is not None else None
        if memory is not None:
            native.forget_connects(memory.generation)

    def _names_changed(self, generation: int) -> None:
        self.native.forget_connects(generation)

    def learn(self, repeatable: Repeatable, tool: str, args: dict, decision: Decision) -> bool:
        """Repeat ``decision`` (recorded, neither deferred nor replaced) for later connects like this one."""
        if tool != "net/connect" or decision.effect not in (Effect.PERMIT, Effect.DENY) or \
                decision.reason_code in self._failed:
            return False
        template = {name: value for name, value in args.items() if name not in ("pid", "session")}
        key = (repeatable.domain, repeatable.kind, repeatable.protocol, repeatable.address,
               tuple(sorted(template.items())), decision.effect, decision.rule_id, decision.reason_code,
               decision.reason, decision.policy_version)
        entry = self._entries.number(key, (template, decision))
        if entry is None:
            return False
        return self.native.remember_connect(
            repeatable.domain, repeatable.kind, repeatable.protocol, repeatable.address, repeatable.target, entry,
            decision.effect is Effect.DENY, self.refusal, repeatable.expires_ns, repeatable.generation)

    def record(self, entry: int, session_id: str, pid: int) -> tuple[dict, Decision]:
        """(args, decision) of an answered connect's entry."""
        template, decision = self._entries[entry]
        return dict(template, pid=pid, session=session_id), decision

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
