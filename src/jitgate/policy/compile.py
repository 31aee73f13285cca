"""From a validated policy file to a compiled :class:`Policy`.

The file model checks each field on its own; here the checks that need the
whole file run (rule ids unique, chain references resolve, the chains of one
action can be merged), and the rules are compiled into matchers.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Sequence
from types import MappingProxyType
from zoneinfo import ZoneInfo

from jitgate.approvals.chain import ApprovalChain
from jitgate.policy.chains import build_chain
from jitgate.policy.decision import Outcome
from jitgate.policy.engine import Matcher, Policy, Rule
from jitgate.policy.errors import Path, PolicyError, format_path
from jitgate.policy.model import ChainSpec, MatchSpec, PolicySpec, finding_codes_matching
from jitgate.policy.source import SourceMap


def compile_policy(
    spec: PolicySpec,
    source: str = "<policy>",
    source_map: SourceMap | None = None,
    *,
    source_sha256: str | None = None,
    source_text: str | None = None,
) -> Policy:
    """Compile ``spec``; raise :class:`PolicyError` listing every problem."""
    where = source_map or SourceMap(source)
    problems: list[tuple[Path, str]] = []
    problems.extend(_duplicate_ids(spec))
    problems.extend(_stage_conflicts(spec))

    named = {name: build_chain(chain, spec.defaults) for name, chain in spec.chains.items()}

    def resolve(ref: str | ChainSpec | None, path: Path) -> ApprovalChain | None:
        if ref is None:
            return None
        if isinstance(ref, ChainSpec):
            return build_chain(ref, spec.defaults)
        chain = named.get(ref)
        if chain is None:
            known = ", ".join(sorted(named)) or "none defined"
            problems.append((path, f"unknown chain {ref!r} (chains: {known})"))
        return chain

    default_chain = resolve(spec.defaults.chain, ("defaults", "chain"))
    if spec.default is Outcome.REQUIRE_APPROVAL and spec.defaults.chain is None:
        problems.append(
            (("default",), "default: require_approval needs a chain: set defaults.chain")
        )

    rules: list[Rule] = []
    for i, rule in enumerate(spec.rules):
        path: Path = ("rules", i)
        chain = resolve(rule.chain, (*path, "chain"))
        if rule.outcome is Outcome.REQUIRE_APPROVAL:
            if rule.chain is None and spec.defaults.chain is None:
                problems.append(
                    (
                        (*path, "outcome"),
                        "a require_approval rule needs a chain: set chain (a name or an "
                        "inline chain) or defaults.chain",
                    )
                )
        elif rule.chain is not None:
            problems.append(
                (
                    (*path, "chain"),
                    f"only require_approval rules take a chain (this rule's outcome is "
                    f"{rule.outcome.label})",
                )
            )
        rules.append(
            Rule(
                id=rule.id,
                outcome=rule.outcome,
                match=compile_matcher(rule.match),
                description=rule.description.strip(),
                message=rule.message.strip(),
                unless=compile_matcher(rule.unless) if rule.unless is not None else None,
                chain=chain if chain is not None else (
                    default_chain if rule.outcome is Outcome.REQUIRE_APPROVAL else None
                ),
                chain_name=rule.chain if isinstance(rule.chain, str) else None,
                line=where.line_of(path),
            )
        )

    if problems:
        raise PolicyError(where.problem(p, m) for p, m in problems)
    return Policy(
        name=spec.name,
        source=source,
        timezone=ZoneInfo(spec.timezone),
        default=spec.default,
        rules=tuple(rules),
        default_chain=default_chain,
        chains=MappingProxyType(named),
        spec=spec,
        source_map=source_map,
        source_sha256=source_sha256,
        source_text=source_text,
    )


def compile_matcher(m: MatchSpec) -> Matcher:
    lists = (m.kinds, m.environments, m.targets, m.users, m.groups, m.findings, m.statements)
    return Matcher(
        kinds=frozenset(m.kinds) if m.kinds is not None else None,
        environments=frozenset(m.environments) if m.environments is not None else None,
        targets=_globs(m.targets),
        users=frozenset(m.users) if m.users is not None else None,
        groups=frozenset(m.groups) if m.groups is not None else None,
        findings=(
            frozenset().union(*(finding_codes_matching(p) for p in m.findings))
            if m.findings is not None
            else None
        ),
        findings_re=_globs(m.findings),
        risk=m.risk,
        statements=_globs(m.statements),
        when=m.when,
        never=any(values is not None and not values for values in lists),
    )


def _globs(patterns: Sequence[str] | None) -> re.Pattern[str] | None:
    """One regex for a list of fnmatch globs (case-sensitive)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _duplicate_ids(spec: PolicySpec) -> Iterator[tuple[Path, str]]:
    first: dict[str, int] = {}
    for i, rule in enumerate(spec.rules):
        if rule.id in first:
            yield (
                ("rules", i, "id"),
                f"duplicate rule id {rule.id!r} (also rules[{first[rule.id]}])",
            )
        else:
            first[rule.id] = i


def _chain_specs(spec: PolicySpec) -> Iterator[tuple[Path, ChainSpec]]:
    for name, chain in spec.chains.items():
        yield ("chains", name), chain
    if isinstance(spec.defaults.chain, ChainSpec):
        yield ("defaults", "chain"), spec.defaults.chain
    for i, rule in enumerate(spec.rules):
        if isinstance(rule.chain, ChainSpec):
            yield ("rules", i, "chain"), rule.chain


def _stage_conflicts(spec: PolicySpec) -> Iterator[tuple[Path, str]]:
    """Stages are merged by name when several rules match, so a name must
    always stand for the same approver groups."""
    groups_of: dict[str, tuple[frozenset[str], Path]] = {}
    for path, chain in _chain_specs(spec):
        names: set[str] = set()
        for j, stage in enumerate(chain.stages):
            stage_path: Path = (*path, "stages", j)
            if stage.name in names:
                yield (
                    (*stage_path, "name"),
                    f"duplicate stage name {stage.name!r} in one chain",
                )
                continue
            names.add(stage.name)
            groups = frozenset(stage.groups)
            seen = groups_of.setdefault(stage.name, (groups, stage_path))
            if seen[0] != groups:
                yield (
                    (*stage_path, "groups"),
                    f"stage {stage.name!r} names groups {sorted(groups)} here but "
                    f"{sorted(seen[0])} at {format_path(seen[1])}: stages of the same name are "
                    "merged when several rules match, so they must name the same groups",
                )
