"""``statement.executed``: what went through a gateway, in the audit trail.

A gateway (:mod:`jitgate.gateways`) decides ordinary statements locally and
reports every statement it let through, or refused, in batches:
:func:`record_statements` validates a batch and appends one
``statement.executed`` event per record, **all in one transaction** (a batch
is recorded entirely or not at all, so a gateway can retry it safely).

Who may record: service accounts (a gateway runs with one) and admins, for
any user; anybody else only for themselves; auditors never (they change
nothing). Each event's actor is the record's ``user`` (who ran the
statement), and ``recorded_by`` in its payload is the principal that
reported it.

Limits: at most :data:`MAX_RECORDS` records per call (``413
too_many_records``); a record's ``text`` at most :data:`MAX_TEXT_BYTES`
bytes of UTF-8, and the rest of it (parameters, error, extra...) at most
:data:`MAX_REST_BYTES` (``413 statement_too_large``). A record that does not
fit the shape below is ``400 invalid_body`` naming ``records[i].field``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from jitgate.actions.model import canonical_environment
from jitgate.service.errors import ServiceError
from jitgate.service.principal import Principal
from jitgate.store import Database, InvalidValueError, NewEvent, append_events

#: The event type (docs/audit-events.md).
STATEMENT_EVENT: Final = "statement.executed"
#: Most records one call may carry.
MAX_RECORDS: Final = 1000
#: Largest statement text, in bytes of UTF-8.
MAX_TEXT_BYTES: Final = 1024 * 1024
#: Largest size of everything else in a record (parameters, error, extra...).
MAX_REST_BYTES: Final = 1024 * 1024
#: What a gateway may say about a statement.
DECISIONS: Final = frozenset({"allow", "require_approval", "deny"})

_REQUIRED: Final = ("user", "target", "environment", "text", "decision")
_OPTIONAL_TEXT: Final = ("tag", "error", "request_id")
_PLAIN_TEXT: Final = ("session", "client", "gateway", "at")
#: Every field a record may have (those of ``jitgate.gateways.StatementRecord``).
FIELDS: Final = frozenset(
    {*_REQUIRED, *_OPTIONAL_TEXT, *_PLAIN_TEXT, "duration_ms", "rows", "parameters", "extra"}
)
#: Fields stored in columns of the events table (no NUL characters there;
#: :func:`statement_event` checks them in this order).
_COLUMNS: Final = ("user", "target", "environment", "request_id")
_NO_NUL: Final = "must not contain NUL characters"
#: ``extra`` when a record has none.
_NO_EXTRA: Final[Mapping[str, Any]] = MappingProxyType({})
_INFINITY: Final = math.inf


#: Text fields, in the order they are checked.
_TEXT: Final = (*_REQUIRED, *_PLAIN_TEXT)
#: The text fields counted in a record's "rest" besides user, target, environment.
_REST_TEXT: Final = (*_OPTIONAL_TEXT, *_PLAIN_TEXT)


def _invalid(index: int, field: str, message: str) -> ServiceError:
    return ServiceError("invalid_body", f"records[{index}].{field}: {message}", 400)


def _utf8_size(value: str, limit: int) -> int:
    """The UTF-8 size of ``value`` (exact only when it may exceed ``limit``)."""
    if 4 * len(value) <= limit:
        return len(value)
    return len(value.encode("utf-8", "surrogatepass"))


@functools.cache
def _dataclass_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _fields(index: int, record: object) -> Mapping[str, Any]:
    """The record's fields (a dict is read as it is, never changed)."""
    fields: Mapping[str, Any]
    if type(record) is dict:
        fields = record
    elif isinstance(record, Mapping):
        fields = dict(record)
    elif dataclasses.is_dataclass(record) and not isinstance(record, type):
        fields = {name: getattr(record, name) for name in _dataclass_fields(type(record))}
    else:
        raise ServiceError("invalid_body", f"records[{index}]: a record must be an object", 400)
    if not fields.keys() <= FIELDS:
        unknown = sorted(str(k) for k in fields if k not in FIELDS)
        raise ServiceError(
            "invalid_body", f"records[{index}]: unknown field(s): {', '.join(unknown)}", 400
        )
    return fields


def _check_text_fields(index: int, fields: Mapping[str, Any]) -> None:
    """The text fields' checks, in order (the first problem is the one named)."""
    get = fields.get
    for name in _REQUIRED:
        if get(name) is None:
            raise _invalid(index, name, "required")
    for name in _TEXT:
        if not isinstance(get(name, ""), str):
            raise _invalid(index, name, "must be a string")
    for name in _OPTIONAL_TEXT:
        value = get(name)
        if value is not None and not isinstance(value, str):
            raise _invalid(index, name, "must be a string or null")


def _duration(index: int, value: object, strict: bool) -> float:
    """``duration_ms`` checked: a finite, non-negative number. ``strict`` (the
    API's shape): never null, and an integer becomes a float, as the API's
    model always made it; otherwise null is 0.0 and an integer stays one."""
    if value is None and not strict:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(index, "duration_ms", "must be a non-negative number")
    if isinstance(value, int):
        try:
            as_float = float(value)
        except OverflowError:  # beyond any float
            raise _invalid(index, "duration_ms", "must be a non-negative number") from None
        if value < 0:
            raise _invalid(index, "duration_ms", "must be a non-negative number")
        return as_float if strict else value
    if not 0.0 <= value < _INFINITY:  # NaN compares false
        raise _invalid(index, "duration_ms", "must be a non-negative number")
    return value


def _extra_size(index: int, extra: object) -> int:
    """The size of ``extra`` as JSON; it must be an object of JSON data."""
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise _invalid(index, "extra", "must be an object")
    if not extra:
        return 0
    try:
        return len(json.dumps(dict(extra), allow_nan=False, ensure_ascii=False))
    except (TypeError, ValueError):
        raise _invalid(index, "extra", "must be JSON data") from None


def statement_event(
    index: int, record: object, recorded_by: str, at: datetime, *, strict: bool = False
) -> NewEvent:
    """``record`` (a mapping or a ``StatementRecord``) checked and turned into
    the event to append at ``at``; :class:`ServiceError` naming the first
    problem if it does not fit (see the module docstring). ``strict``: the
    record must have the shape the API documents (``POST
    /api/v1/audit/statements``): ``duration_ms`` a number (stored as a
    float), ``extra`` an object, neither of them null.

    A gateway sends every statement through here, so the usual record (plain
    ``str`` fields, a float duration, no ``extra``) takes the shortest way;
    anything else is checked field by field in the documented order.
    """
    fields = _fields(index, record)
    get: Callable[..., Any] = fields.get  # checked below
    user = get("user")
    target = get("target")
    environment = get("environment")
    text = get("text")
    decision = get("decision")
    session = get("session", "")
    client = get("client", "")
    gateway = get("gateway", "")
    at_text = get("at", "")
    tag = get("tag")
    error = get("error")
    request_id = get("request_id")
    if not (
        type(user) is str
        and type(target) is str
        and type(environment) is str
        and type(text) is str
        and type(decision) is str
        and type(session) is str
        and type(client) is str
        and type(gateway) is str
        and type(at_text) is str
        and (tag is None or type(tag) is str)
        and (error is None or type(error) is str)
        and (request_id is None or type(request_id) is str)
    ):
        _check_text_fields(index, fields)  # raises, unless they are str subclasses
    if "\x00" in user:
        raise _invalid(index, "user", _NO_NUL)
    if "\x00" in target:
        raise _invalid(index, "target", _NO_NUL)
    if "\x00" in environment:
        raise _invalid(index, "environment", _NO_NUL)
    if request_id and "\x00" in request_id:
        raise _invalid(index, "request_id", _NO_NUL)
    if not user.strip():
        raise _invalid(index, "user", "must not be blank")
    if decision not in DECISIONS:
        raise _invalid(index, "decision", f"must be one of {', '.join(sorted(DECISIONS))}")
    duration = get("duration_ms", 0.0)
    if type(duration) is not float or not 0.0 <= duration < _INFINITY:
        duration = _duration(index, duration, strict)
    rows = get("rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
        raise _invalid(index, "rows", "must be a non-negative integer or null")
    parameters = get("parameters")
    if parameters is not None:
        if isinstance(parameters, str | bytes | Mapping) or not isinstance(parameters, Sequence):
            raise _invalid(index, "parameters", "must be a list of strings or nulls")
        parameters = list(parameters)
        if not all(p is None or isinstance(p, str) for p in parameters):
            raise _invalid(index, "parameters", "must be a list of strings or nulls")
    extra = get("extra", _NO_EXTRA)
    if type(extra) is dict and not extra:
        extra_size = 0
    else:
        if not extra and not strict:  # null, [], "": no extra, as always
            extra = _NO_EXTRA
        extra_size = _extra_size(index, extra)

    if _utf8_size(text, MAX_TEXT_BYTES) > MAX_TEXT_BYTES:
        raise ServiceError(
            "statement_too_large",
            f"records[{index}].text: larger than {MAX_TEXT_BYTES} bytes",
            413,
        )
    # No character takes more than 4 bytes: only a record that might not fit
    # is measured exactly (with the very count it was always measured with).
    length = (
        len(user)
        + len(target)
        + len(environment)
        + len(session)
        + len(client)
        + len(gateway)
        + len(at_text)
        + (len(tag) if tag else 0)
        + (len(error) if error else 0)
        + (len(request_id) if request_id else 0)
    )
    if parameters:
        length += sum(len(p) for p in parameters if p is not None)
    if extra_size + 4 * length > MAX_REST_BYTES:
        rest = [get(name) or "" for name in _REST_TEXT]
        rest += (user, target, environment)
        if parameters:
            rest += [p for p in parameters if p is not None]
        rest_size = extra_size + sum(_utf8_size(s, MAX_REST_BYTES) for s in rest)
        if rest_size > MAX_REST_BYTES:
            raise ServiceError(
                "statement_too_large",
                f"records[{index}]: its fields other than text are larger than "
                f"{MAX_REST_BYTES} bytes",
                413,
            )

    payload: dict[str, Any] = {
        "text": text,
        "decision": decision,
        "duration_ms": duration,
        "tag": tag,
        "rows": rows,
        "error": error,
        "parameters": parameters,
        "session": session,
        "client": client,
        "gateway": gateway,
        "at": at_text,
        "recorded_by": recorded_by,
    }
    if extra:
        payload["extra"] = dict(extra)
    return NewEvent(
        type=STATEMENT_EVENT,
        actor=user,
        request_id=request_id or None,
        payload=payload,
        at=at,
        target=target,
        environment=canonical_environment(environment),
    )


def statement_events(
    principal: Principal, records: Sequence[object], at: datetime, *, strict: bool = False
) -> list[NewEvent]:
    """The events for ``records`` reported by ``principal`` at ``at``;
    :class:`ServiceError` if the principal may not record them or one of them
    is invalid (``strict``: see :func:`statement_event`)."""
    if principal.is_auditor:
        raise ServiceError("forbidden", "auditors see the trail but change nothing", 403)
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Sequence):
        raise ServiceError("invalid_body", "records must be a list", 400)
    if len(records) > MAX_RECORDS:
        raise ServiceError(
            "too_many_records",
            f"at most {MAX_RECORDS} records per call, not {len(records)}",
            413,
        )
    user = principal.user
    events = [
        statement_event(i, record, user, at, strict=strict) for i, record in enumerate(records)
    ]
    if not (principal.is_service_account or principal.is_admin):
        for event in events:
            if event.actor != user:
                raise ServiceError(
                    "forbidden",
                    "only service accounts and admins record statements of other users",
                    403,
                )
    return events


async def record_statements(
    db: Database,
    principal: Principal,
    records: Sequence[object],
    now: datetime,
    *,
    strict: bool = False,
) -> int:
    """Append one ``statement.executed`` event per record, in one transaction;
    how many were appended (see the module docstring for who may and limits).

    The batch is validated first, then sealed and inserted in one go
    (:func:`jitgate.store.append_events`: the same events as one
    ``append_event`` per record, at a fraction of the cost). ``strict``: the
    records are a request's (see :func:`statement_event`).
    """
    events = statement_events(principal, records, now, strict=strict)
    if not events:
        return 0
    try:
        async with db.transaction() as session:
            await append_events(session, events)
    except InvalidValueError as exc:
        raise ServiceError("invalid_body", f"records: {exc.message}", 400) from None
    return len(events)
