"""The FastAPI application: a thin HTTP adapter over :class:`ApprovalService`.

Middleware, outermost first (all pure ASGI, so streams pass through them
untouched):

1. :class:`HttpMetricsMiddleware` counts every answer, 500s and 413s included;
2. :class:`CatchAllMiddleware` turns an unexpected exception into ``500
   internal_error`` (logged, no traceback in the answer);
3. :class:`BodyLimitMiddleware` refuses bodies over ``max_body`` (``413``);
4. :class:`AuthMiddleware` refuses unauthenticated callers (``401``) before
   their body is parsed.

Then FastAPI's exception handlers (:mod:`jitgate.server.errors`) and the
routes (:mod:`jitgate.server.api`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import Response

from jitgate import __version__
from jitgate.server.api import DEFAULT_HEARTBEAT_SECONDS, ERRORS, ApiContext, router
from jitgate.server.api_analytics import analytics_router
from jitgate.server.api_audit import router as audit_router
from jitgate.server.api_gateway import router as gateway_router
from jitgate.server.api_grants import router as grants_router
from jitgate.server.api_receipts import router as receipts_router
from jitgate.server.auth import AuthMiddleware, CurrentPrincipal
from jitgate.server.errors import CatchAllMiddleware, install_error_handlers
from jitgate.server.limits import DEFAULT_MAX_BODY, BodyLimitMiddleware
from jitgate.server.metrics import (
    METRICS_CONTENT_TYPE,
    HttpMetricsMiddleware,
    Metrics,
    RouteTemplates,
)
from jitgate.server.models import Health
from jitgate.service import ApprovalService

if TYPE_CHECKING:
    from jitgate.notify import Notifier

#: Seconds shutdown waits for ``service.stop()`` before cancelling it.
DEFAULT_STOP_TIMEOUT = 5.0

logger = logging.getLogger("jitgate.server")

OPENAPI_URL = "/openapi.json"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"


def create_app(
    service: ApprovalService,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    metrics_public: bool = False,
    sse_heartbeat: float = DEFAULT_HEARTBEAT_SECONDS,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    notifier: Notifier | None = None,
) -> FastAPI:
    """The jitgate HTTP API over ``service``.

    ``max_body``: the largest request body accepted, in bytes. ``metrics_public``:
    serve ``/metrics`` without a token (for a scraper on a private network);
    by default it needs one, like every endpoint but ``/healthz`` and
    ``/openapi.json``. ``sse_heartbeat``: seconds between keep-alive comments
    on an idle event stream. ``stop_timeout``: how long shutdown waits for
    ``service.stop()`` before cancelling it (a shutdown must not hang).
    ``notifier``: subscribed to the service's events, started and stopped
    (drained) with the app, its counters in ``/metrics``.
    """
    metrics = Metrics()
    metrics.attach(service)
    if notifier is not None:
        from jitgate.notify.metrics import NotifierCollector

        notifier.attach(service)
        metrics.registry.register(NotifierCollector(notifier))
    ctx = ApiContext(service, metrics, heartbeat=sse_heartbeat)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.shutdown.clear()
        await service.start()
        if notifier is not None:
            await notifier.start()
        try:
            yield
        finally:
            ctx.shutdown.set()
            try:
                await stop_service(service, stop_timeout)
            finally:
                if notifier is not None:
                    await notifier.stop()

    app = FastAPI(
        title="jitgate",
        summary="Just-In-Time action approval gateway",
        version=__version__,
        openapi_url=OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.jitgate = ctx
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(audit_router)
    app.include_router(analytics_router)
    app.include_router(grants_router)
    app.include_router(receipts_router)
    app.include_router(gateway_router)

    @app.get(HEALTH_PATH, response_model=Health, tags=["meta"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (no token needed)."""
        return {"status": "ok"}

    async def metrics_endpoint() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    metrics_doc: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "Prometheus text exposition format",
            "content": {METRICS_CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
        }
    }
    if metrics_public:
        app.add_api_route(
            METRICS_PATH, metrics_endpoint, methods=["GET"], tags=["meta"], responses=metrics_doc
        )
    else:

        async def private_metrics(_principal: CurrentPrincipal) -> Response:
            return await metrics_endpoint()

        private_metrics.__doc__ = metrics_endpoint.__doc__
        app.add_api_route(
            METRICS_PATH,
            private_metrics,
            methods=["GET"],
            tags=["meta"],
            responses={**metrics_doc, 401: ERRORS[401]},
        )

    public = {HEALTH_PATH, OPENAPI_URL}
    if metrics_public:
        public.add(METRICS_PATH)
    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(AuthMiddleware, service=service, public_paths=public)
    app.add_middleware(BodyLimitMiddleware, max_body=max_body)
    app.add_middleware(CatchAllMiddleware)
    templates = RouteTemplates(lambda: [OPENAPI_URL, *app.openapi().get("paths", {})])
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics, templates=templates)
    return app


async def stop_service(service: ApprovalService, timeout: float) -> None:
    """``service.stop()``, cancelled (and logged) if it takes longer than ``timeout``.

    Cancelling it also re-cancels the background tasks it waits for, which
    ends one that missed its first cancellation.
    """
    stopping = asyncio.ensure_future(service.stop())
    done, _ = await asyncio.wait({stopping}, timeout=timeout)
    if stopping in done:
        stopping.result()
        return
    logger.warning("the approval service did not stop within %.1f s; cancelling it", timeout)
    stopping.cancel()
    await asyncio.wait({stopping}, timeout=timeout)


def begin_shutdown(app: FastAPI) -> None:
    """End the app's open event streams (the server is going down)."""
    ctx: ApiContext = app.state.jitgate
    ctx.shutdown.set()


__all__ = ["HEALTH_PATH", "METRICS_PATH", "OPENAPI_URL", "begin_shutdown", "create_app"]
