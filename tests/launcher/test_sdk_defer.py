"""The SDK's DeferTable on its own: what an agent opening defers in a loop can make the launcher hold."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import pytest

from launcher import sdk_defer
from launcher.sdk_defer import DeferTable, Refused
from launcher.sdk_server import SdkCall
from policy.decision import Decision, Effect

DEFER = Decision(Effect.DEFER, rule_id="fpl-0", reason_code="RULE_DEFER", reason="high value refund")


def refusing(call, decision, timeout):
    return False  # answered at once, as the approval service answers TOO_MANY_PENDING


def settled(table: DeferTable, pending: int = 0, timeout: float = 5.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while table.sizes()[0] != pending and time.monotonic() < deadline:
        time.sleep(0.005)
    return table.sizes()


def open_started(table: DeferTable, args: dict) -> str:
    token = table.open(SdkCall("stripe/refund", args), DEFER)
    table.start(token)
    return token


def test_resolved_defers_keep_neither_call_nor_arguments():
    """A resolved defer keeps only its status: 200 answered defers of ~60 KB each leave (almost) nothing behind."""
    table = DeferTable(refusing, 5.0, lambda call, decision, token: True)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(200):
            open_started(table, {"amount": 900, "pad": str(n) * (60_000 // len(str(n)))})
            settled(table)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert table.sizes() == (0, 200)
    assert kept < 1_000_000, f"{kept} bytes kept for 200 resolved defers"  # their arguments alone are 12 MB


def test_final_statuses_are_capped_oldest_forgotten_first(monkeypatch):
    """Past MAX_RESOLVED unpolled statuses the oldest is forgotten, and then reads denied (fails closed)."""
    monkeypatch.setattr(sdk_defer, "MAX_RESOLVED", 3)
    table = DeferTable(lambda call, decision, timeout: True, 5.0, lambda call, decision, token: True)
    tokens = []
    for n in range(5):
        tokens.append(open_started(table, {"amount": n}))
        settled(table)
    assert table.sizes() == (0, 3)
    assert [table.poll(token) for token in tokens] == ["denied", "denied", "approved", "approved", "approved"]
    assert table.sizes() == (0, 0)


def test_final_statuses_expire_after_keep_resolved():
    """An unpolled status is forgotten KEEP_RESOLVED seconds after it resolved (checked when a defer opens)."""
    now = [1000.0]
    table = DeferTable(lambda call, decision, timeout: True, 5.0, lambda call, decision, token: True,
                       clock=lambda: now[0])
    old = open_started(table, {"amount": 1})
    settled(table)
    now[0] += sdk_defer.KEEP_RESOLVED + 1
    fresh = open_started(table, {"amount": 2})
    settled(table)
    assert table.sizes() == (0, 1)
    assert (table.poll(old), table.poll(fresh)) == ("denied", "approved")


def test_open_approvals_are_capped_with_a_clear_refusal(monkeypatch):
    """With MAX_PENDING open, open() refuses (DEFER_LIMIT) until one resolves; resolved ones never count."""
    monkeypatch.setattr(sdk_defer, "MAX_PENDING", 2)
    release = threading.Event()
    table = DeferTable(lambda call, decision, timeout: release.wait(timeout), 5.0, lambda c, d, t: True)
    first = [open_started(table, {"amount": n}) for n in range(2)]
    with pytest.raises(Refused) as refused:
        table.open(SdkCall("stripe/refund", {"amount": 3}), DEFER)
    assert (refused.value.code, str(refused.value)) == (
        "DEFER_LIMIT", "too many approvals open at once (2 wait already; answer those first)")
    release.set()
    assert settled(table) == (0, 2)
    assert open_started(table, {"amount": 4}) not in first  # room again: resolved statuses do not count
    assert [table.poll(token) for token in first] == ["approved", "approved"]


def test_deferred_arguments_are_bounded():
    """A DEFER whose arguments exceed MAX_ARGS characters of JSON is refused before anything is held."""
    asked = []
    table = DeferTable(lambda call, decision, timeout: asked.append(call), 5.0, lambda c, d, t: True)
    big = {"pad": "x" * sdk_defer.MAX_ARGS}
    with pytest.raises(Refused) as refused:
        table.open(SdkCall("stripe/refund", big), DEFER)
    size = sdk_defer.MAX_ARGS + len('{"pad":""}')
    assert (refused.value.code, str(refused.value)) == (
        "DEFER_ARGS_TOO_LARGE", f"the arguments of a call held for approval may take at most {sdk_defer.MAX_ARGS} "
                                f"characters as JSON, these take {size}")
    assert table.sizes() == (0, 0) and asked == []
    open_started(table, {"pad": "x" * (sdk_defer.MAX_ARGS - 20)})  # just under the bound: held
    assert settled(table) == (0, 1)


def test_after_close_no_defer_opens():
    """Once the run ends, a DEFER is refused (RUN_ENDING), not held."""
    table = DeferTable(None, 5.0, lambda c, d, t: True)
    table.close()
    with pytest.raises(Refused) as refused:
        table.open(SdkCall("stripe/refund", {}), DEFER)
    assert refused.value.code == "RUN_ENDING"


def test_a_defer_ended_by_close_before_it_starts_reads_expired():
    """close() between open() and start() (the run ends while the DEFER is recorded): start() asks nobody and the
    token reads expired."""
    asked = []
    table = DeferTable(lambda call, decision, timeout: asked.append(call) or True, 5.0, lambda c, d, t: True)
    token = table.open(SdkCall("stripe/refund", {"amount": 900}), DEFER)
    table.close()
    table.start(token)
    assert (table.poll(token), asked) == ("expired", [])
