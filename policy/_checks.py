"""Static checks of a document, before compilation.

Codes (stable): E301-E306 conditions (see _conditions), E310-E316 block values,
E320/E321 ``deny!`` guarantee (E322 under ``policy check`` only), E330-E334 document shape; W300-W303 warnings.
E323/E324 and W307 (tool patterns) come from ``_patterns``, which runs first.
"""

from __future__ import annotations

import dataclasses

from policy import ast
from policy._patterns import canonical_patterns
from policy.errors import Diagnostic
from policy.glob import compile_glob, has_meta, is_valid_glob

SAME_PATTERN_PERMIT = "W306"  # promoted to error E322 by policy check, as the reference does
NOT_ENFORCED = "parsed, not enforced by faramesh-sandbox"
INJECTED_BACKENDS = ("env", "file")
DEFAULTS = ("permit", "deny", "defer", "halt", "shadow")
BUDGET_KEYS = ("max", "daily", "max_calls", "warn_at", "on_exceed")
AMBIENT_KEYS = ("max_customers_per_day", "max_calls_per_day", "max_data_volume", "on_exceed")
RATE_WINDOWS = ("second", "minute", "hour", "day")


class Reporter:
    """Collects diagnostics for one file, filling in the source line."""

    def __init__(self, path: str, source_text: str):
        self.path = path
        self.source_text = source_text
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self._lines: list[str] | None = None

    def line(self, number: int) -> str:
        """Line ``number`` counted as the parser counts (LF only), split once per file."""
        if self._lines is None:
            self._lines = self.source_text.split("\n")
        return self._lines[number - 1].rstrip("\r") if 0 < number <= len(self._lines) else ""

    def make(self, code: str, message: str, span: ast.Span, help_text: str = "", severity: str = "error",
             related: tuple[Diagnostic, ...] = ()) -> Diagnostic:
        return Diagnostic(code=code, message=message, path=self.path, span=span, help=help_text,
                          severity=severity, source_line=self.line(span.line), related=related)

    def error(self, code, message, span, help_text="", related=()) -> None:
        self.errors.append(self.make(code, message, span, help_text, "error", related))

    def warning(self, code, message, span, help_text="") -> None:
        self.warnings.append(self.make(code, message, span, help_text, "warning"))


def _not_enforced(report: Reporter, what: str, span: ast.Span) -> None:
    report.warning("W300", f"`{what}` is {NOT_ENFORCED}", span,
                   "remove it, or enforce it outside the sandbox; it has no effect on decisions here")


def ordered_rules(doc: ast.Document) -> list[ast.Rule]:
    """Reference order: first agent's rules, then its phases' rules, then flat rules."""
    agents = doc.agents
    rules: list[ast.Rule] = []
    if agents:
        rules.extend(agents[0].rules)
        for phase in agents[0].of(ast.Phase):
            rules.extend(phase.rules)
    rules.extend(doc.flat_rules)
    return rules


# ---------------------------------------------------------------- deny! guarantee


def _segment_covers(strict: str, other: str) -> bool:
    if strict == other or strict == "*":
        return True
    if not has_meta(other):
        return compile_glob(strict)(other)
    if strict.endswith("*") and not has_meta(strict[:-1]):
        literal_head = other
        for i, ch in enumerate(other):
            if ch in "*?[\\":
                literal_head = other[:i]
                break
        return literal_head.startswith(strict[:-1])
    return False


def pattern_covers(strict: str, other: str) -> bool:
    """True when every tool name ``other`` matches is also matched by ``strict``.

    Detected: ``strict`` is ``*``; ``other`` has no wildcard and ``strict``
    matches it; or both have the same number of ``/`` segments and each segment
    of ``strict`` is equal to ``other``'s, is ``*``, is ``prefix*`` with
    ``other``'s segment starting with ``prefix`` before any wildcard, or matches
    ``other``'s wildcard-free segment. Anything else is reported as not covered."""
    if strict == "*" or strict == other:
        return True
    if not is_valid_glob(strict) or not is_valid_glob(other):
        return False
    if not has_meta(other):
        return compile_glob(strict)(other)
    strict_parts, other_parts = strict.split("/"), other.split("/")
    if len(strict_parts) != len(other_parts):
        return False
    return all(_segment_covers(s, o) for s, o in zip(strict_parts, other_parts))


def _unconditional(rule: ast.Rule) -> bool:
    return rule.condition is None and not rule.net


def _literal_head(text: str) -> str:
    for i, ch in enumerate(text):
        if ch in "*?[\\":
            return text[:i]
    return text


class _CoverIndex:
    """Unconditional ``deny!`` patterns, found by what they could cover without a pair-wise scan.

    A covering deny! (see ``pattern_covers``) has the other pattern's number of
    ``/`` segments, and the literal head of its first segment (text before any
    wildcard) is a prefix of the other's first segment. Patterns with a class
    (which may match ``/``) and a lone ``*`` are always candidates."""

    def __init__(self) -> None:
        self._by_head: dict[tuple[int, str], list] = {}
        self._always: list = []

    def add(self, order: int, pattern: str, item) -> None:
        if pattern == "*" or "[" in pattern:
            self._always.append((order, item))
        elif is_valid_glob(pattern):
            key = (pattern.count("/"), _literal_head(pattern.split("/", 1)[0]))
            self._by_head.setdefault(key, []).append((order, item))

    def candidates(self, pattern: str) -> list:
        """``(order, item)`` of every deny! that may cover ``pattern``, in order."""
        slashes, first = pattern.count("/"), _literal_head(pattern.split("/", 1)[0])
        found = list(self._always)
        for end in range(len(first) + 1):
            found.extend(self._by_head.get((slashes, first[:end]), ()))
        found.sort(key=lambda pair: pair[0])
        return found


def check_strict_conflicts(rules: list[ast.Rule], report: Reporter) -> None:
    """Reject permits/defers that an unconditional ``deny!`` makes unreachable.

    E320: same pattern as an unconditional deny!. E321: pattern covered by an
    unconditional deny! (see ``pattern_covers``). W306 (permit) / W304 (defer):
    same pattern as a conditional deny!. The rule still applies whenever the
    deny! condition is false, so loading accepts it (corpus policies rely on
    this); ``policy check`` turns W306 into error E322, as faramesh check does.
    Each rule is compared, in deny! order, with the deny! rules of its own
    pattern and those an index says may cover it (never with all of them)."""
    same_pattern: dict[str, list] = {}
    covering = _CoverIndex()
    for order, strict in enumerate(r for r in rules if r.strict):
        same_pattern.setdefault(strict.tool, []).append((order, strict))
        if _unconditional(strict):
            covering.add(order, strict.tool, strict)
    for rule in rules:
        if rule.strict or rule.effect not in ("permit", "defer"):
            continue
        seen = same_pattern.get(rule.tool, [])
        nearby = dict(seen + covering.candidates(rule.tool))
        for order in sorted(nearby):
            strict = nearby[order]
            if not _unconditional(strict):
                code = SAME_PATTERN_PERMIT if rule.effect == "permit" else "W304"
                where = report.make("E320", f"`deny! {strict.tool}` is here", strict.span, severity="note")
                report.warnings.append(report.make(
                    code, f"`{rule.effect} {rule.tool}` has the same pattern as a conditional `deny!`: "
                    "it applies only when the deny! condition is false", rule.span,
                    "give the two rules different patterns (faramesh check rejects a permit that "
                    "repeats a deny! pattern)", "warning", (where,)))
                continue
            if strict.tool == rule.tool:
                where = report.make("E320", f"`deny! {strict.tool}` is here", strict.span, severity="note")
                report.error("E320", f"`{rule.effect} {rule.tool}` conflicts with `deny! {strict.tool}`: "
                             "deny! always wins, so this rule can never take effect", rule.span,
                             "remove this rule, or add a condition to the deny!", (where,))
                break
            if pattern_covers(strict.tool, rule.tool):
                where = report.make("E320", f"`deny! {strict.tool}` is here", strict.span, severity="note")
                report.error("E321", f"`{rule.effect} {rule.tool}` is unreachable: unconditional "
                             f"`deny! {strict.tool}` covers every tool it matches", rule.span,
                             "remove this rule, or narrow the deny! pattern", (where,))
                break


def check_layer_conflicts(files: list[tuple[str, str, ast.Document]]) -> list[Diagnostic]:
    """W305: a permit/defer in one file covered by an unconditional ``deny!`` in another.

    Stacked as layers, the deny! wins, so the rule never takes effect. It is a
    warning, not an error: each file is valid on its own."""
    # patterns as the compiler reads them; their own diagnostics were reported per file
    files = [(path, text, canonical_patterns(doc, Reporter(path, text))) for path, text, doc in files]
    covering = _CoverIndex()
    order = 0
    for path, text, doc in files:
        where = Reporter(path, text)
        for r in ordered_rules(doc):
            if r.strict and _unconditional(r):
                covering.add(order, r.tool, (path, where.make("W305", f"`deny! {r.tool}` is here", r.span,
                                                              severity="note"), r))
                order += 1
    found: list[Diagnostic] = []
    for path, text, doc in files:
        report = Reporter(path, text)
        for rule in ordered_rules(doc):
            if rule.strict or rule.effect not in ("permit", "defer"):
                continue
            for _, (strict_path, note, strict) in covering.candidates(rule.tool):
                if strict_path != path and pattern_covers(strict.tool, rule.tool):
                    report.warning("W305", f"`{rule.effect} {rule.tool}` never takes effect when stacked with "
                                   f"{strict_path}: its `deny! {strict.tool}` covers it", rule.span,
                                   "remove this rule, or narrow the deny! in the other file")
                    found.append(dataclasses.replace(report.warnings.pop(), related=(note,)))
                    break
    return found


# ---------------------------------------------------------------- blocks


def _number(value: object) -> float | None:
    value = value.value if isinstance(value, ast.Literal) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _check_budget(budget: ast.Budget, report: Reporter) -> None:
    for setting in budget.settings:
        if setting.key not in BUDGET_KEYS:
            report.error("E312", f"unknown budget key `{setting.key}`", setting.span,
                         f"budget keys are: {', '.join(BUDGET_KEYS)}")
    if budget.on_exceed not in ("deny", "defer"):
        report.error("E311", f"budget on_exceed must be deny or defer, not `{budget.on_exceed}`", budget.span,
                     "write on_exceed deny")
    for name in ("max", "daily", "max_calls"):
        value = getattr(budget, name)
        if value is not None and value < 0:
            report.error("E311", f"budget {name} must not be negative ({value})", budget.span, f"write {name} 0 or more")
    if budget.warn_at is not None:
        if not 0 <= budget.warn_at <= 1:
            report.error("E311", f"budget warn_at must be a fraction between 0 and 1, not {budget.warn_at}",
                         budget.span, "write warn_at 0.8")
        else:
            _not_enforced(report, "warn_at", budget.span)


def _check_delegate(delegate: ast.Delegate, report: Reporter) -> None:
    if delegate.ceiling not in (None, "inherited", "approval"):
        report.error("E314", f"delegate ceiling must be inherited or approval, not `{delegate.ceiling}`",
                     delegate.span, "write ceiling inherited")
    if delegate.ttl is not None and delegate.ttl < 0:
        report.error("E314", "delegate ttl must not be negative", delegate.span, "write ttl 1h")
    if not delegate.scopes:
        report.warning("W301", f"delegate {delegate.target} has no scope: every delegated call will be denied",
                       delegate.span, 'add scope "tool/glob"')


def _check_block(block: ast.Block, report: Reporter) -> None:
    if block.kind == "ambient":
        for setting in block.settings:
            if setting.key not in AMBIENT_KEYS:
                report.error("E315", f"unknown ambient key `{setting.key}`", setting.span,
                             f"ambient keys are: {', '.join(AMBIENT_KEYS)}")
            elif setting.key == "on_exceed" and setting.value not in ("deny", "defer"):
                report.error("E315", f"ambient on_exceed must be deny or defer, not `{setting.value}`",
                             setting.span, "write on_exceed deny")
    name = block.kind if block.name is None else f"{block.kind} {block.name}"
    if block.kind == "credential":
        backend = next((s.value for s in block.settings if s.key == "backend"), None)
        if backend in INJECTED_BACKENDS:
            return  # the HTTPS egress injects it after the decision (docs/egress.md)
        report.warning("W300", f"`{name}` is {NOT_ENFORCED}: only `backend env` and `backend file` "
                       "credentials are injected by the HTTPS egress", block.span,
                       "use backend env (path: a variable of the launcher's environment) or backend file")
        return
    _not_enforced(report, name, block.span)


def _check_system(system: ast.System, report: Reporter) -> None:
    for setting in system.settings:
        if setting.key == "on_policy_load_failure" and setting.value not in ("deny_all", "deny"):
            report.error("E332", f"on_policy_load_failure must be deny_all or deny, not `{setting.value}`",
                         setting.span, "write on_policy_load_failure deny_all")
        elif setting.key == "kill_switch_default":
            report.error("E332", "kill_switch_default is not accepted by the runtime loader", setting.span,
                         "remove kill_switch_default")
        elif setting.key == "max_output_bytes":
            _not_enforced(report, "system max_output_bytes", setting.span)


def _check_manifest(manifest: ast.Manifest, report: Reporter) -> None:
    words = manifest.words
    if manifest.kind == "orchestrator":
        ok = len(words) == 3 and words[1] == "undeclared" and words[2] in ("deny", "defer")
        shape = "manifest orchestrator <id> undeclared deny|defer"
    else:
        ok = (len(words) in (5, 6) and words[1] == "to" and words[3] == "max" and words[4].isdigit()
              and (len(words) == 5 or words[5] == "approval"))
        shape = "manifest grant <orchestrator> to <target> max <n> [approval]"
    if not ok:
        report.error("E334", f"malformed manifest line: {' '.join((manifest.kind,) + tuple(words))}",
                     manifest.span, f"write {shape}")


def _check_agent(agent: ast.Agent, report: Reporter) -> None:
    budgets = agent.of(ast.Budget)
    for extra in budgets[1:]:
        first = report.make("E310", "the first budget is here", budgets[0].span, severity="note")
        report.error("E310", "more than one budget block", extra.span, "merge the budget blocks into one", (first,))
    for item in agent.items:
        if isinstance(item, ast.Default) and item.effect not in DEFAULTS:
            report.error("E313", f"unknown default `{item.effect}`", item.span, "write default deny")
        elif isinstance(item, ast.Default) and item.effect == "shadow":
            report.warning("W302", "default shadow is not supported by the sandbox; unmatched calls are denied",
                           item.span, "write default deny or default permit")
        elif isinstance(item, ast.Budget):
            _check_budget(item, report)
        elif isinstance(item, ast.Delegate):
            _check_delegate(item, report)
        elif isinstance(item, ast.Block):
            _check_block(item, report)
        elif isinstance(item, ast.RateLimit) and (item.per not in RATE_WINDOWS or item.count < 1):
            report.error("E316", f"rate_limit must be a positive count per {'|'.join(RATE_WINDOWS)}",
                         item.span, 'write rate_limit "stripe/*": 10 per minute')
        elif isinstance(item, ast.Phase) and (item.duration is not None or item.next is not None):
            _not_enforced(report, f"phase {item.name} duration/next", item.span)


def _check_rule_patterns(rules: list[ast.Rule], report: Reporter) -> None:
    for rule in rules:
        if not is_valid_glob(rule.tool):
            report.warning("W303", f"malformed tool pattern `{rule.tool}`: matched as a prefix before `*`",
                           rule.span, "fix the [...] class or escape it with \\")


def check_document(doc: ast.Document, report: Reporter) -> None:
    """Run every document-level check; results accumulate in ``report``."""
    agents = doc.agents
    for extra in agents[1:]:
        first = report.make("E330", f"agent {agents[0].name} is here", agents[0].span, severity="note")
        report.error("E330", f"more than one agent in one document (agent {extra.name})", extra.span,
                     "put each agent in its own policy file", (first,))
    systems = doc.of(ast.System)
    for extra in systems[1:]:
        report.error("E333", "more than one system block", extra.span, "merge the system blocks into one")
    for item in doc.items:
        if isinstance(item, ast.Import):
            if "@latest" in item.ref:
                report.error("E331", f"import {item.ref!r} uses @latest", item.span, "pin a version: name@1.2.3")
            _not_enforced(report, f"import {item.ref}", item.span)
        elif isinstance(item, ast.Block):
            _check_block(item, report)
        elif isinstance(item, ast.System):
            _check_system(item, report)
        elif isinstance(item, ast.Manifest):
            _check_manifest(item, report)
    if agents:
        _check_agent(agents[0], report)
    rules = ordered_rules(doc)
    _check_rule_patterns(rules, report)
    check_strict_conflicts(rules, report)
