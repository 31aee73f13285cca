"""Commands that talk to a jitgate server: request, approve, deny, requests ..."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from jitgate.cli.common import (
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_EXPIRED,
    EXIT_OK,
    EXIT_USAGE,
    dump_json,
    err_console,
    fail,
    printable,
    stdin_text,
)
from jitgate.cli.options import Json, Token, Url
from jitgate.client import (
    FINAL_STATUSES,
    ApiError,
    Client,
    ClientError,
    ServerUnreachable,
    View,
    WaitTimedOut,
)
from jitgate.request_words import bound_parameters, describe_final, describe_waiting

requests_app = typer.Typer(help="List and show approval requests.", no_args_is_help=True)


def client_call(call: Callable[[], Any]) -> Any:
    """Run one API call; every failure is one line and exit code 1."""
    try:
        return call()
    except ServerUnreachable as error:
        fail(f"{error}; nothing was done", EXIT_ERROR)
    except ApiError as error:
        fail(f"{error.message} [{error.code}]", EXIT_ERROR)
    except ClientError as error:
        fail(str(error), EXIT_ERROR)


class StatusLine:
    """A live status line: the request's state and the time spent waiting."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.started = time.monotonic()

    def __rich__(self) -> Text:
        elapsed = int(time.monotonic() - self.started)
        clock = f"{elapsed // 60}m{elapsed % 60:02d}s"
        return Text(f"⏳ {self.view.get('id')}: {describe_waiting(self.view)} · {clock}")


def wait_for_answer(client: Client, view: View, timeout: float | None, *, quiet: bool) -> View:
    """Follow the request until it is settled; a live line on a terminal,
    one line per change otherwise (CI logs)."""
    line = StatusLine(view)
    interactive = sys.stderr.isatty() and not quiet
    deadline = None if timeout is None else time.monotonic() + timeout

    def follow() -> View:
        last = view
        said = describe_waiting(view)
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            for update in client.watch(str(view["id"]), timeout=remaining):
                news = describe_waiting(update)
                if not interactive and not quiet and news != said:
                    err_console.print(f"{update.get('id')}: {news}")
                said = news
                last = line.view = update
                if update.get("status") not in {"pending"}:
                    return update
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(last)

    if interactive:
        with Live(line, console=err_console, refresh_per_second=2, transient=True):
            return follow()
    return follow()


def exit_code_for(view: Mapping[str, Any]) -> int:
    status = view.get("status")
    if status in {"approved", "executing", "executed"}:
        return EXIT_OK
    if status == "denied":
        return EXIT_DENIED
    if status in {"expired", "cancelled"}:
        return EXIT_EXPIRED
    return EXIT_ERROR


def request_command(
    text: Annotated[
        str, typer.Argument(help="Statement, command line, or JSON payload ('-' = stdin).")
    ],
    kind: Annotated[str, typer.Option("--kind", "-k")] = "sql",
    env: Annotated[str, typer.Option("--env", "-e")] = "",
    target: Annotated[str, typer.Option("--target", "-t")] = "",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the decision.")] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait at most.")
    ] = None,
    as_json: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Ask for an action. With --wait: exit 0 when allowed or approved, 3 when
    denied, 4 when expired or timed out, 1 on any other error."""
    if text == "-":
        text = stdin_text().read()
    body: dict[str, Any] = {"kind": kind, "env": env, "target": target}
    if kind in {"sql", "shell"}:
        body["text"] = text
    else:
        try:
            body["payload"] = json.loads(text)
        except json.JSONDecodeError as error:
            fail(f"a {kind} action takes a JSON payload: {error}", EXIT_USAGE)
    with Client(url, token) as client:
        submission = client_call(lambda: client.submit(body))
        decision = submission["decision"]
        view: View | None = submission.get("request")
        outcome = decision["decision"]
        if view is None or not wait:
            if as_json:
                sys.stdout.write(dump_json(submission) + "\n")
            else:
                _print_submission(decision, view, submission.get("grant"))
            if outcome == "deny":
                raise typer.Exit(EXIT_DENIED)
            raise typer.Exit(EXIT_OK)
        if not as_json:
            err_console.print(
                f"held as [bold]{escape(view['id'])}[/]: {escape(describe_waiting(view))}",
                highlight=False,
            )
        try:
            final = wait_for_answer(client, view, timeout, quiet=as_json)
        except WaitTimedOut as timed_out:
            if as_json:
                sys.stdout.write(dump_json(timed_out.view) + "\n")
            still = timed_out.view.get("status")
            fail(f"timed out: {view['id']} is still {still}", EXIT_EXPIRED)
        except (ServerUnreachable, ApiError) as error:
            fail(f"{error}; the action must not run", EXIT_ERROR)
        if final.get("status") == "approved":
            # The pipeline proceeds now: consume the single-use grant, so the
            # trail shows the action executing rather than a grant left to expire.
            final = client_call(lambda: client.authorize(final["id"], final["fingerprint"]))
        if as_json:
            sys.stdout.write(dump_json(final) + "\n")
        else:
            err_console.print(f"{final['id']}: {escape(describe_final(final))}", highlight=False)
        raise typer.Exit(exit_code_for(final))


def _print_submission(
    decision: Mapping[str, Any],
    view: Mapping[str, Any] | None,
    grant: Mapping[str, Any] | None = None,
) -> None:
    console = Console()
    label = str(decision["decision"]).replace("_", " ").upper()
    console.print(f"[bold]{label}[/] risk {decision.get('risk')}", highlight=False)
    for reason in decision.get("reasons", []):
        console.print(f"  • {escape(printable(reason))}", highlight=False)
    if grant is not None:
        until = escape(str(grant.get("expires_at")))
        console.print(
            f"allowed by grant [bold]{escape(str(grant.get('id')))}[/] (request "
            f"{escape(str(grant.get('request_id')))}, until {until})",
            highlight=False,
        )
    if view is not None:
        console.print(f"request [bold]{escape(view['id'])}[/]: {escape(describe_waiting(view))}")


def approve_command(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    comment: Annotated[str, typer.Option("--comment", "-m")] = "",
    otp: Annotated[str | None, typer.Option("--otp", help="TOTP code for MFA stages.")] = None,
    as_json: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Approve a request's current stage."""
    with Client(url, token) as client:
        view = client_call(lambda: client.approve(request_id, comment, otp))
    _print_view(view, as_json)


def deny_command(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (required).")],
    as_json: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Deny a request, with a reason."""
    with Client(url, token) as client:
        view = client_call(lambda: client.deny(request_id, reason))
    _print_view(view, as_json)


def cancel_command(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Withdraw your own pending request."""
    with Client(url, token) as client:
        view = client_call(lambda: client.cancel(request_id))
    _print_view(view, as_json)


def outcome_command(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    exit_code: Annotated[int | None, typer.Option("--exit-code")] = None,
    rows: Annotated[int | None, typer.Option("--rows", help="Rows affected.")] = None,
    error: Annotated[str | None, typer.Option("--error")] = None,
    as_json: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Report how an approved action went (after `jitgate request --wait`)."""
    with Client(url, token) as client:
        view = client_call(
            lambda: client.report_outcome(
                request_id, exit_code=exit_code, rows_affected=rows, error=error
            )
        )
    _print_view(view, as_json)


@requests_app.command("list")
def list_command(
    status: Annotated[str | None, typer.Option("--status", "-s")] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only my requests.")] = False,
    awaiting_me: Annotated[
        bool, typer.Option("--awaiting-me", help="Only requests I can approve now.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    as_json: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """List approval requests."""
    with Client(url, token) as client:
        page = client_call(
            lambda: client.list(status=status, mine=mine, awaiting_me=awaiting_me, limit=limit)
        )
    if as_json:
        sys.stdout.write(dump_json(page) + "\n")
        return
    table = Table("id", "status", "requester", "env", "action", "waiting for", box=None)
    for view in page["requests"]:
        action = view.get("action", {})
        what = action.get("text") or json.dumps(action.get("payload", {}))
        table.add_row(
            view["id"], view["status"], view.get("requester", ""),
            action.get("environment", ""), printable(what)[:60],
            describe_waiting(view) if view["status"] == "pending" else "",
        )
    Console().print(table)


@requests_app.command("show")
def show_command(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Show one request with its stages and approvals."""
    with Client(url, token) as client:
        view = client_call(lambda: client.get(request_id))
    _print_view(view, as_json)


def _print_view(view: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(dump_json(view) + "\n")
        return
    console = Console()

    def say(markup: str) -> None:
        console.print(printable(markup), highlight=False)

    action = view.get("action", {})
    say(f"[bold]{escape(view['id'])}[/]  {escape(str(view['status']))}  "
        f"requested by {escape(str(view.get('requester')))}")
    say(f"  {escape(action.get('kind', ''))} · {escape(action.get('environment', ''))} · "
        f"{escape(action.get('target', '') or '-')}")
    say(f"  {escape(action.get('text') or json.dumps(action.get('payload', {})))}")
    for line in bound_parameters(action):
        say(f"    {escape(line)}")
    for number, stage in enumerate(view.get("stages", []), start=1):
        approvals = ", ".join(a.get("user", "?") for a in stage.get("approvals", [])) or "-"
        say(f"  stage {number} {escape(stage.get('name', ''))} ({escape(stage.get('state', ''))}):"
            f" {stage.get('approvals_required')} from "
            f"{escape(' or '.join(stage.get('eligible_groups', [])))}; approved by "
            f"{escape(approvals)}")
    if view.get("status") in FINAL_STATUSES or view.get("status") == "approved":
        say(f"  {escape(describe_final(view))}")
