"""In-process wake-up of waiters: a publish/subscribe hub keyed by request id.

After a transaction that changed a request commits, the service publishes the
new view with the row's version to the hub; every subscriber of that request
wakes at once (an :class:`asyncio.Event`, no polling). Versions make delivery
idempotent: a view reaching a subscriber twice (from the local commit and
again through PostgreSQL ``NOTIFY``), or out of order, is dropped unless it is
newer than the last one the subscriber got.

A subscriber that does not keep up loses the oldest queued views, never the
newest: a waiter may skip an intermediate state, never the final one.

Everything here runs on the event loop thread; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

#: Views queued per subscriber before the oldest are dropped.
MAX_QUEUED = 64

Published = tuple[int, Mapping[str, Any]]


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; whether it is set.

    ``asyncio.wait_for`` on Python 3.11 may swallow a cancellation that races
    the awaited event (it returns the result instead), which would let a task
    that is being stopped carry on; ``asyncio.timeout`` does not.
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


class Subscription:
    """One waiter's queue of (version, view) for one request."""

    def __init__(self, hub: Hub, request_id: str) -> None:
        self.hub = hub
        self.request_id = request_id
        self._queue: deque[Published] = deque(maxlen=MAX_QUEUED)
        self._event = asyncio.Event()
        #: The newest version queued or already seen.
        self.version = 0
        self.closed = False

    def offer(self, version: int, view: Mapping[str, Any]) -> None:
        """Queue ``view`` if it is newer than anything this subscriber has."""
        if self.closed or version <= self.version:
            return
        self.version = version
        self._queue.append((version, view))
        self._event.set()

    def seen(self, version: int) -> None:
        """The waiter got ``version`` another way (its initial read)."""
        self.version = max(self.version, version)
        while self._queue and self._queue[0][0] <= self.version:
            self._queue.popleft()

    async def get(self, timeout: float | None = None) -> Published | None:
        """The next queued view; None if ``timeout`` seconds pass first."""
        while not self._queue:
            self._event.clear()
            if not await wait_event(self._event, timeout):
                return None
        return self._queue.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub._remove(self)


class Hub:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}

    def subscribe(self, request_id: str) -> Subscription:
        sub = Subscription(self, request_id)
        self._subscribers.setdefault(request_id, set()).add(sub)
        return sub

    def publish(self, request_id: str, version: int, view: Mapping[str, Any]) -> None:
        for sub in list(self._subscribers.get(request_id, ())):
            sub.offer(version, view)

    def watched(self) -> list[str]:
        """The ids somebody waits on."""
        return list(self._subscribers)

    def wants(self, request_id: str, version: int | None = None) -> bool:
        """Whether a subscriber of ``request_id`` lacks ``version`` (any, if None)."""
        subs = self._subscribers.get(request_id)
        if not subs:
            return False
        return version is None or any(s.version < version for s in subs)

    def _remove(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.request_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subscribers[sub.request_id]
