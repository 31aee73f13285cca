"""``jitgate audit``: verify, export and archive the trail; sign and export keys.

These commands work on the store directly (``--db``), like ``jitgate admin``:
an auditor verifies with a copy of the database and the server's public key,
without the server running.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from jitgate.audit.analytics import parse_bound
from jitgate.audit.chain import EVENT_FIELDS
from jitgate.audit.checkpoint import Checkpoint
from jitgate.audit.keys import (
    DEFAULT_KEY_FILENAME,
    KeyFileError,
    SigningKey,
    TrustedKeys,
    VerifyKey,
)
from jitgate.audit.verify import Verification
from jitgate.cli.audit_report import report_command
from jitgate.cli.common import EXIT_ERROR, data_dir, dump_json, err_console, fail
from jitgate.cli.options import Db, Json
from jitgate.store import Database, DatabaseURLError, StoreError

app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.command("report")(report_command)

PublicKeys = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        help="Trusted public key (PEM); repeat for several. Default: the public half of "
        "the signing key in the data directory.",
        show_default=False,
    ),
]
SigningKeyPath = Annotated[
    Path | None,
    typer.Option(
        "--signing-key",
        envvar="JITGATE_SIGNING_KEY",
        help="The server's Ed25519 key (default: audit-signing-key.pem in the data directory).",
        show_default=False,
    ),
]

def parse_when(value: str, option: str, now: datetime | None = None) -> datetime:
    """An ISO date/time (UTC if no offset) or an age like ``90d``, ``12h``."""
    try:
        return parse_bound(value, now or datetime.now(UTC))
    except ValueError as exc:
        fail(f"{option}: {exc}")


def _signing_key_path(path: Path | None) -> Path:
    return path if path is not None else data_dir() / DEFAULT_KEY_FILENAME


def trusted_keys(paths: list[Path] | None, signing_key: Path | None = None) -> TrustedKeys:
    try:
        if paths:
            return TrustedKeys(VerifyKey.load(p) for p in paths)
        default = _signing_key_path(signing_key)
        if default.exists():
            err_console.print(f"trusting the public half of {default}", highlight=False)
            return TrustedKeys([VerifyKey.load(default)])
    except KeyFileError as exc:
        fail(str(exc))
    fail(
        "no public key to verify signatures with: pass --public-key FILE "
        "(the server's key: jitgate audit public-key)"
    )
    return TrustedKeys()  # not reached: fail() exits


def _open(db: str | None) -> Database:
    try:
        return Database.open(db, data_dir())
    except DatabaseURLError as exc:
        fail(str(exc))


def _run(work: Callable[[], Any]) -> Any:
    try:
        return asyncio.run(work())
    except StoreError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot reach the store: {exc}", EXIT_ERROR)


def _report(result: Verification, what: str, as_json: bool) -> None:
    if as_json:
        typer.echo(dump_json(result.to_dict()))
    elif result.ok:
        typer.echo(
            f"{what}: intact: {result.events} events"
            + (f" (seq {result.first_seq}..{result.last_seq})" if result.events else "")
            + f", {result.checkpoints} signed checkpoints, signed through seq "
            f"{result.signed_through}, head {result.head_hash[:16]}"
        )
        for warning in result.warnings:
            err_console.print(f"warning: {warning}", highlight=False)
    else:
        assert result.problem is not None
        problem = result.problem
        typer.echo(f"{what}: NOT intact: {problem.kind} at seq {problem.seq}: {problem.message}")
    if not result.ok:
        raise typer.Exit(EXIT_ERROR)


@app.command("verify")
def verify_command(
    db: Db = None,
    public_key: PublicKeys = None,
    signing_key: SigningKeyPath = None,
    allow_unsigned: Annotated[
        int,
        typer.Option(
            "--allow-unsigned",
            min=0,
            help="Accept up to N newest events not yet covered by a signed checkpoint "
            "(a running server signs every second).",
        ),
    ] = 0,
    expect: Annotated[
        Path | None,
        typer.Option(
            "--expect",
            help="A checkpoint kept outside the store (jitgate audit checkpoint --output): "
            "the trail must still contain what it signed.",
        ),
    ] = None,
    archive: Annotated[
        Path | None, typer.Option("--archive", help="Verify this archive file instead.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Recompute the hash chain and check every signed checkpoint.

    Exits 0 when intact, 1 naming the first event altered, inserted,
    reordered or deleted (or the first unsigned one).
    """
    trusted = trusted_keys(public_key, signing_key)
    if archive is not None:
        from jitgate.store.audit import read_archive, verify_archive

        try:
            parsed = read_archive(archive)
        except (StoreError, OSError) as exc:
            fail(str(exc))
        _report(verify_archive(parsed, trusted), str(archive), as_json)
        return
    expected: Checkpoint | None = None
    if expect is not None:
        try:
            expected = Checkpoint.from_dict(json.loads(expect.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            fail(f"{expect}: not a checkpoint: {exc}")

    async def work() -> Verification:
        from jitgate.store.audit import verify_store

        database = _open(db)
        try:
            return await verify_store(
                database, trusted, allow_unsigned=allow_unsigned, expect=expected
            )
        finally:
            await database.close()

    _report(_run(work), "audit trail", as_json)


@app.command("checkpoint")
def checkpoint_command(
    db: Db = None,
    signing_key: SigningKeyPath = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the checkpoint to this file."),
    ] = None,
) -> None:
    """Sign the current head of the trail now, and print the latest checkpoint.

    Keep the printed checkpoint somewhere the database's administrators
    cannot write: ``audit verify --expect FILE`` then also catches the
    deletion of the newest events together with their checkpoints.
    """
    try:
        key = SigningKey.load(_signing_key_path(signing_key))
    except KeyFileError as exc:
        fail(str(exc))

    async def work() -> Checkpoint | None:
        from jitgate.store.audit import list_checkpoints, write_checkpoint

        database = _open(db)
        try:
            await write_checkpoint(database, key, datetime.now(UTC))
            async with database.transaction(readonly=True) as session:
                checkpoints = await list_checkpoints(session)
            return checkpoints[-1] if checkpoints else None
        finally:
            await database.close()

    latest = _run(work)
    if latest is None:
        fail("the trail is empty: nothing to sign", EXIT_ERROR)
    text = json.dumps(latest.to_dict(), indent=2)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)


@app.command("public-key")
def public_key_command(signing_key: SigningKeyPath = None) -> None:
    """Print the public half of the server's signing key (PEM), for verifiers."""
    try:
        key = VerifyKey.load(_signing_key_path(signing_key))
    except KeyFileError as exc:
        fail(str(exc))
    typer.echo(key.pem(), nl=False)
    err_console.print(f"key id {key.key_id}", highlight=False)


@app.command("export")
def export_command(
    db: Db = None,
    format: Annotated[str, typer.Option("--format", "-f", help="jsonl or csv.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time or age (7d).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time or age.")] = None,
    actor: Annotated[str | None, typer.Option("--actor")] = None,
    type: Annotated[
        str | None, typer.Option("--type", help="Event type, or a family: request.*")
    ] = None,
    request: Annotated[str | None, typer.Option("--request", help="Request id.")] = None,
    target: Annotated[str | None, typer.Option("--target")] = None,
    env: Annotated[str | None, typer.Option("--env")] = None,
) -> None:
    """Stream events (with their hashes) as JSON lines or CSV, oldest first."""
    from jitgate.store.audit import EventFilter, count_events, iter_events

    if format not in ("jsonl", "csv"):
        fail(f"--format must be jsonl or csv, not {format!r}")
    where = EventFilter(
        since=parse_when(since, "--since") if since else None,
        until=parse_when(until, "--until") if until else None,
        actor=actor,
        type=type,
        request_id=request,
        target=target,
        environment=env,
    )

    async def work(out: IO[str]) -> int:
        database = _open(db)
        written = 0
        try:
            show = (sys.stderr.isatty() and output is not None) or os.environ.get(
                "JITGATE_PROGRESS"
            ) == "1"
            total = await count_events(database, where) if show else None
            progress = _progress(total) if show else None
            writer = csv.writer(out) if format == "csv" else None
            if writer is not None:
                writer.writerow(CSV_COLUMNS)
            try:
                async for event in iter_events(database, where=where):
                    record = event.to_dict()
                    if writer is not None:
                        writer.writerow(
                            [
                                json.dumps(record[c], ensure_ascii=False)
                                if c == "payload"
                                else record[c]
                                for c in CSV_COLUMNS
                            ]
                        )
                    else:
                        out.write(dump_json(record) + "\n")
                    written += 1
                    if progress is not None and written % 1000 == 0:
                        progress(written)
            finally:
                if progress is not None:
                    progress(written, done=True)
            return written
        finally:
            await database.close()

    if output is None:
        _run(lambda: work(sys.stdout))
        return
    with open(output, "w", encoding="utf-8", newline="") as handle:
        count = _run(lambda: work(handle))
    err_console.print(f"{count} events written to {output}", highlight=False)


CSV_COLUMNS = (*EVENT_FIELDS, "hash")


def _progress(total: int | None) -> Callable[..., None]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    task = bar.add_task("events", total=total)
    bar.start()

    def update(count: int, done: bool = False) -> None:
        bar.update(task, completed=count)
        if done:
            bar.stop()

    return update


@app.command("archive")
def archive_command(
    before: Annotated[
        str, typer.Option("--before", help="Archive events older than this (ISO time or 90d).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Archive file to create.")],
    db: Db = None,
    public_key: PublicKeys = None,
    signing_key: SigningKeyPath = None,
) -> None:
    """Move old events into an archive file; what remains still verifies.

    The archive ends at the newest signed checkpoint before ``--before``; it
    carries that checkpoint and the hash at its end, and the store keeps an
    anchor there plus an ``audit.archived`` event, so both the archive
    (``audit verify --archive FILE``) and the remaining trail verify.
    """
    from jitgate.store.audit import Archived, archive_events

    cutoff = parse_when(before, "--before")
    trusted = trusted_keys(public_key, signing_key)
    actor = f"local:{_os_user()}"

    async def work() -> Archived | None:
        database = _open(db)
        try:
            return await archive_events(
                database, cutoff, output, trusted, now=datetime.now(UTC), actor=actor
            )
        finally:
            await database.close()

    archived = _run(work)
    if archived is None:
        typer.echo(f"nothing to archive: no signed checkpoint before {cutoff.isoformat()}")
        return
    typer.echo(
        f"archived {archived.events} events (seq {archived.from_seq}..{archived.through_seq}) "
        f"to {archived.path}, sha256 {archived.sha256}"
    )


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
