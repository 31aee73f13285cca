"""The policy file model: what a policy YAML file may say.

Validation is strict: unknown fields anywhere are errors (a misspelt
``enviroments:`` must not silently widen a rule), values are not coerced
between types, and names with a fixed vocabulary (risk levels, outcomes,
action kinds, finding codes) are checked when the file loads. The full
reference is in ``docs/policies.md``; in short::

    version: 1
    name: acme
    timezone: Europe/Berlin        # for time.* in conditions; default UTC
    default: allow                 # outcome when no rule matches
    defaults: {ttl: 1h, grant_ttl: 5m, break_glass: false, chain: ...}
    chains:
      prod-approvers:
        stages:
          - {name: approvers, groups: [approvers], approvals: 1, quorum: any,
             mfa: false, timeout: 30m, escalate_to: [oncall-leads]}
        ttl: 1h
        break_glass: false
        grant: {scope: action, ttl: 5m}
    rules:
      - id: prod-dangerous-sql
        description: ...
        match: {kinds: [sql], environments: [production], targets: ["billing-*"],
                users: [...], groups: [...], findings: ["sql.drop*"], risk: medium,
                statements: [delete], when: 'time.hour >= 20'}
        unless: {groups: [dba]}
        outcome: require_approval
        chain: prod-approvers          # a name, or an inline chain
        message: ...

Cross-references (chain names, unique rule ids, stages shared between chains)
are checked when the validated file is compiled (:mod:`jitgate.policy.compile`).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from datetime import timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PlainValidator, Tag
from pydantic_core import PydanticCustomError

from jitgate.actions.findings import FINDING_CODES, Risk
from jitgate.actions.model import ActionKind, canonical_environment
from jitgate.approvals.chain import GrantScope, Quorum
from jitgate.policy.conditions import Condition, InvalidCondition, compile_condition
from jitgate.policy.decision import Outcome
from jitgate.policy.source import describe_type

#: Tags of the chain union; they appear in pydantic's error locations and
#: are removed again when errors are reported (see :func:`clean_loc`).
CHAIN_NAME_TAG = "__chain_name__"
CHAIN_INLINE_TAG = "__chain_inline__"
_TAGS = frozenset({CHAIN_NAME_TAG, CHAIN_INLINE_TAG})


def clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    return tuple(part for part in loc if part not in _TAGS)


def field_error(kind: str, message: str, **extra: Any) -> PydanticCustomError:
    # The message travels in the context so that braces in user input are
    # never taken for template fields.
    return PydanticCustomError(kind, "{reason}", {"reason": message, **extra})


def _expect_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise field_error("type", f"{what} must be a string, not {describe_type(value)}")
    return value


# --- durations ---------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+)\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: No approval, grant or escalation sensibly waits longer than a year, and
#: a bound keeps absurd values from overflowing time arithmetic.
_MAX_SECONDS = 365 * 86400


def parse_duration(value: Any) -> timedelta:
    """``30s``, ``5m``, ``1h``, ``2d``, ``1h30m`` or a whole number of seconds."""
    if isinstance(value, bool):
        raise field_error("duration", "a duration must be e.g. 30s, 5m, 1h, 2d or seconds")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            seconds = int(text)
        else:
            parts = _DURATION_RE.findall(text)
            if not parts or "".join(_DURATION_RE.sub("", text).split()):
                raise field_error(
                    "duration",
                    f"invalid duration {value!r} (expected e.g. 30s, 5m, 1h, 2d or seconds)",
                )
            seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise field_error(
            "duration", f"a duration must be e.g. 30s, 5m, 1h, 2d, not {describe_type(value)}"
        )
    if seconds <= 0:
        raise field_error("duration", f"a duration must be positive, not {value!r}")
    if seconds > _MAX_SECONDS:
        raise field_error("duration", f"a duration must be at most 365d, not {value!r}")
    return timedelta(seconds=seconds)


# --- names with a fixed vocabulary --------------------------------------------


def _risk(value: Any) -> Risk:
    text = _expect_str(value, "a risk level")
    try:
        return Risk.parse(text)
    except ValueError as exc:
        raise field_error("risk", str(exc)) from None


def _outcome(value: Any) -> Outcome:
    text = _expect_str(value, "an outcome")
    try:
        return Outcome.parse(text)
    except ValueError as exc:
        raise field_error("outcome", str(exc)) from None


def _choice(enum: Any, what: str) -> Any:
    def parse(value: Any) -> Any:
        text = _expect_str(value, what)
        try:
            return enum(text.strip().lower())
        except ValueError:
            allowed = ", ".join(m.value for m in enum)
            raise field_error(
                what, f"unknown {what} {value!r} (expected one of: {allowed})"
            ) from None

    return parse


def _name(value: Any) -> str:
    text = _expect_str(value, "a name").strip()
    if not text:
        raise field_error("name", "must not be empty")
    return text


def _environment(value: Any) -> str:
    return canonical_environment(_name(value))


def _lower_name(value: Any) -> str:
    return _name(value).lower()


def finding_codes_matching(pattern: str) -> frozenset[str]:
    regex = re.compile(fnmatch.translate(pattern))
    return frozenset(code for code in FINDING_CODES if regex.match(code))


def _finding_pattern(value: Any) -> str:
    pattern = _name(value)
    if not finding_codes_matching(pattern):
        close = difflib.get_close_matches(pattern, list(FINDING_CODES), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise field_error(
            "finding", f"finding pattern {pattern!r} matches no known finding code{hint}"
        )
    return pattern


def _timezone(value: Any) -> str:
    name = _name(value)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise field_error(
            "timezone", f"unknown timezone {name!r} (expected e.g. UTC, Europe/Berlin)"
        ) from None
    return name


def _condition(value: Any) -> Condition:
    try:
        return compile_condition(_expect_str(value, "a condition"))
    except InvalidCondition as exc:
        first = exc.errors[0]
        others = "".join(f"; {e.line}:{e.column}: {e.message}" for e in exc.errors[1:])
        raise field_error(
            "condition",
            f"invalid condition at {first.line}:{first.column}: {first.message}{others}",
            condition_line=first.line,
        ) from None


Duration = Annotated[timedelta, PlainValidator(parse_duration)]
RiskLevel = Annotated[Risk, PlainValidator(_risk)]
OutcomeName = Annotated[Outcome, PlainValidator(_outcome)]
KindName = Annotated[ActionKind, PlainValidator(_choice(ActionKind, "action kind"))]
QuorumName = Annotated[Quorum, PlainValidator(_choice(Quorum, "quorum"))]
ScopeName = Annotated[GrantScope, PlainValidator(_choice(GrantScope, "grant scope"))]
Name = Annotated[str, PlainValidator(_name)]
LowerName = Annotated[str, PlainValidator(_lower_name)]
EnvironmentName = Annotated[str, PlainValidator(_environment)]
FindingPattern = Annotated[str, PlainValidator(_finding_pattern)]
TimezoneName = Annotated[str, PlainValidator(_timezone)]
CelCondition = Annotated[Condition, PlainValidator(_condition)]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- chains -----------------------------------------------------------------


class StageSpec(Spec):
    name: Name
    groups: list[Name] = Field(min_length=1)
    approvals: int = Field(default=1, ge=1)
    quorum: QuorumName = Quorum.ANY
    mfa: bool = False
    timeout: Duration | None = None
    escalate_to: list[Name] = []


class GrantSpec(Spec):
    scope: ScopeName = GrantScope.ACTION
    ttl: Duration | None = None


class ChainSpec(Spec):
    stages: list[StageSpec] = Field(min_length=1)
    #: Unset fields take the policy's ``defaults``.
    ttl: Duration | None = None
    break_glass: bool | None = None
    grant: GrantSpec | None = None


def _chain_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return CHAIN_NAME_TAG
    if isinstance(value, dict):
        return CHAIN_INLINE_TAG
    return None


ChainRef = Annotated[
    Annotated[Name, Tag(CHAIN_NAME_TAG)] | Annotated[ChainSpec, Tag(CHAIN_INLINE_TAG)],
    Discriminator(
        _chain_tag,
        custom_error_type="chain",
        custom_error_message="expected the name of a chain or an inline chain mapping",
    ),
]


# --- rules ------------------------------------------------------------------


class MatchSpec(Spec):
    """Conditions on an action; all given fields must hold, any item of a list.

    An absent field does not constrain; an empty list matches nothing.
    """

    kinds: list[KindName] | None = None
    environments: list[EnvironmentName] | None = None
    #: Globs (``fnmatch``, case-sensitive) on the action's target.
    targets: list[Name] | None = None
    users: list[Name] | None = None
    groups: list[Name] | None = None
    #: Globs on finding codes; each must match a known code.
    findings: list[FindingPattern] | None = None
    #: Minimum risk: of a finding matching ``findings`` when given, otherwise
    #: of the action (its highest finding).
    risk: RiskLevel | None = None
    #: Globs on statement/command types (``delete``, ``create_*``, ``rm``).
    statements: list[LowerName] | None = None
    when: CelCondition | None = None


class RuleSpec(Spec):
    id: Name
    description: str = ""
    match: MatchSpec = MatchSpec()
    unless: MatchSpec | None = None
    outcome: OutcomeName
    chain: ChainRef | None = None
    message: str = ""


class DefaultsSpec(Spec):
    ttl: Duration = timedelta(hours=1)
    grant_ttl: Duration = timedelta(minutes=5)
    grant_scope: ScopeName = GrantScope.ACTION
    break_glass: bool = False
    #: The chain of ``require_approval`` rules that name none, and of
    #: ``default: require_approval``.
    chain: ChainRef | None = None


class PolicySpec(Spec):
    version: Literal[1]
    name: str = ""
    description: str = ""
    timezone: TimezoneName = "UTC"
    default: OutcomeName = Outcome.ALLOW
    defaults: DefaultsSpec = DefaultsSpec()
    chains: dict[Name, ChainSpec] = {}
    rules: list[RuleSpec] = []
