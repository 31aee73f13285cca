"""Server-Sent Events: over a real uvicorn server (httpx + httpx-sse) and over ASGI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from conftest import ApiEnv, make_api_env
from jitgate.server.run import Server, make_server
from jitgate.store import Database

API = "/api/v1"


@contextlib.asynccontextmanager
async def live(api: ApiEnv, **options: Any) -> AsyncIterator[tuple[str, Server]]:
    """``api.app`` on a real uvicorn server on 127.0.0.1 (a free port)."""
    server = make_server(
        api.app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        install_signal_handlers=False,
        lifespan="off",  # the api fixture runs the lifespan
        **options,
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done(), task.exception() if task.done() else None
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.01)
    host, port = server.bound_address()
    try:
        yield f"http://{host}:{port}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def client(url: str, api: ApiEnv, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers=api.headers(user), timeout=10)


async def test_stream_follows_a_request_to_its_end(api: ApiEnv) -> None:
    async with live(api) as (url, _server), client(url, api, "ann") as ann:
        response = await ann.post(f"{API}/requests", json=api.action())
        view = response.json()["request"]
        statuses: list[str] = []
        received_at: dict[str, float] = {}

        async def approve_and_run() -> float:
            async with client(url, api, "bob") as bob:
                at = time.monotonic()
                approved = await bob.post(f"{API}/requests/{view['id']}/approve", json={})
                assert approved.status_code == 200, approved.text
            while "approved" not in received_at:
                await asyncio.sleep(0.01)
            fingerprint = {"fingerprint": view["fingerprint"]}
            response = await ann.post(f"{API}/requests/{view['id']}/authorize", json=fingerprint)
            assert response.status_code == 200, response.text
            response = await ann.post(f"{API}/requests/{view['id']}/outcome", json={"exit_code": 0})
            assert response.status_code == 200, response.text
            return at

        async with aconnect_sse(ann, "GET", f"{API}/requests/{view['id']}/events") as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            assert source.response.headers["cache-control"] == "no-cache"
            worker: asyncio.Task[float] | None = None
            async with asyncio.timeout(20):
                async for event in source.aiter_sse():
                    assert event.event == "state"
                    state = json.loads(event.data)
                    assert state["id"] == view["id"]
                    statuses.append(state["status"])
                    received_at.setdefault(state["status"], time.monotonic())
                    if worker is None:
                        worker = asyncio.create_task(approve_and_run())
            # The stream ended by itself after the final state.
        assert worker is not None
        approved_at = await worker
        assert statuses == ["pending", "approved", "executing", "executed"]
        assert received_at["approved"] - approved_at < 1.0


async def test_stream_is_404_before_it_starts(api: ApiEnv) -> None:
    view = await api.submit("ann")
    async with live(api) as (url, _server), client(url, api, "dave") as dave:
        response = await dave.get(f"{API}/requests/{view['id']}/events")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == "not_found"
        response = await dave.get(f"{API}/requests/req_nope/events")
        assert response.status_code == 404


async def test_shutdown_ends_open_streams(api: ApiEnv) -> None:
    view = await api.submit("ann")
    async with live(api) as (url, server), client(url, api, "ann") as ann:
        events: list[str] = []
        async with aconnect_sse(ann, "GET", f"{API}/requests/{view['id']}/events") as source:
            stream = source.aiter_sse()
            events.append(json.loads((await anext(stream)).data)["status"])
            started = time.monotonic()
            server.handle_exit(signal.SIGTERM, None)
            async with asyncio.timeout(5):
                async for event in stream:
                    events.append(event.event)
            assert time.monotonic() - started < 3
        assert events == ["pending"]


class WatchSpy:
    """Wraps ``service.watch`` to see when the stream's iterator is closed."""

    def __init__(self, api: ApiEnv) -> None:
        self.original = api.service.watch
        self.closed = asyncio.Event()
        self.opened = 0

    async def __call__(self, principal: Any, request_id: str) -> AsyncIterator[Mapping[str, Any]]:
        self.opened += 1
        views = self.original(principal, request_id)
        try:
            async for view in views:
                yield view
        finally:
            await views.aclose()
            self.closed.set()


async def test_client_going_away_releases_the_watch(
    api: ApiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WatchSpy(api)
    monkeypatch.setattr(api.service, "watch", spy)
    view = await api.submit("ann")
    async with live(api) as (url, _server):
        async with (
            client(url, api, "ann") as ann,
            aconnect_sse(ann, "GET", f"{API}/requests/{view['id']}/events") as source,
        ):
            first = await anext(source.aiter_sse())
            assert json.loads(first.data)["status"] == "pending"
        # The client hung up: the server closes the watch promptly.
        await asyncio.wait_for(spy.closed.wait(), 5)
    assert spy.opened == 1


async def test_heartbeat_while_idle(db: Database) -> None:
    env = await make_api_env(db, sse_heartbeat=0.05)
    async with env.app.router.lifespan_context(env.app):
        view = await env.submit("ann")
        stream = asyncio.create_task(env.call("ann", "GET", f"{API}/requests/{view['id']}/events"))
        await asyncio.sleep(0.3)
        await env.act("ann", view["id"], "cancel")
        response = await asyncio.wait_for(stream, 5)
    await env.client.aclose()
    assert response.status_code == 200
    text = response.text
    blocks = text.split("\n\n")
    assert blocks[0].startswith("event: state\ndata: ")
    assert ": ping" in blocks[1:]
    states = [json.loads(b.split("data: ", 1)[1])["status"] for b in blocks if "data: " in b]
    assert states == ["pending", "cancelled"]
    assert text.endswith("\n\n")
