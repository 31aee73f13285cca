"""The verifier names the first event that was altered, inserted, reordered or deleted."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.audit.chain import GENESIS, ChainEvent, canonical_bytes, event_hash, matches, seal
from jitgate.audit.checkpoint import sign_checkpoint
from jitgate.audit.keys import SigningKey, TrustedKeys
from jitgate.audit.verify import Anchor, verify_chain

KEY = SigningKey.generate()
TRUSTED = TrustedKeys([KEY.verify_key])
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def build(n: int, start: int = 0, prev: str = GENESIS) -> list[ChainEvent]:
    events = []
    for i in range(start + 1, start + n + 1):
        event = seal(
            seq=i,
            id=f"ev-{i}",
            at=T0 + timedelta(seconds=i),
            type="approval.given" if i % 2 else "request.created",
            actor=f"user{i % 3}",
            request_id=f"req_{i // 4}",
            target="db",
            environment="production",
            payload={"n": i, "comment": f"ok {i}", "groups": ["dba"]},
            prev_hash=prev,
        )
        events.append(event)
        prev = event.hash
    return events


def resealed(event: ChainEvent, **changes: object) -> ChainEvent:
    """``event`` changed and given a recomputed (self-consistent) hash."""
    changed = replace(event, **changes)  # type: ignore[arg-type]
    return replace(changed, hash=event_hash(changed.document()))


def checkpoint(events: list[ChainEvent], seq: int, key: SigningKey = KEY):  # type: ignore[no-untyped-def]
    event = next(e for e in events if e.seq == seq)
    return sign_checkpoint(key, seq, event.hash, T0)


def test_an_intact_signed_trail_verifies() -> None:
    events = build(20)
    result = verify_chain(events, [checkpoint(events, 10), checkpoint(events, 20)], TRUSTED)
    assert result.ok, result.problem
    assert (result.events, result.last_seq, result.signed_through) == (20, 20, 20)
    assert result.head_hash == events[-1].hash


def test_an_empty_trail_verifies() -> None:
    assert verify_chain([], [], TRUSTED).ok


N = 12


def tamper_cases() -> list[tuple[str, int]]:
    return [(kind, k) for kind in ("edit", "time", "delete", "insert", "swap") for k in range(1, N)]


def tampered(kind: str, k: int) -> tuple[list[ChainEvent], str, int]:
    """The trail with one tampering at seq ``k``; the expected kind and seq."""
    events = build(N)
    idx = k - 1
    if kind == "edit":
        events[idx] = replace(events[idx], payload={**events[idx].payload, "n": -1})
        return events, "altered", k
    if kind == "time":
        events[idx] = replace(events[idx], at="2031-01-01T00:00:00.000000+00:00")
        return events, "altered", k
    if kind == "delete":
        del events[idx]
        return events, "deleted", k
    if kind == "insert":
        forged = seal(
            seq=k,
            id="forged",
            at=T0,
            type="request.approved",
            actor="mallory",
            request_id="req_x",
            target="db",
            environment="production",
            payload={},
            prev_hash=events[idx - 1].hash if idx else GENESIS,
        )
        shifted = [replace(e, seq=e.seq + 1) for e in events[idx:]]
        return [*events[:idx], forged, *shifted], "inserted", k
    assert kind == "swap"
    a, b = events[idx], events[idx + 1]
    events[idx] = replace(b, seq=a.seq)
    events[idx + 1] = replace(a, seq=b.seq)
    return events, "reordered", k


@pytest.mark.parametrize(("kind", "k"), tamper_cases())
def test_every_single_tampering_is_named(kind: str, k: int) -> None:
    events, expected_kind, expected_seq = tampered(kind, k)
    result = verify_chain(events, [], TRUSTED, allow_unsigned=10_000)
    assert not result.ok
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq) == (expected_kind, expected_seq), (
        result.problem.message
    )


def test_deleting_the_last_event_unrenumbered_is_truncation_under_a_checkpoint() -> None:
    events = build(10)
    cps = [checkpoint(events, 10)]
    result = verify_chain(events[:-3], cps, TRUSTED, allow_unsigned=100)
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq) == ("truncated", 8)


def test_a_rewritten_event_with_a_recomputed_hash_is_named() -> None:
    events = build(10)
    events[4] = resealed(events[4], payload={"n": 0})
    result = verify_chain(events, [], TRUSTED, allow_unsigned=100)
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq) == ("altered", 5)


def test_a_rehashed_chain_does_not_match_its_signed_checkpoints() -> None:
    events = build(30)
    cps = [checkpoint(events, 10), checkpoint(events, 20), checkpoint(events, 30)]
    # Rewrite event 14 and re-hash everything after it, without the key.
    forged: list[ChainEvent] = events[:13]
    prev = forged[-1].hash
    for e in events[13:]:
        payload = {**e.payload, "comment": "nothing to see"} if e.seq == 14 else e.payload
        f = seal(
            seq=e.seq,
            id=e.id,
            at=datetime.fromisoformat(e.at),
            type=e.type,
            actor=e.actor,
            request_id=e.request_id,
            target=e.target,
            environment=e.environment,
            payload=payload,
            prev_hash=prev,
        )
        forged.append(f)
        prev = f.hash
    result = verify_chain(forged, cps, TRUSTED)
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq) == ("rewritten", 11)
    assert "11..20" in result.problem.message


def test_a_rehashed_chain_with_forged_checkpoints_fails_on_the_signature() -> None:
    events = build(10)
    other = SigningKey.generate()
    forged_cp = replace(checkpoint(events, 10, other), key_id=KEY.key_id)
    result = verify_chain(events, [forged_cp], TRUSTED)
    assert result.problem is not None
    assert result.problem.kind == "bad_signature"


def test_a_checkpoint_by_an_untrusted_key_fails() -> None:
    events = build(5)
    result = verify_chain(events, [checkpoint(events, 5, SigningKey.generate())], TRUSTED)
    assert result.problem is not None
    assert result.problem.kind == "unknown_key"


def test_a_whole_replaced_chain_without_checkpoints_is_unsigned() -> None:
    result = verify_chain(build(8), [], TRUSTED)
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq) == ("unsigned", 1)
    assert verify_chain(build(8), [], TRUSTED, allow_unsigned=8).ok


def test_an_expected_checkpoint_reveals_tail_truncation_with_its_checkpoint() -> None:
    events = build(10)
    kept = checkpoint(events, 10)
    shortened = events[:7]
    cps = [checkpoint(events, 7)]
    assert verify_chain(shortened, cps, TRUSTED).ok  # undetectable from the store alone
    result = verify_chain(shortened, cps, TRUSTED, expect=kept)
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq) == ("truncated", 8)


def test_an_anchor_must_be_proven() -> None:
    events = build(10)
    rest = events[5:]
    anchor = Anchor(5, events[4].hash)
    archived = seal(
        seq=11,
        id="arch",
        at=T0,
        type="audit.archived",
        actor=None,
        request_id=None,
        target=None,
        environment=None,
        payload={"through_seq": 5, "hash": events[4].hash},
        prev_hash=events[-1].hash,
    )
    trail = [*rest, archived]
    cps = [checkpoint(events, 5), sign_checkpoint(KEY, 11, archived.hash, T0)]
    assert verify_chain(trail, cps, TRUSTED, anchor=anchor).ok
    # Without the archive's checkpoint, or without its event, the start is unproven.
    missing_cp = verify_chain(trail, cps[1:], TRUSTED, anchor=anchor)
    assert missing_cp.problem is not None
    assert missing_cp.problem.kind == "anchor"
    no_event = verify_chain(rest, [*cps[:1], checkpoint(events, 10)], TRUSTED, anchor=anchor)
    assert no_event.problem is not None
    assert no_event.problem.kind == "anchor"


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=3, max_value=25),
    data=st.data(),
)
def test_any_single_field_edit_is_named_exactly(n: int, data: st.DataObject) -> None:
    events = build(n)
    k = data.draw(st.integers(min_value=1, max_value=n), label="seq")
    field = data.draw(
        st.sampled_from(
            [
                "id",
                "at",
                "type",
                "actor",
                "request_id",
                "target",
                "environment",
                "payload",
                "prev_hash",
            ]
        ),
        label="field",
    )
    value: object = data.draw(
        st.text(min_size=1, max_size=8)
        if field != "payload"
        else st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
        label="value",
    )
    victim = events[k - 1]
    if getattr(victim, field) == value:
        return
    events[k - 1] = replace(victim, **{field: value})  # type: ignore[arg-type]
    result = verify_chain(events, [], TRUSTED, allow_unsigned=n)
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq) == ("altered", k)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(max_codepoint=127), max_size=6), children, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.dictionaries(
        st.text(alphabet=st.characters(max_codepoint=127), max_size=8), json_values, max_size=6
    )
)
def test_the_fast_path_agrees_with_rfc8785(payload: dict[str, object]) -> None:
    document = {"seq": 1, "payload": payload, "prev_hash": GENESIS}
    exact = canonical_bytes(document)
    assert exact == bytes(rfc8785.dumps(document))
    assert matches(document, event_hash(document))
    fast = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if fast.encode() != exact:  # where they differ, the exact path still accepts
        assert matches(document, event_hash(document))


def test_floats_and_big_integers_are_hashed_exactly() -> None:
    event = seal(
        seq=1,
        id="x",
        at=T0,
        type="t",
        actor=None,
        request_id=None,
        target=None,
        environment=None,
        payload={"f": 0.1, "big": 2**60, "nan": float("nan")},
        prev_hash=GENESIS,
    )
    assert event.payload == {"f": 0.1, "big": str(2**60), "nan": "nan"}
    assert matches(event.document(), event.hash)
    assert verify_chain([event], [], TRUSTED, allow_unsigned=1).ok
