"""Options shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

Url = Annotated[
    str | None,
    typer.Option("--url", envvar="JITGATE_URL", help="jitgate server URL.", show_default=False),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="JITGATE_TOKEN", help="API token (prefer the environment variable).",
        show_default=False,
    ),
]
Db = Annotated[
    str | None,
    typer.Option(
        "--db", envvar="JITGATE_DB",
        help="Store URL: sqlite:///path/jitgate.db or postgresql://user@host/db "
        "(default: SQLite in the data directory).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
