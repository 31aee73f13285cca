"""CEL conditions: the ``when`` of a rule.

A condition is compiled and type-checked once, when the policy loads, against
a fixed set of declared variables (below); a condition that does not
type-check to ``bool`` never reaches evaluation. At evaluation only the
variables a condition refers to are built (:class:`Variables`), each once per
action and only when a candidate rule has a condition: CEL converts every
value it is handed, and building and converting all of them would cost more
than the rest of an evaluation.

Variables (names are qualified; CEL resolves ``action.kind`` as one name):

==================== =================== ==========================================
name                 type                value
==================== =================== ==========================================
action.kind          string              ``sql``, ``shell``, ``deploy``, ...
action.text          string              the statement or command line
action.target        string              what the action is aimed at
action.environment   string              canonical name (``prod`` → ``production``)
action.findings      list(string)        finding codes, sorted
action.statements    list(string)        unit types in order (``delete``, ``rm``)
action.risk          string              ``none`` .. ``critical``
action.risk_level    int                 0 (none) .. 4 (critical)
action.payload       map(string, dyn)    structured payload (deploy, tool_call, ...)
action.attributes    map(string, dyn)    free attributes sent with the action
actor.user           string
actor.groups         list(string)        sorted
time.hour            int                 0..23 in the policy's timezone
time.minute          int                 0..59
time.weekday         int                 ISO: 1 = Monday .. 7 = Sunday
time.weekend         bool                Saturday or Sunday
time.date            string              ``YYYY-MM-DD`` in the policy's timezone
time.timezone        string              the policy's timezone name
time.now             timestamp           the time of the attempt
==================== =================== ==========================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cel_expr_python import cel

from jitgate.actions.findings import Analysis
from jitgate.actions.model import Action

_T = cel.Type

#: The declared variables and their CEL types.
VARIABLES: Mapping[str, cel.Type] = {
    "action.kind": _T.STRING,
    "action.text": _T.STRING,
    "action.target": _T.STRING,
    "action.environment": _T.STRING,
    "action.findings": _T.List(_T.STRING),
    "action.statements": _T.List(_T.STRING),
    "action.risk": _T.STRING,
    "action.risk_level": _T.INT,
    "action.payload": _T.Map(_T.STRING, _T.DYN),
    "action.attributes": _T.Map(_T.STRING, _T.DYN),
    "actor.user": _T.STRING,
    "actor.groups": _T.List(_T.STRING),
    "time.hour": _T.INT,
    "time.minute": _T.INT,
    "time.weekday": _T.INT,
    "time.weekend": _T.BOOL,
    "time.date": _T.STRING,
    "time.timezone": _T.STRING,
    "time.now": _T.TIMESTAMP,
}

_ENV = cel.NewEnv(variables=dict(VARIABLES))

_ERROR_RE = re.compile(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)")


@dataclass(frozen=True, slots=True)
class ConditionError:
    """One compile-time problem of a condition, located inside its text."""

    line: int
    column: int
    message: str


class InvalidCondition(ValueError):
    def __init__(self, errors: tuple[ConditionError, ...]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True, eq=False)
class Condition:
    """A compiled, type-checked boolean CEL expression."""

    source: str
    expression: cel.Expression
    #: The declared variables the expression refers to: only these are built
    #: and handed to CEL, which converts every value it is given.
    variables: tuple[str, ...]

    def evaluate(self, variables: Variables) -> bool | str:
        """``True``/``False``, or the runtime error's text.

        Runtime errors (a missing map key, a division by zero, a value CEL
        cannot represent) are returned rather than raised: the caller decides
        which way to fail, and it must fail closed.
        """
        try:
            value = self.expression.eval(data=variables.select(self.variables))
        except Exception as exc:  # the binding may raise on odd inputs
            return str(exc) or type(exc).__name__
        if value.type() == _T.ERROR:
            return str(value.value())
        result = value.value()
        if isinstance(result, bool):
            return result
        return f"condition produced {result!r}, not a boolean"

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


_REFERENCE_RE = re.compile(r"\b(action|actor|time)\s*\.\s*([A-Za-z_]\w*)")


def referenced_variables(source: str) -> tuple[str, ...]:
    """The declared variables ``source`` mentions (a superset is harmless).

    A reference this cannot see would make the condition fail, closed, at
    evaluation; the compiler has already rejected any name not declared, and
    every declared name has the ``root.field`` shape matched here.
    """
    found = {f"{root}.{name}" for root, name in _REFERENCE_RE.findall(source)}
    return tuple(sorted(found & VARIABLES.keys()))


def compile_condition(source: str) -> Condition:
    """Compile and type-check ``source``; raise :class:`InvalidCondition`."""
    if not source.strip():
        raise InvalidCondition((ConditionError(1, 1, "empty condition"),))
    try:
        expression = _ENV.compile(source)
    except RuntimeError as exc:
        raise InvalidCondition(_parse_errors(str(exc))) from None
    returns = expression.return_type()
    if returns != _T.BOOL:
        raise InvalidCondition(
            (ConditionError(1, 1, f"condition must be a boolean, not {returns.name().lower()}"),)
        )
    return Condition(source, expression, referenced_variables(source))


def _parse_errors(text: str) -> tuple[ConditionError, ...]:
    errors = tuple(
        ConditionError(int(m.group(1)), int(m.group(2)), m.group(3).strip())
        for m in _ERROR_RE.finditer(text)
    )
    if errors:
        return errors
    first = text.splitlines()[0] if text else "invalid condition"
    return (ConditionError(1, 1, first.removeprefix("INVALID_ARGUMENT: ")),)


class Variables:
    """The variables of one action, each built on first use.

    One instance serves every condition evaluated for the action, so a value
    (the local time, the sorted groups) is computed once.
    """

    __slots__ = ("_local", "action", "analysis", "built", "timezone")

    def __init__(self, action: Action, analysis: Analysis, timezone: ZoneInfo) -> None:
        self.action = action
        self.analysis = analysis
        self.timezone = timezone
        self.built: dict[str, Any] = {}
        self._local: datetime | None = None

    @property
    def local(self) -> datetime:
        if self._local is None:
            self._local = self.action.at.astimezone(self.timezone)
        return self._local

    def select(self, names: tuple[str, ...]) -> dict[str, Any]:
        built = self.built
        out: dict[str, Any] = {}
        for name in names:
            value = built.get(name, _UNSET)
            if value is _UNSET:
                value = built[name] = _BUILDERS[name](self)
            out[name] = value
        return out

    def all(self) -> dict[str, Any]:
        return self.select(tuple(VARIABLES))


_UNSET: Any = object()

_BUILDERS: Mapping[str, Callable[[Variables], Any]] = {
    "action.kind": lambda v: v.action.kind.value,
    "action.text": lambda v: v.action.text,
    "action.target": lambda v: v.action.target,
    "action.environment": lambda v: v.action.environment,
    "action.findings": lambda v: sorted(v.analysis.codes),
    "action.statements": lambda v: [u.type for u in v.analysis.units],
    "action.risk": lambda v: v.analysis.risk.label,
    "action.risk_level": lambda v: int(v.analysis.risk),
    "action.payload": lambda v: _plain_map(v.action.payload),
    "action.attributes": lambda v: _plain_map(v.action.attributes),
    "actor.user": lambda v: v.action.actor.user,
    "actor.groups": lambda v: sorted(v.action.actor.groups),
    "time.hour": lambda v: v.local.hour,
    "time.minute": lambda v: v.local.minute,
    "time.weekday": lambda v: v.local.isoweekday(),
    "time.weekend": lambda v: v.local.isoweekday() >= 6,
    "time.date": lambda v: v.local.date().isoformat(),
    "time.timezone": lambda v: v.timezone.key,
    "time.now": lambda v: v.action.at,
}
assert _BUILDERS.keys() == VARIABLES.keys()


def _plain_map(value: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in value.items()}


def _plain(value: Any) -> Any:
    """JSON-like data CEL can take: tuples and sets become lists, and so on."""
    if value is None or isinstance(value, (str, bool, int, float, bytes)):
        return value
    if isinstance(value, Mapping):
        return _plain_map(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, datetime):
        # CEL timestamps need an instant; a naive time is only a label.
        return value if value.tzinfo is not None else value.isoformat()
    if isinstance(value, timedelta):
        return value
    if isinstance(value, date):
        return value.isoformat()
    return str(value)
