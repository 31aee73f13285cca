"""The PostgreSQL gateway (docs/gateway-postgres.md).

:func:`start_gateway` is how the gateway is run, by ``jitgate proxy
postgres`` (over the REST API) and by ``jitgate serve --gateway`` (in
process). This module stays light: ``jitgate proxy postgres`` imports it
before anything else, and the gateway's own modules are imported when it
starts. ``jitgate proxy postgres --workers N`` runs N of them, each in a
process of its own (workers.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jitgate.gateways.port import ApprovalPort
    from jitgate.gateways.postgres.config import GatewayConfig
    from jitgate.gateways.postgres.gateway import RunningGateway
    from jitgate.gateways.postgres.workers import WorkerSlot

__all__ = ["loop_factory", "start_gateway"]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (for ``asyncio.Runner``), else None."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def start_gateway(
    config: GatewayConfig,
    port: ApprovalPort,
    approve_url: str | None = None,
    *,
    worker: WorkerSlot | None = None,
) -> RunningGateway:
    """The gateway of ``config``, listening, with its statement recorder.

    ``port`` is the approval service, ready to use (a
    :class:`~jitgate.gateways.remote.RemoteApprovals` already started); from
    now on the returned handle owns it: :meth:`RunningGateway.stop` stops the
    gateway, writes the statements still queued and closes the port. If the
    gateway cannot listen (:class:`OSError`), the recorder and the port are
    closed before the error propagates. ``approve_url``: the server named in
    the hint a held statement's notice gives (``jitgate approve ID --url ...``).
    ``worker``: which of ``config.workers`` processes this gateway is; a
    configuration with several workers and no ``worker`` (``jitgate serve
    --gateway``, one process) is refused with :class:`GatewayConfigError`.
    """
    from jitgate.gateways.postgres.config import GatewayConfigError
    from jitgate.gateways.postgres.gateway import PostgresGateway, RunningGateway
    from jitgate.gateways.recorder import StatementRecorder
    from jitgate.policy.errors import PolicyProblem

    if config.workers > 1 and worker is None:
        await port.close()
        raise GatewayConfigError(
            [
                PolicyProblem(
                    f"{config.workers} workers need a standalone gateway (jitgate proxy "
                    "postgres); in this process the gateway runs once: set workers to 1",
                    path=("workers",),
                    file=f"gateway {config.name}",
                )
            ]
        )

    recorder = StatementRecorder(
        port,
        max_batch=config.audit_batch.max_records,
        max_delay=config.audit_batch.max_delay_ms / 1000,
    )
    recorder.start()
    gateway = PostgresGateway(config, port, recorder, approve_url=approve_url, worker=worker)
    try:
        await gateway.start()
    except BaseException:
        await recorder.close()
        await port.close()
        raise
    return RunningGateway(gateway, recorder, port)
