"""``jitgate audit report``: approval analytics over the audit trail, offline against the store.

Reads the trail a page at a time (by ``seq``) and feeds it to the streaming
:class:`~jitgate.audit.analytics.Analyzer`, so memory follows the requests in
the window, not the size of the trail. Events before ``--since`` are read
too: they are the baselines the anomaly rules compare against.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from jitgate.audit.analytics import Analyzer, Report, parse_bound
from jitgate.audit.report import FORMATS, render
from jitgate.cli.common import data_dir, fail, printable
from jitgate.cli.options import Db
from jitgate.store import Database, StoreError, list_events

#: Events read per page.
PAGE = 2000


async def read_report(
    database: Database,
    *,
    since: datetime | None,
    until: datetime | None,
    now: datetime,
    page: int = PAGE,
) -> Report:
    """The analytics report over the trail in ``database``, read page by page."""
    analyzer = Analyzer(since=since, until=until)
    after = 0
    while True:
        async with database.transaction(readonly=True) as session:
            rows = await list_events(session, after_seq=after, limit=page)
        for row in rows:
            analyzer.feed(row)
        if len(rows) < page:
            break
        after = rows[-1].seq
    return analyzer.report(now=now)


def report_command(
    db: Db = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Start of the window: 7d, 24h, 2w before now, or an ISO date/time (UTC "
            "unless it has an offset). Default: the whole trail.",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            help="End of the window (excluded), same forms. Default: now.",
            show_default=False,
        ),
    ] = None,
    format: Annotated[
        str,
        typer.Option("--format", "-f", help="text, json or html."),
    ] = "text",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the report to this file instead of stdout.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Approval analytics: bottlenecks, outcomes and anomalies from the audit trail."""
    if format not in FORMATS:
        fail(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
    now = datetime.now(UTC)
    try:
        start = None if since is None else parse_bound(since, now)
        end = None if until is None else parse_bound(until, now)
    except ValueError as error:
        fail(str(error))
    if start is not None and end is not None and start >= end:
        fail("--since must be before --until")

    async def main() -> Report:
        database = Database.open(db, data_dir())
        try:
            return await read_report(database, since=start, until=end, now=now)
        finally:
            await database.close()

    try:
        report = asyncio.run(main())
    except StoreError as error:
        fail(str(error))
    except SQLAlchemyError as error:
        first = (str(getattr(error, "orig", None) or error).splitlines() or ["?"])[0]
        fail(f"cannot read the audit trail ({type(error).__name__}): {first}")
    text = render(report, format)
    if output is None:
        sys.stdout.write(printable(text))
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    typer.echo(f"report written to {output}", err=True)


__all__ = ["read_report", "report_command"]
