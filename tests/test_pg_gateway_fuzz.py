"""Protocol fuzzing of a running PostgreSQL gateway.

The gateway runs on its own event loop in a thread (:class:`GatewayThread`),
in front of a test database on the local PostgreSQL, with a real in-process
approval service. That loop's exception handler records whatever reaches it,
and the gateway's ERROR log records are kept: both must stay empty.

:func:`test_thousands_of_malformed_connections` throws more than 5,000
deterministic (seeded) malformed inputs at it, a few hundred connections at a
time, while a bystander psycopg connection keeps querying through the same
gateway (allowed statements, and DELETEs held for approval that an approver
task approves). The bystander must never see an error or a wrong answer; each
bad connection must end with a FATAL ErrorResponse of an expected SQLSTATE
(08P01, 28xxx) or a close, within a few seconds; a fresh login works at the
end. Hypothesis adds arbitrary bytes before login and arbitrary sequences of
well-framed but nonsensical messages after it. The memory tests check that a
declared length is not allocated before its bytes arrive.

Which inputs expect what is decided with the codec itself: a body the local
decoder refuses must make the gateway end the session with 08P01.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import socket
import struct
import threading
import tracemalloc
import weakref
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from conftest import create_pg_database, drop_pg_database
from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres.gateway import PostgresGateway
from jitgate.gateways.postgres.link import Link
from jitgate.gateways.postgres.protocol import ProtocolViolation
from jitgate.service.throttle import AuthThrottle
from pg_gateway_support import (
    SYNC,
    Closed,
    GatewayEnv,
    RawClient,
    bind,
    close,
    codes,
    data_rows,
    describe,
    errors,
    execute,
    function_call,
    gateway_env,
    held_request_id,
    parse,
    query,
)

_T = TypeVar("_T")

SEED = 0x5EED_2024
#: Cases before login, fatal ones after it, nonsense sessions: 7,500 inputs.
CASE_MIX = (5000, 1500, 1000)
#: Seconds a bad connection may take to be answered and closed.
CASE_TIMEOUT = 10.0
MAX_MESSAGE = 64 * 1024 * 1024  # the gateway's default max_message_bytes
#: SQLSTATEs a refused connection may end with.
FATAL_CODES = frozenset({"08P01", "28000", "28P01", "0A000"})
#: What the gateway must never answer itself (PostgreSQL may: a Parse naming a type
#: OID that does not exist is its XX000 "cache lookup failed").
FORBIDDEN_FROM_GATEWAY = frozenset({"XX000", "08006"})


def gateway_fault(error: dict[str, str]) -> bool:
    """An internal error of the gateway, or its losing track of the upstream."""
    text = error.get("M", "")
    own = text.startswith("jitgate")
    return (own and error.get("C") in FORBIDDEN_FROM_GATEWAY) or "lost track" in text


# --- the gateway on a thread of its own ----------------------------------------------------


class GatewayThread:
    """A gateway (see ``pg_gateway_support.gateway_env``) on a private event loop."""

    def __init__(self, upstream_url: str, sqlite_template: Path, workdir: Path) -> None:
        self.upstream_url = upstream_url
        self.sqlite_template = sqlite_template
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.log_errors: list[logging.LogRecord] = []
        #: Every connection's Link, while it lives.
        self.links: weakref.WeakSet[Link] = weakref.WeakSet()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._env: GatewayEnv | None = None
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self._handler = _ListHandler(self.log_errors)

    @property
    def env(self) -> GatewayEnv:
        assert self._env is not None
        return self._env

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(context)
        loop.default_exception_handler(context)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(self._on_loop_error)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start()
            self._failure = exc
            self._ready.set()
        finally:
            # What the gateway left running (e.g. withdrawing a held request).
            left = asyncio.all_tasks(self.loop)
            if left:
                self.loop.run_until_complete(asyncio.wait(left, timeout=10))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()

        def keep_links(gateway: PostgresGateway) -> None:
            accept = gateway._accept

            def accept_and_keep() -> Link:
                link = accept()
                self.links.add(link)
                return link

            setattr(gateway, "_accept", accept_and_keep)  # noqa: B010

        async with gateway_env(
            self.upstream_url,
            self.sqlite_template,
            self.workdir,
            prepare=keep_links,
            hold_timeout_seconds=60,
        ) as env:
            # Thousands of wrong passwords from 127.0.0.1 must not lock it out.
            env.service.auth_throttle = AuthThrottle(max_failures=10**9)
            self._env = env
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        logging.getLogger("jitgate.gateway.postgres").addHandler(self._handler)
        self._thread.start()
        self._ready.wait(60)
        if self._failure is not None:
            raise RuntimeError("the gateway did not start") from self._failure
        assert self._env is not None, "the gateway did not start in time"

    def stop(self) -> None:
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        logging.getLogger("jitgate.gateway.postgres").removeHandler(self._handler)

    def submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30) -> _T:
        return self.submit(coro).result(timeout)

    def sessions(self) -> int:
        async def count() -> int:
            return len(self.env.gateway.sessions)

        return self.call(count())

    def buffered(self) -> int:
        """Bytes waiting in the start-up buffers of all connections."""

        async def total() -> int:
            gc.collect()
            return sum(link.buffered for link in list(self.links))

        return self.call(total())

    def check_clean(self) -> None:
        assert not self.loop_errors, [
            (c.get("message"), repr(c.get("exception"))) for c in self.loop_errors[:10]
        ]
        assert not self.log_errors, [r.getMessage() for r in self.log_errors[:10]]


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        # An upstream refusing connections under load is the environment, not the gateway.
        if "cannot connect upstream" not in record.getMessage():
            self.records.append(record)


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    server, name = create_pg_database()
    url = server.set(database=name).render_as_string(hide_password=False)

    async def tables() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(
                "CREATE TABLE bystander (id int PRIMARY KEY, v text);"
                "CREATE TABLE t (id int, v text);"
            )
        finally:
            await conn.close()

    try:
        asyncio.run(tables())
        yield url
    finally:
        drop_pg_database(server, name)


@pytest.fixture(scope="module")
def gw(
    upstream_url: str, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayThread]:
    thread = GatewayThread(upstream_url, sqlite_template, tmp_path_factory.mktemp("gw"))
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def clean(gw: GatewayThread) -> Iterator[GatewayThread]:
    """The gateway; after the test, nothing may have reached its loop's handler or log."""
    yield gw
    gw.check_clean()


# --- the bystander -------------------------------------------------------------------------


@dataclass
class Bystander:
    gw: GatewayThread
    rounds: int = 0
    held: int = 0
    problems: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(**self.gw.env.conninfo(), autocommit=True)
        except Exception as exc:
            self.problems.append(f"bystander cannot connect: {exc!r}")
            return
        approvals: list[Future[None]] = []

        def on_notice(diag: psycopg.errors.Diagnostic) -> None:
            text = diag.message_primary or ""
            request_id = held_request_id([("N", pg.notice_response(text)[5:])])
            if request_id is not None:
                approvals.append(self.gw.submit(self.gw.env.approve(request_id)))

        conn.add_notice_handler(on_notice)
        try:
            while not self.stop.is_set():
                await self.round(conn)
        except Exception as exc:
            self.problems.append(f"round {self.rounds}: {exc!r}")
        finally:
            await conn.close()
        for approval in approvals:
            with contextlib.suppress(Exception):
                approval.result(10)

    async def round(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.rounds += 1
        i = self.rounds
        cur = await conn.execute("SELECT %s::int * 2, %s::text", [i, f"r{i}"])
        self.expect(await cur.fetchall(), [(2 * i, f"r{i}")], "select")
        cur = await conn.execute("INSERT INTO bystander VALUES (%s, %s) RETURNING id", [i, f"v{i}"])
        self.expect(await cur.fetchall(), [(i,)], "insert")
        cur = await conn.execute("SELECT v FROM bystander WHERE id = %s", [i])
        self.expect(await cur.fetchall(), [(f"v{i}",)], "read back")
        cur = await conn.execute("SELECT count(*) FROM bystander")
        self.expect(await cur.fetchall(), [(i - self.held,)], "count")
        if i % 10 == 0:
            # Held for approval; the notice handler has it approved at once.
            cur = await conn.execute("DELETE FROM bystander WHERE id = %s", [i])
            self.expect(cur.rowcount, 1, "held delete")
            self.held += 1
        if i % 7 == 0:
            async with conn.transaction():
                cur = await conn.execute("SELECT v FROM bystander WHERE id = %s FOR UPDATE", [1])
                self.expect(await cur.fetchall(), [("v1",)], "in a transaction")

    def expect(self, got: Any, want: Any, what: str) -> None:
        if got != want:
            self.problems.append(f"round {self.rounds} {what}: {got!r} != {want!r}")


# --- the cases ---------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    parts: list[bytes]
    #: keep: send, then read until the gateway closes; eof: send, half-close, read;
    #: abort: send, then reset the connection; session: see run_session.
    mode: str
    #: error: a FATAL error of ``codes`` then the close; close: the close, after an
    #: optional FATAL error of ``codes``; silent: the close and not one byte.
    expect: str = "close"
    codes: frozenset[str] = FATAL_CODES
    login: bool = False
    #: Leading one-byte answers (to SSLRequest and GSSENCRequest) the gateway may send.
    answers: int = 0
    #: session mode: batches, each answered up to ReadyForQuery.
    batches: list[list[bytes]] = field(default_factory=list)


VALID_STARTUP = pg.startup_message({"user": "ann", "database": "app"})
TYPES = b"QPBEDCSHXFdcf"


def _body_violates(kind: int, body: bytes) -> bool:
    """Whether the gateway's codec refuses this message of a logged-in client."""
    decoders: dict[int, Callable[[bytes], Any]] = {
        ord("Q"): pg.query_text,
        ord("P"): pg.decode_parse,
        ord("B"): pg.decode_bind,
        ord("E"): pg.decode_execute,
        ord("D"): lambda b: pg.decode_target(b, "Describe"),
        ord("C"): lambda b: pg.decode_target(b, "Close"),
    }
    if kind not in TYPES:
        return True
    decoder = decoders.get(kind)
    if decoder is None:
        return False
    try:
        decoder(body)
    except ProtocolViolation:
        return True
    return False


def _mutate(rng: random.Random, body: bytes) -> bytes:
    choice = rng.randrange(6)
    if choice == 0 and body:
        return body[: rng.randrange(len(body))]
    if choice == 1:
        return body + rng.randbytes(rng.randint(1, 8))
    if choice == 2 and body:
        pos = rng.randrange(len(body))
        return body[:pos] + bytes([rng.randrange(256)]) + body[pos + 1 :]
    if choice == 3:
        return body.replace(b"\x00", b"", 1)
    if choice == 4 and len(body) > 2:
        pos = rng.randrange(len(body) - 1)
        return body[:pos] + rng.choice([b"\xff\xff", b"\x80\x00", b"\x7f\xff"]) + body[pos + 2 :]
    return b"\xff\xfe" + body


def _valid_bodies(rng: random.Random) -> list[bytes]:
    return [
        query("SELECT 1"),
        parse(rng.choice(["", "s1"]), "SELECT $1::int", [23]),
        bind(rng.choice(["", "p"]), "s1", [b"1", None], [0]),
        execute(rng.choice(["", "p"]), rng.choice([0, 1, -1])),
        describe(rng.choice("SP"), "s1"),
        close(rng.choice("SP"), "x"),
    ]


def pre_login_case(rng: random.Random, n: int) -> Case:
    kind = n % 14
    if kind == 0:
        return Case("random bytes", [rng.randbytes(rng.randint(0, 64))], "eof")
    if kind == 1:
        return Case("many random bytes", [rng.randbytes(rng.randint(65, 20_000))], "eof")
    if kind == 2:
        cut = rng.randrange(len(VALID_STARTUP))
        return Case("truncated startup", [VALID_STARTUP[:cut]], "eof")
    if kind == 3:
        length = rng.choice([-1, 0, 4, 7, 10_001, 2**31 - 1, -(2**31), 1 << 30])
        length = rng.choice([length, rng.randint(-(2**31), 7), rng.randint(10_001, 2**31 - 1)])
        return Case(
            "absurd startup length",
            [struct.pack("!i", length) + rng.randbytes(rng.randint(0, 8))],
            "keep",
            "error",
            frozenset({"08P01"}),
        )
    if kind == 4:
        major = rng.choice([0, 1, 2, 4, 1234, 65535, rng.randrange(65536)])
        if major == 3:
            major = 2
        version = (major << 16) | rng.randrange(65536)
        if version in (pg.SSL_REQUEST, pg.GSSENC_REQUEST, pg.CANCEL_REQUEST):
            version = 2 << 16
        packet = VALID_STARTUP[:4] + struct.pack("!I", version) + VALID_STARTUP[8:]
        return Case("bad protocol version", [packet], "keep", "error", frozenset({"08P01"}))
    if kind == 5:
        garbage = rng.randbytes(rng.randint(1, 40))
        return Case("SSLRequest then garbage", [pg.SSL_REQUEST_PACKET + garbage], "eof", answers=1)
    if kind == 6:
        gss = struct.pack("!ii", 8, pg.GSSENC_REQUEST)
        parts = [gss, pg.SSL_REQUEST_PACKET, gss, rng.randbytes(rng.randint(0, 30))]
        return Case("GSSENC and SSL then garbage", [b"".join(parts)], "eof", answers=3)
    if kind == 7:
        packet = pg.cancel_request(rng.randint(-(2**31), 2**31 - 1), rng.randint(0, 2**31 - 1))
        return Case("random cancel", [packet], "keep", "silent")
    if kind == 8:
        body = rng.choice(
            [
                b"user\x00ann\x00database\x00app",  # not terminated
                b"user\x00ann\x00database\x00\x00",  # odd count
                b"\xff\xfe\x00ann\x00\x00",  # not UTF-8
                b"\x00ann\x00\x00",  # empty name
                rng.randbytes(rng.randint(0, 200)),
            ]
        )
        packet = struct.pack("!ii", len(body) + 8, pg.PROTOCOL_V3) + body
        return Case("malformed startup parameters", [packet], "keep", "close")
    if kind == 9:
        params = rng.choice(
            [
                {"database": "app"},  # no user
                {"user": "", "database": "app"},
                {"user": "ann", "replication": "database"},
                {"user": "ann", "replication": "true"},
            ]
        )
        return Case("refused startup", [pg.startup_message(params)], "keep", "error")
    if kind == 10:
        message = rng.choice(
            [
                pg.message(b"Q", b"SELECT 1\x00"),  # not a password message
                b"p" + struct.pack("!I", rng.choice([0, 3, 10_001, 2**31, 2**32 - 1])),
                pg.message(b"p", b"no terminator"),
                pg.message(b"p", b"two\x00nuls\x00"),
            ]
        )
        return Case(
            "bad password message",
            [VALID_STARTUP + message],
            "keep",
            "error",
            frozenset({"08P01"}),
        )
    if kind == 11:
        token = rng.choice(["", "wrong", "jg_" + rng.randbytes(16).hex(), "x" * 5000])
        password = pg.message(b"p", pg.cstring(token))
        return Case(
            "wrong token", [VALID_STARTUP + password], "keep", "error", frozenset({"28P01"})
        )
    if kind == 12:
        password = pg.message(b"p", b"partial")
        return Case(
            "closed mid-password",
            [VALID_STARTUP + password[: rng.randint(1, len(password) - 1)]],
            rng.choice(["eof", "abort"]),
        )
    packet = rng.choice([VALID_STARTUP, pg.SSL_REQUEST_PACKET + VALID_STARTUP])
    return Case(
        "startup then garbage",
        [packet + rng.randbytes(rng.randint(1, 64))],
        "eof",
        answers=1,
    )


def post_login_fatal_case(rng: random.Random, n: int) -> Case:
    kind = n % 7
    tail = [SYNC + pg.TERMINATE]
    if kind == 0:
        header = bytes([rng.choice(TYPES)]) + struct.pack(
            "!I", rng.choice([0, 1, 2, 3, MAX_MESSAGE + 1, 1 << 30, 2**31 - 1, 2**32 - 1])
        )
        return Case("absurd length", [header], "keep", "error", frozenset({"08P01"}), login=True)
    if kind == 1:
        kind_byte = rng.choice([b for b in range(256) if b not in TYPES])
        message = pg.message(bytes([kind_byte]), rng.randbytes(rng.randint(0, 20)))
        return Case(
            "unknown message type", [message], "keep", "error", frozenset({"08P01"}), login=True
        )
    if kind in (2, 3):
        valid = rng.choice(_valid_bodies(rng))
        body = _mutate(rng, valid[5:])
        message = valid[:1] + struct.pack("!I", len(body) + 4) + body
        if _body_violates(valid[0], body):
            return Case(
                "malformed body", [message], "keep", "error", frozenset({"08P01"}), login=True
            )
        return Case("mutated but valid body", [message, *tail], "keep", "close", login=True)
    if kind == 4:
        return Case(
            "random bytes after login",
            [rng.randbytes(rng.randint(1, 300))],
            "eof",
            "close",
            frozenset({"08P01"}),
            login=True,
        )
    if kind == 5:
        valid = rng.choice([*_valid_bodies(rng), pg.message(b"Q", b"x" * 100000)])
        return Case(
            "closed mid-message",
            [valid[: rng.randint(1, len(valid) - 1)]],
            rng.choice(["abort", "eof"]),
            login=True,
        )
    size = rng.choice([MAX_MESSAGE + 1, MAX_MESSAGE + 1000])
    return Case(
        "oversized message",
        [b"Q" + struct.pack("!I", size) + b"SELECT " * 10],
        "keep",
        "error",
        frozenset({"08P01"}),
        login=True,
    )


NAMES = ["", "s1", "s2", "p1"]
#: Texts the policy lets through or denies at once (it holds what does not parse,
#: the empty statement included: those would wait for an approver).
SQL = [
    "SELECT 1",
    "SELECT $1::int",
    "INSERT INTO t VALUES (1, 'fuzz')",
    "TRUNCATE t",  # denied
    "SELECT 1; SELECT 2",  # not allowed in a prepared statement
    "SELECT pg_sleep(0)",
    "SELECT 1/0",
    "SELECT * FROM no_such_table",
]
#: For Parse only: the upstream refuses them, so they never reach an Execute.
PARSE_SQL = [*SQL, "SELEC broken", "SELECT $1::int, $2::text + 1"]


def _random_message(rng: random.Random) -> bytes:
    choice = rng.randrange(9)
    if choice == 0:
        return parse(rng.choice(NAMES), rng.choice(PARSE_SQL), rng.choice([[], [23], [0, 0]]))
    if choice == 1:
        count = rng.choice([0, 0, 1, 2])
        params = [rng.choice([b"1", b"x", None, b"\x00\x00\x00\x01"]) for _ in range(count)]
        formats = rng.choice([[], [rng.randrange(2)]] + ([[0] * count] if count > 1 else []))
        return bind(rng.choice(NAMES), rng.choice(NAMES), params, formats, rng.choice([[], [1]]))
    if choice == 2:
        return describe(rng.choice("SP"), rng.choice(NAMES))
    if choice == 3:
        return close(rng.choice("SP"), rng.choice(NAMES))
    if choice == 4:
        return pg.FLUSH
    if choice == 5:
        return pg.message(b"d", rng.randbytes(rng.randint(0, 20)))  # CopyData outside COPY
    if choice == 6:
        return pg.message(b"c")  # CopyDone outside COPY
    if choice == 7:
        return pg.message(b"f", b"stop\x00")  # CopyFail outside COPY
    return parse("", rng.choice(PARSE_SQL))


def session_batches(rng: random.Random) -> list[list[bytes]]:
    """Batches of well-framed, nonsensical messages; at most one Execute per batch,
    last before its Sync (see test_pg_gateway_protocol_security for what goes
    wrong otherwise)."""
    batches: list[list[bytes]] = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.randrange(8)
        if kind == 0:
            batches.append([query(rng.choice([*SQL, "BEGIN", "ROLLBACK", "COMMIT"]))])
        elif kind == 1:
            batches.append([function_call(rng.randrange(10_000))])
        elif kind == 2:
            batches.append([SYNC] * rng.randint(1, 300))  # a Sync storm
        elif kind == 3:
            batches.append([execute(rng.choice([*NAMES, "nope"]), rng.randint(-2, 3)), SYNC])
        else:
            batch = [_random_message(rng) for _ in range(rng.randint(0, 8))]
            if rng.random() < 0.7:
                batch.append(execute(rng.choice(NAMES), rng.choice([0, 1, -1])))
            batch.append(SYNC)
            batches.append(batch)
    return batches


def build_cases(seed: int, pre: int, fatal: int, sessions: int) -> list[Case]:
    rng = random.Random(seed)
    cases = [pre_login_case(rng, n) for n in range(pre)]
    cases += [post_login_fatal_case(rng, n) for n in range(fatal)]
    cases += [
        Case("nonsense session", [], "session", login=True, batches=session_batches(rng))
        for _ in range(sessions)
    ]
    rng.shuffle(cases)
    return cases


# --- running a case ------------------------------------------------------------------------


def split_answer(data: bytes, answers: int) -> tuple[list[tuple[str, bytes]], bytes]:
    """The messages in ``data`` after up to ``answers`` one-byte answers; and what is left."""
    for _ in range(answers):
        if data[:1] in (b"N", b"S") and (len(data) == 1 or data[1:2] in b"NSERK"):
            data = data[1:]
    frames = pg.Frames(1 << 30)
    frames.feed(data)
    out: list[tuple[str, bytes]] = []
    while (item := frames.next()) is not None:
        out.append((chr(item[0]), item[1]))
    return out, frames.take_rest()


async def read_to_end(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything until the close (and whether it was a reset); TimeoutError on a hang."""
    chunks: list[bytes] = []
    async with asyncio.timeout(CASE_TIMEOUT):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)


def judge(case: Case, data: bytes, reset: bool) -> str | None:
    messages, rest = split_answer(data, case.answers)
    if rest and not reset:
        return f"{len(rest)} byte(s) of a truncated message: {rest[:20]!r}"
    if case.expect == "silent":
        return None if not data else f"expected no answer, got {data[:40]!r}"
    found = errors(messages)
    fatal = [e for e in found if e.get("S") == "FATAL"]
    for error in found:
        if gateway_fault(error):
            return f"gateway fault: {error}"
    for error in fatal:
        if error.get("C") not in case.codes:
            return f"FATAL {error.get('C')} not in {sorted(case.codes)}: {error.get('M')}"
    if fatal and messages[-1][0] != "E":
        return f"messages after the FATAL error: {[k for k, _ in messages]}"
    if case.expect == "error" and not fatal and not reset:
        return f"no FATAL error before the close: {[k for k, _ in messages]} {found}"
    if not case.login:
        unexpected = {k for k, _ in messages} - {"E", "R", "N"}
        if unexpected:
            return f"unexpected messages before login: {sorted(unexpected)}"
    return None


async def run_session(client: RawClient, case: Case) -> str | None:
    for batch in case.batches:
        await client.send(*batch)
        answers: list[tuple[str, bytes]] = []
        for _ in range(max(1, sum(1 for m in batch if m == SYNC or m[:1] in b"QF"))):
            answers += await client.until_ready(CASE_TIMEOUT)
        for error in errors(answers):
            if error.get("S") != "ERROR" or gateway_fault(error):
                return f"{error} after {[m[:1] for m in batch]}"
    with contextlib.suppress(TimeoutError):
        extra = await client.read(0.05)
        return f"an answer nobody asked for: {extra}"
    status = (await client.simple("ROLLBACK"))[-1]
    if status != ("Z", b"I"):
        return f"ROLLBACK left {status}"
    answer = await client.simple("SELECT 41 + 1")
    if data_rows(answer) != [["42"]]:
        return f"the session is not usable any more: {answer}"
    await client.send(pg.TERMINATE)
    data, _ = await read_to_end(client.reader)
    return None if not data else f"data after Terminate: {data[:40]!r}"


async def held_or_closed(client: RawClient) -> str | None:
    """A mutated message that is still valid: answered, then Terminate closes the
    session; or held for approval (text that does not parse), then we leave."""
    seen: list[tuple[str, bytes]] = []
    try:
        while True:
            seen.append(await client.read(CASE_TIMEOUT))
            if held_request_id(seen[-1:]) is not None:
                return None
    except Closed:
        pass
    for error in errors(seen):
        if gateway_fault(error) or (error.get("S") == "FATAL" and error.get("C") != "08P01"):
            return f"gateway fault: {error}"
    return None


async def run_case(gw: GatewayThread, case: Case) -> str | None:
    host, port = gw.env.host, gw.env.gw_port
    writer: asyncio.StreamWriter | None = None
    try:
        if case.login:
            client = await RawClient.login(host, port, "ann", gw.env.tokens["ann"])
            reader, writer = client.reader, client.writer
            if case.mode == "session":
                return await run_session(client, case)
        else:
            reader, writer = await asyncio.open_connection(host, port)
        for part in case.parts:
            writer.write(part)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        if case.mode == "abort":
            writer.transport.abort()
            return None
        if case.mode == "eof" and writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
        if case.name == "mutated but valid body":
            return await held_or_closed(RawClient(reader, writer))
        data, reset = await read_to_end(reader)
        return judge(case, data, reset)
    except TimeoutError:
        return "no answer and no close: the connection hangs"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def run_all(
    gw: GatewayThread, cases: list[Case], *, pre_limit: int = 150, post_limit: int = 12
) -> list[tuple[Case, str]]:
    pre, post = asyncio.Semaphore(pre_limit), asyncio.Semaphore(post_limit)
    problems: list[tuple[Case, str]] = []

    async def one(case: Case) -> None:
        async with post if case.login else pre:
            problem = await run_case(gw, case)
        if problem is not None:
            problems.append((case, problem))

    await asyncio.gather(*(one(case) for case in cases))
    return problems


async def fresh_login_works(gw: GatewayThread) -> None:
    client = await RawClient.login(gw.env.host, gw.env.gw_port, "ann", gw.env.tokens["ann"])
    try:
        assert data_rows(await client.simple("SELECT 'still here'")) == [["still here"]]
    finally:
        await client.close()


async def _settle(gw: GatewayThread, sessions: int) -> None:
    """Wait until only ``sessions`` sessions are left (closing ones go away)."""
    for _ in range(100):
        if gw.sessions() <= sessions:
            return
        await asyncio.sleep(0.05)
    assert gw.sessions() <= sessions


# --- the tests ----------------------------------------------------------------------------


def test_the_case_mix() -> None:
    cases = build_cases(SEED, *CASE_MIX)
    assert len(cases) == sum(CASE_MIX) >= 5000
    names = {c.name for c in cases}
    assert {"SSLRequest then garbage", "bad protocol version", "oversized message"} <= names
    assert {"malformed body", "closed mid-message", "nonsense session"} <= names
    # The oracle: what the local codec refuses is expected to end the session.
    malformed = [c for c in cases if c.name == "malformed body"]
    assert len(malformed) > 100
    assert build_cases(SEED, 50, 50, 50)[0] == build_cases(SEED, 50, 50, 50)[0]


async def test_thousands_of_malformed_connections(clean: GatewayThread) -> None:
    gw = clean
    bystander = Bystander(gw)
    running = asyncio.create_task(bystander.run())
    await asyncio.sleep(0.3)
    cases = build_cases(SEED, *CASE_MIX)
    try:
        problems = await run_all(gw, cases)
    finally:
        bystander.stop.set()
        await asyncio.wait_for(running, 60)
    report = [f"{case.name} {case.parts[:1]!r:.80}: {problem}" for case, problem in problems]
    assert not report, f"{len(report)} of {len(cases)} cases:\n" + "\n".join(report[:30])
    assert not bystander.problems, bystander.problems[:10]
    assert bystander.rounds >= 20, "the bystander hardly ran during the fuzzing"
    assert bystander.held >= 2
    await fresh_login_works(gw)
    await _settle(gw, 0)
    # Every bad connection is gone: nothing left in start-up buffers.
    assert gw.buffered() == 0
    recorder = gw.env.recorder
    assert recorder.accepting
    assert recorder.rejected == 0
    assert recorder.dropped == 0
    rows = await _upstream_fetch(gw.upstream_url, "SELECT count(*) FROM bystander")
    assert rows == bystander.rounds - bystander.held


async def _upstream_fetch(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# --- hypothesis: arbitrary bytes before login, message sequences after it -----------------


def _socket(gw: GatewayThread) -> socket.socket:
    sock = socket.create_connection((gw.env.host, gw.env.gw_port), timeout=CASE_TIMEOUT)
    sock.settimeout(CASE_TIMEOUT)
    return sock


def _recv_all(sock: socket.socket) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)


startup_like = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda length, code, rest: struct.pack("!iI", length, code) + rest,
        st.integers(-(2**31), 2**31 - 1) | st.integers(0, 64),
        st.sampled_from([pg.PROTOCOL_V3, pg.SSL_REQUEST, pg.GSSENC_REQUEST, pg.CANCEL_REQUEST])
        | st.integers(0, 2**32 - 1),
        st.binary(max_size=100),
    ),
    st.builds(
        lambda params, cut: pg.startup_message(params)[:cut],
        st.dictionaries(
            st.sampled_from(["user", "database", "options", "replication", "x"]),
            st.text(max_size=10).map(lambda s: s.replace("\x00", "")),
        ),
        st.integers(0, 200),
    ),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=startup_like)
def test_arbitrary_bytes_before_login(clean: GatewayThread, data: bytes) -> None:
    with _socket(clean) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer, reset = _recv_all(sock)
    answers = data.count(struct.pack("!ii", 8, pg.SSL_REQUEST)) + data.count(
        struct.pack("!ii", 8, pg.GSSENC_REQUEST)
    )
    problem = judge(Case("hypothesis", [data], "eof", answers=answers), answer, reset)
    assert problem is None, (problem, answer)


def _login_socket(gw: GatewayThread) -> socket.socket:
    sock = _socket(gw)
    sock.sendall(VALID_STARTUP)
    assert sock.recv(9) == pg.authentication(pg.AUTH_CLEARTEXT)
    sock.sendall(pg.message(b"p", pg.cstring(gw.env.tokens["ann"])))
    _read_until_ready(sock)
    return sock


def _read_message(sock: socket.socket) -> tuple[str, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    header = exactly(5)
    return chr(header[0]), exactly(struct.unpack("!I", header[1:])[0] - 4)


def _read_until_ready(sock: socket.socket) -> list[tuple[str, bytes]]:
    out = []
    while True:
        message = _read_message(sock)
        out.append(message)
        if message[0] == "Z":
            return out


names_st = st.sampled_from(NAMES)
messages_st = st.one_of(
    st.builds(parse, names_st, st.sampled_from(PARSE_SQL)),
    st.builds(
        lambda portal, stmt, params: bind(portal, stmt, params),
        names_st,
        names_st,
        st.lists(st.none() | st.sampled_from([b"1", b"x"]), max_size=2),
    ),
    st.builds(describe, st.sampled_from("SP"), names_st),
    st.builds(close, st.sampled_from("SP"), names_st),
    st.just(pg.FLUSH),
    st.binary(max_size=10).map(lambda b: pg.message(b"d", b)),
    st.just(pg.message(b"c")),
    st.just(pg.message(b"f", b"x\x00")),
)
batch_st = st.one_of(
    st.builds(
        lambda msgs, last: [*msgs, *last, SYNC],
        st.lists(messages_st, max_size=6),
        st.lists(st.builds(execute, names_st, st.integers(-1, 2)), max_size=1),
    ),
    st.sampled_from([*SQL, "BEGIN", "COMMIT"]).map(lambda sql: [query(sql)]),
    st.integers(1, 50).map(lambda n: [SYNC] * n),
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=st.lists(batch_st, min_size=1, max_size=5))
def test_nonsense_message_sequences_after_login(
    clean: GatewayThread, batches: list[list[bytes]]
) -> None:
    note(repr(batches))
    with _login_socket(clean) as sock:
        for batch in batches:
            sock.sendall(b"".join(batch))
            answers = []
            for _ in range(sum(1 for m in batch if m == SYNC or m[:1] == b"Q")):
                answers += _read_until_ready(sock)
            for error in errors(answers):
                assert error.get("S") == "ERROR", error
                assert not gateway_fault(error), error
        sock.sendall(query("ROLLBACK") + query("SELECT 41 + 1"))
        _read_until_ready(sock)
        assert data_rows(_read_until_ready(sock)) == [["42"]]


# --- memory ---------------------------------------------------------------------------------


async def test_a_declared_gibibyte_is_refused_without_allocating_it(clean: GatewayThread) -> None:
    gw = clean
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in range(10):
            client = await RawClient.login(gw.env.host, gw.env.gw_port, "ann", gw.env.tokens["ann"])
            await client.send(b"Q" + struct.pack("!I", 1 << 30) + b"SELECT 1")
            answer = await client.until_closed(CASE_TIMEOUT)
            assert codes(answer) == ["08P01"]
            assert "invalid length 1073741824" in errors(answer)[0]["M"]
            await client.close()
            # Before login too: the startup packet length.
            reader, writer = await asyncio.open_connection(gw.env.host, gw.env.gw_port)
            writer.write(struct.pack("!i", 1 << 30) + b"\x00" * 100)
            data, _ = await read_to_end(reader)
            assert judge(Case("", [], "keep", "error", frozenset({"08P01"})), data, False) is None
            writer.close()
        # Under the limit, a declared 60 MiB whose bytes never come is not allocated either.
        clients = []
        for _ in range(10):
            client = await RawClient.login(gw.env.host, gw.env.gw_port, "ann", gw.env.tokens["ann"])
            await client.send(b"Q" + struct.pack("!I", 60 << 20) + b"SELECT " * 100)
            clients.append(client)
        await asyncio.sleep(0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for client in clients:
        client.writer.transport.abort()
    assert peak < 32 << 20, f"{peak >> 20} MiB allocated at the peak"
    await _settle(gw, 0)


async def test_start_up_buffer_is_bounded_while_authenticating(clean: GatewayThread) -> None:
    gw = clean
    port = gw.env.port
    original = port.authenticate

    async def slow_authenticate(user: str, secret: str, client: str) -> Any:
        await asyncio.sleep(1.0)  # a remote approval service, a slow network
        return await original(user, secret, client)

    gw.call(_set(port, "authenticate", slow_authenticate))
    try:
        reader, writer = await asyncio.open_connection(gw.env.host, gw.env.gw_port)
        writer.write(VALID_STARTUP)
        assert await reader.readexactly(9) == pg.authentication(pg.AUTH_CLEARTEXT)
        writer.write(pg.message(b"p", b"not-a-token\x00"))
        # An unauthenticated client keeps sending while its token is checked.
        junk = b"\x00" * (1 << 20)
        sent = 0
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(0.8):
                while sent < 48 << 20:
                    writer.write(junk)
                    await writer.drain()
                    sent += len(junk)
        await asyncio.sleep(0.1)
        buffered = gw.buffered()
        writer.transport.abort()
        assert buffered <= 1 << 20, f"{buffered >> 20} MiB buffered of {sent >> 20} MiB sent"
    finally:
        gw.call(_set(port, "authenticate", original))


async def _set(obj: Any, name: str, value: Any) -> None:
    setattr(obj, name, value)
