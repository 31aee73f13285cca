"""Database URLs, engine settings and transactions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from jitgate.store import (
    Database,
    DatabaseURLError,
    Identity,
    InvalidValueError,
    RequestRepository,
    RequestRow,
    backend_name,
    database_url,
    display_url,
    new_request_id,
)
from jitgate.store.tables import MembershipTable

# --- URLs -----------------------------------------------------------------------


def test_default_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "nested"
    url = database_url(None, data_dir)
    assert data_dir.is_dir()
    assert url == f"sqlite+aiosqlite:///{data_dir.resolve()}/jitgate.db"
    assert database_url("  ", data_dir) == url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "postgresql://jit@db.example:5432/jitgate",
            "postgresql+asyncpg://jit@db.example:5432/jitgate",
        ),
        ("postgres://jit:pw@db.example/jitgate", "postgresql+asyncpg://jit:pw@db.example/jitgate"),
        ("postgresql+asyncpg://jit@h/jitgate", "postgresql+asyncpg://jit@h/jitgate"),
        (
            "postgresql://jit@h/jitgate?sslmode=require",
            "postgresql+asyncpg://jit@h/jitgate?ssl=require",
        ),
    ],
)
def test_postgresql_urls(given: str, expected: str) -> None:
    assert database_url(given, Path("/nonexistent")) == expected
    assert backend_name(given) == "postgresql"


def test_sqlite_urls(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    expected = f"sqlite+aiosqlite:///{path}"
    assert database_url(f"sqlite:///{path}", Path("/nonexistent")) == expected
    assert database_url(f"sqlite+aiosqlite:///{path}", Path("/nonexistent")) == expected
    assert backend_name(f"sqlite:///{path}") == "sqlite"


def test_relative_sqlite_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        database_url("sqlite:///rel.db", tmp_path)
        == f"sqlite+aiosqlite:///{tmp_path.resolve()}/rel.db"
    )


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("mysql://root@localhost/jitgate", "unsupported database scheme 'mysql'"),
        ("sqlite://", "in-memory SQLite is not supported"),
        ("sqlite:///:memory:", "in-memory SQLite is not supported"),
        ("sqlite:///file::memory:?cache=shared", "in-memory SQLite is not supported"),
        ("sqlite+pysqlite:///x.db", "unsupported SQLite driver 'pysqlite'"),
        ("postgresql+psycopg2://h/db", "unsupported PostgreSQL driver 'psycopg2'"),
        ("sqlite:////nonexistent-dir-for-jitgate/j.db", "does not exist"),
        ("just some words", "not a database URL"),
    ],
)
def test_bad_urls_are_refused_clearly(given: str, message: str) -> None:
    with pytest.raises(DatabaseURLError, match=message) as info:
        database_url(given, Path("/nonexistent"))
    assert info.value.code == "database_url"
    with pytest.raises(DatabaseURLError):
        Database(given)


def test_passwords_stay_out_of_messages_and_reprs() -> None:
    with pytest.raises(DatabaseURLError) as info:
        database_url("mysql://root:hunter2@localhost/db", Path("/nonexistent"))
    assert "hunter2" not in str(info.value)
    url = "postgresql://jit:hunter2@db.example/jitgate"
    assert "hunter2" not in display_url(url)
    assert "hunter2" not in repr(Database(url))


# --- engine settings --------------------------------------------------------------


async def test_sqlite_connection_settings(tmp_path: Path) -> None:
    async with Database(f"sqlite:///{tmp_path / 'j.db'}", busy_timeout_ms=1234) as db:
        async with db.transaction(readonly=True) as session:
            journal = (await session.execute(text("PRAGMA journal_mode"))).scalar_one()
            fks = (await session.execute(text("PRAGMA foreign_keys"))).scalar_one()
            timeout = (await session.execute(text("PRAGMA busy_timeout"))).scalar_one()
        assert (journal, fks, timeout) == ("wal", 1, 1234)


async def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError):
        async with db.transaction() as session:
            session.add(MembershipTable(user_id=41, group_id=42))


# --- transactions -----------------------------------------------------------------


async def test_transaction_commits_or_rolls_back(db: Database) -> None:
    async with db.transaction() as session:
        await Identity(session).add_user("kept")

    async def add_then_fail() -> None:
        async with db.transaction() as session:
            await Identity(session).add_user("dropped")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await add_then_fail()
    async with db.transaction(readonly=True) as session:
        names = [u.name for u in await Identity(session).list_users()]
    assert names == ["kept"]


async def test_readonly_transactions_do_not_wait_for_a_writer(db: Database) -> None:
    async with db.transaction() as session:
        await Identity(session).add_user("before")
    async with db.transaction() as writer:
        await Identity(writer).add_user("uncommitted")

        async def read() -> list[str]:
            async with db.transaction(readonly=True) as reader:
                return [u.name for u in await Identity(reader).list_users()]

        assert await asyncio.wait_for(read(), timeout=5) == ["before"]


async def test_postgresql_readonly_transactions_refuse_writes(pg_url: str) -> None:
    async def write_in_readonly() -> None:
        async with Database(pg_url) as db, db.transaction(readonly=True) as session:
            await Identity(session).add_user("nope")

    with pytest.raises(DBAPIError, match="read-only"):
        await write_in_readonly()


async def test_sqlite_write_transactions_serialize(tmp_path: Path) -> None:
    """Read-modify-write from 10 connections: BEGIN IMMEDIATE makes them take turns."""
    async with Database(f"sqlite:///{tmp_path / 'j.db'}") as db:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
            await session.execute(text("INSERT INTO counter VALUES (0)"))

        async def increment() -> None:
            async with db.transaction() as session:
                n = (await session.execute(text("SELECT n FROM counter"))).scalar_one()
                await asyncio.sleep(0.01)  # let the others try to get in
                await session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

        await asyncio.gather(*(increment() for _ in range(10)))
        async with db.transaction(readonly=True) as session:
            assert (await session.execute(text("SELECT n FROM counter"))).scalar_one() == 10


async def test_naive_datetimes_are_refused(db: Database) -> None:
    naive = datetime(2030, 1, 1)
    row = RequestRow(
        id=new_request_id(),
        status="pending",
        requester="alice",
        fingerprint="f",
        kind="sql",
        environment="production",
        target="db",
        created_at=naive,
        updated_at=naive,
        expires_at=naive + timedelta(hours=1),
        state={},
    )
    async with db.transaction() as session:
        with pytest.raises(InvalidValueError, match="time zone"):
            await RequestRepository(session).insert(row)
        with pytest.raises(InvalidValueError, match="time zone"):
            await RequestRepository(session).due(naive)


async def test_times_come_back_in_utc(db: Database) -> None:
    cest = datetime(2030, 6, 1, 14, 0, 0, 123456, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=2))
    )
    async with db.transaction() as session:
        user = await Identity(session).add_user("tz", now=cest)
        _secret, token = await Identity(session).create_token(user.name, "t", now=cest)
    async with db.transaction(readonly=True) as session:
        (stored,) = await Identity(session).list_tokens("tz")
    assert stored.created_at == cest
    assert stored.created_at.tzinfo is UTC
    assert stored.created_at == token.created_at
