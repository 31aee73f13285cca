"""``jitgate proxy postgres``: a standalone PostgreSQL gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jitgate.cli.common import err_console, fail
from jitgate.cli.options import Token, Url

if TYPE_CHECKING:
    from jitgate.gateways.postgres.config import GatewayConfig

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
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Gateway processes sharing the port, for machines with cores to spare "
            "(default 1, or the config's workers).",
            show_default=False,
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            help="HOST:PORT to serve Prometheus metrics on (GET /metrics; default: none, "
            "or the config's metrics).",
            show_default=False,
        ),
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
            gateway_config = load_gateway_config(config, standalone=True).with_options(
                listen=listen, workers=workers, metrics=metrics
            )
        else:
            if upstream is None or env is None:
                fail("give --upstream and --env (or --config FILE)")
            gateway_config = GatewayConfig.single(
                listen or "127.0.0.1:6432",
                upstream,
                env,
                target,
                workers=1 if workers is None else workers,
                metrics=metrics,
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
        fail(
            "the gateway needs the jitgate server: give --url and --token (or JITGATE_URL and "
            "JITGATE_TOKEN), with a service account's token"
        )
    from jitgate.gateways.postgres import loop_factory
    from jitgate.gateways.postgres.workers import LOG_FORMAT, StartFailed

    log_level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            if gateway_config.workers == 1:
                runner.run(_run_standalone(gateway_config, server_url, server_token))
            else:
                runner.run(_run_workers(gateway_config, server_url, server_token, log_level))
    except StartFailed as error:
        fail(str(error), code=1)


def _announce(config: GatewayConfig, host: str, port: int) -> None:
    targets = ", ".join(f"{t.name} ({t.environment})" for t in config.targets)
    line = f"jitgate postgres gateway on {host}:{port}; targets: {targets}"
    if config.workers > 1:
        line += f"; {config.workers} workers"
    err_console.print(line, soft_wrap=True, highlight=False)


async def _run_workers(config: GatewayConfig, url: str, token: str, log_level: int) -> None:
    from jitgate.gateways.postgres.workers import Supervisor

    supervisor = Supervisor(config, url, token, log_level=log_level)
    await supervisor.run(lambda host, port: _announce(config, host, port))


async def _run_standalone(config: GatewayConfig, url: str, token: str) -> None:
    from jitgate.gateways.postgres.workers import start_metrics, start_standalone, stop_metrics

    gateway = await start_standalone(config, url, token)
    metrics = await start_metrics(gateway)  # StartFailed: the gateway is stopped
    host, bound = gateway.address
    _announce(config, host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await stop_metrics(metrics)
        await gateway.stop()
