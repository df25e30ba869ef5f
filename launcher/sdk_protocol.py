"""The wire format of the agent SDK socket: newline-delimited JSON, one request per connection.

Two request forms reach the socket (both as sent by the ``faramesh-sdk`` Python package):

- JSON-RPC, from its tool interception::

    {"jsonrpc": "2.0", "id": 1, "method": "govern",
     "params": {"agent_id", "tool", "operation", "args", ...}}

  answered ``{"jsonrpc": "2.0", "id": 1, "result": {"effect", "reason_code", "defer_token", ...}}``
  or ``{"jsonrpc": "2.0", "id": 1, "error": {"code", "message"}}``. The tool id is
  ``tool/operation`` (the SDK splits ``stripe/refund`` into ``stripe`` and ``refund``; a name
  without a slash arrives with operation ``invoke``).
- Typed: ``{"type": "govern", "call_id", "agent_id", "tool_id", "args"}`` and
  ``{"type": "poll_defer", "agent_id", "defer_token"}``, answered with a flat object;
  ``{"error": "..."}`` on failure.

Every error reply makes the SDK raise, so anything this module rejects is denied. That includes
tool ids in the namespaces of the calls the sandbox observes itself (SANDBOX_NAMESPACES).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from policy.canonical import NulByte, canonical_tool
from policy.decision import Decision, Effect

MAX_LINE = 1 << 20  # bytes in one request; a longer one is refused unread
MAX_ID = 256  # characters kept of tool ids, agent ids, call ids and tokens
MAX_REASON = 1024  # characters of reason text in a reply (the SDK reads at most 64 KiB)

# Requests the reference daemon serves to operators; from inside the sandbox they would let the
# agent approve its own defers or read other decisions, so they are refused by name.
OPERATOR_ONLY = frozenset({"approve_defer", "kill", "audit_subscribe", "callback_subscribe", "status",
                           "session", "delegate", "scan_output"})
OPERATOR_ONLY_PREFIXES = ("standing_grant", "supervisor_")

# Namespaces of the calls the sandbox observes itself: syscalls (sandbox/traced.py: fs/, net/,
# shell/), DNS lookups (net/dns) and requests through the egress (http/<method>, net/tls). Reported
# by the agent, such a call would pass for one the sandbox saw, so they are refused.
SANDBOX_NAMESPACES = ("fs", "net", "shell", "http")

JSONRPC_PARSE_ERROR = -32700
JSONRPC_INVALID_REQUEST = -32600
JSONRPC_METHOD_NOT_FOUND = -32601
JSONRPC_INVALID_PARAMS = -32602


class BadRequest(Exception):
    """A request that cannot be served; ``reply`` is what goes back on the wire."""

    def __init__(self, message: str, *, rpc: bool, rpc_id: Any = None, code: int = JSONRPC_INVALID_REQUEST):
        super().__init__(message)
        self.reply = error_reply(message, rpc=rpc, rpc_id=rpc_id, code=code)


@dataclass(frozen=True)
class Request:
    kind: str  # "govern" or "poll_defer"
    rpc: bool  # JSON-RPC form (replies wrap a result) or typed form (flat replies)
    rpc_id: Any = None
    tool: str = ""
    args: dict = field(default_factory=dict)
    agent_id: str = ""
    call_id: str = ""
    defer_token: str = ""


def parse(line: bytes) -> Request:
    """One request line -> Request; raises BadRequest with the reply to send."""
    try:
        message = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep nesting
        raise BadRequest(f"invalid JSON: {type(err).__name__}: {str(err)[:200]}", rpc=True,
                         code=JSONRPC_PARSE_ERROR) from None
    if not isinstance(message, dict):
        raise BadRequest("a request is a JSON object", rpc=True)
    if "jsonrpc" in message or "method" in message:
        return _parse_rpc(message)
    return _parse_typed(message)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _parse_rpc(message: dict) -> Request:
    rpc_id = message.get("id")
    if not isinstance(rpc_id, (str, int, type(None))) or isinstance(rpc_id, bool):
        rpc_id = None
    method = message.get("method")
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise BadRequest("params must be an object", rpc=True, rpc_id=rpc_id, code=JSONRPC_INVALID_PARAMS)
    if method == "govern":
        tool = _text(params, "tool", rpc=True, rpc_id=rpc_id, required=True)
        operation = _text(params, "operation", rpc=True, rpc_id=rpc_id)
        return Request("govern", True, rpc_id,
                       tool=_reportable(f"{tool}/{operation}" if operation else tool, rpc=True, rpc_id=rpc_id),
                       args=_args(params, rpc=True, rpc_id=rpc_id),
                       agent_id=_text(params, "agent_id", rpc=True, rpc_id=rpc_id),
                       call_id=_text(params, "call_id", rpc=True, rpc_id=rpc_id))
    if method == "poll_defer":
        return Request("poll_defer", True, rpc_id, agent_id=_text(params, "agent_id", rpc=True, rpc_id=rpc_id),
                       defer_token=_text(params, "defer_token", rpc=True, rpc_id=rpc_id))
    raise BadRequest(_unserved(method), rpc=True, rpc_id=rpc_id, code=JSONRPC_METHOD_NOT_FOUND)


def _parse_typed(message: dict) -> Request:
    kind = message.get("type")
    if kind == "govern":
        tool = _text(message, "tool_id", rpc=False, required=True)
        return Request("govern", False, tool=_reportable(tool, rpc=False),
                       args=_args(message, rpc=False), agent_id=_text(message, "agent_id", rpc=False),
                       call_id=_text(message, "call_id", rpc=False))
    if kind == "poll_defer":
        return Request("poll_defer", False, agent_id=_text(message, "agent_id", rpc=False),
                       defer_token=_text(message, "defer_token", rpc=False))
    raise BadRequest(_unserved(kind), rpc=False)


def _unserved(name: Any) -> str:
    if not isinstance(name, str) or not name:
        return "missing request type: send type \"govern\" or \"poll_defer\""
    shown = name[:64]
    if name in OPERATOR_ONLY or name.startswith(OPERATOR_ONLY_PREFIXES):
        return f"{shown!r} is an operator request and is not served to the agent"
    return f"unknown request type {shown!r}: this socket serves govern and poll_defer"


def _text(source: dict, key: str, *, rpc: bool, rpc_id: Any = None, required: bool = False) -> str:
    value = source.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string", rpc=rpc, rpc_id=rpc_id, code=JSONRPC_INVALID_PARAMS)
    if required and not value:
        raise BadRequest(f"{key} is required", rpc=rpc, rpc_id=rpc_id, code=JSONRPC_INVALID_PARAMS)
    if len(value) > MAX_ID:
        raise BadRequest(f"{key} is longer than {MAX_ID} characters", rpc=rpc, rpc_id=rpc_id,
                         code=JSONRPC_INVALID_PARAMS)
    return value


def _reportable(tool: str, *, rpc: bool, rpc_id: Any = None) -> str:
    """``tool``, unless the engine would read it as a tool of the sandbox's own namespaces."""
    try:
        namespace = canonical_tool(tool).lstrip("/").split("/", 1)[0].lower()  # as the engine matches it
    except NulByte:
        return tool  # the engine denies it (NUL_BYTE)
    if namespace in SANDBOX_NAMESPACES:
        raise BadRequest(f"tool {tool[:64]!r} is refused: fs/, net/, shell/ and http/ name the calls the sandbox "
                         f"observes itself (syscalls, DNS lookups, HTTP through the egress), which the agent cannot "
                         f"report; give the tool a name outside them", rpc=rpc, rpc_id=rpc_id,
                         code=JSONRPC_INVALID_PARAMS)
    return tool


def _args(source: dict, *, rpc: bool, rpc_id: Any = None) -> dict:
    value = source.get("args")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("args must be an object", rpc=rpc, rpc_id=rpc_id, code=JSONRPC_INVALID_PARAMS)
    return value


# -- replies -----------------------------------------------------------------------------


def govern_reply(request: Request, decision: Decision, *, call_id: str, defer_token: str = "",
                 latency_ms: int = 0) -> dict:
    """The decision as the SDK reads it: effect PERMIT/DENY/DEFER, reason_code, defer_token,
    and for a DENY or DEFER a structured_denial (the SDK's ToolDeniedException fields)."""
    effect = decision.effect.value
    body = {"call_id": call_id, "effect": effect, "rule_id": decision.rule_id,
            "reason_code": decision.reason_code, "reason": decision.reason[:MAX_REASON],
            "policy_version": decision.policy_version, "latency_ms": latency_ms}
    if decision.effect is Effect.DEFER:
        body["defer_token"] = defer_token
    if decision.effect is not Effect.PERMIT:
        denial = {"code": decision.reason_code, "rule_id": decision.rule_id,
                  "human_message": body["reason"]}
        if defer_token:
            denial["resolution"] = {"approval_id": defer_token}
        body["structured_denial"] = denial
    return _wrap(request, body)


def poll_reply(request: Request, status: str) -> dict:
    return _wrap(request, {"defer_token": request.defer_token, "status": status})


def _wrap(request: Request, body: dict) -> dict:
    if request.rpc:
        return {"jsonrpc": "2.0", "id": request.rpc_id, "result": body}
    return body


def error_reply(message: str, *, rpc: bool, rpc_id: Any = None, code: int = JSONRPC_INVALID_REQUEST) -> dict:
    if rpc:
        return {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}}
    return {"error": message}


def encode(reply: dict) -> bytes:
    return json.dumps(reply, ensure_ascii=True, separators=(",", ":"), default=str).encode("ascii") + b"\n"
