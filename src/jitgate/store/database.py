"""Database URLs, engines and transactions.

Users write plain URLs (``sqlite:///path/jitgate.db``,
``postgresql://user@host:5432/db``); :func:`database_url` turns them into the
SQLAlchemy asyncio URLs the store runs on (aiosqlite, asyncpg).

SQLite allows one writer at a time. With a pool of connections, two write
transactions that both start with a deferred ``BEGIN`` and later try to write
fail with ``SQLITE_BUSY`` instead of waiting, because SQLite cannot upgrade a
reader to a writer while another writer is active. The engine therefore takes
over transaction control from the driver and opens every write transaction
with ``BEGIN IMMEDIATE``: the write lock is taken up front, and a second
writer waits (up to ``busy_timeout``) until the first commits, then sees its
result. Read-only transactions (:meth:`Database.transaction` with
``readonly=True``) use a deferred ``BEGIN`` and, in WAL mode, never wait.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from jitgate.store.errors import DatabaseURLError

#: File name of the embedded database inside the data directory.
DEFAULT_SQLITE_FILENAME: Final = "jitgate.db"
#: How long a SQLite writer waits for the write lock before failing.
DEFAULT_BUSY_TIMEOUT_MS: Final = 30_000

SQLITE: Final = "sqlite"
POSTGRESQL: Final = "postgresql"

_SQLITE_DRIVER: Final = "sqlite+aiosqlite"
_POSTGRESQL_DRIVER: Final = "postgresql+asyncpg"
#: Connection execution option read by the SQLite ``begin`` listener.
_READONLY_OPTION: Final = "jitgate_readonly"

_HINT: Final = "use sqlite:///path/to/jitgate.db or postgresql://user@host:5432/dbname"


def database_url(url: str | None, data_dir: Path) -> str:
    """The SQLAlchemy asyncio URL for a user-facing database URL.

    ``None`` (or an empty string) selects the embedded default,
    ``sqlite:///<data_dir>/jitgate.db``; ``data_dir`` is created if needed.
    Raises :class:`DatabaseURLError` for unsupported schemes and drivers and for
    in-memory SQLite (every pooled connection would see its own empty database).
    """
    if url is None or not url.strip():
        data_dir = data_dir.expanduser()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseURLError(f"cannot create the data directory {data_dir}: {exc}") from exc
        path = (data_dir / DEFAULT_SQLITE_FILENAME).resolve()
        return URL.create(_SQLITE_DRIVER, database=str(path)).render_as_string(hide_password=False)
    return _async_url(url).render_as_string(hide_password=False)


def backend_name(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"`` for a (user-facing or asyncio) database URL."""
    return _async_url(url).get_backend_name()


def display_url(url: str) -> str:
    """``url`` with its password masked, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def _async_url(raw: str) -> URL:
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        # The text may contain a password: do not echo it.
        raise DatabaseURLError(f"not a database URL; {_HINT}") from None
    scheme, _, driver = url.drivername.partition("+")
    if scheme == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise DatabaseURLError(
                f"unsupported SQLite driver {driver!r}: jitgate uses aiosqlite; "
                "write sqlite:///path/to/jitgate.db"
            )
        return _sqlite_url(url)
    if scheme in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise DatabaseURLError(
                f"unsupported PostgreSQL driver {driver!r}: jitgate uses asyncpg; "
                "write postgresql://user@host:5432/dbname"
            )
        return _postgresql_url(url)
    raise DatabaseURLError(f"unsupported database scheme {scheme!r}; {_HINT}")


def _sqlite_url(url: URL) -> URL:
    database = url.database or ""
    memory = (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or url.query.get("mode") == "memory"
        or "mode=memory" in database
    )
    if memory:
        raise DatabaseURLError(
            "in-memory SQLite is not supported: every connection would see its own "
            "empty database; give a file path (sqlite:///path/to/jitgate.db)"
        )
    if not database.startswith("file:"):
        path = Path(database).expanduser().resolve()
        if not path.parent.is_dir():
            raise DatabaseURLError(f"directory {path.parent} does not exist (database {path})")
        database = str(path)
    return url.set(drivername=_SQLITE_DRIVER, database=database)


def _postgresql_url(url: URL) -> URL:
    query = dict(url.query)
    # libpq spells it sslmode, asyncpg spells it ssl (same values).
    if "sslmode" in query and "ssl" not in query:
        query["ssl"] = query.pop("sslmode")
    return url.set(drivername=_POSTGRESQL_DRIVER, query=query)


def create_engine(
    url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, echo: bool = False
) -> AsyncEngine:
    """An asyncio engine for ``url`` (user-facing or SQLAlchemy asyncio form).

    SQLite connections get WAL journaling, enforced foreign keys, a busy
    timeout, and ``BEGIN IMMEDIATE`` for write transactions (see the module
    docstring). PostgreSQL connections are pinged before reuse.
    """
    sa_url = _async_url(url)
    if sa_url.get_backend_name() == SQLITE:
        engine = _create_async_engine(sa_url, echo=echo, json_serializer=compact_json)
        _install_sqlite_listeners(engine, busy_timeout_ms)
        return engine
    return _create_async_engine(
        sa_url, echo=echo, pool_pre_ping=True, json_serializer=compact_json
    )


def compact_json(value: Any) -> str:
    """How JSON columns are written: sorted keys, no spaces, ASCII only.

    For an audit payload without floats or non-ASCII text this is exactly
    its RFC 8785 form, which lets verification hash the stored text as it
    is instead of parsing and re-serializing it (see jitgate.audit.chain).
    """
    return _compact_encode(value)


#: :func:`compact_json`'s encoder, built once: ``json.dumps`` with these
#: options builds the same encoder on every call, which costs more than
#: encoding a small document.
_compact_encode: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True
).encode


def _enable_wal(cursor: Any, timeout_ms: int) -> None:
    """Switch the file to WAL (it stays so: only its first connection switches).

    Two processes opening a new file at once can both try to switch; SQLite
    may answer "database is locked" without waiting on the busy handler, so
    the switch is retried within the busy timeout.
    """
    cursor.execute("PRAGMA journal_mode")
    row = cursor.fetchone()
    if row is not None and str(row[0]).lower() == "wal":
        return
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as error:  # the driver's OperationalError
            if "locked" not in str(error).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _install_sqlite_listeners(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    timeout = int(busy_timeout_ms)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Stop the driver from issuing its own (deferred) BEGIN: _on_begin does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {timeout}")
            _enable_wal(cursor, timeout)
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        readonly = connection.get_execution_options().get(_READONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


class Database:
    """An engine plus a session factory; one :meth:`transaction` per unit of work.

    ``url`` may be user-facing (``sqlite:///...``, ``postgresql://...``) or a
    SQLAlchemy asyncio URL as returned by :func:`database_url`.
    """

    def __init__(
        self, url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, echo: bool = False
    ) -> None:
        self.url: str = _async_url(url).render_as_string(hide_password=False)
        self.engine: AsyncEngine = create_engine(
            self.url, busy_timeout_ms=busy_timeout_ms, echo=echo
        )
        self.backend: str = self.engine.dialect.name
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        if self.backend == SQLITE:
            self._readonly_options: dict[str, Any] = {_READONLY_OPTION: True}
        else:
            self._readonly_options = {"postgresql_readonly": True}

    @classmethod
    def open(cls, url: str | None, data_dir: Path, **kwargs: Any) -> Database:
        """A database for a user-facing URL, ``None`` meaning the embedded default."""
        return cls(database_url(url, data_dir), **kwargs)

    @property
    def display_url(self) -> str:
        return display_url(self.url)

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[AsyncSession]:
        """One transaction: commits when the block ends, rolls back if it raises.

        Write transactions (the default) serialize on SQLite (``BEGIN
        IMMEDIATE``). ``readonly=True`` starts a read-only transaction: on
        PostgreSQL writes are refused, on SQLite it does not wait for writers.
        """
        async with self._sessions() as session, session.begin():
            # Connect now, so the transaction starts with the right BEGIN.
            await session.connection(execution_options=self._readonly_options if readonly else {})
            yield session

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"
