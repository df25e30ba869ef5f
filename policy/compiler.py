"""AST -> CompiledPolicy: checks, rule order, indexes and compiled conditions.

``check`` returns every diagnostic (errors and warnings) of one document;
``compile_policy`` raises ``PolicyError`` when any of them is an error and
otherwise returns a ``CompiledPolicy`` that the evaluator can run without
looking at the AST again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from policy import ast
from policy._checks import SAME_PATTERN_PERMIT, Reporter, check_document, ordered_rules
from policy._static import reads_session
from policy._conditions import CompiledCondition, ConditionError, compile_condition
from policy._network import compile_net_clauses
from policy._patterns import canonical_patterns
from policy.decision import Decision, Effect
from policy.errors import Diagnostic, PolicyError
from policy.glob import compile_glob, compile_visibility, has_meta

EFFECT_OF = {"permit": Effect.PERMIT, "deny": Effect.DENY, "defer": Effect.DEFER}
DEFAULT_EFFECT = {"permit": Effect.PERMIT, "deny": Effect.DENY, "defer": Effect.DEFER,
                  "halt": Effect.DENY, "shadow": Effect.DENY}
DEFAULT_REASONS = {Effect.PERMIT: "permitted by rule {id}", Effect.DENY: "denied by rule {id}",
                   Effect.DEFER: "action requires human approval"}
CANDIDATE_CACHE_LIMIT = 4096


@dataclass(slots=True)
class CompiledRule:
    id: str
    position: int
    effect: Effect
    strict: bool
    tool: str
    matches_tool: object  # str -> bool
    condition: CompiledCondition | None
    net: object | None  # args -> bool, or None without network clauses
    reason: str
    reason_code: str
    notify: str
    span: ast.Span
    decision: Decision  # prebuilt for PERMIT/DENY; the evaluator adds defer fields
    expr: object = None  # the condition's syntax tree, for static analyses (policy/_envelope.py)


@dataclass(slots=True)
class CompiledPhase:
    name: str
    visible: tuple  # matchers, prefix-star semantics
    duration: float | None
    next: str | None


@dataclass(slots=True)
class CompiledPolicy:
    path: str
    version: str
    agent: str
    rules: tuple[CompiledRule, ...]
    default: Effect
    default_written: str  # the effect as written, "" when absent
    budget: ast.Budget | None
    phases: dict[str, CompiledPhase]
    start_phase: str | None
    delegates: dict[str, ast.Delegate]
    manifest: tuple[ast.Manifest, ...]
    rate_limits: tuple[tuple[str, object, int, float, str], ...]  # (pattern, matcher, count, seconds, bucket)
    vars: dict[str, object]
    warnings: tuple[Diagnostic, ...]
    sum_fields: frozenset[str]
    reads_session: bool = False  # some condition reads session state or history
    strict_rules: tuple[CompiledRule, ...] = ()
    exact_index: dict[str, tuple[int, ...]] = field(default_factory=dict)
    glob_rules: tuple[int, ...] = ()
    _candidates: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    _strict_candidates: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)

    def candidates(self, tool: str) -> tuple[CompiledRule, ...]:
        """Rules whose tool pattern matches ``tool``, in first-match order (cached)."""
        found = self._candidates.get(tool)
        if found is None:
            positions = list(self.exact_index.get(tool, ()))
            positions += [p for p in self.glob_rules if self.rules[p].matches_tool(tool)]
            found = tuple(self.rules[p] for p in sorted(positions))
            if len(self._candidates) >= CANDIDATE_CACHE_LIMIT:
                self._candidates.clear()
            self._candidates[tool] = found
        return found

    def strict_candidates(self, tool: str) -> tuple[CompiledRule, ...]:
        """The ``deny!`` rules whose pattern matches ``tool``, in order (cached)."""
        found = self._strict_candidates.get(tool)
        if found is None:
            found = tuple(r for r in self.candidates(tool) if r.strict)
            if len(self._strict_candidates) >= CANDIDATE_CACHE_LIMIT:
                self._strict_candidates.clear()
            self._strict_candidates[tool] = found
        return found


def policy_version(source: str | bytes) -> str:
    """First 16 hex digits of sha256 over the policy bytes."""
    data = source if isinstance(source, bytes) else source.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def _compile_rule(rule: ast.Rule, position: int, version: str, path: str, report: Reporter,
                  sum_fields: set) -> CompiledRule | None:
    rule_id = f"fpl-{position}"
    effect = EFFECT_OF[rule.effect]
    condition = None
    if rule.condition is not None:
        label = f"<fpl {path}:{rule.span.line} {rule_id}>"
        try:
            condition = compile_condition(rule.condition, rule.condition_text, rule.span, label)
            sum_fields.update(condition.sum_fields)
            for code, message, span, help_text in condition.warnings:
                report.warning(code, message, span, help_text)
        except ConditionError as exc:
            for code, message, span, help_text in exc.problems:
                report.error(code, message, span, help_text)
            return None
    if rule.strict:
        reason_code, reason = "FPL_STRICT_DENY", rule.reason or "strict deny"
    else:
        reason_code = "RULE_" + effect.value
        reason = rule.reason or DEFAULT_REASONS[effect].format(id=rule_id)
    notify = (rule.notify or "") if effect is Effect.DEFER else ""  # Decision.notify is for DEFER only
    decision = Decision(effect, rule_id=rule_id, reason_code=reason_code, reason=reason,
                        policy_version=version, notify=notify)
    return CompiledRule(
        id=rule_id, position=position, effect=effect, strict=rule.strict, tool=rule.tool,
        matches_tool=compile_glob(rule.tool), condition=condition, net=compile_net_clauses(rule.net, rule.effect),
        reason=reason, reason_code=reason_code, notify=notify, span=rule.span, decision=decision,
        expr=rule.condition,
    )


def _agent_vars(agent: ast.Agent | None) -> dict[str, object]:
    if agent is None:
        return {}
    out: dict[str, object] = {}
    meta_keys = {"model": ("agent.model", "model_name"), "framework": ("agent.framework",),
                 "version": ("agent.version",)}
    for item in agent.items:
        if isinstance(item, ast.Meta):
            for key in meta_keys.get(item.key, ()):
                out[key] = item.value
        elif isinstance(item, ast.Var):
            value = item.value
            out[item.name] = value.value if isinstance(value, ast.Literal) else value
    return out


def _phases(agent: ast.Agent | None) -> tuple[dict[str, CompiledPhase], str | None]:
    if agent is None:
        return {}, None
    phases = {}
    for phase in agent.of(ast.Phase):
        visible = tuple(compile_visibility(rule.tool) for rule in phase.rules)
        phases[phase.name] = CompiledPhase(phase.name, visible, phase.duration, phase.next)
    if not phases:
        return {}, None
    return phases, ("init" if "init" in phases else min(phases))


_PER_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def _rate_limits(agent: ast.Agent | None) -> tuple:
    """One token bucket per ``rate_limit`` line. The bucket is named by the pattern (as
    session files store it) and, from a pattern's second line on, by its occurrence too:
    ``10 per second`` beside ``3 per day`` must not refill the daily bucket."""
    limits, seen = [], {}
    for line in (agent.of(ast.RateLimit) if agent else ()):
        seen[line.pattern] = n = seen.get(line.pattern, 0) + 1
        bucket = line.pattern if n == 1 else f"{line.pattern}\x00{n}"  # no pattern holds a NUL (E323)
        limits.append((line.pattern, compile_glob(line.pattern), line.count, _PER_SECONDS[line.per], bucket))
    return tuple(limits)


def compile_policy(doc: ast.Document, source_text: str | bytes, path: str) -> CompiledPolicy:
    """Check and compile one document. Raises PolicyError listing every error.

    ``source_text`` is the text (or the raw bytes) ``doc`` was parsed from: the
    version hashes its bytes and diagnostics quote its lines."""
    version = policy_version(source_text)
    if isinstance(source_text, bytes):
        source_text = source_text.decode("utf-8", "replace")
    report = Reporter(path, source_text)
    doc = canonical_patterns(doc, report)
    check_document(doc, report)
    sum_fields: set[str] = set()
    compiled = [_compile_rule(rule, n, version, path, report, sum_fields) for n, rule in enumerate(ordered_rules(doc))]
    if report.errors:
        raise PolicyError(report.errors + report.warnings)
    rules = tuple(r for r in compiled if r is not None)
    agent = doc.agents[0] if doc.agents else None
    default_written = (agent.default if agent else None) or ""
    budgets = agent.of(ast.Budget) if agent else ()
    exact: dict[str, list[int]] = {}
    globs = []
    for rule in rules:
        if has_meta(rule.tool):
            globs.append(rule.position)
        else:
            exact.setdefault(rule.tool, []).append(rule.position)
    phases, start = _phases(agent)
    limits = _rate_limits(agent)
    return CompiledPolicy(
        path=path, version=version, agent=agent.name if agent else "", rules=rules,
        default=DEFAULT_EFFECT.get(default_written, Effect.DENY), default_written=default_written,
        budget=budgets[0] if budgets else None, phases=phases, start_phase=start,
        delegates={d.target: d for d in (agent.of(ast.Delegate) if agent else ())},
        manifest=doc.of(ast.Manifest), rate_limits=limits, vars=_agent_vars(agent),
        warnings=tuple(report.warnings), sum_fields=frozenset(sum_fields),
        reads_session=any(r.condition is not None and reads_session(r.condition) for r in ordered_rules(doc)),
        strict_rules=tuple(r for r in rules if r.strict),
        exact_index={k: tuple(v) for k, v in exact.items()}, glob_rules=tuple(globs),
    )


def check(doc: ast.Document, source_text: str | bytes, path: str) -> list[Diagnostic]:
    """All diagnostics (errors and warnings) of one document, sorted by location."""
    try:
        found = list(compile_policy(doc, source_text, path).warnings)
    except PolicyError as exc:
        found = list(exc.diagnostics)
    return sorted((_promote(d) for d in found), key=lambda d: d.sort_key)


def _promote(diag: Diagnostic) -> Diagnostic:
    """``policy check`` is stricter than loading: a permit repeating a deny! pattern is an error."""
    if diag.code != SAME_PATTERN_PERMIT:
        return diag
    return dataclasses.replace(diag, code="E322", severity="error")
