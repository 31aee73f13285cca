"""The PostgreSQL gateway end to end: real PostgreSQL, real clients, real approvals.

The upstream is the private cluster of ``pg_cluster`` (the gateway logs in as
``scram_user`` with SCRAM-SHA-256; one target as ``md5_user``). jitgate and
the gateway run as ``jitgate serve --gateway`` would (tests/pggateway.py);
the last test runs ``jitgate serve`` and two ``jitgate proxy postgres`` as
separate processes. The policy (pggateway.POLICY): every DELETE in production
waits for one member of ``approvers`` (bob), every DROP is refused.

For each client (psql, psycopg 3, asyncpg, SQLAlchemy, pgbench): a safe
statement passes; a DELETE waits (not run yet, checked directly upstream),
bob approves through the API, and it completes with its result; a DROP fails
with 42501 and the connection goes on; a held statement inside a transaction
runs inside it once approved, and a refusal leaves the transaction usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
import sqlalchemy
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus
from sqlalchemy.pool import NullPool

from conftest import run_sync
from jitgate.store import Database, Identity, migrate
from pgcluster import PgCluster
from pggateway import (
    POLICY,
    WAIT,
    Background,
    GatewayWorld,
    Lines,
    Notices,
    conninfo,
    finish,
    free_port,
    gateway_world,
    libpq_env,
    new_table,
    spawn,
    table_exists,
    upstream_ids,
)

JITGATE = [sys.executable, "-m", "jitgate"]
PSQL = ["psql", "-X", "-A", "-t", "-v", "VERBOSITY=verbose"]


@pytest.fixture(scope="module")
def world(
    pg_cluster: PgCluster, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayWorld]:
    with gateway_world(pg_cluster, sqlite_template, tmp_path_factory.mktemp("gw")) as built:
        built.add_gateway()
        yield built


@pytest.fixture
def port(world: GatewayWorld) -> int:
    """The main gateway's port."""
    return world.gateways[0].address[1]


@pytest.fixture
def table(pg_cluster: PgCluster) -> str:
    """A fresh table with ids 1, 2, 3."""
    return new_table(pg_cluster)


def connect(
    world: GatewayWorld, port: int, user: str = "ann", **kwargs: Any
) -> tuple[psycopg.Connection[Any], Notices]:
    notices = Notices()
    conn = psycopg.connect(conninfo(port, user, world.tokens[user]), **kwargs)
    conn.add_notice_handler(notices.psycopg_handler)
    return conn, notices


# --- psql ------------------------------------------------------------------------------


def psql(
    world: GatewayWorld, port: int, *args: str, stdin: str | None = None
) -> tuple[subprocess.Popen[str], Lines, Lines]:
    env = libpq_env(port, "ann", world.tokens["ann"])
    command = [*PSQL, *args] if stdin is None else [*PSQL, *args, "-f", "-"]
    return spawn(command, env, stdin)


def test_psql_safe_statement(world: GatewayWorld, port: int, table: str) -> None:
    process, out, err = psql(
        world, port, "-c", f"SELECT string_agg(v, ',' ORDER BY id) FROM {table}"
    )
    assert finish(process) == 0, err.text()
    assert out.text() == "v1,v2,v3"


def test_psql_held_delete_runs_once_approved(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    process, out, err = psql(world, port, "-c", f"DELETE FROM {table}")
    request_id = err.notices.held_id()
    assert process.poll() is None, "psql waits for the approval"
    assert upstream_ids(pg_cluster, table) == [1, 2, 3], "nothing ran before the approval"
    view = world.request(request_id)
    assert view["status"] == "pending"
    assert view["action"]["text"] == f"DELETE FROM {table}"
    assert view["action"]["environment"] == "production"
    world.approve(request_id)
    assert finish(process) == 0, err.text()
    assert out.text() == "DELETE 3"
    assert f"{request_id} approved by bob; running" in err.text()
    assert upstream_ids(pg_cluster, table) == []
    final = world.wait_status(request_id, ["executed"])
    assert final["execution"]["rows_affected"] == 3


def test_psql_denied_drop_fails_and_the_session_goes_on(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    process, out, err = psql(
        world, port, "-c", f"DROP TABLE {table}", "-c", f"SELECT count(*) FROM {table}"
    )
    assert finish(process) == 0, err.text()
    refusal = r"ERROR:\s+42501: jitgate: denied by policy: tables are not dropped"
    assert re.search(refusal, err.text())
    assert out.text() == "3", "the same connection goes on after the refusal"
    assert table_exists(pg_cluster, table)


def test_psql_held_in_a_transaction_runs_inside_it(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    script = (
        "BEGIN;\n"
        f"INSERT INTO {table} VALUES (10, 'new');\n"
        f"DELETE FROM {table} WHERE id <= 2;\n"
        f"SELECT string_agg(id::text, ',' ORDER BY id) FROM {table};\n"
        "COMMIT;\n"
    )
    process, out, err = psql(world, port, stdin=script)
    request_id = err.notices.held_id()
    assert upstream_ids(pg_cluster, table) == [1, 2, 3], "the insert is not committed yet"
    world.approve(request_id)
    assert finish(process) == 0, err.text()
    assert out.text().splitlines() == ["BEGIN", "INSERT 0 1", "DELETE 2", "3,10", "COMMIT"]
    assert upstream_ids(pg_cluster, table) == [3, 10]


def test_psql_refusals_in_a_transaction_leave_it_usable(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    script = (
        "BEGIN;\n"
        f"INSERT INTO {table} VALUES (10, 'new');\n"
        f"DELETE FROM {table};\n"  # denied by bob
        f"DROP TABLE {table};\n"  # denied by the policy
        f"SELECT count(*) FROM {table};\n"
        "COMMIT;\n"
    )
    process, out, err = psql(world, port, stdin=script)
    request_id = err.notices.held_id()
    world.deny(request_id, "keep them")
    assert finish(process) == 0, err.text()
    assert f"jitgate: request {request_id} denied by bob: keep them; not run" in err.text()
    assert "denied by policy" in err.text()
    # COMMIT (not ROLLBACK): the transaction was never aborted.
    assert out.text().splitlines() == ["BEGIN", "INSERT 0 1", "4", "COMMIT"]
    assert upstream_ids(pg_cluster, table) == [1, 2, 3, 10]
    assert world.request(request_id)["status"] == "denied"


def test_psql_ctrl_c_during_a_hold_cancels_the_request(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    process, _, err = psql(world, port, "-c", f"DELETE FROM {table}")
    request_id = err.notices.held_id()
    process.send_signal(signal.SIGINT)  # psql sends a CancelRequest (PQcancel)
    assert finish(process) == 1
    assert re.search(r"ERROR:\s+57014: canceling statement due to user request", err.text())
    assert world.wait_status(request_id, ["cancelled"])["status"] == "cancelled"
    assert upstream_ids(pg_cluster, table) == [1, 2, 3]


# --- psycopg 3 -----------------------------------------------------------------------


def test_psycopg_safe_statements_all_protocols_and_copy(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, _ = connect(world, port, autocommit=True)
    with conn:
        # Simple protocol (no parameters): several statements in one Query.
        cur = conn.execute(f"SELECT 1; SELECT count(*) FROM {table}")
        assert cur.fetchone() == (1,)
        assert cur.nextset()
        assert cur.fetchone() == (3,)
        # Extended protocol, text and binary.
        cur = conn.execute(f"SELECT v FROM {table} WHERE id = %s", (2,))
        assert cur.fetchone() == ("v2",)
        with conn.cursor(binary=True) as bcur:
            bcur.execute(f"SELECT id, v FROM {table} WHERE id = %b AND v = %b", (3, "v3"))
            assert bcur.fetchone() == (3, "v3")
        cur = conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", ("two", 2))
        assert cur.rowcount == 1
        # COPY in and out.
        with conn.cursor() as ccur:
            with ccur.copy(f"COPY {table} (id, v) FROM STDIN") as copy:
                for i in range(4, 8):
                    copy.write_row((i, f"c{i}"))
            assert ccur.rowcount == 4
            with ccur.copy(f"COPY (SELECT id, v FROM {table} ORDER BY id) TO STDOUT") as copy:
                rows = [tuple(r) for r in copy.rows()]
        assert rows == [
            ("1", "v1"), ("2", "two"), ("3", "v3"),
            ("4", "c4"), ("5", "c5"), ("6", "c6"), ("7", "c7"),
        ]  # fmt: skip
        # A prepared statement, executed many times.
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(i, "m") for i in range(8, 12)])
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (11,)
    assert upstream_ids(pg_cluster, table) == list(range(1, 12))


def test_psycopg_held_simple_protocol_runs_once_approved(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = connect(world, port, autocommit=True)
    with conn:
        running = Background(lambda: conn.execute(f"DELETE FROM {table}").rowcount)
        request_id = notices.held_id()
        assert not running.done
        assert upstream_ids(pg_cluster, table) == [1, 2, 3]
        world.approve(request_id)
        assert running.result() == 3
        notices.wait_for(re.compile(rf"{request_id} approved by bob; running"))
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert upstream_ids(pg_cluster, table) == []
    assert world.wait_status(request_id, ["executed"])["execution"]["rows_affected"] == 3


def test_psycopg_held_extended_protocol_with_binary_parameters(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = connect(world, port, autocommit=True)
    with conn:
        text = f"DELETE FROM {table} WHERE id = $1 AND v = $2 RETURNING id, v"

        def run() -> list[Any]:
            with conn.cursor(binary=True) as cur:
                cur.execute(
                    f"DELETE FROM {table} WHERE id = %b AND v = %t RETURNING id, v", (2, "v2")
                )
                return cur.fetchall()

        running = Background(run)
        request_id = notices.held_id()
        view = world.request(request_id)
        assert view["action"]["text"] == text
        # 2 in binary (psycopg picks the integer's width), the text value as is:
        # shown decoded, and exactly (what the approval is bound to).
        assert view["action"]["attributes"]["parameter_values"] == ["2", "v2"]
        assert view["action"]["attributes"]["parameters"] in (
            ["\\x00000002", "v2"],
            ["\\x0000000000000002", "v2"],
            ["\\x0002", "v2"],
        )
        assert upstream_ids(pg_cluster, table) == [1, 2, 3]
        world.approve(request_id)
        assert running.result() == [(2, "v2")]
    assert upstream_ids(pg_cluster, table) == [1, 3]


def test_psycopg_denied_in_both_protocols_the_connection_goes_on(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, _ = connect(world, port, autocommit=True)
    with conn:
        with pytest.raises(pgerrors.InsufficientPrivilege) as simple:
            conn.execute(f"DROP TABLE {table}")
        assert simple.value.sqlstate == "42501"
        assert "tables are not dropped in production" in str(simple.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE {table} CASCADE", prepare=True)
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute(f"SELECT 1; DROP TABLE {table}")  # one Query, one action
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE id > %s", (0,)).fetchone() == (3,)
    assert table_exists(pg_cluster, table)


def test_psycopg_held_in_a_transaction_then_commit(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = connect(world, port)  # not autocommit: psycopg opens a transaction
    with conn:
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (10, "new"))
        running = Background(
            lambda: conn.execute(f"DELETE FROM {table} WHERE id < %s", (3,)).rowcount
        )
        request_id = notices.held_id()
        assert upstream_ids(pg_cluster, table) == [1, 2, 3]
        world.approve(request_id)
        assert running.result() == 2
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        assert upstream_ids(pg_cluster, table) == [1, 2, 3], "not committed yet"
        conn.commit()
    assert upstream_ids(pg_cluster, table) == [3, 10]


def test_psycopg_refusals_in_a_transaction_keep_it_usable(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = connect(world, port)
    with conn:
        conn.execute(f"INSERT INTO {table} VALUES (10, 'new')")
        # Simple protocol, held and then denied by bob.
        running = Background(lambda: conn.execute(f"DELETE FROM {table}"))
        request_id = notices.held_id()
        world.deny(request_id, "no")
        with pytest.raises(pgerrors.InsufficientPrivilege) as denied:
            running.result()
        assert f"request {request_id} denied by bob: no; not run" in str(denied.value)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        # Simple protocol, denied by the policy.
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE {table}")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        # Extended protocol, nothing else in the batch ran: still usable.
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE {table}", prepare=True)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (4,)
        conn.commit()
    assert upstream_ids(pg_cluster, table) == [1, 2, 3, 10]


def test_psycopg_pipeline_a_refusal_fails_the_whole_batch(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    """An INSERT ran in the batch before the refused DROP: the batch fails as a
    whole upstream too, so the INSERT is rolled back with it."""
    conn, _ = connect(world, port, autocommit=True)

    def piped() -> None:
        with conn.pipeline():  # one batch: a single Sync at the end
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (10, "piped"))
            conn.execute(f"DROP TABLE {table}", prepare=True)

    with conn:
        with pytest.raises(pgerrors.InsufficientPrivilege):
            piped()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (3,)
    assert upstream_ids(pg_cluster, table) == [1, 2, 3]
    assert table_exists(pg_cluster, table)


def test_psycopg_pipeline_with_a_held_statement(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = connect(world, port, autocommit=True)
    with conn:

        def run() -> tuple[int, int]:
            with conn.pipeline():
                first = conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (10, "piped"))
                second = conn.execute(f"DELETE FROM {table} WHERE id < %s", (3,))
            return first.rowcount, second.rowcount

        running = Background(run)
        request_id = notices.held_id()
        assert upstream_ids(pg_cluster, table) == [1, 2, 3], "one batch, not committed"
        world.approve(request_id)
        assert running.result() == (1, 2)
    assert upstream_ids(pg_cluster, table) == [3, 10]


def test_a_statement_swapped_behind_a_prepared_name_does_not_run_unapproved(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = connect(world, port, autocommit=True)
    select = "SELECT %t::text"
    with conn:
        conn.execute(select, ("1",), prepare=True)  # Parse _pg3_0 through the protocol
        (name,) = conn.execute("SELECT name FROM pg_prepared_statements").fetchone() or ("",)
        conn.execute(f"DEALLOCATE {name}")  # allowed: gone upstream, not in the gateway
        # Allowed by a policy that matches statement types: the type is PREPARE.
        conn.execute(f"PREPARE {name} (text) AS DELETE FROM {table} WHERE id::text = $1")
        # psycopg believes it still has the SELECT prepared: Bind + Execute by name.
        running = Background(lambda: conn.execute(select, ("2",), prepare=True))
        deadline = time.monotonic() + WAIT
        while not running.done and not notices.held_ids():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for request_id in notices.held_ids():
            world.deny(request_id, "swapped")
        with contextlib.suppress(psycopg.Error):
            running.result()
    # A fixed gateway refuses the Execute (or holds it); it must not run the DELETE.
    assert upstream_ids(pg_cluster, table) == [1, 2, 3]


def test_a_multi_statement_query_is_held_as_one_action(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    text = f"INSERT INTO {table} VALUES (10, 'x'); DELETE FROM {table} WHERE id = 1"
    process, out, err = psql(world, port, "-c", text)
    request_id = err.notices.held_id()
    view = world.request(request_id)
    assert view["action"]["text"] == text
    assert upstream_ids(pg_cluster, table) == [1, 2, 3], "not even the INSERT ran"
    world.approve(request_id)
    assert finish(process) == 0, err.text()
    assert out.text().splitlines() == ["INSERT 0 1", "DELETE 1"]
    assert upstream_ids(pg_cluster, table) == [2, 3, 10]


def test_a_client_that_disconnects_while_held_cancels_its_request(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    process, _, err = psql(world, port, "-c", f"DELETE FROM {table}")
    request_id = err.notices.held_id()
    process.kill()
    process.wait(WAIT)
    assert world.wait_status(request_id, ["cancelled"])["status"] == "cancelled"
    assert upstream_ids(pg_cluster, table) == [1, 2, 3]


def test_an_approved_statement_that_fails_upstream_fails_its_request(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    child = f"{table}_child"
    with psycopg.connect(pg_cluster.dsn("scram_user"), autocommit=True) as direct:
        direct.execute(f"CREATE TABLE {child} (id int REFERENCES {table} (id))")
        direct.execute(f"INSERT INTO {child} VALUES (1)")
    conn, notices = connect(world, port, autocommit=True)
    with conn:
        running = Background(lambda: conn.execute(f"DELETE FROM {table}"))
        request_id = notices.held_id()
        world.approve(request_id)
        with pytest.raises(pgerrors.ForeignKeyViolation):
            running.result()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    final = world.wait_status(request_id, ["failed"])
    assert final["execution"]["error"].startswith("23503 ")
    assert upstream_ids(pg_cluster, table) == [1, 2, 3]


def test_cancel_of_a_statement_not_held_reaches_the_server(world: GatewayWorld, port: int) -> None:
    conn, _ = connect(world, port, autocommit=True)
    with conn:
        running = Background(lambda: conn.execute("SELECT pg_sleep(30)"))
        sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
        deadline = time.monotonic() + WAIT
        with psycopg.connect(world.cluster.dsn("scram_user"), autocommit=True) as direct:
            while direct.execute(sleeping).fetchone() != (1,):
                assert time.monotonic() < deadline, "the statement never reached the server"
                time.sleep(0.02)
        started = time.monotonic()
        conn.cancel_safe(timeout=WAIT)
        with pytest.raises(pgerrors.QueryCanceled):
            running.result()
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_unknown_database_and_dropped_startup_parameters(world: GatewayWorld, port: int) -> None:
    with pytest.raises(psycopg.OperationalError, match='jitgate has no target "nope"'):
        psycopg.connect(conninfo(port, "ann", world.tokens["ann"], database="nope"))
    # A startup option would switch triggers off before any statement is seen.
    env = {
        **libpq_env(port, "ann", world.tokens["ann"]),
        "PGOPTIONS": "-c session_replication_role=replica",
    }
    process, out, err = spawn([*PSQL, "-c", "SHOW session_replication_role"], env)
    assert finish(process) == 0, err.text()
    assert out.text() == "origin"
    assert "jitgate: startup parameter(s) not passed on: options" in err.text()


async def test_asyncpg_cursor_over_a_held_statement(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    """The approved portal is executed again and again (PortalSuspended) as the
    cursor fetches: one approval for the statement."""
    conn, notices = await asyncpg_connect(world, port)
    try:
        async with conn.transaction():
            ids: list[int] = []

            async def fetch_all() -> None:
                async for row in conn.cursor(
                    f"DELETE FROM {table} WHERE id > $1 RETURNING id", 0, prefetch=1
                ):
                    ids.append(row["id"])

            running = asyncio.create_task(fetch_all())
            request_id = await held_id(notices)
            await asyncio.to_thread(world.approve, request_id)
            await asyncio.wait_for(running, WAIT)
            assert sorted(ids) == [1, 2, 3]
            assert len(notices.held_ids()) == 1
    finally:
        await conn.close()
    assert upstream_ids(pg_cluster, table) == []


def test_large_copy_and_server_notices_pass_through(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = connect(world, port, autocommit=True)
    payload = "x" * 1000
    with conn:
        with conn.cursor() as cur, cur.copy(f"COPY {table} (id, v) FROM STDIN") as copy:
            for i in range(100, 20_100):  # about 20 MB
                copy.write_row((i, payload))
        with conn.cursor() as cur, cur.copy(f"COPY {table} TO STDOUT") as copy:
            size = sum(len(block) for block in copy)
        assert size > 20_000_000
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from upstream'; END $$")
        notices.wait_for(re.compile("hello from upstream"))
    assert len(upstream_ids(pg_cluster, table)) == 20_003


def test_bound_parameter_values_are_part_of_the_request(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    new_ids = [7, 8]
    with psycopg.connect(pg_cluster.dsn("scram_user"), autocommit=True) as direct:
        for i in new_ids:
            direct.execute(f"INSERT INTO {table} VALUES (%s, 'x')", (i,))
    seven, seven_notices = connect(world, port, autocommit=True)
    eight, eight_notices = connect(world, port, autocommit=True)
    statement = f"DELETE FROM {table} WHERE id = %t"
    with seven, eight:
        running_7 = Background(lambda: seven.execute(statement, (7,)).rowcount)
        id_7 = seven_notices.held_id()
        running_8 = Background(lambda: eight.execute(statement, (8,)).rowcount)
        id_8 = eight_notices.held_id()
        assert id_7 != id_8
        view_7, view_8 = world.request(id_7), world.request(id_8)
        assert view_7["action"]["text"] == view_8["action"]["text"]
        assert view_7["action"]["text"] == f"DELETE FROM {table} WHERE id = $1"
        assert view_7["action"]["attributes"]["parameters"] == ["7"]
        assert view_8["action"]["attributes"]["parameters"] == ["8"]
        assert view_7["fingerprint"] != view_8["fingerprint"]
        world.approve(id_7)
        assert running_7.result() == 1
        assert upstream_ids(pg_cluster, table) == [1, 2, 3, 8], "only 7 was released"
        assert not running_8.done
        assert world.request(id_8)["status"] == "pending"
        world.deny(id_8, "only seven")
        with pytest.raises(pgerrors.InsufficientPrivilege):
            running_8.result()
    assert upstream_ids(pg_cluster, table) == [1, 2, 3, 8]


def test_cancel_during_a_hold_cancels_the_request(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = connect(world, port, autocommit=True)
    with conn:
        running = Background(lambda: conn.execute(f"DELETE FROM {table}"))
        request_id = notices.held_id()
        # cancel_safe(): libpq's non-blocking cancel. The blocking conn.cancel()
        # (PQcancel) does not release the GIL in psycopg's binary build, which
        # would stall the gateway that runs in this very process.
        conn.cancel_safe(timeout=WAIT)
        with pytest.raises(pgerrors.QueryCanceled) as cancelled:
            running.result()
        assert cancelled.value.sqlstate == "57014"
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert world.wait_status(request_id, ["cancelled"])["status"] == "cancelled"
    assert upstream_ids(pg_cluster, table) == [1, 2, 3]


def test_a_statement_not_approved_within_the_hold_timeout_fails(
    world: GatewayWorld, table: str, pg_cluster: PgCluster
) -> None:
    quick = world.add_gateway(hold_timeout=1.0, name="pg-quick")
    conn, notices = connect(world, quick.address[1], autocommit=True)
    with conn:
        started = time.monotonic()
        with pytest.raises(pgerrors.InsufficientPrivilege) as timed_out:
            conn.execute(f"DELETE FROM {table}")
        waited = time.monotonic() - started
        assert "was not approved within 1 s; not run" in str(timed_out.value)
        assert 0.9 <= waited < WAIT
        request_id = notices.held_id(timeout=0)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # The request cannot stay pending for a statement that will never run.
    assert world.wait_status(request_id, ["cancelled"])["status"] == "cancelled"
    assert upstream_ids(pg_cluster, table) == [1, 2, 3]


async def test_a_wrong_token_is_refused_before_anything_reaches_the_upstream(
    world: GatewayWorld, port: int
) -> None:
    forwarder = world.forwarder
    before = forwarder.connections
    for user, password in (
        ("ann", "jg_not-a-token"),
        ("ann", world.tokens["bob"]),  # bob's token is not ann's
        ("nobody", world.tokens["ann"]),
    ):
        with pytest.raises(asyncpg.InvalidPasswordError) as refused:
            await asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user=user,
                password=password,
                database="counted",
                ssl=False,
                timeout=10,
            )
        assert refused.value.sqlstate == "28P01"
        assert f'password authentication failed for user "{user}"' in str(refused.value)
    # libpq clients see the same (psycopg does not expose a start-up SQLSTATE).
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await asyncio.to_thread(
            lambda: psycopg.connect(conninfo(port, "ann", "jg_wrong", database="counted"))
        )
    assert forwarder.connections == before, "nothing reached the upstream"
    # The same path with the right token does reach it (the counter counts).
    conn, _ = await asyncpg_connect(world, port, database="counted")
    try:
        assert await conn.fetchval("SELECT current_user") == "scram_user"
    finally:
        await conn.close()
    assert forwarder.connections == before + 1


def test_an_md5_upstream(world: GatewayWorld, port: int, table: str) -> None:
    with psycopg.connect(conninfo(port, "ann", world.tokens["ann"], database="app_md5")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("md5_user",)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (3,)


# --- asyncpg -------------------------------------------------------------------------


async def asyncpg_connect(
    world: GatewayWorld, port: int, user: str = "ann", database: str = "app"
) -> tuple[asyncpg.Connection, Notices]:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=port,
        user=user,
        password=world.tokens[user],
        database=database,
        ssl=False,
        timeout=10,
    )
    notices = Notices()
    conn.add_log_listener(lambda _c, message: notices.add(message.message))
    return conn, notices


async def held_id(notices: Notices) -> str:
    return await asyncio.to_thread(notices.held_id)


async def test_asyncpg_prepared_statements_and_pipelined_executemany(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, _ = await asyncpg_connect(world, port)
    try:
        statement = await conn.prepare(f"SELECT v FROM {table} WHERE id = $1")
        assert [await statement.fetchval(i) for i in (1, 2, 3)] == ["v1", "v2", "v3"]
        await conn.executemany(
            f"INSERT INTO {table} VALUES ($1, $2)", [(i, f"e{i}") for i in range(4, 54)]
        )
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 53
        rows = await conn.fetch(f"SELECT id FROM {table} WHERE id = ANY($1::int[])", [1, 50])
        assert [r["id"] for r in rows] == [1, 50]
        # COPY in (binary) and out.
        records = [(i, f"c{i}") for i in range(100, 1100)]
        assert await conn.copy_records_to_table(table, records=records) == "COPY 1000"
        out = io.BytesIO()
        copied = await conn.copy_from_query(
            f"SELECT * FROM {table} WHERE id >= $1", 100, output=out
        )
        assert copied == "COPY 1000"
        assert out.getvalue().count(b"\n") == 1000
    finally:
        await conn.close()
    assert len(upstream_ids(pg_cluster, table)) == 1053


async def test_asyncpg_held_statement_runs_once_approved(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = await asyncpg_connect(world, port)
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {table} WHERE id > $1", 1))
        request_id = await held_id(notices)
        assert not running.done()
        assert upstream_ids(pg_cluster, table) == [1, 2, 3]
        view = await asyncio.to_thread(world.request, request_id)
        # asyncpg binds in binary: an int4, shown decoded to the approver (its
        # type from the server's ParameterDescription), bound exactly.
        assert view["action"]["attributes"]["parameter_values"] == ["1"]
        assert view["action"]["attributes"]["parameters"] == ["\\x00000001"]
        await asyncio.to_thread(world.approve, request_id)
        assert await asyncio.wait_for(running, WAIT) == "DELETE 2"
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert upstream_ids(pg_cluster, table) == [1]


async def test_asyncpg_executemany_needs_an_approval_per_parameter_set(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = await asyncpg_connect(world, port)
    try:
        running = asyncio.create_task(
            conn.executemany(f"DELETE FROM {table} WHERE id = $1", [(1,), (3,)])
        )
        first = await held_id(notices)
        shown = (await asyncio.to_thread(world.request, first))["action"]["attributes"]
        assert shown["parameter_values"] == ["1"]
        assert shown["parameters"] == ["\\x00000001"]
        await asyncio.to_thread(world.approve, first)

        def second_held() -> str:
            notices.wait_for(re.compile(r"held for approval as (?!" + first + r")req_"))
            return next(i for i in notices.held_ids() if i != first)

        second = await asyncio.to_thread(second_held)
        # The first ran; the batch (one implicit transaction up to its Sync) waits
        # for the second, so nothing is committed yet.
        done = await asyncio.to_thread(world.wait_status, first, ["executed"])
        assert done["execution"]["rows_affected"] == 1
        assert upstream_ids(pg_cluster, table) == [1, 2, 3]
        shown = (await asyncio.to_thread(world.request, second))["action"]["attributes"]
        assert shown["parameter_values"] == ["3"]
        assert shown["parameters"] == ["\\x00000003"]
        await asyncio.to_thread(world.approve, second)
        await asyncio.wait_for(running, WAIT)
    finally:
        await conn.close()
    assert upstream_ids(pg_cluster, table) == [2]


async def test_asyncpg_denied_the_connection_goes_on(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, _ = await asyncpg_connect(world, port)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as simple:
            await conn.execute(f"DROP TABLE {table}")
        assert simple.value.sqlstate == "42501"
        statement = await conn.prepare(f"DROP TABLE {table}")  # Parse is not classified
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await statement.fetch()  # Execute is
        assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE id > $1", 0) == 3
    finally:
        await conn.close()
    assert table_exists(pg_cluster, table)


async def test_asyncpg_held_in_a_transaction(
    world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster
) -> None:
    conn, notices = await asyncpg_connect(world, port)
    try:
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 10, "new")
            running = asyncio.create_task(conn.execute(f"DELETE FROM {table} WHERE id = $1", 1))
            request_id = await held_id(notices)
            assert upstream_ids(pg_cluster, table) == [1, 2, 3]
            await asyncio.to_thread(world.approve, request_id)
            assert await asyncio.wait_for(running, WAIT) == "DELETE 1"
            assert upstream_ids(pg_cluster, table) == [1, 2, 3], "not committed yet"
        # A refusal in the extended protocol with nothing else in its batch.
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES (11, 'more')")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"DROP TABLE {table}")
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 4
    finally:
        await conn.close()
    assert upstream_ids(pg_cluster, table) == [2, 3, 10, 11]


# --- SQLAlchemy ----------------------------------------------------------------------


def engine_for(world: GatewayWorld, port: int, notices: Notices) -> sqlalchemy.Engine:
    url = sqlalchemy.URL.create(
        "postgresql+psycopg",
        username="ann",
        password=world.tokens["ann"],
        host="127.0.0.1",
        port=port,
        database="app",
        query={"sslmode": "disable"},
    )
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)

    @sqlalchemy.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.add_notice_handler(notices.psycopg_handler)

    return engine


def test_sqlalchemy(world: GatewayWorld, port: int, table: str, pg_cluster: PgCluster) -> None:
    notices = Notices()
    engine = engine_for(world, port, notices)
    t = sqlalchemy.table(table, sqlalchemy.column("id"), sqlalchemy.column("v"))
    try:
        with engine.connect() as conn:
            # Safe, with a bound parameter.
            rows = conn.execute(sqlalchemy.select(t.c.v).where(t.c.id >= 2).order_by(t.c.id))
            assert rows.scalars().all() == ["v2", "v3"]
            # Denied: the connection and its transaction go on.
            with pytest.raises(sqlalchemy.exc.ProgrammingError) as denied:
                conn.execute(sqlalchemy.text(f"DROP TABLE {table}"))
            assert denied.value.orig is not None
            assert getattr(denied.value.orig, "sqlstate", None) == "42501"
            count = sqlalchemy.select(sqlalchemy.func.count()).select_from(t)
            assert conn.execute(count).scalar() == 3
            conn.rollback()
        # Held inside a transaction, approved, committed.
        with engine.begin() as conn:
            conn.execute(t.insert().values(id=10, v="new"))
            running = Background(lambda: conn.execute(t.delete().where(t.c.id <= 2)).rowcount)
            request_id = notices.held_id()
            assert upstream_ids(pg_cluster, table) == [1, 2, 3]
            view = world.request(request_id)
            # SQLAlchemy's psycopg dialect casts its bind parameters.
            assert view["action"]["text"] == f"DELETE FROM {table} WHERE {table}.id <= $1::INTEGER"
            # psycopg binds a small int as a binary int2 (its OID in Parse).
            assert view["action"]["attributes"]["parameter_values"] == ["2"]
            assert view["action"]["attributes"]["parameters"] == ["\\x0002"]
            world.approve(request_id)
            assert running.result() == 2
        assert upstream_ids(pg_cluster, table) == [3, 10]
    finally:
        engine.dispose()


# --- pgbench ---------------------------------------------------------------------------


def pgbench(
    world: GatewayWorld, port: int, tmp_path: Path, script: str, *args: str
) -> tuple[subprocess.Popen[str], Lines, Lines]:
    path = tmp_path / f"script-{time.monotonic_ns()}.sql"
    path.write_text(script)
    env = libpq_env(port, "ann", world.tokens["ann"])
    return spawn(["pgbench", "-n", "-f", str(path), *args], env)


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_safe_script(
    world: GatewayWorld, port: int, table: str, tmp_path: Path, mode: str
) -> None:
    script = f"\\set id random(1, 3)\nSELECT v FROM {table} WHERE id = :id;\n"
    process, out, err = pgbench(world, port, tmp_path, script, "-M", mode, "-c", "2", "-t", "25")
    assert finish(process, 60) == 0, err.text()
    assert "number of transactions actually processed: 50/50" in out.text()
    assert "number of failed transactions: 0" in out.text()


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench_held_transaction_runs_once_approved(
    world: GatewayWorld, port: int, table: str, tmp_path: Path, pg_cluster: PgCluster, mode: str
) -> None:
    script = (
        "\\set id 2\n"
        "BEGIN;\n"
        f"INSERT INTO {table} VALUES (10, 'pgbench');\n"
        f"DELETE FROM {table} WHERE id = :id;\n"
        "END;\n"
    )
    process, out, err = pgbench(world, port, tmp_path, script, "-M", mode, "-t", "1")
    text = (
        f"DELETE FROM {table} WHERE id = 2;"
        if mode == "simple"
        else f"DELETE FROM {table} WHERE id = $1;"
    )
    request_id = err.notices.held_id()  # libpq prints the notice on stderr
    request = world.request(request_id)
    assert request["action"]["text"] == text
    if mode == "prepared":
        assert request["action"]["attributes"]["parameters"] == ["2"]
    assert process.poll() is None
    assert upstream_ids(pg_cluster, table) == [1, 2, 3]
    world.approve(request_id)
    assert finish(process) == 0, err.text()
    assert "number of transactions actually processed: 1/1" in out.text()
    assert upstream_ids(pg_cluster, table) == [1, 3, 10]


def test_pgbench_denied_script_fails_with_the_refusal(
    world: GatewayWorld, port: int, table: str, tmp_path: Path, pg_cluster: PgCluster
) -> None:
    process, _, err = pgbench(world, port, tmp_path, f"DROP TABLE {table};\n", "-t", "1")
    assert finish(process) != 0
    assert "jitgate: denied by policy: tables are not dropped in production" in err.text()
    assert table_exists(pg_cluster, table)


# --- the audit trail -----------------------------------------------------------------


def test_every_statement_is_recorded_and_the_trail_verifies(
    world: GatewayWorld, port: int, table: str
) -> None:
    start = max((e.seq for e in world.events()), default=0)
    conn, notices = connect(world, port, autocommit=True)
    with conn:
        conn.execute(f"SELECT * FROM {table}")
        running = Background(lambda: conn.execute(f"DELETE FROM {table} WHERE id = %t", (2,)))
        request_id = notices.held_id()
        world.approve(request_id)
        running.result()
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE {table}")
    world.wait_status(request_id, ["executed"])
    world.flush()
    events = world.events(start)
    statements = {e.payload["text"]: e for e in events if e.type == "statement.executed"}
    allowed = statements[f"SELECT * FROM {table}"]
    assert allowed.actor == "ann"
    assert allowed.target == "app"
    assert allowed.environment == "production"
    assert allowed.request_id is None
    assert allowed.payload["decision"] == "allow"
    assert allowed.payload["tag"] == "SELECT 3"
    assert allowed.payload["rows"] == 3
    assert allowed.payload["error"] is None
    assert allowed.payload["gateway"] == "pg-e2e"
    assert allowed.payload["recorded_by"] == "gateway:pg-e2e"

    held = statements[f"DELETE FROM {table} WHERE id = $1"]
    assert held.payload["decision"] == "require_approval"
    assert held.request_id == request_id
    assert held.payload["tag"] == "DELETE 1"
    assert held.payload["rows"] == 1
    assert held.payload["parameters"] == ["2"]
    assert held.payload["error"] is None

    denied = statements[f"DROP TABLE {table}"]
    assert denied.payload["decision"] == "deny"
    assert denied.payload["tag"] is None
    assert denied.payload["error"].startswith("42501 ")
    assert denied.request_id is None

    lifecycle = [e.type for e in events if e.request_id == request_id]
    assert lifecycle[0] == "request.created"
    assert "execution.finished" in lifecycle
    assert world.verify().ok


# --- separate processes: a server and two standalone gateways ---------------------------


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*JITGATE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def start_server(env: dict[str, str], policy: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [*JITGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--policy", str(policy)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            assert process.stderr is not None
            raise AssertionError(f"jitgate serve did not start: {process.stderr.read()}")
        time.sleep(0.05)


def spawn_proxy(
    env: dict[str, str], upstream: str, url: str, token: str
) -> tuple[subprocess.Popen[str], int, Lines]:
    """``jitgate proxy postgres`` on a free port (wait for :func:`proxy_ready`)."""
    port = free_port()
    process, _, err = spawn(
        [
            *JITGATE, "proxy", "postgres", "--listen", f"127.0.0.1:{port}",
            "--env", "production", "--target", "app", "--url", url,
        ],
        {**env, "JITGATE_UPSTREAM": upstream, "JITGATE_TOKEN": token},
    )  # fmt: skip
    return process, port, err


def proxy_ready(process: subprocess.Popen[str], port: int, err: Lines) -> None:
    try:
        err.notices.wait_for(re.compile(rf"jitgate postgres gateway on 127\.0\.0\.1:{port}"), 30)
    except AssertionError:
        raise AssertionError(
            f"the gateway did not start ({process.poll()}): {err.text()}"
        ) from None


async def add_users(url: str, users: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Migrate the store at ``url``, add ``users`` (name -> groups); their tokens."""
    database = Database(url)
    try:
        await migrate(database)
        tokens: dict[str, str] = {}
        async with database.transaction() as session:
            identity = Identity(session)
            for name, groups in users.items():
                await identity.add_user(name, groups)
                tokens[name], _ = await identity.create_token(name, "e2e")
        return tokens
    finally:
        await database.close()


def server_setup(tmp: Path, store_url: str) -> tuple[dict[str, str], dict[str, str], Path]:
    """For a ``jitgate serve`` on the store at ``store_url`` (migrated here): its
    environment, the tokens of ann (dev), bob (approvers) and the gateway's
    service account gw, and the policy file (POLICY)."""
    env = {**os.environ, "JITGATE_DATA_DIR": str(tmp), "JITGATE_DB": store_url}
    env.pop("JITGATE_URL", None)
    env.pop("JITGATE_TOKEN", None)
    # People directly in the store (fast); the gateway's service account as an
    # operator creates it, with `jitgate admin`.
    tokens = run_sync(add_users(store_url, {"ann": ("dev",), "bob": ("approvers",)}))
    run_cli(env, "admin", "user", "add", "gw", "--service")
    tokens["gw"] = run_cli(env, "admin", "token", "create", "gw", "--quiet")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    return env, tokens, policy


def stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.terminate()
    return finish(process, 30)


def test_two_standalone_gateways_and_a_server_as_separate_processes(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    # The jitgate store: a PostgreSQL database of its own on the private cluster.
    store = f"jitgate_store_{secrets.token_hex(4)}"
    pg_cluster.psql(f"CREATE DATABASE {store}")
    store_url = f"postgresql://postgres@{pg_cluster.host}:{pg_cluster.port}/{store}"
    env, tokens, policy = server_setup(tmp_path, store_url)
    table = new_table(pg_cluster)
    upstream = pg_cluster.dsn("scram_user")
    processes: list[subprocess.Popen[str]] = []
    try:
        server, url = start_server(env, policy)
        processes.append(server)
        gw1, port1, err1 = spawn_proxy(env, upstream, url, tokens["gw"])
        processes.append(gw1)
        gw2, port2, err2 = spawn_proxy(env, upstream, url, tokens["gw"])
        processes.append(gw2)
        proxy_ready(gw1, port1, err1)
        proxy_ready(gw2, port2, err2)

        notices = Notices()
        held_conn = psycopg.connect(conninfo(port2, "ann", tokens["ann"]), autocommit=True)
        held_conn.add_notice_handler(notices.psycopg_handler)
        other = psycopg.connect(conninfo(port1, "ann", tokens["ann"]), autocommit=True)
        with held_conn, other:
            running = Background(lambda: held_conn.execute(f"DELETE FROM {table}").rowcount)
            request_id = notices.held_id()
            # Gateway 1 keeps serving while gateway 2 holds.
            for i in range(20):
                other.execute(f"INSERT INTO {table} VALUES (%s, 'gw1')", (100 + i,))
            assert other.execute(f"SELECT count(*) FROM {table}").fetchone() == (23,)
            assert not running.done
            assert len(upstream_ids(pg_cluster, table)) == 23
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {tokens['bob']}"}, timeout=10
            ) as bob:
                view = bob.get(f"/api/v1/requests/{request_id}").json()
                assert view["status"] == "pending"
                assert view["requester"] == "ann"
                assert view["submitted_by"] == "gw"
                approved = bob.post(f"/api/v1/requests/{request_id}/approve", json={})
                assert approved.status_code == 200, approved.text
            assert running.result() == 23
            assert other.execute("SELECT 1").fetchone() == (1,)
        assert upstream_ids(pg_cluster, table) == []
        # Stopping a gateway writes what it still has to record.
        assert stop(gw1) == 0
        assert stop(gw2) == 0
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {tokens['ann']}"}, timeout=10
        ) as ann:
            final = ann.get(f"/api/v1/requests/{request_id}").json()
        assert final["status"] == "executed", final
        assert final["execution"]["rows_affected"] == 23
        assert stop(server) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    exported = run_cli(env, "audit", "export", "--type", "statement.executed")
    records = [json.loads(line) for line in exported.splitlines()]
    texts = [r["payload"]["text"] for r in records]
    assert texts.count(f"INSERT INTO {table} VALUES ($1, 'gw1')") == 20
    deleted = [r for r in records if r["payload"]["text"] == f"DELETE FROM {table}"]
    assert len(deleted) == 1
    assert deleted[0]["request_id"] == request_id
    assert deleted[0]["payload"]["tag"] == "DELETE 23"
    assert deleted[0]["payload"]["recorded_by"] == "gw"
    assert {r["actor"] for r in records} == {"ann"}
    run_cli(env, "audit", "verify", "--allow-unsigned", "1000")
