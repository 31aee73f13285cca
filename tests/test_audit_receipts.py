"""Signed approval receipts (jitgate.audit.receipts): building, signing, verifying.

Pure tests: requests are driven through the approval core, receipts signed
with throw-away keys. The property tests mutate signed receipts anywhere
(nested approvals, fingerprint, times, the signature itself) and require
every mutation to be caught.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jitgate.actions.findings import Analysis, Risk
from jitgate.actions.model import Action, Actor, fingerprint
from jitgate.approvals import (
    ApprovalChain,
    ApprovalRequest,
    Quorum,
    RequestStatus,
    Stage,
    approve,
    authorize,
    break_glass,
    cancel,
    create_request,
    deny,
    report_outcome,
    tick,
)
from jitgate.audit.chain import canonical_bytes
from jitgate.audit.keys import SigningKey, TrustedKeys, b64decode, b64encode
from jitgate.audit.receipts import (
    ACTION_MISMATCH,
    BAD_SIGNATURE,
    INCONSISTENT,
    MALFORMED,
    RECEIPT_FORMAT,
    UNKNOWN_KEY,
    ReceiptError,
    build_receipt,
    issue_receipt,
    receipt_action,
    receipt_digest,
    receipt_problem,
    sign_receipt,
    signed_bytes,
    verify_receipt,
)
from jitgate.policy.decision import Decision, Outcome

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)

ANN = Actor.of("ann", ["dev"])
BOB = Actor.of("bob", ["dba"])
CAROL = Actor.of("carol", ["dba", "security"])
DAVE = Actor.of("dave", ["security"])

KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()
TRUSTED = TrustedKeys([KEY.verify_key])

#: Two stages: any dba, then one dba and one security person, with MFA.
TWO_STAGES = ApprovalChain(
    stages=(
        Stage("dba", ("dba",)),
        Stage("security", ("dba", "security"), quorum=Quorum.ALL, mfa=True),
    ),
    break_glass=True,
)


def make_action(
    text: str = "DELETE FROM users WHERE id = 1", target: str = "db-main", env: str = "prod"
) -> Action:
    return Action.create("sql", text, target=target, environment=env, user="ann", groups=["dev"])


def new_request(action: Action | None = None, chain: ApprovalChain = TWO_STAGES) -> ApprovalRequest:
    action = action or make_action()
    decision = Decision(
        outcome=Outcome.REQUIRE_APPROVAL,
        risk=Risk.HIGH,
        rules=("sql-delete-prod",),
        reasons=("DELETE in production",),
        fingerprint=fingerprint(action),
        analysis=Analysis(),
        chain=chain,
    )
    req, _ = create_request("req_1", action, decision, T0)
    return req


def approved(action: Action | None = None) -> ApprovalRequest:
    req = new_request(action)
    req, _ = approve(req, BOB, T0 + MINUTE, "looks fine")
    req, _ = approve(req, CAROL, T0 + 2 * MINUTE, "checked the WHERE", mfa_verified=True)
    req, _ = approve(req, DAVE, T0 + 3 * MINUTE, mfa_verified=True)
    assert req.status is RequestStatus.APPROVED
    return req


def signed(req: ApprovalRequest | None = None, key: SigningKey = KEY) -> dict[str, Any]:
    return sign_receipt(build_receipt(req or approved()), key)


def through_json(doc: Any) -> Any:
    return json.loads(json.dumps(doc))


# --- building ------------------------------------------------------------------------------


def test_a_receipt_names_the_action_the_chain_and_every_approval() -> None:
    req = approved()
    body = build_receipt(req)
    assert body["format"] == RECEIPT_FORMAT
    assert body["request_id"] == "req_1"
    assert body["fingerprint"] == req.fingerprint == fingerprint(make_action())
    assert body["action"] == {
        "kind": "sql",
        "text": "DELETE FROM users WHERE id = 1",
        "payload": {},
        "target": "db-main",
        "environment": "production",
    }
    assert body["requester"] == {"user": "ann", "groups": ["dev"]}
    assert body["created_at"] == "2025-01-06T09:00:00.000000+00:00"
    assert body["approved_at"] == body["issued_at"] == "2025-01-06T09:03:00.000000+00:00"
    assert body["break_glass"] is False
    assert body["break_glass_justification"] is None
    assert [s["name"] for s in body["chain"]["stages"]] == ["dba", "security"]
    assert body["chain"]["stages"][1] == {
        "name": "security",
        "groups": ["dba", "security"],
        "eligible_groups": ["dba", "security"],
        "quorum": "all",
        "approvals_required": 2,
        "mfa": True,
    }
    assert [
        (a["approver"], a["stage"], a["group"], a["mfa_verified"]) for a in body["approvals"]
    ] == [
        ("bob", "dba", "dba", False),
        ("carol", "security", "dba", True),
        ("dave", "security", "security", True),
    ]
    assert body["approvals"][1]["comment"] == "checked the WHERE"
    assert body["approvals"][1]["at"] == "2025-01-06T09:02:00.000000+00:00"
    assert body["grant"] == {
        "scope": "action",
        "rule_ids": ["sql-delete-prod"],
        "issued_at": "2025-01-06T09:03:00.000000+00:00",
        "expires_at": "2025-01-06T09:08:00.000000+00:00",
    }
    assert receipt_problem(sign_receipt(body, KEY)) is None


def test_a_break_glass_receipt_says_so_with_the_justification() -> None:
    req, _ = break_glass(
        new_request(), ANN, "the site is down, the fix cannot wait", T0 + MINUTE, mfa_verified=True
    )
    doc = signed(req)
    assert doc["break_glass"] is True
    assert doc["break_glass_justification"] == "the site is down, the fix cannot wait"
    assert doc["approvals"] == []
    assert verify_receipt(doc, TRUSTED).ok


def test_requests_not_approved_get_no_receipt() -> None:
    pending = new_request()
    denied, _ = deny(pending, BOB, "no", T0 + MINUTE)
    cancelled, _ = cancel(pending, ANN, T0 + MINUTE)
    expired, _ = tick(pending, T0 + timedelta(days=1))
    unused, _ = tick(approved(), T0 + timedelta(days=1))
    for req in (pending, denied, cancelled, expired, unused):
        with pytest.raises(ReceiptError) as info:
            build_receipt(req)
        assert info.value.code == "not_approved", req.status
        assert req.status.value in info.value.message


def test_the_receipt_does_not_change_once_issued() -> None:
    """Approved, executing, executed or failed: the same bytes, the same signature."""
    req = approved()
    running, _ = authorize(req, req.fingerprint, ANN, T0 + 4 * MINUTE)
    done, _ = report_outcome(running, ANN, T0 + 5 * MINUTE, exit_code=0)
    failed, _ = report_outcome(running, ANN, T0 + 5 * MINUTE, exit_code=3)
    assert {r.status for r in (req, running, done, failed)} == {
        RequestStatus.APPROVED,
        RequestStatus.EXECUTING,
        RequestStatus.EXECUTED,
        RequestStatus.FAILED,
    }
    receipts = [canonical_bytes(issue_receipt(r, KEY)) for r in (req, running, done, failed)]
    assert len(set(receipts)) == 1
    assert canonical_bytes(issue_receipt(req, KEY)) == receipts[0], "deterministic signature"


def test_issued_at_and_issuer_can_be_given() -> None:
    body = build_receipt(approved(), issued_at=T0 + timedelta(hours=1), issuer="jitgate-eu")
    assert body["issued_at"] == "2025-01-06T10:00:00.000000+00:00"
    assert body["issuer"] == "jitgate-eu"


def test_payloads_rfc8785_cannot_carry_are_refused() -> None:
    action = Action.create("deploy", payload={"replicas": 2**60}, environment="prod", user="ann")
    req = new_request(action, ApprovalChain(stages=(Stage("dba", ("dba",)),)))
    req, _ = approve(req, BOB, T0 + MINUTE)
    with pytest.raises(ReceiptError) as info:
        sign_receipt(build_receipt(req), KEY)
    assert info.value.code == "unrepresentable"


# --- verifying -----------------------------------------------------------------------------


def test_a_signed_receipt_verifies_after_a_json_round_trip() -> None:
    doc = through_json(signed())
    check = verify_receipt(doc, TRUSTED)
    assert check.ok
    assert bool(check)
    assert check.reason is None
    assert check.key_id == KEY.key_id
    assert doc["signature"]["alg"] == "Ed25519"
    assert receipt_digest(doc) == receipt_digest(signed())


def test_the_signature_covers_the_canonical_bytes_without_the_signature() -> None:
    doc = signed()
    message = canonical_bytes({k: v for k, v in doc.items() if k != "signature"})
    assert signed_bytes(doc) == message
    assert KEY.verify_key.verify(doc["signature"]["value"], message)


def test_a_receipt_checks_against_the_action_it_is_for() -> None:
    doc = signed()
    same = make_action("DELETE FROM users WHERE id = 1;  ")  # the fingerprint normalizes these
    assert verify_receipt(doc, TRUSTED, action=same).ok
    assert verify_receipt(doc, TRUSTED, expected_fingerprint=fingerprint(same)).ok
    for other in (
        make_action("DELETE FROM users"),  # the WHERE clause is what was approved
        make_action("DELETE FROM users WHERE id = 2"),
        make_action(target="db-replica"),
        make_action(env="staging"),
        Action.create(
            "shell", "DELETE FROM users WHERE id = 1", target="db-main", environment="prod"
        ),
    ):
        check = verify_receipt(doc, TRUSTED, action=other)
        assert (check.ok, check.reason) == (False, ACTION_MISMATCH), other
    check = verify_receipt(doc, TRUSTED, expected_fingerprint="sha256:" + "0" * 64)
    assert check.reason == ACTION_MISMATCH


def test_receipt_action_is_the_signed_action() -> None:
    doc = signed()
    assert fingerprint(receipt_action(doc)) == doc["fingerprint"]


def test_a_receipt_signed_by_another_key_is_refused() -> None:
    doc = signed(key=OTHER_KEY)
    assert verify_receipt(doc, TRUSTED).reason == UNKNOWN_KEY
    assert verify_receipt(doc, TrustedKeys()).reason == UNKNOWN_KEY
    # claiming the trusted key's id does not help
    forged = {**doc, "signature": {**doc["signature"], "key_id": KEY.key_id}}
    assert verify_receipt(forged, TRUSTED).reason == BAD_SIGNATURE
    # trusting both keys accepts both
    both = TrustedKeys([KEY.verify_key, OTHER_KEY.verify_key])
    assert verify_receipt(doc, both).ok
    assert verify_receipt(signed(), both).ok


def test_a_correctly_signed_but_inconsistent_receipt_is_refused() -> None:
    """A signer bug (fingerprint of another action) must not verify."""
    body = build_receipt(approved())
    body["fingerprint"] = fingerprint(make_action("DELETE FROM users"))
    check = verify_receipt(sign_receipt(body, KEY), TRUSTED)
    assert check.reason == INCONSISTENT


def test_the_signature_has_one_spelling() -> None:
    """base64 decoders ignore stray characters and the last character's spare
    bits: such variants decode to the same signature but are refused."""
    doc = signed()
    value = doc["signature"]["value"]
    raw = b64decode(value)
    assert b64encode(raw) == value
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variants = [value[:-1] + c for c in alphabet if c != value[-1]]
    aliases = [v for v in variants if b64decode(v) == raw]
    assert aliases, "the last character has spare bits"
    for alias in [*aliases, value[:40] + "!" + value[41:], value + "="]:
        tampered = {**doc, "signature": {**doc["signature"], "value": alias}}
        assert not verify_receipt(tampered, TRUSTED).ok, alias


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        "receipt",
        {},
        {"format": "jitgate.receipt/v2"},
        {"format": RECEIPT_FORMAT},
    ],
)
def test_garbage_is_malformed(doc: Any) -> None:
    check = verify_receipt(doc, TRUSTED)
    assert (check.ok, check.reason) == (False, MALFORMED)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("signature"),
        lambda d: d["signature"].update(alg="RS256"),
        lambda d: d["signature"].update(extra=1),
        lambda d: d["signature"].update(value=""),
        lambda d: d["signature"].update(key_id=7),
        lambda d: d.pop("approvals"),
        lambda d: d["approvals"][0].update(at="yesterday"),
        lambda d: d["approvals"][0].update(at="2025-01-06T09:01:00"),  # no offset
        lambda d: d["approvals"][0].update(stage_index=True),
        lambda d: d["chain"]["stages"][0].update(approvals_required=1.0),
        lambda d: d["action"].update(kind="telepathy"),
        lambda d: d["grant"].pop("expires_at"),
        lambda d: d.update(break_glass="no"),
        lambda d: d.update(approvals={}),
    ],
)
def test_damaged_receipts_are_malformed(damage: Callable[[dict[str, Any]], Any]) -> None:
    doc = copy.deepcopy(signed())
    damage(doc)
    check = verify_receipt(doc, TRUSTED)
    assert (check.ok, check.reason) == (False, MALFORMED), check


# --- properties ----------------------------------------------------------------------------

Path = tuple[str | int, ...]


def paths(value: Any, prefix: Path = ()) -> list[Path]:
    """Every position in a JSON document: objects, arrays and leaves."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def get(doc: Any, path: Path) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def put(doc: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    get(doc, path[:-1])[path[-1]] = value
    return doc


json_leaves = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` changed: another value of its type, another type, or (for
    arrays and objects) an element removed, added or reordered."""
    options: list[Callable[[], Any]] = [lambda: draw(json_leaves)]
    if isinstance(value, bool):
        options.append(lambda: not value)
    elif isinstance(value, int):
        options.append(lambda: value + draw(st.integers(-1000, 1000).filter(bool)))
    elif isinstance(value, str):
        options += [
            lambda: value + draw(st.text(min_size=1, max_size=3)),
            lambda: value[:-1],
            lambda: value.upper(),
            lambda: draw(st.text(max_size=len(value) + 2)),
        ]
    elif isinstance(value, list):
        options.append(lambda: [*value, draw(json_leaves)])
        if value:
            options += [
                lambda: [
                    v for i, v in enumerate(value) if i != draw(st.integers(0, len(value) - 1))
                ],
                lambda: value[::-1],
            ]
    elif isinstance(value, dict):
        options.append(lambda: {**value, draw(st.text(max_size=8)): draw(json_leaves)})
        if value:
            options.append(
                lambda: {
                    k: v for k, v in value.items() if k != draw(st.sampled_from(sorted(value)))
                }
            )
    return draw(st.sampled_from(options))()


SIGNED = signed()
POSITIONS = paths(SIGNED)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_mutation_of_a_signed_receipt_fails_verification(data: st.DataObject) -> None:
    doc = copy.deepcopy(SIGNED)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(doc)))
        doc = put(doc, path, data.draw(mutated(copy.deepcopy(get(doc, path)))))
    assume(doc != SIGNED)  # (a reversed one-element list, True for 1 ... changed nothing)
    check = verify_receipt(through_json(doc), TRUSTED)
    assert not check.ok, (check, doc)
    assert check.reason in {MALFORMED, UNKNOWN_KEY, BAD_SIGNATURE}


def test_the_mutation_test_reaches_every_position() -> None:
    """Including nested approvals, the fingerprint, times and the signature."""
    for expected in [
        ("fingerprint",),
        ("approvals", 2, "mfa_verified"),
        ("approvals", 0, "at"),
        ("chain", "stages", 1, "groups", 1),
        ("grant", "expires_at"),
        ("signature", "value"),
        ("signature", "key_id"),
        ("action", "text"),
    ]:
        assert expected in POSITIONS


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(min_size=1, max_size=80).filter(lambda t: t.strip()),
    other=st.text(max_size=80),
    target=st.text(max_size=20),
)
def test_a_receipt_vouches_for_its_action_only(text: str, other: str, target: str) -> None:
    try:
        doc = through_json(signed(approved(make_action(text, target=target))))
    except ReceiptError:
        assume(False)  # lone surrogates: not representable, refused (tested above)
        raise
    assert verify_receipt(doc, TRUSTED, action=make_action(text, target=target)).ok
    check = verify_receipt(doc, TRUSTED, action=make_action(other, target=target))
    same = fingerprint(make_action(other, target=target)) == doc["fingerprint"]
    assert check.ok == same
    if not same:
        assert check.reason == ACTION_MISMATCH


json_values = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner)
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_verification_never_raises_on_arbitrary_json(doc: Any) -> None:
    check = verify_receipt(doc, TRUSTED)
    assert not check.ok
    assert check.reason == MALFORMED


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(POSITIONS[1:]))
def test_dropping_or_nulling_any_part_fails(path: Path) -> None:
    doc = copy.deepcopy(SIGNED)
    parent = get(doc, path[:-1])
    if isinstance(parent, list):
        del parent[path[-1]]
    else:
        parent.pop(path[-1])
    assert not verify_receipt(doc, TRUSTED).ok
    doc = put(copy.deepcopy(SIGNED), path, None)
    assume(doc != SIGNED)
    assert not verify_receipt(doc, TRUSTED).ok
