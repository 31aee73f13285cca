"""Identity: users, groups, API tokens and TOTP secrets.

API tokens are ``jg_`` followed by 43 URL-safe characters (256 random bits).
The secret is shown once, by :meth:`Identity.create_token`; the database keeps
only its SHA-256 and a short display prefix. Looking a token up by the hash of
the presented secret (a unique index) needs no constant-time comparison: an
attacker timing the index lookup learns about hashes, not about secrets.

TOTP replay protection lives in ``mfa_secrets.last_used_step``: a code is
accepted for a time step only if that step is later than the last one
accepted, and the check-and-set is one conditional UPDATE, so concurrent
uses of the same code cannot both win.

Every change to an identity appends its audit event (``user.created``,
``group.member_added``, ``token.created``, ``mfa.enrolled`` ...; see
docs/audit-events.md) in the caller's transaction, as the method's last
write, so the change and its record commit or roll back together. An event
is written only when something changed (disabling a disabled user records
nothing). Payloads never carry a token secret, its hash or a TOTP secret.
The event's actor is the ``actor`` the :class:`Identity` was built with
(None: not known). As the events take the audit trail's lock, make identity
changes the last writes of a transaction (or give them their own).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from jitgate.store._common import aware, check_name, fetch, insert_for, new_id, utcnow, write
from jitgate.store.errors import DuplicateError, InvalidValueError, NotFoundError, StoreError
from jitgate.store.events import append_event
from jitgate.store.tables import (
    ApiTokenTable,
    GroupTable,
    MembershipTable,
    MfaSecretTable,
    UserTable,
)

#: Every API token starts with this, so scanners and humans recognise one.
TOKEN_PREFIX = "jg_"
#: How much of the secret listings show (``jg_`` plus 7 random characters).
DISPLAY_PREFIX_LENGTH = 10
#: Beyond this many users, read all memberships rather than bind a huge IN list.
_MAX_IN_LIST = 500


def hash_token(secret: str) -> str:
    """The stored form of an API token: SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    groups: frozenset[str]
    is_admin: bool
    is_auditor: bool
    is_service_account: bool
    disabled: bool
    display_name: str | None = None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token as listings show it: never the secret, never its hash."""

    id: str
    user: str
    name: str
    #: The first characters of the secret (``jg_xxxxxxx``).
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class MfaRecord:
    user: str
    #: Base32 TOTP secret (kept out of ``repr`` so it does not end up in logs).
    secret: str = field(repr=False)
    created_at: datetime
    confirmed_at: datetime | None
    last_used_step: int | None

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None


class Identity:
    """Users, groups, tokens and TOTP secrets, inside the caller's transaction.

    ``actor``: who makes the changes, recorded as the actor of their audit
    events (an admin's user name, ``local:<os user>`` for the offline CLI).
    """

    def __init__(self, session: AsyncSession, *, actor: str | None = None) -> None:
        self.session = session
        self.actor = actor

    # --- users --------------------------------------------------------------------

    async def add_user(
        self,
        name: str,
        groups: Iterable[str] = (),
        *,
        admin: bool = False,
        auditor: bool = False,
        service: bool = False,
        display_name: str | None = None,
        now: datetime | None = None,
    ) -> UserRecord:
        """Create a user (and any group it names). :class:`DuplicateError` if taken."""
        check_name("user", name)
        group_names = sorted({check_name("group", g) for g in groups})
        created = aware(now) if now is not None else utcnow()
        stmt = (
            insert_for(self.session, UserTable)
            .values(
                name=name,
                display_name=display_name,
                is_admin=admin,
                is_auditor=auditor,
                is_service_account=service,
                created_at=created,
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        if await write(self.session, stmt) != 1:
            raise DuplicateError(f"user {name!r} already exists")
        user_id = await self._user_id(name)
        joined = [(group, *await self._join(user_id, group)) for group in group_names]
        record = await self._require(name)
        await self._event(
            "user.created",
            created,
            user=name,
            display_name=display_name,
            groups=group_names,
            is_admin=admin,
            is_auditor=auditor,
            is_service_account=service,
        )
        for group, group_created, member_added in joined:
            await self._group_events(name, group, group_created, member_added, created)
        return record

    async def get_user(self, name: str) -> UserRecord | None:
        row = (
            await fetch(self.session, select(UserTable).where(UserTable.name == name))
        ).scalar_one_or_none()
        if row is None:
            return None
        return (await self._records([row]))[0]

    async def list_users(self, *, include_disabled: bool = True) -> list[UserRecord]:
        """All users, by name."""
        stmt = select(UserTable).order_by(UserTable.name)
        if not include_disabled:
            stmt = stmt.where(UserTable.disabled_at.is_(None))
        rows = (await fetch(self.session, stmt)).scalars().all()
        return await self._records(rows)

    async def disable_user(self, name: str, now: datetime | None = None) -> None:
        """Disable a user: its tokens stop authenticating. Idempotent."""
        when = aware(now) if now is not None else utcnow()
        await self._user_id(name)
        changed = await write(
            self.session,
            update(UserTable)
            .where(UserTable.name == name, UserTable.disabled_at.is_(None))
            .values(disabled_at=when),
        )
        if changed:
            await self._event("user.disabled", when, user=name)

    async def enable_user(self, name: str, now: datetime | None = None) -> None:
        """Enable a disabled user again. Idempotent."""
        when = aware(now) if now is not None else utcnow()
        await self._user_id(name)
        changed = await write(
            self.session,
            update(UserTable)
            .where(UserTable.name == name, UserTable.disabled_at.is_not(None))
            .values(disabled_at=None),
        )
        if changed:
            await self._event("user.enabled", when, user=name)

    async def set_roles(
        self,
        name: str,
        *,
        admin: bool | None = None,
        auditor: bool | None = None,
        service: bool | None = None,
        now: datetime | None = None,
    ) -> UserRecord:
        """Grant or withdraw the admin, auditor and service-account roles
        (``None``: unchanged); ``user.updated`` lists the flags that changed."""
        when = aware(now) if now is not None else utcnow()
        row = await self._user_row(name)
        wanted = {"is_admin": admin, "is_auditor": auditor, "is_service_account": service}
        changes = {
            flag: {"from": bool(getattr(row, flag)), "to": value}
            for flag, value in wanted.items()
            if value is not None and bool(getattr(row, flag)) != value
        }
        if changes:
            await write(
                self.session,
                update(UserTable)
                .where(UserTable.id == row.id)
                .values(**{flag: change["to"] for flag, change in changes.items()}),
            )
        record = await self._require(name)
        if changes:
            await self._event("user.updated", when, user=name, changes=changes)
        return record

    # --- groups -------------------------------------------------------------------

    async def add_to_group(self, user: str, group: str, *, now: datetime | None = None) -> bool:
        """Add ``user`` to ``group`` (created if new); False if already a member."""
        check_name("group", group)
        when = aware(now) if now is not None else utcnow()
        group_created, member_added = await self._join(await self._user_id(user), group)
        await self._group_events(user, group, group_created, member_added, when)
        return member_added

    async def remove_from_group(
        self, user: str, group: str, *, now: datetime | None = None
    ) -> bool:
        """Remove ``user`` from ``group``; False if it was not a member."""
        when = aware(now) if now is not None else utcnow()
        user_id = await self._user_id(user)
        group_id = select(GroupTable.id).where(GroupTable.name == group).scalar_subquery()
        removed = (
            await write(
                self.session,
                delete(MembershipTable).where(
                    MembershipTable.user_id == user_id, MembershipTable.group_id == group_id
                ),
            )
            == 1
        )
        if removed:
            await self._event("group.member_removed", when, user=user, group=group)
        return removed

    async def group_members(self, group: str, *, include_disabled: bool = False) -> frozenset[str]:
        """Names of the members of ``group``; disabled users only if asked."""
        stmt = (
            select(UserTable.name)
            .join(MembershipTable, MembershipTable.user_id == UserTable.id)
            .join(GroupTable, GroupTable.id == MembershipTable.group_id)
            .where(GroupTable.name == group)
        )
        if not include_disabled:
            stmt = stmt.where(UserTable.disabled_at.is_(None))
        return frozenset((await self.session.execute(stmt)).scalars())

    async def list_groups(self) -> list[str]:
        stmt = select(GroupTable.name).order_by(GroupTable.name)
        return list((await self.session.execute(stmt)).scalars())

    # --- API tokens ---------------------------------------------------------------

    async def create_token(
        self,
        user: str,
        name: str,
        expires_in: timedelta | None = None,
        *,
        now: datetime | None = None,
    ) -> tuple[str, TokenRecord]:
        """A new API token for ``user``: ``(secret, record)``. The secret is not kept."""
        check_name("token", name)
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidValueError("a token must expire in the future")
        created = aware(now) if now is not None else utcnow()
        user_row = await self._user_row(user)
        if user_row.disabled_at is not None:
            raise StoreError(f"user {user!r} is disabled")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            id=new_id("tok_", 12),
            user=user,
            name=name,
            prefix=secret[:DISPLAY_PREFIX_LENGTH],
            created_at=created,
            expires_at=created + expires_in if expires_in is not None else None,
            revoked_at=None,
            last_used_at=None,
        )
        await write(
            self.session,
            insert(ApiTokenTable).values(
                id=record.id,
                user_id=user_row.id,
                name=record.name,
                token_hash=hash_token(secret),
                prefix=record.prefix,
                created_at=record.created_at,
                expires_at=record.expires_at,
            ),
        )
        await self._event("token.created", created, **_token_payload(record))
        return secret, record

    async def authenticate(
        self, secret: str, now: datetime, *, touch: bool = True
    ) -> UserRecord | None:
        """The user a token secret belongs to, if the token is usable at ``now``.

        Refuses unknown, expired and revoked tokens and disabled users. With
        ``touch`` (the default) it records ``last_used_at``, which is a write:
        use a write transaction, or ``touch=False`` in a read-only one.
        """
        now = aware(now, "now")
        if not isinstance(secret, str) or not secret.startswith(TOKEN_PREFIX):
            return None
        found = (
            await fetch(
                self.session,
                select(ApiTokenTable, UserTable)
                .join(UserTable, UserTable.id == ApiTokenTable.user_id)
                .where(ApiTokenTable.token_hash == hash_token(secret)),
            )
        ).one_or_none()
        if found is None:
            return None
        token, user = found
        if token.revoked_at is not None or user.disabled_at is not None:
            return None
        if token.expires_at is not None and now >= token.expires_at:
            return None
        if touch:
            await write(
                self.session,
                update(ApiTokenTable).where(ApiTokenTable.id == token.id).values(last_used_at=now),
            )
        return (await self._records([user]))[0]

    async def get_token(self, token_id: str) -> TokenRecord | None:
        found = (
            await fetch(
                self.session,
                select(ApiTokenTable, UserTable.name)
                .join(UserTable, UserTable.id == ApiTokenTable.user_id)
                .where(ApiTokenTable.id == token_id),
            )
        ).one_or_none()
        if found is None:
            return None
        token, user = found
        return _token_record(token, user)

    async def revoke_token(self, token_id: str, now: datetime | None = None) -> bool:
        """Revoke a token; False if it does not exist or is already revoked."""
        when = aware(now) if now is not None else utcnow()
        revoked = (
            await write(
                self.session,
                update(ApiTokenTable)
                .where(ApiTokenTable.id == token_id, ApiTokenTable.revoked_at.is_(None))
                .values(revoked_at=when),
            )
            == 1
        )
        if revoked:
            record = await self.get_token(token_id)
            if record is None:  # pragma: no cover - updated above in this transaction
                raise NotFoundError(f"no token {token_id!r}")
            await self._event("token.revoked", when, **_token_payload(record))
        return revoked

    async def list_tokens(self, user: str) -> list[TokenRecord]:
        """``user``'s tokens, oldest first, revoked and expired ones included."""
        user_id = await self._user_id(user)
        rows = (
            await fetch(
                self.session,
                select(ApiTokenTable)
                .where(ApiTokenTable.user_id == user_id)
                .order_by(ApiTokenTable.created_at, ApiTokenTable.id),
            )
        ).scalars()
        return [_token_record(row, user) for row in rows]

    # --- TOTP ---------------------------------------------------------------------

    async def set_mfa_secret(
        self, user: str, secret_b32: str, *, now: datetime | None = None
    ) -> None:
        """Store (or replace) ``user``'s TOTP secret, unconfirmed, with no step used."""
        secret = _normalize_base32(secret_b32)
        created = aware(now) if now is not None else utcnow()
        user_id = await self._user_id(user)
        replaced = (
            await self.session.execute(
                select(MfaSecretTable.user_id).where(MfaSecretTable.user_id == user_id)
            )
        ).first() is not None
        stmt = insert_for(self.session, MfaSecretTable).values(
            user_id=user_id,
            secret=secret,
            created_at=created,
            confirmed_at=None,
            last_used_step=None,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["user_id"],
            set_={
                "secret": secret,
                "created_at": created,
                "confirmed_at": None,
                "last_used_step": None,
            },
        )
        await write(self.session, stmt)
        await self._event("mfa.enrolled", created, user=user, replaced=replaced)

    async def get_mfa_secret(self, user: str) -> MfaRecord | None:
        row = (
            await fetch(
                self.session,
                select(MfaSecretTable)
                .join(UserTable, UserTable.id == MfaSecretTable.user_id)
                .where(UserTable.name == user),
            )
        ).scalar_one_or_none()
        if row is None:
            return None
        return MfaRecord(
            user=user,
            secret=row.secret,
            created_at=row.created_at,
            confirmed_at=row.confirmed_at,
            last_used_step=row.last_used_step,
        )

    async def confirm_mfa(self, user: str, now: datetime | None = None) -> bool:
        """Mark the secret confirmed (first valid code seen); False if none or done."""
        when = aware(now) if now is not None else utcnow()
        confirmed = (
            await write(
                self.session,
                update(MfaSecretTable)
                .where(
                    MfaSecretTable.user_id == await self._user_id(user),
                    MfaSecretTable.confirmed_at.is_(None),
                )
                .values(confirmed_at=when),
            )
            == 1
        )
        if confirmed:
            await self._event("mfa.confirmed", when, user=user)
        return confirmed

    async def delete_mfa_secret(self, user: str, *, now: datetime | None = None) -> bool:
        """Remove ``user``'s TOTP secret; False if there was none."""
        when = aware(now) if now is not None else utcnow()
        removed = (
            await write(
                self.session,
                delete(MfaSecretTable).where(MfaSecretTable.user_id == await self._user_id(user)),
            )
            == 1
        )
        if removed:
            await self._event("mfa.removed", when, user=user)
        return removed

    async def consume_totp_step(self, user: str, step: int) -> bool:
        """Record that a code for TOTP time ``step`` was accepted.

        True only if ``step`` is later than every step accepted before: a second
        use of the same step (or of an earlier one) is a replay and gets False,
        also when the uses race. False as well if ``user`` has no secret.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidValueError(f"a TOTP step is a non-negative integer, got {step!r}")
        user_id = select(UserTable.id).where(UserTable.name == user).scalar_subquery()
        return (
            await write(
                self.session,
                update(MfaSecretTable)
                .where(
                    MfaSecretTable.user_id == user_id,
                    or_(
                        MfaSecretTable.last_used_step.is_(None),
                        MfaSecretTable.last_used_step < step,
                    ),
                )
                .values(last_used_step=step),
            )
            == 1
        )

    # --- internals ----------------------------------------------------------------

    async def _user_row(self, name: str) -> UserTable:
        row = (
            await fetch(self.session, select(UserTable).where(UserTable.name == name))
        ).scalar_one_or_none()
        if row is None:
            raise NotFoundError(f"no user {name!r}")
        return row

    async def _user_id(self, name: str) -> int:
        user_id = (
            await self.session.execute(select(UserTable.id).where(UserTable.name == name))
        ).scalar_one_or_none()
        if user_id is None:
            raise NotFoundError(f"no user {name!r}")
        return user_id

    async def _require(self, name: str) -> UserRecord:
        record = await self.get_user(name)
        if record is None:
            raise NotFoundError(f"no user {name!r}")
        return record

    async def _join(self, user_id: int, group: str) -> tuple[bool, bool]:
        """``(group created, member added)``."""
        group_created = (
            await write(
                self.session,
                insert_for(self.session, GroupTable)
                .values(name=group)
                .on_conflict_do_nothing(index_elements=["name"]),
            )
            == 1
        )
        group_id = (
            await self.session.execute(select(GroupTable.id).where(GroupTable.name == group))
        ).scalar_one()
        member_added = (
            await write(
                self.session,
                insert_for(self.session, MembershipTable)
                .values(user_id=user_id, group_id=group_id)
                .on_conflict_do_nothing(index_elements=["user_id", "group_id"]),
            )
            == 1
        )
        return group_created, member_added

    async def _event(self, type: str, at: datetime, **payload: Any) -> None:
        """Append the audit event of a change (the caller's last write)."""
        await append_event(self.session, type, self.actor, None, payload, at)

    async def _group_events(
        self, user: str, group: str, group_created: bool, member_added: bool, at: datetime
    ) -> None:
        if group_created:
            await self._event("group.created", at, group=group)
        if member_added:
            await self._event("group.member_added", at, user=user, group=group)

    async def _records(self, users: Iterable[UserTable]) -> list[UserRecord]:
        users = list(users)
        if not users:
            return []
        groups: defaultdict[int, set[str]] = defaultdict(set)
        stmt = select(MembershipTable.user_id, GroupTable.name).join(
            GroupTable, GroupTable.id == MembershipTable.group_id
        )
        if len(users) <= _MAX_IN_LIST:
            stmt = stmt.where(MembershipTable.user_id.in_([u.id for u in users]))
        rows = await self.session.execute(stmt)
        for user_id, group in rows:
            groups[user_id].add(group)
        return [
            UserRecord(
                name=u.name,
                groups=frozenset(groups[u.id]),
                is_admin=u.is_admin,
                is_auditor=u.is_auditor,
                is_service_account=u.is_service_account,
                disabled=u.disabled_at is not None,
                display_name=u.display_name,
            )
            for u in users
        ]


def _token_record(row: ApiTokenTable, user: str) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        user=user,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _token_payload(record: TokenRecord) -> dict[str, Any]:
    """What the trail says about a token: never the secret, never its hash."""
    return {
        "token_id": record.id,
        "user": record.user,
        "name": record.name,
        "prefix": record.prefix,
        "expires_at": None if record.expires_at is None else record.expires_at.isoformat(),
    }


def _normalize_base32(secret: str) -> str:
    text = "".join(secret.split()).upper().rstrip("=")
    if not text:
        raise InvalidValueError("the TOTP secret is empty")
    try:
        base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise InvalidValueError("the TOTP secret is not base32") from None
    return text
