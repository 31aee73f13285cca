"""Database fixtures: a migrated, empty :class:`jitgate.store.Database` per test.

``db`` runs a test on both backends:

* ``sqlite``: a copy of a database file migrated once per run (copying is
  much faster than migrating), in the test's ``tmp_path``;
* ``postgresql``: a database created for this run (``jitgate_test_<hex>``),
  migrated once, truncated before each test, dropped at the end. The server
  is ``postgresql://postgres@127.0.0.1:5432/postgres`` unless
  ``JITGATE_TEST_PG`` names another one (any database on it: the fixture
  connects there to create and drop its own).

PostgreSQL being down is an error, not a skip: the store's concurrency
guarantees are only tested for real there.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

from jitgate.store import Database, metadata, migrate
from pgcluster import pg_cluster  # noqa: F401  (the private cluster with password auth)

PG_ENV = "JITGATE_TEST_PG"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_START_HINT = (
    "start the local server with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, "
    f"or point {PG_ENV} at another one (postgresql://user@host:port/postgres)"
)

_T = TypeVar("_T")


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on a private event loop in a worker thread (safe inside a running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _pg_server() -> URL:
    url = make_url(os.environ.get(PG_ENV) or DEFAULT_PG)
    url = url.set(drivername="postgresql")
    return url if url.database else url.set(database="postgres")


async def _pg_admin(server: URL, sql: str) -> None:
    conn = await asyncpg.connect(server.render_as_string(hide_password=False), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_pg_database() -> tuple[URL, str]:
    """Create an empty database on the test server: ``(server URL, name)``."""
    server = _pg_server()
    name = f"jitgate_test_{secrets.token_hex(6)}"
    try:
        run_sync(_pg_admin(server, f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        where = server.render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL for the store tests is unreachable at {where}: "
            f"{type(exc).__name__}: {exc}; {PG_START_HINT}",
            pytrace=False,
        )
    return server, name


def drop_pg_database(server: URL, name: str) -> None:
    run_sync(_pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a migrated PostgreSQL database that lives for the test run."""
    server, name = create_pg_database()
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        run_sync(migrate(url))
        yield url
    finally:
        drop_pg_database(server, name)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """URL of an empty (not migrated) PostgreSQL database, dropped after the test."""
    server, name = create_pg_database()
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        drop_pg_database(server, name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file, copied by each test that needs one."""
    path = tmp_path_factory.mktemp("sqlite-template") / "jitgate.db"
    run_sync(migrate(f"sqlite:///{path}"))
    # Closing the last connection checkpoints the WAL into the main file.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a migrated, empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "jitgate.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db(backend_url: str) -> AsyncIterator[Database]:
    """A migrated, empty :class:`Database` (SQLite, then PostgreSQL)."""
    database = Database(backend_url)
    if database.backend == "postgresql":
        # DELETE beats TRUNCATE by far on tables this small (TRUNCATE swaps files).
        async with database.transaction() as session:
            for table in reversed(metadata.sorted_tables):
                await session.execute(table.delete())
    try:
        yield database
    finally:
        await database.close()


# --- the approval service (tests/test_service_*.py) ---------------------------------


async def _empty_tables(database: Database) -> None:
    async with database.transaction() as session:
        for table in reversed(metadata.sorted_tables):
            await session.execute(table.delete())


@pytest.fixture
async def pg_db(pg_url: str) -> AsyncIterator[Database]:
    """A migrated, empty :class:`Database` on PostgreSQL only (LISTEN/NOTIFY tests)."""
    database = Database(pg_url)
    await _empty_tables(database)
    try:
        yield database
    finally:
        await database.close()


SERVICE_POLICY = """
version: 1
name: service-tests
default: allow
defaults: {ttl: 1h, grant_ttl: 5m}
chains:
  one:
    stages: [{name: approvers, groups: [approvers]}]
  two:
    stages:
      - {name: approvers, groups: [approvers]}
      - {name: security, groups: [dba, security], quorum: all, mfa: true}
  escalating:
    stages: [{name: approvers, groups: [approvers], timeout: 10m, escalate_to: [leads]}]
  glass:
    stages: [{name: approvers, groups: [approvers]}]
    break_glass: true
  glass-mfa:
    stages: [{name: secops, groups: [security], mfa: true}]
    break_glass: true
  nobody:
    stages: [{name: ghosts, groups: [ghosts]}]
  lonely:
    stages: [{name: solo, groups: [solo]}]
  three:
    stages: [{name: approvers, groups: [approvers], approvals: 3}]
  crowd:
    stages: [{name: crowd, groups: [crowd]}]
  short:
    stages: [{name: approvers, groups: [approvers]}]
    ttl: 1s
rules:
  - {id: one, match: {targets: [one]}, outcome: require_approval, chain: one}
  - {id: two, match: {targets: [two]}, outcome: require_approval, chain: two}
  - {id: esc, match: {targets: [escalating]}, outcome: require_approval, chain: escalating}
  - {id: glass, match: {targets: [glass]}, outcome: require_approval, chain: glass}
  - {id: glass-mfa, match: {targets: [glass-mfa]}, outcome: require_approval, chain: glass-mfa}
  - {id: nobody, match: {targets: [nobody]}, outcome: require_approval, chain: nobody}
  - {id: lonely, match: {targets: [lonely]}, outcome: require_approval, chain: lonely}
  - {id: three, match: {targets: [three]}, outcome: require_approval, chain: three}
  - {id: crowd, match: {targets: [crowd]}, outcome: require_approval, chain: crowd}
  - {id: short, match: {targets: [short]}, outcome: require_approval, chain: short}
  - {id: never, match: {targets: [deny]}, outcome: deny, message: never here}
"""

#: name -> (groups, roles); roles: admin, auditor, service.
SERVICE_USERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ann": (("dev", "solo"), ()),
    "dave": (("dev",), ()),
    "bob": (("approvers",), ()),
    "bea": (("approvers",), ()),
    "dan": (("dba",), ()),
    "sam": (("security",), ()),
    "dora": (("dba",), ()),
    "leo": (("leads",), ()),
    "carol": ((), ()),
    "aud": ((), ("auditor",)),
    "adm": ((), ("admin",)),
    "svc": ((), ("service",)),
}
#: Users with a confirmed TOTP secret (dora is in dba without one).
SERVICE_MFA: dict[str, str] = {
    "dan": "JBSWY3DPEHPK3PXP",
    "sam": "KRSXG5CTMVRXEZLUKN2XAZLSNE",
    "ann": "MFRGGZDFMZTWQ2LKNNWG23TPOA",
}
SERVICE_T0 = datetime(2031, 3, 4, 10, 0, tzinfo=UTC)


class FakeClock:
    """A settable clock for the service (``clock=world.clock``)."""

    def __init__(self, now: datetime = SERVICE_T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


_service_policy: Any = None


def service_evaluator() -> Any:
    """An evaluator for :data:`SERVICE_POLICY` (compiled once per run)."""
    from jitgate.evaluator import Evaluator
    from jitgate.policy import load_policy_text

    global _service_policy
    if _service_policy is None:
        _service_policy = load_policy_text(SERVICE_POLICY, "service-tests.yaml")
    return Evaluator(_service_policy)


class ServiceWorld:
    """An ApprovalService on a real database with the users above, logged in."""

    def __init__(self, db: Database, clock: FakeClock | None) -> None:
        from jitgate.service import ApprovalService

        self.db = db
        self.clock = clock
        self.service = ApprovalService(db, service_evaluator(), clock=clock)
        self.tokens: dict[str, str] = {}
        self.p: dict[str, Any] = {}
        #: The last event of the setup (its users, groups, tokens, MFA).
        self.setup_seq = 0

    async def setup(self, users: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> None:
        from jitgate.store import Identity

        created = (self.clock() if self.clock else datetime.now(UTC)) - timedelta(days=1)
        async with self.db.transaction() as session:
            identity = Identity(session)
            for name, (groups, roles) in users.items():
                await identity.add_user(
                    name,
                    groups,
                    admin="admin" in roles,
                    auditor="auditor" in roles,
                    service="service" in roles,
                    now=created,
                )
                self.tokens[name], _ = await identity.create_token(name, "test", now=created)
                if name in SERVICE_MFA:
                    await identity.set_mfa_secret(name, SERVICE_MFA[name], now=created)
                    await identity.confirm_mfa(name, now=created)
        from jitgate.store import last_seq

        async with self.db.transaction(readonly=True) as session:
            self.setup_seq = await last_seq(session)
        for name, token in self.tokens.items():
            principal = await self.service.authenticate(token)
            assert principal is not None, name
            self.p[name] = principal

    def otp(self, user: str) -> str:
        from jitgate.approvals.totp import totp

        assert self.clock is not None
        return totp(SERVICE_MFA[user], self.clock())

    async def submit(
        self, who: str, target: str = "one", text: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Submit a held action as ``who``; the request view."""
        body = {
            "kind": "sql",
            "text": text or f"DELETE FROM invoices WHERE id = {secrets.randbelow(10**9)}",
            "env": "prod",
            "target": target,
            **extra,
        }
        submission = await self.service.submit(self.p[who], body)
        assert submission.request is not None, submission.decision.to_dict()
        return dict(submission.request)

    async def events(self, request_id: str | None = None) -> list[Any]:
        """The trail since the setup (whose identity events are left out)."""
        from jitgate.store import list_events

        async with self.db.transaction(readonly=True) as session:
            return await list_events(session, request_id=request_id, after_seq=self.setup_seq)


async def make_world(
    db: Database,
    *,
    clock: bool = True,
    users: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None = None,
) -> ServiceWorld:
    world = ServiceWorld(db, FakeClock() if clock else None)
    await world.setup(SERVICE_USERS if users is None else users)
    return world


@pytest.fixture
async def world(db: Database) -> AsyncIterator[ServiceWorld]:
    """The service on both backends, with a fake clock at :data:`SERVICE_T0`."""
    built = await make_world(db)
    try:
        yield built
    finally:
        await built.service.stop()


# --- the HTTP server (tests/test_server_*.py) ---------------------------------------

SERVER_POLICY = """
version: 1
name: server-tests
default: allow
defaults: {ttl: 1h, grant_ttl: 5m}
chains:
  approvers:
    stages: [{name: approvers, groups: [approvers]}]
  glass:
    stages: [{name: approvers, groups: [approvers]}]
    break_glass: true
rules:
  # The default catalog's core rule: dangerous in production waits for `approvers`.
  - id: production-dangerous
    match: {environments: [production], risk: medium}
    outcome: require_approval
    chain: approvers
  # A chain the requester may break the glass on (outside production).
  - {id: glass, match: {targets: [glass]}, outcome: require_approval, chain: glass}
  - {id: never, match: {targets: [forbidden]}, outcome: deny, message: never here}
"""

#: name -> (groups, roles) for the server tests; roles: admin, auditor, service.
SERVER_USERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ann": (("dev",), ()),  # the requester
    "dave": (("dev",), ()),  # another requester
    "bob": (("approvers",), ()),
    "carol": (("approvers",), ()),
    "sec": (("security",), ()),  # in no group of the test chains: ineligible
    "audrey": ((), ("auditor",)),
    "root": ((), ("admin",)),
    "gw": ((), ("service",)),
}


class ApiEnv:
    """A real app over a real store, called through ``httpx`` (ASGI transport)."""

    def __init__(self, db: Database, service: Any, app: Any, client: Any) -> None:
        self.db = db
        self.service = service
        self.app = app
        self.client = client
        #: user -> a valid token; also ``ann-expired`` and ``ann-revoked``.
        self.tokens: dict[str, str] = {}
        self._texts = 0

    def headers(self, user: str | None) -> dict[str, str]:
        return {} if user is None else {"Authorization": f"Bearer {self.tokens[user]}"}

    async def call(self, user: str | None, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self.headers(user), **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    def action(self, **fields: Any) -> dict[str, Any]:
        """A held action (``DELETE`` in production), with a text of its own."""
        self._texts += 1
        return {
            "kind": "sql",
            "text": f"DELETE FROM invoices_{self._texts}",
            "env": "prod",
            "target": "main",
            **fields,
        }

    async def submit(self, caller: str = "ann", **fields: Any) -> dict[str, Any]:
        """Submit a held action through the API; the new request's view."""
        response = await self.call(caller, "POST", "/api/v1/requests", json=self.action(**fields))
        assert response.status_code == 201, response.text
        view: dict[str, Any] = response.json()["request"]
        return view

    async def act(
        self, user: str, request_id: str, verb: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``POST /api/v1/requests/{id}/{verb}``, which must succeed; the view."""
        response = await self.call(
            user, "POST", f"/api/v1/requests/{request_id}/{verb}", json=body or {}
        )
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    async def store_dump(self) -> list[str]:
        """Every row of the requests, events and grants tables, in order."""
        from sqlalchemy import select

        from jitgate.store.tables import EventTable, GrantTable, RequestTable

        rows: list[str] = []
        async with self.db.transaction(readonly=True) as session:
            for table, key in (
                (RequestTable, RequestTable.id),
                (EventTable, EventTable.seq),
                (GrantTable, GrantTable.id),
            ):
                result = await session.execute(select(table.__table__).order_by(key))
                rows.extend(f"{table.__tablename__}: {tuple(row)!r}" for row in result)
        return rows


async def make_api_env(db: Database, **app_options: Any) -> ApiEnv:
    """Users and tokens in ``db``, an ApprovalService and an app over it (not started)."""
    import httpx

    from jitgate.evaluator import Evaluator
    from jitgate.policy import load_policy_text
    from jitgate.server import create_app
    from jitgate.service import ApprovalService
    from jitgate.store import Identity

    service = ApprovalService(db, Evaluator(load_policy_text(SERVER_POLICY, "server-tests.yaml")))
    app = create_app(service, **app_options)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://jitgate")
    env = ApiEnv(db, service, app, client)
    long_ago = datetime.now(UTC) - timedelta(days=30)
    async with db.transaction() as session:
        identity = Identity(session)
        for name, (groups, roles) in SERVER_USERS.items():
            await identity.add_user(
                name,
                groups,
                admin="admin" in roles,
                auditor="auditor" in roles,
                service="service" in roles,
            )
            env.tokens[name], _ = await identity.create_token(name, "test")
        env.tokens["ann-expired"], _ = await identity.create_token(
            "ann", "expired", timedelta(hours=1), now=long_ago
        )
        env.tokens["ann-revoked"], revoked = await identity.create_token("ann", "revoked")
        await identity.revoke_token(revoked.id)
    return env


@pytest.fixture
async def api(db: Database) -> AsyncIterator[ApiEnv]:
    """The app on both backends, its lifespan running, with :data:`SERVER_USERS`."""
    env = await make_api_env(db)
    try:
        async with env.app.router.lifespan_context(env.app):
            yield env
    finally:
        await env.client.aclose()
