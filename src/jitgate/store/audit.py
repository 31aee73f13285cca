"""Reading the chained trail, checkpoints, and archiving old events.

The pure rules live in :mod:`jitgate.audit`; this module moves rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import queue
import sqlite3
import threading
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import IO, Any, Final, TypeVar, cast

from sqlalchemy import Select, Table, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.audit.chain import ChainEvent, canonical_time
from jitgate.audit.checkpoint import Checkpoint, sign_checkpoint
from jitgate.audit.keys import SigningKey, TrustedKeys
from jitgate.audit.verify import (
    ARCHIVED_EVENT,
    Anchor,
    Problem,
    Row,
    Verification,
    verify_chain,
    verify_rows,
)
from jitgate.store._common import aware, dialect_name, insert_for
from jitgate.store.database import DEFAULT_BUSY_TIMEOUT_MS, SQLITE, Database
from jitgate.store.errors import InvalidValueError, StoreError
from jitgate.store.events import APPEND_LOCK_KEY, append_event, chain_head
from jitgate.store.tables import AnchorTable, CheckpointTable, EventTable

EVENTS: Final = cast(Table, EventTable.__table__)
#: Rows fetched per round trip when streaming the trail.
BATCH: Final = 5000
#: First line of an archive file.
ARCHIVE_FORMAT: Final = "jitgate.audit.archive/v1"

_Page = TypeVar("_Page")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which events a query or an export selects (all given conditions hold)."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    type: str | None = None
    request_id: str | None = None
    target: str | None = None
    environment: str | None = None

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        c = EVENTS.c
        if self.since is not None:
            stmt = stmt.where(c.at >= aware(self.since, "since"))
        if self.until is not None:
            stmt = stmt.where(c.at < aware(self.until, "until"))
        for column, value in (
            (c.actor, self.actor),
            (c.request_id, self.request_id),
            (c.target, self.target),
            (c.environment, self.environment),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        if self.type is not None:
            # ``request.*`` selects a family of types.
            if self.type.endswith(".*"):
                stmt = stmt.where(c.type.startswith(self.type[:-1], autoescape=True))
            else:
                stmt = stmt.where(c.type == self.type)
        return stmt


def _chain_event(row: Any) -> ChainEvent:
    return ChainEvent(
        seq=int(row.seq),
        id=row.id,
        at=canonical_time(row.at),
        type=row.type,
        actor=row.actor,
        request_id=row.request_id,
        target=row.target,
        environment=row.environment,
        payload=row.payload if row.payload is not None else {},
        prev_hash=row.prev_hash or "",
        hash=row.hash or "",
    )


async def event_page(
    session: AsyncSession,
    *,
    after_seq: int = 0,
    limit: int = 1000,
    where: EventFilter | None = None,
) -> list[ChainEvent]:
    """Up to ``limit`` events with ``seq > after_seq`` matching ``where``, oldest first."""
    if not 1 <= limit <= BATCH:
        raise InvalidValueError(f"limit must be between 1 and {BATCH}")
    stmt: Select[Any] = select(EVENTS).where(EVENTS.c.seq > after_seq)
    if where is not None:
        stmt = where.apply(stmt)
    rows = await session.execute(stmt.order_by(EVENTS.c.seq).limit(limit))
    return [_chain_event(row) for row in rows]


async def iter_events(
    db: Database, *, after_seq: int = 0, where: EventFilter | None = None
) -> AsyncIterator[ChainEvent]:
    """Every matching event, oldest first, in one read-only transaction."""
    async with db.transaction(readonly=True) as session:
        while True:
            page = await event_page(session, after_seq=after_seq, limit=BATCH, where=where)
            for event in page:
                yield event
            if len(page) < BATCH:
                return
            after_seq = page[-1].seq


async def count_events(db: Database, where: EventFilter | None = None) -> int:
    stmt: Select[Any] = select(func.count()).select_from(EVENTS)
    if where is not None:
        stmt = where.apply(stmt)
    async with db.transaction(readonly=True) as session:
        return int((await session.execute(stmt)).scalar_one())


# --- checkpoints and anchors ----------------------------------------------------------


async def list_checkpoints(session: AsyncSession) -> list[Checkpoint]:
    rows = await session.execute(select(CheckpointTable.__table__).order_by(CheckpointTable.seq))
    return [
        Checkpoint(
            seq=int(r.seq),
            hash=r.hash,
            at=canonical_time(r.at),
            key_id=r.key_id,
            signature=r.signature,
        )
        for r in rows
    ]


async def latest_checkpoint_seq(session: AsyncSession) -> int:
    value = (await session.execute(select(func.max(CheckpointTable.seq)))).scalar_one_or_none()
    return int(value or 0)


async def get_anchor(session: AsyncSession) -> Anchor | None:
    row = (
        await session.execute(
            select(AnchorTable.seq, AnchorTable.hash).order_by(AnchorTable.seq.desc()).limit(1)
        )
    ).first()
    return None if row is None else Anchor(int(row[0]), str(row[1]))


async def _lock(session: AsyncSession) -> None:
    if dialect_name(session) == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})


async def write_checkpoint(
    db: Database, key: SigningKey, now: datetime, *, force: bool = False
) -> Checkpoint | None:
    """Sign the current head of the trail, unless a checkpoint already covers it.

    Cheap when there is nothing to sign (one read-only query). ``force``
    signs even a head that is already covered by a checkpoint of another key.
    """
    async with db.transaction(readonly=True) as session:
        head_seq, _ = await chain_head(session)
        signed = await latest_checkpoint_seq(session)
    if head_seq == 0 or (head_seq <= signed and not force):
        return None
    async with db.transaction() as session:
        await _lock(session)
        head_seq, head_hash = await chain_head(session)
        if head_seq == 0 or (head_seq <= await latest_checkpoint_seq(session) and not force):
            return None
        checkpoint = sign_checkpoint(key, head_seq, head_hash, aware(now, "now"))
        stmt = insert_for(session, CheckpointTable).values(
            seq=checkpoint.seq,
            hash=checkpoint.hash,
            at=now,
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )
        await session.execute(stmt.on_conflict_do_nothing(index_elements=["seq"]))
    return checkpoint


async def verify_pages(
    pages: AsyncIterator[list[ChainEvent]],
    checkpoints: list[Checkpoint],
    trusted: TrustedKeys,
    **options: Any,
) -> Verification:
    """:func:`~jitgate.audit.verify.verify_chain` over pages read asynchronously.

    The verifier runs in a worker thread and pulls events from a small
    bounded queue, so memory stays at a few pages whatever the trail's size.
    """
    return await _consume_in_thread(
        pages,
        lambda events: verify_chain(chain.from_iterable(events), checkpoints, trusted, **options),
    )


async def _consume_in_thread(
    pages: AsyncIterator[_Page], consume: Callable[[Iterator[_Page]], _R], depth: int = 2
) -> _R:
    """``consume(pages)`` in a worker thread, the pages read here, asynchronously.

    At most ``depth`` pages wait between the two (memory stays at a few
    pages), so reading the next page overlaps with checking this one.
    """
    loop = asyncio.get_running_loop()
    handoff: queue.SimpleQueue[_Page | None] = queue.SimpleQueue()
    space = asyncio.Semaphore(depth)
    stop = threading.Event()

    def received() -> Iterator[_Page]:
        while True:
            page = handoff.get()
            loop.call_soon_threadsafe(space.release)
            if page is None:
                return
            yield page

    def run() -> _R:
        try:
            return consume(received())
        finally:
            stop.set()  # the producer must not wait for a consumer that left
            loop.call_soon_threadsafe(space.release)

    worker = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        async for page in pages:
            await space.acquire()
            if stop.is_set():
                break
            handoff.put(page)
        else:
            handoff.put(None)
        return await worker
    finally:
        if not worker.done():
            stop.set()
            handoff.put(None)
            await asyncio.gather(worker, return_exceptions=True)


_RAW_PAGE: Final = text(
    "SELECT seq, id, at, type, actor, request_id, target, environment, payload, prev_hash, hash"
    " FROM events WHERE seq > :after ORDER BY seq LIMIT :limit"
)


def _sqlite_time(value: Any) -> str | None:
    """``at`` as SQLite stores it (naive UTC text, as UTCDateTime wrote it) in
    the chain's spelling; None for anything else."""
    if isinstance(value, str) and len(value) == 26 and value[10] == " ":
        return value[:10] + "T" + value[11:] + "+00:00"
    return None


def _raw_time(value: Any) -> str:
    # SQLite hands back the stored text (naive UTC, as UTCDateTime wrote it);
    # asyncpg a datetime.
    if isinstance(value, str):
        usual = _sqlite_time(value)
        if usual is not None:
            return usual
        parsed = datetime.fromisoformat(value)
        return canonical_time(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    return canonical_time(value)


async def raw_page(session: AsyncSession, after_seq: int, limit: int = BATCH) -> list[ChainEvent]:
    """Events after ``after_seq`` as stored, payloads unparsed: for verification,
    which hashes the stored text directly (see :meth:`ChainEvent.intact`)."""
    rows = await session.execute(_RAW_PAGE, {"after": after_seq, "limit": limit})
    return [
        ChainEvent(
            seq=int(r[0]),
            id=r[1],
            at=_raw_time(r[2]),
            type=r[3],
            actor=r[4],
            request_id=r[5],
            target=r[6],
            environment=r[7],
            payload={},
            prev_hash=r[9] or "",
            hash=r[10] or "",
            payload_text=r[8] if isinstance(r[8], str) else json.dumps(r[8]),
        )
        for r in rows.all()
    ]


async def _pages(
    session: AsyncSession, after: int, through: int | None = None
) -> AsyncIterator[list[ChainEvent]]:
    while through is None or after < through:
        page = await raw_page(session, after)
        if through is not None:
            page = [e for e in page if e.seq <= through]
        if page:
            yield page
        if len(page) < BATCH:
            return
        after = page[-1].seq


async def verify_store(
    db: Database,
    trusted: TrustedKeys,
    *,
    allow_unsigned: int = 0,
    expect: Checkpoint | None = None,
) -> Verification:
    """Verify the stored trail (events, checkpoints, archive anchor) in one
    read-only transaction, streaming the events.

    The rows are read as plain tuples, on a connection of the driver's own
    (SQLite: a read-only ``sqlite3`` connection in a worker thread;
    PostgreSQL: the pool's asyncpg connection, a server-side cursor in a
    REPEATABLE READ READ ONLY transaction, checked in a worker thread while
    the next page arrives), and checked by
    :func:`~jitgate.audit.verify.verify_rows`: the same result as
    :func:`~jitgate.audit.verify.verify_chain` over every event, without
    making an object of each.
    """
    options: dict[str, Any] = {"allow_unsigned": allow_unsigned, "expect": expect}
    if db.backend == SQLITE:
        return await _verify_sqlite(db, trusted, options)
    return await _verify_postgresql(db, trusted, options)


#: Rows per page when verifying (small pages stay in the CPU caches).
VERIFY_BATCH: Final = 2000

#: The columns :func:`~jitgate.audit.verify.verify_rows` takes.
_ROW_COLUMNS: Final = (
    "seq, id, {at}, type, actor, request_id, target, environment, {payload}, prev_hash, hash"
)


def _verify_queries(at: str, payload: str, param: str) -> tuple[str, str, str]:
    """The checkpoint, anchor and event queries, ``at`` read as ``at``."""
    return (
        f"SELECT seq, hash, {at}, key_id, signature FROM audit_checkpoints ORDER BY seq",
        "SELECT seq, hash FROM audit_anchors ORDER BY seq DESC LIMIT 1",
        f"SELECT {_ROW_COLUMNS.format(at=at, payload=payload)} FROM events"
        f" WHERE seq > {param} ORDER BY seq",
    )


#: SQLite hands back what was stored: ``at`` as text (see :func:`_sqlite_time`),
#: the payload as its JSON text.
_SQLITE_QUERIES: Final = _verify_queries("at", "payload", "?")
#: PostgreSQL spells ``at`` as the chain does (where a datetime can hold it; NULL
#: otherwise, which no hash matches) and hands back the JSON text as stored.
_POSTGRESQL_QUERIES: Final = _verify_queries(
    "CASE WHEN at >= '0001-01-01 00:00:00+00' AND at < '10000-01-01 00:00:00+00'"
    " THEN to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') END",
    "CAST(payload AS TEXT)",
    "$1",
)


def _stored_time(value: Any) -> str:
    """:func:`_raw_time`, and the value as text when it is no time at all (a
    tampered row: it cannot match its hash)."""
    try:
        return _raw_time(value)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return str(value)


def _text(value: Any) -> Any:
    """A text column's value: text, or None (SQL NULL, which hashes as null)."""
    return value if value is None or isinstance(value, str) else str(value)


def _row_event(row: Row) -> ChainEvent:
    """The event :func:`~jitgate.audit.verify.verify_chain` checks for a stored row."""
    payload = row[8]
    if not isinstance(payload, str):
        try:
            payload = json.dumps(payload)
        except (TypeError, ValueError):
            payload = str(payload)
    return ChainEvent(
        seq=int(row[0]),
        id=_text(row[1]),
        at=_stored_time(row[2]),
        type=_text(row[3]),
        actor=_text(row[4]),
        request_id=_text(row[5]),
        target=_text(row[6]),
        environment=_text(row[7]),
        payload={},
        prev_hash=_text(row[9]) or "",
        hash=_text(row[10]) or "",
        payload_text=payload,
    )


def _checkpoint(row: Row) -> Checkpoint:
    return Checkpoint(
        seq=int(row[0]),
        hash=str(row[1]),
        at=_stored_time(row[2]),
        key_id=str(row[3]),
        signature=str(row[4]),
    )


class _Cancelled(Exception):
    """The awaiting task was cancelled: stop reading."""


async def _verify_sqlite(
    db: Database, trusted: TrustedKeys, options: dict[str, Any]
) -> Verification:
    target, timeout = _sqlite_target(db)
    cancelled = threading.Event()

    def run() -> Verification:
        conn = sqlite3.connect(target, uri=True, timeout=timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only = ON")
            # One read transaction: checkpoints, anchor and events from one snapshot.
            conn.execute("BEGIN")
            checkpoints_sql, anchor_sql, events_sql = _SQLITE_QUERIES
            checkpoints = [_checkpoint(r) for r in conn.execute(checkpoints_sql)]
            row = conn.execute(anchor_sql).fetchone()
            anchor = None if row is None else Anchor(int(row[0]), str(row[1]))
            cursor = conn.execute(events_sql, (0 if anchor is None else anchor.seq,))

            def pages() -> Iterator[list[Row]]:
                while page := cursor.fetchmany(VERIFY_BATCH):
                    if cancelled.is_set():
                        raise _Cancelled
                    yield page

            return verify_rows(
                pages(),
                _row_event,
                checkpoints,
                trusted,
                anchor=anchor,
                time=_sqlite_time,
                **options,
            )
        finally:
            conn.close()

    try:
        return await asyncio.to_thread(run)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the audit trail from {db.display_url}: {exc}") from exc
    finally:
        cancelled.set()


def _sqlite_target(db: Database) -> tuple[str, float]:
    """The database as a read-only SQLite URI, and the busy timeout in seconds."""
    args, kwargs = db.engine.dialect.create_connect_args(db.engine.url)
    filename = str(args[0])
    timeout = float(kwargs.get("timeout", DEFAULT_BUSY_TIMEOUT_MS / 1000))
    if kwargs.get("uri"):
        query = filename.partition("?")[2]
        if not any(part.startswith("mode=") for part in query.split("&")):
            filename += ("&" if query else "?") + "mode=ro"
        return filename, timeout
    return f"file:{urllib.parse.quote(os.path.abspath(filename))}?mode=ro", timeout


async def _verify_postgresql(
    db: Database, trusted: TrustedKeys, options: dict[str, Any]
) -> Verification:
    checkpoints_sql, anchor_sql, events_sql = _POSTGRESQL_QUERIES
    async with db.engine.connect() as connection:
        raw = await connection.get_raw_connection()
        conn: Any = raw.driver_connection  # asyncpg's own connection
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            # Walk the primary key in order: without this the planner may sort the
            # whole table first (on disk, for a big trail) before the first row.
            await conn.execute("SET LOCAL enable_sort = off")
            checkpoints = [_checkpoint(r) for r in await conn.fetch(checkpoints_sql)]
            row = await conn.fetchrow(anchor_sql)
            anchor = None if row is None else Anchor(int(row[0]), str(row[1]))
            statement = await conn.prepare(events_sql)
            cursor = await statement.cursor(0 if anchor is None else anchor.seq)

            async def pages() -> AsyncGenerator[list[Row], None]:
                # The next page is on its way while this one is checked.
                pending = asyncio.ensure_future(cursor.fetch(VERIFY_BATCH))
                try:
                    while page := await pending:
                        pending = asyncio.ensure_future(cursor.fetch(VERIFY_BATCH))
                        yield page
                finally:
                    await asyncio.gather(pending, return_exceptions=True)

            async with contextlib.aclosing(pages()) as read:
                return await _consume_in_thread(
                    read,
                    lambda received: verify_rows(
                        received, _row_event, checkpoints, trusted, anchor=anchor, **options
                    ),
                )


# --- archiving ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Archived:
    path: Path
    from_seq: int
    through_seq: int
    events: int
    sha256: str


async def archive_events(
    db: Database,
    before: datetime,
    path: Path,
    trusted: TrustedKeys,
    *,
    now: datetime,
    actor: str | None,
    progress: Callable[[int], None] | None = None,
) -> Archived | None:
    """Move the events older than ``before`` into the file ``path``, up to the
    newest signed checkpoint among them, and anchor what remains there.

    The trail is verified first (nothing is archived from a trail that does
    not verify), the file is written and synced before anything is deleted,
    and the deletion, the new anchor and an ``audit.archived`` event commit
    together. None when no checkpoint lies before ``before`` (nothing to do).
    """
    before = aware(before, "before")
    if path.exists():
        raise InvalidValueError(f"{path} exists: an archive is never overwritten")
    async with db.transaction() as session:
        await _lock(session)
        anchor = await get_anchor(session)
        checkpoints = await list_checkpoints(session)
        last_old = (
            await session.execute(select(func.max(EVENTS.c.seq)).where(EVENTS.c.at < before))
        ).scalar_one_or_none()
        if last_old is None:
            return None
        candidates = [c for c in checkpoints if c.seq <= int(last_old) and c.signed_by(trusted)]
        if anchor is not None:
            candidates = [c for c in candidates if c.seq > anchor.seq]
        if not candidates:
            return None
        through = candidates[-1]
        start = anchor or Anchor(0, "0" * 64)
        tmp = path.with_name(path.name + ".partial")
        digest = hashlib.sha256()
        count = 0
        covered = [c for c in checkpoints if start.seq < c.seq <= through.seq]
        with open(tmp, "wb") as out:
            _write_line(
                out,
                digest,
                {
                    "format": ARCHIVE_FORMAT,
                    "from_seq": start.seq + 1,
                    "prev_hash": start.hash,
                },
            )

            async def written() -> AsyncIterator[list[ChainEvent]]:
                nonlocal count
                async for page in _pages(session, start.seq, through.seq):
                    for event in page:
                        _write_line(out, digest, event.to_dict())
                    count += len(page)
                    if progress is not None:
                        progress(count)
                    yield page

            check = await verify_pages(
                written(),
                covered,
                trusted,
                anchor=None if anchor is None else start,
                anchor_must_be_signed=False,
            )
            if not check.ok or check.last_seq != through.seq:
                out.close()
                tmp.unlink()
                problem = check.problem.message if check.problem else "incomplete"
                raise InvalidValueError(f"the trail does not verify; nothing archived: {problem}")
            for cp in covered:
                _write_line(out, digest, {"checkpoint": cp.to_dict()})
            _write_line(
                out,
                digest,
                {
                    "format": ARCHIVE_FORMAT,
                    "end": True,
                    "from_seq": start.seq + 1,
                    "through_seq": through.seq,
                    "hash": through.hash,
                    "events": count,
                },
            )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        sha = digest.hexdigest()
        await session.execute(delete(EVENTS).where(EVENTS.c.seq <= through.seq))
        await session.execute(delete(CheckpointTable).where(CheckpointTable.seq < through.seq))
        await session.execute(delete(AnchorTable))
        await session.execute(
            insert(AnchorTable).values(
                seq=through.seq,
                hash=through.hash,
                archived_at=now,
                events=count,
                archive_sha256=sha,
            )
        )
        session.info.pop("jitgate.audit.head", None)
        await append_event(
            session,
            ARCHIVED_EVENT,
            actor,
            None,
            {
                "through_seq": through.seq,
                "hash": through.hash,
                "from_seq": start.seq + 1,
                "events": count,
                "archive_sha256": sha,
                "file": path.name,
            },
            now,
        )
    return Archived(path, start.seq + 1, through.seq, count, sha)


def _write_line(out: IO[bytes], digest: Any, obj: dict[str, Any]) -> None:
    line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    out.write(line)
    digest.update(line)


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    from_seq: int
    prev_hash: str
    events: list[ChainEvent]
    checkpoints: list[Checkpoint]
    end: dict[str, Any] | None


def read_archive(path: Path) -> ArchiveFile:
    """Parse an archive file; ``InvalidValueError`` naming the line if malformed."""
    events: list[ChainEvent] = []
    checkpoints: list[Checkpoint] = []
    header: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                if number == 1:
                    if obj.get("format") != ARCHIVE_FORMAT or obj.get("end"):
                        raise ValueError(f"not a jitgate archive (expected {ARCHIVE_FORMAT})")
                    header = obj
                elif "checkpoint" in obj:
                    checkpoints.append(Checkpoint.from_dict(obj["checkpoint"]))
                elif obj.get("end"):
                    end = obj
                else:
                    events.append(ChainEvent.from_dict(obj))
            except ValueError as exc:
                raise InvalidValueError(f"{path}:{number}: {exc}") from None
    if header is None:
        raise InvalidValueError(f"{path}: empty file")
    from_seq = header.get("from_seq")
    prev_hash = header.get("prev_hash")
    if not isinstance(from_seq, int) or not isinstance(prev_hash, str):
        raise InvalidValueError(f"{path}:1: header without from_seq/prev_hash")
    return ArchiveFile(from_seq, prev_hash, events, checkpoints, end)


def verify_archive(archive: ArchiveFile, trusted: TrustedKeys) -> Verification:
    """Verify an archive file on its own: its chain from its start, its checkpoints,
    and that its end record matches its last event and a signed checkpoint."""
    start = Anchor(archive.from_seq - 1, archive.prev_hash)
    result = verify_chain(
        archive.events,
        archive.checkpoints,
        trusted,
        anchor=None if start.seq == 0 else start,
        anchor_must_be_signed=False,
    )
    if not result.ok:
        return result
    end = archive.end
    if (
        end is None
        or end.get("through_seq") != result.last_seq
        or end.get("hash") != result.head_hash
    ):
        result.ok = False
        result.problem = Problem(
            "truncated",
            result.last_seq + 1,
            "the archive's end record is missing or does not match its last event",
        )
    return result
