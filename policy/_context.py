"""What a condition sees: the evaluation context and the derived variables.

``EvalContext`` is created once per decision; views that cost something
(``session``, ``time``, ``principal``, ``delegation``) are built on first use.
"""

from __future__ import annotations

import datetime
import math

from policy._exprlib import is_number
from policy.session import SessionState


class EvalContext:
    """What a condition can see. Derived views are computed on first use only."""

    __slots__ = ("tool", "args", "call", "state", "vars", "_session", "_time")

    def __init__(self, tool: str, args: dict, call, state: SessionState, variables: dict):
        self.tool = tool
        self.args = args
        self.call = call
        self.state = state
        self.vars = variables
        self._session = None
        self._time = None

    @property
    def now(self) -> float:
        return self.call.timestamp

    def session_field(self, name: str):
        state = self.state
        if name == "call_count":
            return state.call_count
        return self.session().get(name)

    def session(self) -> dict:
        if self._session is None:
            state = self.state
            self._session = {
                "call_count": state.call_count,
                "history": state.history_view(),
                "cost_usd": state.cost_usd,
                "daily_cost_usd": state.daily_cost_usd,
                "tokens_session": 0,
                "tokens_daily": 0,
                "intent_class": "",
                "deny_count": state.deny_count,
            }
        return self._session

    def time(self) -> dict:
        if self._time is None:
            moment = datetime.datetime.fromtimestamp(self.call.timestamp, tz=datetime.timezone.utc)
            self._time = {"hour": moment.hour, "weekday": moment.isoweekday(), "month": moment.month,
                          "day": moment.day, "minute": moment.minute, "year": moment.year}
        return self._time

    def principal(self) -> dict:
        given = self.call.principal or {}
        return {"id": "", "tier": "", "role": "", "org": "", "verified": False, **given}

    def delegation(self) -> dict:
        given = self.call.delegation or {}
        return {"depth": 0, "origin_agent": "", "origin_org": "", "agent_identity_verified": False, **given}


# ---------------------------------------------------------------- derived variables


def amount_of(args: dict) -> float:
    value = args.get("amount")
    if is_number(value):
        return value  # type: ignore[return-value]
    if type(value) is str:
        try:
            return float(value)
        except ValueError:
            return 0
    return 0


def cost_of(args: dict, written: dict) -> float:
    """What a call spends against a budget: its amount, never below 0.

    Canonicalisation turns a NaN or infinite float into 0, so the amount as
    written counts too. An amount that is not a finite number (``"nan"``,
    ``1e999``) costs infinitely much: no cap can admit it."""
    cost = 0.0
    for source in (args, written):
        try:
            amount = float(amount_of(source))
        except OverflowError:  # an int too large for a float
            return math.inf
        if amount != amount or amount == math.inf:
            return math.inf
        cost = max(cost, amount)
    return cost


def string_arg(args: dict, key: str) -> str:
    value = args.get(key)
    return value.strip() if type(value) is str else ""


def recipients_of(args: dict) -> int:
    value = args.get("recipients")
    return len(value) if type(value) in (list, tuple) else 0
