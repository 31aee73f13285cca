"""Policy tests as code: example actions and the decisions a policy must reach.

A cases file (run by ``jitgate policy test POLICY CASES``)::

    cases:
      - name: a DELETE without WHERE in production is held
        kind: sql
        text: DELETE FROM invoices
        env: prod
        target: billing-db
        user: alice
        groups: [developers]
        at: 2024-01-05T23:30:00Z     # optional; default: now
        attributes: {ticket: OPS-1}  # optional
        expect: require_approval
        expect_rules: [production-dangerous]    # optional, exact set
        expect_stages: [approvers]              # optional, in order

``payload`` (a mapping) replaces ``text`` for structured kinds. The analysis
is not done here: the caller passes an ``evaluate`` function that analyzes
and decides (the real one caches analyses), so a case exercises exactly
what production runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path as FsPath
from typing import Annotated, Any

from pydantic import Field, PlainValidator

from jitgate.actions.model import Action, InvalidAction
from jitgate.policy.decision import Decision
from jitgate.policy.engine import Policy
from jitgate.policy.errors import Path, PolicyError, PolicyProblem
from jitgate.policy.loader import validate
from jitgate.policy.model import KindName, Name, OutcomeName, Spec, field_error
from jitgate.policy.source import SourceMap, describe_type, parse_yaml


def _moment(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise field_error("time", f"invalid time {value!r} (expected ISO 8601, e.g. "
                                "2024-01-05T23:30:00Z)") from None
    if not isinstance(value, datetime):
        raise field_error("time", f"a time must be ISO 8601 text, not {describe_type(value)}")
    if value.tzinfo is None:
        raise field_error(
            "time", f"the time {value.isoformat()} needs a timezone (e.g. a Z or +01:00)"
        )
    return value


Moment = Annotated[datetime, PlainValidator(_moment)]


class CaseSpec(Spec):
    name: Name
    kind: KindName
    text: str = ""
    payload: dict[str, Any] | None = None
    env: str = ""
    target: str = ""
    user: str = ""
    groups: list[str] = Field(default_factory=list)
    at: Moment | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    expect: OutcomeName
    expect_rules: list[Name] | None = None
    expect_stages: list[Name] | None = None


class CasesFileSpec(Spec):
    cases: list[Any] = Field(min_length=1)


class CaseStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    #: The case itself is malformed (or evaluating it raised).
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    status: CaseStatus
    #: Why it failed or errored; empty when it passed. An error's message
    #: starts with its ``file:line:``, as it is about the cases file.
    message: str = ""
    file: str = ""
    line: int | None = None
    decision: Decision | None = None

    @property
    def passed(self) -> bool:
        return self.status is CaseStatus.PASSED

    def __str__(self) -> str:
        text = f"{self.status.value.upper()} {self.name}"
        if self.status is CaseStatus.FAILED:
            where = self.file + (f":{self.line}" if self.line is not None else "")
            return f"{text} ({where}): {self.message}"
        return f"{text}: {self.message}" if self.message else text


@dataclass(frozen=True, slots=True)
class PolicyTestReport:
    source: str
    results: tuple[CaseResult, ...]

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.status is CaseStatus.PASSED)

    @property
    def failed(self) -> int:
        """Cases that did not pass: failures and errors."""
        return len(self.results) - self.passed

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.status is CaseStatus.ERROR)

    @property
    def ok(self) -> bool:
        """Every case passed (and there was at least one)."""
        return bool(self.results) and self.failed == 0

    def summary(self) -> str:
        return f"{self.passed} passed, {self.failed - self.errors} failed, {self.errors} errors"


def run_policy_tests(
    policy: Policy,
    cases: str | os.PathLike[str],
    evaluate: Callable[[Action], Decision],
    *,
    source: str | None = None,
) -> PolicyTestReport:
    """Run every case of ``cases`` through ``evaluate`` and compare.

    ``cases`` is a path (a :class:`os.PathLike`, or a one-line ``str``) or
    YAML text (a ``str`` spanning several lines). Never raises for anything
    wrong in the cases file: problems come back as error results.
    """
    if isinstance(cases, str) and "\n" in cases:
        text, name = cases, source or "<cases>"
    else:
        name = source or os.fspath(cases)
        try:
            text = FsPath(cases).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return _broken(name, [PolicyProblem(f"cannot read the cases: {reason}", file=name)])
    try:
        data, where = parse_yaml(text, name)
        if not isinstance(data, dict):
            raise PolicyError([where.problem((), "a cases file must be a mapping with a `cases:` "
                                                 f"list, not {describe_type(data)}")])
        spec = validate(CasesFileSpec, data, where)
    except PolicyError as exc:
        return _broken(name, exc.problems)
    known_rules = {rule.id for rule in policy.rules}
    results: list[CaseResult] = []
    names: set[str] = set()
    for i, raw in enumerate(spec.cases):
        result = _run_case(i, raw, where, known_rules, evaluate)
        if result.name in names and result.status is not CaseStatus.ERROR:
            result = _error(result.name, where, ("cases", i, "name"), "duplicate case name")
        names.add(result.name)
        results.append(result)
    return PolicyTestReport(name, tuple(results))


def _broken(name: str, problems: Sequence[PolicyProblem]) -> PolicyTestReport:
    return PolicyTestReport(
        name,
        tuple(
            CaseResult("<cases file>", CaseStatus.ERROR, str(p), p.file, p.line)
            for p in problems
        ),
    )


def _error(name: str, where: SourceMap, path: Path, message: str) -> CaseResult:
    problem = where.problem(path, message)
    return CaseResult(name, CaseStatus.ERROR, str(problem), problem.file, problem.line)


def _run_case(
    index: int,
    raw: Any,
    where: SourceMap,
    known_rules: set[str],
    evaluate: Callable[[Action], Decision],
) -> CaseResult:
    path: Path = ("cases", index)
    label = raw.get("name") if isinstance(raw, Mapping) else None
    name = label if isinstance(label, str) and label.strip() else f"cases[{index}]"
    if not isinstance(raw, Mapping):
        return _error(name, where, path, f"a case must be a mapping, not {describe_type(raw)}")
    try:
        case = validate(CaseSpec, raw, where, base=path)
    except PolicyError as exc:
        first = exc.problems[0]
        return CaseResult(name, CaseStatus.ERROR, "; ".join(str(p) for p in exc.problems),
                          first.file, first.line)
    unknown = [r for r in (case.expect_rules or []) if r not in known_rules]
    if unknown:
        return _error(name, where, (*path, "expect_rules"),
                      f"names rules the policy does not have: {', '.join(unknown)}")
    try:
        action = Action.create(
            case.kind, case.text, payload=case.payload, target=case.target,
            environment=case.env, user=case.user, groups=case.groups, at=case.at,
            attributes=case.attributes,
        )
    except InvalidAction as exc:
        return _error(name, where, path, str(exc))
    try:
        decision = evaluate(action)
    except Exception as exc:  # a case must not stop the others
        return _error(name, where, path, f"evaluation failed: {exc!r}")
    line = where.line_of(path)
    mismatches = _mismatches(case, decision)
    if mismatches:
        return CaseResult(name, CaseStatus.FAILED, "; ".join(mismatches), where.source, line,
                          decision)
    return CaseResult(name, CaseStatus.PASSED, "", where.source, line, decision)


def _mismatches(case: CaseSpec, decision: Decision) -> list[str]:
    out: list[str] = []
    if decision.outcome is not case.expect:
        why = "; ".join(decision.reasons) or "no reason given"
        out.append(f"expected {case.expect.label}, got {decision.outcome.label} ({why})")
    if case.expect_rules is not None and set(case.expect_rules) != set(decision.rules):
        out.append(
            f"expected rules [{', '.join(case.expect_rules)}], got "
            f"[{', '.join(decision.rules)}]"
        )
    if case.expect_stages is not None:
        stages = [s.name for s in decision.chain.stages] if decision.chain is not None else []
        if stages != case.expect_stages:
            out.append(
                f"expected stages [{', '.join(case.expect_stages)}], got [{', '.join(stages)}]"
            )
    return out


__all__ = [
    "CaseResult",
    "CaseStatus",
    "PolicyTestReport",
    "run_policy_tests",
]
