"""Server CPU per record of ``POST /api/v1/audit/statements`` (what a standalone
gateway sends every relayed statement through), next to the service call it
ends in (``ApprovalService.record_statements``).

    python bench/bench_statements_api.py [--batch 500] [--batches 40] [--rounds 5]
        [--cpu 0 | --no-pin]

The real app (``create_app``) over an embedded SQLite trail in a temporary
directory, called through ``httpx.ASGITransport`` with a service account's
token, as the gateway's recorder calls it. Records are what the PostgreSQL
gateway sends under pgbench (``jitgate.gateways.records.record_dict``: every
field, nulls included). The request bodies are encoded before the clock
starts, so the numbers are the server's work (ASGI, middleware, auth, body
parsing, validation, sealing, SQLite, the response) plus the little the
in-process client does per request.

CPU µs/record is ``time.process_time`` (this process, SQLite included) of
each batch over its records; each round posts ``--batches`` batches of each
kind (the two kinds alternate by round), and the table shows the median
batch and the 10th percentile (the host is noisy: medians of batches vary
less than totals). The process is pinned to one CPU (``--cpu``)
because the server runs on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench_audit_ingest import typical as ingest_record  # the same pgbench-like record
from jitgate.evaluator import Evaluator
from jitgate.gateways.port import StatementRecord
from jitgate.gateways.records import record_dict
from jitgate.server import create_app
from jitgate.service import ApprovalService, Principal
from jitgate.store import Database, Identity, migrate

PATH = "/api/v1/audit/statements"
GATEWAY = Principal("pg-gateway", is_service_account=True)


def typical(i: int) -> dict[str, Any]:
    """A record exactly as the PostgreSQL gateway sends it (``record_dict``): the
    fields bench_audit_ingest's record has, and the ones the gateway adds."""
    return record_dict(StatementRecord(**ingest_record(i)))


def batches(batch: int, count: int, start: int) -> list[list[dict[str, Any]]]:
    return [[typical(start + b * batch + i) for i in range(batch)] for b in range(count)]


async def measure(calls: list[Callable[[], Awaitable[None]]], per_call: int) -> list[float]:
    """CPU µs per record of each call, in turn."""
    clock = time.process_time
    out = []
    for call in calls:
        started = clock()
        await call()
        out.append((clock() - started) * 1e6 / per_call)
    return out


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="jitgate-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'jitgate.db'}"
        await migrate(url)
        db = Database(url)
        service = ApprovalService(db, Evaluator())
        app = create_app(service)
        async with db.transaction() as session:
            identity = Identity(session)
            await identity.add_user(GATEWAY.user, service=True)
            token, _ = await identity.create_token(GATEWAY.user, "bench")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://jitgate") as client,
        ):
            n = args.batch * args.batches
            offset = 0

            def next_batches() -> list[list[dict[str, Any]]]:
                nonlocal offset
                made = batches(args.batch, args.batches, offset)
                offset += n
                return made

            async def endpoint() -> list[float]:
                bodies = [
                    json.dumps({"records": b}, separators=(",", ":")).encode()
                    for b in next_batches()
                ]

                def call(body: bytes) -> Callable[[], Awaitable[None]]:
                    async def post() -> None:
                        response = await client.post(PATH, content=body, headers=headers)
                        assert response.status_code == 202, response.text

                    return post

                return await measure([call(body) for body in bodies], args.batch)

            async def direct() -> list[float]:
                # The records as the endpoint hands them on: parsed JSON.
                parsed = json.loads(json.dumps(next_batches()))

                def call(records: list[dict[str, Any]]) -> Callable[[], Awaitable[None]]:
                    async def record() -> None:
                        await service.record_statements(GATEWAY, records)

                    return record

                return await measure([call(records) for records in parsed], args.batch)

            cases: dict[str, Callable[[], Awaitable[list[float]]]] = {
                "POST /api/v1/audit/statements": endpoint,
                "service.record_statements": direct,
            }
            for case in cases.values():  # warm up (imports, caches, the first pages)
                await case()
            results: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.rounds):
                for name, case in cases.items():
                    results[name] += await case()

        await db.close()

    print(
        f"batches of {args.batch} records, {args.batches} batches x {args.rounds} rounds, "
        f"SQLite, CPU µs per record of a batch (median / 10th percentile):"
    )
    medians = {}
    for name, values in results.items():
        medians[name] = statistics.median(values)
        low = statistics.quantiles(values, n=10)[0]
        print(f"  {name:<32} {medians[name]:7.1f} / {low:7.1f}")
    difference = medians["POST /api/v1/audit/statements"] - medians["service.record_statements"]
    print(f"  {'HTTP layer (difference)':<32} {difference:7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--no-pin", action="store_true")
    arguments = parser.parse_args()
    if not arguments.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {arguments.cpu})
    asyncio.run(main(arguments))
    sys.exit(0)
