"""``jitgate proxy postgres --workers N``: several gateway processes on one port.

Real processes throughout: a ``jitgate serve`` (SQLite store, the e2e policy:
DELETE in production waits for ``approvers``), a two-worker gateway in front
of a database on the local PostgreSQL, and real clients. Which worker owns a
session shows in the key the client got: worker ``i`` hands out pids that are
``i`` modulo 2 (``conn.info.backend_pid`` is the gateway's key). The kernel
picks the worker of each new connection (SO_REUSEPORT), so tests that need a
session on a given worker open connections until they have one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors
from typer.testing import CliRunner

from conftest import create_pg_database, drop_pg_database
from jitgate.cli import app
from jitgate.client import Client
from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres import start_gateway
from jitgate.gateways.postgres.config import GatewayConfig, GatewayConfigError
from jitgate.gateways.postgres.workers import WorkerSlot, random_pid
from pg_gateway_support import RawClient, codes, query, upstream_dsn
from pggateway import (
    WAIT,
    Background,
    Lines,
    Notices,
    conninfo,
    finish,
    free_port,
    spawn,
)
from test_pg_gateway_e2e import JITGATE, proxy_ready, run_cli, server_setup, start_server, stop

WORKERS = 2
#: Enough sessions that every worker has some (2**-41 that one has none).
MANY = 42
#: Cancels through the port: the kernel hands some to the worker that does not own the key.
CANCELS_PER_WORKER = 4


@dataclass
class Server:
    """The ``jitgate serve`` process and what the gateways need of it."""

    env: dict[str, str]
    url: str
    tokens: dict[str, str]
    upstream: str
    upstream_url: str


@dataclass
class Gateway:
    """A ``jitgate proxy postgres --workers N`` process and its log (stderr)."""

    process: subprocess.Popen[str]
    port: int
    err: Lines

    def lines(self) -> list[str]:
        return list(self.err.notices.items)

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> the pid of its latest process that listened."""
        pids: dict[int, int] = {}
        for line in self.lines():
            found = re.search(r"worker (\d+) (?:restarted, )?listening \(pid (\d+)\)", line)
            if found:
                pids[int(found.group(1))] = int(found.group(2))
        return pids

    def started_pids(self) -> list[int]:
        """Every worker process the supervisor started."""
        pattern = re.compile(r"worker \d+ started \(pid (\d+)\)")
        return [int(m.group(1)) for m in map(pattern.search, self.lines()) if m]

    def socket_dir(self) -> Path:
        found = self.err.notices.wait_for(re.compile(r"their cancel sockets in (\S+)"))
        return Path(found.group(1))


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    """A database of this module's on the local PostgreSQL (it takes 40+ connections)."""
    server, name = create_pg_database()
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        drop_pg_database(server, name)


@pytest.fixture(scope="module")
def server(
    upstream_url: str, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("workers")
    store = tmp / "jitgate.db"
    shutil.copyfile(sqlite_template, store)
    env, tokens, policy = server_setup(tmp, f"sqlite:///{store}")
    process, url = start_server(env, policy)
    try:
        yield Server(env, url, tokens, upstream_dsn(upstream_url), upstream_url)
    finally:
        stop(process)


def spawn_gateway(server: Server, *options: str, port: int | None = None) -> Gateway:
    """``jitgate proxy postgres --workers 2`` (more ``options`` after); not waited for."""
    port = free_port() if port is None else port
    process, _, err = spawn(
        [
            *JITGATE, "proxy", "postgres", "--listen", f"127.0.0.1:{port}",
            "--env", "production", "--target", "app", "--url", server.url,
            "--workers", str(WORKERS), *options,
        ],
        {**server.env, "JITGATE_UPSTREAM": server.upstream, "JITGATE_TOKEN": server.tokens["gw"]},
    )  # fmt: skip
    return Gateway(process, port, err)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: only its parent has not collected it yet.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    return False


def wait_gone(pids: list[int], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while [pid for pid in pids if alive(pid)]:
        assert time.monotonic() < deadline, [pid for pid in pids if alive(pid)]
        time.sleep(0.05)


@contextlib.contextmanager
def running_gateway(server: Server, *options: str) -> Iterator[Gateway]:
    """A started multi-worker gateway; whatever is left of it is killed at the end."""
    gateway = spawn_gateway(server, *options)
    try:
        proxy_ready(gateway.process, gateway.port, gateway.err)
        yield gateway
    finally:
        if gateway.process.poll() is None:
            gateway.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                gateway.process.wait(60)
        if gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait(10)
        for pid in gateway.started_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def gateway(server: Server) -> Iterator[Gateway]:
    """A two-worker gateway shared by the tests that do not stop it (verbose:
    workers log the cancels they pass on)."""
    with running_gateway(server, "--verbose") as built:
        yield built


@pytest.fixture
def table(server: Server) -> str:
    """A fresh table with ids 1, 2, 3, created directly upstream."""
    name = f"w_{os.urandom(4).hex()}"
    with psycopg.connect(server.upstream_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {name} SELECT i, 'v' || i FROM generate_series(1, 3) i")
    return name


def upstream_ids(server: Server, table: str) -> list[int]:
    with psycopg.connect(server.upstream_url, autocommit=True) as conn:
        return [int(r[0]) for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


def connect(server: Server, gateway: Gateway, *, attempts: int = 1) -> psycopg.Connection[Any]:
    """A connection as ann; ``attempts``: how often to try (a worker may be restarting)."""
    for attempt in range(attempts):
        try:
            return psycopg.connect(
                conninfo(gateway.port, "ann", server.tokens["ann"]), autocommit=True
            )
        except psycopg.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("no attempt")


def on_each_worker(server: Server, gateway: Gateway, per_worker: int) -> list[psycopg.Connection]:
    """``per_worker`` connections owned by each worker (their keys say which)."""
    wanted: dict[int, list[psycopg.Connection[Any]]] = {i: [] for i in range(WORKERS)}
    extra: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(40 * per_worker):
            if all(len(conns) == per_worker for conns in wanted.values()):
                break
            conn = connect(server, gateway)
            owner = wanted[conn.info.backend_pid % WORKERS]
            (owner if len(owner) < per_worker else extra).append(conn)
    finally:
        for conn in extra:
            conn.close()
    assert all(len(conns) == per_worker for conns in wanted.values()), "a worker got no sessions"
    return [conn for conns in wanted.values() for conn in conns]


def wait_running(server: Server, text: str) -> None:
    """Wait until ``text`` runs upstream (a cancel before that would find nothing to cancel)."""
    deadline = time.monotonic() + WAIT
    with psycopg.connect(server.upstream_url, autocommit=True) as direct:
        while True:
            row = direct.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = %s AND state = 'active'",
                (text,),
            ).fetchone()
            if row == (1,):
                return
            assert time.monotonic() < deadline, f"{text!r} never ran upstream"
            time.sleep(0.02)


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# --- sessions spread over the workers -----------------------------------------------------


def test_many_connections_are_served_by_every_worker(server: Server, gateway: Gateway) -> None:
    assert any(line.endswith(f"; {WORKERS} workers") for line in gateway.lines()), gateway.lines()
    assert sorted(gateway.worker_pids()) == list(range(WORKERS))
    conns: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(MANY):
            conns.append(connect(server, gateway))
        for i, conn in enumerate(conns):
            assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
        keys = [conn.info.backend_pid for conn in conns]
        assert len(set(keys)) == MANY, "every session has a key of its own"
        assert all(1 <= key < 2**31 for key in keys)
        assert {key % WORKERS for key in keys} == set(range(WORKERS))
    finally:
        for conn in conns:
            conn.close()


# --- cancels ------------------------------------------------------------------------------


def test_a_cancel_reaches_its_statement_whichever_worker_the_kernel_picks(
    server: Server, gateway: Gateway
) -> None:
    conns = on_each_worker(server, gateway, CANCELS_PER_WORKER)
    try:
        for i, conn in enumerate(conns):
            text = f"SELECT pg_sleep(30), {i}"
            running = Background(lambda conn=conn, text=text: conn.execute(text))
            wait_running(server, text)
            started = time.monotonic()
            conn.cancel()  # a new connection, to whichever worker the kernel picks
            with pytest.raises(pgerrors.QueryCanceled):
                running.result(timeout=10)
            assert time.monotonic() - started < 5
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()


async def login_on(server: Server, gateway: Gateway, worker: int) -> tuple[RawClient, int, int]:
    """A raw session owned by ``worker``: the client, the key's pid and secret."""
    for _ in range(40):
        client = await RawClient.login(
            "127.0.0.1", gateway.port, "ann", server.tokens["ann"], database="app"
        )
        key = next(body for kind, body in client.startup if kind == "K")
        pid, secret = struct.unpack("!ii", key)
        if pid % WORKERS == worker:
            return client, pid, secret
        client.writer.close()
    raise AssertionError(f"worker {worker} got none of 40 sessions")


async def cancel_through_socket(path: Path, pid: int, secret: int) -> None:
    """A CancelRequest as a worker passes it on: to the owner's Unix socket."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(pg.cancel_request(pid, secret))
    await writer.drain()
    # The worker closes once it has acted on the cancel (or refused it).
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def sleep_upstream(server: Server, client: RawClient, text: str) -> None:
    await client.send(query(text))
    await asyncio.to_thread(wait_running, server, text)


async def test_a_cancel_passed_between_workers_is_checked_as_a_direct_one(
    server: Server, gateway: Gateway
) -> None:
    directory = gateway.socket_dir()
    assert directory.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["w0.sock", "w1.sock"]
    client, pid, secret = await login_on(server, gateway, 1)
    try:
        text = "SELECT pg_sleep(30), 'passed on'"
        await sleep_upstream(server, client, text)
        # A wrong secret at the owner, the right one at a worker that does not own
        # the key (which never passes a passed-on cancel on again): nothing happens.
        wrong = secret ^ 0x5A5A
        await cancel_through_socket(directory / "w1.sock", pid, wrong)
        await cancel_through_socket(directory / "w0.sock", pid, secret)
        with pytest.raises(TimeoutError):
            await client.read(timeout=1.5)  # a cancel that worked takes milliseconds
        await asyncio.to_thread(wait_running, server, text)
        # The right secret at the owner: cancelled.
        await cancel_through_socket(directory / "w1.sock", pid, secret)
        assert codes(await client.until_ready(10)) == ["57014"]

        # Through the port, until the kernel has handed one to worker 0, which
        # passes it on to worker 1 (the odds it never does: 2**-30).
        passed_on = re.compile(r"\[worker 0\].*cancel passed on to .*w1\.sock")

        def forwarded() -> int:
            return sum(1 for line in gateway.lines() if passed_on.search(line))

        before = forwarded()
        for attempt in range(30):
            text = f"SELECT pg_sleep(30), {attempt}"
            await sleep_upstream(server, client, text)
            cancel = await RawClient.connect("127.0.0.1", gateway.port)
            await cancel.send(pg.cancel_request(pid, secret))
            await cancel.until_closed(5)
            assert codes(await client.until_ready(10)) == ["57014"], attempt
            await asyncio.sleep(0.05)  # the log line, read by another thread
            if forwarded() > before:
                break
        await asyncio.to_thread(
            wait_until, lambda: forwarded() > before, "no cancel went through worker 0", 2
        )
        # A wrong secret through the port cancels nothing either.
        text = "SELECT pg_sleep(30), 'wrong secret'"
        await sleep_upstream(server, client, text)
        for _ in range(8):
            cancel = await RawClient.connect("127.0.0.1", gateway.port)
            await cancel.send(pg.cancel_request(pid, wrong))
            await cancel.until_closed(5)
        with pytest.raises(TimeoutError):
            await client.read(timeout=1.5)
        await cancel_through_socket(directory / "w1.sock", pid, secret)
        assert codes(await client.until_ready(10)) == ["57014"]
    finally:
        client.writer.close()


# --- holds --------------------------------------------------------------------------------


def test_a_held_statement_is_released_by_an_approval_on_every_worker(
    server: Server, gateway: Gateway, table: str
) -> None:
    conns = on_each_worker(server, gateway, 1)
    try:
        for row, conn in enumerate(conns, start=1):
            notices = Notices()
            conn.add_notice_handler(notices.psycopg_handler)
            running = Background(
                lambda conn=conn, row=row: (
                    conn.execute(f"DELETE FROM {table} WHERE id = {row}").rowcount
                )
            )
            request_id = notices.held_id()
            assert not running.done
            assert row in upstream_ids(server, table), "nothing ran before the approval"
            with Client(server.url, server.tokens["bob"], timeout=WAIT) as bob:
                bob.approve(request_id, comment="workers")
            assert running.result() == 1
            assert row not in upstream_ids(server, table)
    finally:
        for conn in conns:
            conn.close()
    assert upstream_ids(server, table) == [3]


def test_a_cancel_during_a_hold_withdraws_the_request_on_every_worker(
    server: Server, gateway: Gateway, table: str
) -> None:
    conns = on_each_worker(server, gateway, 2)
    try:
        for conn in conns:
            notices = Notices()
            conn.add_notice_handler(notices.psycopg_handler)
            running = Background(lambda conn=conn: conn.execute(f"DELETE FROM {table}"))
            request_id = notices.held_id()
            conn.cancel()
            with pytest.raises(pgerrors.QueryCanceled):
                running.result()
            with Client(server.url, server.tokens["ann"], timeout=WAIT) as ann:
                wait_until(
                    lambda ann=ann, request_id=request_id: (
                        ann.get(request_id)["status"] == "cancelled"
                    ),
                    f"{request_id} was not cancelled",
                )
    finally:
        for conn in conns:
            conn.close()
    assert upstream_ids(server, table) == [1, 2, 3]


# --- the supervisor ------------------------------------------------------------------------


def test_sigterm_stops_every_worker_and_their_statements_are_recorded(
    server: Server, table: str
) -> None:
    with running_gateway(server) as gateway:
        idle = on_each_worker(server, gateway, 1)
        busy = on_each_worker(server, gateway, 1)
        texts = []
        for i, conn in enumerate(idle):
            texts.append(f"INSERT INTO {table} VALUES ({10 + i}, 'w{conn.info.backend_pid % 2}')")
            conn.execute(texts[-1])
        sleeping = []
        for i, conn in enumerate(busy):
            text = f"SELECT pg_sleep(30), 'busy {i}'"
            sleeping.append(Background(lambda conn=conn, text=text: conn.execute(text)))
            wait_running(server, text)
        workers = gateway.started_pids()
        assert len(workers) == WORKERS
        directory = gateway.socket_dir()

        gateway.process.send_signal(signal.SIGTERM)

        for running in sleeping:
            with pytest.raises(pgerrors.AdminShutdown) as ended:
                running.result()
            assert ended.value.sqlstate == "57P01"
        assert finish(gateway.process, 60) == 0, gateway.err.text()
        for conn in idle:
            with pytest.raises(psycopg.OperationalError) as ended:
                conn.execute("SELECT 1")
            assert "terminating connection due to administrator command" in str(ended.value)
        for conn in idle + busy:
            conn.close()
        wait_gone(workers)
        assert not directory.exists()
    exported = run_cli(server.env, "audit", "export", "--type", "statement.executed")
    recorded = {json.loads(line)["payload"]["text"] for line in exported.splitlines()}
    assert set(texts) <= recorded


def test_a_killed_worker_is_restarted_while_the_others_serve(server: Server) -> None:
    with running_gateway(server) as gateway:
        survivor, victim_conn = on_each_worker(server, gateway, 1)
        victim = gateway.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)

        gateway.err.notices.wait_for(
            re.compile(rf"worker 1 \(pid {victim}\) was killed by SIGKILL; restarting it in 1 s")
        )
        assert survivor.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError):
            victim_conn.execute("SELECT 1")
        victim_conn.close()
        # New connections are served meanwhile (one queued on the dead worker's
        # socket as it died may fail: retried).
        with connect(server, gateway, attempts=20) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
        restarted = gateway.err.notices.wait_for(
            re.compile(r"worker 1 restarted, listening \(pid (\d+)\)"), 60
        )
        assert int(restarted.group(1)) != victim
        # The new worker 1 serves sessions of its own, and cancels for them.
        conns = on_each_worker(server, gateway, 1)
        try:
            for i, conn in enumerate(conns):
                text = f"SELECT pg_sleep(30), 'after restart {i}'"
                running = Background(lambda conn=conn, text=text: conn.execute(text))
                wait_running(server, text)
                conn.cancel()
                with pytest.raises(pgerrors.QueryCanceled):
                    running.result(timeout=10)
        finally:
            for conn in conns:
                conn.close()
        survivor.close()
        gateway.process.send_signal(signal.SIGTERM)
        assert finish(gateway.process, 60) == 0, gateway.err.text()
        wait_gone(gateway.started_pids())


def test_workers_stop_when_their_supervisor_dies(server: Server) -> None:
    with running_gateway(server) as gateway:
        workers = gateway.started_pids()
        directory = gateway.socket_dir()
        gateway.process.kill()
        gateway.process.wait(10)
        wait_gone(workers)  # none goes on serving on its own
        assert sorted(p.name for p in directory.iterdir()) == [], "each removed its socket"
        directory.rmdir()
    with pytest.raises(psycopg.OperationalError):
        connect(server, gateway)


def test_a_worker_that_cannot_listen_stops_the_gateway(server: Server) -> None:
    with socket.socket() as taken:  # no SO_REUSEPORT: no worker can share its port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        gateway = spawn_gateway(server, port=port)
        try:
            assert finish(gateway.process, 60) == 1
        finally:
            with contextlib.suppress(Exception):
                gateway.process.kill()
    text = " ".join(gateway.err.text().split())  # the error line may be wrapped
    assert f"error: cannot listen on 127.0.0.1:{port}:" in text, text
    assert "address already in use" in text.lower()
    assert "jitgate postgres gateway on" not in text
    wait_gone(gateway.started_pids())
    assert not gateway.socket_dir().exists()


def test_a_worker_that_cannot_reach_the_server_stops_the_gateway(server: Server) -> None:
    unreachable = Server({**server.env}, "http://127.0.0.1:9", server.tokens, server.upstream, "")
    gateway = spawn_gateway(unreachable)
    assert finish(gateway.process, 60) == 1
    text = " ".join(gateway.err.text().split())
    assert "error: cannot reach the jitgate server" in text, text
    wait_gone(gateway.started_pids())
    assert not gateway.socket_dir().exists()


# --- keys, and the one-process gateway -------------------------------------------------------


@pytest.mark.parametrize(("index", "count"), [(0, 1), (0, 2), (1, 2), (0, 64), (63, 64), (5, 7)])
def test_each_worker_hands_out_keys_of_its_own(index: int, count: int) -> None:
    slot = WorkerSlot(index, count, "/nowhere")
    pids = {slot.new_pid() for _ in range(2000)}
    assert len(pids) > 1990, "random"
    assert all(1 <= pid <= 2**31 - 1 and pid % count == index for pid in pids)
    assert all(slot.owns(pid) and slot.owner(pid) == index for pid in pids)
    assert slot.cancel_socket() == f"/nowhere/w{index}.sock"
    assert slot.cancel_socket(count - 1) == f"/nowhere/w{count - 1}.sock"


def test_the_extreme_keys_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("secrets.randbelow", lambda n: 0)
    assert [random_pid(i, 2) for i in (0, 1)] == [2, 1]  # never 0
    monkeypatch.setattr("secrets.randbelow", lambda n: n - 1)
    assert [random_pid(i, 2) for i in (0, 1)] == [2**31 - 2, 2**31 - 1]
    assert random_pid() == 2**31 - 1


class ClosingPort:
    """Enough of an approval port to see it closed."""

    closed = 0

    async def close(self) -> None:
        self.closed += 1


async def test_a_gateway_in_one_process_refuses_several_workers() -> None:
    config = GatewayConfig.single("127.0.0.1:1", "postgresql://u@127.0.0.1:9/db", "dev", workers=2)
    port = ClosingPort()
    with pytest.raises(GatewayConfigError) as caught:
        await start_gateway(config, port)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "gateway postgres: workers: 2 workers need a standalone gateway (jitgate proxy postgres); "
        "in this process the gateway runs once: set workers to 1"
    )
    assert port.closed == 1, "the port it was handed is closed, as on any failure"


# --- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--workers", "0"], "--workers: workers must be from 1 to 64 (gateway processes), not 0"),
        (["--workers", "65"], "--workers: workers must be from 1 to 64"),
        (
            ["--workers", "2", "--listen", "127.0.0.1:0"],
            "--workers: 2 workers need a fixed listen port: with port 0 each worker would "
            "listen on a different one",
        ),
    ],
)
def test_the_command_line_refuses_bad_worker_counts(options: list[str], expected: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "proxy", "postgres", "--upstream", "postgresql://u@127.0.0.1:9/db",
            "--env", "production", "--url", "http://127.0.0.1:9", "--token", "jg_test",
            *options,
        ],
        env={"COLUMNS": "300"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"error: {expected}" in " ".join(result.output.split()), result.output


def test_the_config_files_workers_and_the_option_that_overrides_them(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\nworkers: 2\n"
        "targets: [{name: app, environment: dev, upstream: 'postgres://u@127.0.0.1:9/db'}]\n"
    )
    common = ["proxy", "postgres", "--config", str(config), "--url", "http://127.0.0.1:9"]
    result = CliRunner().invoke(app, [*common, "--token", "t"], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "gateway.yaml:2: workers: 2 workers need a fixed listen port" in result.output
    # A port given on the command line is checked with the file's workers.
    config.write_text(config.read_text().replace("127.0.0.1:0", "127.0.0.1:1"))
    result = CliRunner().invoke(
        app, [*common, "--token", "t", "--listen", "127.0.0.1:0"], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 2, result.output
    assert "--workers: 2 workers need a fixed listen port" in result.output
    # --workers 1 runs the one gateway of today (which finds no server here).
    result = CliRunner().invoke(
        app, [*common, "--token", "t", "--listen", "127.0.0.1:0", "--workers", "1"]
    )
    assert result.exit_code == 1, result.output
    assert "cannot reach the jitgate server" in result.output


def test_serve_refuses_a_gateway_config_with_several_workers(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:6543\nworkers: 3\n"
        "targets: [{name: app, environment: dev, upstream: 'postgres://u@127.0.0.1:9/db'}]\n"
    )
    result = CliRunner().invoke(
        app,
        ["serve", "--db", f"sqlite:///{tmp_path / 'j.db'}", "--gateway", str(config)],
        env={"COLUMNS": "300", "JITGATE_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 2, result.output
    assert (
        f"{config}:2: workers: 3 workers need a standalone gateway (jitgate proxy postgres "
        "--config FILE); jitgate serve --gateway runs the gateway in the server's own process"
    ) in " ".join(result.output.split())
    assert not (tmp_path / "j.db").exists(), "refused before the store is touched"
