"""``jitgate run -- COMMAND``: run a command only as the policy and approvers allow."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from jitgate.cli.common import EXIT_DENIED, EXIT_ERROR, EXIT_EXPIRED, err_console, fail
from jitgate.cli.options import Token, Url
from jitgate.cli.receipt import keep_receipt
from jitgate.cli.requests import client_call, exit_code_for, wait_for_answer
from jitgate.client import ApiError, Client, ServerUnreachable, WaitTimedOut
from jitgate.request_words import describe_final, describe_waiting


def run_command(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after --.")],
    env: Annotated[str, typer.Option("--env", "-e")] = "",
    target: Annotated[str, typer.Option("--target", "-t")] = "",
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait for approval at most.")
    ] = None,
    receipt: Annotated[
        Path | None,
        typer.Option(
            "--receipt", help="Write the signed approval receipt here before running.",
            show_default=False,
        ),
    ] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Evaluate a command; if it needs approval, request it and wait; then run it
    exactly as approved and report the outcome (with the digest of the signed
    approval receipt, checked to name this very command). Exits with the
    command's exit code, 3 if denied, 4 if expired, 1 if jitgate could not be
    asked (then the command does not run)."""
    # The approved text is this exact quoting of the argument vector, and the
    # vector is what runs (no shell in between), so what runs is what was approved.
    text = shlex.join(command)
    body: dict[str, Any] = {"kind": "shell", "text": text, "env": env, "target": target}
    with Client(url, token) as client:
        submission = client_call(lambda: client.submit(body))
        decision = submission["decision"]
        view = submission.get("request")
        if decision["decision"] == "deny":
            why = decision.get("message") or "; ".join(decision["reasons"])
            err_console.print(f"[bold red]denied:[/] {escape(why)}", highlight=False)
            raise typer.Exit(EXIT_DENIED)
        if view is None:
            raise typer.Exit(_execute(command))
        said = escape(describe_waiting(view))
        err_console.print(f"held as [bold]{escape(view['id'])}[/]: {said}", highlight=False)
        try:
            final = wait_for_answer(client, view, timeout, quiet=False)
        except WaitTimedOut:
            fail(f"timed out waiting for approval of {view['id']}; not run", EXIT_EXPIRED)
        except (ServerUnreachable, ApiError) as error:
            fail(f"{error}; not run", EXIT_ERROR)
        if final.get("status") != "approved":
            err_console.print(f"{final['id']}: {escape(describe_final(final))}; not run")
            code = exit_code_for(final)
            raise typer.Exit(code if code != 0 else EXIT_ERROR)
        # Consuming the single-use grant is what allows the run; if it fails
        # (used, expired, changed), nothing runs.
        digest = keep_receipt(client, final, body, receipt)
        client_call(lambda: client.authorize(final["id"], final["fingerprint"]))
        err_console.print(f"{final['id']}: {escape(describe_final(final))}; running")
        started = time.monotonic()
        code = _execute(command)
        duration = int((time.monotonic() - started) * 1000)
        try:
            client.report_outcome(
                final["id"], exit_code=code, duration_ms=duration, receipt_sha256=digest
            )
        except (ServerUnreachable, ApiError) as error:
            err_console.print(f"[yellow]warning:[/] could not report the outcome: {error}")
        raise typer.Exit(code)


def _execute(command: list[str]) -> int:
    try:
        return subprocess.call(command)
    except FileNotFoundError:
        err_console.print(f"[bold red]error:[/] command not found: {escape(command[0])}")
        return 127
    except PermissionError:
        err_console.print(f"[bold red]error:[/] permission denied: {escape(command[0])}")
        return 126
