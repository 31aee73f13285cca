"""Users, groups, API tokens and TOTP steps, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.engine import make_url

from jitgate.store import (
    Database,
    DuplicateError,
    Identity,
    InvalidValueError,
    NotFoundError,
    StoreError,
    UserRecord,
    metadata,
)
from jitgate.store import identity as identity_module

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TOTP_SECRET = "JBSWY3DPEHPK3PXP"


async def dump(db: Database) -> str:
    """Every row of every table, as text; for SQLite also the raw database files."""
    parts: list[str] = []
    async with db.transaction(readonly=True) as session:
        for table in metadata.sorted_tables:
            for row in await session.execute(select(table)):
                parts.append(repr(tuple(row)))
    if db.backend == "sqlite":
        database = make_url(db.url).database
        assert database is not None
        for suffix in ("", "-wal"):
            path = Path(database + suffix)
            if path.exists():
                parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


# --- users and groups ------------------------------------------------------------


async def test_users_and_groups(db: Database) -> None:
    async with db.transaction() as session:
        ids = Identity(session)
        alice = await ids.add_user("alice", ["dba", "oncall"], admin=True, display_name="Alice")
        await ids.add_user("bob", ["dba"], auditor=True)
        await ids.add_user("ci-bot", service=True)
    assert alice == UserRecord(
        name="alice",
        groups=frozenset({"dba", "oncall"}),
        is_admin=True,
        is_auditor=False,
        is_service_account=False,
        disabled=False,
        display_name="Alice",
    )
    async with db.transaction() as session:
        ids = Identity(session)
        bob = await ids.get_user("bob")
        assert bob is not None
        assert (bob.is_auditor, bob.is_admin, bob.groups) == (True, False, frozenset({"dba"}))
        bot = await ids.get_user("ci-bot")
        assert bot is not None
        assert bot.is_service_account
        assert bot.groups == frozenset()
        assert await ids.get_user("nobody") is None
        assert [u.name for u in await ids.list_users()] == ["alice", "bob", "ci-bot"]
        assert await ids.list_groups() == ["dba", "oncall"]
        assert await ids.group_members("dba") == {"alice", "bob"}
        assert await ids.group_members("nonexistent") == frozenset()

        assert await ids.add_to_group("bob", "oncall") is True
        assert await ids.add_to_group("bob", "oncall") is False
        assert await ids.add_to_group("bob", "new-group") is True
        assert await ids.remove_from_group("alice", "dba") is True
        assert await ids.remove_from_group("alice", "dba") is False
        assert await ids.remove_from_group("alice", "no-such-group") is False
        assert await ids.group_members("dba") == {"bob"}
        assert await ids.group_members("oncall") == {"alice", "bob"}

        updated = await ids.set_roles("bob", admin=True)
        assert (updated.is_admin, updated.is_auditor) == (True, True)


async def test_duplicate_and_unknown_users(db: Database) -> None:
    async with db.transaction() as session:
        await Identity(session).add_user("alice")
    async with db.transaction() as session:
        with pytest.raises(DuplicateError, match="'alice' already exists"):
            await Identity(session).add_user("alice", ["dba"])
        # The transaction is still usable after the refusal.
        await Identity(session).add_user("bob")
        with pytest.raises(NotFoundError, match="no user 'carol'"):
            await Identity(session).add_to_group("carol", "dba")
        with pytest.raises(NotFoundError):
            await Identity(session).disable_user("carol")
        with pytest.raises(NotFoundError):
            await Identity(session).create_token("carol", "t")
    async with db.transaction(readonly=True) as session:
        assert {u.name for u in await Identity(session).list_users()} == {"alice", "bob"}
        assert await Identity(session).list_groups() == []


async def test_concurrent_creation_of_the_same_user(db: Database) -> None:
    async def add() -> bool:
        try:
            async with db.transaction() as session:
                await Identity(session).add_user("racer", ["shared-group"])
        except DuplicateError:
            return False
        return True

    results = await asyncio.gather(*(add() for _ in range(5)))
    assert results.count(True) == 1


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "nul\x00", "x" * 201])
async def test_bad_names_are_refused(db: Database, name: str) -> None:
    async with db.transaction() as session:
        with pytest.raises(InvalidValueError):
            await Identity(session).add_user(name)
        with pytest.raises(InvalidValueError):
            await Identity(session).add_user("ok", [name])


async def test_disabled_users(db: Database) -> None:
    async with db.transaction() as session:
        ids = Identity(session)
        await ids.add_user("alice", ["dba"])
        await ids.add_user("bob", ["dba"])
        await ids.disable_user("bob", NOW)
        await ids.disable_user("bob", NOW)  # idempotent
        bob = await ids.get_user("bob")
        assert bob is not None
        assert bob.disabled
        assert await ids.group_members("dba") == {"alice"}
        assert await ids.group_members("dba", include_disabled=True) == {"alice", "bob"}
        assert [u.name for u in await ids.list_users(include_disabled=False)] == ["alice"]
        with pytest.raises(StoreError, match="disabled"):
            await ids.create_token("bob", "t")
        await ids.enable_user("bob")
        assert await ids.group_members("dba") == {"alice", "bob"}


# --- API tokens -----------------------------------------------------------------


async def test_token_lifecycle(db: Database) -> None:
    async with db.transaction() as session:
        ids = Identity(session)
        await ids.add_user("alice", ["dba"])
        secret, token = await ids.create_token("alice", "laptop", timedelta(days=30), now=NOW)
    assert secret.startswith("jg_")
    assert len(secret) == 3 + 43
    assert token.prefix == secret[:10]
    assert token.expires_at == NOW + timedelta(days=30)
    assert token.last_used_at is None
    assert token.active(NOW)

    async with db.transaction(readonly=True) as session:
        user = await Identity(session).authenticate(secret, NOW, touch=False)
        assert user is not None
        assert (await Identity(session).list_tokens("alice"))[0].last_used_at is None
    async with db.transaction() as session:
        user = await Identity(session).authenticate(secret, NOW + timedelta(hours=1))
    assert user is not None
    assert (user.name, user.groups) == ("alice", frozenset({"dba"}))
    async with db.transaction(readonly=True) as session:
        (listed,) = await Identity(session).list_tokens("alice")
        assert await Identity(session).get_token(token.id) == listed
    assert listed.last_used_at == NOW + timedelta(hours=1)
    assert listed.id == token.id

    async with db.transaction() as session:
        ids = Identity(session)
        assert await ids.authenticate(secret, NOW + timedelta(days=30)) is None  # expired
        assert await ids.authenticate(secret[:-1], NOW) is None
        assert await ids.authenticate(secret + "x", NOW) is None
        assert await ids.authenticate("", NOW) is None
        assert await ids.revoke_token(token.id, NOW) is True
        assert await ids.revoke_token(token.id, NOW) is False
        assert await ids.revoke_token("tok_unknown", NOW) is False
        assert await ids.authenticate(secret, NOW) is None  # revoked


async def test_disabling_a_user_stops_its_tokens(db: Database) -> None:
    async with db.transaction() as session:
        ids = Identity(session)
        await ids.add_user("alice")
        secret, _ = await ids.create_token("alice", "forever")  # no expiry
        assert await ids.authenticate(secret, NOW + timedelta(days=3650)) is not None
        await ids.disable_user("alice", NOW)
        assert await ids.authenticate(secret, NOW) is None
        await ids.enable_user("alice")
        assert await ids.authenticate(secret, NOW) is not None


async def test_tokens_must_expire_in_the_future(db: Database) -> None:
    async with db.transaction() as session:
        await Identity(session).add_user("alice")
        with pytest.raises(InvalidValueError):
            await Identity(session).create_token("alice", "t", timedelta(0))


async def test_only_the_hash_of_a_token_is_stored(db: Database) -> None:
    async with db.transaction() as session:
        ids = Identity(session)
        await ids.add_user("alice")
        secret, token = await ids.create_token("alice", "ci", timedelta(days=1), now=NOW)
        await ids.authenticate(secret, NOW)
    stored = await dump(db)
    assert secret not in stored
    assert secret[10:] not in stored  # not even the part the prefix does not show
    assert hashlib.sha256(secret.encode()).hexdigest() in stored
    async with db.transaction(readonly=True) as session:
        listed = await Identity(session).list_tokens("alice")
    assert listed == [dataclasses.replace(token, last_used_at=NOW)]
    assert secret not in repr(listed)
    assert hashlib.sha256(secret.encode()).hexdigest() not in repr(listed)


names = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S"], include_characters=" "),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() != "")


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(user=names, token_name=names, wrong=st.text(max_size=60))
async def test_token_secrecy(db: Database, user: str, token_name: str, wrong: str) -> None:
    async with db.transaction() as session:
        ids = Identity(session)
        if await ids.get_user(user) is None:
            await ids.add_user(user)
        secret, _ = await ids.create_token(user, token_name, timedelta(hours=1), now=NOW)
        assert await ids.authenticate(wrong, NOW) is None
        assert await ids.authenticate("jg_" + wrong, NOW) is None
        found = await ids.authenticate(secret, NOW)
        assert found is not None
        assert found.name == user
        tokens = await ids.list_tokens(user)
    assert token_name in {t.name for t in tokens}
    assert secret not in repr(tokens)
    assert secret not in await dump(db)


# --- TOTP -----------------------------------------------------------------------


async def test_totp_secret_and_steps(db: Database) -> None:
    async with db.transaction() as session:
        ids = Identity(session)
        await ids.add_user("alice")
        assert await ids.get_mfa_secret("alice") is None
        assert await ids.consume_totp_step("alice", 100) is False  # no secret yet
        await ids.set_mfa_secret("alice", "jbsw y3dp ehpk 3pxp", now=NOW)
        mfa = await ids.get_mfa_secret("alice")
        assert mfa is not None
        assert (mfa.secret, mfa.confirmed, mfa.last_used_step) == (TOTP_SECRET, False, None)
        assert TOTP_SECRET not in repr(mfa)
        assert await ids.confirm_mfa("alice", NOW) is True
        assert await ids.confirm_mfa("alice", NOW) is False

        assert await ids.consume_totp_step("alice", 100) is True
        assert await ids.consume_totp_step("alice", 100) is False  # replay
        assert await ids.consume_totp_step("alice", 99) is False  # earlier step
        assert await ids.consume_totp_step("alice", 101) is True
        assert await ids.consume_totp_step("nobody", 500) is False
        mfa = await ids.get_mfa_secret("alice")
        assert mfa is not None
        assert mfa.last_used_step == 101

        # Enrolling again starts over: unconfirmed, no step used.
        await ids.set_mfa_secret("alice", "MFRGGZDFMZTWQ2LK", now=NOW)
        mfa = await ids.get_mfa_secret("alice")
        assert mfa is not None
        assert (mfa.secret, mfa.confirmed, mfa.last_used_step) == ("MFRGGZDFMZTWQ2LK", False, None)
        assert await ids.consume_totp_step("alice", 50) is True

        assert await ids.delete_mfa_secret("alice") is True
        assert await ids.get_mfa_secret("alice") is None


async def test_totp_steps_are_64_bit(db: Database) -> None:
    async with db.transaction() as session:
        ids = Identity(session)
        await ids.add_user("alice")
        await ids.set_mfa_secret("alice", TOTP_SECRET)
        assert await ids.consume_totp_step("alice", 2**40) is True
        assert await ids.consume_totp_step("alice", 2**40) is False


@pytest.mark.parametrize("bad", ["", "not base32!", "A"])
async def test_bad_totp_secrets_are_refused(db: Database, bad: str) -> None:
    async with db.transaction() as session:
        await Identity(session).add_user("alice")
        with pytest.raises(InvalidValueError):
            await Identity(session).set_mfa_secret("alice", bad)


async def test_concurrent_use_of_one_totp_step(db: Database) -> None:
    """Ten requests carrying the same code, each in its own transaction: one wins."""
    async with db.transaction() as session:
        await Identity(session).add_user("alice")
        await Identity(session).set_mfa_secret("alice", TOTP_SECRET)
    start = asyncio.Barrier(10)

    async def use(step: int) -> bool:
        await start.wait()
        async with db.transaction() as session:
            return await Identity(session).consume_totp_step("alice", step)

    results = await asyncio.gather(*(use(1_000) for _ in range(10)))
    assert results.count(True) == 1
    # And a later code still works exactly once.
    start = asyncio.Barrier(10)
    results = await asyncio.gather(*(use(1_001) for _ in range(10)))
    assert results.count(True) == 1


async def test_listing_many_users_reads_all_memberships(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity_module, "_MAX_IN_LIST", 1)
    async with db.transaction() as session:
        ids = Identity(session)
        await ids.add_user("alice", ["dba"])
        await ids.add_user("bob", ["ops", "dba"])
        await ids.add_user("carol")
        users = await ids.list_users()
    assert {u.name: u.groups for u in users} == {
        "alice": {"dba"},
        "bob": {"ops", "dba"},
        "carol": frozenset(),
    }
