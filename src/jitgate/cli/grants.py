"""``jitgate grants``: list and revoke grants on a jitgate server."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jitgate.cli.common import EXIT_USAGE, dump_json, fail, printable
from jitgate.cli.options import Json, Token, Url
from jitgate.cli.requests import client_call
from jitgate.client import Client

grants_app = typer.Typer(help="List and revoke grants.", no_args_is_help=True)


def _state(grant: dict[str, Any]) -> str:
    if grant.get("revoked_at"):
        return "revoked"
    if grant.get("active"):
        return "active"
    if grant.get("used_at") and grant.get("scope") != "rule":
        return "used"
    return "expired"


@grants_app.command("list")
def list_command(
    include_all: Annotated[
        bool, typer.Option("--all", help="Also expired, used and revoked grants.")
    ] = False,
    mine: Annotated[bool, typer.Option("--mine", help="Only my grants (admins).")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    as_json: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """List grants: active ones unless --all; yours, or everybody's for admins and auditors."""
    with Client(url, token) as client:
        grants = client_call(
            lambda: client.list_grants(active=not include_all, mine=mine, limit=limit)
        )
    if as_json:
        sys.stdout.write(dump_json(grants) + "\n")
        return
    table = Table(box=None)
    table.add_column("id", no_wrap=True, min_width=24)
    for name in ("state", "scope", "requester", "env", "target", "rules", "expires", "request"):
        table.add_column(name)
    for grant in grants:
        table.add_row(
            *(
                escape(printable(str(value)))
                for value in (
                    grant.get("id", ""),
                    _state(grant),
                    grant.get("scope", ""),
                    grant.get("requester", ""),
                    grant.get("environment", ""),
                    grant.get("target", "") or "-",
                    ", ".join(grant.get("rules") or []),
                    grant.get("expires_at", ""),
                    grant.get("request_id", ""),
                )
            )
        )
    Console().print(table)


@grants_app.command("revoke")
def revoke_command(
    grant_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (required).")],
    as_json: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Revoke a grant (yours, or any as an admin): it never applies again."""
    if not reason.strip():
        fail("--reason must not be blank", EXIT_USAGE)
    with Client(url, token) as client:
        grant = client_call(lambda: client.revoke_grant(grant_id, reason))
    if as_json:
        sys.stdout.write(dump_json(grant) + "\n")
        return
    Console().print(
        f"revoked [bold]{escape(printable(str(grant.get('id'))))}[/] "
        f"(request {escape(printable(str(grant.get('request_id'))))})",
        highlight=False,
    )
