"""The approval service end to end on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from conftest import SERVICE_MFA, ServiceWorld
from jitgate.policy import Outcome
from jitgate.service import ServiceError
from jitgate.store import GrantRepository, Identity, RequestRepository, append_event


async def refused(coro: Any, code: str, status: int) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        await coro
    assert (caught.value.code, caught.value.status) == (code, status), caught.value.message
    return caught.value


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


VIEW_KEYS = {
    "id", "status", "requester", "created_at", "updated_at", "expires_at", "action",
    "fingerprint", "decision", "chain", "stages", "current_stage", "waiting_for", "denial",
    "cancellation", "break_glass", "review", "grant", "execution",
}  # fmt: skip
STAGE_KEYS = {
    "name", "groups", "eligible_groups", "approvals_required", "quorum", "mfa", "state",
    "started_at", "deadline", "escalated_at", "approvals",
}  # fmt: skip


def check_view_shape(view: Mapping[str, Any]) -> None:
    assert set(view) >= VIEW_KEYS
    assert set(view["action"]) == {
        "kind", "text", "payload", "target", "environment", "attributes",
    }  # fmt: skip
    for stage in view["stages"]:
        assert set(stage) >= STAGE_KEYS
        assert stage["state"] in {"waiting", "active", "completed", "escalated"}
        for approval in stage["approvals"]:
            assert set(approval) == {"user", "group", "at", "comment", "mfa"}
    text = json.dumps(view)
    for secret in SERVICE_MFA.values():
        assert secret not in text
    assert "jg_" not in text
    assert view["created_at"].endswith("Z")


async def test_two_stage_lifecycle_with_quorum_all_and_mfa(world: ServiceWorld) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    changes: list[tuple[str, Mapping[str, Any]]] = []
    s.on_change.append(lambda topic, data: changes.append((topic, data)))

    view = await world.submit("ann", "two", text="DELETE FROM invoices")
    check_view_shape(view)
    rid = view["id"]
    assert view["status"] == "pending"
    assert view["requester"] == "ann"
    assert view["action"]["environment"] == "production"
    assert view["decision"]["decision"] == "require_approval"
    assert [st["state"] for st in view["stages"]] == ["active", "waiting"]
    assert view["waiting_for"] == {"stage": "approvers", "groups": ["approvers"],
                                   "approvals_needed": 1}  # fmt: skip
    assert view["current_stage"] == 0
    assert view["grant"] is None

    clock.advance(minutes=1)
    view = await s.approve(p["bob"], rid, comment="fine")
    assert [st["state"] for st in view["stages"]] == ["completed", "active"]
    assert view["stages"][0]["approvals"][0]["user"] == "bob"
    assert view["stages"][0]["approvals"][0]["group"] == "approvers"
    assert view["stages"][0]["approvals"][0]["comment"] == "fine"
    assert view["waiting_for"] == {"stage": "security", "groups": ["dba", "security"],
                                   "approvals_needed": 2}  # fmt: skip
    assert view["stages"][1]["approvals_required"] == 2

    await refused(s.approve(p["dan"], rid), "mfa_required", 403)
    wrong = "000000" if world.otp("dan") != "000000" else "111111"
    await refused(s.approve(p["dan"], rid, otp=wrong), "mfa_invalid", 403)
    await refused(s.approve(p["dora"], rid, otp="123456"), "mfa_not_enrolled", 403)
    # bob already filled stage 1 (separation of duties) and is not in dba/security.
    await refused(s.approve(p["bob"], rid, otp="123456"), "already_filled_stage", 403)

    view = await s.approve(p["dan"], rid, otp=world.otp("dan"))
    assert view["status"] == "pending"
    assert view["waiting_for"] == {"stage": "security", "groups": ["security"],
                                   "approvals_needed": 1}  # fmt: skip
    assert view["stages"][1]["approvals"][0]["mfa"] is True
    await refused(s.approve(p["dora"], rid, otp="123456"), "group_satisfied", 409)

    clock.advance(minutes=1)
    view = await s.approve(p["sam"], rid, otp=world.otp("sam"))
    check_view_shape(view)
    assert view["status"] == "approved"
    assert view["waiting_for"] is None
    assert view["current_stage"] is None
    grant = view["grant"]
    assert grant["fingerprint"] == view["fingerprint"]
    assert grant["used_at"] is None
    assert grant["scope"] == "action"

    fp = view["fingerprint"]
    other = fp[:-1] + ("0" if fp[-1] != "0" else "1")
    await refused(s.authorize(p["ann"], rid, other), "grant_mismatch", 409)
    await refused(s.authorize(p["bob"], rid, fp), "not_requester", 403)
    await refused(s.report_outcome(p["ann"], rid, exit_code=0), "not_executing", 409)

    view = await s.authorize(p["ann"], rid, fp)
    assert view["status"] == "executing"
    assert view["grant"]["used_at"] is not None
    await refused(s.authorize(p["ann"], rid, fp), "grant_used", 409)

    await refused(s.report_outcome(p["ann"], rid), "outcome_required", 422)
    clock.advance(seconds=3)
    view = await s.report_outcome(p["ann"], rid, exit_code=0, rows_affected=3, duration_ms=12)
    assert view["status"] == "executed"
    assert view["execution"] == {
        "executor": "ann",
        "started_at": "2031-03-04T10:02:00Z",
        "finished_at": "2031-03-04T10:02:03Z",
        "exit_code": 0,
        "rows_affected": 3,
        "error": None,
        "reported_by": "ann",
        "duration_ms": 12,
        "deadline": "2031-03-04T11:02:00Z",
    }
    assert await s.get(p["ann"], rid) == view

    trail = await world.events(rid)
    assert types(trail) == [
        "request.created", "stage.started",
        "approval.given", "stage.completed", "stage.started",
        "approval.given",
        "approval.given", "stage.completed", "request.approved", "grant.issued",
        "grant.consumed", "execution.started",
        "execution.finished",
    ]  # fmt: skip
    assert [e.actor for e in trail] == ["ann"] * 2 + ["bob"] * 3 + ["dan"] + ["sam"] * 4 + [
        "ann"
    ] * 3
    assert trail[2].payload["approver"] == "bob"
    assert trail[2].payload["comment"] == "fine"

    async with world.db.transaction(readonly=True) as session:
        (stored,) = await GrantRepository(session).for_request(rid)
        row = await RequestRepository(session).get(rid)
    assert stored.used_at is not None
    assert stored.fingerprint == fp
    assert row is not None
    assert row.status == "executed"
    assert row.next_deadline is None

    topics = [t for t, _ in changes]
    assert topics.count("decided") == 1
    decided = next(d for t, d in changes if t == "decided")
    assert decided["outcome"] == "approved"
    assert decided["seconds"] == 120.0
    statuses = [d["status"] for t, d in changes if t == "status"]
    assert statuses == ["pending", "approved", "executing", "executed"]
    assert s.stats.statuses["executed"] == 1
    assert s.stats.decisions["require_approval"] == 1


async def test_deny(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    rid = (await world.submit("ann"))["id"]
    await refused(s.deny(p["bob"], rid, "  "), "reason_required", 422)
    await refused(s.deny(p["ann"], rid, "no"), "self_denial", 403)
    view = await s.deny(p["bob"], rid, "not on a Friday")
    assert view["status"] == "denied"
    assert view["denial"]["by"] == "bob"
    assert view["denial"]["reason"] == "not on a Friday"
    assert view["waiting_for"] is None
    await refused(s.approve(p["bea"], rid), "not_pending", 409)
    await refused(s.authorize(p["ann"], rid, view["fingerprint"]), "not_approved", 409)
    assert types(await world.events(rid))[-1] == "request.denied"
    assert s.stats.decision_seconds[-1] == 0.0


async def test_cancel_by_requester_and_admin(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    mine = (await world.submit("ann"))["id"]
    await refused(s.cancel(p["dave"], mine), "not_found", 404)
    await refused(s.cancel(p["bob"], mine), "not_requester", 403)
    view = await s.cancel(p["ann"], mine)
    assert view["status"] == "cancelled"
    assert view["cancellation"]["by"] == "ann"
    await refused(s.cancel(p["ann"], mine), "not_pending", 409)

    other = (await world.submit("ann"))["id"]
    await refused(s.cancel(p["adm"], other), "reason_required", 422)
    view = await s.cancel(p["adm"], other, reason="change freeze")
    assert view["cancellation"] == {
        "by": "adm", "reason": "change freeze", "at": view["updated_at"], "as_admin": True,
    }  # fmt: skip
    await refused(s.cancel(p["aud"], other), "forbidden", 403)


async def test_break_glass_and_review(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    held = (await world.submit("ann"))["id"]
    await refused(s.break_glass(p["ann"], held, "prod is on fire"), "break_glass_not_allowed", 403)

    rid = (await world.submit("ann", "glass"))["id"]
    await refused(s.break_glass(p["bob"], rid, "prod is on fire!"), "not_requester", 403)
    await refused(s.break_glass(p["ann"], rid, "urgent"), "justification_required", 422)
    view = await s.break_glass(p["ann"], rid, "prod is on fire, INC-42")
    assert view["status"] == "approved"
    assert view["break_glass"]["by"] == "ann"
    assert view["review_required"] is True
    assert view["review"] is None
    assert view["grant"]["break_glass"] is True
    await refused(s.review(p["ann"], rid, "ok"), "self_review", 403)
    await refused(s.review(p["carol"], rid, "ok"), "not_found", 404)
    await refused(s.review(p["bob"], rid, "meh"), "invalid_request", 422)
    await refused(s.review(p["bob"], rid, "concern"), "reason_required", 422)
    view = await s.review(p["bob"], rid, "concern", "should have called the on-call lead")
    assert view["review"]["verdict"] == "concern"
    assert view["review"]["by"] == "bob"
    await refused(s.review(p["bea"], rid, "ok"), "already_reviewed", 409)
    view = await s.authorize(p["ann"], rid, view["fingerprint"])
    assert view["status"] == "executing"
    trail = types(await world.events(rid))
    assert trail[2:5] == ["break_glass.used", "request.approved", "grant.issued"]
    assert "review.recorded" in trail


async def test_break_glass_needs_mfa_when_the_chain_does(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    rid = (await world.submit("ann", "glass-mfa"))["id"]
    await refused(s.break_glass(p["ann"], rid, "prod is on fire, INC-42"), "mfa_required", 403)
    view = await s.break_glass(p["ann"], rid, "prod is on fire, INC-42", otp=world.otp("ann"))
    assert view["status"] == "approved"


async def test_expiry_via_run_due(world: ServiceWorld) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    rid = (await world.submit("ann"))["id"]
    assert await s.run_due() == 0
    clock.advance(minutes=59)
    assert await s.run_due() == 0
    assert await s.earliest_deadline() == (await _row(world, rid)).expires_at
    clock.advance(minutes=1)
    assert await s.run_due() == 1
    view = await s.get(p["ann"], rid)
    assert view["status"] == "expired"
    assert view["expiry"]["reason"] == "ttl"
    assert types(await world.events(rid))[-1] == "request.expired"
    assert (await world.events(rid))[-1].actor is None
    assert await s.run_due() == 0
    assert await s.earliest_deadline() is None


async def test_a_command_after_the_deadline_commits_the_expiry(world: ServiceWorld) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    rid = (await world.submit("ann"))["id"]
    clock.advance(hours=2)
    await refused(s.approve(p["bob"], rid), "request_expired", 409)
    assert (await s.get(p["ann"], rid))["status"] == "expired"
    assert types(await world.events(rid))[-1] == "request.expired"


async def test_escalation_via_run_due(world: ServiceWorld) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    view = await world.submit("ann", "escalating")
    rid = view["id"]
    assert view["stages"][0]["deadline"] == "2031-03-04T10:10:00Z"
    assert (await s.get(p["leo"], rid))["id"] == rid  # escalation targets see it
    await refused(s.approve(p["leo"], rid), "not_eligible", 403)
    clock.advance(minutes=10)
    assert await s.run_due() == 1
    view = await s.get(p["leo"], rid)
    assert view["stages"][0]["state"] == "escalated"
    assert view["stages"][0]["eligible_groups"] == ["approvers", "leads"]
    assert view["stages"][0]["deadline"] == "2031-03-04T10:20:00Z"
    assert view["waiting_for"]["groups"] == ["approvers", "leads"]
    (escalated,) = [e for e in await world.events(rid) if e.type == "stage.escalated"]
    assert escalated.payload["notify_groups"] == ["leads"]
    assert escalated.actor is None
    view = await s.approve(p["leo"], rid)
    assert view["status"] == "approved"


async def test_escalated_stage_times_out(world: ServiceWorld) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    rid = (await world.submit("ann", "escalating"))["id"]
    clock.advance(minutes=25)
    assert await s.run_due() == 1
    view = await s.get(p["ann"], rid)
    assert view["status"] == "expired"
    assert view["expiry"]["reason"] == "stage_timeout"
    assert types(await world.events(rid))[-3:] == [
        "stage.escalated", "stage.timed_out", "request.expired",
    ]  # fmt: skip


async def test_unused_grant_expires(world: ServiceWorld) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    rid = (await world.submit("ann"))["id"]
    view = await s.approve(p["bob"], rid)
    clock.advance(minutes=5)
    await refused(s.authorize(p["ann"], rid, view["fingerprint"]), "grant_expired", 409)
    view = await s.get(p["ann"], rid)
    assert view["status"] == "expired"
    assert view["expiry"]["reason"] == "grant_expired"


async def test_failed_outcome_and_service_account_on_behalf(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    view = await world.submit("svc", user="ann")
    rid = view["id"]
    assert view["requester"] == "ann"
    assert view["submitted_by"] == "svc"
    await refused(s.approve(p["ann"], rid), "self_approval", 403)
    await s.approve(p["bob"], rid)
    view = await s.authorize(p["svc"], rid, view["fingerprint"])
    assert view["execution"]["executor"] == "ann"
    view = await s.report_outcome(p["svc"], rid, exit_code=2, error="boom")
    assert view["status"] == "failed"
    assert view["execution"]["reported_by"] == "svc"
    trail = await world.events(rid)
    assert trail[0].actor == "svc"
    assert trail[-1].actor == "svc"
    assert trail[-1].payload["succeeded"] is False


async def test_no_eligible_approvers(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    for target in ("nobody", "lonely"):
        body = {"kind": "sql", "text": "DELETE FROM t", "env": "prod", "target": target}
        error = await refused(s.submit(p["ann"], body), "no_eligible_approvers", 409)
        assert "solo" in error.message or "ghosts" in error.message
    # the same chain is fine for someone who is not the only member of solo
    assert (await world.submit("dave", "lonely"))["status"] == "pending"
    async with world.db.transaction(readonly=True) as session:
        rows = await RequestRepository(session).list()
    assert [r.requester for r in rows] == ["dave"]
    refusals = [e for e in await world.events() if e.type == "request.refused"]
    assert len(refusals) == 2
    assert all(e.request_id is None and e.actor == "ann" for e in refusals)
    assert s.stats.refused == 2


async def test_no_eligible_approvers_counts_distinct_people(world: ServiceWorld) -> None:
    """Quorum all over dba and security: one person in both groups is not enough."""
    async with world.db.transaction() as session:
        identity = Identity(session)
        for user in ("dan", "dora", "sam"):
            await identity.disable_user(user)
        await identity.add_user("both", ["dba", "security"])
    body = {"kind": "sql", "text": "DELETE FROM t", "env": "prod", "target": "two"}
    await refused(world.service.submit(world.p["ann"], body), "no_eligible_approvers", 409)
    async with world.db.transaction() as session:
        await Identity(session).enable_user("sam")
    assert (await world.service.submit(world.p["ann"], body)).request is not None


async def test_evaluate_and_submit_outside_approval(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    allow = {"kind": "sql", "text": "SELECT 1", "env": "dev", "target": "x"}
    decision = await s.evaluate(p["ann"], allow)
    assert decision.outcome is Outcome.ALLOW
    submission = await s.submit(p["ann"], allow)
    assert submission.request is None
    assert submission.decision.outcome is Outcome.ALLOW
    deny = {"kind": "sql", "text": "SELECT 1", "env": "dev", "target": "deny"}
    submission = await s.submit(p["ann"], deny)
    assert submission.request is None
    assert submission.decision.outcome is Outcome.DENY
    held = {"kind": "sql", "text": "DELETE FROM t", "env": "prod", "target": "one"}
    assert (await s.evaluate(p["ann"], held)).outcome is Outcome.REQUIRE_APPROVAL
    trail = await world.events()
    assert types(trail) == ["action.denied", "action.evaluated"]
    assert trail[1].payload["action"]["text"] == "DELETE FROM t"
    assert trail[1].payload["decision"]["decision"] == "require_approval"
    async with world.db.transaction(readonly=True) as session:
        assert await RequestRepository(session).list() == []
    assert s.stats.decisions == {"allow": 2, "deny": 1, "require_approval": 1}


async def test_action_bodies(world: ServiceWorld) -> None:
    s, p = world.service, world.p
    body = {"kind": "sql", "text": "DELETE FROM t", "env": "prod", "target": "one"}
    await refused(s.evaluate(p["ann"], {**body, "user": "bob"}), "forbidden", 403)
    await refused(s.evaluate(p["ann"], {**body, "groups": ["admins"]}), "invalid_body", 400)
    await refused(s.evaluate(p["ann"], {**body, "at": "2020-01-01T00:00:00Z"}), "invalid_body", 400)
    await refused(s.evaluate(p["ann"], {**body, "kind": "sqll"}), "invalid_action", 400)
    await refused(s.evaluate(p["svc"], {**body, "user": "nobody"}), "unknown_user", 400)
    await refused(s.submit(p["aud"], body), "forbidden", 403)
    # own name is harmless
    assert (await s.evaluate(p["ann"], {**body, "user": "ann"})).outcome is Outcome.REQUIRE_APPROVAL
    # a service account acting for bob gets bob's groups from the store
    view = (await s.submit(p["svc"], {**body, "target": "lonely", "user": "dave"})).request
    assert view is not None
    assert view["requester"] == "dave"


async def test_authenticate(world: ServiceWorld) -> None:
    s = world.service
    principal = await s.authenticate(world.tokens["svc"])
    assert principal is not None
    assert principal.is_service_account
    assert principal.user == "svc"
    bob = await s.authenticate(world.tokens["bob"])
    assert bob is not None
    assert bob.groups == frozenset({"approvers"})
    assert await s.authenticate("jg_nope") is None
    assert await s.authenticate("") is None
    async with world.db.transaction() as session:
        identity = Identity(session)
        await identity.disable_user("carol")
        (token,) = await identity.list_tokens("dave")
        await identity.revoke_token(token.id)
    assert await s.authenticate(world.tokens["carol"]) is None
    assert await s.authenticate(world.tokens["dave"]) is None
    # Coalesced per address (here unknown): the first failure at once, the
    # other three in one event when flushed (tests/test_auth_throttle.py).
    assert await s.flush_auth_failures(drain=True) == 1
    failures = [e for e in await world.events() if e.type == "auth.failed"]
    assert [e.payload["count"] for e in failures] == [1, 3]
    dumped = json.dumps([e.payload for e in failures])
    for token in ("jg_nope", world.tokens["carol"], world.tokens["dave"]):
        assert token not in dumped
    assert all(len(prefix) == 8 for e in failures for prefix in e.payload["token_prefixes"])
    assert all(e.actor is None for e in failures)


async def test_list_filters_and_pages(world: ServiceWorld) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    ids = []
    for i in range(5):
        clock.advance(seconds=1)
        ids.append((await world.submit("ann" if i % 2 == 0 else "dave"))["id"])
    await s.approve(p["bob"], ids[0])
    clock.advance(seconds=1)
    lonely = (await world.submit("dave", "lonely"))["id"]

    views, cursor = await s.list(p["aud"])
    assert [v["id"] for v in views] == [lonely, *reversed(ids)]
    assert cursor is None
    views, cursor = await s.list(p["carol"])
    assert views == []
    assert cursor is None
    views, _ = await s.list(p["ann"])  # her own three, plus lonely (she is in solo)
    assert [v["id"] for v in views] == [lonely, ids[4], ids[2], ids[0]]
    views, _ = await s.list(p["ann"], mine=True)
    assert [v["id"] for v in views] == [ids[4], ids[2], ids[0]]
    views, _ = await s.list(p["bob"], awaiting_me=True)
    assert [v["id"] for v in views] == list(reversed(ids[1:]))
    views, _ = await s.list(p["bea"], status="approved")
    assert [v["id"] for v in views] == [ids[0]]
    views, _ = await s.list(p["bea"], status="approved,pending", awaiting_me=True)
    assert len(views) == 4

    seen: list[str] = []
    cursor = None
    while True:
        views, cursor = await s.list(p["bob"], limit=2, cursor=cursor)
        seen += [v["id"] for v in views]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    await refused(s.list(p["bob"], status="bogus"), "invalid_query", 400)
    await refused(s.list(p["bob"], limit=0), "invalid_query", 400)


async def test_events_are_written_only_with_their_state_change(world: ServiceWorld) -> None:
    """A grant the mirror says is used: the whole authorize rolls back, events too."""
    s, p = world.service, world.p
    rid = (await world.submit("ann"))["id"]
    view = await s.approve(p["bob"], rid)
    before = await world.events(rid)
    async with world.db.transaction() as session:
        (grant,) = await GrantRepository(session).for_request(rid)
        assert await GrantRepository(session).consume(grant.id, grant.issued_at)
    await refused(s.authorize(p["ann"], rid, view["fingerprint"]), "grant_used", 409)
    assert await world.events(rid) == before
    assert (await s.get(p["ann"], rid))["status"] == "approved"


async def test_unrelated_event_appends_do_not_disturb(world: ServiceWorld) -> None:
    async with world.db.transaction() as session:
        await append_event(session, "x.y", None, None, {}, world.service._now())
    rid = (await world.submit("ann"))["id"]
    assert (await world.service.approve(world.p["bob"], rid))["status"] == "approved"


async def _row(world: ServiceWorld, rid: str) -> Any:
    async with world.db.transaction(readonly=True) as session:
        return await RequestRepository(session).get(rid)


async def test_an_unreadable_request_does_not_stop_the_ticker(world: ServiceWorld) -> None:
    s, p, clock = world.service, world.p, world.clock
    assert clock is not None
    bad = (await world.submit("ann"))["id"]
    good = (await world.submit("dave"))["id"]
    async with world.db.transaction() as session:
        repo = RequestRepository(session)
        row = await repo.get(bad)
        assert row is not None
        assert await repo.update(replace(row, state={"format": 1, "request": {}}), row.version)
    clock.advance(hours=2)
    assert await s.run_due() == 1
    assert (await s.get(p["dave"], good))["status"] == "expired"
    assert await s.earliest_deadline() is None  # the stuck one does not count
    await refused(s.get(p["adm"], bad), "corrupt_request", 500)
    assert await s.run_due() == 0
