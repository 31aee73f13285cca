"""Bearer token authentication.

Every path needs ``Authorization: Bearer <token>`` except ``/healthz``,
``/openapi.json`` (the public contract, no data) and, when the app is built
with ``metrics_public=True``, ``/metrics``. Authentication is a pure ASGI
middleware, so it runs before anything else looks at the request: an
unauthenticated caller gets ``401 unauthenticated`` (with
``WWW-Authenticate: Bearer``) whatever it sent, before its body is read or
parsed, and learns nothing about which routes exist.

The token is handed to :meth:`ApprovalService.authenticate` and nowhere else:
it is never logged, never put in an error message, never stored on the
request. The principal is kept in the ASGI scope for :func:`current_principal`.

The peer address (``scope["client"]``, which uvicorn sets from
``X-Forwarded-For`` only for trusted proxies) goes along: failures are
counted per address, and an address with too many recent failures gets
``429 too_many_failures`` with ``Retry-After``, whatever token it sends,
without the database being touched (:mod:`jitgate.service.throttle`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from jitgate.server.errors import error_response, unauthenticated
from jitgate.service import ApprovalService, Principal
from jitgate.service.throttle import TooManyFailures

#: Where the authenticated principal lives in the ASGI scope.
PRINCIPAL_SCOPE_KEY = "jitgate.principal"
#: Longer tokens are refused without hashing them (real ones are 46 characters).
MAX_TOKEN_LENGTH = 512

#: For the OpenAPI schema only (``auto_error=False``: the middleware decides).
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API token (`jitgate admin token create`).",
)


def bearer_token(scope: Scope) -> str | None:
    """The token of the first ``Authorization: Bearer`` header, if well formed."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
                return None
            return token
    return None


def client_address(scope: Scope) -> str | None:
    """The peer's host (no port: a client opens connections from many ports)."""
    client = scope.get("client")
    if not client:
        return None
    host = client[0]
    return str(host) if host else None


def route_path(scope: Scope) -> str:
    """The request path without the ``root_path`` a proxy may have mounted us under."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class AuthMiddleware:
    def __init__(
        self, app: ASGIApp, service: ApprovalService, public_paths: Collection[str]
    ) -> None:
        self.app = app
        self.service = service
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in self.public_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        try:
            principal = (
                await self.service.authenticate(token, client_address(scope))
                if token is not None
                else None
            )
        except TooManyFailures as refused:
            headers = {"Retry-After": str(refused.retry_after)}
            response = error_response(refused.status, refused.code, refused.message, headers)
            await response(scope, receive, send)
            return
        if principal is None:
            error = unauthenticated(
                "missing or malformed bearer token"
                if token is None
                else "invalid, expired or revoked bearer token"
            )
            response = error_response(error.status, error.code, error.message, error.headers)
            await response(scope, receive, send)
            return
        scope[PRINCIPAL_SCOPE_KEY] = principal
        await self.app(scope, receive, send)


async def current_principal(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller, as authenticated by :class:`AuthMiddleware`."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if not isinstance(principal, Principal):
        # Only reachable if the middleware is missing: fail closed.
        raise unauthenticated()
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
