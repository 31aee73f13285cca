"""Identity changes and policy loads in the audit trail (docs/audit-events.md).

Every change made through :class:`jitgate.store.Identity` appends exactly its
event(s) in the same transaction (a rolled-back change leaves neither), a
no-op appends nothing, and no event ever carries a token secret, its hash or
a TOTP secret. ``policy.loaded`` names the policy in force by the SHA-256 of
the bytes it was loaded from.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import run_sync
from jitgate.approvals.totp import totp
from jitgate.cli import app as cli_app
from jitgate.cli.admin import local_actor
from jitgate.policy import default_policy, load_policy, load_policy_text
from jitgate.policy.catalog import default_catalog_text
from jitgate.policy.compile import compile_policy
from jitgate.server.run import serve
from jitgate.service.policy_audit import BUILTIN_DEFAULT, policy_digest, record_policy_loaded
from jitgate.store import Database, EventRow, Identity, hash_token, last_seq, list_events
from jitgate.store.tables import EventTable

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
ACTOR = "adm"
IDENTITY_TYPES = {
    "user.created",
    "user.updated",
    "user.disabled",
    "user.enabled",
    "group.created",
    "group.member_added",
    "group.member_removed",
    "token.created",
    "token.revoked",
    "mfa.enrolled",
    "mfa.confirmed",
    "mfa.removed",
}
TOTP_SECRET = "JBSWY3DPEHPK3PXP"


class Boom(Exception):
    pass


async def events_after(db: Database, seq: int) -> list[EventRow]:
    async with db.transaction(readonly=True) as session:
        return await list_events(session, after_seq=seq)


async def head(db: Database) -> int:
    async with db.transaction(readonly=True) as session:
        return await last_seq(session)


async def change(
    db: Database, work: Callable[[Identity], Awaitable[Any]], *, actor: str | None = ACTOR
) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    """Run ``work`` in one transaction; its result and the events it appended."""
    before = await head(db)
    async with db.transaction() as session:
        result = await work(Identity(session, actor=actor))
    events = await events_after(db, before)
    for event in events:
        assert event.actor == actor
        assert event.request_id is None
    return result, [(e.type, e.payload) for e in events]


async def stored_text(db: Database) -> str:
    """Every column of every stored event, as text."""
    async with db.transaction(readonly=True) as session:
        rows = (await session.execute(select(EventTable.__table__))).all()
    return "\n".join(repr(tuple(row)) for row in rows)


# --- each change, exactly its events -----------------------------------------------


async def test_users_and_groups(db: Database) -> None:
    _, events = await change(db, lambda ids: ids.add_user("ops-lead", ["ops"], now=NOW))
    assert [t for t, _ in events] == ["user.created", "group.created", "group.member_added"]

    record, events = await change(
        db,
        lambda ids: ids.add_user(
            "ann", ["ops", "dba"], auditor=True, display_name="Ann A.", now=NOW
        ),
    )
    assert record.groups == frozenset({"ops", "dba"})
    assert events == [
        (
            "user.created",
            {
                "user": "ann",
                "display_name": "Ann A.",
                "groups": ["dba", "ops"],
                "is_admin": False,
                "is_auditor": True,
                "is_service_account": False,
            },
        ),
        ("group.created", {"group": "dba"}),  # ops existed already
        ("group.member_added", {"user": "ann", "group": "dba"}),
        ("group.member_added", {"user": "ann", "group": "ops"}),
    ]

    # joining: a new group is created first; joining again changes nothing
    added, events = await change(db, lambda ids: ids.add_to_group("ann", "sre", now=NOW))
    assert added
    assert events == [
        ("group.created", {"group": "sre"}),
        ("group.member_added", {"user": "ann", "group": "sre"}),
    ]
    added, events = await change(db, lambda ids: ids.add_to_group("ann", "sre"))
    assert not added
    assert events == []

    removed, events = await change(db, lambda ids: ids.remove_from_group("ann", "sre"))
    assert removed
    assert events == [("group.member_removed", {"user": "ann", "group": "sre"})]
    removed, events = await change(db, lambda ids: ids.remove_from_group("ann", "sre"))
    assert not removed
    assert events == []


async def test_disable_enable_and_roles(db: Database) -> None:
    await change(db, lambda ids: ids.add_user("bob", now=NOW))
    _, events = await change(db, lambda ids: ids.disable_user("bob", NOW))
    assert events == [("user.disabled", {"user": "bob"})]
    _, events = await change(db, lambda ids: ids.disable_user("bob", NOW))
    assert events == []  # already disabled: nothing changed, nothing recorded
    _, events = await change(db, lambda ids: ids.enable_user("bob", NOW))
    assert events == [("user.enabled", {"user": "bob"})]
    _, events = await change(db, lambda ids: ids.enable_user("bob"))
    assert events == []

    record, events = await change(
        db, lambda ids: ids.set_roles("bob", admin=True, auditor=False, service=True)
    )
    assert record.is_admin
    assert record.is_service_account
    assert not record.is_auditor
    # only the flags that changed (auditor was already off)
    assert events == [
        (
            "user.updated",
            {
                "user": "bob",
                "changes": {
                    "is_admin": {"from": False, "to": True},
                    "is_service_account": {"from": False, "to": True},
                },
            },
        )
    ]
    _, events = await change(db, lambda ids: ids.set_roles("bob", admin=True, service=True))
    assert events == []
    _, events = await change(db, lambda ids: ids.set_roles("bob", admin=False))
    assert events == [
        ("user.updated", {"user": "bob", "changes": {"is_admin": {"from": True, "to": False}}})
    ]


async def test_tokens(db: Database) -> None:
    await change(db, lambda ids: ids.add_user("ci", service=True, now=NOW))
    (secret, token), events = await change(
        db, lambda ids: ids.create_token("ci", "deploys", timedelta(days=30), now=NOW)
    )
    assert events == [
        (
            "token.created",
            {
                "token_id": token.id,
                "user": "ci",
                "name": "deploys",
                "prefix": token.prefix,
                "expires_at": (NOW + timedelta(days=30)).isoformat(),
            },
        )
    ]
    assert len(token.prefix) == 10
    assert secret.startswith(token.prefix)
    async with db.transaction(readonly=True) as session:
        (created,) = await list_events(session, after_seq=await last_seq(session) - 1)
    assert created.at == NOW

    revoked, events = await change(db, lambda ids: ids.revoke_token(token.id, NOW))
    assert revoked
    assert events == [
        (
            "token.revoked",
            {
                "token_id": token.id,
                "user": "ci",
                "name": "deploys",
                "prefix": token.prefix,
                "expires_at": (NOW + timedelta(days=30)).isoformat(),
            },
        )
    ]
    revoked, events = await change(db, lambda ids: ids.revoke_token(token.id, NOW))
    assert not revoked
    assert events == []
    revoked, events = await change(db, lambda ids: ids.revoke_token("tok_nosuch", NOW))
    assert not revoked
    assert events == []

    # using a token (last_used_at) is not an identity change
    _, fresh = await change(db, lambda ids: ids.create_token("ci", "again", now=NOW))
    _, events = await change(db, lambda ids: ids.authenticate(fresh[0], NOW, touch=True))
    assert events == []
    assert secret not in await stored_text(db)
    assert hash_token(secret) not in await stored_text(db)


async def test_mfa(db: Database) -> None:
    await change(db, lambda ids: ids.add_user("dan", now=NOW))
    _, events = await change(db, lambda ids: ids.set_mfa_secret("dan", TOTP_SECRET, now=NOW))
    assert events == [("mfa.enrolled", {"user": "dan", "replaced": False})]
    _, events = await change(db, lambda ids: ids.set_mfa_secret("dan", TOTP_SECRET, now=NOW))
    assert events == [("mfa.enrolled", {"user": "dan", "replaced": True})]
    confirmed, events = await change(db, lambda ids: ids.confirm_mfa("dan", NOW))
    assert confirmed
    assert events == [("mfa.confirmed", {"user": "dan"})]
    confirmed, events = await change(db, lambda ids: ids.confirm_mfa("dan", NOW))
    assert not confirmed
    assert events == []
    # burning a TOTP step is not an identity change (approvals record mfa_verified)
    used, events = await change(db, lambda ids: ids.consume_totp_step("dan", 42))
    assert used
    assert events == []
    removed, events = await change(db, lambda ids: ids.delete_mfa_secret("dan"))
    assert removed
    assert events == [("mfa.removed", {"user": "dan"})]
    removed, events = await change(db, lambda ids: ids.delete_mfa_secret("dan"))
    assert not removed
    assert events == []
    assert TOTP_SECRET not in await stored_text(db)


async def test_actor_defaults_to_unknown(db: Database) -> None:
    """Identity(session) without an actor (library use) records the change all
    the same, with no actor: the change is never left out of the trail."""
    _, events = await change(db, lambda ids: ids.add_user("eve", now=NOW), actor=None)
    assert [t for t, _ in events] == ["user.created"]


# --- one transaction: a rolled-back change leaves no event ----------------------------


async def _setup(ids: Identity) -> None:
    await ids.add_user("zed", ["old"], now=NOW)
    await ids.add_user("off", now=NOW)
    await ids.disable_user("off", NOW)
    await ids.set_mfa_secret("zed", TOTP_SECRET, now=NOW)
    await ids.create_token("zed", "keep", now=NOW)


async def _revoke(ids: Identity) -> None:
    (token,) = await ids.list_tokens("zed")
    assert await ids.revoke_token(token.id, NOW)


ROLLED_BACK: dict[str, Callable[[Identity], Awaitable[Any]]] = {
    "add_user": lambda ids: ids.add_user("new", ["fresh"], now=NOW),
    "add_to_group": lambda ids: ids.add_to_group("zed", "fresh", now=NOW),
    "remove_from_group": lambda ids: ids.remove_from_group("zed", "old", now=NOW),
    "disable_user": lambda ids: ids.disable_user("zed", NOW),
    "enable_user": lambda ids: ids.enable_user("off", NOW),
    "set_roles": lambda ids: ids.set_roles("zed", admin=True, now=NOW),
    "create_token": lambda ids: ids.create_token("zed", "more", now=NOW),
    "revoke_token": _revoke,
    "set_mfa_secret": lambda ids: ids.set_mfa_secret("off", TOTP_SECRET, now=NOW),
    "confirm_mfa": lambda ids: ids.confirm_mfa("zed", NOW),
    "delete_mfa_secret": lambda ids: ids.delete_mfa_secret("zed", now=NOW),
}


async def _identity_state(db: Database) -> str:
    async with db.transaction(readonly=True) as session:
        ids = Identity(session)
        users = await ids.list_users()
        return repr(
            (
                users,
                await ids.list_groups(),
                [await ids.list_tokens(u.name) for u in users],
                [await ids.get_mfa_secret(u.name) for u in users],
            )
        )


@pytest.mark.parametrize("operation", sorted(ROLLED_BACK))
async def test_a_failing_transaction_leaves_neither_change_nor_event(
    db: Database, operation: str
) -> None:
    await change(db, _setup)
    state, seq = await _identity_state(db), await head(db)
    appended: list[EventRow] = []

    async def attempt() -> None:
        async with db.transaction() as session:
            await ROLLED_BACK[operation](Identity(session, actor=ACTOR))
            appended.extend(await list_events(session, after_seq=seq))
            raise Boom

    # the operation changes something and records it in its transaction ...
    with pytest.raises(Boom):
        await attempt()
    assert appended
    assert {e.type for e in appended} <= IDENTITY_TYPES
    # ... and rolled back, it leaves neither the change nor its event
    assert await _identity_state(db) == state
    assert await head(db) == seq
    # committed, the same operation appends its event(s)
    _, events = await change(db, ROLLED_BACK[operation])
    assert events
    assert {t for t, _ in events} <= IDENTITY_TYPES


# --- no secret in the trail -------------------------------------------------------------

names = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S"], include_characters=" "),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() != "")
_examples = iter(range(10**9))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    user=names,
    group=names,
    token_name=names,
    display=st.none() | names,
    totp_key=st.binary(min_size=10, max_size=32),
    lifetime=st.none() | st.integers(min_value=1, max_value=10**6),
)
async def test_no_secret_in_any_event(
    db: Database,
    user: str,
    group: str,
    token_name: str,
    display: str | None,
    totp_key: bytes,
    lifetime: int | None,
) -> None:
    user = f"{user}#{next(_examples)}"  # the store is not emptied between examples
    totp_secret = base64.b32encode(totp_key).decode("ascii")
    expires = None if lifetime is None else timedelta(seconds=lifetime)
    secrets: list[str] = []

    async def everything(ids: Identity) -> None:
        await ids.add_user(user, [group], display_name=display, now=NOW)
        secret, token = await ids.create_token(user, token_name, expires, now=NOW)
        secrets.append(secret)
        await ids.set_mfa_secret(user, totp_secret, now=NOW)
        assert await ids.consume_totp_step(user, 7)
        await ids.confirm_mfa(user, NOW)
        await ids.set_roles(user, admin=True, auditor=True, service=True, now=NOW)
        await ids.remove_from_group(user, group, now=NOW)
        await ids.add_to_group(user, group, now=NOW)
        await ids.revoke_token(token.id, NOW)
        await ids.disable_user(user, NOW)
        await ids.enable_user(user, NOW)
        await ids.delete_mfa_secret(user, now=NOW)

    _, events = await change(db, everything)
    assert [t for t, _ in events] == [
        "user.created",
        *(["group.created"] if ("group.created", {"group": group}) in events else []),
        "group.member_added",
        "token.created",
        "mfa.enrolled",
        "mfa.confirmed",
        "user.updated",
        "group.member_removed",
        "group.member_added",
        "token.revoked",
        "user.disabled",
        "user.enabled",
        "mfa.removed",
    ]
    (secret,) = secrets
    text = await stored_text(db)
    text_json = json.dumps([p for _, p in events], ensure_ascii=False)
    for forbidden in (secret, hash_token(secret), secret[len("jg_") :], totp_secret):
        assert forbidden not in text
        assert forbidden not in text_json
    assert totp_secret.rstrip("=") not in text


# --- the offline CLI ------------------------------------------------------------------


def _cli_events(url: str) -> list[EventRow]:
    async def read() -> list[EventRow]:
        async with Database(url) as db, db.transaction(readonly=True) as session:
            return await list_events(session)

    return run_sync(read())


def test_cli_admin_commands_are_recorded(backend_url: str, tmp_path: Path) -> None:
    if backend_url.startswith("postgresql"):
        # the PostgreSQL test database is shared: start from an empty one
        async def empty() -> None:
            from jitgate.store import metadata

            async with Database(backend_url) as db, db.transaction() as session:
                for table in reversed(metadata.sorted_tables):
                    await session.execute(table.delete())

        run_sync(empty())
    runner = CliRunner()

    def admin(*args: str) -> str:
        result = runner.invoke(
            cli_app, ["admin", *args, "--db", backend_url], env={"JITGATE_DATA_DIR": str(tmp_path)}
        )
        assert result.exit_code == 0, result.output
        return result.stdout

    admin("user", "add", "ann", "--group", "dev", "--admin")
    admin("user", "join", "ann", "ops")
    admin("user", "leave", "ann", "dev")
    token = admin("token", "create", "ann", "--label", "laptop", "--quiet").strip()
    token_id = next(
        e.payload["token_id"] for e in _cli_events(backend_url) if e.type == "token.created"
    )
    admin("token", "revoke", token_id)
    enrolled = admin("mfa", "enroll", "ann", "--no-qr")
    secret = enrolled.split("TOTP secret for ann: ")[1].split()[0]
    admin("mfa", "confirm", "ann", totp(secret, datetime.now(UTC)))
    admin("user", "disable", "ann")

    events = _cli_events(backend_url)
    assert [e.type for e in events] == [
        "user.created",
        "group.created",
        "group.member_added",
        "group.created",
        "group.member_added",
        "group.member_removed",
        "token.created",
        "token.revoked",
        "mfa.enrolled",
        "mfa.confirmed",
        "user.disabled",
    ]
    assert {e.actor for e in events} == {local_actor()}
    assert local_actor().startswith("local:")
    text = repr(events)
    for forbidden in (token, hash_token(token), secret):
        assert forbidden not in text


# --- policy.loaded --------------------------------------------------------------------

POLICY = (
    "version: 1\r\n"
    "name: digest-test\r\n"
    "default: allow\r\n"
    "rules:\r\n"
    '  - {id: no-drop, match: {statements: [DropStmt]}, outcome: deny, message: "no"}\r\n'
    "  - {id: no-trunc, match: {statements: [TruncateStmt]}, outcome: deny}\r\n"
)


def test_policy_digest_is_over_the_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(POLICY.encode("utf-8"))  # CRLF: text mode would change the bytes
    policy = load_policy(path)
    assert policy.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy_digest(policy) == (policy.source_sha256, "source")
    # the text API hashes the text it was given
    same = load_policy_text(POLICY, "inline")
    assert same.source_sha256 == hashlib.sha256(POLICY.encode()).hexdigest()
    # one changed byte, another digest
    path.write_bytes(POLICY.replace("no-trunc", "no-trunk").encode())
    assert load_policy(path).source_sha256 != policy.source_sha256
    # compiled from a spec in code: a digest of the canonical spec, and it says so
    built = compile_policy(policy.spec, source="code")
    digest, of = policy_digest(built)
    assert of == "spec"
    assert digest == policy_digest(compile_policy(policy.spec, source="elsewhere"))[0]
    assert len(digest) == 64


async def test_policy_loaded_event(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(POLICY.encode("utf-8"))
    seq = await record_policy_loaded(db, load_policy(path), at=NOW)
    seq_default = await record_policy_loaded(db, default_policy(), at=NOW)
    async with db.transaction(readonly=True) as session:
        event, builtin = await list_events(session)
    assert (event.seq, builtin.seq) == (seq, seq_default)
    assert event.type == "policy.loaded"
    assert event.actor is None
    assert event.at == NOW
    assert event.payload["source"] == str(path)
    assert event.payload["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert event.payload["digest_of"] == "source"
    assert event.payload["rule_count"] == 2
    assert event.payload["name"] == "digest-test"
    assert builtin.payload["source"] == BUILTIN_DEFAULT
    expected = hashlib.sha256(default_catalog_text().encode("utf-8")).hexdigest()
    assert builtin.payload["sha256"] == expected
    assert builtin.payload["rule_count"] == len(default_policy().rules)


@pytest.mark.parametrize("given_as", ["path", "compiled", "default"])
async def test_serve_records_the_policy_before_serving(tmp_path: Path, given_as: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(POLICY.encode("utf-8"))
    options: dict[str, Any] = {
        "path": {"policy_path": path},
        "compiled": {"policy": load_policy(path)},  # what `jitgate serve --policy` does
        "default": {},
    }[given_as]
    ready: list[tuple[str, int]] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(
            None,
            data_dir=tmp_path,
            port=0,
            log_level="warning",
            install_signal_handlers=False,
            on_ready=lambda host, port: ready.append((host, port)),
            shutdown=stop,
            **options,
        )
    )
    async with asyncio.timeout(20):
        while not ready:
            assert not task.done(), task
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 15)
    async with (
        Database(f"sqlite:///{tmp_path / 'jitgate.db'}") as db,
        db.transaction(readonly=True) as session,
    ):
        loaded = [e for e in await list_events(session) if e.type == "policy.loaded"]
    assert len(loaded) == 1
    payload = loaded[0].payload
    if given_as == "default":
        assert payload["source"] == BUILTIN_DEFAULT
        assert payload["sha256"] == hashlib.sha256(default_catalog_text().encode()).hexdigest()
    else:
        assert payload["source"] == str(path)
        assert payload["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert payload["rule_count"] == 2


# --- the documentation ----------------------------------------------------------------


def test_every_event_type_is_documented() -> None:
    from jitgate.service.codec import EVENT_NAMES

    doc = (Path(__file__).parent.parent / "docs" / "audit-events.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", doc, re.MULTILINE))
    others = {"action.evaluated", "action.denied", "request.refused", "policy.loaded"}
    missing = ({*EVENT_NAMES.values(), *IDENTITY_TYPES, *others, "auth.failed"}) - documented
    assert not missing
