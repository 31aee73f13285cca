"""``jitgate admin``: bootstrap users, groups, tokens and MFA, offline against the store.

Every change is recorded in the audit trail (``user.created``,
``token.created`` ...) in the same transaction, with the actor
``local:<OS user>`` (:func:`local_actor`): these commands bypass the API, so
the only identity there is is the account that ran them on this machine.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import io
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar
from urllib.parse import quote

import segno
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jitgate.approvals.totp import verify_totp
from jitgate.cli.common import data_dir, fail
from jitgate.cli.options import Db
from jitgate.policy.model import parse_duration
from jitgate.store import Database, Identity, StoreError, migrate

app = typer.Typer(help="Users, groups, API tokens and MFA (works on the store directly).",
                  no_args_is_help=True)
user_app = typer.Typer(help="Users and their groups.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
mfa_app = typer.Typer(help="TOTP multi-factor enrolment.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(mfa_app, name="mfa")

T = TypeVar("T")


def local_actor() -> str:
    """The audit actor of an offline admin command: ``local:<OS user name>``."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError, ImportError):
        name = ""
    return f"local:{name or 'unknown'}"


def with_identity(db_url: str | None, work: Callable[[Identity], Awaitable[T]]) -> T:
    """Open (and migrate) the store, run ``work`` in one transaction."""

    async def main() -> T:
        database = Database.open(db_url, data_dir())
        try:
            await migrate(database)
            async with database.transaction() as session:
                return await work(Identity(session, actor=local_actor()))
        finally:
            await database.close()

    try:
        return asyncio.run(main())
    except StoreError as error:
        fail(str(error))


@user_app.command("add")
def user_add(
    name: str,
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="Repeatable.")] = None,
    admin: Annotated[bool, typer.Option("--admin")] = False,
    auditor: Annotated[
        bool, typer.Option("--auditor", help="Read-only access to everything.")
    ] = False,
    service: Annotated[
        bool, typer.Option("--service", help="A service account (gateway, CI).")
    ] = False,
    db: Db = None,
) -> None:
    """Add a user (approver roles come from group membership)."""
    record = with_identity(
        db, lambda ids: ids.add_user(
            name, group or (), admin=admin, auditor=auditor, service=service
        )
    )
    groups = ", ".join(sorted(record.groups)) or "no groups"
    Console().print(f"added user [bold]{escape(record.name)}[/] ({escape(groups)})")


@user_app.command("list")
def user_list(db: Db = None) -> None:
    """List users, their groups and roles."""
    users = with_identity(db, lambda ids: ids.list_users())
    table = Table("user", "groups", "roles", box=None)
    for user in users:
        roles = [r for r, on in (("admin", user.is_admin), ("auditor", user.is_auditor),
                                 ("service", user.is_service_account),
                                 ("disabled", user.disabled)) if on]
        table.add_row(user.name, ", ".join(sorted(user.groups)), ", ".join(roles))
    Console().print(table)


@user_app.command("join")
def user_join(name: str, group: str, db: Db = None) -> None:
    """Add a user to a group."""
    with_identity(db, lambda ids: ids.add_to_group(name, group))
    Console().print(f"{escape(name)} is in {escape(group)}")


@user_app.command("leave")
def user_leave(name: str, group: str, db: Db = None) -> None:
    """Remove a user from a group."""
    with_identity(db, lambda ids: ids.remove_from_group(name, group))
    Console().print(f"{escape(name)} left {escape(group)}")


@user_app.command("disable")
def user_disable(name: str, db: Db = None) -> None:
    """Disable a user: their tokens stop working at once."""
    with_identity(db, lambda ids: ids.disable_user(name))
    Console().print(f"disabled {escape(name)}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="The user the token authenticates.")],
    label: Annotated[str, typer.Option("--label", help="What the token is for.")] = "cli",
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="e.g. 30d, 12h (default: never).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the token.")] = False,
    db: Db = None,
) -> None:
    """Create an API token. It is printed once and stored only as a hash."""
    try:
        lifetime = parse_duration(expires_in) if expires_in else None
    except ValueError as error:
        fail(f"--expires-in: {error}")
    secret, record = with_identity(db, lambda ids: ids.create_token(name, label, lifetime))
    if quiet:
        typer.echo(secret)
        return
    console = Console()
    expiry = f", expires {record.expires_at:%Y-%m-%d %H:%M} UTC" if record.expires_at else ""
    console.print(f"token {escape(record.id)} for {escape(name)}{expiry}")
    console.print("store it now; it is not shown again:")
    typer.echo(secret)


@token_app.command("list")
def token_list(name: str, db: Db = None) -> None:
    """List a user's tokens (never their secrets)."""
    tokens = with_identity(db, lambda ids: ids.list_tokens(name))
    now = datetime.now(UTC)
    table = Table("id", "label", "prefix", "created", "expires", "state", box=None)
    for token in tokens:
        state = "revoked" if token.revoked_at else ("active" if token.active(now) else "expired")
        table.add_row(
            token.id, token.name, token.prefix, f"{token.created_at:%Y-%m-%d}",
            f"{token.expires_at:%Y-%m-%d %H:%M}" if token.expires_at else "never", state,
        )
    Console().print(table)


@token_app.command("revoke")
def token_revoke(token_id: str, db: Db = None) -> None:
    """Revoke a token: it stops working at once."""
    if not with_identity(db, lambda ids: ids.revoke_token(token_id)):
        fail(f"no active token {token_id}")
    Console().print(f"revoked {escape(token_id)}")


def otpauth_uri(user: str, secret: str, issuer: str = "jitgate") -> str:
    label = quote(f"{issuer}:{user}", safe="")
    return (
        f"otpauth://totp/{label}?secret={secret}&issuer={quote(issuer, safe='')}"
        "&algorithm=SHA1&digits=6&period=30"
    )


@mfa_app.command("enroll")
def mfa_enroll(
    name: str,
    qr: Annotated[bool, typer.Option("--qr/--no-qr", help="Show a QR code.")] = True,
    db: Db = None,
) -> None:
    """Create a TOTP secret for a user; confirm it with `jitgate admin mfa confirm`."""
    secret = base64.b32encode(secrets.token_bytes(20)).decode("ascii")
    with_identity(db, lambda ids: ids.set_mfa_secret(name, secret))
    uri = otpauth_uri(name, secret)
    console = Console()
    console.print(f"TOTP secret for {escape(name)}: [bold]{secret}[/]")
    console.print(f"otpauth URI: {escape(uri)}", soft_wrap=True)
    if qr:
        out = io.StringIO()
        segno.make(uri, error="m").terminal(out=out, compact=True)
        typer.echo(out.getvalue())
    console.print(f"then: jitgate admin mfa confirm {escape(name)} CODE")


@mfa_app.command("confirm")
def mfa_confirm(name: str, code: str, db: Db = None) -> None:
    """Confirm enrolment with a current code from the authenticator."""

    async def confirm(ids: Identity) -> bool:
        record = await ids.get_mfa_secret(name)
        if record is None:
            return False
        now = datetime.now(UTC)
        step = verify_totp(record.secret, code, now, record.last_used_step)
        if step is None or not await ids.consume_totp_step(name, step):
            return False
        return await ids.confirm_mfa(name, now)

    if not with_identity(db, confirm):
        fail(f"that code does not confirm {name}'s enrolment (enrolled? clock right?)")
    Console().print(f"MFA confirmed for {escape(name)}")
