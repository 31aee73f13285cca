"""One TCP connection of the gateway, as an asyncio protocol.

During start-up the gateway reads a connection like a stream (``await
read_exact(n)``, ``await read_message()``); once the session is established it
switches the connection to relay mode, where every chunk goes straight to a
callback without a coroutine switch. Back-pressure is passed across: when the
peer's outgoing buffer fills, this side stops reading.

Before relay mode nothing drains the start-up buffer but the reads of the
start-up sequence, which may be waiting for something else (the approval
service checking a token): once the buffer holds more than ``inbox_limit``
bytes (or more than the read in progress needs), reading pauses until the
start-up sequence takes from it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import cast

from jitgate.gateways.postgres.protocol import MAX_STARTUP, ProtocolViolation

_TYPED_HEADER = struct.Struct("!BI")
#: Default bound of the start-up buffer: the largest startup packet and a little.
INBOX_LIMIT = MAX_STARTUP + 16 * 1024


class ConnectionClosed(Exception):
    """The peer closed the connection."""


class Link(asyncio.Protocol):
    def __init__(self, max_message: int, inbox_limit: int = INBOX_LIMIT) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_message = max_message
        self._inbox = bytearray()
        #: Bytes buffered before reading pauses (a read that needs more raises it).
        self.inbox_limit = inbox_limit
        #: What the read in progress waits for (read_exact's n), 0 if none.
        self._need = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self.closed = asyncio.get_running_loop().create_future()
        #: Relay mode: every chunk goes here.
        self.on_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[Exception | None], None] | None = None
        #: The connection on the other side, whose reading pauses while ours
        #: cannot write fast enough.
        self.peer: Link | None = None
        self._reading_paused = False
        self._holds: set[str] = set()

    # --- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
            return
        self._inbox += data
        if len(self._inbox) > max(self.inbox_limit, self._need):
            self.hold_reading("inbox")
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_lost is not None:
            callback, self.on_lost = self.on_lost, None
            callback(exc)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.hold_reading("peer")

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.release_reading("peer")

    # --- start-up phase ---------------------------------------------------------------

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _more(self) -> None:
        if self._eof:
            raise ConnectionClosed("the connection was closed")
        # More is needed than is buffered: whatever the bound, read.
        self.release_reading("inbox")
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    async def read_exact(self, n: int) -> bytes:
        if len(self._inbox) < n:
            self._need = n
            try:
                while len(self._inbox) < n:
                    await self._more()
            finally:
                self._need = 0
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        if len(self._inbox) <= self.inbox_limit:
            self.release_reading("inbox")
        return data

    async def read_message(self) -> tuple[int, bytes]:
        """The next typed message: (type byte, body)."""
        while len(self._inbox) < 5:
            await self._more()
        kind, length = _TYPED_HEADER.unpack_from(self._inbox)
        if length < 4 or length > self.max_message:
            raise ProtocolViolation(f"invalid length {length} for message {chr(kind)!r}")
        data = await self.read_exact(1 + length)
        return int(kind), data[5:]

    @property
    def buffered(self) -> int:
        return len(self._inbox)

    def relay(self, on_data: Callable[[bytes], None]) -> None:
        """Switch to relay mode; what was read but not consumed goes first."""
        self.on_data = on_data
        if self._inbox:
            rest = bytes(self._inbox)
            self._inbox.clear()
            on_data(rest)
        self.release_reading("inbox")

    # --- writing and flow control -------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        """Wait until the write buffer is below its low-water mark (best effort)."""
        transport = self.transport
        while transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size() <= 64 * 1024:
                return
            await asyncio.sleep(0.005)

    def hold_reading(self, reason: str) -> None:
        self._holds.add(reason)
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def release_reading(self, reason: str) -> None:
        self._holds.discard(reason)
        if self._reading_paused and not self._holds and self.transport is not None:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
