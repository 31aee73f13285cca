"""The action model and its fingerprint."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.actions.model import (
    Action,
    ActionKind,
    InvalidAction,
    canonical_environment,
    canonical_json,
    fingerprint,
    normalized_payload,
)


def sql(text: str, **kw: object) -> Action:
    return Action.create("sql", text, **kw)  # type: ignore[arg-type]


def test_environment_aliases_are_canonical() -> None:
    assert canonical_environment(" PROD ") == "production"
    assert canonical_environment("stg") == "staging"
    assert canonical_environment("qa") == "qa"
    assert sql("SELECT 1", environment="prod").environment == "production"


def test_fingerprint_is_the_canonical_json_of_kind_payload_target_environment() -> None:
    action = sql('DELETE FROM "é" ;\n', target="db-1", environment="prod")
    body = canonical_json(
        {"kind": "sql", "payload": 'DELETE FROM "é"', "target": "db-1", "environment": "production"}
    )
    assert fingerprint(action) == "sha256:" + hashlib.sha256(body).hexdigest()


def test_fingerprint_ignores_who_and_when_but_not_where() -> None:
    base = sql("DELETE FROM t", target="a", environment="production", user="ann")
    other_actor = sql(
        "DELETE FROM t",
        target="a",
        environment="production",
        user="bob",
        groups=["x"],
        at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    assert base.fingerprint() == other_actor.fingerprint()
    assert (
        base.fingerprint()
        != sql("DELETE FROM t", target="b", environment="production").fingerprint()
    )
    assert (
        base.fingerprint() != sql("DELETE FROM t", target="a", environment="staging").fingerprint()
    )
    assert (
        base.fingerprint()
        != Action.create(
            "shell", "DELETE FROM t", target="a", environment="production"
        ).fingerprint()
    )


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(min_size=1, max_size=80).filter(lambda t: t.strip().rstrip(";").strip() != ""),
    data=st.data(),
)
def test_changing_one_character_changes_the_fingerprint(text: str, data: st.DataObject) -> None:
    action = Action.create("shell", text)
    core = text.strip()
    index = data.draw(st.integers(0, len(core) - 1))
    replacement = data.draw(st.characters().filter(lambda c: c != core[index]))
    changed = core[:index] + replacement + core[index + 1 :]
    if changed.strip() == core:
        return  # replaced an edge character by white space: the same command
    assert Action.create("shell", changed).fingerprint() != action.fingerprint()


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.none()),
        max_size=5,
    )
)
def test_structured_fingerprint_does_not_depend_on_key_order(payload: dict[str, object]) -> None:
    forward = Action.create("tool_call", payload=payload)
    backward = Action.create("tool_call", payload=dict(reversed(list(payload.items()))))
    assert forward.fingerprint() == backward.fingerprint()
    assert normalized_payload(forward) == payload


def test_fingerprint_refuses_non_json_payloads() -> None:
    with pytest.raises(InvalidAction, match="finite"):
        Action.create("custom", payload={"x": float("nan")}).fingerprint()
    with pytest.raises(InvalidAction, match="JSON data"):
        Action.create("custom", payload={"x": object()}).fingerprint()


def test_create_validates() -> None:
    with pytest.raises(InvalidAction, match="unknown action kind 'sqll'"):
        Action.create("sqll", "SELECT 1")
    with pytest.raises(InvalidAction, match="carries text, not a payload"):
        Action.create("sql", payload={"a": 1})
    with pytest.raises(InvalidAction, match="timezone"):
        sql("SELECT 1", at=datetime(2026, 1, 1))
    assert sql("SELECT 1").kind is ActionKind.SQL


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([], "expected a JSON object"),
        ({"text": "x"}, "missing field: kind"),
        ({"kind": "sql", "text": "x", "evn": "prod"}, "unknown field"),
        ({"kind": "sql", "text": 3}, "text must be a string"),
        ({"kind": "sql", "text": "x", "groups": "admins"}, "groups must be a list"),
        ({"kind": "sql", "text": "x", "at": "yesterday"}, "not an ISO 8601"),
        ({"kind": "sql", "text": "x", "at": "2026-01-01T10:00:00"}, "timezone"),
        ({"kind": "sql", "text": "x", "env": "a", "environment": "b"}, "not both"),
        ({"kind": "tool_call", "payload": [1]}, "payload must be an object"),
    ],
)
def test_from_record_errors_are_clear(record: object, message: str) -> None:
    with pytest.raises(InvalidAction, match=message):
        Action.from_record(record)


def test_from_record_reads_every_field() -> None:
    action = Action.from_record(
        {
            "kind": "sql",
            "text": "SELECT 1",
            "env": "prod",
            "target": "db",
            "user": "ann",
            "groups": ["dba"],
            "at": "2026-03-01T10:00:00+01:00",
            "attributes": {"ticket": "T-1"},
        }
    )
    assert action.environment == "production"
    assert action.actor.user == "ann"
    assert action.actor.groups == frozenset({"dba"})
    assert action.at.utcoffset() == timedelta(hours=1)
    assert action.attributes == {"ticket": "T-1"}


_values = st.lists(st.none() | st.text(max_size=12), max_size=4)


@settings(max_examples=200, deadline=None)
@given(first=_values, second=_values)
def test_bound_parameters_are_part_of_a_sql_fingerprint(
    first: list[str | None], second: list[str | None]
) -> None:
    def digest(values: list[str | None]) -> str:
        return fingerprint(
            Action.create(
                "sql",
                "DELETE FROM t WHERE id = $1",
                target="app",
                environment="production",
                attributes={"parameters": values},
            )
        )

    assert (digest(first) == digest(second)) == (first == second)
    # With parameters, never the fingerprint of the bare text (an approval of
    # one is not an approval of the other).
    bare = fingerprint(
        Action.create("sql", "DELETE FROM t WHERE id = $1", target="app", environment="production")
    )
    assert digest(first) != bare


def test_bound_parameters_must_be_strings_or_nulls() -> None:
    with pytest.raises(InvalidAction, match="parameters"):
        Action.create("sql", "SELECT $1", attributes={"parameters": [1]})
    action = Action(kind=ActionKind.SQL, text="SELECT $1", attributes={"parameters": "7"})
    with pytest.raises(InvalidAction, match="parameters"):
        fingerprint(action)
