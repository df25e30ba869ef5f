"""The DNS stub against a fake upstream server on loopback: decisions, relaying, names, limits."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import mounts
from sandbox.dns_names import NameMap
from sandbox.dns_stub import STUB_ADDRESS, DnsStub, resolv_conf
from sandbox.errors import SandboxError
from sandbox.spec import SandboxSpec
from tests.sandbox.dns_fake import SLOW_SECONDS, FakeUpstream

REPO = Path(__file__).resolve().parents[2]


class Decisions:
    """A check() that permits names not in ``denied`` and records every call."""

    def __init__(self, denied=()):
        self.denied = set(denied)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name: str, qtype: str) -> bool:
        self.calls.append((name, qtype))
        return name not in self.denied


@pytest.fixture
def upstream():
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture
def decisions():
    return Decisions(denied={"denied.test"})


@pytest.fixture
def stub(upstream, decisions):
    with DnsStub(decisions, upstream=[upstream.address], timeout=1.0) as running:
        yield running


def ask_udp(stub, name, rdtype="A", **make):
    query = dns.message.make_query(name, rdtype, **make)
    return query, dns.query.udp(query, stub.udp_address[0], port=stub.udp_address[1], timeout=3)


def query_wire(name: str, rdtype: str, query_id: int = 0x1234) -> bytes:
    query = dns.message.make_query(name, rdtype)
    query.id = query_id
    return query.to_wire()


def test_permitted_lookup_is_relayed_with_the_agents_id_and_answers(stub, upstream, decisions):
    """A permitted A lookup reaches the upstream and comes back with the query's id and the upstream's records."""
    query, response = ask_udp(stub, "plain.test")
    assert response.id == query.id
    assert response.rcode() == dns.rcode.NOERROR
    assert [rrset.to_text() for rrset in response.answer] == ["plain.test. 5 IN A 192.0.2.20"]
    assert decisions.calls == [("plain.test", "A")]
    assert [(name, rtype, transport) for name, rtype, transport, _ in upstream.seen] == [("plain.test.", "A", "udp")]


def test_upstream_query_id_is_chosen_by_the_stub(stub, upstream):
    """Queries with one fixed id reach the upstream with fresh ids, so the agent cannot choose them."""
    for _ in range(3):
        query = dns.message.make_query("txt.test", "TXT")
        query.id = 4242
        response = dns.query.udp(query, stub.udp_address[0], port=stub.udp_address[1], timeout=3)
        assert response.id == 4242
    assert len({seen_id for *_, seen_id in upstream.seen}) > 1


def test_check_sees_lower_case_name_without_trailing_dot_and_type_text(stub, decisions):
    """check() receives 'txt.test' and 'TXT' for a query of 'TXT.Test.'; the TXT answer is relayed."""
    _, response = ask_udp(stub, "TXT.Test.", "TXT")
    assert decisions.calls == [("txt.test", "TXT")]
    assert [rrset.to_text() for rrset in response.answer] == ['TXT.Test. 300 IN TXT "hello world"']


def test_check_sees_special_bytes_escaped(stub, decisions):
    """A label holding a NUL byte and a dot reaches check() escaped, so it cannot pass for another name."""
    stub.respond(query_wire("A\\000b.B\\.c.test", "A"))
    assert decisions.calls == [("a\\000b.b\\.c.test", "A")]


def test_denied_lookup_is_refused_and_never_reaches_upstream(stub, upstream, decisions):
    """A denied name gets REFUSED with extended error 18 (prohibited) and the upstream sees no query."""
    query, response = ask_udp(stub, "denied.test", use_edns=0)
    assert response.id == query.id
    assert response.rcode() == dns.rcode.REFUSED
    assert [(opt.code, opt.text) for opt in response.options] == [(18, "denied by the sandbox policy")]
    assert response.answer == []
    assert decisions.calls == [("denied.test", "A")]
    assert upstream.seen == []


def test_failing_check_refuses(upstream):
    """A check() that raises, or returns something other than True, refuses the lookup."""
    def broken(name, qtype):
        raise RuntimeError("policy engine down")

    for check in (broken, lambda name, qtype: "yes"):
        with DnsStub(check, upstream=[upstream.address]) as stub:
            _, response = ask_udp(stub, "plain.test")
            assert response.rcode() == dns.rcode.REFUSED
    assert upstream.seen == []


def test_names_map_addresses_to_the_asked_name_through_a_cname(stub):
    """Both the A and AAAA addresses behind www.allowed.test's CNAME map back to www.allowed.test."""
    _, a = ask_udp(stub, "www.allowed.test", "A")
    _, aaaa = ask_udp(stub, "www.allowed.test", "AAAA")
    assert [rrset.to_text() for rrset in a.answer] == [
        "www.allowed.test. 300 IN CNAME edge.cdn.test.", "edge.cdn.test. 120 IN A 192.0.2.10"]
    assert len(aaaa.answer) == 2
    assert stub.names.host_for("192.0.2.10") == "www.allowed.test"
    assert stub.names.host_for("2001:db8::10") == "www.allowed.test"
    assert stub.names.host_for("::ffff:192.0.2.10") == "www.allowed.test"
    assert stub.names.host_for("192.0.2.11") is None


def test_refused_lookup_records_no_name(stub):
    """A refused lookup leaves the name map empty."""
    ask_udp(stub, "denied.test")
    assert len(stub.names) == 0


def test_stub_answers_expire_from_the_name_map(upstream, decisions):
    """plain.test (TTL 5) is known right after the lookup and forgotten once the 60 s floor passed."""
    now = [0.0]
    with DnsStub(decisions, upstream=[upstream.address], names=NameMap(clock=lambda: now[0])) as stub:
        ask_udp(stub, "plain.test")
        assert stub.names.host_for("192.0.2.20") == "plain.test"
        now[0] = 60.0
        assert stub.names.host_for("192.0.2.20") is None


def test_most_recent_lookup_wins_for_a_shared_address(stub):
    """Two names on one address: host_for names whichever was looked up last."""
    ask_udp(stub, "shared-a.test")
    ask_udp(stub, "shared-b.test")
    assert stub.names.host_for("192.0.2.50") == "shared-b.test"
    ask_udp(stub, "shared-a.test")
    assert stub.names.host_for("192.0.2.50") == "shared-a.test"


MALFORMED = [
    # (what, packet, expected rcode or None for no reply); every header carries id 0x1234
    ("too short for a header", b"\x12\x34\x01", None),
    ("header then garbage", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff", dns.rcode.FORMERR),
    ("a response, not a query", b"\x12\x34\x81\x80" + b"\x00" * 8, None),
    ("trailing junk", query_wire("plain.test", "A") + b"junk", dns.rcode.FORMERR),
    ("over 4096 bytes", query_wire("plain.test", "A") + b"\x00" * 4096, None),
]


@pytest.mark.parametrize("what, packet, rcode", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_packet_gets_formerr_or_nothing(stub, upstream, what, packet, rcode):
    """A malformed packet gets FORMERR with its id, or no reply when it has no readable query header."""
    reply = stub.respond(packet, "udp")
    if rcode is None:
        assert reply is None
    else:
        response = dns.message.from_wire(reply)
        assert (response.id, response.rcode()) == (0x1234, rcode)
    assert upstream.seen == []


def test_two_questions_get_formerr_and_other_opcodes_notimp(stub):
    """A query with two questions is FORMERR; a NOTIFY is NOTIMP; neither reaches check()."""
    two = dns.message.make_query("plain.test", "A")
    two.question.append(dns.message.make_query("txt.test", "TXT").question[0])
    notify = dns.message.make_query("plain.test", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(stub.respond(two.to_wire())).rcode() == dns.rcode.FORMERR
    assert dns.message.from_wire(stub.respond(notify.to_wire())).rcode() == dns.rcode.NOTIMP


def _edited(wire: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(wire)
    for offset, value in edits:
        data[offset % len(data)] = value
    return bytes(data)


VALID_QUERY = dns.message.make_query("txt.test", "TXT", use_edns=0).to_wire()
# random bytes mostly fail at the header; edited valid queries reach the question and EDNS parsing
PACKETS = st.one_of(st.binary(max_size=600),
                    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=4)
                    .map(lambda edits: _edited(VALID_QUERY, edits)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packet=PACKETS)
def test_random_bytes_never_crash_respond(stub, packet):
    """Any byte string gets a parseable reply carrying its id, or no reply; respond() never raises."""
    reply = stub.respond(packet, "udp")
    if reply is not None:
        assert dns.message.from_wire(reply).id == int.from_bytes(packet[:2], "big")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packet=PACKETS)
def test_random_datagrams_leave_the_stub_answering(stub, packet):
    """After any datagram the stub still answers a valid query over UDP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
        junk.sendto(packet, stub.udp_address)
    _, response = ask_udp(stub, "txt.test", "TXT")
    assert response.rcode() == dns.rcode.NOERROR


def test_tcp_query_is_answered(stub):
    """A query over TCP gets the answer over TCP with its id."""
    query = dns.message.make_query("plain.test", "A")
    response = dns.query.tcp(query, stub.tcp_address[0], port=stub.tcp_address[1], timeout=3)
    assert response.id == query.id
    assert [rrset.to_text() for rrset in response.answer] == ["plain.test. 5 IN A 192.0.2.20"]


def test_tcp_query_over_the_size_limit_is_dropped(stub, caplog):
    """A TCP length prefix above 4096 bytes closes the connection without a reply and logs why."""
    with caplog.at_level(logging.WARNING, logger="faramesh_sandbox.dns"):
        with socket.create_connection(stub.tcp_address, timeout=3) as conn:
            conn.sendall((5000).to_bytes(2, "big"))  # closed before any body is read
            assert conn.recv(100) == b""
    assert "dropped a 5000-byte TCP query (limit 4096 bytes)" in caplog.text


def test_tcp_clients_beyond_the_bound_are_closed(upstream, decisions, caplog):
    """With room for one TCP client, a second is closed at once with a log line; the slot frees on close."""
    with caplog.at_level(logging.WARNING, logger="faramesh_sandbox.dns"):
        with DnsStub(decisions, upstream=[upstream.address], max_tcp_connections=1) as stub:
            with socket.create_connection(stub.tcp_address, timeout=3):
                time.sleep(0.1)  # the first connection is accepted and holds the slot
                with socket.create_connection(stub.tcp_address, timeout=3) as second:
                    assert second.recv(100) == b""
            deadline = time.monotonic() + 3
            while True:
                try:
                    response = dns.query.tcp(dns.message.make_query("plain.test", "A"), stub.tcp_address[0],
                                             port=stub.tcp_address[1], timeout=1)
                    break
                except (OSError, EOFError):  # the first connection's thread has not let go yet
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
    assert response.rcode() == dns.rcode.NOERROR
    assert "1 already open" in caplog.text


def test_truncated_answer_is_fetched_over_tcp_upstream(stub, upstream):
    """big.test truncates over UDP upstream: the stub asks again over TCP and relays all 10 records."""
    query = dns.message.make_query("big.test", "TXT", use_edns=0, payload=4096)
    response = dns.query.udp(query, stub.udp_address[0], port=stub.udp_address[1], timeout=3)
    assert len(response.answer[0]) == 10
    assert not response.flags & dns.flags.TC
    # Without EDNS the upstream's UDP answer is truncated at 512 bytes: the stub asks again over
    # TCP, and since the whole answer does not fit the agent's 512 bytes, it relays TC for a TCP retry.
    small = dns.message.make_query("big.test", "TXT")
    response = dns.query.udp(small, stub.udp_address[0], port=stub.udp_address[1], timeout=3)
    assert response.flags & dns.flags.TC
    assert [transport for name, _, transport, _ in upstream.seen] == ["udp", "udp", "tcp"]


def test_concurrent_queries_are_answered_in_parallel(stub, upstream):
    """Eight queries to a 0.3 s upstream all succeed in well under 8 x 0.3 s."""
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: ask_udp(stub, "slow.test")[1], range(8)))
    elapsed = time.monotonic() - started
    assert [r.answer[0].to_text() for r in responses] == ["slow.test. 300 IN A 192.0.2.60"] * 8
    assert elapsed < 4 * SLOW_SECONDS


def test_queries_beyond_the_inflight_bound_get_servfail(upstream, caplog):
    """With one slot held by a blocked decision, the next query gets SERVFAIL at once and a log line."""
    release = threading.Event()

    def held(name, qtype):
        return release.wait(5) and name != "never"

    with caplog.at_level(logging.WARNING, logger="faramesh_sandbox.dns"):
        with DnsStub(held, upstream=[upstream.address], max_inflight=1) as stub:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(ask_udp, stub, "plain.test")
                time.sleep(0.2)
                _, second = ask_udp(stub, "txt.test", "TXT")
                release.set()
                assert first.result()[1].rcode() == dns.rcode.NOERROR
    assert second.rcode() == dns.rcode.SERVFAIL
    assert "dns: SERVFAIL for a udp query: 1 queries already in flight" in caplog.text


def test_silent_upstream_gives_servfail(decisions, caplog):
    """An upstream that never answers ends in SERVFAIL after the timeout, with a log line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with caplog.at_level(logging.WARNING, logger="faramesh_sandbox.dns"):
            with DnsStub(decisions, upstream=[silent.getsockname()], timeout=0.3) as stub:
                _, response = ask_udp(stub, "plain.test")
    assert response.rcode() == dns.rcode.SERVFAIL
    assert "dns: no upstream answer for plain.test A" in caplog.text


def test_a_resolver_library_that_cannot_be_loaded_leaves_every_lookup_unanswered(monkeypatch, caplog):
    """If dnspython cannot be loaded at the first lookup, no query is answered (nothing could be
    checked), the stub keeps serving, and the log says why once."""
    monkeypatch.setitem(sys.modules, "sandbox.dns_answer", None)  # import fails
    with caplog.at_level(logging.WARNING, logger="faramesh_sandbox.dns"):
        with DnsStub(lambda name, qtype: True, upstream=[("127.0.0.1", 9)], max_inflight=1) as stub:
            replies = [stub.respond(query_wire("plain.test", "A")) for _ in range(3)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(0.3)
                for _ in range(3):
                    client.sendto(query_wire("plain.test", "A"), stub.udp_address)
                with pytest.raises(TimeoutError):
                    client.recv(512)
            assert stub._thread.is_alive()
    assert replies == [None] * 3
    assert caplog.text.count("dns: no lookup is answered for 5 s: the resolver library cannot be loaded") == 1


def test_the_resolver_library_is_loaded_at_the_first_lookup_not_at_start(tmp_path):
    """dnspython (about 60 ms) is loaded neither by `run`'s imports nor by a started stub reading the
    host's resolv.conf; the first lookup loads it."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    probe = textwrap.dedent(f"""
        import sys, launcher.run
        from sandbox.dns_stub import DnsStub
        loaded = lambda: sorted(m for m in sys.modules if m == "dns" or m.startswith("dns."))
        with DnsStub(lambda name, qtype: False, host_resolv_conf={str(conf)!r}) as stub:
            print(loaded())
            stub.respond(bytes(12))
            print("dns.message" in loaded())
        """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout == "[]\nTrue\n", out.stderr


FIRST_LOOKUP_PROBE = """
import json, socket, struct, sys
from sandbox.dns_stub import DnsStub
assert "dns" not in sys.modules
def query(number, name):
    labels = b"".join(bytes([len(label)]) + label for label in name.encode().split(b".")) + b"\\0"
    return struct.pack(">HHHHHH", number, 0x0100, 1, 0, 0, 0) + labels + struct.pack(">HH", 1, 1)
transport, name, count, upstream_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with DnsStub(lambda name, qtype: name == "plain.test", upstream=[("127.0.0.1", upstream_port)]) as stub:
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for number in range(count):
                client.sendto(query(number, name), stub.udp_address)
            replies = [client.recv(512) for _ in range(count)]
    else:
        with socket.create_connection(stub.tcp_address, timeout=5) as client:
            client.sendall(b"".join(len(q).to_bytes(2, "big") + q for q in (query(n, name) for n in range(count))))
            replies = []
            for _ in range(count):
                length = int.from_bytes(client.recv(2, socket.MSG_WAITALL), "big")
                replies.append(client.recv(length, socket.MSG_WAITALL))
print(json.dumps(sorted([reply[3] & 0xF, struct.unpack(">H", reply[6:8])[0]] for reply in replies)))
"""


@pytest.mark.parametrize("transport, name, count, rcode, answers", [
    ("udp", "refused.test", 60, dns.rcode.REFUSED, 0),
    ("udp", "plain.test", 60, dns.rcode.NOERROR, 1),
    ("tcp", "plain.test", 3, dns.rcode.NOERROR, 1),
])
def test_queries_at_the_first_lookup_are_answered_not_overloaded(upstream, transport, name, count, rcode, answers):
    """Queries sent at once to a fresh stub, in a process that has not loaded dnspython, are all
    answered, refused or relayed from the upstream: the first lookup loads dnspython before any
    query takes an in-flight place, so a burst waits in the socket instead of holding every place
    during the load and overflowing the rest to SERVFAIL."""
    out = subprocess.run([sys.executable, "-c", FIRST_LOOKUP_PROBE, transport, name, str(count),
                          str(upstream.address[1])], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout) == [[rcode.value, answers]] * count, out.stderr


def test_sandbox_resolv_conf_names_only_the_stub():
    """The sandbox's resolv.conf names 127.0.0.53 with EDNS and nothing of the host's."""
    assert STUB_ADDRESS == "127.0.0.53"
    assert resolv_conf() == b"nameserver 127.0.0.53\noptions edns0\n"


def test_files_without_a_mount_namespace_fail_closed():
    """spec.files with no mount namespace is a setup error, not a silently unchanged file."""
    spec = SandboxSpec(argv=["true"], namespaces=frozenset({"pid"}), files={"/etc/resolv.conf": b"x"})
    with pytest.raises(SandboxError, match=r"files \['/etc/resolv.conf'\] need a mount namespace"):
        mounts.apply(spec)


def run_in_namespaces(flags: list[str], script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", *flags, sys.executable, "-c", textwrap.dedent(script)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.kernel
def test_bind_file_shows_content_read_only_and_leaves_nothing_on_the_host(tmp_path):
    """In a private mount namespace the file shows the new content, refuses writes; the host keeps its own."""
    target = tmp_path / "resolv.conf"
    target.write_text("nameserver 192.0.2.1\n")
    before = set(os.listdir("/tmp"))
    result = run_in_namespaces(["--mount", "--propagation", "private"], f"""
        from sandbox import mounts
        mounts.bind_file({str(target)!r}, b"nameserver 127.0.0.53\\n")
        print(open({str(target)!r}).read(), end="")
        try:
            open({str(target)!r}, "w")
        except OSError as exc:
            print(exc.strerror)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "nameserver 127.0.0.53\nRead-only file system\n"
    assert target.read_text() == "nameserver 192.0.2.1\n"
    assert {n for n in set(os.listdir("/tmp")) - before if n.startswith("faramesh-sandbox-file-")} == set()


GETADDRINFO = "import socket, sys; print(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 80)}))"


@pytest.mark.kernel
def test_lookups_in_a_sandbox_namespace_go_through_the_stub():
    """getent and getaddrinfo in new net+mount namespaces, reading the sandbox resolv.conf, get permitted names only."""
    result = run_in_namespaces(["--net", "--mount", "--propagation", "private"], f"""
        import subprocess, sys
        from sandbox import mounts
        from sandbox.dns_stub import STUB_ADDRESS, STUB_PORT, DnsStub, resolv_conf
        from tests.sandbox.dns_fake import FakeUpstream
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        upstream = FakeUpstream()
        mounts.bind_file("/etc/resolv.conf", resolv_conf())
        with DnsStub(lambda name, qtype: name != "denied.test", upstream=[upstream.address],
                     listen=(STUB_ADDRESS, STUB_PORT)) as stub:
            for argv in (["getent", "hosts", "www.allowed.test"], ["getent", "hosts", "denied.test"],
                         [sys.executable, "-c", {GETADDRINFO!r}, "www.allowed.test"],
                         [sys.executable, "-c", {GETADDRINFO!r}, "denied.test"]):
                done = subprocess.run(argv, capture_output=True, text=True)
                print(done.returncode, " ".join(done.stdout.split()), done.stderr.strip().splitlines()[-1:])
            print(stub.names.host_for("192.0.2.10"), stub.names.host_for("2001:db8::10"))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "0 2001:db8::10 edge.cdn.test www.allowed.test []",
        "2  []",
        "0 ['192.0.2.10', '2001:db8::10'] []",
        "1  ['socket.gaierror: [Errno -3] Temporary failure in name resolution']",
        "www.allowed.test www.allowed.test",
    ]


LAUNCH_WITH_FILES = """
    import sys
    from sandbox.dns_stub import resolv_conf
    from sandbox.launch import launch
    from sandbox.spec import SandboxSpec
    spec = SandboxSpec(argv=["sh", "-c", "cat /etc/resolv.conf; echo x >> /etc/resolv.conf"], seccomp=False,
                       cgroup=False, user_namespace=sys.argv[1] == "user", files={"/etc/resolv.conf": resolv_conf()})
    sys.exit(launch(spec, decide=None))
"""


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["root", "user"])
def test_launched_agent_reads_the_stub_resolv_conf_read_only(mode):
    """launch() with spec.files shows the agent the stub's resolv.conf, refuses its write, keeps the host's."""
    host_before = Path("/etc/resolv.conf").read_bytes()
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(LAUNCH_WITH_FILES), mode], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout == "nameserver 127.0.0.53\noptions edns0\n"
    assert (result.returncode, result.stderr) == (2, "sh: 1: cannot create /etc/resolv.conf: Read-only file system\n")
    assert Path("/etc/resolv.conf").read_bytes() == host_before
