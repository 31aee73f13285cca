"""Tampering with the stored trail in every way is caught, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from jitgate.audit.chain import seal
from jitgate.audit.keys import SigningKey, TrustedKeys
from jitgate.store import Database, append_event
from jitgate.store.audit import (
    EventFilter,
    archive_events,
    event_page,
    iter_events,
    read_archive,
    verify_archive,
    verify_store,
    write_checkpoint,
)

KEY = SigningKey.generate()
TRUSTED = TrustedKeys([KEY.verify_key])
T0 = datetime(2030, 1, 1, tzinfo=UTC)
N = 30


async def fill(db: Database, n: int = N, *, every: int = 10, start: datetime = T0) -> None:
    """``n`` events, one transaction each, a signed checkpoint every ``every``."""
    for i in range(1, n + 1):
        async with db.transaction() as session:
            await append_event(
                session,
                "request.created" if i % 3 else "approval.given",
                f"user{i % 4}",
                f"req_{i // 3}",
                {"i": i, "note": f"event {i} ✓"},
                start + timedelta(minutes=i),
                target="orders-db",
                environment="production",
            )
        if i % every == 0:
            await write_checkpoint(db, KEY, start + timedelta(minutes=i, seconds=1))


async def sql(db: Database, statement: str, **params: object) -> None:
    async with db.transaction() as session:
        await session.execute(text(statement), params)


async def shift(db: Database, from_seq: int, by: int) -> None:
    """Renumber events ``seq >= from_seq`` by ``by`` (through a free range: no PK clash)."""
    await sql(db, "UPDATE events SET seq = seq + 1000000 WHERE seq >= :k", k=from_seq)
    await sql(db, "UPDATE events SET seq = seq - 1000000 + :by WHERE seq >= 1000000", by=by)


async def problem(db: Database, **options: int) -> tuple[str, int]:
    result = await verify_store(db, TRUSTED, **options)  # type: ignore[arg-type]
    assert not result.ok, "the tampering went unnoticed"
    assert result.problem is not None
    return result.problem.kind, result.problem.seq


async def test_an_untouched_trail_verifies(db: Database) -> None:
    await fill(db)
    result = await verify_store(db, TRUSTED)
    assert result.ok, result.problem
    assert (result.events, result.last_seq, result.signed_through, result.checkpoints) == (
        N,
        N,
        N,
        3,
    )


async def edit_payload(db: Database) -> None:
    await sql(db, "UPDATE events SET payload = :p WHERE seq = 17", p=json.dumps({"i": 0}))


async def change_time(db: Database) -> None:
    async with db.transaction() as session:
        from jitgate.store.tables import EventTable

        await session.execute(
            EventTable.__table__.update()  # type: ignore[attr-defined]
            .where(EventTable.seq == 17)
            .values(at=T0 + timedelta(days=3))
        )


async def change_actor(db: Database) -> None:
    await sql(db, "UPDATE events SET actor = 'mallory' WHERE seq = 17")


async def delete_one(db: Database) -> None:
    await sql(db, "DELETE FROM events WHERE seq = 17")


async def delete_and_renumber(db: Database) -> None:
    await sql(db, "DELETE FROM events WHERE seq = 17")
    await shift(db, 18, -1)


async def insert_one(db: Database) -> None:
    await shift(db, 17, +1)
    async with db.transaction() as session:
        prev = (await session.execute(text("SELECT hash FROM events WHERE seq = 16"))).scalar()
    forged = seal(
        seq=17,
        id="forged",
        at=T0,
        type="request.approved",
        actor="mallory",
        request_id="req_5",
        target="orders-db",
        environment="production",
        payload={},
        prev_hash=str(prev),
    )
    await sql(
        db,
        "INSERT INTO events (seq, id, at, type, actor, request_id, target, environment, payload,"
        " prev_hash, hash) VALUES (17, 'forged', :at, 'request.approved', 'mallory', 'req_5',"
        " 'orders-db', 'production', :payload, :prev, :hash)",
        at=T0.replace(tzinfo=None) if db.backend == "sqlite" else T0,
        payload="{}",
        prev=forged.prev_hash,
        hash=forged.hash,
    )


async def swap_two(db: Database) -> None:
    await sql(db, "UPDATE events SET seq = -1 WHERE seq = 17")
    await sql(db, "UPDATE events SET seq = 17 WHERE seq = 18")
    await sql(db, "UPDATE events SET seq = 18 WHERE seq = -1")


async def truncate_tail(db: Database) -> None:
    await sql(db, "DELETE FROM events WHERE seq > 26")


async def rehash_everything(db: Database) -> None:
    """Replace the chain with a consistent re-hashed one (edited event 3), no key."""
    async with db.transaction(readonly=True) as session:
        events = await event_page(session, limit=1000)
    prev = "0" * 64
    for e in events:
        payload = {"i": -3} if e.seq == 3 else dict(e.payload)
        f = seal(
            seq=e.seq,
            id=e.id,
            at=datetime.fromisoformat(e.at),
            type=e.type,
            actor=e.actor,
            request_id=e.request_id,
            target=e.target,
            environment=e.environment,
            payload=payload,
            prev_hash=prev,
        )
        await sql(
            db,
            "UPDATE events SET payload = :p, prev_hash = :ph, hash = :h WHERE seq = :s",
            p=json.dumps(payload),
            ph=f.prev_hash,
            h=f.hash,
            s=e.seq,
        )
        prev = f.hash


async def rehash_and_drop_checkpoints(db: Database) -> None:
    await rehash_everything(db)
    await sql(db, "DELETE FROM audit_checkpoints")


TAMPERINGS: dict[str, tuple[Callable[[Database], Awaitable[None]], tuple[str, int]]] = {
    "edit a payload": (edit_payload, ("altered", 17)),
    "change a time": (change_time, ("altered", 17)),
    "change an actor": (change_actor, ("altered", 17)),
    "delete one event": (delete_one, ("deleted", 17)),
    "delete one and renumber": (delete_and_renumber, ("deleted", 17)),
    "insert one": (insert_one, ("inserted", 17)),
    "swap two": (swap_two, ("reordered", 17)),
    "truncate the tail": (truncate_tail, ("truncated", 27)),
    "re-hash the whole chain": (rehash_everything, ("rewritten", 1)),
    "re-hash and drop the checkpoints": (rehash_and_drop_checkpoints, ("unsigned", 1)),
}


@pytest.mark.parametrize("how", list(TAMPERINGS))
async def test_tampering_is_caught_and_named(db: Database, how: str) -> None:
    tamper, expected = TAMPERINGS[how]
    await fill(db)
    assert (await verify_store(db, TRUSTED)).ok
    await tamper(db)
    assert await problem(db) == expected


async def test_forging_a_checkpoint_without_the_key_fails(db: Database) -> None:
    await fill(db)
    await rehash_everything(db)
    async with db.transaction(readonly=True) as session:
        rows = await session.execute(text("SELECT seq, hash FROM events WHERE seq IN (10, 20, 30)"))
        heads = {int(seq): str(head) for seq, head in rows}
    for seq, head in heads.items():
        await sql(db, "UPDATE audit_checkpoints SET hash = :h WHERE seq = :s", h=head, s=seq)
    assert await problem(db) == ("bad_signature", 1)


async def test_the_unsigned_tail_is_allowed_only_when_asked(db: Database) -> None:
    await fill(db, 25)
    assert await problem(db) == ("unsigned", 21)
    assert (await verify_store(db, TRUSTED, allow_unsigned=5)).ok
    await write_checkpoint(db, KEY, T0 + timedelta(days=1))
    assert (await verify_store(db, TRUSTED)).ok


async def test_a_rolled_back_append_leaves_no_gap(db: Database) -> None:
    await fill(db, 3, every=100)

    async def append_then_fail() -> None:
        async with db.transaction() as session:
            await append_event(session, "x", None, None, {}, T0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await append_then_fail()
    await fill(db, 2, every=100, start=T0 + timedelta(hours=1))
    async with db.transaction(readonly=True) as session:
        assert [e.seq for e in await event_page(session)] == [1, 2, 3, 4, 5]
    assert (await verify_store(db, TRUSTED, allow_unsigned=5)).ok


async def test_archive_keeps_both_parts_verifiable(db: Database, tmp_path: Path) -> None:
    await fill(db, 30)  # checkpoints at 10, 20, 30; event i at T0 + i minutes
    path = tmp_path / "old.jsonl"
    archived = await archive_events(
        db, T0 + timedelta(minutes=25), path, TRUSTED, now=T0 + timedelta(days=1), actor="tester"
    )
    assert archived is not None
    assert (archived.from_seq, archived.through_seq, archived.events) == (1, 20, 20)
    archive = read_archive(path)
    assert [e.seq for e in archive.events] == list(range(1, 21))
    assert verify_archive(archive, TRUSTED).ok
    # The remaining trail: seq 21..30 plus the audit.archived event (31, unsigned yet).
    result = await verify_store(db, TRUSTED, allow_unsigned=1)
    assert result.ok, result.problem
    assert (result.first_seq, result.last_seq) == (21, 31)
    await write_checkpoint(db, KEY, T0 + timedelta(days=1))
    assert (await verify_store(db, TRUSTED)).ok
    # New events chain on; a second archive starts where the first ended.
    await fill(db, 10, start=T0 + timedelta(days=2))
    second = await archive_events(
        db,
        T0 + timedelta(days=3),
        tmp_path / "next.jsonl",
        TRUSTED,
        now=T0 + timedelta(days=3),
        actor="tester",
    )
    assert second is not None
    assert second.from_seq == 21
    assert verify_archive(read_archive(tmp_path / "next.jsonl"), TRUSTED).ok
    assert (await verify_store(db, TRUSTED, allow_unsigned=1)).ok


async def test_a_tampered_archive_file_is_caught(db: Database, tmp_path: Path) -> None:
    await fill(db, 20)
    path = tmp_path / "a.jsonl"
    await archive_events(db, T0 + timedelta(days=1), path, TRUSTED, now=T0, actor=None)
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[5])
    record["actor"] = "mallory"
    lines[5] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = verify_archive(read_archive(path), TRUSTED)
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq) == ("altered", record["seq"])


async def test_faking_an_archive_by_deleting_a_prefix_is_caught(db: Database) -> None:
    await fill(db, 30)
    await sql(db, "DELETE FROM events WHERE seq <= 10")
    async with db.transaction(readonly=True) as session:
        head = (
            await session.execute(text("SELECT hash FROM audit_checkpoints WHERE seq = 10"))
        ).scalar()
    await sql(
        db,
        "INSERT INTO audit_anchors (seq, hash, archived_at, events, archive_sha256)"
        " VALUES (10, :h, :at, 10, 'x')",
        h=head,
        at=T0.replace(tzinfo=None) if db.backend == "sqlite" else T0,
    )
    assert await problem(db) == ("anchor", 11)


async def test_refuses_to_archive_a_tampered_trail(db: Database, tmp_path: Path) -> None:
    await fill(db, 20)
    await edit_payload_at(db, 5)
    from jitgate.store import InvalidValueError

    with pytest.raises(InvalidValueError, match="does not verify"):
        await archive_events(
            db, T0 + timedelta(days=1), tmp_path / "x.jsonl", TRUSTED, now=T0, actor=None
        )
    assert not (tmp_path / "x.jsonl").exists()
    async with db.transaction(readonly=True) as session:
        assert len(await event_page(session)) == 20


async def edit_payload_at(db: Database, seq: int) -> None:
    await sql(db, "UPDATE events SET payload = :p WHERE seq = :s", p='{"i": 0}', s=seq)


async def test_filters_select_events(db: Database) -> None:
    await fill(db, 12, every=100)

    async def seqs(where: EventFilter) -> list[int]:
        return [e.seq async for e in iter_events(db, where=where)]

    assert await seqs(EventFilter(actor="user1")) == [1, 5, 9]
    assert await seqs(EventFilter(type="approval.given")) == [3, 6, 9, 12]
    assert await seqs(EventFilter(type="request.*")) == [1, 2, 4, 5, 7, 8, 10, 11]
    assert await seqs(EventFilter(since=T0 + timedelta(minutes=10))) == [10, 11, 12]
    assert await seqs(EventFilter(until=T0 + timedelta(minutes=3))) == [1, 2]
    assert await seqs(EventFilter(request_id="req_1", target="orders-db")) == [3, 4, 5]
    assert await seqs(EventFilter(environment="staging")) == []


def _jitgate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jitgate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_cli_verify_export_and_archive(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"
    key_path = tmp_path / "key.pem"
    KEY.save(key_path)
    from jitgate.store import migrate

    async with Database(url) as db:
        await migrate(db)
        await fill(db, 20)
    env = {**os.environ, "JITGATE_DATA_DIR": str(tmp_path), "JITGATE_SIGNING_KEY": str(key_path)}
    pub = tmp_path / "pub.pem"
    out = _jitgate("audit", "public-key", env=env)
    assert out.returncode == 0
    assert "BEGIN PUBLIC KEY" in out.stdout
    pub.write_text(out.stdout)
    ok = _jitgate("audit", "verify", "--db", url, "--public-key", str(pub), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "intact: 20 events" in ok.stdout
    exported = _jitgate("audit", "export", "--db", url, "--type", "approval.given", env=env)
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["seq"] for e in lines] == [3, 6, 9, 12, 15, 18]
    as_csv = _jitgate("audit", "export", "--db", url, "--format", "csv", env=env)
    assert as_csv.stdout.splitlines()[0].startswith("seq,id,at,type")
    assert len(as_csv.stdout.splitlines()) == 21
    witness = tmp_path / "witness.json"
    assert _jitgate("audit", "checkpoint", "--db", url, "-o", str(witness), env=env).returncode == 0
    async with Database(url) as db:
        await sql(db, "UPDATE events SET payload = '{}' WHERE seq = 7")
    bad = _jitgate("audit", "verify", "--db", url, "--public-key", str(pub), env=env)
    assert bad.returncode == 1
    assert "altered at seq 7" in bad.stdout
    as_json = _jitgate("audit", "verify", "--db", url, "--json", env=env)
    assert json.loads(as_json.stdout)["problem"]["seq"] == 7
    async with Database(url) as db:
        await sql(db, "DELETE FROM events WHERE seq >= 5")
        await sql(db, "DELETE FROM audit_checkpoints")
    cut = _jitgate(
        "audit", "verify", "--db", url, "--allow-unsigned", "100", "--expect", str(witness), env=env
    )
    assert cut.returncode == 1
    assert "truncated at seq 5" in cut.stdout
    no_key = _jitgate(
        "audit",
        "verify",
        "--db",
        url,
        env={**env, "JITGATE_SIGNING_KEY": str(tmp_path / "none.pem")},
    )
    assert no_key.returncode == 2
    assert "--public-key" in no_key.stderr


WRITER = """
import asyncio, sys
from datetime import UTC, datetime
from jitgate.store import Database, append_event

async def main(url, name, n):
    async with Database(url) as db:
        for i in range(n):
            try:
                async with db.transaction() as session:
                    await append_event(session, "load", name, None, {"i": i},
                                       datetime.now(UTC))
                    if i % 7 == 3:
                        raise RuntimeError("roll back")
            except RuntimeError:
                pass

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_several_processes_make_one_gap_free_chain(pg_db: Database) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            pg_db.url.replace("+asyncpg", ""),
            f"w{i}",
            "60",
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(4)
    ]
    for proc in procs:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, err.decode()
    async with pg_db.transaction(readonly=True) as session:
        seqs = [e.seq for e in await event_page(session, limit=1000)]
    committed = 4 * sum(1 for i in range(60) if i % 7 != 3)
    assert seqs == list(range(1, committed + 1))
    result = await verify_store(pg_db, TRUSTED, allow_unsigned=committed)
    assert result.ok, result.problem
