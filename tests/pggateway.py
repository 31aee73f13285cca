"""Helpers for the PostgreSQL gateway end-to-end tests (tests/test_pg_gateway_e2e.py).

:class:`GatewayWorld` runs, in a background thread with its own event loop,
what ``jitgate serve --gateway`` runs in one process: a store (a SQLite file),
the approval service over it, the HTTP API on a real uvicorn server (a free
port), and PostgreSQL gateways started with :func:`jitgate.server.run.start_gateway`
(the in-process approval port, the batched statement recorder). Tests then
use real clients, synchronous or not, from their own thread or loop, and
approve through the API with the SDK as people do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from jitgate.audit.keys import SigningKey, TrustedKeys
from jitgate.client import Client
from jitgate.evaluator import Evaluator
from jitgate.gateways.postgres.config import GatewayConfig
from jitgate.gateways.postgres.gateway import PostgresGateway
from jitgate.policy import load_policy_text
from jitgate.server import create_app
from jitgate.server.run import make_server, start_gateway
from jitgate.service import ApprovalService
from jitgate.store import Database, EventRow, Identity, list_events
from jitgate.store.audit import verify_store
from pgcluster import PgCluster

_T = TypeVar("_T")

#: Generous bound for anything that should happen "at once" (slow CI machines).
WAIT = 20.0

#: Deletes (and truncates) in production wait for one approver; drops are refused.
POLICY = """\
version: 1
name: pg-gateway-e2e
default: allow
defaults: {ttl: 1h, grant_ttl: 5m}
chains:
  approvers:
    stages: [{name: approvers, groups: [approvers], approvals: 1}]
rules:
  - id: deletes-wait
    match: {kinds: [sql], environments: [production], statements: [delete, truncate]}
    outcome: require_approval
    chain: approvers
  - id: no-drops
    match: {kinds: [sql], environments: [production], statements: ["drop*"]}
    outcome: deny
    message: tables are not dropped in production
"""

#: name -> groups (the requesters and the approvers).
USERS: dict[str, tuple[str, ...]] = {
    "ann": ("dev",),
    "dave": ("dev",),
    "bob": ("approvers",),
    "carol": ("approvers",),
}

HELD_RE = re.compile(r"jitgate: statement held for approval as (req_[A-Za-z0-9_-]+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_table(cluster: PgCluster, rows: int = 3, prefix: str = "t") -> str:
    """A fresh table ``(id int primary key, v text)`` with ids 1..rows, owned by
    scram_user (the gateway's upstream user), created directly upstream."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(cluster.dsn("scram_user"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        if rows:
            conn.execute(f"INSERT INTO {name} SELECT i, 'v' || i FROM generate_series(1, {rows}) i")
        # md5_user reads through its own target.
        conn.execute(f"GRANT SELECT ON {name} TO md5_user")
    return name


def upstream_ids(cluster: PgCluster, table: str) -> list[int]:
    """The ids in ``table``, read directly upstream (not through the gateway)."""
    with psycopg.connect(cluster.dsn("scram_user"), autocommit=True) as conn:
        return [int(r[0]) for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


def table_exists(cluster: PgCluster, table: str) -> bool:
    with psycopg.connect(cluster.dsn("scram_user"), autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        return bool(row and row[0])


class Notices:
    """Notices a client received, and a way to wait for one (thread-safe)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._cond = threading.Condition()

    def add(self, text: str) -> None:
        with self._cond:
            self.items.append(text)
            self._cond.notify_all()

    def psycopg_handler(self, diag: psycopg.errors.Diagnostic) -> None:
        self.add(diag.message_primary or "")

    def wait_for(self, pattern: re.Pattern[str], timeout: float = WAIT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.items:
                    found = pattern.search(item)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no notice matching {pattern.pattern!r}: {self.items}")
                self._cond.wait(left)

    def held_id(self, timeout: float = WAIT) -> str:
        """The id of the request the statement is held as (from the notice)."""
        return self.wait_for(HELD_RE, timeout).group(1)

    def held_ids(self) -> list[str]:
        with self._cond:
            return [m.group(1) for m in map(HELD_RE.search, self.items) if m]


class Lines:
    """The lines a subprocess writes on a stream, read by a thread, awaitable."""

    def __init__(self, stream: Any) -> None:
        self.notices = Notices()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.notices.add(line.rstrip("\n"))
        stream.close()

    def text(self) -> str:
        self._thread.join(timeout=WAIT)
        return "\n".join(self.notices.items)


class Background:
    """A blocking call run in a thread; :meth:`result` re-raises what it raised."""

    def __init__(self, work: Callable[[], _T]) -> None:
        self._out: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def run() -> None:
            try:
                self._out.put((True, work()))
            except BaseException as exc:  # handed to the test thread
                self._out.put((False, exc))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = WAIT) -> Any:
        try:
            ok, value = self._out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"still running after {timeout}s") from None
        if not ok:
            raise value
        return value


class Forwarder:
    """A TCP relay in front of the upstream that counts the connections it sees
    (to show what does, and what does not, reach the database server)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


def gateway_config(
    cluster: PgCluster, *, forwarder_port: int, hold_timeout: float, name: str = "pg-e2e"
) -> GatewayConfig:
    """Targets: ``app`` (scram_user), ``app_md5`` (md5_user), ``counted`` (scram_user
    through the counting forwarder), all in production."""
    counted = cluster.dsn("scram_user").replace(f":{cluster.port}/", f":{forwarder_port}/")
    return GatewayConfig.model_validate(
        {
            "name": name,
            "listen": "127.0.0.1:0",
            "hold_timeout_seconds": hold_timeout,
            "audit_batch": {"max_records": 50, "max_delay_ms": 20},
            "targets": [
                {"name": "app", "environment": "production", "upstream": cluster.dsn("scram_user")},
                {
                    "name": "app_md5",
                    "environment": "production",
                    "upstream": cluster.dsn("md5_user"),
                },
                {"name": "counted", "environment": "production", "upstream": counted},
            ],
        }
    )


class GatewayWorld:
    """jitgate and PostgreSQL gateways in a background event loop (see the module doc)."""

    def __init__(self, cluster: PgCluster, store: Path) -> None:
        self.cluster = cluster
        self.store = store
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.tokens: dict[str, str] = {}
        self.signing_key = SigningKey.generate()
        self.url = ""
        self.db: Database | None = None
        self.service: ApprovalService | None = None
        self.gateways: list[PostgresGateway] = []
        self.forwarder = Forwarder(cluster.host, cluster.port)
        self._server: Any = None
        self._serving: asyncio.Task[None] | None = None

    # --- running coroutines in the world's loop ---------------------------------------

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = WAIT) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self.call(self._start(), timeout=60)

    async def _start(self) -> None:
        self.db = Database(f"sqlite:///{self.store}")
        async with self.db.transaction() as session:
            identity = Identity(session)
            for name, groups in USERS.items():
                await identity.add_user(name, groups)
                self.tokens[name], _ = await identity.create_token(name, "e2e")
            await identity.add_user("gw", (), service=True)
            self.tokens["gw"], _ = await identity.create_token("gw", "gateway")
        evaluator = Evaluator(load_policy_text(POLICY, "pg-gateway-e2e.yaml"))
        self.service = ApprovalService(self.db, evaluator, signing_key=self.signing_key)
        app = create_app(self.service)
        self._server = make_server(
            app, host="127.0.0.1", port=0, log_level="warning", install_signal_handlers=False
        )
        self._serving = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 30
        while not self._server.started:
            if self._serving.done():
                raise AssertionError(f"uvicorn stopped: {self._serving.exception()}")
            if time.monotonic() > deadline:
                raise AssertionError("uvicorn did not start")
            await asyncio.sleep(0.01)
        host, port = self._server.bound_address()
        self.url = f"http://{host}:{port}"
        await self.forwarder.start()

    def add_gateway(self, *, hold_timeout: float = 15, name: str = "pg-e2e") -> PostgresGateway:
        """A gateway over the service, listening on a free port (see :func:`gateway_config`).

        The hold timeout is short so that a failing test, which leaves a client
        blocked on a held statement, does not hang the run for long."""

        async def start() -> PostgresGateway:
            assert self.service is not None
            assert self.forwarder.server is not None
            forwarder_port = int(self.forwarder.server.sockets[0].getsockname()[1])
            config = gateway_config(
                self.cluster, forwarder_port=forwarder_port, hold_timeout=hold_timeout, name=name
            )
            return await start_gateway(config, self.service, self.url)

        gateway = self.call(start())
        self.gateways.append(gateway)
        return gateway

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._stop(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    async def _stop(self) -> None:
        for gateway in self.gateways:
            await gateway.stop()
            await gateway.recorder.close()
        await self.forwarder.stop()
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._serving, 15)
        if self.db is not None:
            await self.db.close()

    # --- the API, as people use it ----------------------------------------------------

    def client(self, user: str) -> Client:
        return Client(self.url, self.tokens[user], timeout=WAIT)

    def approve(self, request_id: str, user: str = "bob") -> dict[str, Any]:
        with self.client(user) as jg:
            return jg.approve(request_id, comment="e2e")

    def deny(self, request_id: str, reason: str = "not now", user: str = "bob") -> dict[str, Any]:
        with self.client(user) as jg:
            return jg.deny(request_id, reason)

    def request(self, request_id: str) -> dict[str, Any]:
        with self.client("bob") as jg:
            return jg.get(request_id)

    def wait_status(self, request_id: str, statuses: Sequence[str]) -> dict[str, Any]:
        """The request once its status is one of ``statuses`` (follows its event stream)."""
        with self.client("ann") as jg:
            for view in jg.watch(request_id, timeout=WAIT):
                if view.get("status") in statuses:
                    return view
            view = jg.get(request_id)
        assert view.get("status") in statuses, view
        return view

    # --- the trail --------------------------------------------------------------------

    def flush(self) -> None:
        """Write every queued statement record now."""

        async def flush() -> None:
            for gateway in self.gateways:
                assert await gateway.recorder.flush(WAIT), "statement records not written"

        self.call(flush())

    def events(self, after_seq: int = 0) -> list[EventRow]:
        async def read() -> list[EventRow]:
            assert self.db is not None
            out: list[EventRow] = []
            seq = after_seq
            while True:
                async with self.db.transaction(readonly=True) as session:
                    page = await list_events(session, after_seq=seq, limit=1000)
                out.extend(page)
                if len(page) < 1000:
                    return out
                seq = page[-1].seq

        return self.call(read())

    def verify(self) -> Any:
        async def verify() -> Any:
            assert self.db is not None
            return await verify_store(
                self.db, TrustedKeys([self.signing_key.verify_key]), allow_unsigned=10**9
            )

        return self.call(verify())


@contextlib.contextmanager
def gateway_world(cluster: PgCluster, sqlite_template: Path, tmp: Path) -> Iterator[GatewayWorld]:
    store = tmp / "jitgate.db"
    shutil.copyfile(sqlite_template, store)
    world = GatewayWorld(cluster, store)
    try:
        world.start()
        yield world
    finally:
        world.stop()


# --- clients --------------------------------------------------------------------------


def conninfo(port: int, user: str, token: str, database: str = "app") -> str:
    return psycopg.conninfo.make_conninfo(
        host="127.0.0.1",
        port=port,
        user=user,
        password=token,
        dbname=database,
        sslmode="disable",
        connect_timeout=10,
        application_name="jitgate-e2e",
    )


def libpq_env(port: int, user: str, token: str, database: str = "app") -> dict[str, str]:
    """The environment for psql/pgbench to reach the gateway as ``user``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST="127.0.0.1",
        PGPORT=str(port),
        PGUSER=user,
        PGPASSWORD=token,
        PGDATABASE=database,
        PGSSLMODE="disable",
        PGCONNECT_TIMEOUT="10",
        PGAPPNAME="jitgate-e2e",
    )
    return env


def spawn(
    command: Sequence[str], env: dict[str, str], stdin: str | None = None
) -> tuple[subprocess.Popen[str], Lines, Lines]:
    """Start ``command``; its stdout and stderr lines, readable while it runs."""
    process = subprocess.Popen(
        list(command),
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin)
        process.stdin.close()
    return process, Lines(process.stdout), Lines(process.stderr)


def finish(process: subprocess.Popen[str], timeout: float = WAIT) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{process.args!r} did not finish within {timeout}s") from None
