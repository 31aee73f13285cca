"""Run the API server: store, policy, service, app, uvicorn.

``run_server`` is what ``jitgate serve`` calls; ``serve`` is the same inside
a running event loop. uvicorn runs programmatically (``uvicorn.Server``),
with uvloop and httptools when installed (``uvicorn[standard]``).

Shutdown: the first SIGINT or SIGTERM stops accepting connections, ends the
open event streams (they would otherwise hold the server up until the
graceful timeout), lets running requests finish, stops the service and
closes the database; a second SIGINT forces the exit. ``run_server`` then
returns normally (exit status 0); it does not re-raise the signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Generator
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI

from jitgate.audit.keys import DEFAULT_KEY_FILENAME, SigningKey
from jitgate.evaluator import Evaluator
from jitgate.gateways.inprocess import InProcessApprovals
from jitgate.gateways.postgres import loop_factory
from jitgate.gateways.postgres import start_gateway as start_postgres_gateway
from jitgate.gateways.postgres.config import GatewayConfig, load_gateway_config
from jitgate.gateways.postgres.gateway import RunningGateway
from jitgate.notify import Notifier, load_notify_config
from jitgate.policy import Policy, load_policy
from jitgate.server.app import begin_shutdown, create_app
from jitgate.server.limits import DEFAULT_MAX_BODY
from jitgate.service import ApprovalService
from jitgate.service.policy_audit import record_policy_loaded
from jitgate.store import Database, migrate

logger = logging.getLogger("jitgate.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: How long running requests may take to finish once shutdown begins.
DEFAULT_GRACEFUL_TIMEOUT = 10.0
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Called once the server listens, with the host and the bound port.
ReadyCallback = Callable[[str, int], None]


class Server(uvicorn.Server):
    """uvicorn's server, with jitgate's shutdown.

    Signals are handled by the event loop (``loop.add_signal_handler``), not
    re-raised after shutdown (uvicorn's default, meant for its own CLI), and
    the first one also ends the app's event streams.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        install_signal_handlers: bool = True,
        on_ready: ReadyCallback | None = None,
    ) -> None:
        super().__init__(config)
        self._install_signal_handlers = install_signal_handlers
        self._on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        installed: list[int] = []
        if self._install_signal_handlers:
            loop = asyncio.get_running_loop()
            for signum in HANDLED_SIGNALS:
                try:
                    loop.add_signal_handler(signum, self.handle_exit, int(signum), None)
                except (NotImplementedError, RuntimeError, ValueError):
                    continue  # not the main thread, or no signals here
                installed.append(int(signum))
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            for sig in installed:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info("received %s, shutting down", signal.Signals(sig).name)
        super().handle_exit(sig, frame)
        self.begin_shutdown()

    def begin_shutdown(self) -> None:
        app = self.config.app
        if isinstance(app, FastAPI):
            begin_shutdown(app)

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self._on_ready is not None and self.started:
            host, port = self.bound_address()
            self._on_ready(host, port)

    def bound_address(self) -> tuple[str, int]:
        """The address of the first listening socket (the real port when given 0)."""
        for server in self.servers:
            for sock in server.sockets:
                address = sock.getsockname()
                return str(address[0]), int(address[1])
        return self.config.host, self.config.port


def make_server(
    app: FastAPI,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_level: str | None = "info",
    access_log: bool = True,
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
    install_signal_handlers: bool = True,
    on_ready: ReadyCallback | None = None,
    lifespan: Literal["on", "off"] = "on",
) -> Server:
    """A uvicorn server for ``app`` (``port=0``: any free port; see ``bound_address``).

    ``lifespan="off"`` when the caller runs the app's lifespan itself.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http="auto",
        lifespan=lifespan,
        log_level=log_level,
        access_log=access_log,
        server_header=False,
        timeout_graceful_shutdown=max(1, round(graceful_timeout)),
    )
    return Server(config, install_signal_handlers=install_signal_handlers, on_ready=on_ready)


async def serve(
    db_url: str | None,
    *,
    data_dir: Path | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    policy: Policy | None = None,
    policy_path: str | Path | None = None,
    signing_key_path: str | Path | None = None,
    notify_path: str | Path | None = None,
    gateway_path: str | Path | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    metrics_public: bool = False,
    log_level: str | None = "info",
    access_log: bool = True,
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
    install_signal_handlers: bool = True,
    on_ready: ReadyCallback | None = None,
    shutdown: asyncio.Event | None = None,
) -> None:
    """Migrate the store, then serve the API until a signal or ``shutdown`` is set.

    ``db_url`` as the CLI takes it (``None``: ``<data_dir>/jitgate.db``);
    ``policy`` (compiled) or ``policy_path`` (a file to load): the policy,
    by default the built-in catalog. ``signing_key_path``: the Ed25519 key
    that signs audit checkpoints and receipts (default
    ``<data_dir>/audit-signing-key.pem``, created when missing). Errors
    before the server starts (bad URL, bad policy, unreachable database)
    propagate: :class:`~jitgate.store.DatabaseURLError`,
    :class:`~jitgate.policy.PolicyError`, ...
    """
    if db_url is None and data_dir is None:
        raise ValueError("give a database URL or a data directory")
    if policy is not None and policy_path is not None:
        raise ValueError("give a policy or a policy path, not both")
    if policy_path is not None:
        policy = load_policy(policy_path)
    # ``notify_path``: sinks for notifications (docs/notifications.md); NotifyConfigError.
    notifier = Notifier(load_notify_config(notify_path)) if notify_path is not None else None
    # ``gateway_path``: a PostgreSQL gateway run in this process
    # (docs/gateway-postgres.md); GatewayConfigError.
    gateway_config = load_gateway_config(gateway_path) if gateway_path is not None else None
    evaluator = Evaluator(policy)
    if signing_key_path is None and data_dir is None:
        # Nowhere to keep a key: sign with one that dies with the process
        # (its checkpoints cannot be verified later; the CLI always passes a
        # data directory).
        logger.warning("no data directory or signing key: audit checkpoints use an ephemeral key")
        signing_key = SigningKey.generate()
    else:
        assert data_dir is not None or signing_key_path is not None
        signing_key = SigningKey.load_or_create(
            signing_key_path or (data_dir or Path(".")) / DEFAULT_KEY_FILENAME
        )
    db = Database.open(db_url, data_dir or Path("."))
    try:
        await migrate(db)
        await record_policy_loaded(db, evaluator.policy)  # the trail names the policy in force
        service = ApprovalService(db, evaluator, signing_key=signing_key)
        app = create_app(
            service, max_body=max_body, metrics_public=metrics_public, notifier=notifier
        )
        server = make_server(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            graceful_timeout=graceful_timeout,
            install_signal_handlers=install_signal_handlers,
            on_ready=on_ready,
        )
        logger.info("serving %s on http://%s:%d", db.display_url, host, port)
        stopper = asyncio.create_task(_stop_on(shutdown, server)) if shutdown else None
        gateway = None
        try:
            if gateway_config is not None:
                gateway = await start_gateway(gateway_config, service, f"http://{host}:{port}")
            await server.serve()
        finally:
            if gateway is not None:
                await gateway.stop()
            if stopper is not None:
                stopper.cancel()
    finally:
        await db.close()


async def start_gateway(
    config: GatewayConfig, service: ApprovalService, url: str
) -> RunningGateway:
    """The PostgreSQL gateway of ``config``, in this process, listening
    (:func:`jitgate.gateways.postgres.start_gateway` over ``service``)."""
    gateway = await start_postgres_gateway(
        config, InProcessApprovals(service, gateway=config.name), url
    )
    host, bound = gateway.address
    logger.info("postgres gateway %s on %s:%d", config.name, host, bound)
    return gateway


async def _stop_on(event: asyncio.Event, server: Server) -> None:
    await event.wait()
    server.should_exit = True
    server.begin_shutdown()


def run_server(
    db_url: str | None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    policy_path: str | Path | None = None,
    **options: Any,
) -> None:
    """Blocking :func:`serve` on a fresh event loop (uvloop when installed)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(db_url, host=host, port=port, policy_path=policy_path, **options))
