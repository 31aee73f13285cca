"""The policy engine: a compiled policy deciding on one analyzed action.

Semantics: every rule whose ``match`` holds and whose ``unless`` does not
applies; the most restrictive outcome among them wins (deny > require
approval > allow); with none, the policy's ``default``. Several matching
``require_approval`` rules merge their chains into the strictest one.

Evaluation is pure and on the hot path of every attempted action (with a
cached analysis only this and the fingerprint run), so it is organised
around what can be decided ahead of time:

* rules are indexed by (kind, environment) when the policy compiles;
* a rule's *static* conditions (kinds, environments, finding globs, the
  action's risk) depend only on the action's kind, environment, finding
  codes and risk, a small vocabulary, so which rules pass them is memoised
  per (kind, environment, codes, risk) in a :class:`_Plan`;
* what follows from a set of matching rules (outcome, rule ids, merged
  chain, deny message, the verdict text of each reason) is memoised per set
  in a :class:`_Resolution`;
* only *dynamic* conditions (actor, target, statements, CEL, ``unless``) and
  the reasons' per-finding text are computed per action.

The memo tables are bounded; they are an optimisation, not state: a policy
decides the same with or without them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any
from zoneinfo import ZoneInfo

from jitgate.actions.findings import FINDING_CODES, Analysis, Finding, Risk, excerpt
from jitgate.actions.model import Action, ActionKind, canonical_environment
from jitgate.approvals.chain import ApprovalChain
from jitgate.policy.chains import merge_chains
from jitgate.policy.conditions import Condition, Variables
from jitgate.policy.decision import Decision, Outcome
from jitgate.policy.model import PolicySpec
from jitgate.policy.source import SourceMap

_KNOWN_CODES = frozenset(FINDING_CODES)
_ALLOW, _REQUIRE, _DENY = Outcome.ALLOW, Outcome.REQUIRE_APPROVAL, Outcome.DENY
_RISK_NONE = Risk.NONE
_RISK_LABELS = tuple(r.label for r in Risk)
_UNIT_LABELS: Mapping[ActionKind, str] = {ActionKind.SQL: "statement", ActionKind.SHELL: "command"}
#: Bound of each memo table; past it the table starts over.
_MEMO_LIMIT = 4096
#: Bounds of the memo of reasons by analysis (which keeps analyses alive).
_RECENT_LIMIT = 1024
_RECENT_TEXT_LIMIT = 16 * 1024


@dataclass(frozen=True, slots=True, eq=False)
class Matcher:
    """A compiled ``match`` (or ``unless``): ``None`` fields do not constrain."""

    kinds: frozenset[ActionKind] | None = None
    environments: frozenset[str] | None = None
    targets: re.Pattern[str] | None = None
    users: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    #: The known finding codes the ``findings`` globs match ...
    findings: frozenset[str] | None = None
    #: ... and the globs themselves, for codes outside the vocabulary.
    findings_re: re.Pattern[str] | None = None
    risk: Risk | None = None
    statements: re.Pattern[str] | None = None
    when: Condition | None = None
    #: A list given empty: the matcher can never hold.
    never: bool = False

    @property
    def on_findings(self) -> bool:
        """Whether the matcher is about findings (reasons then name them)."""
        return self.findings is not None or (self.risk is not None and self.risk > _RISK_NONE)

    @property
    def dynamic(self) -> bool:
        """Whether it depends on more than kind, environment, codes and risk."""
        return (
            self.users is not None
            or self.groups is not None
            or self.targets is not None
            or self.statements is not None
            or self.when is not None
            or (self.findings is not None and self.risk is not None)
        )

    def admits(self, kind: ActionKind, environment: str | None) -> bool:
        """Kind and environment; ``None`` stands for any environment no rule names."""
        return (self.kinds is None or kind in self.kinds) and (
            self.environments is None
            or (environment is not None and environment in self.environments)
        )

    def static_holds(self, codes: frozenset[str], risk: Risk, extra: frozenset[str]) -> bool:
        """The finding conditions that depend only on the codes and the risk."""
        if self.findings is not None:
            return not codes.isdisjoint(self.findings) or (
                bool(extra)
                and self.findings_re is not None
                and any(self.findings_re.match(c) for c in extra)
            )
        return self.risk is None or risk >= self.risk

    def relevant_to(self, code: str, risk: Risk) -> bool:
        """Whether a finding (code, risk) is one this matcher is about."""
        if self.findings is not None:
            if code not in self.findings and (
                code in _KNOWN_CODES
                or self.findings_re is None
                or self.findings_re.match(code) is None
            ):
                return False
            return self.risk is None or risk >= self.risk
        return self.risk is not None and self.risk > _RISK_NONE and risk >= self.risk


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    id: str
    outcome: Outcome
    match: Matcher
    description: str = ""
    message: str = ""
    unless: Matcher | None = None
    #: The rule's chain (``require_approval`` only), defaults applied.
    chain: ApprovalChain | None = None
    #: The name of the chain when the rule refers to a named one.
    chain_name: str | None = None
    #: Where the rule starts in its file.
    line: int | None = None
    #: Whether deciding needs a per-action check (precomputed: it is read on
    #: every evaluation that reaches the rule).
    dynamic: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dynamic", self.match.dynamic or self.unless is not None)

    @property
    def restrictive(self) -> bool:
        return self.outcome is not _ALLOW


@dataclass(frozen=True, slots=True, eq=False)
class _Resolution:
    """What follows from one set of matching rules, whatever the action."""

    outcome: Outcome
    ids: tuple[str, ...]
    winners: tuple[Rule, ...]
    chain: ApprovalChain | None
    message: str
    #: Reasons not tied to a finding (rules on other conditions, messages).
    general: tuple[str, ...]
    #: The reasons when the action has no finding at all.
    bare: tuple[str, ...]
    #: Winners whose reason points at the statements they matched.
    on_statements: tuple[Rule, ...]
    #: Memo: (code, risk) → " → verdict" for a finding, or None to leave it out.
    suffixes: dict[tuple[str, Risk], str | None] = field(default_factory=dict)

    def suffix(self, code: str, risk: Risk) -> str | None:
        rules = [r for r in self.winners if r.match.relevant_to(code, risk)]
        if rules:
            return " → " + _verdict(self.outcome, rules)
        if not self.ids:
            return " → " + _DEFAULT_VERDICTS[self.outcome]
        return " → recorded" if self.outcome is _ALLOW else None

    def reasons(
        self, action: Action, analysis: Analysis, errors: list[tuple[Rule, str]] | None
    ) -> tuple[str, ...]:
        if not analysis.findings and not self.on_statements and errors is None:
            return self.bare
        out: list[str] = []
        suffixes = self.suffixes
        label = _UNIT_LABELS.get(action.kind)
        for finding in analysis.findings:
            key = (finding.code, finding.risk)
            suffix = suffixes.get(key, "")
            if suffix == "":
                if len(suffixes) >= _MEMO_LIMIT:
                    suffixes.clear()
                suffix = suffixes[key] = self.suffix(*key)
            if suffix is not None:
                out.append(_describe(finding, label, analysis) + suffix)
        for rule in self.on_statements:
            out.append(_statements_reason(self.outcome, rule, label or "item", analysis))
        out.extend(self.general if out or self.general else self.bare)
        if errors:
            out.extend(_error_reason(rule, error) for rule, error in errors)
        return tuple(out)


@dataclass(frozen=True, slots=True, eq=False)
class _Plan:
    """The candidate rules of one (kind, environment, codes, risk)."""

    #: Rules whose static conditions hold, in policy order.
    rules: tuple[Rule, ...]
    #: Set when no rule needs a per-action check: the answer is known.
    resolution: _Resolution | None


@dataclass(frozen=True, slots=True, eq=False)
class _Entry:
    """The rules of one (kind, environment) and its memo of plans."""

    rules: tuple[Rule, ...]
    plans: dict[tuple[frozenset[str], Risk], _Plan] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class Policy:
    """A compiled policy. Build one with :func:`jitgate.policy.load_policy`."""

    name: str
    source: str
    timezone: ZoneInfo
    default: Outcome
    rules: tuple[Rule, ...]
    #: The chain of ``default: require_approval`` (and of rules naming none).
    default_chain: ApprovalChain | None
    #: Named chains, defaults applied.
    chains: Mapping[str, ApprovalChain]
    #: The validated file this policy was compiled from ...
    spec: PolicySpec
    #: ... and the lines of its fields, when it came from YAML.
    source_map: SourceMap | None = field(default=None, repr=False)
    #: SHA-256 (hex) of the exact bytes the policy was loaded from (the file's
    #: bytes for :func:`load_policy`, the UTF-8 text for ``load_policy_text``);
    #: None when compiled from a spec built in code.
    source_sha256: str | None = None
    #: The YAML text the policy was loaded from (``source_sha256`` is over its
    #: UTF-8 bytes); None when compiled from a spec built in code.
    source_text: str | None = field(default=None, repr=False)
    _index: dict[tuple[ActionKind, str | None], _Entry] = field(init=False, repr=False)
    _resolutions: dict[tuple[Rule, ...], _Resolution] = field(init=False, repr=False)
    #: Memo of reasons for analysis objects the caller's cache hands in again.
    #: Keyed by id(), with the analysis kept in the value: it stays alive
    #: while memoised, so its id cannot be reused by another object.
    _recent: dict[int, tuple[Analysis, ActionKind, _Resolution, tuple[str, ...]]] = field(
        init=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _build_index(self.rules))
        object.__setattr__(self, "_resolutions", {})
        object.__setattr__(self, "_recent", {})

    @property
    def conditional(self) -> bool:
        """Whether some rule has a CEL condition, which may read the time, the
        payload or the attributes. Without one, a decision depends only on the
        kind, text, target, environment, user and groups."""
        return any(
            rule.match.when is not None
            or (rule.unless is not None and rule.unless.when is not None)
            for rule in self.rules
        )

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def evaluate(self, action: Action, analysis: Analysis, fingerprint: str) -> Decision:
        """Decide on ``action``. Pure: no I/O, no clock (the action carries its time)."""
        index = self._index
        entry = index.get((action.kind, action.environment))
        if entry is None:
            environment = canonical_environment(action.environment)
            if environment != action.environment:
                # Built without Action.create: an alias must not slip past a
                # rule written for the canonical name.
                action = replace(action, environment=environment)
            entry = index.get((action.kind, environment)) or index[(action.kind, None)]
        key = (analysis.codes, analysis.risk)
        plan = entry.plans.get(key)
        if plan is None:
            plan = self._plan(entry, key)
        resolution = plan.resolution
        errors: list[tuple[Rule, str]] | None = None
        if resolution is None:
            state: list[Any] = [None, None]
            matched = tuple(
                rule
                for rule in plan.rules
                if not rule.dynamic or _applies(rule, action, analysis, self, state)
            )
            errors = state[1]
            resolution = self._resolutions.get(matched) or self._resolve(matched)
        if errors is None and analysis.findings:
            seen = self._recent.get(id(analysis))
            if (
                seen is not None
                and seen[0] is analysis
                and seen[1] is action.kind
                and seen[2] is resolution
            ):
                reasons = seen[3]
            else:
                reasons = resolution.reasons(action, analysis, None)
                self._remember(analysis, action.kind, resolution, reasons)
        else:
            reasons = resolution.reasons(action, analysis, errors)
        return _decision(
            resolution.outcome,
            analysis.risk,
            resolution.ids,
            reasons,
            fingerprint,
            analysis,
            resolution.chain,
            resolution.message,
        )

    def _remember(
        self,
        analysis: Analysis,
        kind: ActionKind,
        resolution: _Resolution,
        reasons: tuple[str, ...],
    ) -> None:
        # Only small analyses: the memo keeps them alive.
        if sum(len(u.text) for u in analysis.units) > _RECENT_TEXT_LIMIT:
            return
        if len(self._recent) >= _RECENT_LIMIT:
            self._recent.clear()
        self._recent[id(analysis)] = (analysis, kind, resolution, reasons)

    def _plan(self, entry: _Entry, key: tuple[frozenset[str], Risk]) -> _Plan:
        codes, risk = key
        extra = codes - _KNOWN_CODES
        rules = tuple(r for r in entry.rules if r.match.static_holds(codes, risk, extra))
        dynamic = any(r.dynamic for r in rules)
        plan = _Plan(rules, None if dynamic else self._resolve(rules))
        if len(entry.plans) >= _MEMO_LIMIT:
            entry.plans.clear()
        entry.plans[key] = plan
        return plan

    def _resolve(self, matched: tuple[Rule, ...]) -> _Resolution:
        resolution = _resolution(matched, self.default, self.default_chain)
        if len(self._resolutions) >= _MEMO_LIMIT:
            self._resolutions.clear()
        self._resolutions[matched] = resolution
        return resolution


def _applies(
    rule: Rule, action: Action, analysis: Analysis, policy: Policy, state: list[Any]
) -> bool:
    """The per-action part of a rule: its dynamic conditions and its ``unless``.

    A condition that fails to evaluate fails closed: a restrictive rule
    applies, an allow rule does not.
    """
    restrictive = rule.outcome is not _ALLOW
    if not _dynamic_holds(rule.match, action, analysis, policy, state, rule, restrictive):
        return False
    unless = rule.unless
    return unless is None or not _exempts(
        unless, action, analysis, policy, state, rule, not restrictive
    )


def _exempts(
    unless: Matcher,
    action: Action,
    analysis: Analysis,
    policy: Policy,
    state: list[Any],
    rule: Rule,
    on_error: bool,
) -> bool:
    """Whether an ``unless`` exempts the action.

    An exemption must cover the whole action: with ``findings`` every finding
    must be one of them, with ``statements`` every statement must be of those
    types. Otherwise one exempt statement (a reviewed ``CREATE INDEX``) would
    carry a ``DROP TABLE`` sent with it past the rule.
    """
    if unless.never or not unless.admits(action.kind, action.environment):
        return False
    if unless.findings is not None:
        if not all(unless.relevant_to(f.code, f.risk) for f in analysis.findings):
            return False
    elif unless.risk is not None and analysis.risk < unless.risk:
        return False
    if unless.statements is not None:
        pattern = unless.statements
        if not analysis.units or not all(pattern.match(u.type) for u in analysis.units):
            return False
    return _context_holds(unless, action, analysis, policy, state, rule, on_error)


def _dynamic_holds(
    m: Matcher,
    action: Action,
    analysis: Analysis,
    policy: Policy,
    state: list[Any],
    rule: Rule,
    on_error: bool,
) -> bool:
    if m.findings is not None and m.risk is not None and not any(
        m.relevant_to(f.code, f.risk) for f in analysis.findings
    ):
        return False
    if m.statements is not None:
        pattern = m.statements
        if not any(pattern.match(u.type) for u in analysis.units):
            return False
    return _context_holds(m, action, analysis, policy, state, rule, on_error)


def _context_holds(
    m: Matcher,
    action: Action,
    analysis: Analysis,
    policy: Policy,
    state: list[Any],
    rule: Rule,
    on_error: bool,
) -> bool:
    """Actor, target and the CEL condition."""
    if m.users is not None and action.actor.user not in m.users:
        return False
    if m.groups is not None and m.groups.isdisjoint(action.actor.groups):
        return False
    if m.targets is not None and m.targets.match(action.target) is None:
        return False
    if m.when is not None:
        variables = state[0]
        if variables is None:
            variables = state[0] = Variables(action, analysis, policy.timezone)
        result = m.when.evaluate(variables)
        if isinstance(result, str):
            if state[1] is None:
                state[1] = []
            state[1].append((rule, result))
            return on_error
        return result
    return True


def _build_index(rules: Sequence[Rule]) -> dict[tuple[ActionKind, str | None], _Entry]:
    """Candidate rules per (kind, environment), in policy order.

    Environments no rule names share the ``None`` entry, so the index (and
    its memo tables) stay bounded whatever environments actions claim.
    """
    named = {env for r in rules if r.match.environments is not None for env in r.match.environments}
    return {
        (kind, env): _Entry(
            tuple(r for r in rules if not r.match.never and r.match.admits(kind, env))
        )
        for kind in ActionKind
        for env in (*sorted(named), None)
    }


def _resolution(
    matched: tuple[Rule, ...], default: Outcome, default_chain: ApprovalChain | None
) -> _Resolution:
    if not matched:
        return _Resolution(
            outcome=default,
            ids=(),
            winners=(),
            chain=default_chain if default is _REQUIRE else None,
            message=_DEFAULT_DENY_MESSAGE if default is _DENY else "",
            general=(),
            bare=(_NO_FINDING[default],),
            on_statements=(),
        )
    outcome = max(rule.outcome for rule in matched)
    winners = tuple(rule for rule in matched if rule.outcome is outcome)
    chain = None
    if outcome is _REQUIRE:
        chain = merge_chains([r.chain or default_chain for r in winners])  # type: ignore[misc]
    on_statements = tuple(
        r for r in winners if not r.match.on_findings and r.match.statements is not None
    )
    plain = [r for r in winners if not r.match.on_findings and r.match.statements is None]
    general = [_rule_reason(outcome, r) for r in plain]
    if outcome is not _DENY:
        general.extend(
            f"rule {r.id}: {r.message}" for r in winners if r.message and r.match.on_findings
        )
    verdict = _verdict(outcome, winners)
    return _Resolution(
        outcome=outcome,
        ids=tuple(rule.id for rule in matched),
        winners=winners,
        chain=chain,
        message=(
            "; ".join(r.message or r.description or f"denied by rule {r.id}" for r in winners)
            if outcome is _DENY
            else ""
        ),
        general=tuple(general),
        bare=tuple(general) or (verdict[0].upper() + verdict[1:],),
        on_statements=on_statements,
    )


# --- reasons ------------------------------------------------------------------

_DEFAULT_DENY_MESSAGE = "no rule allows this action; denied by the policy default"
_DEFAULT_VERDICTS: Mapping[Outcome, str] = {
    _ALLOW: "recorded; no rule matched, allowed by default",
    _REQUIRE: "no rule matched; approval required by the policy default",
    _DENY: "no rule matched; denied by the policy default",
}
_NO_FINDING: Mapping[Outcome, str] = {
    _ALLOW: "no dangerous finding; allowed by default",
    _REQUIRE: "no rule matched; approval required by the policy default",
    _DENY: "no rule matched; denied by the policy default",
}


def _verdict(outcome: Outcome, rules: Sequence[Rule]) -> str:
    ids = ", ".join(r.id for r in rules)
    many = len(rules) > 1
    if outcome is _REQUIRE:
        return f"rules {ids} require approval" if many else f"rule {ids} requires approval"
    if outcome is _DENY:
        return f"rules {ids} deny it" if many else f"rule {ids} denies it"
    return f"rules {ids} allow it" if many else f"rule {ids} allows it"


def _rule_reason(outcome: Outcome, rule: Rule) -> str:
    verdict = _verdict(outcome, [rule])
    why = rule.message or rule.description
    return verdict[0].upper() + verdict[1:] + (f": {why}" if why else "")


def _statements_reason(outcome: Outcome, rule: Rule, label: str, analysis: Analysis) -> str:
    pattern = rule.match.statements
    units = [u for u in analysis.units if pattern is not None and pattern.match(u.type)]
    where = ", ".join(f"{label} {u.index + 1} ({excerpt(u.text, 80)}): {u.type}" for u in units)
    why = rule.message or rule.description
    return f"{where} → {_verdict(outcome, [rule])}" + (f": {why}" if why else "")


def _describe(finding: Finding, label: str | None, analysis: Analysis) -> str:
    """``statement 2 (DELETE FROM t): message [code, risk]``."""
    text = finding.excerpt
    unit = finding.unit
    if not text and 0 <= unit < len(analysis.units):
        text = excerpt(analysis.units[unit].text)
    tag = f"[{finding.code}, {_RISK_LABELS[finding.risk]}]"
    if label is not None and text:
        return f"{label} {unit + 1} ({text}): {finding.message} {tag}"
    if label is not None and analysis.units:
        return f"{label} {unit + 1}: {finding.message} {tag}"
    if text:
        return f"{text}: {finding.message} {tag}"
    return f"{finding.message} {tag}"


def _error_reason(rule: Rule, error: str) -> str:
    consequence = "the rule applies" if rule.outcome is not _ALLOW else "the rule does not apply"
    return (
        f"rule {rule.id}: its condition failed to evaluate ({error}); failing closed, "
        f"{consequence}"
    )


# --- building decisions ------------------------------------------------------------

_DECISION_FIELDS = (
    "outcome", "risk", "rules", "reasons", "fingerprint", "analysis", "chain", "message",
)


_DecisionBuilder = Callable[
    [Outcome, Risk, tuple[str, ...], tuple[str, ...], str, Analysis, ApprovalChain | None, str],
    Decision,
]


def _make_decision_builder() -> _DecisionBuilder:
    """A constructor for :class:`Decision` without the frozen dataclass's
    per-field ``object.__setattr__`` (about half the cost of an evaluation).

    Falls back to the ordinary constructor if ``Decision`` ever changes shape.
    """
    if tuple(f.name for f in fields(Decision)) != _DECISION_FIELDS:
        return Decision
    setters = tuple(getattr(Decision, name).__set__ for name in _DECISION_FIELDS)
    s0, s1, s2, s3, s4, s5, s6, s7 = setters
    new = object.__new__

    def build(
        outcome: Outcome,
        risk: Risk,
        rules: tuple[str, ...],
        reasons: tuple[str, ...],
        fingerprint: str,
        analysis: Analysis,
        chain: ApprovalChain | None,
        message: str,
    ) -> Decision:
        decision: Decision = new(Decision)
        s0(decision, outcome)
        s1(decision, risk)
        s2(decision, rules)
        s3(decision, reasons)
        s4(decision, fingerprint)
        s5(decision, analysis)
        s6(decision, chain)
        s7(decision, message)
        return decision

    return build


_decision = _make_decision_builder()
