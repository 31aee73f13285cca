"""Statement records to the audit trail, in batches, off the hot path.

A gateway calls :meth:`StatementRecorder.record` for every statement it let
through (or refused): synchronous and O(1), it only queues the record. A
background task writes the queue in batches through
:meth:`ApprovalPort.record_statements` (one transaction per batch): as soon as
``max_batch`` records wait, else ``max_delay`` seconds after the first one.

Failures: a batch that cannot be written (the service is unreachable) stays
at the head of the queue and is retried with exponential backoff
(``retry_initial`` doubling up to ``retry_max`` seconds); nothing is
dropped. A batch the service *refuses* (:class:`GatewayRefused`: a record it
will never accept) is split in halves until the refused records are
isolated; those alone are dropped, logged (without their text) and counted
as ``rejected``.

Fail closed: once ``max_pending`` records wait, :attr:`accepting` is false
and the gateway refuses new statements until the backlog drains. Records of
statements that already ran are still queued (what ran is never dropped for
being late); only past twice ``max_pending``, a safety net for memory, are
records dropped (counted as ``dropped`` and logged).

Counters for metrics: ``written`` (records), ``batches``, ``failed``
(failed write attempts), ``rejected``, ``dropped``; ``pending`` records wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import Final, Protocol

from jitgate.gateways.port import GatewayRefused, StatementRecord
from jitgate.gateways.records import PartiallyRecorded

log = logging.getLogger(__name__)

#: Seconds :meth:`StatementRecorder.close` waits for the queue to drain by default.
DEFAULT_CLOSE_TIMEOUT: Final = 10.0


class StatementSink(Protocol):
    """What the recorder needs of an :class:`~jitgate.gateways.port.ApprovalPort`."""

    async def record_statements(self, records: Sequence[StatementRecord]) -> None: ...


class RecorderClosed(RuntimeError):
    """:meth:`StatementRecorder.record` after :meth:`StatementRecorder.close`."""


class StatementRecorder:
    def __init__(
        self,
        port: StatementSink,
        *,
        max_batch: int = 500,
        max_delay: float = 0.1,
        max_pending: int = 100_000,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be at least 1")
        self.port = port
        self.max_batch = max_batch
        self.max_delay = max(0.0, max_delay)
        self.max_pending = max_pending
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._queue: deque[StatementRecord] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._urgent = False
        self._closing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        #: Records written to the trail.
        self.written = 0
        #: Batches written.
        self.batches = 0
        #: Write attempts that failed (and were retried).
        self.failed = 0
        #: Records the service refused (dropped after isolating them).
        self.rejected = 0
        #: Records dropped because the queue was past twice ``max_pending``.
        self.dropped = 0
        #: The last write error, if the last attempt failed.
        self.last_error: str | None = None

    # --- the hot path -----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records not written yet (the batch being written included)."""
        return len(self._queue)

    @property
    def accepting(self) -> bool:
        """False while ``max_pending`` records wait: refuse new statements."""
        return not self._closed and len(self._queue) < self.max_pending

    def record(self, record: StatementRecord) -> None:
        """Queue ``record`` (never blocks, never waits for I/O)."""
        if self._closed:
            raise RecorderClosed("the statement recorder is closed")
        if len(self._queue) >= 2 * self.max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "audit backlog full (%d records): %d statement record(s) dropped",
                    len(self._queue),
                    self.dropped,
                )
            return
        queue = self._queue
        queue.append(record)
        waiting = len(queue)
        # The writer waits for a first record or for a full batch; waking it
        # for every record in between would cost a task switch per statement.
        if waiting == 1 or waiting >= self.max_batch:
            self._idle.clear()
            if self._task is None:
                self.start()
            self._wake.set()

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer task (needs a running event loop; :meth:`record`
        starts it too)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="jitgate-statement-recorder"
            )

    async def flush(self, timeout: float | None = None) -> bool:
        """Write what is queued now, without waiting for ``max_delay``; True once
        the queue is empty, False if ``timeout`` seconds passed first."""
        if not self._queue:
            return True
        self.start()
        self._urgent = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Stop accepting records, drain the queue (at most ``timeout`` seconds:
        what is left then is logged as lost), stop the writer."""
        if self._closed:
            return
        self._closing = True
        drained = await self.flush(timeout)
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not drained and self._queue:
            log.error(
                "the statement recorder closed with %d record(s) not written to the "
                "audit trail (last error: %s)",
                len(self._queue),
                self.last_error,
            )

    # --- the writer -------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.retry_initial
        failures = 0  # in a row
        while True:
            if not self._queue:
                self._idle.set()
                self._urgent = False
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._queue) < self.max_batch and not (self._urgent or self._closing):
                # Let a batch build up, unless it fills first or a flush asks.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full(), self.max_delay)
            batch = [self._queue[i] for i in range(min(self.max_batch, len(self._queue)))]
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.failed += 1
                failures += 1
                self.last_error = f"{type(error).__name__}: {error}"
                if failures == 1 or backoff >= self.retry_max:
                    log.warning(
                        "writing %d statement record(s) failed (%s); retrying in %.1f s",
                        len(batch),
                        self.last_error,
                        backoff,
                    )
                await asyncio.sleep(backoff)
                backoff = min(self.retry_max, backoff * 2)
                continue
            if failures:
                log.info("statement records are written again after %d failure(s)", failures)
            backoff, failures = self.retry_initial, 0
            self.last_error = None

    async def _full(self) -> None:
        while len(self._queue) < self.max_batch and not (self._urgent or self._closing):
            self._wake.clear()
            await self._wake.wait()

    def _done(self, count: int) -> None:
        for _ in range(count):
            self._queue.popleft()

    async def _write(self, batch: list[StatementRecord]) -> None:
        """Write ``batch`` (the head of the queue) and take it off the queue;
        records the service refuses are isolated and dropped."""
        try:
            await self.port.record_statements(batch)
        except PartiallyRecorded as partial:
            self._count(partial.recorded)
            self._done(partial.recorded)
            if isinstance(partial.cause, GatewayRefused):
                await self._write(batch[partial.recorded :])
                return
            raise
        except GatewayRefused as refused:
            if len(batch) == 1:
                self._reject(batch[0], refused)
                self._done(1)
                return
            half = len(batch) // 2
            await self._write(batch[:half])
            await self._write(batch[half:])
            return
        self._count(len(batch))
        self._done(len(batch))

    def _count(self, count: int) -> None:
        if count:
            self.written += count
            self.batches += 1

    def _reject(self, record: StatementRecord, refused: GatewayRefused) -> None:
        self.rejected += 1
        log.error(
            "the audit trail refused the record of a statement by %s on %s (session %s, "
            "%d characters): %s: %s",
            record.user,
            record.target,
            record.session,
            len(record.text),
            refused.code,
            refused.message,
        )
