"""The PostgreSQL gateway's session logic under attack, with raw protocol clients.

Every test runs a real :class:`PostgresGateway` (in process, port 0) in front of
a fresh database on the local PostgreSQL, with a real in-process approval
service (``tests/pg_gateway_support.py``). A table ``t`` holds five rows; the
policy holds DELETE and DROP for ``approvers`` (``bob``), denies TRUNCATE, and
holds whatever the analyzer finds at least medium risk in production. Clients
pipeline messages without waiting for responses, as an attacker would, and the
tests check the upstream directly: a statement that must not run did not.

Tests marked ``xfail(strict=True)`` pin gateway bugs found here (see each
reason); they pass once the bug is fixed, and then the mark must go.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres.config import Tls
from pg_gateway_support import (
    FLUSH,
    SYNC,
    Closed,
    GatewayEnv,
    Message,
    RawClient,
    bind,
    close,
    codes,
    create_table_t,
    data_rows,
    describe,
    errors,
    execute,
    function_call,
    gateway_env,
    held_request_id,
    notices,
    parse,
    pem,
    pem_key,
    query,
    self_signed,
)

ROWS = 5


async def _upstream(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def count_rows(env: GatewayEnv) -> int:
    value = await _upstream(env.upstream_url, "SELECT count(*) FROM t")
    return int(value)


@pytest.fixture
async def env(
    fresh_pg_url: str, sqlite_template: Path, tmp_path: Path
) -> AsyncIterator[GatewayEnv]:
    await create_table_t(fresh_pg_url, ROWS)
    async with gateway_env(fresh_pg_url, sqlite_template, tmp_path) as built:
        yield built


async def read_until_held(client: RawClient, timeout: float = 10.0) -> tuple[str, list[Message]]:
    """Read until the gateway says a statement is held; its request id and what came."""
    seen: list[Message] = []
    while True:
        message = await client.read(timeout)
        seen.append(message)
        request_id = held_request_id([message])
        if request_id is not None:
            return request_id, seen
        assert message[0] != "Z" or True  # ReadyForQuery of earlier batches may come first


async def held_or_answered(
    env: GatewayEnv, client: RawClient, *parts: bytes, readies: int = 1
) -> list[Message]:
    """Send ``parts``; read up to the ``readies``-th ReadyForQuery, denying whatever is
    held on the way (the denial then answers for it)."""
    await client.send(*parts)
    seen: list[Message] = []
    while readies:
        message = await client.read()
        seen.append(message)
        request_id = held_request_id([message])
        if request_id is not None:
            await env.deny(request_id)
        readies -= message[0] == "Z"
    return seen


async def request_text(env: GatewayEnv, request_id: str) -> str:
    view = await env.service.get(env.principals["bob"], request_id)
    action = view.get("action") or {}
    return str(action.get("text") if isinstance(action, dict) else view.get("text"))


async def still_usable(client: RawClient) -> None:
    answer = await client.simple("SELECT 41 + 1")
    assert data_rows(answer) == [["42"]], answer
    assert not codes(answer)


# --- the environment itself ------------------------------------------------------------


async def test_a_raw_client_logs_in_and_queries(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        kinds = [kind for kind, _ in client.startup]
        assert kinds[-1] == "Z"
        assert "K" in kinds
        answer = await client.simple("SELECT count(*) FROM t")
        assert data_rows(answer) == [[str(ROWS)]]
    finally:
        await client.close()


async def statement_records(env: GatewayEnv) -> list[dict[str, Any]]:
    """The payloads of the ``statement.executed`` events recorded so far."""
    from jitgate.store import list_events

    assert await env.recorder.flush(10)
    async with env.db.transaction(readonly=True) as session:
        events = await list_events(session, limit=1000)
    return [
        {**e.payload, "request_id": e.request_id} for e in events if e.type == "statement.executed"
    ]


# --- (a) a named statement re-Parsed: the upstream keeps the first definition ------------


@pytest.mark.parametrize("verdict", ["deny", "approve"])
async def test_failed_reparse_does_not_hide_the_dangerous_definition(
    env: GatewayEnv, verdict: str
) -> None:
    client = await env.login()
    try:
        # All at once, without waiting: the second Parse fails upstream (42P05,
        # s1 exists), so s1 is still the DELETE when it is bound and executed.
        await client.send(
            parse("s1", "DELETE FROM t"),
            SYNC,
            parse("s1", "SELECT 1"),
            SYNC,
            bind("", "s1"),
            execute(""),
            SYNC,
        )
        request_id, seen = await read_until_held(client)
        assert codes(seen) == ["42P05"]
        assert await request_text(env, request_id) == "DELETE FROM t"
        assert await count_rows(env) == ROWS
        if verdict == "deny":
            await env.deny(request_id)
            rest = await client.until_ready()
            assert codes(rest) == ["42501"]
            assert await count_rows(env) == ROWS
        else:
            await env.approve(request_id)
            rest = await client.until_ready()
            assert not codes(rest), errors(rest)
            assert [k for k, _ in rest].count("C") == 1
            assert await count_rows(env) == 0
            records = await statement_records(env)
            ran = [r for r in records if r.get("request_id") == request_id]
            assert [r["text"] for r in ran] == ["DELETE FROM t"]
        await still_usable(client)
    finally:
        await client.close()


async def test_failed_reparse_in_the_same_batch(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        # One batch: the failed Parse makes the upstream skip the Bind and the
        # Execute (which the gateway saw as SELECT 1): nothing runs.
        answer = await client.round(
            parse("s1", "DELETE FROM t"),
            parse("s1", "SELECT 1"),
            bind("", "s1"),
            execute(""),
            SYNC,
        )
        assert codes(answer) == ["42P05"]
        assert await count_rows(env) == ROWS
        # s1 is the DELETE, and the gateway knows it.
        await client.send(bind("", "s1"), execute(""), SYNC)
        request_id, _ = await read_until_held(client)
        assert await request_text(env, request_id) == "DELETE FROM t"
        await env.deny(request_id)
        assert codes(await client.until_ready()) == ["42501"]
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


async def test_close_then_failed_parse_leaves_no_statement(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        await client.send(
            parse("s1", "DELETE FROM t"),
            SYNC,
            close("S", "s1"),
            parse("s1", "SELEC broken"),
            SYNC,
            bind("", "s1"),
            execute(""),
            SYNC,
        )
        seen: list[Message] = []
        for _ in range(3):
            seen += await client.until_ready()
        # The Close took effect upstream, the Parse did not: s1 does not exist.
        assert codes(seen)[0] == "42601"
        assert codes(seen)[1:] in (["26000"], ["42501"])
        assert held_request_id(seen) is None
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


# --- (b) the same with portals --------------------------------------------------------


async def test_failed_rebind_of_a_portal_in_a_savepoint(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        # p1 is the DELETE (bound in the transaction, before the savepoint); the
        # second Bind fails (42P03, p1 exists); ROLLBACK TO SAVEPOINT keeps p1.
        await client.send(
            query("BEGIN"),
            parse("", "DELETE FROM t"),
            bind("p1", ""),
            SYNC,
            query("SAVEPOINT sp"),
            parse("", "SELECT 1"),
            bind("p1", ""),
            SYNC,
            query("ROLLBACK TO SAVEPOINT sp"),
            execute("p1"),
            SYNC,
        )
        request_id, seen = await read_until_held(client)
        assert codes(seen) == ["42P03"]
        assert await request_text(env, request_id) == "DELETE FROM t"
        await env.deny(request_id)
        rest = await client.until_ready()
        assert codes(rest) == ["42501"]
        assert rest[-1] == ("Z", b"T")  # still in the transaction, which is usable
        commit = await client.simple("COMMIT")
        assert not codes(commit)
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


async def test_failed_rebind_of_a_portal_in_a_transaction(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        answer: list[Message] = []
        await client.send(
            query("BEGIN"),
            parse("", "DELETE FROM t"),
            bind("p1", ""),
            SYNC,
            parse("", "SELECT 1"),
            bind("p1", ""),
            execute("p1"),
            SYNC,
            execute("p1"),
            SYNC,
        )
        for _ in range(3):
            answer += await client.until_ready()
        # The failed Bind aborts the transaction. p1 is the DELETE again for the
        # gateway, which holds the last Execute (the upstream would refuse it: 25P02).
        assert codes(answer) == ["42P03"]
        request_id, _ = await read_until_held(client)
        assert await request_text(env, request_id) == "DELETE FROM t"
        await env.deny(request_id)
        rest = await client.until_ready()
        assert codes(rest) == ["42501"]
        assert rest[-1] == ("Z", b"E")
        assert not codes(await client.simple("ROLLBACK"))
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


async def test_failed_parse_of_the_unnamed_statement(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        assert not codes(await client.round(parse("", "DELETE FROM t"), SYNC))
        answer = await client.round(parse("", "SELEC x"), bind("", ""), execute(""), SYNC)
        assert codes(answer) == ["42601"]
        # The server drops the unnamed statement before parsing the new one: a
        # failed Parse leaves none (the gateway, restoring the DELETE, errs on
        # the safe side: it would hold an Execute the upstream cannot run).
        answer = await client.round(bind("", ""), execute(""), SYNC)
        assert codes(answer) == ["26000"]
        assert held_request_id(answer) is None
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


# --- (c) statements and portals made with SQL: PREPARE, DECLARE ------------------------


async def test_execute_of_a_sql_prepared_statement_is_refused(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        assert not codes(await client.simple("PREPARE sqlprep AS SELECT id FROM t"))
        answer = await client.round(bind("", "sqlprep"), execute(""), SYNC)
        assert codes(answer) == ["42501"]
        assert "does not know portal" in errors(answer)[0]["M"]
        assert not data_rows(answer)
        await still_usable(client)
    finally:
        await client.close()


async def test_execute_of_an_approved_sql_prepare_is_refused(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        await client.send(query("PREPARE del AS DELETE FROM t WHERE id = $1"))
        request_id, _ = await read_until_held(client)
        await env.approve(request_id)
        assert not codes(await client.until_ready())
        # Approving the PREPARE approved no execution of it.
        answer = await client.round(bind("", "del", [b"1"]), execute(""), SYNC)
        assert codes(answer) == ["42501"]
        assert await count_rows(env) == ROWS
        # Nor does SQL EXECUTE run it unseen: it is held itself.
        await client.send(query("EXECUTE del(2)"))
        request_id, _ = await read_until_held(client)
        await env.deny(request_id)
        assert codes(await client.until_ready()) == ["42501"]
        assert await count_rows(env) == ROWS
    finally:
        await client.close()


async def test_execute_of_a_declared_cursor_is_refused(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        assert not codes(await client.simple("BEGIN"))
        assert not codes(await client.simple("DECLARE cur CURSOR FOR SELECT id FROM t"))
        answer = await client.round(execute("cur", 2), SYNC)
        assert codes(answer) == ["42501"]
        assert not data_rows(answer)
        assert not codes(await client.simple("COMMIT"))
        await still_usable(client)
    finally:
        await client.close()


@pytest.mark.parametrize("deallocate", ["DEALLOCATE s1", "DEALLOCATE ALL", "DISCARD ALL"])
async def test_sql_prepare_reusing_a_protocol_statement_name(
    env: GatewayEnv, deallocate: str
) -> None:
    client = await env.login()
    try:
        assert not codes(await client.round(parse("s1", "SELECT $1::int"), SYNC))
        assert not codes(await client.simple(deallocate))
        await client.send(query("PREPARE s1(int) AS DELETE FROM t WHERE id = $1"))
        request_id, _ = await read_until_held(client)
        await env.approve(request_id)  # the PREPARE: it deletes nothing
        assert not codes(await client.until_ready())
        assert await count_rows(env) == ROWS
        # Upstream, s1 is now the DELETE; the gateway defines s1 again as the SELECT
        # it classified before the next Bind, so what runs is that SELECT.
        for value in (b"1", b"2"):
            await client.send(bind("", "s1", [value]), execute(""), SYNC)
            answer = await client.until_ready()
            assert held_request_id(answer) is None, answer
            assert not codes(answer), answer
            assert data_rows(answer) == [[value.decode()]], answer
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


async def test_prepare_inside_a_do_block_reusing_a_protocol_statement_name(
    env: GatewayEnv,
) -> None:
    client = await env.login()
    try:
        assert not codes(await client.round(parse("s1", "SELECT $1::int"), SYNC))
        await client.send(
            query(
                "DO $$ BEGIN EXECUTE 'DEALLOCATE s1'; "
                "EXECUTE 'PREPARE s1(int) AS DELETE FROM t WHERE id = $1'; END $$"
            )
        )
        request_id, _ = await read_until_held(client)
        await env.approve(request_id)  # one DO block, approved once
        assert not codes(await client.until_ready())
        assert await count_rows(env) == ROWS
        # After a DO block the gateway defines s1 again before its next Bind.
        for value in (b"1", b"2"):
            answer = await held_or_answered(env, client, bind("", "s1", [value]), execute(""), SYNC)
            assert held_request_id(answer) is None, answer
            assert data_rows(answer) == [[value.decode()]], answer
        assert await count_rows(env) == ROWS
        # Pipelined right behind the DO block, before its answer: the same.
        await client.send(
            query(
                "DO $$ BEGIN EXECUTE 'DEALLOCATE s1'; "
                "EXECUTE 'PREPARE s1(int) AS DELETE FROM t WHERE id = $1'; END $$"
            ),
            bind("", "s1", [b"3"]),
            execute(""),
            SYNC,
        )
        request_id, _ = await read_until_held(client)
        await env.approve(request_id)
        answer = await client.until_ready() + await client.until_ready()
        assert not codes(answer), answer
        assert data_rows(answer) == [["3"]], answer
        assert await count_rows(env) == ROWS
    finally:
        await client.close()


REDEFINE_S1 = (
    "DO $$ BEGIN EXECUTE 'DEALLOCATE s1'; "
    "EXECUTE 'PREPARE s1(int) AS DELETE FROM t WHERE id = $1'; END $$"
)


async def redefine_s1(env: GatewayEnv, client: RawClient) -> None:
    await client.send(query(REDEFINE_S1))
    request_id, _ = await read_until_held(client)
    await env.approve(request_id)
    assert not codes(await client.until_ready())


async def test_a_definition_again_skipped_by_a_failing_batch_is_done_later(
    env: GatewayEnv,
) -> None:
    client = await env.login()
    try:
        assert not codes(await client.round(parse("s1", "SELECT $1::int"), SYNC))
        await redefine_s1(env, client)
        # The batch fails before the gateway's Close and Parse of s1: the server
        # skips them with the rest, so s1 upstream is still the DELETE.
        answer = await client.round(
            parse("", "SELEC broken"), bind("", "s1", [b"1"]), execute(""), SYNC
        )
        assert codes(answer) == ["42601"], answer
        answer = await client.round(bind("", "s1", [b"2"]), execute(""), SYNC)
        assert data_rows(answer) == [["2"]], answer
        assert await count_rows(env) == ROWS
    finally:
        await client.close()


async def test_a_statement_read_under_other_settings_is_not_defined_again(
    env: GatewayEnv,
) -> None:
    client = await env.login()
    try:
        text = "SELECT $1::int, 'caf\u00e9'"
        assert not codes(await client.round(parse("s1", text), SYNC))
        assert not codes(await client.simple("SET client_encoding = 'LATIN1'"))
        await redefine_s1(env, client)
        # Defined again now, its bytes would read differently: refused instead.
        answer = await client.round(bind("", "s1", [b"1"]), execute(""), SYNC)
        assert codes(answer) == ["42501"], answer
        assert "client_encoding" in errors(answer)[0]["M"]
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


async def test_sql_cursor_reusing_a_protocol_portal_name(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        assert not codes(await client.simple("BEGIN"))
        answer = await client.round(parse("", "SELECT 'protocol'"), bind("p1", ""), SYNC)
        assert not codes(answer)
        assert not codes(await client.simple("CLOSE p1"))
        assert not codes(await client.simple("DECLARE p1 CURSOR FOR SELECT id FROM t"))
        # p1 is no longer the portal the gateway saw bound: refused, or at least
        # recorded as what it ran.
        answer = await client.round(execute("p1"), SYNC)
        assert not codes(await client.simple("COMMIT"))
        records = await statement_records(env)
        if codes(answer) != ["42501"]:
            ran = [r["text"] for r in records if r.get("tag") == f"SELECT {ROWS}"]
            assert ran, (answer, records)
            assert all("FROM t" in text for text in ran), (answer, records)
    finally:
        await client.close()


# --- (d) standard_conforming_strings ----------------------------------------------------

#: One statement either way. With standard_conforming_strings on (how the gateway
#: reads it): a SELECT of two string constants in a CTE. With it off (how the server
#: then reads it): ``'a\' , $$ '`` is one constant, and the CTE ``d`` deletes every row.
SMUGGLED_DELETE = (
    "WITH x AS (SELECT 'a\\' , $$ ' ), d AS (DELETE FROM t RETURNING 1) SELECT 1 -- $$ ) SELECT 1"
)


async def test_standard_conforming_strings_off_refuses_statements(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        answer = await client.simple("SET standard_conforming_strings = off")
        assert not codes(answer)
        assert ("S", pg.cstring("standard_conforming_strings") + pg.cstring("off")) in answer
        refused = await client.simple(SMUGGLED_DELETE)
        assert codes(refused) == ["42501"]
        assert "standard_conforming_strings" in errors(refused)[0]["M"]
        extended = await client.round(parse("", SMUGGLED_DELETE), bind("", ""), execute(""), SYNC)
        assert codes(extended) == ["42501"]
        assert await count_rows(env) == ROWS
        # Without a backslash a text reads the same either way: still classified.
        answer = await client.round(parse("", "SELECT 'x'"), bind("", ""), execute(""), SYNC)
        assert data_rows(answer) == [["x"]], answer
        await still_usable(client)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("off", "back_on"),
    [
        ("SET standard_conforming_strings = off", "SET standard_conforming_strings = on"),
        ("SET standard_conforming_strings = off", "RESET standard_conforming_strings"),
        ("SET client_encoding = 'WIN1253'", "SET client_encoding = 'UTF8'"),
    ],
)
# A backslash (standard_conforming_strings off) or a byte jitgate cannot decode
# (WIN1253) is refused; a plain ASCII text reads the same either way.
async def test_standard_conforming_strings_can_be_turned_back_on(
    env: GatewayEnv, off: str, back_on: str
) -> None:
    client = await env.login()
    try:
        assert not codes(await client.simple(off))
        unreadable = b"SELECT '\\\xe9'"  # a backslash and a non-ASCII byte
        assert codes(await client.round(query(unreadable))) == ["42501"]
        assert not codes(await client.simple("SELECT 1"))
        back = await client.simple(back_on)
        assert not codes(back), errors(back)
        await still_usable(client)
    finally:
        await client.close()


async def test_standard_conforming_strings_off_set_with_set_config(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        answer = await client.simple(
            "SELECT set_config('standard_conforming_strings', 'off', false)"
        )
        assert not codes(answer)
        assert codes(await client.simple(SMUGGLED_DELETE)) == ["42501"]
        assert await count_rows(env) == ROWS
    finally:
        await client.close()


@pytest.mark.parametrize("how", ["simple", "extended"])
async def test_pipelined_standard_conforming_strings_off(env: GatewayEnv, how: str) -> None:
    client = await env.login()
    try:
        if how == "simple":
            answer = await held_or_answered(
                env,
                client,
                query("SET standard_conforming_strings = off"),
                query(SMUGGLED_DELETE),
                readies=2,
            )
        else:
            # One batch: the server only reports the setting at its end.
            answer = await held_or_answered(
                env,
                client,
                parse("", "SET standard_conforming_strings = off"),
                bind("", ""),
                execute(""),
                parse("", SMUGGLED_DELETE),
                bind("", ""),
                execute(""),
                SYNC,
            )
        assert await count_rows(env) == ROWS, answer
    finally:
        await client.close()


async def test_sjis_trail_byte_backslash_does_not_hide_a_statement(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        assert not codes(await client.simple("SET client_encoding = 'SJIS'"))
        # The server reads E'<U+7E8A>' then DELETE; shift_jis reads E'\ufffd\'; ...' :
        # one string constant.
        smuggled = b"SELECT E'\xfa\x5c'; DELETE FROM t; -- '"
        answer = await held_or_answered(env, client, query(smuggled))
        assert codes(answer) == ["42501"], answer
        assert await count_rows(env) == ROWS
    finally:
        await client.close()


async def test_sjis_statements_are_classified(env: GatewayEnv) -> None:
    client = await env.login(params={"client_encoding": "SJIS"})
    try:
        # A kanji whose second byte is 0x5C, which Python's shift_jis does know.
        answer = await client.round(query(b"SELECT E'\x95\x5c' AS x"))
        assert not codes(answer)
        rows = data_rows([(k, b) for k, b in answer if k != "D"])
        assert rows == []
        await client.send(query(b"SELECT E'\x95\x5c'; DELETE FROM t; -- '"))
        request_id, _ = await read_until_held(client)
        await env.deny(request_id)
        assert codes(await client.until_ready()) == ["42501"]
        assert await count_rows(env) == ROWS
    finally:
        await client.close()


# --- (e) FunctionCall -----------------------------------------------------------------


async def test_function_call_is_refused_and_the_connection_stays_usable(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        oid = int(await _upstream(env.upstream_url, "SELECT 'pg_catalog.now'::regproc::oid"))
        answer = await client.round(function_call(oid))
        assert codes(answer) == ["42501"]
        assert "function call" in errors(answer)[0]["M"]
        assert [k for k, _ in answer] == ["E", "Z"]
        await still_usable(client)
        # Pipelined after a statement, and before one.
        answer = await client.round(query("SELECT 1"), function_call(oid), query("SELECT 2"))
        answer += await client.until_ready() + await client.until_ready()
        assert codes(answer) == ["42501"]
        assert data_rows(answer) == [["1"], ["2"]]
    finally:
        await client.close()


# --- (f) start-up parameters ----------------------------------------------------------


async def test_startup_parameters_that_set_server_settings_are_dropped(env: GatewayEnv) -> None:
    client = await env.login(
        params={
            "options": "-c session_replication_role=replica",
            "session_replication_role": "replica",
            "application_name": "fuzzy",
            "search_path": "pg_catalog, public",
        }
    )
    try:
        dropped = " ".join(notices(client.startup))
        assert "options" in dropped
        assert "session_replication_role" in dropped
        answer = await client.simple("SHOW session_replication_role")
        assert data_rows(answer) == [["origin"]]
        assert data_rows(await client.simple("SHOW application_name")) == [["fuzzy"]]
        assert data_rows(await client.simple("SHOW search_path")) == [["pg_catalog, public"]]
    finally:
        await client.close()


async def test_psycopg_options_are_not_passed_upstream(env: GatewayEnv) -> None:
    conn = await psycopg.AsyncConnection.connect(
        **env.conninfo(options="-c session_replication_role=replica -c statement_timeout=1")
    )
    try:
        cur = await conn.execute("SHOW session_replication_role")
        assert await cur.fetchone() == ("origin",)
        cur = await conn.execute("SHOW statement_timeout")
        assert await cur.fetchone() == ("0",)
    finally:
        await conn.close()


async def test_replication_connections_are_refused(env: GatewayEnv) -> None:
    client = await RawClient.connect(env.host, env.gw_port)
    try:
        await client.send(
            pg.startup_message({"user": "ann", "database": "app", "replication": "database"})
        )
        answer = await client.until_closed()
        assert codes(answer) == ["0A000"]
    finally:
        await client.close()


# --- (g) TLS ----------------------------------------------------------------------------


async def test_ssl_request_is_answered_no_without_tls(env: GatewayEnv) -> None:
    reader, writer = await asyncio.open_connection(env.host, env.gw_port)
    try:
        writer.write(pg.SSL_REQUEST_PACKET)
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"N"
        client = RawClient(reader, writer)
        await client.send(pg.startup_message({"user": "ann", "database": "app"}))
        assert await client.read() == ("R", struct.pack("!i", pg.AUTH_CLEARTEXT))
        await client.send(pg.message(b"p", pg.cstring(env.tokens["ann"])))
        assert not codes(await client.until_ready())
        await still_usable(client)
        await client.close()
    finally:
        writer.close()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = self_signed("jitgate-test", ip="127.0.0.1")
    cert_path, key_path = directory / "gateway.crt", directory / "gateway.key"
    cert_path.write_bytes(pem(cert))
    key_path.write_bytes(pem_key(key))
    return cert_path, key_path


@pytest.fixture
async def tls_env(
    fresh_pg_url: str, sqlite_template: Path, tmp_path: Path
) -> AsyncIterator[GatewayEnv]:
    cert, key = make_certificate(tmp_path)
    tls = Tls(mode="require", cert=cert, key=key)
    async with gateway_env(fresh_pg_url, sqlite_template, tmp_path, tls=tls) as built:
        yield built


async def test_tls_end_to_end_with_psycopg(tls_env: GatewayEnv) -> None:
    conn = await psycopg.AsyncConnection.connect(**tls_env.conninfo(sslmode="require"))
    try:
        assert conn.pgconn.ssl_in_use
        cur = await conn.execute("SELECT %s::int + 1", [41])
        assert await cur.fetchone() == (42,)
    finally:
        await conn.close()
    # tls mode require: a client that does not use TLS is refused.
    with pytest.raises(psycopg.OperationalError, match="requires TLS"):
        await psycopg.AsyncConnection.connect(**tls_env.conninfo(sslmode="disable"))


async def test_tls_raw_handshake_then_login(tls_env: GatewayEnv) -> None:
    reader, writer = await asyncio.open_connection(tls_env.host, tls_env.gw_port)
    writer.write(pg.SSL_REQUEST_PACKET)
    assert await asyncio.wait_for(reader.readexactly(1), 10) == b"S"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    await writer.start_tls(context)
    client = RawClient(reader, writer)
    try:
        await client.send(pg.startup_message({"user": "ann", "database": "app"}))
        assert await client.read() == ("R", struct.pack("!i", pg.AUTH_CLEARTEXT))
        await client.send(pg.message(b"p", pg.cstring(tls_env.tokens["ann"])))
        assert not codes(await client.until_ready())
        await still_usable(client)
    finally:
        await client.close()


@pytest.mark.parametrize(
    "injected",
    [
        pg.startup_message({"user": "ann", "database": "app"}),
        b"\x16\x03\x01",  # the start of a TLS record, early
        b"x",
    ],
)
async def test_data_sent_right_after_ssl_request_is_refused(
    tls_env: GatewayEnv, injected: bytes
) -> None:
    client = await RawClient.connect(tls_env.host, tls_env.gw_port)
    try:
        await client.send(pg.SSL_REQUEST_PACKET + injected)
        first = await asyncio.wait_for(client.reader.read(1), 10)
        # Refused in plain text before any TLS: no 'S', an 08P01 error, then the close.
        assert first == b"E"
        rest = await asyncio.wait_for(client.reader.read(), 10)
        fields = pg.decode_fields((first + rest)[5:])
        assert fields["C"] == "08P01"
        assert "after SSLRequest" in fields["M"]
    finally:
        await client.close()


async def test_plain_login_is_refused_when_tls_is_required(tls_env: GatewayEnv) -> None:
    client = await RawClient.connect(tls_env.host, tls_env.gw_port)
    try:
        await client.send(pg.startup_message({"user": "ann", "database": "app"}))
        answer = await client.until_closed()
        assert codes(answer) == ["28000"]
    finally:
        await client.close()


# --- the batch logic ------------------------------------------------------------------


async def test_denied_statement_after_one_that_ran_fails_the_whole_batch(
    env: GatewayEnv,
) -> None:
    client = await env.login()
    try:
        answer = await client.round(
            parse("", "INSERT INTO t VALUES (100, 'x')"),
            bind("", ""),
            execute(""),
            parse("", "TRUNCATE t"),
            bind("", ""),
            execute(""),
            parse("", "INSERT INTO t VALUES (101, 'y')"),
            bind("", ""),
            execute(""),
            SYNC,
        )
        assert codes(answer) == ["42501"]
        assert "never truncate" in errors(answer)[0]["M"]
        # The implicit transaction failed as a whole: the first INSERT is gone too.
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


async def test_messages_after_an_error_before_sync(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        await client.send(parse("", "SELEC broken"), FLUSH)
        first = await client.read()
        assert first[0] == "E"
        assert pg.decode_fields(first[1])["C"] == "42601"
        # Legal: the server ignores everything up to Sync, then answers it.
        answer = await client.round(parse("", "SELECT 1"), bind("", ""), execute(""), SYNC)
        assert [k for k, _ in answer] == ["Z"], answer
        await still_usable(client)
    finally:
        await client.close()


async def test_pipelined_batch_failing_before_a_held_execute(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        # Batch 1 defines d; batch 2 fails at its Parse, so the server skips the
        # Bind and Execute and answers the Sync: '1' Z E Z.
        await client.send(
            parse("d", "DELETE FROM t"),
            SYNC,
            parse("", "SELEC broken"),
            bind("", "d"),
            execute(""),
            SYNC,
        )
        answer = await client.until_ready(5) + await client.until_ready(5)
        assert codes(answer) == ["42601"]
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


async def test_pipelined_batch_failing_before_an_allowed_execute(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        await client.send(
            parse("a", "SELECT 1"),
            SYNC,
            parse("", "SELEC broken"),
            bind("", "a"),
            execute(""),
            SYNC,
        )
        answer = await client.until_ready(5) + await client.until_ready(5)
        assert codes(answer) == ["42601"], errors(answer)
        await still_usable(client)
    finally:
        await client.close()


@pytest.mark.parametrize("second", ["SELECT 1", "TRUNCATE t"])
async def test_pipeline_after_a_failing_statement(env: GatewayEnv, second: str) -> None:
    client = await env.login()
    try:
        # As libpq's pipeline mode sends it: Parse/Bind/Describe/Execute per query, one
        # Sync. The first does not parse (upstream: 42601; the policy holds what does
        # not parse, so the gateway waits for the upstream before deciding).
        answer = await client.round(
            parse("", "SELEC broken"),
            bind("", ""),
            describe("P", ""),
            execute(""),
            parse("", second),
            bind("", ""),
            describe("P", ""),
            execute(""),
            SYNC,
            timeout=5,
        )
        assert codes(answer) == ["42601"], errors(answer)
        await still_usable(client)
    finally:
        await client.close()


async def test_psycopg_pipeline_with_a_failing_statement(env: GatewayEnv) -> None:
    conn = await psycopg.AsyncConnection.connect(**env.conninfo(), autocommit=True)
    try:

        async def pipeline() -> None:
            async with conn.pipeline():
                await conn.execute("SELECT 1")
                await conn.execute("SELEC broken")

        with pytest.raises(psycopg.errors.SyntaxError):
            await pipeline()
        cur = await conn.execute("SELECT 2")
        assert await cur.fetchone() == (2,)
    finally:
        await conn.close()


async def test_psycopg_pipeline_with_statements_after_a_failing_one(env: GatewayEnv) -> None:
    conn = await psycopg.AsyncConnection.connect(**env.conninfo(), autocommit=True)
    try:

        async def pipeline() -> None:
            async with asyncio.timeout(5), conn.pipeline():
                await conn.execute("SELEC broken")
                await conn.execute("SELECT 1")

        with pytest.raises(psycopg.errors.SyntaxError):
            await pipeline()
        cur = await conn.execute("SELECT 2")
        assert await cur.fetchone() == (2,)
    finally:
        await conn.close()


async def test_cancel_withdraws_a_held_statement(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        key = next(body for kind, body in client.startup if kind == "K")
        pid, secret = struct.unpack("!ii", key)
        await client.send(query("DELETE FROM t WHERE id = 1"))
        await read_until_held(client)
        _reader, writer = await asyncio.open_connection(env.host, env.gw_port)
        writer.write(pg.cancel_request(pid, secret ^ 1))  # a wrong secret: nothing happens
        writer.close()
        with pytest.raises(TimeoutError):
            await client.read(0.5)
        _reader, writer = await asyncio.open_connection(env.host, env.gw_port)
        writer.write(pg.cancel_request(pid, secret))
        writer.close()
        answer = await client.until_ready()
        assert codes(answer) == ["57014"]
        assert await count_rows(env) == ROWS
        await still_usable(client)
    finally:
        await client.close()


async def test_a_closed_connection_with_a_held_statement_runs_nothing(env: GatewayEnv) -> None:
    client = await env.login()
    await client.send(query("DELETE FROM t WHERE id = 1"))
    request_id, _ = await read_until_held(client)
    client.writer.transport.abort()
    # The gateway withdraws the request it can no longer run.
    status = "pending"
    for _ in range(100):
        view = await env.service.get(env.principals["bob"], request_id)
        status = view["status"]
        if status != "pending":
            break
        await asyncio.sleep(0.05)
    assert status == "cancelled"
    with pytest.raises(Exception):  # noqa: B017, PT011  (no longer approvable)
        await env.approve(request_id)
    await asyncio.sleep(0.2)
    assert await count_rows(env) == ROWS
    with pytest.raises(Closed):
        await client.read(1)


# --- COPY -------------------------------------------------------------------------------


def copy_data(data: bytes) -> bytes:
    return pg.message(b"d", data)


COPY_DONE = pg.message(b"c")


async def test_copy_in_with_the_simple_protocol(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        await client.send(query("COPY t FROM STDIN"))
        kind, _ = await client.read()
        assert kind == "G"
        answer = await client.round(copy_data(b"10\tten\n"), copy_data(b"11\televen\n"), COPY_DONE)
        assert not codes(answer)
        assert ("C", b"COPY 2\x00") in answer
        assert await count_rows(env) == ROWS + 2
        await still_usable(client)
    finally:
        await client.close()


async def test_copy_in_with_the_extended_protocol_as_libpq_does_it(env: GatewayEnv) -> None:
    client = await env.login()
    try:
        await client.send(parse("", "COPY t FROM STDIN"), bind("", ""), execute(""), SYNC)
        seen = [await client.read(), await client.read(), await client.read()]
        assert [k for k, _ in seen] == ["1", "2", "G"]
        answer = await client.round(copy_data(b"10\tten\n"), COPY_DONE, SYNC, timeout=5)
        assert ("C", b"COPY 1\x00") in answer
        assert await count_rows(env) == ROWS + 1
        await still_usable(client)
        answer = await client.round(parse("", "SELECT 7"), bind("", ""), execute(""), SYNC)
        assert data_rows(answer) == [["7"]]
    finally:
        await client.close()


@pytest.mark.parametrize("ending", ["bad data", "CopyFail"])
async def test_a_failing_extended_copy_leaves_the_session_usable(
    env: GatewayEnv, ending: str
) -> None:
    client = await env.login()
    try:
        await client.send(parse("", "COPY t FROM STDIN"), bind("", ""), execute(""), SYNC)
        seen = [await client.read(), await client.read(), await client.read()]
        assert [k for k, _ in seen] == ["1", "2", "G"]
        if ending == "bad data":
            parts = [copy_data(b"not a number\tx\n"), COPY_DONE, SYNC]
        else:
            parts = [copy_data(b"10\tten\n"), pg.message(b"f", b"changed my mind\x00"), SYNC]
        answer = await client.round(*parts, timeout=5)
        assert len(codes(answer)) == 1, answer
        assert await count_rows(env) == ROWS
        await still_usable(client)
        answer = await client.round(parse("", "SELECT 7"), bind("", ""), execute(""), SYNC)
        assert data_rows(answer) == [["7"]]
    finally:
        await client.close()


#: COPY FROM STDIN through libpq's PQsendQueryParams, as a libpq program does it (in a
#: subprocess: the blocking PQgetResult holds the GIL, and the gateway runs here).
LIBPQ_EXTENDED_COPY = """
import json, sys
import psycopg
from psycopg import pq
with psycopg.connect(**json.loads(sys.argv[1]), autocommit=True) as conn:
    pgconn = conn.pgconn
    pgconn.send_query_params(b"COPY t FROM STDIN", None)
    result = pgconn.get_result()
    assert result is not None and result.status == pq.ExecStatus.COPY_IN, result
    assert pgconn.put_copy_data(b"20\\ttwenty\\n") == 1
    assert pgconn.put_copy_end() == 1
    tags = []
    while (result := pgconn.get_result()) is not None:
        tags.append((result.command_status or b"").decode())
    print(json.dumps({"tags": tags, "count": conn.execute("SELECT count(*) FROM t").fetchone()[0]}))
"""


async def test_libpq_extended_copy_through_the_gateway(env: GatewayEnv) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LIBPQ_EXTENDED_COPY,
        json.dumps(env.conninfo()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 15)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()
    result = json.loads(out)
    assert result == {"tags": ["COPY 1"], "count": ROWS + 1}
