"""Statement ingestion speed: records per second of ``record_statements`` (what
``POST /api/v1/audit/statements`` and in-process gateways call) for batches of
typical gateway records, on SQLite and PostgreSQL, the per-event append loop
("before") and the batch append ("after") side by side in one run.

    python bench/bench_audit_ingest.py [--records 10000] [--batches 1,100,1000]
        [--rounds 3] [--cpu 0 | --no-pin] [--pg URL] [--skip-pg]

"before" is what the service did until the batch path: validate the batch,
then one ``append_event`` per record in one transaction (SQLAlchemy INSERT
and RFC 8785 per event). It validates with today's checks, which are
cheaper than the old ones, so it flatters the old path slightly. "after" is
``record_statements`` as it is: the same validation, then ``append_events``
(payloads serialized before the trail's lock, the batch sealed in one loop,
one ``executemany``).

Each backend gets a fresh trail (a SQLite file in a temporary directory; a
PostgreSQL database ``jitgate_bench_<random>``, dropped at the end). The
rounds alternate before/after, and the table shows the median of each. The
process is pinned to one CPU (``--cpu``, default 0) because the target is
one core. records/s is wall time; CPU µs/record is this process's CPU time,
which includes the SQLite engine (it runs in this process) but not the
PostgreSQL server. At the end each trail, with both kinds of batches mixed
in, must verify.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bench_audit import add_backend_options, on_backends  # the same throwaway databases
from jitgate.audit.keys import SigningKey, TrustedKeys
from jitgate.service import Principal
from jitgate.service.statements import record_statements, statement_events
from jitgate.store import Database, append_event, migrate
from jitgate.store.audit import verify_store

GATEWAY = Principal("pg-gateway", is_service_account=True)
TARGET_RATE = 10_000

Recorder = Callable[[Database, Principal, Sequence[object], datetime], Awaitable[int]]


def typical(i: int) -> dict[str, Any]:
    """A record as the PostgreSQL gateway sends it under pgbench."""
    return {
        "user": f"app{i % 4}",
        "target": "orders-db",
        "environment": "production",
        "text": f"SELECT abalance FROM pgbench_accounts WHERE aid = {i % 100_000 + 1}",
        "decision": "allow",
        "duration_ms": round(0.05 + (i % 997) / 1000, 3),
        "tag": "SELECT 1",
        "rows": 1,
        "session": f"s-{i % 32}",
        "client": "10.0.0.7:51234",
        "gateway": "pg-1",
        "at": datetime.now(UTC).isoformat(timespec="microseconds"),
    }


async def record_statements_each(
    db: Database, principal: Principal, records: Sequence[object], now: datetime
) -> int:
    """The service before the batch path: one ``append_event`` per record."""
    events = statement_events(principal, records, now)
    async with db.transaction() as session:
        for event in events:
            await append_event(
                session,
                event.type,
                event.actor,
                event.request_id,
                event.payload,
                now,
                target=event.target,
                environment=event.environment,
            )
    return len(events)


async def measure(db: Database, record: Recorder, batch: int, n: int) -> tuple[float, float]:
    """``(records/s, CPU µs per record)`` for ``n`` records in batches of ``batch``."""
    batches = [[typical(i + j) for j in range(batch)] for i in range(0, n, batch)]
    wall, cpu = time.perf_counter(), time.process_time()
    for records in batches:
        assert await record(db, GATEWAY, records, datetime.now(UTC)) == len(records)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    count = sum(len(b) for b in batches)
    return count / wall, cpu / count * 1e6


async def run_backend(name: str, url: str, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    async with Database(url) as db:
        await migrate(db)
        await record_statements(db, GATEWAY, [typical(0)], datetime.now(UTC))  # warm up
        await record_statements_each(db, GATEWAY, [typical(0)], datetime.now(UTC))
        for batch in args.batches:
            n = max(batch, args.records // 20 if batch < 10 else args.records)
            samples: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                samples["before"].append(await measure(db, record_statements_each, batch, n))
                samples["after"].append(await measure(db, record_statements, batch, n))
            out[batch] = {
                f"{kind}_{what}": statistics.median(s[i] for s in runs)
                for kind, runs in samples.items()
                for i, what in enumerate(("rate", "cpu"))
            }
            r = out[batch]
            print(
                f"  {name} batch {batch}: before {r['before_rate']:,.0f}/s, "
                f"after {r['after_rate']:,.0f}/s",
                flush=True,
            )
        t = time.perf_counter()
        result = await verify_store(db, TrustedKeys([SigningKey.generate().verify_key]),
                                    allow_unsigned=10**9)  # fmt: skip
        assert result.ok, result.problem
        print(
            f"  {name}: the trail ({result.events:,} events) verifies "
            f"({time.perf_counter() - t:.1f} s)",
            flush=True,
        )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=10_000,
        help="records per measurement (batches under 10: a twentieth)",
    )  # fmt: skip
    parser.add_argument("--batches", default="1,100,1000", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin this process to")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    add_backend_options(parser)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    if not args.no_pin:
        # Before any thread starts (aiosqlite's inherit the mask).
        os.sched_setaffinity(0, {args.cpu})
    where = "all CPUs" if args.no_pin else f"pinned to CPU {args.cpu}"
    print(f"Python {sys.version.split()[0]}, {where}, median of {args.rounds} rounds", flush=True)

    results = await on_backends(run_backend, args)

    print()
    print(
        f"{'backend':<11} {'batch':>6} {'before rec/s':>13} {'after rec/s':>12} "
        f"{'speed-up':>9} {'before CPU µs/rec':>18} {'after CPU µs/rec':>17}"
    )
    for backend, by_batch in results.items():
        for batch, r in by_batch.items():
            print(
                f"{backend:<11} {batch:>6} {r['before_rate']:>13,.0f} {r['after_rate']:>12,.0f} "
                f"{r['after_rate'] / r['before_rate']:>8.1f}x {r['before_cpu']:>18,.0f} "
                f"{r['after_cpu']:>17,.0f}"
            )
    big = [b for b in args.batches if b >= 500]
    if big:
        print()
        for backend, by_batch in results.items():
            worst = min(by_batch[b]["after_rate"] for b in big)
            verdict = "met" if worst >= TARGET_RATE else "NOT met"
            print(
                f"{backend}: {worst:,.0f} records/s at batches of {', '.join(map(str, big))} "
                f"-> target {TARGET_RATE:,}/s {verdict}"
            )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
