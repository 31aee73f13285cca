"""The PostgreSQL v3 wire protocol codec (jitgate.gateways.postgres.protocol).

Round trips through the builders and decoders, framing under every chunking
of a stream, and the promise of the module: on arbitrary bytes a decoder
returns or raises :class:`ProtocolViolation`, nothing else, and a declared
length is checked before anything is buffered for it.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from jitgate.gateways.postgres import protocol as pg
from jitgate.gateways.postgres.protocol import ProtocolViolation
from pg_gateway_support import bind, close, describe, execute, parse

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Text a protocol string can hold: no NUL, no lone surrogates (not encodable).
names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40
)
nonempty_names = names.filter(bool)


# --- startup packets ------------------------------------------------------------------


@FAST
@given(
    params=st.dictionaries(nonempty_names, names, max_size=12),
    minor=st.integers(0, 0xFFFF),
)
def test_startup_message_round_trip(params: dict[str, str], minor: int) -> None:
    version = (3 << 16) | minor
    packet = pg.startup_message(params, version)
    assume(len(packet) <= pg.MAX_STARTUP)
    assert pg.startup_length(packet[:4]) == len(packet)
    decoded = pg.decode_startup(packet)
    assert decoded == pg.Startup(version, params)


def test_startup_message_with_empty_values_and_no_parameters() -> None:
    for params in ({}, {"user": ""}, {"a": "", "b": ""}, {"user": "ann", "options": ""}):
        assert pg.decode_startup(pg.startup_message(params)) == pg.Startup(pg.PROTOCOL_V3, params)


def test_special_startup_packets() -> None:
    assert pg.decode_startup(pg.SSL_REQUEST_PACKET) == pg.SSLRequest()
    assert pg.decode_startup(struct.pack("!ii", 8, pg.GSSENC_REQUEST)) == pg.GSSENCRequest()
    assert pg.decode_startup(pg.cancel_request(-5, 2**31 - 1)) == pg.CancelRequest(-5, 2**31 - 1)
    # The codes with a wrong length are not those requests (nor protocol 3).
    for code in (pg.SSL_REQUEST, pg.GSSENC_REQUEST, pg.CANCEL_REQUEST):
        with pytest.raises(ProtocolViolation, match="unsupported frontend protocol"):
            pg.decode_startup(struct.pack("!iiI", 12, code, 0))


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        (b"", "truncated"),
        (struct.pack("!i", 8), "truncated"),
        (struct.pack("!ii", 7, pg.PROTOCOL_V3), "invalid startup packet length 7"),
        (struct.pack("!ii", 9, pg.PROTOCOL_V3), "truncated"),  # says 9, is 8
        (struct.pack("!ii", -1, pg.PROTOCOL_V3), "invalid startup packet length -1"),
        (struct.pack("!ii", 2**31 - 1, pg.PROTOCOL_V3), "invalid startup packet length"),
        (struct.pack("!ii", 8, 2 << 16), "unsupported frontend protocol 2.0"),
        (struct.pack("!ii", 8, 4 << 16), "unsupported frontend protocol 4.0"),
        (struct.pack("!ii", 8, pg.PROTOCOL_V3), "not terminated"),
        (struct.pack("!ii", 10, pg.PROTOCOL_V3) + b"a\x00", "not name/value pairs"),
        (struct.pack("!ii", 12, pg.PROTOCOL_V3) + b"\xff\x00x\x00", "not UTF-8"),
        (struct.pack("!ii", 12, pg.PROTOCOL_V3) + b"\x00x\x00\x00", "empty startup parameter"),
        (pg.startup_message({"p": "x" * pg.MAX_STARTUP}), "invalid startup packet length"),
    ],
)
def test_malformed_startup_packets(packet: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        pg.decode_startup(packet)


def _startup_body(*fields: bytes) -> bytes:
    body = b"".join(f + b"\x00" for f in fields) + b"\x00"
    return struct.pack("!ii", len(body) + 8, pg.PROTOCOL_V3) + body


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ((b"user", b"\xff\xfe"), "the value of startup parameter 'user' is not UTF-8"),
        ((b"user", b"ann", b"database", b"app\xc3"), "startup parameter 'database' is not"),
        ((b"user", b"ann", b"options\x80", b"x"), "a startup parameter name is not UTF-8"),
        # Encoded surrogates and overlong forms are not UTF-8 either.
        ((b"user", b"\xed\xa0\x80"), "'user' is not UTF-8"),
        ((b"user", b"\xc0\xaf"), "'user' is not UTF-8"),
        ((b"application_name", b"\xe2\x82"), "'application_name' is not UTF-8"),
    ],
)
def test_startup_names_are_decoded_strictly(fields: tuple[bytes, ...], match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        pg.decode_startup(_startup_body(*fields))


def test_startup_names_in_utf8() -> None:
    packet = _startup_body(b"user", "zoë".encode(), b"database", "日本".encode())
    decoded = pg.decode_startup(packet)
    assert isinstance(decoded, pg.Startup)
    assert decoded.parameters == {"user": "zoë", "database": "日本"}


@pytest.mark.parametrize("length", [-(2**31), -1, 0, 4, 7, pg.MAX_STARTUP + 1, 2**31 - 1])
def test_startup_length_is_checked(length: int) -> None:
    with pytest.raises(ProtocolViolation):
        pg.startup_length(struct.pack("!i", length))


@pytest.mark.parametrize("length", [8, 9, 1000, pg.MAX_STARTUP])
def test_startup_length_in_range(length: int) -> None:
    assert pg.startup_length(struct.pack("!i", length)) == length


# --- ErrorResponse, NoticeResponse ---------------------------------------------------------

sqlstates = st.text(st.sampled_from("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=5, max_size=5)
texts = st.text(st.characters(codec="utf-8"), max_size=200)


@FAST
@given(
    sqlstate=sqlstates,
    text=texts,
    detail=st.none() | texts,
    hint=st.none() | texts,
    severity=st.sampled_from(["ERROR", "FATAL", "PANIC"]),
)
def test_error_response_round_trip(
    sqlstate: str, text: str, detail: str | None, hint: str | None, severity: str
) -> None:
    data = pg.error_response(sqlstate, text, detail=detail, hint=hint, severity=severity)
    frames = pg.Frames(1 << 20)
    frames.feed(data)
    kind, body = frames.next() or (0, b"")
    assert kind == ord("E")
    assert len(frames) == 0
    fields = pg.decode_fields(body)
    expected = {"S": severity, "V": severity, "C": sqlstate, "M": text.replace("\x00", "\\0")}
    if detail:
        expected["D"] = detail.replace("\x00", "\\0")
    if hint:
        expected["H"] = hint.replace("\x00", "\\0")
    assert fields == expected


@FAST
@given(text=texts, sqlstate=sqlstates)
def test_notice_response_round_trip(text: str, sqlstate: str) -> None:
    data = pg.notice_response(text, sqlstate=sqlstate)
    assert data[:1] == b"N"
    fields = pg.decode_fields(data[5:])
    assert fields["S"] == fields["V"] == "NOTICE"
    assert fields["C"] == sqlstate
    assert fields["M"] == text.replace("\x00", "\\0")


def test_decode_fields_edge_cases() -> None:
    assert pg.decode_fields(b"") == {}
    assert pg.decode_fields(b"\x00") == {}
    assert pg.decode_fields(b"Mhi\x00\x00trailing ignored") == {"M": "hi"}
    assert pg.decode_fields(b"M\xff\x00\x00") == {"M": "\ufffd"}
    with pytest.raises(ProtocolViolation):
        pg.decode_fields(b"Mno terminator")


# --- framing -----------------------------------------------------------------------------

kinds = st.integers(0, 255)
bodies = st.binary(max_size=300)
streams = st.lists(st.tuples(kinds, bodies), max_size=25)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[last:point])
        last = point
    return chunks


@settings(max_examples=400, deadline=None)
@given(messages=streams, cuts=st.lists(st.integers(0, 10_000), max_size=40))
@example(messages=[(ord("Q"), b"SELECT 1\x00"), (ord("S"), b"")], cuts=[1, 2, 3, 4, 5, 6, 7])
def test_frames_give_the_same_messages_whatever_the_chunking(
    messages: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(pg.message(bytes([k]), b) for k, b in messages)
    frames = pg.Frames(1 << 20)
    out: list[tuple[int, bytes]] = []
    for chunk in _split(stream, cuts):
        frames.feed(chunk)
        while (item := frames.next()) is not None:
            out.append(item)
            # start/end delimit the message in the buffer until the next feed.
            assert frames.span(frames.start, frames.end) == pg.message(bytes([item[0]]), item[1])
    assert out == messages
    assert len(frames) == 0
    assert frames.take_rest() == b""


@settings(max_examples=300, deadline=None)
@given(messages=streams, cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_skip_and_span_agree_with_next(
    messages: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(pg.message(bytes([k]), b) for k, b in messages)
    frames = pg.Frames(1 << 20)
    raw: list[bytes] = []
    for chunk in _split(stream, cuts):
        frames.feed(chunk)
        run = frames.position
        taken: list[bytes] = []
        while (kind := frames.skip()) is not None:
            message = frames.span(frames.start, frames.end)
            assert message[0] == kind
            taken.append(message)
        # Everything taken since the feed is one contiguous span.
        assert frames.span(run, frames.position) == b"".join(taken)
        raw += taken
    assert b"".join(raw) == stream


def test_rewind_gives_a_message_back() -> None:
    frames = pg.Frames(1024)
    frames.feed(pg.message(b"Q", b"a\x00") + pg.message(b"S"))
    start = frames.position
    assert frames.skip() == ord("Q")
    frames.rewind(start)
    assert frames.next() == (ord("Q"), b"a\x00")
    assert frames.next() == (ord("S"), b"")
    assert frames.next() is None


@pytest.mark.parametrize("length", [0, 1, 2, 3, 1025, 2**30, 2**31 - 1, 2**31, 2**32 - 1])
@pytest.mark.parametrize("method", ["next", "skip"])
def test_frames_refuse_a_bad_length_from_the_header_alone(length: int, method: str) -> None:
    frames = pg.Frames(1024)
    frames.feed(b"Q" + struct.pack("!I", length))
    with pytest.raises(ProtocolViolation, match=f"invalid length {length} for message 'Q'"):
        getattr(frames, method)()
    # Nothing was buffered for it: the 5 bytes of the header are all there is.
    assert len(frames) == 5


@pytest.mark.parametrize("length", [4, 5, 1024])
def test_frames_wait_for_a_good_length(length: int) -> None:
    frames = pg.Frames(1024)
    frames.feed(b"Q" + struct.pack("!I", length))
    if length == 4:
        assert frames.next() == (ord("Q"), b"")
    else:
        assert frames.next() is None
        frames.feed(b"x" * (length - 4))
        assert frames.next() == (ord("Q"), b"x" * (length - 4))


def test_frames_need_the_whole_header() -> None:
    frames = pg.Frames(1024)
    for byte in b"Q\x00\x00\x00":
        frames.feed(bytes([byte]))
        assert frames.next() is None
        assert frames.skip() is None
    frames.feed(b"\x04")
    assert frames.next() == (ord("Q"), b"")


def test_a_declared_gibibyte_is_refused_without_allocating_it() -> None:
    frames = pg.Frames(64 * 1024 * 1024)
    frames.feed(b"d" + struct.pack("!I", 1 << 30) + b"x" * 100)
    with pytest.raises(ProtocolViolation):
        frames.next()
    assert len(frames) == 105


def test_take_rest_returns_what_is_not_taken() -> None:
    frames = pg.Frames(1024)
    frames.feed(pg.message(b"S") + b"Q\x00\x00")
    assert frames.next() == (ord("S"), b"")
    assert frames.take_rest() == b"Q\x00\x00"
    assert len(frames) == 0
    assert frames.position == 0


# --- arbitrary bytes: ProtocolViolation or a result, nothing else -----------------------

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "decode_startup": pg.decode_startup,
    "query_text": pg.query_text,
    "decode_parse": pg.decode_parse,
    "decode_bind": pg.decode_bind,
    "decode_execute": pg.decode_execute,
    "decode_describe": lambda b: pg.decode_target(b, "Describe"),
    "decode_close": lambda b: pg.decode_target(b, "Close"),
    "password_message": pg.password_message,
    "decode_fields": pg.decode_fields,
    "decode_parameter_status": pg.decode_parameter_status,
    "decode_backend_key_data": pg.decode_backend_key_data,
    "decode_parameter_description": pg.decode_parameter_description,
}


def _frame_all(data: bytes) -> list[tuple[int, bytes]]:
    frames = pg.Frames(4096)
    frames.feed(data)
    out = []
    while (item := frames.next()) is not None:
        out.append(item)
    return out


#: Bytes that look a bit like protocol: counts, lengths and NULs are likely.
protocolish = st.lists(
    st.one_of(
        st.binary(max_size=12),
        st.sampled_from([b"\x00", b"\xff\xff", b"\xff\xff\xff\xff", b"\x00\x01", b"\x00\x02"]),
        st.integers(-(2**15), 2**15 - 1).map(lambda n: struct.pack("!h", n)),
        st.integers(-(2**31), 2**31 - 1).map(lambda n: struct.pack("!i", n)),
        st.sampled_from([b"S", b"P", b"s\x00", b"p1\x00", b"SELECT 1\x00", b"\xc3\x28\x00"]),
    ),
    max_size=16,
).map(b"".join)


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200) | protocolish)
def test_decoders_raise_only_protocol_violation(name: str, data: bytes) -> None:
    with contextlib.suppress(ProtocolViolation):
        DECODERS[name](data)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(min_size=4, max_size=4))
def test_startup_length_raises_only_protocol_violation(data: bytes) -> None:
    # (the gateway always reads exactly four bytes first)
    try:
        length = pg.startup_length(data)
    except ProtocolViolation:
        return
    assert 8 <= length <= pg.MAX_STARTUP


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=600) | protocolish)
def test_frames_raise_only_protocol_violation(data: bytes) -> None:
    with contextlib.suppress(ProtocolViolation):
        _frame_all(data)


# --- frontend messages: round trips through the test builders ----------------------------


@FAST
@given(name=names, sql=names, types=st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_parse_round_trip(name: str, sql: str, types: list[int]) -> None:
    body = parse(name, sql, types)[5:]
    assert pg.decode_parse(body) == pg.Parse(name, sql.encode(), tuple(types))


params_and_formats = st.integers(0, 6).flatmap(
    lambda n: st.tuples(
        st.lists(st.none() | st.binary(max_size=20), min_size=n, max_size=n),
        st.sampled_from([0, 1, n] if n not in (0, 1) else [0, 1]).flatmap(
            lambda k: st.lists(st.sampled_from([0, 1]), min_size=k, max_size=k)
        ),
    )
)


@FAST
@given(
    portal=names,
    statement=names,
    pf=params_and_formats,
    results=st.lists(st.sampled_from([0, 1]), max_size=5),
)
def test_bind_round_trip(
    portal: str,
    statement: str,
    pf: tuple[list[bytes | None], list[int]],
    results: list[int],
) -> None:
    params, formats = pf
    decoded = pg.decode_bind(bind(portal, statement, params, formats, results)[5:])
    assert decoded == pg.Bind(portal, statement, tuple(formats), tuple(params), tuple(results))
    for i in range(len(params)):
        expected = 0 if not formats else formats[0] if len(formats) == 1 else formats[i]
        assert decoded.param_format(i) == expected


def test_bind_parameter_formats() -> None:
    three = [b"1", None, b"\x00\x01"]
    # None: all text; one: for all; one per parameter.
    no_formats = pg.decode_bind(bind("", "s", three)[5:])
    assert [no_formats.param_format(i) for i in range(3)] == [0, 0, 0]
    one = pg.decode_bind(bind("", "s", three, [1])[5:])
    assert [one.param_format(i) for i in range(3)] == [1, 1, 1]
    each = pg.decode_bind(bind("p", "s", three, [0, 1, 1])[5:])
    assert [each.param_format(i) for i in range(3)] == [0, 1, 1]
    assert each.params == (b"1", None, b"\x00\x01")
    # A format count that is neither 0, 1 nor the parameter count; a format not 0 or 1.
    with pytest.raises(ProtocolViolation, match="formats do not match"):
        pg.decode_bind(bind("", "s", three, [0, 1])[5:])
    with pytest.raises(ProtocolViolation, match="formats do not match"):
        pg.decode_bind(bind("", "s", three, [2])[5:])
    with pytest.raises(ProtocolViolation, match="formats do not match"):
        pg.decode_bind(bind("", "s", [], [0, 0])[5:])
    # One format and no parameters is fine (PostgreSQL accepts it too).
    assert pg.decode_bind(bind("", "s", [], [1])[5:]).param_formats == (1,)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\x00s\x00" + struct.pack("!h", -1), "negative count"),
        (b"\x00s\x00" + struct.pack("!hh", 0, -1), "negative count"),
        (b"\x00s\x00" + struct.pack("!hhi", 0, 1, -2), "negative length"),
        (b"\x00s\x00" + struct.pack("!hhi", 0, 1, 100) + b"short", "malformed Bind"),
        (b"\x00s\x00" + struct.pack("!hhih", 0, 1, -1, -1), "negative count"),
        (b"\x00s\x00" + struct.pack("!hhihh", 0, 1, -1, 1, 0) + b"x", "trailing bytes"),
        (b"\x00s", "malformed Bind"),
        (b"\xff\x00s\x00" + struct.pack("!hhh", 0, 0, 0), "not UTF-8"),
    ],
)
def test_malformed_bind(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        pg.decode_bind(body)


def test_execute_describe_close_round_trips() -> None:
    assert pg.decode_execute(execute("p1", -3)[5:]) == ("p1", -3)
    assert pg.decode_execute(execute()[5:]) == ("", 0)
    assert pg.decode_target(describe("S", "s1")[5:], "Describe") == ("S", "s1")
    assert pg.decode_target(close("P", "")[5:], "Close") == ("P", "")
    with pytest.raises(ProtocolViolation, match="unknown kind"):
        pg.decode_target(describe("X", "s1")[5:], "Describe")
    with pytest.raises(ProtocolViolation, match="trailing"):
        pg.decode_execute(execute("p")[5:] + b"\x00")
    with pytest.raises(ProtocolViolation, match="trailing"):
        pg.decode_target(b"Sname\x00more", "Close")


def test_parse_malformed() -> None:
    with pytest.raises(ProtocolViolation, match="negative count"):
        pg.decode_parse(b"s\x00SELECT 1\x00" + struct.pack("!h", -1))
    with pytest.raises(ProtocolViolation, match="malformed Parse"):
        pg.decode_parse(b"s\x00SELECT 1\x00" + struct.pack("!h", 2) + b"\x00\x00\x00\x17")
    with pytest.raises(ProtocolViolation, match="trailing"):
        pg.decode_parse(b"s\x00SELECT 1\x00" + struct.pack("!h", 0) + b"\x00")
    # The query is bytes (in the client encoding), not decoded here.
    assert pg.decode_parse(b"\x00\xff\xfe\x00\x00\x00").query == b"\xff\xfe"


@FAST
@given(types=st.lists(st.integers(0, 2**32 - 1), max_size=40))
def test_parameter_description_round_trip(types: list[int]) -> None:
    body = struct.pack("!h", len(types)) + b"".join(struct.pack("!I", t) for t in types)
    assert pg.decode_parameter_description(body) == tuple(types)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "malformed ParameterDescription"),
        (struct.pack("!h", -1), "negative count"),
        (struct.pack("!hI", 2, 23), "malformed ParameterDescription"),
        (struct.pack("!hI", 1, 23) + b"\x00", "trailing"),
    ],
)
def test_malformed_parameter_description(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        pg.decode_parameter_description(body)


def test_query_and_password_need_exactly_one_terminating_nul() -> None:
    assert pg.query_text(b"SELECT 1\x00") == b"SELECT 1"
    assert pg.query_text(b"\x00") == b""
    assert pg.password_message(b"tok\x00") == b"tok"
    for bad in (b"", b"SELECT 1", b"SELECT\x001\x00", b"\x00\x00"):
        with pytest.raises(ProtocolViolation):
            pg.query_text(bad)
        with pytest.raises(ProtocolViolation):
            pg.password_message(bad)


def test_cstring_and_message() -> None:
    assert pg.cstring("é") == b"\xc3\xa9\x00"
    with pytest.raises(ValueError, match="NUL"):
        pg.cstring("a\x00b")
    assert pg.message(b"S") == b"S\x00\x00\x00\x04"
    assert pg.SYNC == b"S\x00\x00\x00\x04"
    assert pg.FLUSH == b"H\x00\x00\x00\x04"
    assert pg.query("SELECT 1") == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert pg.describe_statement("x") == b"D\x00\x00\x00\x07Sx\x00"


def test_backend_messages_round_trip() -> None:
    assert pg.decode_parameter_status(pg.parameter_status("TimeZone", "UTC")[5:]) == (
        "TimeZone",
        "UTC",
    )
    assert pg.decode_backend_key_data(pg.backend_key_data(-1, 2**31 - 1)[5:]) == (-1, 2**31 - 1)
    assert pg.ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"
    assert pg.authentication(pg.AUTH_CLEARTEXT) == b"R\x00\x00\x00\x08\x00\x00\x00\x03"


# --- command tags ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("INSERT 0 5", 5),
        ("SELECT 3", 3),
        ("UPDATE 0", 0),
        ("DELETE 12345678901", 12345678901),
        ("COPY 2", 2),
        ("MOVE 10", 10),
        ("FETCH 1", 1),
        ("MERGE 4", 4),
        ("CREATE TABLE", None),
        ("BEGIN", None),
        ("SELECT", None),
        ("", None),
        ("DELETE -1", None),
        ("INSERT 0 5x", None),
        ("7", None),
    ],
)
def test_command_rows(tag: str, rows: int | None) -> None:
    assert pg.command_rows(tag) == rows


@pytest.mark.parametrize(
    "tag",
    [
        "SELECT \u00b2",  # superscript two: isdigit(), not int()
        "INSERT 0 \u00b9\u00b2",
        "SELECT \u0663",  # ARABIC-INDIC DIGIT THREE: int() takes it, the protocol does not
        "UPDATE \uff11",  # FULLWIDTH DIGIT ONE
        "DELETE \U0001d7d9",  # MATHEMATICAL DOUBLE-STRUCK DIGIT ONE
    ],
)
def test_command_rows_on_a_non_decimal_digit(tag: str) -> None:
    assert pg.command_rows(tag) is None


@settings(max_examples=300, deadline=None)
@given(tag=st.text(st.characters(codec="ascii"), max_size=30))
def test_command_rows_never_raises_on_ascii(tag: str) -> None:
    rows = pg.command_rows(tag)
    assert rows is None or rows == int(tag.split()[-1])


@settings(max_examples=300, deadline=None)
@given(tag=st.text(max_size=30))
def test_command_rows_reads_only_ascii_decimal(tag: str) -> None:
    rows = pg.command_rows(tag)
    if rows is not None:
        last = tag.split()[-1]
        assert last.isascii()
        assert rows == int(last)



# --- the session's own Bind check (names only, structure checked) -------------------


def _decoded_names(body: bytes) -> tuple[str, str] | str:
    try:
        decoded = pg.decode_bind(body)
    except ProtocolViolation:
        return "violation"
    return decoded.portal, decoded.statement


def _session_names(body: bytes) -> tuple[str, str] | str:
    from jitgate.gateways.postgres.session import _bind_names

    try:
        return _bind_names(body)
    except ProtocolViolation:
        return "violation"


_WELL_FORMED_BIND = (
    b"p\x00s\x00"
    + struct.pack("!hhh", 2, 0, 1)
    + struct.pack("!h", 2)
    + struct.pack("!i", 3)
    + b"abc"
    + struct.pack("!i", -1)
    + struct.pack("!hh", 1, 1)
)


@settings(max_examples=3000, deadline=None)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["set", "cut", "insert"]), st.integers(0, 64), st.integers(0, 255)
        ),
        max_size=4,
    )
)
@example(edits=[])
def test_the_session_accepts_exactly_the_binds_the_decoder_accepts(
    edits: list[tuple[str, int, int]],
) -> None:
    body = bytearray(_WELL_FORMED_BIND)
    for op, where, value in edits:
        where = min(where, len(body))
        if op == "set" and where < len(body):
            body[where] = value
        elif op == "cut":
            del body[where:]
        else:
            body.insert(where, value)
    assert _session_names(bytes(body)) == _decoded_names(bytes(body))
