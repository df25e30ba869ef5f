"""The host's resolv.conf as the DNS stub reads it: the servers glibc's own resolver would use.

glibc is the oracle: a helper in a private mount namespace binds each file over /etc/resolv.conf
and reports what res_ninit read from it."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.dns_stub import DnsStub
from sandbox.dns_upstream import DnsConfigError, host_nameservers


def test_host_nameservers_come_from_resolv_conf(tmp_path):
    """The nameserver lines of a resolv.conf become upstreams on port 53, as glibc reads them: an
    address glibc cannot use (or none) is skipped, a scope becomes the interface's number, at most three."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("search corp.example\n# nameserver 192.0.2.1\nnameserver\nnameserver dns.example\n"
                    "nameserver 192.0.2.53 # the office\nnameserver fe80::53%lo\n"
                    "nameserver 2001:DB8::53\tx\nnameserver 192.0.2.54\n")
    assert host_nameservers(str(conf)) == [("192.0.2.53", 53), ("fe80::53%1", 53), ("2001:db8::53", 53)]


# Lines where a loose reading and glibc's differ; each case's servers are what glibc uses.
GLIBC_CASES = {
    "leading space, CRLF, vertical tab: skipped": (
        " nameserver 192.0.2.1\nnameserver 192.0.2.2\r\nnameserver\v192.0.2.3\nnameserver 192.0.2.4\n",
        ["192.0.2.4"]),
    "inet_aton's short, hex and octal forms": (
        "nameserver 10.1\nnameserver 0x0a000003\nnameserver 010.0.0.1\n", ["10.0.0.1", "10.0.0.3", "8.0.0.1"]),
    "a space or tab ends the address, a comment mark spoils it; only three kept": (
        "nameserver\t192.0.2.5 x\nnameserver 192.0.2.6#y\nnameserver 192.0.2.7;z\nnameserver 192.0.2.8\t#\n"
        "nameserver 192.0.2.10\nnameserver 192.0.2.11\n",
        ["192.0.2.5", "192.0.2.8", "192.0.2.10"]),
    "an unusable line does not take a place; a NUL ends the line": (
        "nameserver 1.2.3.4.5\nnameserver 192.0.2.9\0junk\n", ["192.0.2.9"]),
    "link-local scopes: a name or a number; anything else is no scope": (
        "nameserver fe80::53%lo\nnameserver fe80::54%7\nnameserver fe80::55%7x\n",
        ["fe80::53%1", "fe80::54%7", "fe80::55"]),
    "numeric scopes beyond 32 bits are no scope": (
        "nameserver fe80::56%4294967295\nnameserver fe80::57%4294967296\nnameserver fe80::58%" + "9" * 5000 + "\n",
        ["fe80::56%4294967295", "fe80::57", "fe80::58"]),
    "leading zeros in a numeric scope count for nothing": (
        "nameserver fe80::59%00000000001\nnameserver fe80::5a%" + "0" * 5000 + "7\nnameserver fe80::5b%000\n",
        ["fe80::59%1", "fe80::5a%7", "fe80::5b"]),
    "scopes on other addresses: a name is ignored, a number kept by glibc (dropped by the stub)": (
        "nameserver 2001:db8::53%lo\nnameserver 2001:DB8::54%9\nnameserver ff02::1%lo\n",
        ["2001:db8::53", "2001:db8::54%9", "ff02::1%1"]),
}

# Reads file paths on stdin; for each, binds it over /etc/resolv.conf (a new inode each time, so
# glibc's cached configuration is reloaded) and prints the servers res_ninit took, as JSON.
GLIBC_ORACLE = """
import ctypes, json, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libresolv = ctypes.CDLL("libresolv.so.2")
MS_BIND, MNT_DETACH = 4096, 2
mounted = False
for path in sys.stdin:
    if mounted:
        libc.umount2(b"/etc/resolv.conf", MNT_DETACH)
    if libc.mount(path.rstrip("\\n").encode(), b"/etc/resolv.conf", None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), "bind mount over /etc/resolv.conf")
    mounted = True
    state = ctypes.create_string_buffer(568)  # struct __res_state on x86_64 (glibc 2.3x)
    libresolv.__res_ninit(state)
    servers = []
    for i in range(struct.unpack_from("i", state.raw, 16)[0]):  # nscount
        family = struct.unpack_from("H", state.raw, 20 + 16 * i)[0]
        if family == socket.AF_INET:  # nsaddr_list[i], a sockaddr_in
            servers.append(socket.inet_ntoa(state.raw[20 + 16 * i + 4:20 + 16 * i + 8]))
            continue
        pointer = struct.unpack_from("P", state.raw, 536 + 8 * i)[0]  # _u._ext.nsaddrs[i], a sockaddr_in6 *
        address, scope = struct.unpack("8x16sI", ctypes.string_at(pointer, 28))
        text = socket.inet_ntop(socket.AF_INET6, address)
        servers.append(f"{text}%{scope}" if scope else text)
    print(json.dumps(servers), flush=True)
"""


class Glibc:
    """The oracle helper: ``servers(path)`` is what glibc's resolver reads from that file."""

    def __init__(self):
        self.helper = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", GLIBC_ORACLE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def servers(self, path) -> list[str]:
        self.helper.stdin.write(f"{path}\n")
        self.helper.stdin.flush()
        line = self.helper.stdout.readline()
        assert line, f"the glibc helper ended (status {self.helper.poll()})"
        return json.loads(line)

    def close(self):
        self.helper.stdin.close()
        self.helper.wait(timeout=10)


@pytest.fixture(scope="module")
def glibc():
    oracle = Glibc()
    yield oracle
    oracle.close()


def _as_the_stub_sends(address: str) -> str:
    """glibc's server as the stub keeps it: a scope only on a link-scoped address (fe80::/10, or
    interface- or link-local multicast), where the kernel uses it."""
    text, _, scope = address.partition("%")
    if not scope:
        return address
    packed = ipaddress.IPv6Address(text).packed
    link_scoped = ipaddress.IPv6Address(text).is_link_local or (packed[0] == 0xFF and packed[1] & 0x0F in (1, 2))
    return address if link_scoped else text


def _expected(glibc_servers: list[str]) -> list[tuple[str, int]]:
    return [(_as_the_stub_sends(address), 53) for address in glibc_servers]


@pytest.mark.parametrize("case", GLIBC_CASES)
def test_host_nameservers_read_resolv_conf_as_glibc_does(tmp_path, glibc, case):
    """For each case the stub's servers equal what glibc's own resolver reads from the same file
    and the expected list."""
    text, expected = GLIBC_CASES[case]
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(text.encode())
    assert glibc.servers(conf) == expected
    assert host_nameservers(str(conf)) == _expected(expected)


# resolv.conf-like lines: nameserver lines with random tokens or addresses with scopes (names,
# numbers, junk), among random bytes
SCOPED = st.tuples(
    st.sampled_from([b"fe80::1", b"fe90::2", b"febf::3", b"fec0::4", b"ff02::1", b"ff12::2", b"ff31::3",
                     b"ff05::4", b"2001:db8::5", b"::1", b"10.1", b"192.0.2.7"]),
    st.one_of(st.sampled_from([b"", b"%", b"%lo", b"%1", b"%4294967295", b"%4294967296", b"%0", b"%007",
                               b"%nosuchif", b"%1x", b"%lo\0", b"%\xc2\xb2", b"%\xd9\xa3",  # ², Arabic-Indic 3
                               b"%00000000001", b"%00004294967295", b"%0004294967296"]),
              st.binary(max_size=12).map(lambda scope: b"%" + scope))).map(b"".join)
NAMESERVER_LINE = st.tuples(
    st.sampled_from([b"nameserver ", b"nameserver\t", b"nameserver \t", b" nameserver ", b"nameserver"]),
    st.one_of(SCOPED, SCOPED, st.binary(max_size=40)),
    st.sampled_from([b"", b"", b" x", b"#c", b"\t;", b"\r"])).map(b"".join)
RESOLV_LINES = st.lists(st.one_of(NAMESERVER_LINE, NAMESERVER_LINE, st.binary(max_size=80)),
                        max_size=12).map(b"\n".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=RESOLV_LINES)
def test_any_resolv_conf_gives_what_glibc_reads_or_a_clear_error(tmp_path_factory, glibc, text):
    """Whatever the file holds, host_nameservers returns the servers glibc's resolver takes from it,
    in its order, or, where glibc found none and falls back to 127.0.0.1, raises DnsConfigError."""
    conf = tmp_path_factory.mktemp("conf") / "resolv.conf"  # a new inode: glibc reloads it
    conf.write_bytes(text)
    from_glibc = glibc.servers(conf)
    try:
        servers = host_nameservers(str(conf))
    except DnsConfigError as err:
        assert err.message.startswith(f"{conf}: no DNS server")
        # glibc's 127.0.0.1 is its fallback, not a server of the file: with one more usable line
        # that line must be all glibc finds
        fallback_check = tmp_path_factory.mktemp("conf") / "resolv.conf"
        fallback_check.write_bytes(text + b"\nnameserver 192.0.2.255\n")
        assert glibc.servers(fallback_check) == ["192.0.2.255"], "glibc found a server where the stub found none"
        return
    assert servers == _expected(from_glibc)


@pytest.mark.parametrize("text, why", [
    ("search corp.example\n", "(no nameserver line)"),
    ("nameserver\nnameserver not-an-address\n", "(no IP address in 'nameserver not-an-address')"),
    ("nameserver 192.0.2.\xff\n", "(no IP address in 'nameserver 192.0.2.\ufffd')"),
])
def test_resolv_conf_without_a_usable_nameserver_is_a_clear_error_at_start(tmp_path, text, why):
    """A resolv.conf giving no usable server raises DnsConfigError when the stub is made, naming the
    file and what is wrong, with a fix."""
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(text.encode("latin-1"))
    with pytest.raises(DnsConfigError) as err:
        DnsStub(lambda name, qtype: True, host_resolv_conf=str(conf))
    assert err.value.message == f"{conf}: no DNS server to forward the sandbox's lookups to {why}"
    assert err.value.hint.startswith(f"add a 'nameserver ADDRESS' line to {conf}")
