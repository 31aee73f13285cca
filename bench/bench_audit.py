"""Audit trail speed: appended events per second (single and batched) and verified
events per second, on SQLite and PostgreSQL, side by side in one run.

    python bench/bench_audit.py [--appends 2000] [--verify-events 1000000] [--pg URL]

Appends go through ``append_event`` exactly as the service writes them (the
trail's lock, the head read, RFC 8785 + SHA-256), one event per transaction
("single") and 100 per transaction ("batched"). Verification builds a trail
of ``--verify-events`` events (bulk-inserted, with a signed checkpoint every
10,000), then times ``verify_store``: reading every row, recomputing every
hash and link, checking every checkpoint signature.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import insert

from jitgate.audit.chain import GENESIS, canonical_time
from jitgate.audit.checkpoint import sign_checkpoint
from jitgate.audit.keys import SigningKey, TrustedKeys
from jitgate.store import Database, append_event, migrate
from jitgate.store.audit import verify_store
from jitgate.store.tables import CheckpointTable, EventTable

T0 = datetime(2030, 1, 1, tzinfo=UTC)
PAYLOAD = {
    "stage_index": 0,
    "stage": "approvers",
    "approver": "carol",
    "groups": ["dba"],
    "mfa_verified": False,
    "comment": "checked the WHERE clause",
}


async def append_rate(db: Database, n: int, per_tx: int) -> float:
    start = time.perf_counter()
    done = 0
    while done < n:
        async with db.transaction() as session:
            for _ in range(min(per_tx, n - done)):
                await append_event(
                    session,
                    "approval.given",
                    "carol",
                    "req_x",
                    PAYLOAD,
                    datetime.now(UTC),
                    target="orders-db",
                    environment="production",
                )
                done += 1
    return n / (time.perf_counter() - start)


def _fast_hash(document: dict[str, Any]) -> str:
    # Generation only: the fast serialization equals RFC 8785 for these documents
    # (tests/test_audit_verify.py checks that), and it keeps the set-up short.
    import hashlib

    return hashlib.sha256(
        json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


async def build_trail(db: Database, n: int, key: SigningKey) -> None:
    prev = GENESIS
    batch: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    for seq in range(1, n + 1):
        at = T0 + timedelta(milliseconds=seq)
        payload = {**PAYLOAD, "n": seq}
        document = {
            "seq": seq,
            "id": str(uuid.UUID(int=seq)),
            "at": canonical_time(at),
            "type": "approval.given",
            "actor": "carol",
            "request_id": f"req_{seq // 5}",
            "target": "orders-db",
            "environment": "production",
            "payload": payload,
            "prev_hash": prev,
        }
        digest = _fast_hash(document)
        batch.append({**document, "at": at, "hash": digest})
        prev = digest
        if seq % 10_000 == 0 or seq == n:
            cp = sign_checkpoint(key, seq, digest, at)
            checkpoints.append({**cp.to_dict(), "at": at})
            async with db.transaction() as session:
                await session.execute(insert(EventTable), batch)
            batch = []
    async with db.transaction() as session:
        await session.execute(insert(CheckpointTable), checkpoints)


async def run_backend(name: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    key = SigningKey.generate()
    out: dict[str, float] = {}
    async with Database(url) as db:
        await migrate(db)
        out["single"] = await append_rate(db, args.appends, 1)
        out["batched"] = await append_rate(db, args.appends * 5, 100)
    async with Database(url) as db:
        # A fresh trail for verification (the appends above used their own key-less chain).
        async with db.transaction() as session:
            await session.execute(EventTable.__table__.delete())  # type: ignore[attr-defined]
        t = time.perf_counter()
        await build_trail(db, args.verify_events, key)
        build = time.perf_counter() - t
        t = time.perf_counter()
        result = await verify_store(db, TrustedKeys([key.verify_key]))
        elapsed = time.perf_counter() - t
        assert result.ok, result.problem
        assert result.events == args.verify_events
        out["verify"] = args.verify_events / elapsed
        out["verify_seconds"] = elapsed
        print(f"  ({name}: built {args.verify_events:,} events in {build:.1f} s)", flush=True)
    return out


async def pg_database(server: str) -> tuple[str, str]:
    name = f"jitgate_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.rsplit("/", 1)[0] + f"/{name}", name


async def drop_pg(server: str, name: str) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


_Result = TypeVar("_Result")


async def on_backends(
    run: Callable[[str, str, argparse.Namespace], Awaitable[_Result]], args: argparse.Namespace
) -> dict[str, _Result]:
    """``run(backend, url, args)`` on a temporary SQLite file and, unless
    ``args.skip_pg``, a throwaway database on ``args.pg``."""
    results: dict[str, _Result] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite ...", flush=True)
        results["SQLite"] = await run("SQLite", f"sqlite:///{Path(tmp) / 'b.db'}", args)
    if not args.skip_pg:
        print("PostgreSQL ...", flush=True)
        url, name = await pg_database(args.pg)
        try:
            results["PostgreSQL"] = await run("PostgreSQL", url, args)
        finally:
            await drop_pg(args.pg, name)
    return results


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--pg`` (the server for the throwaway database) and ``--skip-pg``, for
    :func:`on_backends`."""
    parser.add_argument(
        "--pg",
        default=os.environ.get("JITGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--skip-pg", action="store_true")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--verify-events", type=int, default=1_000_000)
    add_backend_options(parser)
    args = parser.parse_args()
    results = await on_backends(run_backend, args)
    print()
    print(
        f"{'backend':<12} {'append single/s':>16} {'append batched/s':>17} "
        f"{'verify/s':>12} {'verify ' + format(args.verify_events, ','):>18}"
    )
    for name, r in results.items():
        print(
            f"{name:<12} {r['single']:>16,.0f} {r['batched']:>17,.0f} {r['verify']:>12,.0f} "
            f"{r['verify_seconds']:>16.1f} s"
        )
    if len(results) == 2:
        s, p = results["SQLite"], results["PostgreSQL"]
        print(
            f"\nPostgreSQL/SQLite: single {p['single'] / s['single']:.2f}, batched "
            f"{p['batched'] / s['batched']:.2f}, verify {p['verify'] / s['verify']:.2f}"
        )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
