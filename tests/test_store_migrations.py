"""The packaged Alembic migrations produce exactly the SQLAlchemy metadata."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, Text, inspect
from sqlalchemy.engine import Connection

import jitgate
from jitgate.store import (
    Database,
    current_revision,
    downgrade,
    head_revision,
    metadata,
    migrate,
)
from jitgate.store.migrate import MIGRATIONS_DIR


async def schema_diff(db: Database, target: MetaData = metadata) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, target))

    async with db.engine.connect() as connection:
        return await connection.run_sync(compare)


async def table_names(db: Database) -> set[str]:
    async with db.engine.connect() as connection:
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))


async def test_migrated_schema_matches_metadata(db: Database) -> None:
    assert await schema_diff(db) == []


async def test_the_comparison_would_see_drift(db: Database) -> None:
    drifted = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["users"].append_column(Column("nickname", Text()))
    diff = await schema_diff(db, drifted)
    assert [d[0] for d in diff] == ["add_column"]


async def test_migrate_is_idempotent(db: Database) -> None:
    assert head_revision() == "0002"
    assert await current_revision(db) == head_revision()
    await migrate(db)
    assert await current_revision(db) == head_revision()
    assert await schema_diff(db) == []


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty, unmigrated database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url: str = request.getfixturevalue("fresh_pg_url")
    return url


async def test_downgrade_and_upgrade_round_trip(empty_url: str) -> None:
    async with Database(empty_url) as db:
        assert await current_revision(db) is None
        await migrate(db)
        assert set(metadata.tables) | {"alembic_version"} == await table_names(db)
        await downgrade(db, "base")
        assert await table_names(db) <= {"alembic_version"}
        assert await current_revision(db) is None
        await migrate(db)
        assert await schema_diff(db) == []


async def test_concurrent_migrations_serialize(empty_url: str) -> None:
    """Two servers starting at once: one migrates, the other finds it done."""
    await asyncio.gather(*(migrate(empty_url) for _ in range(3)))
    async with Database(empty_url) as db:
        assert await current_revision(db) == head_revision()
        assert await schema_diff(db) == []


async def test_concurrent_migrations_from_separate_processes(empty_url: str) -> None:
    """Separate processes serialize in the database (advisory lock / BEGIN IMMEDIATE)."""
    src = str(Path(jitgate.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = (
        "import asyncio, sys; from jitgate.store import migrate; asyncio.run(migrate(sys.argv[1]))"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, empty_url, env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, stderr.decode()
    async with Database(empty_url) as db:
        assert await current_revision(db) == head_revision()
        assert await schema_diff(db) == []


def test_migrations_ship_inside_the_package() -> None:
    names = {p.name for p in MIGRATIONS_DIR.iterdir()}
    assert {"env.py", "script.py.mako", "alembic.ini", "__init__.py"} <= names
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()
    # A revision must not depend on application code that may change later.
    for revision in (MIGRATIONS_DIR / "versions").glob("*.py"):
        assert "jitgate" not in revision.read_text(encoding="utf-8")
