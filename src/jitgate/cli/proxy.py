"""``jitgate proxy postgres``: a standalone PostgreSQL gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from jitgate.cli.common import err_console, fail
from jitgate.cli.options import Token, Url

app = typer.Typer(help="Gateways that hold dangerous actions in the connection itself.")


@app.command("postgres")
def postgres_command(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Gateway configuration (YAML; several targets)."),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help="HOST:PORT to listen on (default 127.0.0.1:6432)."),
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            "--upstream",
            envvar="JITGATE_UPSTREAM",
            help="The PostgreSQL server to guard: postgresql://user:password@host:port/db"
            "?sslmode=... (prefer the environment variable, it carries a password).",
            show_default=False,
        ),
    ] = None,
    env: Annotated[
        str | None, typer.Option("--env", "-e", help="Environment of the upstream (prod, ...).")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Target name (default: the upstream database)."),
    ] = None,
    url: Url = None,
    token: Token = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log sessions.")] = False,
) -> None:
    """Listen for PostgreSQL clients, hold what the policy holds until it is
    approved, refuse what it denies, record every statement.

    Clients log in as jitgate users, with an API token as the password; the
    gateway logs in upstream with the credentials configured here. It asks the
    jitgate server at --url with a service-account --token.
    """
    from jitgate.gateways.postgres.config import (
        GatewayConfig,
        GatewayConfigError,
        load_gateway_config,
    )

    try:
        if config is not None:
            if upstream is not None or env is not None or target is not None:
                fail("give either --config or --upstream/--env/--target, not both")
            gateway_config = load_gateway_config(config)
            if listen is not None:
                gateway_config = gateway_config.model_copy(
                    update={"listen": type(gateway_config.listen).model_validate(listen)}
                )
        else:
            if upstream is None or env is None:
                fail("give --upstream and --env (or --config FILE)")
            gateway_config = GatewayConfig.single(
                listen or "127.0.0.1:6432", upstream, env, target
            )
        server_url = url
        server_token = token
        if gateway_config.server is not None:
            server_url = server_url or gateway_config.server.url
            server_token = server_token or gateway_config.server.resolve_token()
    except GatewayConfigError as error:
        fail(str(error))
    except ValueError as error:
        fail(str(error))
    if not server_url or not server_token:
        fail("the gateway needs the jitgate server: give --url and --token (or JITGATE_URL and "
             "JITGATE_TOKEN), with a service account's token")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from jitgate.gateways.postgres import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_run_standalone(gateway_config, server_url, server_token))


async def _run_standalone(config: object, url: str, token: str) -> None:
    from jitgate.gateways.postgres import start_gateway
    from jitgate.gateways.postgres.config import GatewayConfig
    from jitgate.gateways.remote import RemoteApprovals

    assert isinstance(config, GatewayConfig)
    port = RemoteApprovals(url, token, gateway=config.name)
    try:
        await port.start()
    except Exception as error:
        await port.close()
        err_console.print(f"[bold red]error:[/] cannot reach the jitgate server: {error}")
        raise typer.Exit(1) from None
    try:
        gateway = await start_gateway(config, port, url)
    except OSError as error:  # the recorder and the port are closed
        err_console.print(f"[bold red]error:[/] cannot listen on {config.listen}: {error}")
        raise typer.Exit(1) from None
    host, bound = gateway.address
    targets = ", ".join(f"{t.name} ({t.environment})" for t in config.targets)
    err_console.print(f"jitgate postgres gateway on {host}:{bound}; targets: {targets}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await gateway.stop()
