"""The typer application; each command group lives in its own module."""

from __future__ import annotations

import typer

from jitgate.cli import evaluate, policy

app = typer.Typer(
    name="jitgate",
    help="Just-In-Time action approval: stop dangerous actions and hold them for approval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("evaluate")(evaluate.evaluate_command)
app.add_typer(policy.app, name="policy")


def main() -> None:
    app()
