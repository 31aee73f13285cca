"""Policy lint: valid policies that probably do not say what their author meant.

Loading rejects what cannot work; lint points at what works but has no
effect: a rule that can never match, a rule another one already decides, an
allow rule that cannot change any outcome, a chain nobody uses, a stage
whose escalation can never happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jitgate.actions.model import ActionKind
from jitgate.policy.decision import Outcome
from jitgate.policy.engine import Policy, Rule
from jitgate.policy.errors import Path, format_path
from jitgate.policy.model import ChainSpec, MatchSpec, finding_codes_matching

#: Which kinds of action each family of finding codes can be about.
_CODE_KINDS: dict[str, frozenset[ActionKind] | None] = {
    "sql": frozenset({ActionKind.SQL}),
    "shell": frozenset({ActionKind.SHELL}),
    "deploy": frozenset({ActionKind.DEPLOY}),
    "tool": frozenset({ActionKind.TOOL_CALL}),
    "http": frozenset({ActionKind.HTTP}),
    "custom": frozenset({ActionKind.CUSTOM}),
}
# Codes of any other family (``action.invalid``) can be about any kind.


@dataclass(frozen=True, slots=True)
class LintWarning:
    #: A short stable name of the check (``never-matches``, ``shadowed``, ...).
    check: str
    message: str
    file: str = ""
    line: int | None = None
    path: Path = ()

    def __str__(self) -> str:
        where = self.file or "<policy>"
        if self.line is not None:
            where += f":{self.line}"
        field = f" {format_path(self.path)}:" if self.path else ""
        return f"{where}:{field} {self.message} [{self.check}]"


def lint_policy(policy: Policy) -> list[LintWarning]:
    """Every warning for ``policy``, in file order."""
    warnings = [
        *_never_matching(policy),
        *_shadowed(policy),
        *_ineffective_allows(policy),
        *_unused_chains(policy),
        *_stage_timeouts(policy),
    ]
    return sorted(warnings, key=lambda w: w.line or 0)


def _warning(policy: Policy, check: str, path: Path, message: str) -> LintWarning:
    line = policy.source_map.line_of(path) if policy.source_map is not None else None
    return LintWarning(check, message, policy.source, line, path)


def _never_matching(policy: Policy) -> Iterator[LintWarning]:
    for i, (rule, spec) in enumerate(zip(policy.rules, policy.spec.rules, strict=True)):
        path: Path = ("rules", i)
        empty = [name for name, value in _lists(spec.match) if value is not None and not value]
        if empty:
            yield _warning(
                policy, "never-matches", (*path, "match", empty[0]),
                f"rule {rule.id} can never match: {empty[0]} is an empty list "
                "(leave a field out to not constrain it)",
            )
            continue
        impossible = _kinds_without_findings(spec.match)
        if impossible:
            yield _warning(
                policy, "never-matches", (*path, "match", "findings"),
                f"rule {rule.id} can never match: none of its findings can occur in a "
                f"{' or '.join(sorted(impossible))} action",
            )
        if spec.unless is not None and not _constrains(spec.unless):
            yield _warning(
                policy, "never-matches", (*path, "unless"),
                f"rule {rule.id} never applies: its unless has no condition, so it always holds",
            )


def _lists(m: MatchSpec) -> list[tuple[str, list[Any] | None]]:
    return [
        ("kinds", m.kinds), ("environments", m.environments), ("targets", m.targets),
        ("users", m.users), ("groups", m.groups), ("findings", m.findings),
        ("statements", m.statements),
    ]


def _constrains(m: MatchSpec) -> bool:
    return any(value is not None for _, value in _lists(m)) or (
        m.risk is not None or m.when is not None
    )


def _kinds_without_findings(m: MatchSpec) -> set[str]:
    """The rule's kinds if none of its finding codes can occur in any of them."""
    if m.kinds is None or m.findings is None:
        return set()
    possible: set[ActionKind] = set()
    for pattern in m.findings:
        for code in finding_codes_matching(pattern):
            kinds = _CODE_KINDS.get(code.split(".", 1)[0])
            if kinds is None:
                return set()
            possible |= kinds
    if possible.isdisjoint(m.kinds):
        return {k.value for k in m.kinds}
    return set()


def _match_key(m: MatchSpec | None) -> tuple[Any, ...] | None:
    """What a match means, comparable (lists as sets, conditions by text)."""
    if m is None:
        return None
    return (
        *(frozenset(v) if v is not None else None for _, v in _lists(m)),
        m.risk,
        " ".join(m.when.source.split()) if m.when is not None else None,
    )


def _shadowed(policy: Policy) -> Iterator[LintWarning]:
    seen: dict[tuple[Any, ...], tuple[Rule, int]] = {}
    for i, (rule, spec) in enumerate(zip(policy.rules, policy.spec.rules, strict=True)):
        key = (_match_key(spec.match), _match_key(spec.unless))
        first = seen.get(key)
        if first is None:
            seen[key] = (rule, i)
            continue
        earlier = first[0]
        if rule.outcome < earlier.outcome or (
            rule.outcome == earlier.outcome and rule.outcome is not Outcome.REQUIRE_APPROVAL
        ):
            yield _warning(
                policy, "shadowed", ("rules", i),
                f"rule {rule.id} has the same conditions as rule {earlier.id} "
                f"({earlier.outcome.label}) and can never change a decision",
            )
        elif rule.outcome > earlier.outcome:
            yield _warning(
                policy, "shadowed", ("rules", first[1]),
                f"rule {earlier.id} has the same conditions as the more restrictive rule "
                f"{rule.id} ({rule.outcome.label}) and can never change a decision",
            )
        else:
            yield _warning(
                policy, "shadowed", ("rules", i),
                f"rule {rule.id} has the same conditions as rule {earlier.id}: both always "
                "apply together and their chains are merged; consider one rule",
            )


def _ineffective_allows(policy: Policy) -> Iterator[LintWarning]:
    if policy.default is not Outcome.ALLOW:
        return
    for i, rule in enumerate(policy.rules):
        if rule.outcome is Outcome.ALLOW:
            yield _warning(
                policy, "ineffective-allow", ("rules", i, "outcome"),
                f"allow rule {rule.id} cannot change any decision: the default is already "
                "allow, and an allow never overrides a matching deny or require_approval rule",
            )


def _unused_chains(policy: Policy) -> Iterator[LintWarning]:
    used = {rule.chain_name for rule in policy.rules}
    if isinstance(policy.spec.defaults.chain, str):
        used.add(policy.spec.defaults.chain)
    for name in policy.spec.chains:
        if name not in used:
            yield _warning(
                policy, "unused-chain", ("chains", name),
                f"chain {name!r} is not used by any rule",
            )


def _chain_specs(policy: Policy) -> Iterator[tuple[Path, ChainSpec]]:
    spec = policy.spec
    for name, chain in spec.chains.items():
        yield ("chains", name), chain
    if isinstance(spec.defaults.chain, ChainSpec):
        yield ("defaults", "chain"), spec.defaults.chain
    for i, rule in enumerate(spec.rules):
        if isinstance(rule.chain, ChainSpec):
            yield ("rules", i, "chain"), rule.chain


def _stage_timeouts(policy: Policy) -> Iterator[LintWarning]:
    defaults = policy.spec.defaults
    for path, chain in _chain_specs(policy):
        ttl = chain.ttl or defaults.ttl
        for j, stage in enumerate(chain.stages):
            stage_path: Path = (*path, "stages", j)
            if stage.timeout is not None and stage.timeout >= ttl:
                what = "escalates" if stage.escalate_to else "times out"
                yield _warning(
                    policy, "stage-timeout", (*stage_path, "timeout"),
                    f"stage {stage.name!r} {what} after {stage.timeout}, but the request "
                    f"expires after {ttl} (the chain's ttl): the timeout never takes effect",
                )
            if stage.escalate_to and set(stage.escalate_to) <= set(stage.groups):
                yield _warning(
                    policy, "stage-escalation", (*stage_path, "escalate_to"),
                    f"stage {stage.name!r} escalates to its own groups: escalation changes nothing",
                )
            if stage.escalate_to and stage.timeout is None:
                yield _warning(
                    policy, "stage-escalation", (*stage_path, "escalate_to"),
                    f"stage {stage.name!r} has escalate_to but no timeout: it never escalates",
                )
