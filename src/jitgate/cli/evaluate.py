"""``jitgate evaluate``: one action, or a batch of them, against a policy."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape

from jitgate.actions.model import TEXT_KINDS, Action, ActionKind, InvalidAction
from jitgate.cli.common import dump_json, fail, load_policy_or_exit, printable, stdin_text
from jitgate.evaluator import Evaluator
from jitgate.policy import Decision, Outcome

#: ``--check`` exit codes, for pipelines that gate on a decision.
EXIT_FOR_OUTCOME = {Outcome.ALLOW: 0, Outcome.DENY: 3, Outcome.REQUIRE_APPROVAL: 5}

#: A batch line longer than this is refused: one runaway line must not take
#: the whole batch's memory.
MAX_BATCH_LINE = 16 * 1024 * 1024

STYLE = {
    Outcome.ALLOW: "bold green",
    Outcome.REQUIRE_APPROVAL: "bold yellow",
    Outcome.DENY: "bold red",
}


def evaluate_command(
    text: Annotated[
        str | None,
        typer.Argument(
            help="The statement or command line ('-' reads standard input); "
            "for structured kinds, the JSON payload.",
            show_default=False,
        ),
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", "-k", help="sql, shell, deploy, tool_call, http, custom.")
    ] = "sql",
    env: Annotated[str, typer.Option("--env", "-e", help="Environment (prod = production).")] = "",
    user: Annotated[str, typer.Option("--user", "-u", help="Who attempts the action.")] = "",
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="The actor's groups (repeatable).")
    ] = None,
    target: Annotated[
        str, typer.Option("--target", "-t", help="Connection, cluster, service...")
    ] = "",
    policy: Annotated[
        Path | None,
        typer.Option("--policy", "-p", help="Policy file (default: the built-in catalog)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    batch: Annotated[
        str | None, typer.Option("--batch", help="JSON lines file of actions ('-' = stdin).")
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Exit 0 if allowed, 5 if approval is required, 3 if denied."),
    ] = False,
) -> None:
    """Decide whether an action is allowed, needs approval, or is denied."""
    evaluator = Evaluator(load_policy_or_exit(policy))
    if batch is not None:
        if text is not None:
            fail("give either TEXT or --batch, not both")
        stream = stdin_text() if batch == "-" else _open(batch)
        worst = _run_batch(evaluator, stream, sys.stdout)
        raise typer.Exit(EXIT_FOR_OUTCOME[worst] if check else 0)
    if text is None:
        fail("missing TEXT (or --batch FILE)")
    if text == "-":
        text = stdin_text().read()
    try:
        action = _action_from_cli(kind, text, env, user, group or [], target)
    except InvalidAction as error:
        fail(str(error))
    decision = evaluator.evaluate(action)
    if as_json:
        sys.stdout.write(dump_json(decision.to_dict()) + "\n")
    else:
        render(Console(), action, decision)
    raise typer.Exit(EXIT_FOR_OUTCOME[decision.outcome] if check else 0)


def _open(path: str) -> TextIO:
    try:
        return open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")


def _action_from_cli(
    kind: str, text: str, env: str, user: str, groups: list[str], target: str
) -> Action:
    try:
        action_kind = ActionKind(kind)
    except ValueError:
        return Action.create(kind)  # raises InvalidAction naming the allowed kinds
    payload: dict[str, Any] | None = None
    if action_kind not in TEXT_KINDS:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidAction(f"a {kind} action takes a JSON payload: {error}") from None
        if not isinstance(loaded, dict):
            raise InvalidAction(f"a {kind} action's payload must be a JSON object")
        payload, text = loaded, ""
    return Action.create(
        action_kind,
        text,
        payload=payload,
        target=target,
        environment=env,
        user=user,
        groups=groups,
    )


def _lines(stream: TextIO) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        yield number, line.rstrip("\n")


def _run_batch(evaluator: Evaluator, stream: TextIO, out: TextIO) -> Outcome:
    """Output line *i* answers input line *i*; a bad line gets an error object."""
    worst = Outcome.ALLOW
    for number, line in _lines(stream):
        result: dict[str, Any]
        try:
            if len(line) > MAX_BATCH_LINE:
                raise InvalidAction(f"line longer than {MAX_BATCH_LINE} characters")
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as error:
                raise InvalidAction(f"not valid JSON: {error}") from None
            decision = evaluator.evaluate(Action.from_record(record))
            result = {"line": number, **decision.to_dict()}
            worst = max(worst, decision.outcome)
        except InvalidAction as error:
            result = {"line": number, "error": {"code": "invalid_action", "message": str(error)}}
            worst = Outcome.DENY
        out.write(dump_json(result) + "\n")
    out.flush()
    return worst


def render(console: Console, action: Action, decision: Decision) -> None:
    """The human view of a decision."""

    def say(markup: str) -> None:
        console.print(printable(markup), highlight=False)

    where = " · ".join(
        x for x in (action.kind.value, action.environment or "no environment", action.target) if x
    )
    label = decision.outcome.label.replace("_", " ").upper()
    say(
        f"[{STYLE[decision.outcome]}]{label}[/]  risk [bold]{decision.risk.label}[/]  "
        f"[dim]{escape(where)}[/]"
    )
    if decision.message:
        say(f"  {escape(decision.message)}")
    for reason in decision.reasons:
        say(f"  • {escape(reason)}")
    if decision.rules:
        say(f"  rules: {escape(', '.join(decision.rules))}")
    if decision.chain is not None:
        for number, stage in enumerate(decision.chain.stages, start=1):
            groups = (" and " if stage.quorum.value == "all" else " or ").join(stage.groups)
            extras = " + MFA" if stage.mfa else ""
            say(
                f"  approval stage {number} ({escape(stage.name)}): "
                f"{stage.approvals} approval(s) from {escape(groups)}{extras}"
            )
    say(f"  [dim]fingerprint {decision.fingerprint}[/]")
