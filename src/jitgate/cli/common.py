"""Helpers shared by the CLI commands."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from jitgate.policy import Policy

#: Exit code for bad input or configuration (distinct from decision codes).
EXIT_USAGE = 2

err_console = Console(stderr=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr and the exit code. The message is plain text: a
    policy path like ``rules[2]`` or a finding tag must not be read as markup."""
    err_console.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False)
    raise typer.Exit(code)


def load_policy_or_exit(path: Path | None) -> Policy:
    # Imported here: the commands that never read a policy file (requests,
    # admin, every --help) need not load the policy engine and its analyzers.
    from jitgate.policy import PolicyError, default_policy, load_policy

    if path is None:
        return default_policy()
    try:
        return load_policy(path)
    except PolicyError as error:
        fail(str(error))


def stdin_text() -> TextIO:
    """Standard input as text that never fails to decode: undecodable bytes
    become surrogates, which the analyzers treat as unparseable (held)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:
        return sys.stdin
    return io.TextIOWrapper(buffer, encoding="utf-8", errors="surrogateescape")


def printable(text: str) -> str:
    """``text`` with undecodable bytes shown as U+FFFD, safe to print."""
    return text.encode("utf-8", "replace").decode("utf-8")


def dump_json(value: Any) -> str:
    """One line of JSON; non-ASCII kept readable unless it cannot be encoded."""
    out = json.dumps(value, ensure_ascii=False)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True)
    return out


#: Exit codes of the commands that wait for a decision (request --wait, run).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DENIED = 3
EXIT_EXPIRED = 4


def data_dir() -> Path:
    """Where the embedded SQLite store lives unless --db says otherwise."""
    import os

    explicit = os.environ.get("JITGATE_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "jitgate"
