"""Shared pieces of the PostgreSQL gateway tests: a real gateway, raw clients.

:func:`gateway_env` runs a :class:`PostgresGateway` on port 0 in front of a
test database on the local PostgreSQL, with a real in-process
:class:`ApprovalService` (on a copy of the migrated SQLite template) and a real
:class:`StatementRecorder`. :class:`RawClient` speaks the v3 protocol by hand
over asyncio streams, with the builders of :mod:`jitgate.gateways.postgres.protocol`,
so tests can send exactly the bytes they want and read exactly what comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import shutil
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jitgate.evaluator import Evaluator
from jitgate.gateways.inprocess import InProcessApprovals
from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres.config import GatewayConfig
from jitgate.gateways.postgres.gateway import PostgresGateway
from jitgate.gateways.recorder import StatementRecorder
from jitgate.policy import load_policy_text
from jitgate.service import ApprovalService, Principal
from jitgate.store import Database, Identity

#: TRUNCATE is denied; DELETE and DROP wait for `approvers`; so does whatever the
#: analyzer finds at least medium risk in production (PREPARE ... AS DELETE, DO,
#: EXECUTE, SET session_replication_role, ...). Everything else is allowed.
GATEWAY_POLICY = """
version: 1
name: gateway-tests
default: allow
defaults: {ttl: 1h, grant_ttl: 5m}
chains:
  approvers:
    stages: [{name: approvers, groups: [approvers]}]
rules:
  - {id: no-truncate, match: {statements: [truncate]}, outcome: deny, message: never truncate}
  - id: hold-delete
    match: {statements: [delete, "drop*"]}
    outcome: require_approval
    chain: approvers
  - id: production-dangerous
    match: {environments: [production], risk: medium}
    outcome: require_approval
    chain: approvers
"""

USERS: dict[str, tuple[str, ...]] = {"ann": ("dev",), "bob": ("approvers",)}
TARGET = "app"


def upstream_dsn(pg_url: str) -> str:
    """The gateway's upstream DSN for a test database URL (no TLS to the local server)."""
    return pg_url.split("?", 1)[0] + "?sslmode=disable"


@dataclass
class GatewayEnv:
    gateway: PostgresGateway
    service: ApprovalService
    port: InProcessApprovals
    recorder: StatementRecorder
    db: Database
    upstream_url: str
    tokens: dict[str, str] = field(default_factory=dict)
    principals: dict[str, Principal] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.gateway.address[0]

    @property
    def gw_port(self) -> int:
        return self.gateway.address[1]

    def conninfo(self, user: str = "ann", **extra: Any) -> dict[str, Any]:
        """psycopg connection arguments for ``user`` through the gateway."""
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.gw_port,
            "user": user,
            "password": self.tokens[user],
            "dbname": TARGET,
            "sslmode": "disable",
            "connect_timeout": 10,
        }
        args.update(extra)
        return args

    async def approve(self, request_id: str, who: str = "bob") -> None:
        await self.service.approve(self.principals[who], request_id, "ok")

    async def deny(self, request_id: str, who: str = "bob") -> None:
        await self.service.deny(self.principals[who], request_id, "no")

    async def login(self, user: str = "ann", **kwargs: Any) -> RawClient:
        return await RawClient.login(self.host, self.gw_port, user, self.tokens[user], **kwargs)


async def create_table_t(upstream_url: str, rows: int) -> None:
    """Table ``t (id int PRIMARY KEY, v text)`` upstream, rows 1..``rows`` (v = 'v' || id)."""
    conn = await asyncpg.connect(upstream_url, timeout=10)
    try:
        await conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);"
            f"INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, {rows}) i"
        )
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def gateway_env(
    upstream_url: str,
    sqlite_template: Path,
    workdir: Path,
    *,
    config: GatewayConfig | None = None,
    prepare: Callable[[PostgresGateway], None] | None = None,
    **config_changes: Any,
) -> AsyncIterator[GatewayEnv]:
    """A gateway in front of ``upstream_url``, listening on 127.0.0.1 (a free port);
    ``prepare`` sees it before it starts listening."""
    path = workdir / "jitgate-gateway.db"
    shutil.copyfile(sqlite_template, path)
    db = Database(f"sqlite:///{path}")
    service = ApprovalService(db, Evaluator(load_policy_text(GATEWAY_POLICY, "gateway-tests")))
    tokens: dict[str, str] = {}
    async with db.transaction() as session:
        identity = Identity(session)
        for name, groups in USERS.items():
            await identity.add_user(name, groups)
            tokens[name], _ = await identity.create_token(name, "test")
    principals: dict[str, Principal] = {}
    for name, token in tokens.items():
        principal = await service.authenticate(token)
        assert principal is not None
        principals[name] = principal
    if config is None:
        config = GatewayConfig.single(
            "127.0.0.1:0", upstream_dsn(upstream_url), "production", TARGET
        )
    if config_changes:
        config = config.model_copy(update=config_changes)
    port = InProcessApprovals(service, gateway="pg-test")
    recorder = StatementRecorder(port, max_delay=0.01)
    recorder.start()
    gateway = PostgresGateway(config, port, recorder)
    if prepare is not None:
        prepare(gateway)
    await gateway.start()
    env = GatewayEnv(gateway, service, port, recorder, db, upstream_url, tokens, principals)
    try:
        yield env
    finally:
        await gateway.stop()
        await recorder.close(timeout=5)
        await port.close()
        await service.stop()
        await db.close()


# --- a raw protocol client -----------------------------------------------------------


class Closed(Exception):
    """The gateway closed the connection."""


Message = tuple[str, bytes]


def error_fields(message: Message) -> dict[str, str]:
    return pg.decode_fields(message[1])


def errors(messages: Iterable[Message]) -> list[dict[str, str]]:
    return [error_fields(m) for m in messages if m[0] == "E"]


def codes(messages: Iterable[Message]) -> list[str]:
    return [e.get("C", "?") for e in errors(messages)]


def data_rows(messages: Iterable[Message]) -> list[list[str | None]]:
    """The text values of the DataRow messages."""
    rows: list[list[str | None]] = []
    for kind, body in messages:
        if kind != "D":
            continue
        (count,) = struct.unpack_from("!h", body)
        pos = 2
        row: list[str | None] = []
        for _ in range(count):
            (length,) = struct.unpack_from("!i", body, pos)
            pos += 4
            if length < 0:
                row.append(None)
            else:
                row.append(body[pos : pos + length].decode())
                pos += length
        rows.append(row)
    return rows


def notices(messages: Iterable[Message]) -> list[str]:
    return [pg.decode_fields(body).get("M", "") for kind, body in messages if kind == "N"]


def held_request_id(messages: Iterable[Message]) -> str | None:
    """The request id of a 'statement held for approval as <id>' notice."""
    for text in notices(messages):
        if "held for approval as " in text:
            return text.split("held for approval as ", 1)[1].split(";", 1)[0].strip()
    return None


# Frontend message builders (the protocol module has those the gateway itself writes).


def parse(name: str, sql: str, types: Sequence[int] = ()) -> bytes:
    body = pg.cstring(name) + pg.cstring(sql) + struct.pack("!h", len(types))
    body += b"".join(struct.pack("!I", t) for t in types)
    return pg.message(b"P", body)


def bind(
    portal: str,
    statement: str,
    params: Sequence[bytes | None] = (),
    formats: Sequence[int] = (),
    results: Sequence[int] = (),
) -> bytes:
    body = pg.cstring(portal) + pg.cstring(statement)
    body += struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    body += struct.pack("!h", len(results)) + b"".join(struct.pack("!h", f) for f in results)
    return pg.message(b"B", body)


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return pg.message(b"E", pg.cstring(portal) + struct.pack("!i", max_rows))


def describe(kind: str, name: str) -> bytes:
    return pg.message(b"D", kind.encode() + pg.cstring(name))


def close(kind: str, name: str) -> bytes:
    return pg.message(b"C", kind.encode() + pg.cstring(name))


def query(sql: str | bytes) -> bytes:
    data = sql.encode() if isinstance(sql, str) else sql
    return pg.message(b"Q", data + b"\x00")


def function_call(oid: int, args: Sequence[bytes] = ()) -> bytes:
    body = struct.pack("!I", oid) + struct.pack("!h", 0) + struct.pack("!h", len(args))
    body += b"".join(struct.pack("!i", len(a)) + a for a in args)
    body += struct.pack("!h", 0)
    return pg.message(b"F", body)


SYNC = pg.SYNC
FLUSH = pg.FLUSH


class RawClient:
    """A hand-driven protocol connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.startup: list[Message] = []

    @classmethod
    async def connect(cls, host: str, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    @classmethod
    async def login(
        cls,
        host: str,
        port: int,
        user: str,
        token: str,
        *,
        database: str = TARGET,
        params: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> RawClient:
        client = await cls.connect(host, port)
        startup = {"user": user, "database": database, **(params or {})}
        await client.send(pg.startup_message(startup))
        kind, body = await client.read(timeout)
        assert (kind, body) == ("R", struct.pack("!i", pg.AUTH_CLEARTEXT))
        await client.send(pg.message(b"p", pg.cstring(token)))
        client.startup = await client.until_ready(timeout)
        assert not codes(client.startup), errors(client.startup)
        return client

    async def send(self, *parts: bytes) -> None:
        self.writer.write(b"".join(parts))
        await self.writer.drain()

    async def read(self, timeout: float = 10.0) -> Message:
        try:
            async with asyncio.timeout(timeout):
                header = await self.reader.readexactly(5)
                (length,) = struct.unpack("!I", header[1:])
                body = await self.reader.readexactly(length - 4)
        except asyncio.IncompleteReadError as exc:
            raise Closed(f"closed after {len(exc.partial)} byte(s) of a message") from None
        except ConnectionError as exc:
            raise Closed(str(exc)) from None
        return chr(header[0]), body

    async def until_ready(self, timeout: float = 10.0) -> list[Message]:
        """Messages up to and including the next ReadyForQuery."""
        out: list[Message] = []
        while True:
            message = await self.read(timeout)
            out.append(message)
            if message[0] == "Z":
                return out

    async def until_closed(self, timeout: float = 10.0) -> list[Message]:
        """Every message until the gateway closes the connection."""
        out: list[Message] = []
        while True:
            try:
                out.append(await self.read(timeout))
            except Closed:
                return out

    async def round(self, *parts: bytes, timeout: float = 10.0) -> list[Message]:
        """Send ``parts`` and read up to the next ReadyForQuery."""
        await self.send(*parts)
        return await self.until_ready(timeout)

    async def simple(self, sql: str, timeout: float = 10.0) -> list[Message]:
        return await self.round(query(sql), timeout=timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.writer.is_closing():
                self.writer.write(pg.TERMINATE)
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)


def self_signed(
    name: str, *, ca: bool = False, ip: str | None = None, days: int = 1
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed certificate for ``name``: a CA (``ca``) or a server
    certificate for the address ``ip``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256()), key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
