"""The gateway's own work per statement, without sockets or a server.

Drives one :class:`jitgate.gateways.postgres.session.Session` with the exact
bytes pgbench's select-only transaction exchanges (simple and prepared
protocol) and measures the CPU time the session spends per transaction:
framing, classification, bookkeeping and the audit record, i.e. what the
gateway adds on top of moving bytes. The links are stand-ins that only
collect what would be written; the policy is the default catalogue through a
real :class:`Evaluator`; records go to a real :class:`StatementRecorder`
whose port discards them (the audit trail is measured by bench_audit*.py).

    .venv/bin/python bench/bench_pg_session.py [--transactions 50000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import struct
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from jitgate.evaluator import Evaluator
from jitgate.gateways.port import GatewayUser, StatementRecord
from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres.session import Session
from jitgate.gateways.recorder import StatementRecorder

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"


class _Link:
    """What the session writes to, and nothing else."""

    def __init__(self) -> None:
        self.sent = 0
        self.peer: Any = None
        self.on_lost: Any = None

    def write(self, data: bytes) -> None:
        self.sent += len(data)

    def relay(self, on_data: Any) -> None:
        pass

    def hold_reading(self, reason: str) -> None:
        pass

    def release_reading(self, reason: str) -> None:
        pass

    def close(self) -> None:
        pass


class _DiscardingPort:
    def __init__(self) -> None:
        self.evaluator = Evaluator()
        self.records = 0

    async def record_statements(self, records: Sequence[StatementRecord]) -> None:
        self.records += len(records)


def _query(sql: str) -> bytes:
    return pg.message(b"Q", sql.encode() + b"\x00")


def _parse(name: str, sql: str) -> bytes:
    return pg.message(b"P", pg.cstring(name) + pg.cstring(sql) + struct.pack("!hI", 1, 23))


def _bind(statement: str, value: bytes) -> bytes:
    body = b"\x00" + pg.cstring(statement) + struct.pack("!hh", 0, 1)
    body += struct.pack("!i", len(value)) + value + struct.pack("!h", 0)
    return pg.message(b"B", body)


EXECUTE = pg.message(b"E", b"\x00" + struct.pack("!i", 0))
SYNC = pg.message(b"S")
ROW_DESCRIPTION = pg.message(
    b"T", struct.pack("!h", 1) + pg.cstring("abalance") + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
)
DATA_ROW = pg.message(b"D", struct.pack("!hi", 1, 1) + b"0")
SELECT_1 = pg.message(b"C", pg.cstring("SELECT 1"))
READY = pg.message(b"Z", b"I")
PARSED, BOUND = pg.message(b"1"), pg.message(b"2")


def _session(port: _DiscardingPort, recorder: StatementRecorder) -> Session:
    gateway: Any = SimpleNamespace(
        port=port,
        recorder=recorder,
        config=SimpleNamespace(name="bench", max_message_bytes=1 << 24),
        forget=lambda session: None,
        decisions={"allow": 0, "require_approval": 0, "deny": 0},  # the metrics' counters
    )
    session = Session(
        gateway,
        _Link(),  # type: ignore[arg-type]
        _Link(),  # type: ignore[arg-type]
        user=GatewayUser("ann", frozenset({"dev"})),
        target="bench",
        environment="production",
        client_address="127.0.0.1",
        upstream_key=(1, 2),
        parameters={"client_encoding": "UTF8", "standard_conforming_strings": "on"},
        status=b"I",
    )
    session.start()
    return session


async def _run(protocol: str, transactions: int, profile: bool) -> float:
    port = _DiscardingPort()
    recorder = StatementRecorder(port, max_batch=1000, max_delay=0.05)  # type: ignore[arg-type]
    session = _session(port, recorder)
    aids = [random.randint(1, 1_000_000) for _ in range(transactions)]
    if protocol == "simple":
        requests = [_query(SELECT.format(aid)) for aid in aids]
        answer = ROW_DESCRIPTION + DATA_ROW + SELECT_1 + READY
    else:
        session._from_client(_parse("P0_1", SELECT.format("$1")) + SYNC)
        session._from_upstream(PARSED + READY)
        requests = [_bind("P0_1", str(aid).encode()) + EXECUTE + SYNC for aid in aids]
        answer = BOUND + DATA_ROW + SELECT_1 + READY
    for request in requests[:2000]:  # warm-up: caches, the evaluator's memo
        session._from_client(request)
        session._from_upstream(answer)
    await asyncio.sleep(0)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    started = time.process_time()
    for request in requests:
        session._from_client(request)
        session._from_upstream(answer)
    spent = time.process_time() - started
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    await recorder.close()
    assert port.records == transactions + 2000, port.records
    return spent / transactions * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print("| protocol | µs CPU per transaction (session logic only) |")
    print("|----------|---------------------------------------------:|")
    for protocol in ("simple", "prepared"):
        cost = asyncio.run(_run(protocol, args.transactions, args.profile))
        print(f"| {protocol:<8} | {cost:44.1f} |")


if __name__ == "__main__":
    main()
