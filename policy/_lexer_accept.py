"""Which terminals the LALR parser can really shift next."""

from __future__ import annotations

from lark.parsers.lalr_analysis import Shift


class Acceptor:
    """``term in acceptor``: would the parser shift ``term`` now, after any reductions?

    A state's action table alone over-approximates (LALR merges lookaheads of
    states shared by several contexts), so membership simulates the reductions
    on a virtual copy of the top of the state stack."""

    __slots__ = ("states", "stack", "raw", "_memo")

    def __init__(self, states: dict, stack: list):
        self.states, self.stack = states, stack
        self.raw: dict = {}
        self._memo: dict[str, bool] = {}

    def reset(self) -> "Acceptor":
        self.raw = self.states[self.stack[-1]]
        self._memo = {}
        return self

    def __contains__(self, term: str) -> bool:
        action = self.raw.get(term)
        if action is None:
            return False
        if action[0] is Shift:
            return True
        known = self._memo.get(term)
        if known is None:
            known = self._memo[term] = self._can_shift(term)
        return known

    def _can_shift(self, term: str) -> bool:
        states, stack = self.states, self.stack
        depth, extra = len(stack), []
        top = stack[-1]
        while True:
            action = states[top].get(term)
            if action is None:
                return False
            if action[0] is Shift:
                return True
            rule = action[1]
            size = len(rule.expansion)
            from_extra = min(size, len(extra))
            del extra[len(extra) - from_extra:]
            depth -= size - from_extra
            below = extra[-1] if extra else stack[depth - 1]
            top = states[below][rule.origin.name][1]
            extra.append(top)
