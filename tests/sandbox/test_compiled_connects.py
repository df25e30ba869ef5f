"""Repeated connects answered by the compiled receiver (sandbox/fastpath_net.py, fastpath_c/connect.c),
against the real kernel: the same answers and records as Python, race-free, following DNS names."""

from __future__ import annotations

import dataclasses
import errno
import functools
import socket
import sys
import textwrap
import threading
import time

import pytest

import policy
from policy.decision import Decision, Effect, deny
from sandbox import dns_names, netops, supervisor
from tests.sandbox import conftest
from tests.sandbox.conftest import run_sandboxed
from tests.sandbox.test_net_connect import BASE_RULES, NET_TRAPPED, Greeter

pytestmark = pytest.mark.kernel
UNGUARDED = "198.51.100.7"  # TEST-NET-2: a UDP connect to it only sets the peer, nothing is sent


def engine(rules: str) -> policy.Engine:
    layer = policy.load_policy(f"agent a {{\n default deny\n {BASE_RULES} {rules}\n}}", "connects.fpl")
    return policy.Engine([layer], policy.SessionStore())


def run_agent(code: str, rules: str, *, net: netops.NetContext | None = None, monkeypatch=None, timeout=60):
    """``python3 -S -c code`` sandboxed with the compiled fast path on (``net``: the supervisor's context)."""
    if net is not None:
        monkeypatch.setattr(conftest, "Supervisor", functools.partial(supervisor.Supervisor, net=net))
    policy_engine = engine(rules)
    return run_sandboxed([sys.executable, "-S", "-c", textwrap.dedent(code)], policy_engine.decide,
                         trapped=NET_TRAPPED, timeout=timeout, decision_keys=policy_engine.decision_keys)


def connect_records(run) -> list[tuple]:
    """The connects' records in the order they were answered (C's are written just after)."""
    return [(r["args"]["host"], r["args"]["port"], r["args"]["protocol"], r["effect"], r["rule_id"])
            for r in sorted(run.audit, key=lambda r: r["time"]) if r["syscall"] == "connect"]


CONNECTS = """
    import errno, socket, sys
    family, kind, host, port, count = {family}, {kind}, {host!r}, {port}, {count}
    results = []
    for _ in range(count):
        s = socket.socket(family, kind)
        results.append(s.connect_ex((host, port)))
        s.close()
    print(sorted(set(results)), len(results))
"""


def test_repeated_connects_answered_in_c_with_records():
    """50 TCP connects: the first decided in Python, 49 in C, with 50 identical audit records."""
    server = Greeter()
    run = run_agent(CONNECTS.format(family="socket.AF_INET", kind="socket.SOCK_STREAM", host="127.0.0.1",
                                    port=server.port, count=50),
                    f"permit net/connect host: 127.0.0.1 port: {server.port}")
    assert run.status == 0, run.explain()
    assert run.stdout == b"[0] 50\n"
    assert run.stats["fast_connect_hits"] == 49
    assert run.stats["fast_connect_handed"] == 49  # TCP: performed by the receiving thread
    assert run.stats["fast_sockets"] == 50  # socket() needs no decision: every one created in C
    records = [r for r in run.audit if r["syscall"] == "connect"]
    same = {(r["tool"], tuple(sorted(r["args"].items())), r["effect"], r["rule_id"], r["reason_code"], r["reason"],
             r["policy_version"]) for r in records}
    assert len(records) == 50 and len(same) == 1  # C's records are Python's first one, word for word
    assert records[0]["args"] == {"host": "127.0.0.1", "ip": "127.0.0.1", "port": server.port, "family": "inet",
                                  "protocol": "tcp", "pid": records[0]["pid"], "session": "test"}
    assert (records[0]["tool"], records[0]["effect"]) == ("net/connect", "PERMIT")


def test_repeated_denial_refused_the_same_way():
    """20 connects to a port no rule permits: every one EPERM, 19 of them from C, all recorded as denials."""
    server = Greeter()
    run = run_agent(CONNECTS.format(family="socket.AF_INET", kind="socket.SOCK_STREAM", host="127.0.0.1",
                                    port=server.port, count=20), "permit net/connect host: 127.0.0.1 port: 1")
    assert run.status == 0, run.explain()
    assert run.stdout == f"[{errno.EPERM}] 20\n".encode()
    assert run.stats["fast_connect_denied"] == 19
    assert {(r["effect"], r["reason_code"]) for r in run.audit if r["syscall"] == "connect"} == {
        ("DENY", "UNMATCHED_DENY")}
    assert server.accepted == 0


def test_guarded_address_denial_repeated():
    """A rule naming only the port cannot permit loopback: the GUARDED_ADDRESS denial is repeated in C."""
    server = Greeter()
    run = run_agent(CONNECTS.format(family="socket.AF_INET", kind="socket.SOCK_STREAM", host="127.0.0.1",
                                    port=server.port, count=10), f"permit net/connect port: {server.port}")
    assert run.status == 0, run.explain()
    assert run.stdout == f"[{errno.EPERM}] 10\n".encode()
    assert run.stats["fast_connect_denied"] == 9
    assert {(r["effect"], r["reason_code"]) for r in run.audit if r["syscall"] == "connect"} == {
        ("DENY", "GUARDED_ADDRESS")}
    assert server.accepted == 0


def test_sockets_created_in_c_as_in_python():
    """socket() answered in C keeps the agent's flags; a protocol the supervisor does not create fails as before."""
    code = """
        import ctypes, fcntl, os, socket
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        plain = ctypes.CDLL(None, use_errno=True).socket(socket.AF_INET, socket.SOCK_STREAM, 0)  # no CLOEXEC
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_UDP)
        except OSError as err:
            refused = err.errno
        print(s.family == socket.AF_INET6, s.type == socket.SOCK_DGRAM,
              bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK),
              bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
              bool(fcntl.fcntl(plain, fcntl.F_GETFD) & fcntl.FD_CLOEXEC), refused)
    """
    run = run_agent(code, "permit net/connect host: 127.0.0.1 port: 1")
    assert run.status == 0, run.explain()
    assert run.stdout == f"True True True True False {errno.EPROTONOSUPPORT}\n".encode()
    assert run.stats["fast_sockets"] == 2


def test_udp_and_ipv6_connects_answered_in_c():
    """Repeated UDP connects to 127.0.0.1 and TCP connects to ::1 are answered in C."""
    server = Greeter("::1")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    udp_port = sink.getsockname()[1]
    code = CONNECTS.format(family="socket.AF_INET", kind="socket.SOCK_DGRAM", host="127.0.0.1", port=udp_port,
                           count=10) + CONNECTS.format(family="socket.AF_INET6", kind="socket.SOCK_STREAM",
                                                       host="::1", port=server.port, count=10)
    run = run_agent(code, f"permit net/connect host: 127.0.0.1 port: {udp_port}\n"
                          f" permit net/connect host: \"::1\" port: {server.port}")
    sink.close()
    assert run.status == 0, run.explain()
    assert run.stdout == b"[0] 10\n[0] 10\n"
    assert run.stats["fast_connect_hits"] == 18
    assert run.stats["fast_connect_handed"] == 18  # performed by the receiving thread, out of the receiver
    assert [(host, protocol) for host, _, protocol, _, _ in connect_records(run)] == \
        [("127.0.0.1", "udp")] * 10 + [("::1", "tcp")] * 10


def test_non_blocking_connect_in_progress_then_completes():
    """Non-blocking TCP connects answered in C return EINPROGRESS and then complete, as natively."""
    server = Greeter()
    code = f"""
        import select, socket
        outcomes = []
        for _ in range(10):
            s = socket.socket()
            s.setblocking(False)
            first = s.connect_ex(("127.0.0.1", {server.port}))
            select.select([], [s], [], 5)
            outcomes.append((first, s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
            s.close()
        print(sorted(set(outcomes)))
    """
    run = run_agent(code, f"permit net/connect host: 127.0.0.1 port: {server.port}")
    assert run.status == 0, run.explain()
    assert run.stdout == f"[({errno.EINPROGRESS}, 0)]\n".encode()
    assert run.stats["fast_connect_hits"] == 9
    assert run.stats["fast_connect_handed"] == 9  # TCP: performed by the receiving thread


def test_blocked_connect_does_not_hold_other_threads(tmp_path):
    """A connect stuck on a full backlog leaves another thread's connects answered promptly (another receiver)."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    server = Greeter()
    code = f"""
        import socket, struct, threading, time
        stuck = []
        def fill():
            for _ in range(3):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 800000))
                started = time.monotonic()
                stuck.append((s.connect_ex(("127.0.0.1", {full.getsockname()[1]})), time.monotonic() - started > 0.5))
        filler = threading.Thread(target=fill)
        filler.start()
        time.sleep(1.2)  # the first connect fills the backlog, the second waits for it
        slowest = 0.0
        for _ in range(20):
            s = socket.socket()
            started = time.monotonic()
            assert s.connect_ex(("127.0.0.1", {server.port})) == 0
            slowest = max(slowest, time.monotonic() - started)
            s.close()
        filler.join()
        print(stuck, slowest < 0.1)
    """
    run = run_agent(code, f"permit net/connect host: 127.0.0.1 port: {full.getsockname()[1]}\n"
                          f" permit net/connect host: 127.0.0.1 port: {server.port}")
    full.close()
    assert run.status == 0, run.explain()
    assert run.stdout == f"[(0, False), ({errno.EINPROGRESS}, True), ({errno.EINPROGRESS}, True)] True\n".encode()
    assert run.stats["fast_connect_handed"] >= 2


def names_context(names: dns_names.NameMap) -> netops.NetContext:
    return netops.NetContext(names=names.host_for)


UDP_STEPS = """
    import os, socket, time
    def connect():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        result = s.connect_ex(({ip!r}, 9))
        s.close()
        return result
    before = [connect() for _ in range(3)]
    open({ready!r}, "w").close()
    while not os.path.exists({go!r}):
        time.sleep(0.01)
    after = [connect() for _ in range(3)]
    print(before, after)
"""


def test_dns_name_change_changes_the_decision(tmp_path, monkeypatch):
    """A lookup naming the address anew between connects: the next connect is decided under the new name."""
    names = dns_names.NameMap()
    ready, go = tmp_path / "ready", tmp_path / "go"
    rules = "deny net/connect host: bad.example\n permit net/connect host: \"*\""

    def rename_when_ready():
        while not ready.exists():
            time.sleep(0.01)
        names.record("bad.example", UNGUARDED, 300)
        go.touch()
    threading.Thread(target=rename_when_ready, daemon=True).start()
    run = run_agent(UDP_STEPS.format(ip=UNGUARDED, ready=str(ready), go=str(go)), rules, net=names_context(names),
                    monkeypatch=monkeypatch)
    assert run.status == 0, run.explain()
    native = socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect_ex((UNGUARDED, 9))
    assert run.stdout == f"[{native}, {native}, {native}] [{errno.EPERM}, {errno.EPERM}, {errno.EPERM}]\n".encode()
    assert [(host, effect) for host, _, _, effect, _ in connect_records(run)] == \
        [(UNGUARDED, "PERMIT")] * 3 + [("bad.example", "DENY")] * 3
    assert run.stats["fast_connect_hits"] == 4


def test_decision_ends_with_the_name(tmp_path, monkeypatch):
    """A connect permitted by its DNS name is decided again once that name has expired."""
    names = dns_names.NameMap(min_ttl=0.5)
    names.record("good.example", UNGUARDED, 0)
    code = f"""
        import socket, time
        def connect():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            result = s.connect_ex(({UNGUARDED!r}, 9))
            s.close()
            return result
        before = [connect() for _ in range(3)]
        time.sleep(0.8)
        print(before, [connect() for _ in range(2)])
    """
    run = run_agent(code, "permit net/connect host: good.example", net=names_context(names), monkeypatch=monkeypatch)
    assert run.status == 0, run.explain()
    native = socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect_ex((UNGUARDED, 9))
    assert run.stdout == f"[{native}, {native}, {native}] [{errno.EPERM}, {errno.EPERM}]\n".encode()
    assert [(host, effect) for host, _, _, effect, _ in connect_records(run)] == \
        [("good.example", "PERMIT")] * 3 + [(UNGUARDED, "DENY")] * 2


def test_intercepted_connects_never_learned(monkeypatch):
    """While the egress may intercept connections, every connect is decided in Python."""
    server = Greeter()
    net = netops.NetContext(intercept=lambda name, ip, port, family: None)
    run = run_agent(CONNECTS.format(family="socket.AF_INET", kind="socket.SOCK_STREAM", host="127.0.0.1",
                                    port=server.port, count=10),
                    f"permit net/connect host: 127.0.0.1 port: {server.port}", net=net, monkeypatch=monkeypatch)
    assert run.status == 0, run.explain()
    assert run.stdout == b"[0] 10\n"
    assert run.stats["fast_connect_hits"] == 0
    assert len(connect_records(run)) == 10


def test_flipped_address_never_connects_to_the_denied_port(cbin):
    """20,000 UDP connects through a sockaddr another thread flips, answered in C: none reaches the denied port."""
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sink in sinks:
        sink.bind(("127.0.0.1", 0))
    allowed, denied = (sink.getsockname()[1] for sink in sinks)
    policy_engine = engine(f"permit net/connect host: 127.0.0.1 port: {allowed}")
    run = run_sandboxed([cbin("net_race"), "connect", str(allowed), str(denied), "20000"], policy_engine.decide,
                        trapped=NET_TRAPPED, timeout=120, audit_sink=lambda record: None,
                        decision_keys=policy_engine.decision_keys)
    for sink in sinks:
        sink.close()
    assert run.status == 0, run.explain()
    fields = run.stdout.split()
    counts = {fields[i].decode(): int(fields[i + 1]) for i in range(0, len(fields), 2)}
    assert counts["bypass"] == 0
    assert counts["ok"] + counts["refused"] == 20_000
    assert counts["ok"] > 0 and counts["refused"] > 0, counts
    assert run.stats["fast_connect_hits"] > 10_000


def local_connects(port: int, decide, *, decision_keys, seconds: float = 0.0, count: int = 5, audit_sink=None):
    """Connects to 127.0.0.1:port (``count`` of them, or for ``seconds``), printing each outcome."""
    code = f"""
        import socket, time
        results = []
        deadline = time.monotonic() + {seconds}
        while len(results) < {count} or time.monotonic() < deadline:
            s = socket.socket()
            results.append("ok" if s.connect_ex(("127.0.0.1", {port})) == 0 else "denied")
            s.close()
            time.sleep(0.001 if {seconds} else 0)
        print(results if not {seconds} else (results.index("denied") > 0,
                                               set(results[results.index("denied"):]) == {{"denied"}}))
    """
    return run_sandboxed([sys.executable, "-S", "-c", textwrap.dedent(code)], decide, trapped=NET_TRAPPED,
                         timeout=60, decision_keys=decision_keys, audit_sink=audit_sink)


def permit_port(port: int):
    def decide(call):
        if call.tool == "net/connect" and call.args.get("port") == port and call.args.get("ip") == "127.0.0.1":
            return Decision(Effect.PERMIT, rule_id="local")
        return deny("NO_RULE", "no rule permits it")
    return decide


def test_policy_reading_more_than_the_address_keeps_python():
    """When the policy's net/connect decision reads other arguments (here the pid), nothing is repeated in C."""
    server = Greeter()
    run = local_connects(server.port, permit_port(server.port), decision_keys=lambda tool: frozenset({"port", "pid"}))
    assert run.stdout == b"['ok', 'ok', 'ok', 'ok', 'ok']\n", run.explain()
    assert (run.stats["fast_connect_hits"], run.stats["fast_connect_entries"]) == (0, 0)


def test_failed_evaluation_is_not_repeated():
    """A denial because evaluation timed out is not reused: the next connect is decided again."""
    server = Greeter()
    permit, seen = permit_port(server.port), []

    def flaky(call):
        seen.append(call.tool)
        if seen.count("net/connect") == 1:
            return deny("POLICY_EVAL_TIMEOUT", "evaluation exceeded its time")
        return permit(call)
    run = local_connects(server.port, flaky, decision_keys=lambda tool: frozenset({"ip", "port"}))
    assert run.stdout == b"['denied', 'ok', 'ok', 'ok', 'ok']\n", run.explain()
    assert run.stats["fast_connect_hits"] == 3


def test_unwritable_records_stop_the_compiled_connects():
    """Once a record of a connect answered in C cannot be written, C answers nothing more: the next
    connects go to Python, which denies a permit it cannot record."""
    server = Greeter()
    written = []

    def sink(record):  # the disk fills up after the third connect record
        if record["syscall"] == "connect":
            if len(written) >= 3:
                raise OSError(28, "No space left on device")
            written.append(record)
    run = local_connects(server.port, permit_port(server.port), decision_keys=lambda tool: frozenset({"ip", "port"}),
                         seconds=0.5, count=0, audit_sink=sink)
    assert run.stdout == b"(True, True)\n", run.explain()
    assert run.stats["audit_errors"] >= 1


def test_each_task_answered_as_itself():
    """30 short-lived children connect in turn: each answered in C under its own pid, none mistaken for another."""
    server = Greeter()
    code = f"""
        import os, socket
        pids = []
        for _ in range(30):
            pid = os.fork()
            if pid == 0:
                s = socket.socket()
                os._exit(s.connect_ex(("127.0.0.1", {server.port})))
            pids.append(pid)
            assert os.waitpid(pid, 0)[1] == 0
        print(" ".join(map(str, pids)))
    """
    run = run_agent(code, f"permit net/connect host: 127.0.0.1 port: {server.port}")
    assert run.status == 0, run.explain()
    pids = [int(p) for p in run.stdout.split()]
    assert [r["pid"] for r in sorted(run.audit, key=lambda r: r["time"]) if r["syscall"] == "connect"] == pids
    assert run.stats["fast_connect_hits"] == 29


def test_name_memory_followed_through_the_launchers_context():
    """A context whose names are a NameMap's host_for (as the DNS stub sets them, by replace) can be followed."""
    names = dns_names.NameMap()
    net = dataclasses.replace(netops.NetContext(), names=names.host_for)
    assert (net.name_memory is names, net.names_followed) == (True, True)
    other = netops.NetContext(names=lambda ip: "elsewhere.example")
    assert (other.name_memory, other.names_followed) == (None, False)


def test_name_changes_are_told_before_record_returns():
    """Each change bumps the generation and reaches every subscriber synchronously; expiry alone changes nothing."""
    names = dns_names.NameMap(max_entries=1, min_ttl=0.05)
    told = []
    unsubscribe = names.subscribe(told.append)
    names.record("a.example", "192.0.2.1", 0)
    names.record("b.example", "192.0.2.2", 0)  # evicts a.example: a change too
    assert (told, names.generation, names.lookup("192.0.2.1")) == ([1, 2], 2, None)
    time.sleep(0.06)
    assert (names.host_for("192.0.2.2"), names.generation) == (None, 2)
    names.record("b.example", "192.0.2.2", 300)  # expired before: named anew
    names.record("b.example", "192.0.2.2", 300)  # the same name, living longer: no change
    names.record("b.example", "192.0.2.2", 0)  # a shorter life than it had: a change
    assert told == [1, 2, 3, 4]
    unsubscribe()
    names.record("c.example", "192.0.2.3", 0)
    assert told == [1, 2, 3, 4]


def test_a_pause_while_learning_never_lengthens_a_name(monkeypatch):
    """A learning thread paused (30 ms) around the name lookup still gives the compiled decision
    an end no later than the name's: no permit is recorded for the name after it expired."""
    names = dns_names.NameMap(min_ttl=1.0, max_ttl=1.0)
    real = time.monotonic_ns

    class PausingClock:
        @staticmethod
        def monotonic_ns():
            time.sleep(0.03)  # descheduled, as behind the GIL of a busy supervisor
            return real()
    monkeypatch.setattr(netops, "time", PausingClock)
    recorded_at = []
    spawn = conftest.spawn_filtered

    def spawn_then_resolve(*args, **kwargs):
        spawned = spawn(*args, **kwargs)
        names.record("good.example", UNGUARDED, 1.0)
        recorded_at.append(time.time())
        return spawned
    monkeypatch.setattr(conftest, "spawn_filtered", spawn_then_resolve)
    code = f"""
        import socket, time
        start, results = time.monotonic(), []
        while time.monotonic() - start < 1.5:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            results.append(s.connect_ex(({UNGUARDED!r}, 9)))
            s.close()
            time.sleep(0.0005)
        print(0 in results, 1 in results)
    """
    run = run_agent(code, "permit net/connect host: good.example", net=names_context(names), monkeypatch=monkeypatch)
    assert run.stdout == b"True True\n", run.explain()
    expiry = recorded_at[0] + 1.0
    late = [r for r in run.audit if r["syscall"] == "connect" and r["effect"] == "PERMIT"
            and r["time"] - r["latency_us"] / 1e6 > expiry]  # received after the name was gone
    assert late == []
    assert run.stats["fast_connect_hits"] > 0
