"""A real HTTP receiver for the notification tests: a tiny ASGI app under uvicorn
on 127.0.0.1 (any free port), in the test's own event loop.

Each path answers ``200`` unless a plan says otherwise: ``plan(path, (500, {}),
(429, {"Retry-After": "1"}))`` makes its next answers 500, then 429, then 200.
``delay(path, seconds)`` makes it answer late. Everything received is kept,
with the raw body and the headers (case-insensitive), in arrival order.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from jitgate.server.run import Server


@dataclass
class Received:
    path: str
    headers: httpx.Headers
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.attempts: dict[str, int] = {}
        self._plans: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self._delays: dict[str, float] = {}
        self._arrived = asyncio.Condition()
        self.base = ""

    def plan(self, path: str, *answers: tuple[int, dict[str, str]]) -> None:
        self._plans.setdefault(path, []).extend(answers)

    def delay(self, path: str, seconds: float) -> None:
        self._delays[path] = seconds

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(
        self, check: Callable[[list[Received]], bool], timeout: float = 10.0
    ) -> list[Received]:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: check(self.received))
        return self.received

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        self.attempts[path] = self.attempts.get(path, 0) + 1
        headers = httpx.Headers([(k.decode(), v.decode()) for k, v in scope["headers"]])
        if path in self._delays:
            await asyncio.sleep(self._delays[path])
        plan = self._plans.get(path)
        status, extra = plan.pop(0) if plan else (200, {})
        if status < 300:
            async with self._arrived:
                self.received.append(Received(path, headers, body, time.monotonic()))
                self._arrived.notify_all()
        else:
            async with self._arrived:
                self._arrived.notify_all()
        answer = b"ok" if status < 300 else b"nope"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain"),
                    *((k.encode(), v.encode()) for k, v in extra.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    config = uvicorn.Config(
        receiver,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = Server(config, install_signal_handlers=False)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
    host, port = server.bound_address()
    receiver.base = f"http://{host}:{port}"
    try:
        yield receiver
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def dead_url(path: str = "/dead") -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
