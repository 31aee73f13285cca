"""Rule-scoped grants in the approval service: applied on submit, reported by
evaluate, listed, revoked; and the execution deadline through the ticker.

Runs on SQLite and PostgreSQL (the ``db`` fixture). The world is the service
tests' (tests/conftest.py) with a policy of its own: targets ``box-*`` hold
DELETE (rule ``box-delete``) and UPDATE (``box-update``) under a chain whose
grant has scope RULE for 30 minutes, deny TRUNCATE, and target ``one`` holds
anything under an ACTION-scope chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from conftest import ServiceWorld, make_world
from jitgate.evaluator import Evaluator
from jitgate.policy import Outcome, load_policy_text
from jitgate.service import ApprovalService, ServiceError
from jitgate.store import Database, GrantRepository
from jitgate.store.tables import RequestTable

POLICY = """
version: 1
name: grant-tests
default: allow
defaults: {ttl: 1h, grant_ttl: 5m}
chains:
  box:
    stages: [{name: approvers, groups: [approvers]}]
    grant: {scope: rule, ttl: 30m}
  one:
    stages: [{name: approvers, groups: [approvers]}]
rules:
  - {id: box-delete, match: {targets: ["box-*"], statements: [delete]},
     outcome: require_approval, chain: box}
  - {id: box-update, match: {targets: ["box-*"], statements: [update]},
     outcome: require_approval, chain: box}
  - {id: box-truncate, match: {targets: ["box-*"], statements: ["truncate*"]},
     outcome: deny, message: never}
  - {id: one, match: {targets: [one]}, outcome: require_approval, chain: one}
"""
GRANT_TTL = timedelta(minutes=30)
STATEMENTS = {
    "delete": "DELETE FROM t WHERE id = {n}",
    "update": "UPDATE t SET a = {n} WHERE id = 2",
    "both": "DELETE FROM t WHERE id = {n}; UPDATE t SET a = 1 WHERE id = 2",
    "truncate": "TRUNCATE t",
    "delete+truncate": "DELETE FROM t WHERE id = {n}; TRUNCATE t",
    "select": "SELECT {n}",
}

_policy = load_policy_text(POLICY, "grant-tests.yaml")


@pytest.fixture
async def gw(db: Database) -> AsyncIterator[ServiceWorld]:
    """The service world with the policy above."""
    world = await make_world(db)
    assert world.clock is not None
    world.service = ApprovalService(db, Evaluator(_policy), clock=world.clock)
    try:
        yield world
    finally:
        await world.service.stop()


_counter = iter(range(10**9))


def body(statement: str = "delete", target: str = "box-1", env: str = "prod") -> dict[str, Any]:
    text = STATEMENTS[statement].format(n=next(_counter))
    return {"kind": "sql", "text": text, "env": env, "target": target}


async def submit(world: ServiceWorld, who: str, **fields: Any) -> Any:
    return await world.service.submit(world.p[who], body(**fields))


async def granted(world: ServiceWorld, who: str = "ann", **fields: Any) -> dict[str, Any]:
    """A request approved by bob: its view (with the grant's id)."""
    held = await submit(world, who, **fields)
    assert held.request is not None
    view = await world.service.approve(world.p["bob"], held.request["id"])
    assert view["status"] == "approved"
    assert view["grant"]["id"]
    return dict(view)


async def request_count(world: ServiceWorld) -> int:
    async with world.db.transaction(readonly=True) as session:
        count: int = (await session.execute(select(func.count(RequestTable.id)))).scalar_one()
    return count


async def typed_events(world: ServiceWorld, type_: str) -> list[Any]:
    return [e for e in await world.events() if e.type == type_]


# --- applying -----------------------------------------------------------------------


async def test_an_active_rule_grant_lets_a_covered_action_through(gw: ServiceWorld) -> None:
    view = await granted(gw)
    grant_id = view["grant"]["id"]
    assert view["grant"]["scope"] == "rule"
    gw.clock.advance(minutes=10)  # type: ignore[union-attr]
    before = await request_count(gw)

    action = body("delete")
    submission = await gw.service.submit(gw.p["ann"], action)

    # The decision is the policy's; the grant is what allowed it.
    assert submission.decision.outcome is Outcome.REQUIRE_APPROVAL
    assert submission.decision.rules == ("box-delete",)
    assert submission.request is None
    assert submission.grant == {
        "id": grant_id,
        "request_id": view["id"],
        "expires_at": view["grant"]["expires_at"],
    }
    assert await request_count(gw) == before, "a request was held although a grant covers it"
    (applied,) = await typed_events(gw, "grant.applied")
    assert applied.actor == "ann"
    assert applied.request_id == view["id"]
    assert (applied.target, applied.environment) == ("box-1", "production")
    assert applied.payload["grant_id"] == grant_id
    assert applied.payload["request_id"] == view["id"]
    assert applied.payload["rules"] == ["box-delete"]
    assert applied.payload["action"]["text"] == action["text"]
    assert applied.payload["action"]["kind"] == "sql"
    assert applied.payload["action"]["target"] == "box-1"
    assert applied.payload["action"]["environment"] == "production"

    # evaluate reports the grant, applies nothing, and says so in its record.
    evaluation = await gw.service.evaluation(gw.p["ann"], body("delete"))
    assert evaluation.decision.outcome is Outcome.REQUIRE_APPROVAL
    assert evaluation.grant is not None
    assert evaluation.grant["id"] == grant_id
    assert len(await typed_events(gw, "grant.applied")) == 1
    evaluated = (await typed_events(gw, "action.evaluated"))[-1]
    assert evaluated.payload["grant"]["id"] == grant_id
    assert (await gw.service.evaluate(gw.p["ann"], body("delete"))).rules == ("box-delete",)


async def test_a_service_account_submitting_for_the_requester_uses_the_grant(
    gw: ServiceWorld,
) -> None:
    view = await granted(gw)
    submission = await gw.service.submit(gw.p["svc"], {**body("delete"), "user": "ann"})
    assert submission.grant is not None
    assert submission.grant["request_id"] == view["id"]
    (applied,) = await typed_events(gw, "grant.applied")
    assert applied.actor == "svc"
    assert applied.payload["action"]["user"] == "ann"
    # ... but not for somebody else.
    other = await gw.service.submit(gw.p["svc"], {**body("delete"), "user": "dave"})
    assert other.grant is None
    assert other.request is not None


@pytest.mark.parametrize(
    ("who", "fields", "outcome"),
    [
        ("dave", {}, Outcome.REQUIRE_APPROVAL),  # another user
        ("ann", {"target": "box-2"}, Outcome.REQUIRE_APPROVAL),  # another target
        ("ann", {"env": "staging"}, Outcome.REQUIRE_APPROVAL),  # another environment
        ("ann", {"statement": "update"}, Outcome.REQUIRE_APPROVAL),  # another rule
        ("ann", {"statement": "both"}, Outcome.REQUIRE_APPROVAL),  # a rule more
        ("ann", {"statement": "truncate"}, Outcome.DENY),  # never a deny
        ("ann", {"statement": "delete+truncate"}, Outcome.DENY),
    ],
)
async def test_a_grant_covers_nothing_else(
    gw: ServiceWorld, who: str, fields: dict[str, Any], outcome: Outcome
) -> None:
    await granted(gw)
    submission = await submit(gw, who, **fields)
    assert submission.decision.outcome is outcome
    assert submission.grant is None
    assert (submission.request is not None) == (outcome is Outcome.REQUIRE_APPROVAL)
    assert (await gw.service.evaluation(gw.p[who], body(**fields))).grant is None
    assert not await typed_events(gw, "grant.applied")


async def test_a_grant_ends_with_its_time_box(gw: ServiceWorld) -> None:
    await granted(gw)
    gw.clock.advance(seconds=GRANT_TTL.total_seconds() - 1)  # type: ignore[union-attr]
    assert (await submit(gw, "ann")).grant is not None
    gw.clock.advance(seconds=1)  # type: ignore[union-attr]
    late = await submit(gw, "ann")
    assert late.grant is None
    assert late.request is not None


async def test_an_action_grant_covers_only_its_own_action(gw: ServiceWorld) -> None:
    view = await granted(gw, target="one")
    assert view["grant"]["scope"] == "action"
    again = await submit(gw, "ann", target="one")
    assert again.grant is None
    assert again.request is not None


async def test_a_rule_grant_keeps_covering_after_its_own_action_ran(gw: ServiceWorld) -> None:
    view = await granted(gw)
    await gw.service.authorize(gw.p["ann"], view["id"], view["fingerprint"])
    done = await gw.service.report_outcome(gw.p["ann"], view["id"], exit_code=0)
    assert done["status"] == "executed"
    assert (await submit(gw, "ann")).grant is not None
    # Revoking it leaves the executed request as it is, and ends the cover.
    revoked = await gw.service.revoke_grant(gw.p["ann"], view["grant"]["id"], "done for today")
    assert revoked["revoked_at"] is not None
    assert not revoked["active"]
    assert (await gw.service.get(gw.p["ann"], view["id"]))["status"] == "executed"
    after = await submit(gw, "ann")
    assert after.grant is None
    assert after.request is not None


# --- revoking and listing -------------------------------------------------------------


async def test_revoking_an_unused_grant_cancels_its_request_in_one_transaction(
    gw: ServiceWorld,
) -> None:
    view = await granted(gw)
    grant_id = view["grant"]["id"]
    gw.clock.advance(minutes=1)  # type: ignore[union-attr]

    revoked = await gw.service.revoke_grant(gw.p["ann"], grant_id, "not needed any more")

    assert revoked["id"] == grant_id
    assert revoked["revoked_by"] == "ann"
    assert revoked["revoke_reason"] == "not needed any more"
    assert revoked["active"] is False
    request = await gw.service.get(gw.p["ann"], view["id"])
    assert request["status"] == "cancelled"
    assert request["grant"]["revoked_at"] == revoked["revoked_at"]
    (event,) = await typed_events(gw, "grant.revoked")
    assert (event.actor, event.request_id) == ("ann", view["id"])
    assert event.payload["reason"] == "not needed any more"
    held = await submit(gw, "ann")
    assert held.grant is None, "a revoked grant applied"
    assert held.request is not None
    with pytest.raises(ServiceError) as again:
        await gw.service.revoke_grant(gw.p["adm"], grant_id, "twice")
    assert again.value.code == "grant_revoked"
    assert len(await typed_events(gw, "grant.revoked")) == 1


@pytest.mark.parametrize(
    ("who", "reason", "code"),
    [
        ("dave", "mine now", "not_found"),  # another user: not even visible
        ("bob", "approver", "not_found"),  # an approver is neither requester nor admin
        ("svc", "gateway", "not_found"),
        ("aud", "auditor", "forbidden"),  # auditors change nothing
        ("ann", "   ", "reason_required"),
        ("adm", "", "reason_required"),
    ],
)
async def test_who_may_revoke(gw: ServiceWorld, who: str, reason: str, code: str) -> None:
    view = await granted(gw)
    before = await gw.events()
    with pytest.raises(ServiceError) as refused:
        await gw.service.revoke_grant(gw.p[who], view["grant"]["id"], reason)
    assert refused.value.code == code
    assert await gw.events() == before
    assert (await submit(gw, "ann")).grant is not None, "a refused revocation revoked"


async def test_an_admin_revokes_anybodys_grant(gw: ServiceWorld) -> None:
    view = await granted(gw)
    revoked = await gw.service.revoke_grant(gw.p["adm"], view["grant"]["id"], "incident over")
    assert revoked["revoked_by"] == "adm"
    request = await gw.service.get(gw.p["adm"], view["id"])
    assert request["cancellation"]["as_admin"] is True


async def test_unknown_grant(gw: ServiceWorld) -> None:
    with pytest.raises(ServiceError) as missing:
        await gw.service.revoke_grant(gw.p["adm"], "grt_nope", "x")
    assert (missing.value.code, missing.value.status) == ("not_found", 404)


async def test_listing_grants(gw: ServiceWorld) -> None:
    clock = gw.clock
    assert clock is not None
    ann = await granted(gw)
    clock.advance(seconds=1)
    dave = await granted(gw, "dave", target="box-2")
    clock.advance(seconds=1)
    old = await granted(gw, target="box-3")
    await gw.service.revoke_grant(gw.p["ann"], old["grant"]["id"], "wrong box")

    async def ids(who: str, **options: Any) -> list[str]:
        return [g["id"] for g in await gw.service.list_grants(gw.p[who], **options)]

    a, d, o = ann["grant"]["id"], dave["grant"]["id"], old["grant"]["id"]
    assert await ids("ann") == [o, a]  # newest first, own only
    assert await ids("ann", active=True) == [a]
    assert await ids("dave") == [d]
    assert await ids("bob") == []  # approvers see their requests, not others' grants
    assert set(await ids("adm")) == set(await ids("aud")) == {a, d, o}
    assert await ids("adm", mine=True) == []
    assert set(await ids("adm", active=True)) == {a, d}
    (view,) = await gw.service.list_grants(gw.p["dave"])
    assert view["request_id"] == dave["id"]
    assert view["rules"] == ["box-delete"]
    assert (view["scope"], view["target"], view["environment"]) == ("rule", "box-2", "production")
    clock.advance(minutes=31)
    assert await ids("adm", active=True) == []
    with pytest.raises(ServiceError) as bad:
        await gw.service.list_grants(gw.p["adm"], limit=0)
    assert bad.value.code == "invalid_query"


# --- the invariant, over random actions -------------------------------------------------

USERS = ("ann", "dave")
TARGETS = ("box-1", "box-2", "one")
ENVIRONMENTS = ("prod", "staging")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    who=st.sampled_from(USERS),
    target=st.sampled_from(TARGETS),
    env=st.sampled_from(ENVIRONMENTS),
    statement=st.sampled_from(sorted(STATEMENTS)),
    minutes=st.integers(-2, 35),
    revoked=st.booleans(),
)
async def test_a_submission_is_allowed_by_a_grant_iff_it_is_covered(
    db: Database,
    who: str,
    target: str,
    env: str,
    statement: str,
    minutes: int,
    revoked: bool,
) -> None:
    """One RULE grant (ann, box-1, production, box-delete, 30 minutes), maybe
    revoked; a random action at a random time: allowed without a request
    exactly when every condition holds, with one ``grant.applied`` then."""
    world = await _grant_world(db)
    clock = world.clock
    assert clock is not None
    grant_id, issued = world.grant_id, world.issued_at
    if revoked and not world.revoked:
        await world.service.revoke_grant(world.p["ann"], grant_id, "property test")
        world.revoked = True
    clock.now = issued + timedelta(minutes=minutes)
    applied_before = len(await typed_events(world, "grant.applied"))

    submission = await submit(world, who, statement=statement, target=target, env=env)

    covered = (
        not world.revoked
        and who == "ann"
        and target == "box-1"
        and env == "prod"
        and statement == "delete"
        and 0 <= minutes < 30
    )
    # The decision is the policy's whatever the grant did.
    assert submission.decision.outcome is _policy_outcome(target, statement)
    if covered:
        assert submission.grant is not None
        assert submission.grant["id"] == grant_id
        assert submission.request is None
        assert submission.decision.outcome is Outcome.REQUIRE_APPROVAL
    else:
        assert submission.grant is None
        if submission.decision.outcome is Outcome.REQUIRE_APPROVAL:
            assert submission.request is not None, "held nowhere"
    applied_after = len(await typed_events(world, "grant.applied"))
    assert applied_after - applied_before == (1 if covered else 0)


def _policy_outcome(target: str, statement: str) -> Outcome:
    if target == "one":
        return Outcome.REQUIRE_APPROVAL
    if "truncate" in statement:
        return Outcome.DENY
    return Outcome.ALLOW if statement == "select" else Outcome.REQUIRE_APPROVAL


class _GrantWorld(ServiceWorld):
    grant_id: str
    issued_at: Any
    revoked: bool


async def _grant_world(db: Database) -> _GrantWorld:
    """One world per database: hypothesis runs every example on the test's
    one ``db`` fixture, so the grant is made by the first example."""
    world: _GrantWorld | None = getattr(db, "_grant_world", None)
    if world is not None:
        return world
    base = await make_world(db)
    assert base.clock is not None
    world = _GrantWorld(db, base.clock)
    world.tokens, world.p = base.tokens, base.p
    world.service = ApprovalService(db, Evaluator(_policy), clock=base.clock)
    view = await granted(world)
    world.grant_id = view["grant"]["id"]
    async with db.transaction(readonly=True) as session:
        row = await GrantRepository(session).get(world.grant_id)
    assert row is not None
    world.issued_at = row.issued_at
    world.revoked = False
    db._grant_world = world  # type: ignore[attr-defined]
    return world


# --- executions that never report ----------------------------------------------------


async def test_the_ticker_fails_an_execution_that_never_reports(gw: ServiceWorld) -> None:
    view = await granted(gw, target="one")
    running = await gw.service.authorize(gw.p["ann"], view["id"], view["fingerprint"])
    assert running["status"] == "executing"
    deadline = running["execution"]["deadline"]
    assert deadline is not None
    clock = gw.clock
    assert clock is not None
    assert await gw.service.earliest_deadline() == clock.now + timedelta(hours=1)

    clock.advance(minutes=59)
    assert await gw.service.run_due() == 0
    clock.advance(minutes=1)
    assert await gw.service.run_due() == 1

    failed = await gw.service.get(gw.p["ann"], view["id"])
    assert failed["status"] == "failed"
    assert failed["execution"]["reported_by"] == "jitgate"
    assert failed["execution"]["error"] == "no outcome reported within 1h"
    assert failed["execution"]["finished_at"] == deadline
    (finished,) = await typed_events(gw, "execution.finished")
    assert finished.actor is None
    assert finished.payload["by"] == "jitgate"
    assert finished.payload["succeeded"] is False
    assert await gw.service.earliest_deadline() is None
    # The executor coming back too late is refused: the request is final.
    with pytest.raises(ServiceError) as late:
        await gw.service.report_outcome(gw.p["ann"], view["id"], exit_code=0)
    assert late.value.code == "not_executing"
