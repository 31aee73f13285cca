"""The gateway's login to the upstream PostgreSQL server: SCRAM math against the
RFC 7677 vector, hostile server messages, scripted exchanges, and every
password method against a real cluster (``pg_cluster``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres import upstream_auth
from jitgate.gateways.postgres.config import Upstream
from jitgate.gateways.postgres.upstream_auth import (
    MAX_ITERATIONS,
    Recv,
    ScramClient,
    ScramError,
    Send,
    UpstreamAuthFailed,
    authenticate_upstream,
    md5_password,
    saslprep,
    scram_password,
)
from pgcluster import PgCluster

# RFC 7677 section 3.
USER, PASSWORD, CLIENT_NONCE = "user", "pencil", "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = CLIENT_NONCE + "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SALT = "W22ZaJ0SNY7soEsUEjb6gQ=="
SERVER_FIRST = f"r={SERVER_NONCE},s={SALT},i=4096".encode()
CLIENT_FINAL = f"c=biws,r={SERVER_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".encode()
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_client() -> ScramClient:
    return ScramClient(USER, PASSWORD, nonce=CLIENT_NONCE)


# --- the SCRAM math -------------------------------------------------------------------


def test_rfc7677_vector() -> None:
    client = rfc_client()
    assert client.first_message() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert client.final_message(SERVER_FIRST) == CLIENT_FINAL
    assert not client.verified
    client.verify_final(SERVER_FINAL)
    assert client.verified


def test_random_nonces_differ_and_are_valid() -> None:
    first, second = ScramClient("", "pw").first_message(), ScramClient("", "pw").first_message()
    assert first != second
    assert first.startswith(b"n,,n=,r=")
    assert b"," not in first[len(b"n,,n=,r=") :]


def test_user_names_are_escaped() -> None:
    assert ScramClient("a=b,c", "pw", nonce="xyz").first_message() == b"n,,n=a=3Db=2Cc,r=xyz"


def test_a_bad_client_nonce_is_refused() -> None:
    with pytest.raises(ValueError, match="nonce"):
        ScramClient(USER, PASSWORD, nonce="has,comma")


def test_a_wrong_server_signature_is_rejected() -> None:
    client = rfc_client()
    client.final_message(SERVER_FIRST)
    forged = base64.b64encode(b"\x00" * 32)
    with pytest.raises(ScramError, match="signature is wrong") as caught:
        client.verify_final(b"v=" + forged)
    assert caught.value.sqlstate == "28000"
    assert not client.verified


def test_a_server_that_knows_another_password_is_rejected() -> None:
    # A server with a verifier for another password signs consistently, but wrongly.
    honest = ScramClient(USER, "not-pencil", nonce=CLIENT_NONCE)
    honest.final_message(SERVER_FIRST)
    with pytest.raises(ScramError, match="signature is wrong"):
        honest.verify_final(SERVER_FINAL)


@pytest.mark.parametrize(
    ("server_final", "message"),
    [
        (b"e=invalid-proof", "invalid-proof"),
        (b"x=abc", "expected v="),
        (b"v=***", "not valid base64"),
        (b"", "malformed"),
        (b"v", "malformed"),
        ("v=é".encode(), "not ASCII"),
    ],
)
def test_malformed_server_final_messages(server_final: bytes, message: str) -> None:
    client = rfc_client()
    client.final_message(SERVER_FIRST)
    with pytest.raises(ScramError, match=message):
        client.verify_final(server_final)


def test_messages_out_of_order() -> None:
    client = rfc_client()
    with pytest.raises(ScramError, match="before the server-first"):
        client.verify_final(SERVER_FINAL)
    client.final_message(SERVER_FIRST)
    with pytest.raises(ScramError, match="second server-first"):
        client.final_message(SERVER_FIRST)
    client.verify_final(SERVER_FINAL)
    with pytest.raises(ScramError, match="second server-final"):
        client.verify_final(SERVER_FINAL)


@pytest.mark.parametrize(
    ("server_first", "message"),
    [
        (f"s={SALT},i=4096", "expected r=, s= and i="),
        (f"r={SERVER_NONCE},i=4096", "expected r=, s= and i="),
        (f"r={SERVER_NONCE},s={SALT}", "expected r=, s= and i="),
        (f"i=4096,s={SALT},r={SERVER_NONCE}", "expected r=, s= and i="),
        (f"r=someoneElsesNonce123,s={SALT},i=4096", "does not extend"),
        (f"r={CLIENT_NONCE},s={SALT},i=4096", "does not extend"),
        (f"r=rOprNGfwEbe,s={SALT},i=4096", "does not extend"),
        (f"r={SERVER_NONCE},s={SALT},i=0", "out of range"),
        (f"r={SERVER_NONCE},s={SALT},i=10000001", "out of range"),
        (f"r={SERVER_NONCE},s={SALT},i=999999999999", "out of range"),
        (f"r={SERVER_NONCE},s={SALT},i=-1", "not a number"),
        (f"r={SERVER_NONCE},s={SALT},i=+5", "not a number"),
        (f"r={SERVER_NONCE},s={SALT},i= 5", "not a number"),
        (f"r={SERVER_NONCE},s={SALT},i=4_096", "not a number"),
        (f"r={SERVER_NONCE},s={SALT},i=" + "9" * 5000, "not a number"),
        (f"r={SERVER_NONCE},s={SALT},i=", "not a number"),
        (f"r={SERVER_NONCE},s=!!notbase64!!,i=4096", "salt is not valid base64"),
        (f"r={SERVER_NONCE},s=,i=4096", "empty salt"),
        (f"m=ext,r={SERVER_NONCE},s={SALT},i=4096", "unsupported extension"),
        ("", "malformed"),
        (",,,", "malformed"),
        ("r", "malformed"),
        ("garbage", "malformed"),
        (f"r={SERVER_NONCE},s={SALT},i=4096,", "malformed"),
    ],
)
def test_malformed_server_first_messages(server_first: str, message: str) -> None:
    with pytest.raises(ScramError, match=message):
        rfc_client().final_message(server_first.encode())


def test_non_ascii_server_first_is_rejected() -> None:
    with pytest.raises(ScramError, match="not ASCII"):
        rfc_client().final_message(f"r={SERVER_NONCE}é,s={SALT},i=4096".encode())
    with pytest.raises(ScramError, match="not ASCII"):
        rfc_client().final_message(b"\xff\xfe")


def test_extensions_after_the_iteration_count_are_ignored() -> None:
    client = rfc_client()
    client.final_message(SERVER_FIRST + b",x=future")
    # The extension is part of the AuthMessage, so the RFC's signature no longer matches.
    with pytest.raises(ScramError, match="signature is wrong"):
        client.verify_final(SERVER_FINAL)


def test_the_iteration_bound() -> None:
    assert MAX_ITERATIONS == 10_000_000


_B64 = st.binary(min_size=0, max_size=24).map(lambda b: base64.b64encode(b).decode())
_ATTR_VALUE = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
)
_NONCE = st.one_of(
    st.just(SERVER_NONCE),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12).map(
        lambda suffix: CLIENT_NONCE + suffix
    ),
    _ATTR_VALUE,
)
# Iteration counts stay small so a message that happens to be valid is cheap.
_ITERATIONS = st.one_of(st.integers(-3, 3000).map(str), _ATTR_VALUE)


@st.composite
def server_first_messages(draw: st.DrawFn) -> bytes:
    attributes = [
        "r=" + draw(_NONCE),
        "s=" + draw(st.one_of(_B64, _ATTR_VALUE)),
        "i=" + draw(_ITERATIONS),
    ]
    extra = draw(st.lists(st.tuples(st.sampled_from("mrsixv,= "), _ATTR_VALUE), max_size=2))
    attributes += [f"{name}={value}" for name, value in extra]
    order = draw(st.permutations(attributes))
    text = ",".join(order if draw(st.booleans()) else attributes)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=8))
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server_first=st.one_of(st.binary(max_size=200), server_first_messages()))
def test_random_server_first_messages_only_raise_scram_errors(server_first: bytes) -> None:
    client = rfc_client()
    try:
        final = client.final_message(server_first)
    except ScramError:
        return
    assert final.startswith(b"c=biws,r=" + CLIENT_NONCE.encode())


@settings(max_examples=200, deadline=None)
@given(server_final=st.binary(max_size=80))
def test_random_server_final_messages_only_raise_scram_errors(server_final: bytes) -> None:
    client = rfc_client()
    client.final_message(SERVER_FIRST)
    with pytest.raises(ScramError):
        client.verify_final(server_final)


# --- SASLprep (RFC 4013 section 3) ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "prepared"),
    [
        ("I\u00adX", "IX"),  # soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # NFKC
        ("a\u00a0b", "a b"),  # non-ASCII space mapped to space
        ("\ufb01", "fi"),
    ],
)
def test_saslprep(value: str, prepared: str) -> None:
    assert saslprep(value) == prepared


@pytest.mark.parametrize("value", ["\u0007", "\u0627\u0031", "a\ue000b", "a\U000e0001"])
def test_saslprep_prohibits(value: str) -> None:
    with pytest.raises(ValueError, match="SASLprep"):
        saslprep(value)


def test_a_password_saslprep_rejects_is_used_raw() -> None:
    # As PostgreSQL does: the server built the verifier from the raw bytes too.
    assert scram_password("bell\u0007") == b"bell\x07"
    assert scram_password("I\u00adX") == b"IX"


# --- scripted exchanges (no server) ---------------------------------------------------


def auth(code: int, extra: bytes = b"") -> tuple[int, bytes]:
    return ord("R"), struct.pack("!i", code) + extra


def error(sqlstate: str, text: str) -> tuple[int, bytes]:
    return ord("E"), pg.error_response(sqlstate, text, severity="FATAL")[5:]


class Script:
    """A fake server: the messages it will send, and what the client sent."""

    def __init__(self, *messages: tuple[int, bytes]) -> None:
        self.inbox = list(messages)
        self.sent: list[bytes] = []

    async def recv(self) -> tuple[int, bytes]:
        assert self.inbox, "the client read past the script"
        return self.inbox.pop(0)

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def run(self, user: str = "alice", password: str | None = "secret") -> None:
        await authenticate_upstream(self.recv, self.send, user=user, password=password)


async def test_trust() -> None:
    script = Script(auth(pg.AUTH_OK))
    await script.run()
    assert script.sent == []


async def test_cleartext() -> None:
    script = Script(auth(pg.AUTH_CLEARTEXT), auth(pg.AUTH_OK))
    await script.run(password="s3cret")
    assert script.sent == [pg.message(b"p", b"s3cret\x00")]


async def test_md5() -> None:
    salt = b"\x01\x02\x03\x04"
    script = Script(auth(pg.AUTH_MD5, salt), auth(pg.AUTH_OK))
    await script.run(user="alice", password="secret")
    inner = hashlib.md5(b"secretalice").hexdigest()
    expected = b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
    assert md5_password("alice", "secret", salt) == expected
    assert script.sent == [pg.message(b"p", expected + b"\x00")]


async def test_notices_during_authentication_are_skipped() -> None:
    notice = pg.notice_response("hello")
    script = Script((ord("N"), notice[5:]), auth(pg.AUTH_OK))
    await script.run()


async def test_an_error_response_carries_the_sqlstate() -> None:
    script = Script(auth(pg.AUTH_CLEARTEXT), error("28P01", "password authentication failed"))
    with pytest.raises(UpstreamAuthFailed, match="password authentication failed") as caught:
        await script.run()
    assert caught.value.sqlstate == "28P01"
    assert caught.value.from_server


@pytest.mark.parametrize("code", [pg.AUTH_CLEARTEXT, pg.AUTH_MD5, pg.AUTH_SASL])
async def test_a_missing_password_is_a_clear_error(code: int) -> None:
    extra = {pg.AUTH_MD5: b"salt", pg.AUTH_SASL: b"SCRAM-SHA-256\x00\x00"}.get(code, b"")
    script = Script(auth(code, extra))
    with pytest.raises(UpstreamAuthFailed, match="no password is configured") as caught:
        await script.run(password=None)
    assert not caught.value.from_server
    assert script.sent == []


@pytest.mark.parametrize(
    ("code", "name"), [(2, "Kerberos V5"), (7, "GSSAPI"), (8, "GSSAPI"), (9, "SSPI")]
)
async def test_unsupported_methods(code: int, name: str) -> None:
    with pytest.raises(UpstreamAuthFailed, match=f"{name} authentication .* not support"):
        await Script(auth(code)).run()


async def test_an_unknown_method() -> None:
    with pytest.raises(UpstreamAuthFailed, match="unknown authentication request 42") as caught:
        await Script(auth(42)).run()
    assert caught.value.sqlstate == "08P01"


async def test_channel_binding_only_is_refused() -> None:
    script = Script(auth(pg.AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00\x00"))
    with pytest.raises(UpstreamAuthFailed, match="channel binding"):
        await script.run()
    assert script.sent == []


async def test_plus_and_plain_scram_offered_picks_plain() -> None:
    script = Script(auth(pg.AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"))
    with pytest.raises(AssertionError, match="read past"):
        await script.run()
    (initial,) = script.sent
    assert initial.startswith(b"p")
    assert b"SCRAM-SHA-256\x00" in initial
    assert b"n,,n=,r=" in initial


async def test_ok_before_the_server_proved_itself_is_refused() -> None:
    # A rogue server skips the final message: it never had to know the verifier.
    class Rogue(Script):
        async def send(self, data: bytes) -> None:
            await super().send(data)
            if len(self.sent) == 1:
                nonce = data.split(b"r=", 1)[1]
                self.inbox.insert(0, auth(pg.AUTH_SASL_CONTINUE, b"r=" + nonce + b"x,s=QUJD,i=1"))

    script = Rogue(auth(pg.AUTH_SASL, b"SCRAM-SHA-256\x00\x00"), auth(pg.AUTH_OK))
    with pytest.raises(ScramError, match="without proving itself"):
        await script.run()


@pytest.mark.parametrize(
    "messages",
    [
        [(ord("Z"), b"I")],
        [(ord("R"), b"\x00\x00")],
        [auth(pg.AUTH_MD5, b"toolongsalt")],
        [auth(pg.AUTH_SASL_CONTINUE, b"r=x")],
        [auth(pg.AUTH_SASL_FINAL, b"v=x")],
        [auth(pg.AUTH_SASL, b"SCRAM-SHA-256")],
    ],
)
async def test_protocol_violations(messages: list[tuple[int, bytes]]) -> None:
    with pytest.raises(UpstreamAuthFailed) as caught:
        await Script(*messages).run()
    assert caught.value.sqlstate == "08P01"


# --- against a real server ------------------------------------------------------------


@asynccontextmanager
async def connect(
    cluster: PgCluster, user: str, database: str = "app"
) -> AsyncIterator[tuple[Recv, Send]]:
    """A connection that sent its StartupMessage: (recv, send)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(cluster.host, cluster.port), 10)
    frames = pg.Frames(1 << 20)

    async def recv() -> tuple[int, bytes]:
        while True:
            found = frames.next()
            if found is not None:
                return found
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                raise ConnectionError("the server closed the connection")
            frames.feed(data)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    try:
        await send(pg.startup_message({"user": user, "database": database}))
        yield recv, send
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def session_user(recv: Recv, send: Send) -> str:
    """Read up to ReadyForQuery, then ask the server who we are."""
    kinds = []
    while True:
        kind, body = await recv()
        kinds.append(chr(kind))
        if kind == ord("Z"):
            assert body == b"I"
            break
        assert kind in (ord("S"), ord("K"), ord("N")), (chr(kind), body)
    assert "K" in kinds
    assert "S" in kinds
    await send(pg.query("SELECT session_user"))
    value = None
    while True:
        kind, body = await recv()
        if kind == ord("D"):
            (length,) = struct.unpack_from("!i", body, 2)
            value = body[6 : 6 + length].decode()
        elif kind == ord("E"):
            raise AssertionError(pg.decode_fields(body))
        elif kind == ord("Z"):
            break
    await send(pg.TERMINATE)
    assert value is not None
    return value


@pytest.mark.parametrize("user", ["scram_user", "scram_nfkc", "md5_user", "clear_user"])
async def test_password_methods_against_postgres(pg_cluster: PgCluster, user: str) -> None:
    async with connect(pg_cluster, user) as (recv, send):
        await authenticate_upstream(recv, send, user=user, password=pg_cluster.passwords[user])
        assert await session_user(recv, send) == user


async def test_trust_against_postgres(pg_cluster: PgCluster) -> None:
    user = pg_cluster.trust_user
    async with connect(pg_cluster, user) as (recv, send):
        await authenticate_upstream(recv, send, user=user, password=None)
        assert await session_user(recv, send) == user


async def test_a_password_is_ignored_under_trust(pg_cluster: PgCluster) -> None:
    user = pg_cluster.trust_user
    async with connect(pg_cluster, user) as (recv, send):
        await authenticate_upstream(recv, send, user=user, password="unused")
        assert await session_user(recv, send) == user


@pytest.mark.parametrize("user", ["scram_user", "scram_nfkc", "md5_user", "clear_user"])
async def test_a_wrong_password_is_28P01(pg_cluster: PgCluster, user: str) -> None:
    async with connect(pg_cluster, user) as (recv, send):
        with pytest.raises(UpstreamAuthFailed) as caught:
            await authenticate_upstream(recv, send, user=user, password="wrong-password")
    assert caught.value.sqlstate == "28P01"
    assert caught.value.from_server
    assert "password authentication failed" in str(caught.value)
    assert "wrong-password" not in str(caught.value)


async def test_postgres_saslpreps_as_we_do(
    pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = pg_cluster.passwords["scram_nfkc"]
    prepared = saslprep(raw)
    assert prepared != raw
    # The prepared form is an equivalent password ...
    async with connect(pg_cluster, "scram_nfkc") as (recv, send):
        await authenticate_upstream(recv, send, user="scram_nfkc", password=prepared)
    # ... and without SASLprep the server's verifier does not match.
    monkeypatch.setattr(upstream_auth, "scram_password", lambda p: p.encode("utf-8"))
    async with connect(pg_cluster, "scram_nfkc") as (recv, send):
        with pytest.raises(UpstreamAuthFailed) as caught:
            await authenticate_upstream(recv, send, user="scram_nfkc", password=raw)
    assert caught.value.sqlstate == "28P01"


async def test_a_missing_password_against_postgres(pg_cluster: PgCluster) -> None:
    async with connect(pg_cluster, "scram_user") as (recv, send):
        with pytest.raises(UpstreamAuthFailed, match="no password is configured") as caught:
            await authenticate_upstream(recv, send, user="scram_user", password=None)
    assert not caught.value.from_server


async def test_an_unknown_database_fails_after_authentication(pg_cluster: PgCluster) -> None:
    # The server checks the database after AuthenticationOk: the caller sees the error.
    user = pg_cluster.trust_user
    async with connect(pg_cluster, user, database="nope") as (recv, send):
        await authenticate_upstream(recv, send, user=user, password=None)
        kind, body = await recv()
    assert kind == ord("E")
    assert pg.decode_fields(body)[pg.CODE] == "3D000"


async def test_an_upstream_from_the_fixture_dsn_logs_in(pg_cluster: PgCluster) -> None:
    """The config's DSN parsing and the login agree on awkward passwords."""
    upstream = Upstream.model_validate(pg_cluster.dsn("scram_user"))
    assert upstream.resolve_password() == pg_cluster.passwords["scram_user"]
    assert (upstream.host, upstream.port, upstream.database) == (
        pg_cluster.host,
        pg_cluster.port,
        "app",
    )
    async with connect(pg_cluster, upstream.user, upstream.database) as (recv, send):
        await authenticate_upstream(
            recv, send, user=upstream.user, password=upstream.resolve_password()
        )
        assert await session_user(recv, send) == "scram_user"


def test_without_postgresql_the_fixture_fails_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import pgcluster

    monkeypatch.setattr(pgcluster, "find_bin_dir", lambda: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        pgcluster.start_cluster()
