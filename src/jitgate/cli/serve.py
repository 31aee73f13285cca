"""``jitgate serve``: the approval service over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jitgate.cli.common import data_dir, fail, load_policy_or_exit
from jitgate.cli.options import Db


def serve_command(
    db: Db = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8470,
    policy: Annotated[
        Path | None, typer.Option("--policy", "-p", help="Policy file (default: the catalog).")
    ] = None,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            "--signing-key",
            envvar="JITGATE_SIGNING_KEY",
            help="Ed25519 key (PEM) that signs audit checkpoints and receipts "
            "(default: audit-signing-key.pem in the data directory, created if missing).",
        ),
    ] = None,
    notify: Annotated[
        Path | None,
        typer.Option(
            "--notify",
            envvar="JITGATE_NOTIFY",
            help="Notification sinks (YAML: webhooks, Slack); see docs/notifications.md.",
        ),
    ] = None,
    gateway: Annotated[
        Path | None,
        typer.Option(
            "--gateway",
            envvar="JITGATE_GATEWAY",
            help="Run a PostgreSQL gateway in this process (YAML: listen, targets); "
            "see docs/gateway-postgres.md.",
        ),
    ] = None,
) -> None:
    """Run the approval service: REST API, live events, metrics (and, with
    --gateway, the PostgreSQL gateway)."""
    from jitgate.server.run import run_server

    compiled = load_policy_or_exit(policy)  # a broken policy stops start-up, with file:line
    if notify is not None:  # so does a broken notification config
        from jitgate.notify import NotifyConfigError, load_notify_config

        try:
            load_notify_config(notify)
        except NotifyConfigError as error:
            fail(str(error))
    if gateway is not None:  # and a broken gateway config
        from jitgate.gateways.postgres.config import GatewayConfigError, load_gateway_config

        try:
            load_gateway_config(gateway)
        except GatewayConfigError as error:
            fail(str(error))
    run_server(
        db_url=db,
        data_dir=data_dir(),
        host=host,
        port=port,
        policy=compiled,
        signing_key_path=signing_key,
        notify_path=notify,
        gateway_path=gateway,
    )
