"""The typer application; each command group lives in its own module."""

from __future__ import annotations

import typer

from jitgate.cli import (
    admin,
    audit,
    evaluate,
    grants,
    policy,
    proxy,
    receipt,
    requests,
    run,
    serve,
)

app = typer.Typer(
    name="jitgate",
    help="Just-In-Time action approval: stop dangerous actions and hold them for approval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("evaluate")(evaluate.evaluate_command)
app.add_typer(policy.app, name="policy")
app.command("serve")(serve.serve_command)
app.add_typer(admin.app, name="admin")
app.add_typer(audit.app, name="audit")
app.command("request")(requests.request_command)
app.command("approve")(requests.approve_command)
app.command("deny")(requests.deny_command)
app.command("cancel")(requests.cancel_command)
app.command("outcome")(requests.outcome_command)
app.add_typer(requests.requests_app, name="requests")
app.add_typer(grants.grants_app, name="grants")
app.add_typer(receipt.app, name="receipt")
app.add_typer(proxy.app, name="proxy")
app.command(
    "run", context_settings={"allow_interspersed_args": False}
)(run.run_command)


def main() -> None:
    app()
