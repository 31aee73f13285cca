"""The relational schema: SQLAlchemy declarative tables.

Migrations (``store/migrations/versions``) must produce exactly this schema;
``tests/test_store_migrations.py`` compares them on SQLite and PostgreSQL.
Change both together.

Times are stored as UTC. :class:`UTCDateTime` refuses naive datetimes and
returns timezone-aware UTC datetimes on both backends (SQLite has no time
zone support; the column holds naive UTC text there, which also sorts and
compares correctly).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: Deterministic constraint names: Alembic batch mode (SQLite) needs names to
#: alter or drop constraints, and both backends then agree on them.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored in UTC on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware times")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: A 64-bit autoincrementing key. SQLite only autoincrements ``INTEGER
#: PRIMARY KEY`` (its rowid, 64-bit anyway), so it gets INTEGER there.
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")

#: JSON documents; SQL NULL (not JSON ``null``) for Python ``None``.
Document = JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --- identity -------------------------------------------------------------------


class UserTable(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    display_name: Mapped[str | None] = mapped_column(Text)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_auditor: Mapped[bool] = mapped_column(Boolean, default=False)
    is_service_account: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class GroupTable(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True)


class MembershipTable(Base):
    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class ApiTokenTable(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(Text)
    #: SHA-256 (hex) of the secret; the secret itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The first characters of the secret, to tell tokens apart in listings.
    prefix: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MfaSecretTable(Base):
    __tablename__ = "mfa_secrets"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    #: Base32 TOTP secret.
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The last TOTP time step accepted: a code for this step or an earlier
    #: one is a replay.
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)


# --- approvals ------------------------------------------------------------------


class RequestTable(Base):
    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(Text, index=True)
    requester: Mapped[str] = mapped_column(Text, index=True)
    fingerprint: Mapped[str] = mapped_column(Text, index=True)
    kind: Mapped[str] = mapped_column(Text)
    environment: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When the ticker must next look at the request (expiry, escalation).
    next_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: Optimistic concurrency: every update bumps it.
    version: Mapped[int] = mapped_column(Integer)
    #: The serialized domain request; opaque to the store.
    state: Mapped[dict[str, Any]] = mapped_column(Document)
    decision: Mapped[dict[str, Any] | None] = mapped_column(Document)


class EventTable(Base):
    """The audit trail: append-only, ordered by ``seq``."""

    __tablename__ = "events"

    #: Assigned by the appender (last + 1 under the append lock), never by a
    #: sequence: a rolled-back transaction must not leave a gap in the chain.
    seq: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(Text, unique=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    type: Mapped[str] = mapped_column(Text, index=True)
    actor: Mapped[str | None] = mapped_column(Text, index=True)
    request_id: Mapped[str | None] = mapped_column(Text, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(Document)
    prev_hash: Mapped[str | None] = mapped_column(Text)
    hash: Mapped[str | None] = mapped_column(Text)
    #: The request's (or statement's) target and environment, for filtering.
    target: Mapped[str | None] = mapped_column(Text)
    environment: Mapped[str | None] = mapped_column(Text)


class CheckpointTable(Base):
    """Signed statements "the trail up to ``seq`` hashes to ``hash``"."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)


class AnchorTable(Base):
    """Where the stored trail starts once older events were archived."""

    __tablename__ = "audit_anchors"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(Text)
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime)
    events: Mapped[int] = mapped_column(BigInteger)
    archive_sha256: Mapped[str] = mapped_column(Text)


class GrantTable(Base):
    __tablename__ = "grants"
    __table_args__ = (Index("ix_grants_requester_target", "requester", "target"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(Text, index=True)
    scope: Mapped[str] = mapped_column(Text)
    requester: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    environment: Mapped[str] = mapped_column(Text)
    rule_ids: Mapped[list[str]] = mapped_column(Document)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(Text)
    revoke_reason: Mapped[str] = mapped_column(Text, default="")


metadata = Base.metadata

__all__ = [
    "AnchorTable",
    "ApiTokenTable",
    "Base",
    "CheckpointTable",
    "EventTable",
    "GrantTable",
    "GroupTable",
    "MembershipTable",
    "MfaSecretTable",
    "RequestTable",
    "UTCDateTime",
    "UserTable",
    "metadata",
]
