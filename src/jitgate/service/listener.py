"""Cross-process wake-up on PostgreSQL: LISTEN on a dedicated connection.

Every transaction that changes a request also runs
``pg_notify('jitgate_requests', '<id> <version>')``; PostgreSQL delivers the
notification when (and only if) the transaction commits. Each server process
holds one connection of its own (asyncpg, outside the SQLAlchemy pool: a pooled
connection would be handed to other work and lose its LISTEN) that listens on
the channel and hands every notification to a callback, which re-reads the
request and publishes it to the local hub.

The connection is supervised: a closed or silently dead connection (checked
with a ``SELECT 1`` every ``keepalive`` seconds) is replaced with backoff, and
after every (re)connect ``on_connect`` runs so the service can re-read what
its waiters wait on: notifications sent while nobody listened are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg
from sqlalchemy.engine import make_url

from jitgate.service.hub import wait_event

#: The channel every jitgate process notifies and listens on.
CHANNEL: Final = "jitgate_requests"

log = logging.getLogger(__name__)


def notify_payload(request_id: str, version: int) -> str:
    return f"{request_id} {version}"


def parse_payload(payload: str) -> tuple[str, int] | None:
    request_id, _, version = payload.partition(" ")
    if not request_id:
        return None
    try:
        return request_id, int(version) if version else 0
    except ValueError:
        return request_id, 0


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """A libpq-style DSN asyncpg accepts, from the store's SQLAlchemy URL."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    query = dict(url.query)
    if "ssl" in query and "sslmode" not in query:
        query["sslmode"] = query.pop("ssl")
    return url.set(query=query).render_as_string(hide_password=False)


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _conn: event.set()


class Listener:
    """LISTEN on :data:`CHANNEL`, reconnecting until :meth:`stop`."""

    def __init__(
        self,
        dsn: str,
        on_notify: Callable[[str, int], None],
        *,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        keepalive: float = 10.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._keepalive = keepalive
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._stopping = False
        #: How many times a connection was established (for tests and health).
        self.connections = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening connection (for tests)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    async def start(self, timeout: float = 10.0) -> None:
        """Start listening; wait up to ``timeout`` seconds for the first connection.

        If it cannot connect in time it keeps trying in the background (and
        logs); waiters then only wake on changes made by this process.
        """
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="jitgate-listener")
        if not await wait_event(self._connected, timeout):
            log.warning("LISTEN connection not up after %.0f s; retrying in background", timeout)

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _callback(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        parsed = parse_payload(payload)
        if parsed is None:
            return
        try:
            self._on_notify(*parsed)
        except Exception:
            log.exception("notification handler failed")

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(CHANNEL, self._callback)
                self._conn = conn
                self.connections += 1
                if self._on_connect is not None:
                    await self._on_connect()
                self._connected.set()
                backoff = 0.05
                while not self._stopping and not conn.is_closed():
                    if await wait_event(lost, self._keepalive):
                        break
                    async with asyncio.timeout(self._keepalive):
                        await conn.execute("SELECT 1")
                if not self._stopping:
                    log.warning("LISTEN connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection failed (%s: %s); retrying", type(exc).__name__, exc)
            finally:
                self._connected.clear()
                self._conn = None
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            if not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
