"""The statement recorder: batching, retries, failing closed, draining."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence

import pytest

from conftest import ServiceWorld
from jitgate.audit.keys import TrustedKeys
from jitgate.gateways import ApprovalUnavailable, GatewayRefused, StatementRecord
from jitgate.gateways.inprocess import InProcessApprovals
from jitgate.gateways.recorder import RecorderClosed, StatementRecorder
from jitgate.gateways.records import PartiallyRecorded
from jitgate.store.audit import verify_store


def rec(n: int, text: str | None = None) -> StatementRecord:
    return StatementRecord(
        user="ann",
        target="main",
        environment="production",
        text=text if text is not None else f"SELECT {n}",
        decision="allow",
        session=str(n),
    )


class Sink:
    """A port's ``record_statements`` that keeps what it was given."""

    def __init__(self) -> None:
        self.batches: list[list[StatementRecord]] = []
        #: Called before each write; may raise (or block).
        self.before: Callable[[Sequence[StatementRecord]], object] | None = None
        self.gate: asyncio.Event | None = None

    async def record_statements(self, records: Sequence[StatementRecord]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.before is not None:
            self.before(records)
        self.batches.append(list(records))

    @property
    def written(self) -> list[str]:
        return [r.session for batch in self.batches for r in batch]


async def test_batches_fill_up_or_wait_for_a_flush() -> None:
    sink = Sink()
    recorder = StatementRecorder(sink, max_batch=3, max_delay=60)
    for n in range(7):
        recorder.record(rec(n))
    async with asyncio.timeout(5):
        while len(sink.batches) < 2:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert [len(b) for b in sink.batches] == [3, 3]  # the 7th waits for max_delay
    assert recorder.pending == 1
    assert await recorder.flush(timeout=5)
    assert [len(b) for b in sink.batches] == [3, 3, 1]
    assert sink.written == [str(n) for n in range(7)]
    assert (recorder.written, recorder.batches, recorder.failed) == (7, 3, 0)
    await recorder.close()


async def test_records_arriving_one_by_one_wake_the_writer_when_it_waits() -> None:
    """The writer is woken only by a first record or a full batch: check each
    state it can be in when records arrive one at a time, with the loop
    running in between (waiting for a first record, waiting for the batch to
    fill, busy writing, idle again)."""
    sink = Sink()
    recorder = StatementRecorder(sink, max_batch=3, max_delay=60)
    numbers = itertools.count()

    async def one_by_one(count: int) -> None:
        for _ in range(count):
            recorder.record(rec(next(numbers)))
            for _ in range(3):
                await asyncio.sleep(0)

    async def batches(count: int) -> None:
        async with asyncio.timeout(5):
            while len(sink.batches) < count:
                await asyncio.sleep(0.005)

    await one_by_one(3)  # fills a batch while the writer waits for it
    await batches(1)
    sink.gate = asyncio.Event()
    await one_by_one(3)  # the next batch is taken to be written, and blocks
    await one_by_one(4)  # more arrive while the writer is busy
    assert len(sink.batches) == 1
    sink.gate.set()
    await batches(3)
    await asyncio.sleep(0.05)
    assert [len(b) for b in sink.batches] == [3, 3, 3]
    assert recorder.pending == 1  # waits for max_delay (60 s) or a flush
    assert await recorder.flush(timeout=5)
    await one_by_one(2)  # idle again: a first record wakes the writer
    assert await recorder.flush(timeout=5)
    assert [len(b) for b in sink.batches] == [3, 3, 3, 1, 2]
    assert sink.written == [str(n) for n in range(12)]
    await recorder.close()


async def test_a_partial_batch_goes_after_max_delay() -> None:
    sink = Sink()
    recorder = StatementRecorder(sink, max_batch=100, max_delay=0.05)
    started = time.monotonic()
    recorder.record(rec(1))
    recorder.record(rec(2))
    assert sink.batches == []  # record() only queues
    async with asyncio.timeout(5):
        while not sink.batches:
            await asyncio.sleep(0.005)
    assert time.monotonic() - started >= 0.04
    assert [len(b) for b in sink.batches] == [2]
    await recorder.close()


async def test_record_is_cheap() -> None:
    sink = Sink()
    recorder = StatementRecorder(sink, max_batch=500, max_delay=0.01)
    record = rec(0)
    started = time.perf_counter()
    for _ in range(50_000):
        recorder.record(record)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, elapsed  # a few microseconds each
    assert sink.batches == []
    await recorder.close()
    assert recorder.written == 50_000
    assert max(len(b) for b in sink.batches) == 500


async def test_failures_are_retried_with_the_same_records() -> None:
    sink = Sink()
    failures = [3]

    def flaky(records: Sequence[StatementRecord]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise ApprovalUnavailable("the server is down")

    sink.before = flaky
    recorder = StatementRecorder(sink, max_batch=10, max_delay=0, retry_initial=0.01)
    for n in range(5):
        recorder.record(rec(n))
    assert await recorder.flush(timeout=5)
    assert sink.written == ["0", "1", "2", "3", "4"]  # each once, in order
    assert (recorder.written, recorder.failed, recorder.pending) == (5, 3, 0)
    assert recorder.last_error is None
    await recorder.close()


async def test_backoff_grows_while_the_service_is_down() -> None:
    sink = Sink()
    attempts: list[float] = []

    def down(records: Sequence[StatementRecord]) -> None:
        attempts.append(time.monotonic())
        raise ApprovalUnavailable("down")

    sink.before = down
    recorder = StatementRecorder(
        sink, max_batch=10, max_delay=0, retry_initial=0.02, retry_max=0.08
    )
    recorder.record(rec(1))
    assert not await recorder.flush(timeout=0.5)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(gaps) >= 3
    assert gaps[0] < gaps[2]
    assert max(gaps) < 0.5  # capped at retry_max (0.08 s), with room for a slow machine
    assert recorder.pending == 1
    assert recorder.last_error == "ApprovalUnavailable: down"
    sink.before = None
    assert await recorder.flush(timeout=5)
    assert sink.written == ["1"]
    await recorder.close()


async def test_full_backlog_fails_closed_until_it_drains() -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    recorder = StatementRecorder(sink, max_batch=2, max_delay=0, max_pending=5)
    for n in range(4):
        recorder.record(rec(n))
    assert recorder.accepting
    recorder.record(rec(4))
    assert not recorder.accepting  # the gateway refuses new statements now
    # What already ran is still queued, up to twice max_pending...
    for n in range(5, 10):
        recorder.record(rec(n))
    assert recorder.pending == 10
    # ... and only then dropped (a memory safety net).
    recorder.record(rec(10))
    assert (recorder.pending, recorder.dropped) == (10, 1)

    sink.gate.set()
    assert await recorder.flush(timeout=5)
    assert recorder.accepting
    assert sink.written == [str(n) for n in range(10)]
    await recorder.close()


async def test_refused_records_are_isolated_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()

    def picky(records: Sequence[StatementRecord]) -> None:
        if any(r.text == "bad" for r in records):
            raise GatewayRefused("invalid_body", "records[0].text: nope")

    sink.before = picky
    recorder = StatementRecorder(sink, max_batch=8, max_delay=60)
    for n in range(8):
        recorder.record(rec(n, "bad" if n in (2, 5) else None))
    with caplog.at_level(logging.ERROR, "jitgate.gateways.recorder"):
        assert await recorder.flush(timeout=5)
    assert sink.written == ["0", "1", "3", "4", "6", "7"]
    assert (recorder.written, recorder.rejected, recorder.pending) == (6, 2, 0)
    assert "refused the record" in caplog.text
    assert "bad" not in caplog.text  # no statement text in the log
    await recorder.close()


async def test_a_partial_write_is_not_written_twice() -> None:
    written: list[str] = []
    calls = [0]

    class Splitting:
        async def record_statements(self, records: Sequence[StatementRecord]) -> None:
            calls[0] += 1
            if calls[0] == 1:
                written.extend(r.session for r in records[:2])
                raise PartiallyRecorded(2, ApprovalUnavailable("lost the server"))
            written.extend(r.session for r in records)

    recorder = StatementRecorder(Splitting(), max_batch=10, max_delay=0, retry_initial=0.01)
    for n in range(5):
        recorder.record(rec(n))
    assert await recorder.flush(timeout=5)
    assert written == ["0", "1", "2", "3", "4"]
    assert (recorder.written, recorder.failed) == (5, 1)
    await recorder.close()


async def test_close_drains_then_refuses() -> None:
    sink = Sink()
    recorder = StatementRecorder(sink, max_batch=100, max_delay=60)
    for n in range(3):
        recorder.record(rec(n))
    await recorder.close()
    assert sink.written == ["0", "1", "2"]
    assert not recorder.accepting
    with pytest.raises(RecorderClosed):
        recorder.record(rec(3))
    await recorder.close()  # twice is fine


async def test_close_gives_up_after_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()

    def down(records: Sequence[StatementRecord]) -> None:
        raise ApprovalUnavailable("down")

    sink.before = down
    recorder = StatementRecorder(sink, max_batch=10, max_delay=0, retry_initial=0.01)
    recorder.record(rec(1))
    with caplog.at_level(logging.ERROR, "jitgate.gateways.recorder"):
        async with asyncio.timeout(5):
            await recorder.close(timeout=0.1)
    assert recorder.pending == 1
    assert "1 record(s) not written" in caplog.text


async def test_recorder_over_the_in_process_port(world: ServiceWorld) -> None:
    port = InProcessApprovals(world.service, gateway="pg-test")
    recorder = StatementRecorder(port, max_batch=20, max_delay=0.01)
    for n in range(50):
        recorder.record(rec(n))
    await recorder.close()
    events = await world.events()
    assert [e.type for e in events] == ["statement.executed"] * 50
    assert [e.payload["session"] for e in events] == [str(n) for n in range(50)]
    assert {e.payload["recorded_by"] for e in events} == {"gateway:pg-test"}
    assert (await verify_store(world.db, TrustedKeys(), allow_unsigned=10**6)).ok
