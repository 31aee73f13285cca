"""SIGKILL the server while requests are approved under load: after a restart no
state change lacks its event (or the reverse) and the trail verifies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from jitgate.store import Database
from jitgate.store.tables import EventTable, RequestTable
from test_e2e_cli import JITGATE, admin, free_port

#: Events a request in each status must have in the trail.
REQUIRED = {
    "pending": {"request.created", "stage.started"},
    "approved": {"request.created", "approval.given", "request.approved", "grant.issued"},
    "executing": {"request.approved", "grant.consumed", "execution.started"},
    "executed": {"request.approved", "execution.started", "execution.finished"},
    "failed": {"request.approved", "execution.finished"},
}
#: Events that move a request into each status (the state may not be behind them).
MOVES_TO = {
    "request.approved": {"approved", "executing", "executed", "failed"},
    "execution.started": {"executing", "executed", "failed"},
    "execution.finished": {"executed", "failed"},
}


def start(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [*JITGATE, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"server did not start: {process.stderr.read()!r}")
        time.sleep(0.1)


def load(url: str, tokens: dict[str, str], stop: threading.Event, worker: int) -> None:
    """Submit, approve, authorize and report outcomes until told to stop (or the server dies)."""
    ann = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {tokens['ann']}"}, timeout=5
    )
    bob = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {tokens['bob']}"}, timeout=5
    )
    n = 0
    try:
        while not stop.is_set():
            n += 1
            body = {
                "kind": "sql",
                "text": f"DELETE FROM t_{worker}_{n}",
                "env": "production",
                "target": "db",
            }
            view = ann.post("/api/v1/requests", json=body).json()["request"]
            rid = view["id"]
            if n % 4 == 0:
                continue  # leave some pending
            bob.post(f"/api/v1/requests/{rid}/approve", json={})
            if n % 4 == 1:
                continue
            ann.post(f"/api/v1/requests/{rid}/authorize", json={"fingerprint": view["fingerprint"]})
            if n % 4 == 2:
                continue
            ann.post(f"/api/v1/requests/{rid}/outcome", json={"exit_code": 0, "rows_affected": 1})
    except (httpx.TransportError, KeyError, ValueError):
        return  # the server was killed mid-request
    finally:
        ann.close()
        bob.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crash.db'}"
    url: str = request.getfixturevalue("fresh_pg_url")
    return url


async def consistency(url: str) -> tuple[int, list[str]]:
    """``(requests, problems)``: every request's status backed by its events and back."""
    problems: list[str] = []
    async with Database(url) as db, db.transaction(readonly=True) as session:
        statuses = dict((await session.execute(select(RequestTable.id, RequestTable.status))).all())
        types: dict[str, set[str]] = defaultdict(set)
        for rid, kind in await session.execute(select(EventTable.request_id, EventTable.type)):
            if rid is not None:
                types[rid].add(kind)
    for rid, status in statuses.items():
        missing = REQUIRED[status] - types[rid]
        if missing:
            problems.append(f"{rid} is {status} but lacks {sorted(missing)}")
        for event, allowed in MOVES_TO.items():
            if event in types[rid] and status not in allowed:
                problems.append(f"{rid} has {event} but is {status}")
    orphans = set(types) - set(statuses)
    if orphans:
        problems.append(f"events for requests that do not exist: {sorted(orphans)[:3]}")
    return len(statuses), problems


def test_sigkill_under_load_loses_nothing(store_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "JITGATE_DATA_DIR": str(tmp_path), "JITGATE_DB": store_url}
    admin(env, "user", "add", "ann", "--group", "dev")
    admin(env, "user", "add", "bob", "--group", "approvers")
    tokens = {u: admin(env, "token", "create", u, "--quiet") for u in ("ann", "bob")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start(env, port)
    stop = threading.Event()
    workers = [threading.Thread(target=load, args=(url, tokens, stop, w)) for w in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(3.0)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    requests, problems = asyncio.run(consistency(store_url))
    assert requests > 20, "the load did not get going"
    assert problems == []

    # Restarted, the server signs the tail the crash left unsigned; a clean stop
    # signs its own last events.
    server = start(env, port)
    try:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {tokens['ann']}"}, timeout=5
        ) as ann:
            body = {"kind": "sql", "text": "DROP TABLE after_restart", "env": "production"}
            assert ann.post("/api/v1/requests", json=body).status_code == 201
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    verified = subprocess.run(
        [*JITGATE, "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout
