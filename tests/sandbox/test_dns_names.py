"""NameMap: address -> looked-up name, with TTL expiry, a floor, a bound and most-recent-wins."""

from __future__ import annotations

import dns.message
import dns.name
import dns.rrset
import pytest

from sandbox.dns_answer import answer_addresses
from sandbox.dns_names import NameMap


def test_name_map_keeps_entries_for_the_ttl_with_a_floor():
    """A 5 s TTL is kept for the 60 s floor, a 300 s TTL for 300 s, then both are gone."""
    now = [1000.0]
    names = NameMap(min_ttl=60.0, clock=lambda: now[0])
    names.record("short.test", "192.0.2.1", 5)
    names.record("long.test", "192.0.2.2", 300)
    now[0] += 59.0
    assert (names.host_for("192.0.2.1"), names.host_for("192.0.2.2")) == ("short.test", "long.test")
    now[0] += 2.0
    assert (names.host_for("192.0.2.1"), names.host_for("192.0.2.2")) == (None, "long.test")
    now[0] += 240.0
    assert names.host_for("192.0.2.2") is None
    assert len(names) == 0


def test_name_map_evicts_the_oldest_entry_beyond_its_bound():
    """With room for 3 addresses, recording a 4th forgets the least recently recorded one."""
    names = NameMap(max_entries=3)
    for i in range(1, 4):
        names.record(f"h{i}.test", f"192.0.2.{i}", 300)
    names.record("h1.test", "192.0.2.1", 300)  # refreshed: now the newest
    names.record("h4.test", "192.0.2.4", 300)
    assert [names.host_for(f"192.0.2.{i}") for i in range(1, 5)] == ["h1.test", None, "h3.test", "h4.test"]
    assert len(names) == 3


def test_name_map_rejects_a_nonsense_configuration():
    """NameMap with no room raises ValueError naming the bad setting."""
    with pytest.raises(ValueError, match="max_entries=0"):
        NameMap(max_entries=0)


def _answer(*records: str) -> dns.message.Message:
    response = dns.message.make_response(dns.message.make_query("www.example.test", "A"))
    response.answer = [dns.rrset.from_text(*record.split()) for record in records]
    return response


def test_only_addresses_on_the_cname_chain_are_recorded():
    """An A record for a name outside the asked name's CNAME chain is not attributed to the asked name."""
    names = NameMap()
    count = names.record_all("www.example.test", answer_addresses(dns.name.from_text("www.example.test"), _answer(
        "www.example.test. 300 IN CNAME edge.example.test.",
        "edge.example.test. 300 IN A 192.0.2.1",
        "unrelated.test. 300 IN A 192.0.2.99")))
    assert count == 1
    assert (names.host_for("192.0.2.1"), names.host_for("192.0.2.99")) == ("www.example.test", None)


def test_a_cname_loop_ends_without_addresses():
    """A CNAME loop in an answer is followed once around and yields no address."""
    loop = _answer("www.example.test. 300 IN CNAME a.example.test.", "a.example.test. 300 IN CNAME www.example.test.")
    assert answer_addresses(dns.name.from_text("www.example.test"), loop) == []


def test_a_huge_ttl_is_capped_at_a_day():
    """A record with a TTL of about 68 years is forgotten after max_ttl (one day)."""
    now = [0.0]
    names = NameMap(clock=lambda: now[0])
    names.record("long.test", "192.0.2.3", 2**31 - 1)
    now[0] = 86_399.0
    assert names.host_for("192.0.2.3") == "long.test"
    now[0] = 86_400.0
    assert names.host_for("192.0.2.3") is None


def test_an_address_that_is_not_one_is_ignored():
    """record() with a malformed address stores nothing and host_for of it is None."""
    names = NameMap()
    names.record("bad.test", "not-an-ip", 300)
    assert (len(names), names.host_for("not-an-ip")) == (0, None)
