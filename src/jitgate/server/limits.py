"""The request body limit, as a pure ASGI middleware.

Two checks, both before the application holds the body in memory:

* a ``Content-Length`` over the limit is refused at once (``413``), without
  reading a byte of the body;
* a body without a length (chunked) or one that lies about it is counted as
  it streams in; the message that passes the limit raises
  :class:`~jitgate.server.errors.PayloadTooLarge` from ``receive``, so the
  reader (FastAPI's ``request.body()``) stops there and the error handler
  answers ``413``. At most the limit plus one network chunk is ever read.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jitgate.server.errors import PayloadTooLarge, error_response

#: 1 MiB, as docs/api.md promises.
DEFAULT_MAX_BODY = 1024 * 1024
#: What :func:`_content_length` returns for a header that is not a number.
INVALID = -1


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body: int = DEFAULT_MAX_BODY) -> None:
        if max_body < 0:
            raise ValueError("max_body must be >= 0")
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body
        declared = _content_length(scope)
        if declared == INVALID:
            response = error_response(400, "bad_request", "invalid Content-Length header")
            await response(scope, receive, send)
            return
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "payload_too_large", f"the request body is larger than {self.max_body} bytes"
        )
        # Tell the client (and the server) the connection will not be reused:
        # the unread body is still on the wire.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared body length, :data:`INVALID` if malformed, None if absent."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and text.isascii() else INVALID
    return None
