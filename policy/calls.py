"""ToolCall: what the sandbox (or an SDK) asks the policy about."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call to decide: ``tool`` such as ``fs/read`` and its arguments.

    ``timestamp`` is seconds since the epoch (UTC), supplied by the caller so the
    policy package stays free of clocks it cannot control in tests."""

    tool: str
    args: dict[str, Any] = field(default_factory=dict)
    session_id: str = ""
    agent_id: str = ""
    call_id: str = ""
    timestamp: float = 0.0
    principal: dict[str, Any] = field(default_factory=dict)
    delegation: dict[str, Any] = field(default_factory=dict)
