"""The PostgreSQL gateway's start-up buffer, stop, upstream TLS contexts, strict
start-up names, and the one way it is started (``start_gateway``).

Most tests run a real gateway (``pg_gateway_support.gateway_env``) in front of
a fresh database on the local PostgreSQL; the :class:`Link` tests run a bare
listener on both asyncio's loop and uvloop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import asyncpg
import psycopg
import pytest

from jitgate.gateways.inprocess import InProcessApprovals
from jitgate.gateways.postgres import gateway as gateway_module
from jitgate.gateways.postgres import loop_factory, start_gateway
from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres.config import GatewayConfig
from jitgate.gateways.postgres.gateway import PostgresGateway, RunningGateway
from jitgate.gateways.postgres.link import Link
from jitgate.store import Database, Identity, migrate
from pg_gateway_support import (
    TARGET,
    GatewayEnv,
    Message,
    RawClient,
    codes,
    data_rows,
    errors,
    gateway_env,
    held_request_id,
    pem,
    query,
    self_signed,
    upstream_dsn,
)

ROWS = 3
ADMIN_SHUTDOWN = "57P01"


@pytest.fixture
async def env(
    fresh_pg_url: str, sqlite_template: Path, tmp_path: Path
) -> AsyncIterator[GatewayEnv]:
    await _upstream(fresh_pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    await _upstream(
        fresh_pg_url, f"INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, {ROWS}) i"
    )
    async with gateway_env(fresh_pg_url, sqlite_template, tmp_path) as built:
        yield built


async def _upstream(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def read_until_held(client: RawClient, timeout: float = 10.0) -> str:
    while True:
        request_id = held_request_id([await client.read(timeout)])
        if request_id is not None:
            return request_id


def fatal(answer: list[Message]) -> dict[str, str]:
    """The last ErrorResponse of ``answer``, which must be FATAL."""
    found = errors(answer)
    assert found, answer
    assert found[-1]["S"] == "FATAL", found
    return found[-1]


def startup_packet(*fields: bytes) -> bytes:
    body = b"".join(f + b"\x00" for f in fields) + b"\x00"
    return struct.pack("!ii", len(body) + 8, pg.PROTOCOL_V3) + body


# --- Link: the start-up buffer --------------------------------------------------------------


def on_both_loops(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``test`` on asyncio's own event loop and on uvloop (what the gateway uses)."""
    factories: list[Callable[[], asyncio.AbstractEventLoop] | None] = [asyncio.new_event_loop]
    factory = loop_factory()
    if factory is not None:
        factories.append(factory)
    for make in factories:
        with asyncio.Runner(loop_factory=make) as runner:
            runner.run(asyncio.wait_for(test(), 30))


async def link_and_peer(
    inbox_limit: int,
) -> tuple[Link, asyncio.StreamWriter, asyncio.AbstractServer]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Link] = loop.create_future()

    def make() -> Link:
        link = Link(2**31 - 1)
        link.inbox_limit = inbox_limit
        accepted.set_result(link)
        return link

    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    return await accepted, writer, server


def test_link_stops_reading_past_its_start_up_bound() -> None:
    async def test() -> None:
        limit = 16 * 1024
        link, writer, server = await link_and_peer(limit)
        data = os.urandom(16 << 20)

        async def send() -> None:
            writer.write(data)
            await writer.drain()

        sending = asyncio.create_task(send())
        await asyncio.sleep(0.5)
        # One read past the bound at most; the rest waits in the kernel and the sender.
        assert link.buffered <= limit + (256 << 10), link.buffered
        # The start-up reader takes some: reading resumes, and pauses again.
        got = bytearray(await link.read_exact(limit))
        await asyncio.sleep(0.2)
        assert link.buffered <= limit + (256 << 10), link.buffered
        # Relay mode: everything else flows.
        done = asyncio.get_running_loop().create_future()

        def on_data(chunk: bytes) -> None:
            got.extend(chunk)
            if len(got) == len(data) and not done.done():
                done.set_result(None)

        link.relay(on_data)
        await asyncio.wait_for(done, 10)
        await sending
        assert bytes(got) == data
        writer.close()
        server.close()

    on_both_loops(test)


def test_link_reads_a_message_larger_than_its_bound() -> None:
    # The upstream's start-up messages may be larger than the bound: a read that
    # needs more than is buffered always reads.
    async def test() -> None:
        link, writer, server = await link_and_peer(1024)
        body = os.urandom(1 << 20)
        writer.write(pg.message(b"S", body) + pg.message(b"Z", b"I"))
        assert await link.read_message() == (ord("S"), body)
        assert await link.read_message() == (ord("Z"), b"I")
        writer.write(b"x" * 300_000)
        assert await link.read_exact(300_000) == b"x" * 300_000
        assert link.buffered == 0
        writer.close()
        server.close()

    on_both_loops(test)


# --- stop --------------------------------------------------------------------------------


async def test_stop_ends_every_connection_with_57P01_and_waits_for_its_tasks(
    env: GatewayEnv,
) -> None:
    idle = await env.login()
    held = await env.login()
    await held.send(query("DELETE FROM t"))
    request_id = await read_until_held(held)
    # Half logged in: asked for its password, has not sent it.
    starting = await RawClient.connect(env.host, env.gw_port)
    await starting.send(pg.startup_message({"user": "ann", "database": TARGET}))
    assert (await starting.read())[0] == "R"

    await env.gateway.stop()

    # What the gateway started is over: the held statement's request is withdrawn.
    left = [
        str(getattr(task.get_coro(), "__qualname__", ""))
        for task in asyncio.all_tasks()
        if not task.done()
    ]
    assert not [name for name in left if name.startswith(("Session.", "PostgresGateway."))]
    view = await env.service.get(env.principals["bob"], request_id)
    assert view["status"] == "cancelled"
    for client in (idle, held, starting):
        error = fatal(await client.until_closed(5))
        assert error["C"] == ADMIN_SHUTDOWN
        assert error["M"] == "jitgate: terminating connection due to administrator command"
    assert await _upstream(env.upstream_url, "SELECT count(*) FROM t") == ROWS
    assert not env.gateway.sessions
    await env.gateway.stop()  # again: nothing to do


async def test_stop_waits_for_a_cancel_being_passed_on(env: GatewayEnv) -> None:
    client = await env.login()
    key = next(body for kind, body in client.startup if kind == "K")
    pid, secret = struct.unpack("!ii", key)
    original = env.gateway._cancel_upstream
    delivered = asyncio.Event()

    async def slow_cancel(session: Any) -> None:
        await asyncio.sleep(0.3)  # a distant upstream
        await original(session)
        delivered.set()

    setattr(env.gateway, "_cancel_upstream", slow_cancel)  # noqa: B010
    await client.send(query("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.2)
    cancel = await RawClient.connect(env.host, env.gw_port)
    await cancel.send(pg.cancel_request(pid, secret))
    await cancel.until_closed(5)
    await env.gateway.stop()
    assert delivered.is_set(), "stop() did not wait for the cancel it was passing on"
    assert fatal(await client.until_closed(5))["C"] == ADMIN_SHUTDOWN


# --- start-up names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((b"user", b"\xff\xfe"), "the value of startup parameter 'user' is not UTF-8"),
        ((b"user", b"ann", b"database", b"app\xed\xa0\x80"), "'database' is not UTF-8"),
        ((b"user", b"ann", b"search_\xc0\xafpath", b"x"), "a startup parameter name is not"),
    ],
)
async def test_a_start_up_name_not_in_utf8_is_refused_and_the_gateway_keeps_serving(
    env: GatewayEnv, fields: tuple[bytes, ...], message: str
) -> None:
    client = await RawClient.connect(env.host, env.gw_port)
    await client.send(startup_packet(*fields))
    answer = await client.until_closed(5)
    error = fatal(answer)
    assert error["C"] == "08P01"
    assert error["M"].startswith("jitgate: ")
    assert message in error["M"]
    assert len(answer) == 1
    other = await env.login()
    assert data_rows(await other.simple("SELECT 1")) == [["1"]]
    await other.close()


async def test_a_password_not_in_utf8_is_refused_without_asking_the_service(
    env: GatewayEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    original = env.port.authenticate

    async def authenticate(user: str, secret: str, client: str) -> Any:
        asked.append(secret)
        return await original(user, secret, client)

    monkeypatch.setattr(env.port, "authenticate", authenticate)
    client = await RawClient.connect(env.host, env.gw_port)
    await client.send(pg.startup_message({"user": "ann", "database": TARGET}))
    assert (await client.read())[0] == "R"
    token = env.tokens["ann"].encode()
    await client.send(pg.message(b"p", token[:-1] + b"\xff\x00"))
    error = fatal(await client.until_closed(5))
    assert error["C"] == "28P01"
    assert asked == []
    assert not codes((await env.login()).startup)


# --- upstream TLS ----------------------------------------------------------------------------


def write_ca(path: Path, name: str) -> Path:
    cert, _key = self_signed(name, ca=True, days=30)
    path.write_bytes(pem(cert))
    return path


def ca_names(context: ssl.SSLContext) -> set[str]:
    return {
        value
        for cert in context.get_ca_certs()
        for rdn in cert["subject"]
        for key, value in rdn
        if key == "commonName"
    }


def test_upstream_tls_contexts_are_built_once_per_sslmode_and_root_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_a = write_ca(tmp_path / "a.pem", "CA A")
    ca_b = write_ca(tmp_path / "b.pem", "CA B")
    dsns = {
        "req1": "postgresql://u@db1/x?sslmode=require",
        "req2": "postgresql://u@db2/y?sslmode=require",
        "req_a": f"postgresql://u@db1/x?sslmode=require&sslrootcert={ca_a}",
        "prefer": "postgresql://u@db1/x?sslmode=prefer",
        "full_a": f"postgresql://u@db1/x?sslmode=verify-full&sslrootcert={ca_a}",
        "full_a2": f"postgresql://u@db2/y?sslmode=verify-full&sslrootcert={ca_a}",
        "ca_a": f"postgresql://u@db1/x?sslmode=verify-ca&sslrootcert={ca_a}",
        "full_b": f"postgresql://u@db1/x?sslmode=verify-full&sslrootcert={ca_b}",
        "plain": "postgresql://u@db1/x?sslmode=disable",
    }
    config = GatewayConfig.model_validate(
        {
            "listen": "127.0.0.1:0",
            "targets": [
                {"name": name, "environment": "production", "upstream": dsn}
                for name, dsn in dsns.items()
            ],
        }
    )
    built: list[str] = []
    real = gateway_module._client_tls

    def counting(upstream: Any) -> ssl.SSLContext | None:
        built.append(upstream.sslmode)
        return real(upstream)

    monkeypatch.setattr(gateway_module, "_client_tls", counting)
    gateway = PostgresGateway(config, cast(Any, None), cast(Any, None))
    upstreams = {t.name: t.upstream for t in config.targets}
    contexts = {name: gateway.upstream_tls(upstream) for name, upstream in upstreams.items()}
    again = {name: gateway.upstream_tls(upstream) for name, upstream in upstreams.items()}
    assert all(again[name] is contexts[name] for name in contexts)
    # One context per (sslmode, root certificate file): six here.
    assert len(built) == 6
    assert contexts["plain"] is None
    assert contexts["req1"] is contexts["req2"]
    assert contexts["full_a"] is contexts["full_a2"]
    full_a, ca_only, full_b = contexts["full_a"], contexts["ca_a"], contexts["full_b"]
    prefer, require = contexts["prefer"], contexts["req1"]
    assert full_a is not None
    assert ca_only is not None
    assert full_b is not None
    assert prefer is not None
    assert require is not None
    assert full_a.check_hostname
    assert full_a.verify_mode == ssl.CERT_REQUIRED
    assert not ca_only.check_hostname
    assert ca_only.verify_mode == ssl.CERT_REQUIRED
    assert not require.check_hostname
    assert require.verify_mode == ssl.CERT_NONE
    assert prefer.verify_mode == ssl.CERT_NONE
    # As libpq: "require" with a root certificate verifies the chain (verify-ca).
    require_ca = contexts["req_a"]
    assert require_ca is not None
    assert not require_ca.check_hostname
    assert require_ca.verify_mode == ssl.CERT_REQUIRED
    assert ca_names(require_ca) == {"CA A"}
    assert ca_names(full_a) == ca_names(ca_only) == {"CA A"}
    assert ca_names(full_b) == {"CA B"}
    # A root certificate file replaced on disk is loaded again.
    os.replace(write_ca(tmp_path / "new.pem", "CA A2"), ca_a)
    renewed = gateway.upstream_tls(upstreams["full_a"])
    assert renewed is not full_a
    assert renewed is not None
    assert ca_names(renewed) == {"CA A2"}
    assert gateway.upstream_tls(upstreams["full_a2"]) is renewed
    assert gateway.upstream_tls(upstreams["full_b"]) is full_b


async def test_logins_share_the_upstream_tls_context(
    fresh_pg_url: str, sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    real = gateway_module._client_tls

    def counting(upstream: Any) -> ssl.SSLContext | None:
        built.append(upstream.sslmode)
        return real(upstream)

    monkeypatch.setattr(gateway_module, "_client_tls", counting)
    # sslmode=prefer: the local server says no to TLS, the logins go on in the clear.
    dsn = upstream_dsn(fresh_pg_url).replace("sslmode=disable", "sslmode=prefer")
    config = GatewayConfig.single("127.0.0.1:0", dsn, "production", TARGET)
    async with gateway_env(fresh_pg_url, sqlite_template, tmp_path, config=config) as env:
        for _ in range(3):
            client = await env.login()
            assert data_rows(await client.simple("SELECT 1")) == [["1"]]
            await client.close()
    assert built == ["prefer"]


# --- start_gateway -------------------------------------------------------------------------


class ClosingPort(InProcessApprovals):
    closed = 0

    async def close(self) -> None:
        type(self).closed += 1
        await super().close()


async def test_start_gateway_hands_back_a_gateway_that_stops_everything(
    env: GatewayEnv,
) -> None:
    ClosingPort.closed = 0
    config = GatewayConfig.single(
        "127.0.0.1:0", upstream_dsn(env.upstream_url), "production", TARGET
    )
    running = await start_gateway(config, ClosingPort(env.service, gateway="pg-two"), "http://x/")
    assert isinstance(running, RunningGateway)
    host, port = running.address
    assert running.gateway.approve_hint("r1") == "jitgate approve r1 --url http://x"
    client = await RawClient.login(host, port, "ann", env.tokens["ann"])
    assert data_rows(await client.simple("SELECT 2")) == [["2"]]
    await running.stop()
    assert fatal(await client.until_closed(5))["C"] == ADMIN_SHUTDOWN
    assert not running.recorder.accepting
    assert running.recorder.pending == 0  # the SELECT's record was written
    assert ClosingPort.closed == 1
    await running.stop()
    assert ClosingPort.closed == 1


async def test_start_gateway_that_cannot_listen_closes_what_it_opened(env: GatewayEnv) -> None:
    def recorders() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() if t.get_name() == "jitgate-statement-recorder"}

    ClosingPort.closed = 0
    before = recorders()  # the env's gateway's
    taken = f"{env.host}:{env.gw_port}"
    config = GatewayConfig.single(taken, upstream_dsn(env.upstream_url), "production", TARGET)
    with pytest.raises(OSError):  # noqa: PT011
        await start_gateway(config, ClosingPort(env.service, gateway="pg-two"))
    assert ClosingPort.closed == 1
    assert recorders() == before


def test_proxy_command_does_not_import_the_api_server() -> None:
    # Run up to where the approval service is asked (nothing listens there).
    code = """
import sys
from typer.testing import CliRunner
from jitgate.cli.app import app
result = CliRunner().invoke(app, [
    "proxy", "postgres", "--upstream", "postgresql://u@127.0.0.1:9/db", "--env", "production",
    "--url", "http://127.0.0.1:9", "--token", "jg_test",
])
heavy = ("fastapi", "starlette", "uvicorn", "jitgate.server.run", "jitgate.server.app")
print(result.exit_code, [m for m in heavy if m in sys.modules])
print(result.output)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    first, _, rest = out.partition("\n")
    assert first == "1 []", out
    assert "cannot reach the jitgate server" in rest


# --- the commands ---------------------------------------------------------------------------


def test_proxy_postgres_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jitgate", "proxy", "postgres", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--config", "--listen", "--upstream", "--env", "--target", "--url", "--token"):
        assert flag in done.stdout, done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def add_user(url: str, name: str, groups: tuple[str, ...]) -> str:
    database = Database(url)
    try:
        await migrate(database)
        async with database.transaction() as session:
            identity = Identity(session)
            await identity.add_user(name, groups)
            token, _ = await identity.create_token(name, "lifecycle")
        return token
    finally:
        await database.close()


def test_serve_runs_the_gateway_of_a_file_and_stops_it(fresh_pg_url: str, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'jitgate.db'}"
    token = asyncio.run(add_user(store, "ann", ("dev",)))
    gw_port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"name: pg-serve\n"
        f"listen: 127.0.0.1:{gw_port}\n"
        f"targets:\n"
        f"  - name: {TARGET}\n"
        f"    environment: staging\n"
        f"    upstream: {upstream_dsn(fresh_pg_url)}\n"
    )
    env = {**os.environ, "JITGATE_DATA_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jitgate", "serve", "--db", store,
            "--host", "127.0.0.1", "--port", str(free_port()), "--gateway", str(config),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        conninfo = {
            "host": "127.0.0.1",
            "port": gw_port,
            "user": "ann",
            "password": token,
            "dbname": TARGET,
            "sslmode": "disable",
            "connect_timeout": 5,
        }
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg.connect(**conninfo, autocommit=True)
                break
            except psycopg.OperationalError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
        with conn:
            assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, process.communicate()[1]
            with pytest.raises(psycopg.OperationalError) as ended:
                conn.execute("SELECT 1")
            assert "terminating connection due to administrator command" in str(ended.value)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
