"""Failed authentications: coalesced ``auth.failed`` events and the 429 lockout.

Through the real app (httpx ASGI transport, one client per peer address) on
the real store, with the service on a fake clock. The decisions under test
(jitgate.service.throttle):

* every failure is counted: the events of an address, flushed, add up to its
  failures, however few events there are;
* an address with ``max_failures`` failures in the window gets 429
  ``too_many_failures`` with ``Retry-After`` for ANY token, valid ones
  included, without a database access: a lockout that checked tokens would
  still be a guessing oracle and a load on the store. Below the limit a valid
  token works, and a success does not reset the count;
* other addresses are unaffected;
* no event carries more of a token than its first 8 characters.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conftest import SERVER_POLICY, FakeClock
from jitgate.evaluator import Evaluator
from jitgate.policy import load_policy_text
from jitgate.server import create_app
from jitgate.service import ApprovalService
from jitgate.service.throttle import PREFIX_LENGTH, AuthThrottle, TooManyFailures, token_prefix
from jitgate.store import Database, EventRow, Identity, hash_token, list_events
from jitgate.store.tables import EventTable

API = "/api/v1/requests"
ATTACKER = "203.0.113.66"
NEIGHBOUR = "198.51.100.7"


def bad_token() -> str:
    return "jg_" + secrets.token_urlsafe(32)


class Env:
    def __init__(self, db: Database, clock: FakeClock, service: ApprovalService, app: Any):
        self.db = db
        self.clock = clock
        self.service = service
        self.app = app
        self.tokens: dict[str, str] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.tried: list[str] = []

    def client(self, address: str) -> httpx.AsyncClient:
        if address not in self._clients:
            transport = httpx.ASGITransport(app=self.app, client=(address, 40_000))
            self._clients[address] = httpx.AsyncClient(
                transport=transport, base_url="http://jitgate"
            )
        return self._clients[address]

    async def get(self, address: str, token: str) -> httpx.Response:
        self.tried.append(token)
        return await self.client(address).get(API, headers={"Authorization": f"Bearer {token}"})

    async def failures(self) -> list[EventRow]:
        async with self.db.transaction(readonly=True) as session:
            return [e for e in await list_events(session) if e.type == "auth.failed"]

    async def stored_text(self) -> str:
        async with self.db.transaction(readonly=True) as session:
            rows = (await session.execute(select(EventTable.__table__))).all()
        return "\n".join(repr(tuple(row)) for row in rows)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()


@contextlib.asynccontextmanager
async def make_env(db: Database, throttle: AuthThrottle | None = None) -> AsyncIterator[Env]:
    clock = FakeClock()
    service = ApprovalService(
        db, Evaluator(load_policy_text(SERVER_POLICY, "server-tests.yaml")), clock=clock
    )
    if throttle is not None:
        service.auth_throttle = throttle
    env = Env(db, clock, service, create_app(service))
    async with db.transaction() as session:
        identity = Identity(session)
        for name in ("ann", "bob"):
            await identity.add_user(name, ["dev"], now=clock() - timedelta(days=1))
            env.tokens[name], _ = await identity.create_token(name, "t", now=clock())
    try:
        yield env
    finally:
        await service.stop()
        await env.close()


@contextlib.contextmanager
def database_unreachable(db: Database) -> Iterator[None]:
    """Any transaction fails: proves a code path does not touch the store."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the database was touched")

    original = db.transaction
    db.transaction = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        db.transaction = original  # type: ignore[method-assign]


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def by_client(events: list[EventRow], client: str | None) -> list[EventRow]:
    return [e for e in events if e.payload["client"] == client]


# --- through the API ----------------------------------------------------------------


async def test_a_flood_is_coalesced_then_refused_without_the_database(db: Database) -> None:
    async with make_env(db) as env:
        # 100 bad tokens, one every 5 s: 12 a minute, under the lockout limit,
        # so every one is checked (401) and counted ...
        for _ in range(100):
            response = await env.get(ATTACKER, bad_token())
            assert error_of(response) == (401, "unauthenticated")
            env.clock.advance(seconds=5)
        # ... in one event at once, then at most one a minute: 9, not 100
        events = await env.failures()
        assert [e.payload["count"] for e in events] == [1] + [12] * 8
        assert all(e.payload["client"] == ATTACKER for e in events)
        assert all(e.payload["throttled"] == 0 for e in events)

        # a burst: the 20th failure within a minute locks the address out
        statuses = []
        for _ in range(30):
            response = await env.get(ATTACKER, bad_token())
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
        assert statuses[-1] == 429
        verified = len(statuses) - 1  # the window held 11 failures (445 s .. 495 s)
        assert verified == 20 - 11
        assert response.json() == {
            "error": {
                "code": "too_many_failures",
                "message": response.json()["error"]["message"],
            }
        }
        # the oldest failure in the window (at 445 s) leaves it at 505 s; it is 500 s
        assert response.headers["retry-after"] == "5"

        # locked out: a valid token too, and without touching the database
        before = await env.stored_text()
        with database_unreachable(db):
            for token in (bad_token(), env.tokens["ann"], "short"):
                response = await env.get(ATTACKER, token)
                assert error_of(response) == (429, "too_many_failures")
                assert response.headers["retry-after"] == "5"
        assert await env.stored_text() == before

        # another address is unaffected: valid tokens work, a failure is its own event
        assert (await env.get(NEIGHBOUR, env.tokens["bob"])).status_code == 200
        assert error_of(await env.get(NEIGHBOUR, bad_token())) == (401, "unauthenticated")
        neighbour = by_client(await env.failures(), NEIGHBOUR)
        assert [e.payload["count"] for e in neighbour] == [1]

        # once Retry-After has passed, the address is heard again
        env.clock.advance(seconds=5)
        assert (await env.get(ATTACKER, env.tokens["ann"])).status_code == 200
        assert error_of(await env.get(ATTACKER, bad_token())) == (401, "unauthenticated")
        refused = 4  # the burst's 429 and the three above

    # stop() wrote what was pending: every failure is accounted for
    events = by_client(await env.failures(), ATTACKER)
    assert len(events) <= 12
    assert sum(e.payload["count"] for e in events) == 100 + verified + 1
    assert sum(e.payload["throttled"] for e in events) == refused
    assert all(e.actor is None for e in events)
    # no token material beyond an 8-character prefix
    text = await env.stored_text()
    for token in {*env.tried, *env.tokens.values()}:
        assert token not in text
        assert hash_token(token) not in text
    # (valid tokens have their 10-character display prefix in token.created)
    for token in set(env.tried) - set(env.tokens.values()):
        assert token[: PREFIX_LENGTH + 1] not in text
    prefixes = [p for e in events for p in e.payload["token_prefixes"]]
    assert prefixes
    assert all(len(p) == PREFIX_LENGTH and p.startswith("jg_") for p in prefixes)


async def test_valid_tokens_work_below_the_limit_and_do_not_reset_it(db: Database) -> None:
    async with make_env(db, AuthThrottle(max_failures=5)) as env:
        for _ in range(4):
            assert (await env.get(ATTACKER, bad_token())).status_code == 401
        # below the limit a valid token from the same address is accepted ...
        for _ in range(3):
            assert (await env.get(ATTACKER, env.tokens["ann"])).status_code == 200
        # ... and buys no extra guesses: the 5th failure reaches the limit
        assert (await env.get(ATTACKER, bad_token())).status_code == 401
        response = await env.get(ATTACKER, env.tokens["ann"])
        assert error_of(response) == (429, "too_many_failures")
        assert response.headers["retry-after"] == "60"
        env.clock.advance(seconds=30)
        assert (await env.get(ATTACKER, env.tokens["ann"])).headers["retry-after"] == "30"
        env.clock.advance(seconds=30)
        assert (await env.get(ATTACKER, env.tokens["ann"])).status_code == 200


async def test_pending_counts_are_flushed_by_the_ticker_and_by_stop(db: Database) -> None:
    async with make_env(db) as env:
        for _ in range(3):
            assert (await env.get(ATTACKER, bad_token())).status_code == 401
        assert [e.payload["count"] for e in await env.failures()] == [1]
        # nothing due yet: the periodic flush (the ticker's) writes nothing
        assert await env.service.flush_auth_failures() == 0
        env.clock.advance(seconds=60)
        # due now: written without waiting for another failure
        assert await env.service.flush_auth_failures() == 1
        assert [e.payload["count"] for e in await env.failures()] == [1, 2]
        assert await env.service.flush_auth_failures() == 0
        # pending at shutdown: the app's lifespan stops the service, which writes it
        async with env.app.router.lifespan_context(env.app):
            for _ in range(4):
                assert (await env.get(ATTACKER, bad_token())).status_code == 401
        events = await env.failures()
        assert sum(e.payload["count"] for e in events) == 7
        assert env.service.auth_throttle.pending is False


async def test_a_failed_write_keeps_the_counts(db: Database) -> None:
    async with make_env(db) as env:
        original = db.transaction

        def read_only(*, readonly: bool = False) -> Any:
            if not readonly:
                raise AssertionError("writes fail")
            return original(readonly=True)

        db.transaction = read_only  # type: ignore[method-assign]
        try:
            # the failure's event cannot be written: the attempt fails (500) ...
            with pytest.raises(AssertionError, match="writes fail"):
                await env.service.authenticate(bad_token(), ATTACKER)
        finally:
            db.transaction = original  # type: ignore[method-assign]
        # ... and its failure is reported later, not dropped
        assert await env.service.authenticate(bad_token(), ATTACKER) is None
        await env.service.stop()
        assert sum(e.payload["count"] for e in await env.failures()) == 2


async def test_tracked_addresses_are_bounded_and_evictions_counted(db: Database) -> None:
    throttle = AuthThrottle(max_clients=8)
    async with make_env(db, throttle) as env:
        for i in range(30):
            for _ in range(3):
                assert await env.service.authenticate(bad_token(), f"10.1.0.{i}") is None
            assert len(throttle) <= 8
        await env.service.stop()
        events = await env.failures()
        assert sum(e.payload["count"] for e in events) == 90
        overflow = by_client(events, None)
        assert overflow
        # each evicted address had 2 failures pending (its first was written at once)
        assert sum(e.payload["evicted_clients"] for e in overflow) == 22
        assert len(events) == 30 + 8 + len(overflow)


async def test_unknown_address_is_one_bucket(db: Database) -> None:
    async with make_env(db, AuthThrottle(max_failures=2)) as env:
        s = env.service
        assert await s.authenticate(bad_token()) is None
        assert await s.authenticate(bad_token(), None) is None
        with pytest.raises(TooManyFailures) as refused:
            await s.authenticate(env.tokens["ann"])
        assert refused.value.status == 429
        assert refused.value.retry_after == 60
        assert await s.authenticate(env.tokens["ann"], NEIGHBOUR) is not None


# --- the bookkeeping alone ------------------------------------------------------------


def test_token_prefixes() -> None:
    assert token_prefix("jg_abcdefghij") == "jg_abcde"
    assert token_prefix("12345678") is None  # would be the whole token
    assert token_prefix("123456789") == "12345678"
    assert token_prefix("") is None


def test_reports_and_limits() -> None:
    t0 = FakeClock().now
    throttle = AuthThrottle(max_prefixes=2)
    (first,) = throttle.failure("a", "jg_aaaaaaaaaaaa", t0)
    assert first.payload() == {
        "reason": "invalid_token",
        "client": "a",
        "count": 1,
        "throttled": 0,
        "token_prefixes": ["jg_aaaaa"],
        "first_at": t0.isoformat(),
        "last_at": t0.isoformat(),
    }
    for i, token in enumerate(["jg_bbbbbbbbb", "jg_bbbbbbbbb", "jg_ccccccccc", "x"]):
        assert throttle.failure("a", token, t0 + timedelta(seconds=i + 1)) == []
    (second,) = throttle.due(t0 + timedelta(seconds=60))
    assert second.count == 4
    assert second.token_prefixes == ("jg_bbbbb", "jg_ccccc")
    assert "prefixes_truncated" not in second.payload()
    assert second.first_at == t0 + timedelta(seconds=1)
    # limit: 20 failures within 60 s, counted over a sliding window
    throttle = AuthThrottle()
    for i in range(20):
        assert throttle.check("b", t0 + timedelta(seconds=i)) is None
        throttle.failure("b", "bad", t0 + timedelta(seconds=i))
    assert throttle.check("b", t0 + timedelta(seconds=20)) == 40
    assert throttle.check("b", t0 + timedelta(seconds=59, milliseconds=500)) == 1
    # a clock that went back does not unlock the address
    assert throttle.check("b", t0 - timedelta(hours=1)) == 60
    assert throttle.check("b", t0 + timedelta(seconds=60)) is None  # the first one left
    (report,) = throttle.drain(t0 + timedelta(seconds=61))
    assert report.throttled == 3
    assert throttle.drain(t0 + timedelta(seconds=62)) == []


def test_prefix_truncation_is_reported() -> None:
    t0 = FakeClock().now
    throttle = AuthThrottle(max_prefixes=1)
    throttle.failure("a", "jg_aaaaaaaa", t0)
    throttle.failure("a", "jg_bbbbbbbb", t0)
    throttle.failure("a", "jg_cccccccc", t0)
    (report,) = throttle.drain(t0)
    assert report.token_prefixes == ("jg_bbbbb",)
    assert report.payload()["prefixes_truncated"] is True
