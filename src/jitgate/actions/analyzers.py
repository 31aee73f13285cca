"""One entry point over all analyzers, failing closed."""

from __future__ import annotations

from jitgate.actions.findings import Analysis, Finding, Unit
from jitgate.actions.model import Action, ActionKind
from jitgate.actions.sql import analyze_sql
from jitgate.actions.structured import STRUCTURED_ANALYZERS


def analyze_text(kind: ActionKind, text: str) -> Analysis:
    """Analysis of a text kind; depends on the text alone, so it may be cached."""
    try:
        if kind is ActionKind.SQL:
            return analyze_sql(text)
        if kind is ActionKind.SHELL:
            # Imported on first use: a SQL-only process (the PostgreSQL
            # gateway) never loads the shell grammar and command tables.
            from jitgate.actions.shell import analyze_shell

            return analyze_shell(text)
    except Exception as error:
        return analyzer_failure(kind, error)
    raise ValueError(f"{kind.value} is not a text kind")


def analyze(action: Action) -> Analysis:
    if action.kind in (ActionKind.SQL, ActionKind.SHELL):
        return analyze_text(action.kind, action.text)
    try:
        return STRUCTURED_ANALYZERS[action.kind.value](action.payload)
    except Exception as error:
        return analyzer_failure(action.kind, error)


def analyzer_failure(kind: ActionKind, error: BaseException) -> Analysis:
    """A finding that holds the action when its analyzer broke."""
    finding = Finding.of(
        "action.invalid",
        f"the {kind.value} analyzer failed ({type(error).__name__}: {error}); held to be safe",
    )
    return Analysis.of((Unit(0, "invalid", ""),), (finding,))
