"""``run_server`` / ``serve``: a real process, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from conftest import make_api_env, run_sync
from jitgate.server.run import serve
from jitgate.store import Database, Identity, migrate

API = "/api/v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _users(url: str) -> dict[str, str]:
    await migrate(url)
    tokens: dict[str, str] = {}
    async with Database(url) as db, db.transaction() as session:
        identity = Identity(session)
        for name, groups in (("ann", ["dev"]), ("bob", ["approvers"]), ("carol", ["approvers"])):
            await identity.add_user(name, groups)
            tokens[name], _ = await identity.create_token(name, "test")
    return tokens


@pytest.fixture
def process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, dict[str, str]]]:
    """``run_server`` in a child process on a migrated SQLite store with users."""
    url = f"sqlite:///{tmp_path / 'jitgate.db'}"
    tokens = run_sync(_users(url))
    port = free_port()
    code = (
        "from jitgate.server.run import run_server; "
        f"run_server({url!r}, host='127.0.0.1', port={port}, log_level='warning')"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert child.poll() is None, child.communicate()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.05)
    try:
        yield child, base, tokens
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shuts_down_gracefully(
    process: tuple[subprocess.Popen[str], str, dict[str, str]], signum: signal.Signals
) -> None:
    child, base, tokens = process
    ann = {"Authorization": f"Bearer {tokens['ann']}"}
    with httpx.Client(base_url=base, headers=ann, timeout=10) as http:
        held = http.post(
            f"{API}/requests", json={"kind": "sql", "text": "DROP TABLE t", "env": "prod"}
        )
        assert held.status_code == 201, held.text
        request_id = held.json()["request"]["id"]
        assert http.get("/metrics").status_code == 200
        with connect_sse(http, "GET", f"{API}/requests/{request_id}/events") as source:
            stream = source.iter_sse()
            assert json.loads(next(stream).data)["status"] == "pending"
            started = time.monotonic()
            child.send_signal(signum)
            # The open stream ends (it does not hold the shutdown up) ...
            assert [event.event for event in stream] == []
    # ... and the process exits cleanly, well within the graceful timeout.
    assert child.wait(timeout=15) == 0
    assert time.monotonic() - started < 8
    _, stderr = child.communicate(timeout=5)
    assert "Traceback" not in stderr
    assert tokens["ann"] not in stderr


async def test_serve_refuses_two_policies(tmp_path: Path) -> None:
    from jitgate.policy import default_policy

    with pytest.raises(ValueError, match="not both"):
        await serve(f"sqlite:///{tmp_path / 'x.db'}", policy=default_policy(), policy_path="p.yaml")
    with pytest.raises(ValueError, match="database URL or a data directory"):
        await serve(None)


async def test_serve_in_process(tmp_path: Path) -> None:
    """``serve`` with a compiled policy and a data directory, as ``jitgate serve`` calls it."""
    from jitgate.policy import default_policy

    ready: list[tuple[str, int]] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(
            None,
            data_dir=tmp_path,
            port=0,
            policy=default_policy(),
            log_level="warning",
            install_signal_handlers=False,
            on_ready=lambda host, port: ready.append((host, port)),
            shutdown=stop,
        )
    )
    async with asyncio.timeout(20):
        while not ready:
            assert not task.done(), task
            await asyncio.sleep(0.01)
    host, port = ready[0]
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get(f"{API}/requests")).status_code == 401
    assert (tmp_path / "jitgate.db").exists()
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_shutdown_right_after_a_submission_is_prompt(db: Database) -> None:
    env = await make_api_env(db, stop_timeout=3.0)
    started = 0.0
    try:
        async with env.app.router.lifespan_context(env.app):
            await env.submit("ann")
            started = time.monotonic()
    finally:
        await env.client.aclose()
    # Regression: ApprovalService.stop() used to miss its cancellation when the
    # ticker had just been woken (asyncio.wait_for on Python 3.11), and the app
    # then waited stop_timeout before cancelling it again.
    assert time.monotonic() - started < 1.0
