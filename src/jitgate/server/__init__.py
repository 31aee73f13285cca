"""The HTTP server: a FastAPI app over :class:`jitgate.service.ApprovalService`.

``create_app(service)`` builds the app (REST API under ``/api/v1``, SSE,
``/healthz``, ``/metrics``, ``/openapi.json``); ``run_server(db_url, ...)``
runs it with uvicorn (see :mod:`jitgate.server.run`). docs/api.md is the
contract.
"""

from jitgate.server.app import create_app
from jitgate.server.run import run_server, serve

__all__ = ["create_app", "run_server", "serve"]
