"""``jitgate policy``: check, test and show policies."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from jitgate.actions.findings import FINDING_CODES
from jitgate.cli.common import fail, load_policy_or_exit
from jitgate.evaluator import Evaluator
from jitgate.policy import lint_policy, run_policy_tests

app = typer.Typer(help="Check, test and show policies.", no_args_is_help=True)


@app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="Policy YAML file.")],
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
) -> None:
    """Validate a policy and lint it."""
    policy = load_policy_or_exit(file)
    console = Console()
    warnings = lint_policy(policy)
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(str(warning))}")
    console.print(
        f"[green]ok[/] {escape(str(file))}: {len(policy.rules)} rule(s), "
        f"{len(warnings)} warning(s)"
    )
    if strict and warnings:
        raise typer.Exit(1)


@app.command("test")
def test(
    file: Annotated[Path, typer.Argument(help="Policy YAML file.")],
    cases: Annotated[Path, typer.Argument(help="YAML file of cases with expected decisions.")],
) -> None:
    """Run policy unit tests: each case names an action and the decision it expects."""
    policy = load_policy_or_exit(file)
    if not cases.is_file():
        fail(f"cannot read {cases}: no such file")
    evaluator = Evaluator(policy)
    report = run_policy_tests(policy, cases, evaluator.evaluate)
    console = Console()
    for result in report.results:
        mark = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
        console.print(f"{mark} {escape(result.name)}")
        if not result.passed:
            console.print(f"     {escape(result.message)}")
    console.print(f"{report.passed} passed, {report.failed} failed")
    if report.failed:
        raise typer.Exit(1)


@app.command("default")
def show_default() -> None:
    """Print the built-in catalog, to copy and adapt."""
    text = files("jitgate.policy").joinpath("catalog/default.yaml").read_text(encoding="utf-8")
    typer.echo(text, nl=False)


@app.command("codes")
def codes() -> None:
    """List every finding code the analyzers emit, with its default risk."""
    console = Console()
    for code, kind in FINDING_CODES.items():
        console.print(f"{code:32} {kind.risk.label:9} {escape(kind.title)}", highlight=False)
