"""The action model: one typed description of an attempted action.

Everything in jitgate (analyzers, policies, approvals, audit, gateways) speaks
about actions in these terms. The model is immutable and free of I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any, Final


class ActionKind(StrEnum):
    SQL = "sql"
    SHELL = "shell"
    DEPLOY = "deploy"
    TOOL_CALL = "tool_call"
    HTTP = "http"
    CUSTOM = "custom"


#: Kinds whose payload is a piece of text (a statement, a command line).
TEXT_KINDS = frozenset({ActionKind.SQL, ActionKind.SHELL})

#: Environment aliases: policies and fingerprints see the canonical name, so
#: ``--env prod`` can never slip past a rule written for ``production``.
ENVIRONMENT_ALIASES: Mapping[str, str] = {
    "prod": "production",
    "prd": "production",
    "live": "production",
    "stage": "staging",
    "stg": "staging",
    "dev": "development",
    "develop": "development",
}


class InvalidAction(ValueError):
    """The description of an action is not usable (wrong kind, bad payload)."""


def canonical_environment(name: str) -> str:
    key = name.strip().lower()
    return ENVIRONMENT_ALIASES.get(key, key)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is attempting the action."""

    user: str = ""
    groups: frozenset[str] = frozenset()

    @classmethod
    def of(cls, user: str = "", groups: Any = ()) -> Actor:
        return cls(user=user, groups=frozenset(str(g) for g in groups))


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Action:
    """An attempted action.

    ``text`` carries the raw statement or command line for text kinds (sql,
    shell); ``payload`` carries the structured description for the others
    (a deployment, an AI agent's tool call, an HTTP request). ``target`` names
    what the action is aimed at (a connection, cluster, repository, service).
    """

    kind: ActionKind
    text: str = ""
    payload: Mapping[str, Any] = field(default_factory=dict)
    target: str = ""
    environment: str = ""
    actor: Actor = field(default_factory=Actor)
    at: datetime = field(default_factory=_utcnow)
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        kind: str | ActionKind,
        text: str = "",
        *,
        payload: Mapping[str, Any] | None = None,
        target: str = "",
        environment: str = "",
        user: str = "",
        groups: Any = (),
        at: datetime | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Action:
        """Build an action from loose input, validating and normalising it."""
        try:
            action_kind = ActionKind(kind)
        except ValueError:
            allowed = ", ".join(k.value for k in ActionKind)
            raise InvalidAction(
                f"unknown action kind {kind!r} (expected one of: {allowed})"
            ) from None
        if not isinstance(text, str):
            raise InvalidAction("text must be a string")
        if action_kind in TEXT_KINDS and payload:
            raise InvalidAction(f"a {action_kind.value} action carries text, not a payload")
        if at is None:
            at = _utcnow()
        elif at.tzinfo is None:
            raise InvalidAction("the action's time must carry a timezone")
        bound = (attributes or {}).get(BOUND_PARAMETERS)
        if bound is not None and not (
            isinstance(bound, (list, tuple)) and all(v is None or isinstance(v, str) for v in bound)
        ):
            raise InvalidAction("attribute parameters must be a list of strings or nulls")
        return cls(
            kind=action_kind,
            text=text,
            payload=dict(payload or {}),
            target=target.strip(),
            environment=canonical_environment(environment),
            actor=Actor.of(user, groups),
            at=at,
            attributes=dict(attributes or {}),
        )

    @classmethod
    def from_record(cls, record: Any) -> Action:
        """Build an action from a JSON object (a batch line, an API body).

        Accepts ``kind``, ``text`` or ``payload``, ``env`` (or ``environment``),
        ``target``, ``user``, ``groups``, ``at`` (ISO 8601 with offset) and
        ``attributes``. Anything else is an error: a misspelt field must not
        silently drop context a policy depends on.
        """
        if not isinstance(record, Mapping):
            raise InvalidAction("expected a JSON object")
        unknown = sorted(set(record) - RECORD_FIELDS)
        if unknown:
            raise InvalidAction(f"unknown field(s): {', '.join(map(str, unknown))}")
        if "env" in record and "environment" in record:
            raise InvalidAction("give either env or environment, not both")
        if "kind" not in record:
            raise InvalidAction("missing field: kind")
        strings = {k: record.get(k, "") for k in ("text", "target", "user", "env", "environment")}
        for name, value in strings.items():
            if not isinstance(value, str):
                raise InvalidAction(f"{name} must be a string")
        groups = record.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise InvalidAction("groups must be a list of strings")
        payload = record.get("payload")
        if payload is not None and not isinstance(payload, Mapping):
            raise InvalidAction("payload must be an object")
        attributes = record.get("attributes")
        if attributes is not None and not isinstance(attributes, Mapping):
            raise InvalidAction("attributes must be an object")
        at = record.get("at")
        when: datetime | None = None
        if at is not None:
            if not isinstance(at, str):
                raise InvalidAction("at must be an ISO 8601 time string")
            try:
                when = datetime.fromisoformat(at)
            except ValueError:
                raise InvalidAction(f"at is not an ISO 8601 time: {at!r}") from None
        return cls.create(
            str(record["kind"]),
            strings["text"],
            payload=payload,
            target=strings["target"],
            environment=strings["env"] or strings["environment"],
            user=strings["user"],
            groups=groups,
            at=when,
            attributes=attributes,
        )

    def fingerprint(self) -> str:
        return fingerprint(self)


RECORD_FIELDS = frozenset(
    {
        "kind",
        "text",
        "payload",
        "env",
        "environment",
        "target",
        "user",
        "groups",
        "at",
        "attributes",
    }
)


def normalized_payload(action: Action) -> str | Mapping[str, Any]:
    """What the fingerprint covers of the action's content.

    Text is kept exactly as it will run, only surrounding white space and a
    trailing semicolon removed: an approver approves the characters that will
    execute, so changing one of them must make a different action.
    """
    if action.kind in TEXT_KINDS:
        return normalized_payload_text(action)
    return action.payload


def normalized_payload_text(action: Action) -> str:
    text = action.text.strip()
    if action.kind is ActionKind.SQL:
        text = text.rstrip(";").rstrip()
    return text


#: The C encoder json.dumps(..., ensure_ascii=False) uses for a string.
_string = encode_basestring


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidAction("payload numbers must be finite")
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (frozenset, set)):
        return sorted(_canonical(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise InvalidAction(f"payload values must be JSON data, not {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no white space, UTF-8).

    For the string/number/bool/null/list/object values used here this is the
    RFC 8785 form; the audit trail uses the ``rfc8785`` package itself, this is
    the hot-path variant for fingerprints.
    """
    return json.dumps(
        _canonical(value),
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    ).encode("utf-8", "surrogatepass")


#: Attribute carrying the values bound to a prepared statement's parameters
#: (a list of strings or nulls): they are part of what runs, so of the fingerprint.
BOUND_PARAMETERS: Final = "parameters"


def fingerprint(action: Action) -> str:
    """A stable identity of *what* is attempted and *where*.

    Covers the kind, the normalized payload, the target and the environment,
    not the actor or the time: an approval binds to this value, so the same
    text sent to another target, or changed by a single character, needs a new
    approval. For SQL, the values bound to the statement's parameters
    (attribute :data:`BOUND_PARAMETERS`) are covered too: ``DELETE ... WHERE id
    = $1`` approved for 7 does not run for 8.
    """
    bound = action.attributes.get(BOUND_PARAMETERS) if action.attributes else None
    if bound is not None and action.kind is ActionKind.SQL:
        if not isinstance(bound, (list, tuple)) or not all(
            v is None or isinstance(v, str) for v in bound
        ):
            raise InvalidAction("parameters must be a list of strings or nulls")
        body = canonical_json(
            {
                "kind": action.kind.value,
                "payload": normalized_payload_text(action),
                "parameters": list(bound),
                "target": action.target,
                "environment": action.environment,
            }
        )
        return "sha256:" + hashlib.sha256(body).hexdigest()
    if action.kind in TEXT_KINDS:
        # Hot path (every SQL statement through a gateway): the same bytes as
        # canonical_json() of the dict below, without the generic walk.
        environment = _string(action.environment)
        payload = _string(normalized_payload_text(action))
        target = _string(action.target)
        body = (
            f'{{"environment":{environment},"kind":"{action.kind.value}",'
            f'"payload":{payload},"target":{target}}}'
        ).encode("utf-8", "surrogatepass")
        return "sha256:" + hashlib.sha256(body).hexdigest()
    body = canonical_json(
        {
            "kind": action.kind.value,
            "payload": normalized_payload(action),
            "target": action.target,
            "environment": action.environment,
        }
    )
    return "sha256:" + hashlib.sha256(body).hexdigest()
