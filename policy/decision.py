"""Decision: the effect of a tool call and the reasons behind it."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass


class Effect(str, enum.Enum):
    PERMIT = "PERMIT"
    DENY = "DENY"
    DEFER = "DEFER"


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    rule_id: str = ""
    reason_code: str = ""
    reason: str = ""
    policy_version: str = ""
    defer_token: str = ""
    defer_expires_at: float = 0.0  # epoch seconds, DEFER only
    notify: str = ""  # the rule's notify: target, DEFER only
    layer: int = 0  # index of the policy layer whose rule decided

    @property
    def permitted(self) -> bool:
        return self.effect is Effect.PERMIT

    def to_dict(self) -> dict:
        out = asdict(self)
        out["effect"] = self.effect.value
        return {k: v for k, v in out.items() if v not in ("", 0, 0.0) or k in ("effect", "rule_id", "reason_code", "reason", "policy_version")}


def deny(reason_code: str, reason: str, rule_id: str = "", policy_version: str = "") -> Decision:
    """A fail-closed denial, used for errors and timeouts everywhere."""
    return Decision(Effect.DENY, rule_id=rule_id, reason_code=reason_code, reason=reason, policy_version=policy_version)
