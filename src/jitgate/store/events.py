"""The audit trail: events appended in the caller's transaction, read by ``seq``.

Every event is sealed into the hash chain (:mod:`jitgate.audit.chain`) as it
is appended: it gets ``seq`` = previous + 1 and ``prev_hash`` = the previous
event's hash. Both come from the head of the trail read under the append
lock, so appends serialize: on PostgreSQL an append takes a
transaction-scoped advisory lock (held until commit or rollback; several
server processes on one database still make one gap-free chain), on SQLite
every write transaction already holds the database write lock. A rolled-back
transaction takes its events with it and leaves no gap, because ``seq`` is
not drawn from a sequence.

The lock is held for the rest of the transaction: **append events as the
last writes of a transaction**, after the row updates they record, so a
transaction never waits for a row lock while holding the trail. Within one
transaction the head is remembered (``session.info``), so a transaction
appending several events reads it once.

Readers page with ``after_seq`` (the SSE stream, the audit export); because
appends serialize, a smaller ``seq`` never becomes visible after a larger one.

Many events at once (a gateway's batch of ``statement.executed`` records):
:func:`append_events` writes exactly the rows as many :func:`append_event`
calls would (same seqs, hashes, payload text), under the same lock and head,
but normalises and serializes the payloads before taking the lock, seals
the batch in one loop (hashing the stored payload text as the verifier
does, :func:`jitgate.audit.chain.stored_hash`) and inserts it with one
``executemany``. It appends all of the events or, raising, none of them.
The usual payload (a gateway's statement: a flat object of text, numbers
and nulls, :func:`jitgate.audit.chain.flat_plain`) needs no normalising: it
is serialized as it is, by a C encoder built once, and hashed with
:func:`jitgate.audit.chain.raw_hash` directly. The stored bytes are the same
either way (tests/test_audit_append_identity.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.audit.chain import (
    GENESIS,
    canonical_time,
    flat_plain,
    plain_texts,
    raw_hash,
    seal,
    stored_hash,
    stored_payload,
)
from jitgate.store._common import aware, dialect_name
from jitgate.store.database import compact_json
from jitgate.store.errors import InvalidValueError
from jitgate.store.tables import AnchorTable, EventTable

EVENTS: Final = cast(Table, EventTable.__table__)

#: Key of the PostgreSQL advisory lock that serializes appends.
APPEND_LOCK_KEY: Final = 0x6A67617564697400  # "jgaudit\0"
#: Where a transaction remembers the head of the trail it appended to.
_HEAD_KEY: Final = "jitgate.audit.head"
#: Most events one :func:`list_events` call returns.
MAX_PAGE: Final = 10_000
#: The columns :func:`append_events` writes, in the order of its rows.
_ROW_COLUMNS: Final = (
    "seq",
    "id",
    "at",
    "type",
    "actor",
    "request_id",
    "payload",
    "prev_hash",
    "hash",
    "target",
    "environment",
)
#: :func:`append_events`' INSERT in each backend's parameter style, run on the
#: driver as it is (one ``executemany``, no per-row type processing): the
#: payload goes as the JSON text the engine's serializer would have made, the
#: time as its column type would have bound it.
_INSERT_SQL: Final = {
    "sqlite": f"INSERT INTO events ({', '.join(_ROW_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ROW_COLUMNS)})",
    "postgresql": f"INSERT INTO events ({', '.join(_ROW_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_ROW_COLUMNS) + 1))})",
}


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


#: ``compact_json`` of a :func:`~jitgate.audit.chain.flat_plain` payload.
#: ``compact_json`` calls ``JSONEncoder.encode``, which builds a new C encoder
#: on every call (about a quarter of its time for a statement's payload); this
#: is that same C encoder with the same options (sorted keys, no spaces, ASCII
#: escapes, floats by ``float.__repr__``), built once. It is used only for flat
#: payloads of plain values: no containers, so no cycles to detect (hence no
#: ``markers``) and nothing it could fail on. Without the C encoder (another
#: Python), ``compact_json`` itself.
_FLAT_ENCODER: Final[Any] = (
    None
    if getattr(json.encoder, "c_make_encoder", None) is None
    else json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,  # markers: no circular check
        _not_json,
        json.encoder.encode_basestring_ascii,
        None,  # indent
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan (compact_json's default; flat_plain admits no NaN)
    )
)


def _flat_text(payload: dict[str, Any]) -> str:
    """``compact_json(payload)`` for a :func:`~jitgate.audit.chain.flat_plain` payload."""
    if _FLAT_ENCODER is None:
        return compact_json(payload)
    return "".join(_FLAT_ENCODER(payload, 0))


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRow:
    seq: int
    id: str
    at: datetime
    type: str
    actor: str | None
    request_id: str | None
    payload: dict[str, Any] = field(hash=False)
    prev_hash: str | None = None
    hash: str | None = None
    target: str | None = None
    environment: str | None = None


@dataclass(slots=True, kw_only=True)
class NewEvent:
    """One event for :func:`append_events` (the arguments of :func:`append_event`).

    Not frozen: a gateway's batch makes a thousand of them per call, and a
    frozen dataclass takes three times as long to build.
    """

    type: str
    actor: str | None
    request_id: str | None
    payload: Mapping[str, Any]
    at: datetime
    target: str | None = None
    environment: str | None = None


#: Byte maps setting a UUID's version (7) and variant (RFC 9562) bits: applied
#: to every 16th byte at once (``bytes.translate``) instead of byte by byte.
_UUID_VERSION_7: Final = bytes(b & 0x0F | 0x70 for b in range(256))
_UUID_VARIANT: Final = bytes(b & 0x3F | 0x80 for b in range(256))


def _event_ids(n: int) -> list[str]:
    """``n`` new event ids: time-ordered (version 7) UUIDs, spelled as ``str(uuid.UUID)``.

    Time-ordered because ``events.id`` is uniquely indexed: random ids land
    on random leaf pages of that index, so every batch rewrote pages all over
    it (a gateway's steady stream of statements wrote six times the bytes to
    SQLite's WAL, and PostgreSQL's B-tree suffers the same way); ids that grow
    with time are appended at the index's right edge. They are not secrets:
    the event's time is in the event itself. The 74 bits after the
    millisecond timestamp are random.
    """
    stamp = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw = bytearray(os.urandom(16 * n))
    for offset in range(6):
        raw[offset::16] = stamp[offset : offset + 1] * n
    raw[6::16] = raw[6::16].translate(_UUID_VERSION_7)
    raw[8::16] = raw[8::16].translate(_UUID_VARIANT)
    h = raw.hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-"
        f"{h[i + 20 : i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


async def _locked_head(session: AsyncSession) -> tuple[int, str]:
    """The head of the trail, read under the append lock the first time in a
    transaction (the lock is then held until the transaction ends)."""
    head: tuple[int, str] | None = session.info.get(_HEAD_KEY)
    if head is None:
        if dialect_name(session) == "postgresql":
            await session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY}
            )
        head = await chain_head(session)
    return head


async def append_event(
    session: AsyncSession,
    type: str,
    actor: str | None,
    request_id: str | None,
    payload: Mapping[str, Any],
    at: datetime,
    *,
    target: str | None = None,
    environment: str | None = None,
) -> int:
    """Append an event in the caller's transaction; its ``seq``.

    The event becomes visible when (and if) the transaction commits.
    ``payload`` must be JSON data without floats that JSON cannot carry
    (NaN, infinities): anything else raises :class:`InvalidValueError`.
    """
    if not type:
        raise InvalidValueError("an event needs a type")
    at = aware(at, "at")
    head = await _locked_head(session)
    try:
        sealed = seal(
            seq=head[0] + 1,
            id=_event_ids(1)[0],
            at=at,
            type=type,
            actor=actor,
            request_id=request_id,
            target=target,
            environment=environment,
            payload=payload,
            prev_hash=head[1],
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidValueError(f"event payload is not JSON data: {exc}") from None
    await session.execute(
        insert(EVENTS).values(
            seq=sealed.seq,
            id=sealed.id,
            at=at,
            type=type,
            actor=actor,
            request_id=request_id,
            target=target,
            environment=environment,
            payload=dict(sealed.payload),
            prev_hash=sealed.prev_hash,
            hash=sealed.hash,
        )
    )
    session.info[_HEAD_KEY] = (sealed.seq, sealed.hash)
    return sealed.seq


async def append_events(session: AsyncSession, events: Sequence[NewEvent]) -> range:
    """Append ``events``, in order, in the caller's transaction; their seqs.

    The rows are exactly those of one :func:`append_event` call per event
    (same seqs, links, hashes and stored payload text; the ids are random
    either way), and the events become visible when the transaction
    commits, as one contiguous run of the trail. An invalid event (no type,
    a naive time, a payload that is not JSON data) raises
    :class:`InvalidValueError` and nothing is appended, not even the events
    before it.
    """
    if not events:
        return range(0)
    bind = session.bind
    assert bind is not None, "the session must be bound to an engine"
    dialect = bind.dialect
    # How the engine binds the ``at`` column on this backend (its type as
    # adapted to the dialect, as SQLAlchemy's own INSERT would bind it).
    stamp_at = cast(
        "Callable[[datetime], Any] | None",
        EVENTS.c.at.type.dialect_impl(dialect).bind_processor(dialect),
    )
    ids = _event_ids(len(events))
    stamps: dict[datetime, tuple[str, Any]] = {}
    prepared: list[tuple[Any, ...]] = []
    for event, id_ in zip(events, ids, strict=True):
        if not event.type:
            raise InvalidValueError("an event needs a type")
        stamp = stamps.get(event.at)
        if stamp is None:
            utc = aware(event.at, "at")
            stamp = stamps[event.at] = (
                canonical_time(utc),
                utc if stamp_at is None else stamp_at(utc),
            )
        source = event.payload
        payload: Mapping[str, Any] | None
        if flat_plain(source):
            # The usual record: normalising would make an equal copy (and
            # keep it plain), so it is serialized as it is; the normalised
            # payload is needed only to hash a non-plain event (below).
            payload, payload_text, plain = None, _flat_text(cast("dict[str, Any]", source)), True
        else:
            try:
                payload, plain = stored_payload(source)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidValueError(f"event payload is not JSON data: {exc}") from None
            payload_text = compact_json(payload)
        actor, request_id = event.actor, event.request_id
        target, environment = event.target, event.environment
        plain = plain and plain_texts(event.type, actor, request_id, target, environment)
        if payload is None and not plain:  # a field other than the payload is not plain
            payload = dict(source)
        prepared.append(
            (
                id_,
                stamp,
                event.type,
                actor,
                request_id,
                target,
                environment,
                payload,
                payload_text,
                plain,
            )
        )

    # Pending ORM changes are written first, as append_event's INSERT would
    # (autoflush): the events stay the last writes (the driver-level INSERT
    # below does not flush).
    await session.flush()
    first, prev = await _locked_head(session)
    seq = first
    rows: list[tuple[Any, ...]] = []
    for row in prepared:
        id_, (at_text, at_value), type_, actor, request_id, target, environment = row[:7]
        payload, payload_text, plain = row[7:]
        seq += 1
        if plain:
            # What stored_hash does for a plain event, called directly: its
            # keyword arguments cost more than the call of raw_hash itself.
            digest = raw_hash(
                seq, id_, at_text, type_, actor, request_id, target, environment,
                payload_text, prev,
            )  # fmt: skip
        else:
            try:
                digest = stored_hash(
                    seq=seq,
                    id=id_,
                    at=at_text,
                    type=type_,
                    actor=actor,
                    request_id=request_id,
                    target=target,
                    environment=environment,
                    payload=payload,
                    payload_text=payload_text,
                    prev_hash=prev,
                    plain=False,
                )
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidValueError(f"event payload is not JSON data: {exc}") from None
        rows.append(
            (
                seq,
                id_,
                at_value,
                type_,
                actor,
                request_id,
                payload_text,
                prev,
                digest,
                target,
                environment,
            )
        )
        prev = digest
    connection = await session.connection()
    await connection.exec_driver_sql(_INSERT_SQL[dialect.name], rows)
    session.info[_HEAD_KEY] = (seq, prev)
    return range(first + 1, seq + 1)


async def chain_head(session: AsyncSession) -> tuple[int, str]:
    """``(seq, hash)`` of the newest event; the archive anchor or the genesis
    ``(0, GENESIS)`` when no event is stored."""
    row = (
        await session.execute(
            select(EventTable.seq, EventTable.hash).order_by(EventTable.seq.desc()).limit(1)
        )
    ).first()
    if row is not None:
        return int(row[0]), str(row[1] or GENESIS)
    anchor = (
        await session.execute(
            select(AnchorTable.seq, AnchorTable.hash).order_by(AnchorTable.seq.desc()).limit(1)
        )
    ).first()
    if anchor is not None:
        return int(anchor[0]), str(anchor[1])
    return 0, GENESIS


async def list_events(
    session: AsyncSession,
    *,
    request_id: str | None = None,
    after_seq: int = 0,
    limit: int = 1000,
) -> list[EventRow]:
    """Events with ``seq > after_seq`` (of one request, if given), oldest first."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidValueError(f"limit must be between 1 and {MAX_PAGE}")
    stmt = select(EventTable).where(EventTable.seq > after_seq)
    if request_id is not None:
        stmt = stmt.where(EventTable.request_id == request_id)
    stmt = stmt.order_by(EventTable.seq).limit(limit)
    rows = (await session.execute(stmt.execution_options(populate_existing=True))).scalars()
    return [_event(row) for row in rows]


async def last_seq(session: AsyncSession) -> int:
    """The highest ``seq`` visible to the transaction; 0 for an empty trail."""
    return (await session.execute(select(func.coalesce(func.max(EventTable.seq), 0)))).scalar_one()


def _event(row: EventTable) -> EventRow:
    return EventRow(
        seq=row.seq,
        id=row.id,
        at=row.at,
        type=row.type,
        actor=row.actor,
        request_id=row.request_id,
        payload=row.payload,
        prev_hash=row.prev_hash,
        hash=row.hash,
        target=row.target,
        environment=row.environment,
    )
