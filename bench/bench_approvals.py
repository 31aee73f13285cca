"""Approval service throughput and wake-up latency, on SQLite and PostgreSQL.

For each store this starts a real ``jitgate serve`` process and measures,
over HTTP like any client:

* full cycles per second: submit (held) -> approve -> authorize (consume the
  grant) -> report the outcome, one after the other;
* wake-up latency: a waiter follows the request's event stream (SSE); the time
  from sending the approval to the waiter receiving the approved state, median
  and p99 (target: p99 under 50 ms on one node);

and, in process (no HTTP), the same cycles through ``ApprovalService``.

    python bench/bench_approvals.py [--cycles 200] [--wakeups 200] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

The PostgreSQL run creates a scratch database and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import asyncpg
import httpx

from jitgate.evaluator import Evaluator
from jitgate.service import ApprovalService
from jitgate.service.principal import Principal
from jitgate.store import Database, Identity, migrate

JITGATE = [sys.executable, "-m", "jitgate"]
USERS = {"ann": ["dev"], "bob": ["approvers"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def scratch_pg(server: str) -> Iterator[str]:
    name = f"jitgate_bench_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(server.replace("postgresql://", "postgres://", 1))
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


async def seed(url: str, data_dir: Path) -> dict[str, str]:
    db = Database.open(url, data_dir)
    try:
        await migrate(db)
        tokens = {}
        async with db.transaction() as session:
            ids = Identity(session)
            for user, groups in USERS.items():
                await ids.add_user(user, groups)
                tokens[user] = (await ids.create_token(user, "bench"))[0]
        return tokens
    finally:
        await db.close()


@contextmanager
def server(url: str, data_dir: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "JITGATE_DATA_DIR": str(data_dir), "JITGATE_DB": url}
    process = subprocess.Popen(
        [*JITGATE, "serve", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"jitgate serve did not start: {process.stderr.read()}")
        time.sleep(0.1)
    try:
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@asynccontextmanager
async def clients(base: str, tokens: dict[str, str]) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    made = {
        user: httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        for user, token in tokens.items()
    }
    try:
        yield made
    finally:
        for client in made.values():
            await client.aclose()


async def http_cycles(http: dict[str, httpx.AsyncClient], count: int) -> float:
    ann, bob = http["ann"], http["bob"]
    started = time.perf_counter()
    for i in range(count):
        created = await ann.post(
            "/api/v1/requests", json={"kind": "sql", "text": f"DELETE FROM t{i}", "env": "prod"}
        )
        view = created.json()["request"]
        await bob.post(f"/api/v1/requests/{view['id']}/approve", json={})
        await ann.post(f"/api/v1/requests/{view['id']}/authorize",
                       json={"fingerprint": view["fingerprint"]})
        done = await ann.post(f"/api/v1/requests/{view['id']}/outcome",
                              json={"rows_affected": 1})
        assert done.json()["status"] == "executed", done.text
    return count / (time.perf_counter() - started)


async def wakeups(http: dict[str, httpx.AsyncClient], count: int) -> list[float]:
    ann, bob = http["ann"], http["bob"]
    latencies = []
    for i in range(count):
        created = await ann.post(
            "/api/v1/requests", json={"kind": "sql", "text": f"TRUNCATE w{i}", "env": "prod"}
        )
        request_id = created.json()["request"]["id"]
        first_state = asyncio.Event()
        woke_at: list[float] = []

        async def follow(rid: str = request_id, seen: asyncio.Event = first_state,
                         out: list[float] = woke_at) -> None:
            async with ann.stream("GET", f"/api/v1/requests/{rid}/events") as stream:
                async for line in stream.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    status = json.loads(line[5:])["status"]
                    if status == "pending":
                        seen.set()
                    elif status == "approved":
                        out.append(time.perf_counter())
                        return

        waiter = asyncio.create_task(follow())
        await asyncio.wait_for(first_state.wait(), 10)
        sent = time.perf_counter()
        await bob.post(f"/api/v1/requests/{request_id}/approve", json={})
        await asyncio.wait_for(waiter, 10)
        latencies.append((woke_at[0] - sent) * 1000)
    return latencies


async def service_cycles(url: str, data_dir: Path, count: int) -> float:
    db = Database.open(url, data_dir)
    service = ApprovalService(db, Evaluator())
    await service.start()
    ann = Principal("ann", frozenset({"dev"}))
    bob = Principal("bob", frozenset({"approvers"}))
    try:
        started = time.perf_counter()
        for i in range(count):
            submission = await service.submit(
                ann, {"kind": "sql", "text": f"DELETE FROM s{i}", "env": "prod"}
            )
            view = submission.request
            assert view is not None
            await service.approve(bob, view["id"])
            await service.authorize(ann, view["id"], view["fingerprint"])
            await service.report_outcome(ann, view["id"], rows_affected=1)
        return count / (time.perf_counter() - started)
    finally:
        await service.stop()
        await db.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_backend(name: str, url: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        tokens = asyncio.run(seed(url, data_dir))
        in_process = asyncio.run(service_cycles(url, data_dir, args.cycles))
        with server(url, data_dir) as base:

            async def over_http() -> tuple[float, list[float]]:
                async with clients(base, tokens) as http:
                    await http_cycles(http, 10)  # warm up connections and caches
                    rate = await http_cycles(http, args.cycles)
                    return rate, await wakeups(http, args.wakeups)

            rate, latencies = asyncio.run(over_http())
    print(f"\n{name}")
    print(f"  cycles/s in process (submit, approve, authorize, outcome)  {in_process:8.1f}")
    print(f"  cycles/s over HTTP                                          {rate:8.1f}")
    print(
        f"  approval -> waiter woken over SSE: median {statistics.median(latencies):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms "
        f"({len(latencies)} approvals; target p99 < 50 ms)"
    )


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--cycles", type=int, default=200)
    options.add_argument("--wakeups", type=int, default=200)
    options.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = options.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_backend("SQLite (embedded default)", f"sqlite:///{tmp}/bench.db", args)
    with scratch_pg(args.pg) as url:
        run_backend("PostgreSQL", url, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
