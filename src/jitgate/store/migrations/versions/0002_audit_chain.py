"""The audit chain: event target/environment, checkpoints, anchors; chain old events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Events written before this revision carry no hashes. They are renumbered
from 1 (a PostgreSQL sequence may have left gaps) and sealed into a chain in
their ``seq`` order, so a store upgraded from 0001 verifies like a new one;
nothing signed them, so they are the trail's unsigned start until the server
signs its first checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import rfc8785
import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("target", sa.Text(), nullable=True))
        batch.add_column(sa.Column("environment", sa.Text(), nullable=True))
    if bind.dialect.name == "postgresql":
        # The appender numbers events itself (no gaps after a rollback).
        op.execute("ALTER TABLE events ALTER COLUMN seq DROP DEFAULT")
        op.execute("DROP SEQUENCE IF EXISTS events_seq_seq")
    op.create_index(op.f("ix_events_at"), "events", ["at"])
    op.create_index(op.f("ix_events_actor"), "events", ["actor"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        _time("at"),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_anchors",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        _time("archived_at"),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("archive_sha256", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_anchors")),
    )
    _chain_existing_events(bind)


#: The chain's rules as of this revision (frozen here on purpose: a migration
#: must not change meaning when the application code does).
_GENESIS = "0" * 64
_SAFE = 2**53 - 1


def _safe(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -_SAFE <= value <= _SAFE else str(value)
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, list):
        return [_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    return str(value)


def _chain_existing_events(bind: sa.Connection) -> None:
    events = sa.table(
        "events",
        sa.column("seq", sa.BigInteger()),
        sa.column("id", sa.Text()),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("type", sa.Text()),
        sa.column("actor", sa.Text()),
        sa.column("request_id", sa.Text()),
        sa.column("payload", sa.JSON()),
        sa.column("prev_hash", sa.Text()),
        sa.column("hash", sa.Text()),
    )
    rows = bind.execute(sa.select(events).order_by(events.c.seq)).mappings().all()
    if not rows:
        return
    # Move every row out of the way first: renumbering in place could collide.
    offset = int(rows[-1]["seq"]) + 1
    bind.execute(events.update().values(seq=events.c.seq + offset))
    prev = _GENESIS
    for new_seq, row in enumerate(rows, start=1):
        at: datetime = row["at"]
        if isinstance(at, str):
            at = datetime.fromisoformat(at)
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        payload: Any = row["payload"]
        if isinstance(payload, str):
            payload = json.loads(payload)
        payload = _safe(payload if isinstance(payload, dict) else {"value": payload})
        document = {
            "seq": new_seq,
            "id": row["id"],
            "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
            "type": row["type"],
            "actor": row["actor"],
            "request_id": row["request_id"],
            "target": None,
            "environment": None,
            "payload": payload,
            "prev_hash": prev,
        }
        digest = hashlib.sha256(bytes(rfc8785.dumps(document))).hexdigest()
        bind.execute(
            events.update()
            .where(events.c.seq == int(row["seq"]) + offset)
            .values(seq=new_seq, prev_hash=prev, hash=digest, payload=payload)
        )
        prev = digest


def downgrade() -> None:
    op.drop_table("audit_anchors")
    op.drop_table("audit_checkpoints")
    op.drop_index(op.f("ix_events_actor"), table_name="events")
    op.drop_index(op.f("ix_events_at"), table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("environment")
        batch.drop_column("target")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE IF NOT EXISTS events_seq_seq OWNED BY events.seq")
        op.execute(
            "SELECT setval('events_seq_seq', COALESCE((SELECT max(seq) FROM events), 0) + 1, false)"
        )
        op.execute("ALTER TABLE events ALTER COLUMN seq SET DEFAULT nextval('events_seq_seq')")
