"""Event ids and the audit trail's write volume: random (version 4) against
time-ordered (version 7) UUIDs for ``events.id``, side by side in one run.

``events.id`` is uniquely indexed. With random ids every batch of statement
records inserts into random leaf pages of that index, which all have to be
written again; time-ordered ids are appended at the index's right edge. The
difference grows with the trail, so each arm gets its own trail, first
filled with ``--prefill`` records using its own kind of id (the steady state
of a trail that has always used it), then ``--records`` more are recorded in
batches of ``--batch`` (the gateway's default batch) and measured:

* records/s (wall) and this process's CPU µs per record (SQLite runs in
  this process; PostgreSQL's server does not);
* bytes written per record: for SQLite what this process passed to
  ``write()`` (``wchar`` in /proc/self/io: the WAL, and the checkpoints
  copying it into the database file); for PostgreSQL the WAL it generated
  (``pg_current_wal_lsn()`` before and after).

The arms alternate over ``--rounds`` rounds; the table shows medians and
the ratio v4 / v7.

    .venv/bin/python bench/bench_audit_ids.py [--prefill 200000] [--records 20000]
        [--batch 500] [--rounds 3] [--pg URL] [--skip-pg]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from sqlalchemy import text

from bench_audit import add_backend_options, drop_pg, pg_database
from bench_audit_ingest import GATEWAY, typical
from jitgate.service.statements import record_statements
from jitgate.store import Database, events, migrate

ARMS = ("v4", "v7")


def uuid4_ids(n: int) -> list[str]:
    """Event ids as jitgate made them before version 7: ``str(uuid.uuid4())``."""
    return [str(uuid.uuid4()) for _ in range(n)]


@contextmanager
def ids_of(arm: str) -> Iterator[None]:
    if arm == "v7":
        yield  # what the store does
        return
    with mock.patch.object(events, "_event_ids", uuid4_ids):
        yield


def written_bytes() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


async def wal_lsn(db: Database) -> int:
    async with db.transaction() as session:
        lsn = (await session.execute(text("SELECT pg_current_wal_lsn()::text"))).scalar_one()
    high, low = str(lsn).split("/")
    return (int(high, 16) << 32) + int(low, 16)


async def record(db: Database, n: int, batch: int, offset: int) -> None:
    for i in range(0, n, batch):
        records = [typical(offset + i + j) for j in range(batch)]
        await record_statements(db, GATEWAY, records, datetime.now(UTC))


async def measure(
    db: Database, arm: str, args: argparse.Namespace, offset: int
) -> dict[str, float]:
    postgres = db.url.startswith("postgresql")
    bytes_before = await wal_lsn(db) if postgres else written_bytes()
    wall, cpu = time.perf_counter(), time.process_time()
    with ids_of(arm):
        await record(db, args.records, args.batch, offset)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    bytes_after = await wal_lsn(db) if postgres else written_bytes()
    return {
        "rate": args.records / wall,
        "cpu": cpu / args.records * 1e6,
        "bytes": (bytes_after - bytes_before) / args.records,
    }


async def run_backend(
    name: str, urls: dict[str, str], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    dbs: dict[str, Database] = {}
    try:
        for arm in ARMS:
            db = dbs[arm] = Database(urls[arm])
            await db.__aenter__()
            await migrate(db)
            started = time.perf_counter()
            with ids_of(arm):
                await record(db, args.prefill, 1000, 0)
            print(
                f"  {name} {arm}: {args.prefill:,} records to start with "
                f"({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
        samples: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
        for round_ in range(args.rounds):
            order = ARMS if round_ % 2 == 0 else ARMS[::-1]
            for arm in order:
                offset = args.prefill + round_ * args.records
                samples[arm].append(await measure(dbs[arm], arm, args, offset))
        return {
            arm: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
            for arm, runs in samples.items()
        }
    finally:
        for db in dbs.values():
            await db.__aexit__(None, None, None)


async def on_two_trails(
    args: argparse.Namespace,
    run: Callable[[str, dict[str, str], argparse.Namespace], Any],
) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite ...", flush=True)
        urls = {arm: f"sqlite:///{Path(tmp) / f'{arm}.db'}" for arm in ARMS}
        results["SQLite"] = await run("SQLite", urls, args)
    if not args.skip_pg:
        print("PostgreSQL ...", flush=True)
        made: list[str] = []
        try:
            urls = {}
            for arm in ARMS:
                urls[arm], database = await pg_database(args.pg)
                made.append(database)
            results["PostgreSQL"] = await run("PostgreSQL", urls, args)
        finally:
            for database in made:
                await drop_pg(args.pg, database)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--prefill", type=int, default=200_000)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    add_backend_options(parser)
    args = parser.parse_args()
    print(
        f"Python {sys.version.split()[0]}: trails of {args.prefill:,} records, then "
        f"{args.records:,} in batches of {args.batch}, median of {args.rounds} rounds",
        flush=True,
    )
    results = await on_two_trails(args, run_backend)
    print()
    print(f"{'backend':<11} {'ids':>4} {'records/s':>10} {'CPU µs/rec':>11} {'bytes/rec':>10}")
    for backend, arms in results.items():
        for arm, r in arms.items():
            print(
                f"{backend:<11} {arm:>4} {r['rate']:>10,.0f} {r['cpu']:>11,.1f} "
                f"{r['bytes']:>10,.0f}"
            )
        v4, v7 = arms["v4"], arms["v7"]
        print(
            f"{backend:<11} v4/v7: {v4['rate'] / v7['rate']:.2f}x the rate, "
            f"{v4['cpu'] / v7['cpu']:.2f}x the CPU, {v4['bytes'] / v7['bytes']:.2f}x the bytes"
        )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
