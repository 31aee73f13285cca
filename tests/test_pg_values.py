"""Binary parameter values as approvers see them (jitgate.gateways.postgres.values).

PostgreSQL itself is the reference: values encoded with ``struct`` as the
binary format defines (what a client sends) go to the local server as binary
parameters of ``SELECT $1``, and the text it prints for them (text result
format, ISO dates, UTC, default float digits) is what :func:`render_binary`
must give; bytes the server refuses must give None. Random bytes never raise.

Through a real gateway (raw protocol clients, as in
tests/test_pg_gateway_protocol_security.py): a held statement's request shows
the decoded values beside the exact ones, its fingerprint still covers the
exact ones, and types learned for one definition of a statement are never
used for another (re-Parse, Close, a refused Parse, SQL redefining the name).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import struct
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg.pq import ExecStatus
from sqlalchemy.engine import make_url

from conftest import DEFAULT_PG, PG_ENV
from jitgate.actions.model import Action, ActionKind, fingerprint
from jitgate.gateways.postgres import values as v
from jitgate.gateways.postgres.values import render_binary, undecoded
from jitgate.store import list_events
from pg_gateway_support import (
    SYNC,
    GatewayEnv,
    Message,
    RawClient,
    bind,
    close,
    codes,
    create_table_t,
    describe,
    execute,
    gateway_env,
    held_request_id,
    parse,
    query,
)

CHECKED = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def pack(fmt: str, *items: Any) -> bytes:
    return struct.pack("!" + fmt, *items)


def numeric(weight: int, sign: int, dscale: int, *digits: int) -> bytes:
    """A numeric in the binary format: ndigits, weight, sign, dscale, base-10000 digits."""
    return pack(f"HhHH{len(digits)}h", len(digits), weight, sign, dscale, *digits)


def array(
    element: int,
    items: list[bytes | None],
    dims: list[int] | None = None,
    lower: list[int] | None = None,
    flags: int = 0,
) -> bytes:
    """An array in the binary format (array_send): header, dimensions, items."""
    dims = [len(items)] if dims is None else dims
    lower = [1] * len(dims) if lower is None else lower
    out = pack("iiI", len(dims), flags, element)
    out += b"".join(pack("ii", n, lo) for n, lo in zip(dims, lower, strict=True))
    for item in items:
        out += pack("i", -1) if item is None else pack("i", len(item)) + item
    return out


def days(year: int, month: int, day: int) -> int:
    """Days since 2000-01-01 (proleptic Gregorian, year >= 1)."""
    return (dt.date(year, month, day) - dt.date(2000, 1, 1)).days


MICROS_PER_DAY = 86_400_000_000
NEG, NAN, PINF, NINF = 0x4000, 0xC000, 0xD000, 0xF000


#: range_send's flags.
EMPTY, LB_INC, UB_INC, LB_INF, UB_INF = 0x01, 0x02, 0x04, 0x08, 0x10


def i4(n: int) -> bytes:
    return pack("i", n)


def i8(n: int) -> bytes:
    return pack("q", n)


def bits(length: int, packed: bytes) -> bytes:
    """A bit string in the binary format: its length in bits, then the bits packed."""
    return pack("i", length) + packed


def rng(flags: int, *bounds: bytes) -> bytes:
    """A range in the binary format (range_send): flags, then each bound's length and bytes."""
    return bytes([flags]) + b"".join(pack("i", len(b)) + b for b in bounds)


def multirange(*ranges: bytes) -> bytes:
    """A multirange in the binary format: a count, then each range's length and bytes."""
    return pack("i", len(ranges)) + b"".join(pack("i", len(r)) + r for r in ranges)


def numeric_of(value: Decimal, dscale: int | None = None) -> bytes:
    """A finite Decimal as a client sends it as a numeric (dscale: its own by default)."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    scale = max(0, -exponent) if dscale is None else dscale
    groups = (max(0, -exponent) + 3) // 4
    whole = int(abs(value).scaleb(4 * groups))
    digits: list[int] = []
    while whole:
        whole, digit = divmod(whole, 10000)
        digits.insert(0, digit)
    weight = len(digits) - 1 - groups
    while digits and digits[-1] == 0:
        digits.pop()
    sign = NEG if value < 0 and digits else 0
    return numeric(weight if digits else 0, sign, scale, *digits)


def at(year: int, month: int, day: int, micros: int = 0) -> bytes:
    """A timestamp in the binary format."""
    return pack("q", days(year, month, day) * MICROS_PER_DAY + micros)


# --- each type, by hand ------------------------------------------------------------------

CASES: list[tuple[int, bytes, str]] = [
    (v.BOOL, b"\x01", "t"),
    (v.BOOL, b"\x00", "f"),
    (v.BOOL, b"\x07", "t"),  # boolrecv: anything but 0 is true
    (v.INT2, pack("h", -32768), "-32768"),
    (v.INT4, pack("i", 42), "42"),
    (v.INT4, pack("i", -1), "-1"),
    (v.INT8, pack("q", 2**63 - 1), "9223372036854775807"),
    (v.OID, pack("I", 2**32 - 1), "4294967295"),
    (v.FLOAT8, pack("d", 0.1), "0.1"),
    (v.FLOAT8, pack("d", 1.0), "1"),
    (v.FLOAT8, pack("d", -2.5), "-2.5"),
    (v.FLOAT8, pack("d", 1e15), "1e+15"),
    (v.FLOAT8, pack("d", 1e14), "100000000000000"),
    (v.FLOAT8, pack("d", 0.0001), "0.0001"),
    (v.FLOAT8, pack("d", 0.00001), "1e-05"),
    (v.FLOAT8, pack("d", 1e100), "1e+100"),
    (v.FLOAT8, pack("d", 5e-324), "5e-324"),
    (v.FLOAT8, pack("d", -0.0), "-0"),
    # The shortest decimal reading back as it is 6.464567042681138e+16 (Python's
    # repr), but that is the midpoint to the next double: PostgreSQL never prints one.
    (v.FLOAT8, pack("d", 64645670426811376.0), "6.4645670426811376e+16"),
    (v.FLOAT8, pack("d", math.nan), "NaN"),
    (v.FLOAT8, pack("Q", 0xFFF8000000000001), "NaN"),  # any NaN payload, any sign
    (v.FLOAT8, pack("d", math.inf), "Infinity"),
    (v.FLOAT8, pack("d", -math.inf), "-Infinity"),
    (v.FLOAT4, pack("f", 0.1), "0.1"),
    (v.FLOAT4, pack("f", 123456.0), "123456"),
    (v.FLOAT4, pack("f", 1234567.0), "1.234567e+06"),
    (v.FLOAT4, pack("f", 3.4028234663852886e38), "3.4028235e+38"),
    (v.FLOAT4, pack("I", 1), "1e-45"),  # the smallest subnormal
    (v.FLOAT4, pack("f", 16777216.0), "1.6777216e+07"),
    (v.FLOAT4, pack("f", 67108896.0), "6.7108896e+07"),  # not the midpoint 6.71089e+07
    (v.FLOAT4, pack("f", -math.inf), "-Infinity"),
    (v.FLOAT4, pack("I", 0x7FC00000), "NaN"),
    (v.TEXT, "été".encode(), "été"),
    (v.VARCHAR, b"", ""),
    (v.BPCHAR, b"ab  ", "ab  "),
    (v.NAME, b"x" * 63, "x" * 63),
    (v.UNKNOWN, b"anything", "anything"),
    (v.BYTEA, b"\x00\xffA", "\\x00ff41"),
    (v.BYTEA, b"", "\\x"),
    (v.UUID, bytes(range(16)), "00010203-0405-0607-0809-0a0b0c0d0e0f"),
    (v.DATE, pack("i", 0), "2000-01-01"),
    (v.DATE, pack("i", days(2024, 2, 29)), "2024-02-29"),
    (v.DATE, pack("i", days(1, 1, 1) - 1), "0001-12-31 BC"),
    (v.DATE, pack("i", -2451545), "4714-11-24 BC"),  # Julian day 0, the first valid date
    (v.DATE, pack("i", 2145031948), "5874897-12-31"),  # the last one
    (v.DATE, pack("i", -(2**31)), "-infinity"),
    (v.DATE, pack("i", 2**31 - 1), "infinity"),
    (v.TIMESTAMP, pack("q", 0), "2000-01-01 00:00:00"),
    (v.TIMESTAMP, pack("q", -1), "1999-12-31 23:59:59.999999"),
    (v.TIMESTAMP, pack("q", 120_000), "2000-01-01 00:00:00.12"),
    (v.TIMESTAMP, pack("q", -(2**63)), "-infinity"),
    (v.TIMESTAMP, pack("q", 2**63 - 1), "infinity"),
    (
        v.TIMESTAMPTZ,
        pack("q", days(2024, 5, 17) * MICROS_PER_DAY + 3_723_000_500),
        "2024-05-17 01:02:03.0005+00",
    ),
    (v.TIMESTAMPTZ, pack("q", -211813488000000000), "4714-11-24 00:00:00+00 BC"),
    (v.TIMESTAMPTZ, pack("q", 9223371331199999999), "294276-12-31 23:59:59.999999+00"),
    (v.NUMERIC, numeric(0, 0, 0), "0"),
    (v.NUMERIC, numeric(0, NEG, 2), "0.00"),  # zero is never negative
    (v.NUMERIC, numeric(0, NEG, 3, 12, 3456), "-12.345"),  # dscale cuts digits off
    (v.NUMERIC, numeric(1, 0, 0, 1, 0), "10000"),
    (v.NUMERIC, numeric(5, NEG, 0, 1, 2), "-100020000000000000000"),
    (v.NUMERIC, numeric(-2, 0, 9, 12, 3456), "0.000000123"),
    (v.NUMERIC, numeric(-2, 0, 3, 12, 3456), "0.000"),
    (v.NUMERIC, numeric(1, 0, 0, 0, 3456), "3456"),  # leading zero digits
    (v.NUMERIC, numeric(0, 0, 6, 7, 1200, 0, 0), "7.120000"),
    (v.NUMERIC, numeric(-32768, 0, 0x3FFF, 0, 1), "0." + "0" * 0x3FFF),  # all cut off
    (v.NUMERIC, numeric(0, NAN, 0), "NaN"),
    (v.NUMERIC, numeric(0, PINF, 0), "Infinity"),
    (v.NUMERIC, numeric(0, NINF, 0), "-Infinity"),
    (v.JSON, b' {"b":1,  "a":[true]} ', ' {"b":1,  "a":[true]} '),
    (
        v.JSONB,
        b'\x01{"b":1,"a":[1,2.50,1e2,-0],"a":{"x":"\\u00e9\\n/"},"aa":null}',
        '{"a": {"x": "é\\n/"}, "b": 1, "aa": null}',
    ),
    (v.JSONB, b"\x01 3 ", "3"),
    (v.JSONB, b'\x01"\\u001f\\t"', '"\\u001f\\t"'),
    (v.JSONB, b'\x01{"z": 2, "ab": 3, "\xc3\xa9": 1}', '{"z": 2, "ab": 3, "é": 1}'),
    (v.JSONB, b"\x01[1.0e1, 100e-5, -0.0, 12e-1, []]", "[10, 0.00100, 0.0, 1.2, []]"),
    (v.CHAR, b"a", "a"),
    (v.CHAR, b"\xe9", "\\351"),
    (v.TIME, pack("q", 86_400_000_000), "24:00:00"),
    (v.TIME, pack("q", 3_723_500_000), "01:02:03.5"),
    (v.TIMETZ, pack("qi", 0, -19800), "00:00:00+05:30"),
    (v.TIMETZ, pack("qi", 0, 3661), "00:00:00-01:01:01"),
    (v.INTERVAL, pack("qii", 14_706_500_000, 3, 14), "1 year 2 mons 3 days 04:05:06.5"),
    (v.INTERVAL, pack("qii", 3_600_000_000, -1, 0), "-1 days +01:00:00"),
    (v.INTERVAL, pack("qii", 0, 0, 0), "00:00:00"),
    (v.INTERVAL, pack("qii", -1, 0, -1), "-1 mons -00:00:00.000001"),
    (v.INET, bytes([2, 32, 0, 4, 10, 0, 0, 1]), "10.0.0.1"),
    (v.INET, bytes([2, 24, 0, 4, 10, 0, 0, 1]), "10.0.0.1/24"),
    (v.CIDR, bytes([2, 24, 1, 4, 10, 0, 0, 0]), "10.0.0.0/24"),
    (v.INET, bytes([3, 128, 0, 16]) + bytes(10) + b"\xff\xff\x01\x02\x03\x04", "::ffff:1.2.3.4"),
    (v.INET, bytes([3, 64, 0, 16]) + b"\x20\x01\x0d\xb8" + bytes(12), "2001:db8::/64"),
    (v.MACADDR, b"\x08\x00\x2b\x01\x02\x03", "08:00:2b:01:02:03"),
    (v.MACADDR8, b"\x08\x00\x2b\x01\x02\x03", "08:00:2b:ff:fe:01:02:03"),
    # Arrays: what ORMs bind for ``= ANY($1)``.
    (1007, array(v.INT4, [pack("i", 7), None, pack("i", -3)]), "{7,NULL,-3}"),
    (1016, array(v.INT8, []), "{}"),
    (1007, array(v.INT4, [], dims=[0, 3]), "{}"),
    (
        1009,
        array(v.TEXT, [b"a b", b"", b"null", b'x"y\\z', b"{", b"\xc3\xa9"]),
        '{"a b","","null","x\\"y\\\\z","{",é}',
    ),
    (1001, array(v.BYTEA, [b"\x01\xff"]), '{"\\\\x01ff"}'),
    (
        1007,
        array(v.INT4, [pack("i", i) for i in range(6)], dims=[2, 3], lower=[0, 1]),
        "[0:1][1:3]={{0,1,2},{3,4,5}}",
    ),
    (1115, array(v.TIMESTAMP, [pack("q", 0)]), '{"2000-01-01 00:00:00"}'),
    (1022, array(v.FLOAT8, [pack("d", math.inf), pack("d", 0.1)]), "{Infinity,0.1}"),
    # bit and varbit: the bits as 0s and 1s.
    (v.BIT, bits(3, b"\xa0"), "101"),
    (v.BIT, bits(8, b"\x81"), "10000001"),
    (v.VARBIT, bits(0, b""), ""),
    (v.VARBIT, bits(12, b"\xf0\xf0"), "111100001111"),
    (v.VARBIT, bits(3, b"\xff"), "111"),  # padding bits set: cleared, not refused
    # Ranges, as range_out prints what the server keeps: discrete ones canonical.
    (v.INT4RANGE, rng(LB_INC, i4(1), i4(10)), "[1,10)"),
    (v.INT4RANGE, rng(LB_INC | UB_INC, i4(1), i4(5)), "[1,6)"),
    (v.INT4RANGE, rng(0, i4(1), i4(5)), "[2,5)"),
    (v.INT4RANGE, rng(UB_INC, i4(-3), i4(-1)), "[-2,0)"),
    (v.INT4RANGE, rng(0, i4(1), i4(2)), "empty"),  # (1,2) holds no integer
    (v.INT4RANGE, rng(LB_INC, i4(3), i4(3)), "empty"),
    (v.INT4RANGE, rng(LB_INC | UB_INC, i4(3), i4(3)), "[3,4)"),
    (v.INT4RANGE, rng(EMPTY), "empty"),
    (v.INT4RANGE, rng(0xFF), "empty"),  # empty: no bound is read
    (v.INT4RANGE, rng(LB_INF | UB_INC, i4(5)), "(,6)"),
    (v.INT4RANGE, rng(LB_INF | UB_INF), "(,)"),
    (v.INT4RANGE, rng(LB_INC | UB_INC | LB_INF | UB_INF), "(,)"),  # infinity is never included
    (v.INT4RANGE, rng(0x60 | LB_INC, i4(1), i4(2)), "[1,2)"),  # the NULL-bound flags: ignored
    (v.INT4RANGE, rng(LB_INC, i8(7), i4(9)), "[0,9)"),  # int4recv reads 4 of the 8 bytes
    (v.INT4RANGE, rng(UB_INC, i4(2**31 - 1), i4(2**31 - 1)), "empty"),  # empty before any + 1
    (v.INT8RANGE, rng(LB_INC | UB_INC, i8(-(2**63)), i8(0)), "[-9223372036854775808,1)"),
    (v.INT8RANGE, rng(UB_INF, i8(2**63 - 2)), "[9223372036854775807,)"),
    (v.DATERANGE, rng(LB_INC | UB_INC, i4(0), i4(30)), "[2000-01-01,2000-02-01)"),
    (v.DATERANGE, rng(0, i4(days(2024, 2, 28)), i4(days(2024, 3, 1))), "[2024-02-29,2024-03-01)"),
    (v.DATERANGE, rng(LB_INC | UB_INC, i4(-(2**31)), i4(2**31 - 1)), "[-infinity,infinity]"),
    (v.DATERANGE, rng(0, i4(-(2**31)), i4(2**31 - 1)), "(-infinity,infinity)"),
    (v.DATERANGE, rng(LB_INC, i4(days(1, 1, 1) - 1), i4(0)), '["0001-12-31 BC",2000-01-01)'),
    (
        v.TSRANGE,
        rng(LB_INC, at(2020, 1, 1), at(2020, 2, 1)),
        '["2020-01-01 00:00:00","2020-02-01 00:00:00")',
    ),
    (v.TSRANGE, rng(UB_INC, i8(0), i8(0)), "empty"),
    (
        v.TSRANGE,
        rng(LB_INC | UB_INC, i8(0), i8(1)),
        '["2000-01-01 00:00:00","2000-01-01 00:00:00.000001"]',  # continuous: kept as sent
    ),
    (v.TSRANGE, rng(LB_INF | UB_INC, i8(2**63 - 1)), "(,infinity]"),
    (v.TSTZRANGE, rng(UB_INF, i8(0)), '("2000-01-01 00:00:00+00",)'),
    (v.NUMRANGE, rng(LB_INC | UB_INC, numeric(0, 0, 1, 1), numeric(0, 0, 2, 1)), "[1.0,1.00]"),
    (v.NUMRANGE, rng(LB_INC, numeric(0, 0, 1, 1), numeric(0, 0, 2, 1)), "empty"),
    (v.NUMRANGE, rng(LB_INC, numeric(0, PINF, 0), numeric(0, NAN, 0)), "[Infinity,NaN)"),
    (v.NUMRANGE, rng(LB_INC | UB_INC, numeric(0, NAN, 0), numeric(0, NAN, 0)), "[NaN,NaN]"),
    (v.NUMRANGE, rng(LB_INF | UB_INC, numeric(0, NEG, 2, 1, 5000)), "(,-1.50]"),
    (v.NUMRANGE, rng(LB_INC, numeric(0, 0, 0, 1) + b"zz", numeric(0, 0, 0, 2)), "[1,2)"),
    # Multiranges: sorted, empty ranges dropped, those overlapping or meeting merged.
    (v.INT4MULTIRANGE, multirange(), "{}"),
    (
        v.INT4MULTIRANGE,
        multirange(rng(LB_INC, i4(5), i4(7)), rng(LB_INC, i4(1), i4(3))),
        "{[1,3),[5,7)}",
    ),
    (
        v.INT4MULTIRANGE,
        multirange(rng(LB_INC, i4(5), i4(7)), rng(LB_INC | UB_INC, i4(1), i4(4))),
        "{[1,7)}",  # [1,5) meets [5,7)
    ),
    (
        v.INT4MULTIRANGE,
        multirange(rng(LB_INC, i4(5), i4(7)), rng(EMPTY), rng(LB_INF, i4(3))),
        "{(,3),[5,7)}",
    ),
    (v.INT4MULTIRANGE, multirange(rng(EMPTY), rng(0, i4(1), i4(2))), "{}"),
    (
        v.INT8MULTIRANGE,
        multirange(rng(LB_INC, i8(1), i8(9)), rng(LB_INF | UB_INF), rng(LB_INC, i8(2), i8(3))),
        "{(,)}",
    ),
    (
        v.NUMMULTIRANGE,
        multirange(
            rng(LB_INC, numeric_of(Decimal(1)), numeric_of(Decimal(3))),
            rng(LB_INC | UB_INC, numeric_of(Decimal(3)), numeric_of(Decimal(5))),
        ),
        "{[1,5]}",
    ),
    (
        v.NUMMULTIRANGE,
        multirange(
            rng(0, numeric_of(Decimal(3)), numeric_of(Decimal(5))),
            rng(0, numeric_of(Decimal(1)), numeric_of(Decimal(3))),
        ),
        "{(1,3),(3,5)}",  # 3 itself is in neither
    ),
    (
        v.NUMMULTIRANGE,
        multirange(
            rng(LB_INC | UB_INC, numeric_of(Decimal(1)), numeric_of(Decimal(3))),
            rng(0, numeric_of(Decimal(3)), numeric_of(Decimal(5))),
        ),
        "{[1,5)}",
    ),
    (
        v.NUMMULTIRANGE,
        multirange(
            rng(LB_INC, numeric_of(Decimal("1.0")), numeric_of(Decimal(2))),
            rng(LB_INC, numeric_of(Decimal("1.00")), numeric_of(Decimal(3))),
        ),
        "{[1.00,3)}",  # equal lower bounds: the later range's
    ),
    (
        v.DATEMULTIRANGE,
        multirange(
            rng(LB_INC | UB_INC, i4(0), i4(2**31 - 1)),
            rng(LB_INC, i4(-(2**31)), i4(4)),
        ),
        "{[-infinity,infinity]}",
    ),
    (
        v.TSTZMULTIRANGE,
        multirange(rng(LB_INC, i8(5), i8(7)), rng(UB_INC, i8(1), i8(5))),
        '{("2000-01-01 00:00:00.000001+00","2000-01-01 00:00:00.000007+00")}',
    ),
    (
        v.TSMULTIRANGE,
        multirange(rng(0, i8(5), i8(7)), rng(0, i8(1), i8(5))),
        '{("2000-01-01 00:00:00.000001","2000-01-01 00:00:00.000005"),'
        '("2000-01-01 00:00:00.000005","2000-01-01 00:00:00.000007")}',  # 5 is in neither
    ),
    # Geometric types: their float8s as float8out prints them.
    (v.POINT, pack("dd", 1.5, -0.0), "(1.5,-0)"),
    (v.POINT, pack("dd", math.nan, -math.inf), "(NaN,-Infinity)"),
    (v.POINT, pack("dd", 0.1, 1e300), "(0.1,1e+300)"),
    (v.LSEG, pack("dddd", 1, 2, 3, 4), "[(1,2),(3,4)]"),
    (v.BOX, pack("dddd", 3, 4, 1, 2), "(3,4),(1,2)"),
    (v.BOX, pack("dddd", 1, 2, 3, 4), "(3,4),(1,2)"),  # box_recv: the high corner first
    (v.BOX, pack("dddd", 1, 4, 3, 2), "(3,4),(1,2)"),
    (v.BOX, pack("dddd", math.nan, 2, 3, math.nan), "(NaN,NaN),(3,2)"),  # NaN is the highest
    (v.BOX, pack("dddd", 0.0, 2, -0.0, 4), "(0,4),(-0,2)"),
    (v.PATH, b"\x00" + pack("i", 2) + pack("dddd", 1, 2, 3, 4), "[(1,2),(3,4)]"),
    (v.PATH, b"\x07" + pack("i", 1) + pack("dd", 1, 2), "((1,2))"),  # closed
    (v.POLYGON, pack("i", 3) + pack("6d", 0, 0, 1, 0, 0, 1), "((0,0),(1,0),(0,1))"),
    (v.LINE, pack("ddd", 1, 2, 3), "{1,2,3}"),
    (v.LINE, pack("ddd", 1.1e-6, 0, 3), "{1.1e-06,0,3}"),
    (v.LINE, pack("ddd", math.nan, 0, 3), "{NaN,0,3}"),
    (v.CIRCLE, pack("ddd", 1, 2, 3), "<(1,2),3>"),
    (v.CIRCLE, pack("ddd", 1, 2, -0.0), "<(1,2),-0>"),
    (v.CIRCLE, pack("ddd", 1, 2, math.nan), "<(1,2),NaN>"),
    (v.CIRCLE, pack("ddd", -math.inf, 2, math.inf), "<(-Infinity,2),Infinity>"),
    # xml: as sent, but for the declaration, dropped when it says no more than
    # the default (with one newline after it).
    (v.XML, b"<a/>", "<a/>"),
    (v.XML, b"", ""),
    (v.XML, b"\n<a/>", "<a/>"),
    (v.XML, b"\n\n<a/>", "\n<a/>"),
    (v.XML, b" text &amp; <b x='1'>more</b> ", " text &amp; <b x='1'>more</b> "),
    (v.XML, b'<?xml version="1.0" encoding="UTF-8"?>\n<a>\xc3\xa9</a>', "<a>é</a>"),
    (v.XML, b"<?xml  version = '1.0'  ?>\r\n<a/>", "\r\n<a/>"),
    (
        v.XML,
        b"<?xml version='1.0' standalone='yes'?><a/>",
        '<?xml version="1.0" standalone="yes"?><a/>',
    ),
    (v.XML, b'<?xml version="1.1" encoding="utf8"?>\n<a/>', '<?xml version="1.1"?>\n<a/>'),
    (v.XML, b'<?xml-stylesheet href="s"?><a/>', '<?xml-stylesheet href="s"?><a/>'),
    (
        v.XML,
        b"<!-- c --><![CDATA[<x>]]><?pi d?>&#x1F600;",
        "<!-- c --><![CDATA[<x>]]><?pi d?>&#x1F600;",
    ),
    (v.XML, b"<a>" * 256 + b"</a>" * 256, "<a>" * 256 + "</a>" * 256),  # libxml2's deepest
    # Arrays of them (box's delimiter is a semicolon: its text has commas).
    (1561, array(v.BIT, [bits(0, b""), bits(3, b"\xa0"), None]), '{"",101,NULL}'),
    (1563, array(v.VARBIT, [bits(1, b"\x80")]), "{1}"),
    (3905, array(v.INT4RANGE, [rng(EMPTY), rng(LB_INC | UB_INC, i4(1), i4(2))]), '{empty,"[1,3)"}'),
    (
        3909,
        array(v.TSRANGE, [rng(LB_INC, i8(0), i8(1))]),
        '{"[\\"2000-01-01 00:00:00\\",\\"2000-01-01 00:00:00.000001\\")"}',
    ),
    (
        6150,
        array(v.INT4MULTIRANGE, [multirange(), multirange(rng(LB_INC, i4(1), i4(3)))]),
        '{"{}","{[1,3)}"}',
    ),
    (1020, array(v.BOX, [pack("dddd", 1, 2, 3, 4), None]), "{(3,4),(1,2);NULL}"),
    (
        1020,
        array(v.BOX, [pack("dddd", i, i, 0, 0) for i in range(4)], dims=[2, 2]),
        "{{(0,0),(0,0);(1,1),(0,0)};{(2,2),(0,0);(3,3),(0,0)}}",
    ),
    (1017, array(v.POINT, [pack("dd", 1, 2), None]), '{"(1,2)",NULL}'),
    (143, array(v.XML, [b"<a b='1'/>", b"", b"x"]), '{"<a b=\'1\'/>","",x}'),
]


@pytest.mark.parametrize(("oid", "data", "text"), CASES)
def test_each_type_reads_as_postgresql_prints_it(oid: int, data: bytes, text: str) -> None:
    assert render_binary(oid, data) == text


REFUSED: list[tuple[int, bytes]] = [
    (v.BOOL, b""),
    (v.BOOL, b"\x01\x00"),
    (v.INT2, pack("i", 1)),
    (v.INT4, pack("h", 1)),
    (v.INT4, pack("q", 1)),
    (v.INT8, pack("i", 1)),
    (v.OID, b"\x00\x00\x01"),
    (v.FLOAT4, pack("d", 1.0)),
    (v.FLOAT8, pack("f", 1.0)),
    (v.TEXT, b"\xff\xfe"),  # not UTF-8
    (v.TEXT, b"a\x00b"),  # no PostgreSQL text holds a NUL
    (v.NAME, b"x" * 64),  # longer than NAMEDATALEN - 1
    (v.UUID, bytes(15)),
    (v.DATE, pack("i", -2451546)),  # before Julian day 0
    (v.DATE, pack("i", 2145031949)),
    (v.DATE, b"\x00\x00"),
    (v.TIMESTAMP, pack("q", -211813488000000001)),
    (v.TIMESTAMPTZ, pack("q", 9223371331200000000)),
    (v.TIMESTAMP, pack("i", 0)),
    (v.NUMERIC, b""),
    (v.NUMERIC, numeric(0, 0, 0, 1)[:-1]),  # a digit short
    (v.NUMERIC, numeric(0, 0, 0, 1) + b"\x00\x00"),  # a digit too many
    (v.NUMERIC, numeric(0, 0x1000, 0, 1)),  # no such sign
    (v.NUMERIC, numeric(0, 0, 0, 10000)),  # a base-10000 digit out of range
    (v.NUMERIC, numeric(0, 0, 0, -1)),
    (v.NUMERIC, numeric(0, 0, 0x4000, 1)),  # dscale over its limit
    (v.NUMERIC, numeric(0, NAN, 0, 10000)),  # NaN's digits are checked too
    (v.JSON, b"{"),
    (v.JSON, b"NaN"),
    (v.JSONB, b""),
    (v.JSONB, b"\x02{}"),  # only version 1 exists
    (v.JSONB, b"{}"),
    (v.JSONB, b'\x01"\\u0000"'),  # jsonb refuses \u0000
    (v.JSONB, b'\x01"\\ud800"'),  # and an unpaired surrogate
    (v.JSONB, b"\x01[1e131072]"),  # beyond numeric
    (v.JSONB, b"\x01[1e-16384]"),
    (v.JSONB, b"\x01" + b"[" * 100_000),
    (1007, array(v.INT8, [pack("q", 1)])),  # another element type
    (1007, array(v.INT4, [pack("i", 1)], flags=2)),
    (1007, array(v.INT4, [pack("i", 1)])[:-1]),  # an item cut short
    (1007, array(v.INT4, [pack("i", 1)]) + b"\x00"),  # a byte after the end
    (1007, array(v.INT4, [pack("h", 1)])),  # an item of the wrong size
    (1007, array(v.INT4, [pack("i", 1)], lower=[2**31 - 1])),  # upper bound overflows
    (1007, pack("iiI", 7, 0, v.INT4) + pack("ii", 1, 1) * 7),  # more than 6 dimensions
    (1007, pack("iiI", -1, 0, v.INT4)),
    (1007, pack("iiI", 1, 0, v.INT4) + pack("ii", 10**6, 1)),  # items missing
    (v.TIME, pack("q", 86_400_000_001)),
    (v.TIMETZ, pack("qi", 0, 57600)),  # a zone 16 hours off
    (v.CIDR, bytes([2, 24, 1, 4, 10, 0, 0, 1])),  # host bits set
    (v.INET, bytes([2, 33, 0, 4, 10, 0, 0, 1])),
    (v.INET, bytes([4, 32, 0, 4, 10, 0, 0, 1])),  # no such family
    (v.BIT, bits(9, b"\xff")),  # a byte short
    (v.VARBIT, bits(8, b"\xff\x00")),  # a byte too many
    (v.VARBIT, bits(-1, b"")),
    (v.VARBIT, b"\x00\x00"),
    (v.INT4RANGE, b""),
    (v.INT4RANGE, rng(EMPTY) + b"\x00"),  # nothing may follow
    (v.INT4RANGE, rng(LB_INC, i4(1), i4(2)) + b"\x00"),
    (v.INT4RANGE, rng(LB_INC, i4(1))),  # a bound missing
    (v.INT4RANGE, rng(LB_INC, pack("h", 1), i4(2))),  # too short for int4recv
    (v.INT4RANGE, b"\x02" + pack("i", -1) + pack("i", 4) + i4(1)),
    (v.INT4RANGE, rng(LB_INC, i4(5), i4(4))),  # the lower bound above the upper
    (v.INT4RANGE, rng(LB_INC | UB_INC, i4(1), i4(2**31 - 1))),  # canonical: + 1 overflows
    (v.INT4RANGE, rng(LB_INF | UB_INC, i4(2**31 - 1))),
    (v.INT8RANGE, rng(UB_INF, i8(2**63 - 1))),
    (v.DATERANGE, rng(LB_INC | UB_INC, i4(2145031948), i4(2145031948))),  # no day after
    (v.DATERANGE, rng(LB_INC, i4(2145031949), i4(2**31 - 1))),  # a date date_recv refuses
    (v.TSRANGE, rng(LB_INC, i8(1), i8(0))),
    (v.TSTZRANGE, rng(LB_INC, i8(9223371331200000000), i8(2**63 - 1))),
    (v.NUMRANGE, rng(LB_INC, numeric(0, NAN, 0), numeric(0, PINF, 0))),  # NaN is the highest
    (v.NUMRANGE, rng(LB_INC, numeric(0, 0, 0, 1)[:-1], numeric(0, 0, 0, 2))),
    (v.NUMRANGE, rng(LB_INC, numeric(0, 0, 1, 1), numeric(0, NEG, 0, 1))),
    (v.INT4MULTIRANGE, b""),
    (v.INT4MULTIRANGE, pack("i", -1)),
    (v.INT4MULTIRANGE, pack("i", 2) + pack("i", 0) + pack("i", 0)),  # ranges without flags
    (v.INT4MULTIRANGE, multirange(rng(LB_INC, i4(1), i4(3)) + b"\x00")),  # read to the end
    (v.INT4MULTIRANGE, multirange(rng(LB_INC, i4(1), i4(3))) + b"\x00"),
    (v.INT4MULTIRANGE, multirange(rng(LB_INC, i4(1), i4(3)), rng(LB_INC, i4(5), i4(4)))),
    (v.POINT, pack("d", 1)),
    (v.POINT, pack("ddd", 1, 2, 3)),
    (v.LSEG, pack("ddd", 1, 2, 3)),
    (v.BOX, pack("ddd", 1, 2, 3)),
    (v.PATH, b"\x00" + pack("i", 0)),  # a path has a point at least
    (v.PATH, b"\x00" + pack("i", -1)),
    (v.PATH, b"\x00" + pack("i", 2) + pack("dd", 1, 2)),
    (v.PATH, b"\x00" + pack("i", 1) + pack("ddd", 1, 2, 3)),
    (v.POLYGON, pack("i", 0)),
    (v.POLYGON, pack("i", 1) + pack("d", 1)),
    (v.LINE, pack("ddd", 0, 0, 3)),  # A and B both zero
    (v.LINE, pack("ddd", 1e-6, -1e-6, 3)),  # ... or within EPSILON of it
    (v.CIRCLE, pack("ddd", 0, 0, -1)),
    (v.CIRCLE, pack("ddd", 0, 0, -math.inf)),
    (v.XML, b"<a>"),
    (v.XML, b"text & more"),
    (v.XML, b"<a>\xe9</a>"),  # not UTF-8 (whatever the client encoding)
    (v.XML, b"<a>\x00</a>"),
    (v.XML, b"<a>&#0;</a>"),
    (v.XML, b"<a b='1' b='2'/>"),
    (v.XML, b"<a>&nbsp;</a>"),
    (v.XML, b"<?xml?><a/>"),
    (v.XML, b'<?xml version="1.0" encoding="no-such"?><a/>'),
    (v.XML, b'<?xml version="1.0" standalone="maybe"?><a/>'),
    (v.XML, b'<?xml version="1.0"encoding="UTF-8"?><a/>'),
    (v.XML, b'<?xml version="1.0" standalone="yes" encoding="UTF-8"?><a/>'),
    (v.XML, b'<?xml version="\xc3\xa9"?><a/>'),
    (v.XML, b'<?xml version="1.0"?><?xml version="1.0"?>'),
    (v.XML, b"<a>" * 257 + b"</a>" * 257),  # past libxml2's depth
    (1020, array(v.BOX, [pack("ddd", 1, 2, 3)])),
    (3905, array(v.INT4RANGE, [rng(LB_INC, i4(1), i4(2)) + b"\x00"])),
    (3614, bytes(9)),  # tsvector: not decoded
    (0, pack("i", 1)),  # type unknown
]


@pytest.mark.parametrize(("oid", "data"), REFUSED)
def test_what_the_server_refuses_or_jitgate_does_not_read_is_none(oid: int, data: bytes) -> None:
    assert render_binary(oid, data) is None


def test_text_is_read_in_the_client_encoding() -> None:
    latin1 = "été".encode("latin-1")
    assert render_binary(v.TEXT, latin1) is None  # not UTF-8
    assert render_binary(v.TEXT, latin1, "latin-1") == "été"
    assert render_binary(v.JSONB, b'\x01"' + latin1 + b'"', "latin-1") == '"été"'
    assert render_binary(v.TEXT, b"abc", "") is None  # an encoding jitgate cannot read
    # SJIS as PostgreSQL reads it: 0x80 alone is not a character there.
    assert render_binary(v.TEXT, b"\x82\xa0", "cp932") == "あ"
    assert render_binary(v.TEXT, b"\x80", "cp932") is None


def test_values_not_decoded_are_hex_labelled_with_why() -> None:
    assert undecoded(3614, b"\x00\x01") == "\\x0001 (binary tsvector, not decoded)"
    assert undecoded(v.INT4, b"\x01") == "\\x01 (binary int4, not decoded)"
    assert undecoded(0, b"\xab") == "\\xab (binary, type not known to jitgate)"
    assert undecoded(99999, b"") == "\\x (binary, type OID 99999, not decoded)"


def test_money_is_labelled_with_its_amount_in_the_currencys_smallest_unit() -> None:
    # cash_out's text depends on lc_monetary, which the gateway cannot see: not
    # decoded, but the amount is exact whatever the currency.
    data = pack("q", -123456)
    assert render_binary(v.MONEY, data) is None
    assert undecoded(v.MONEY, data) == (
        f"\\x{data.hex()} (binary money, not decoded: "
        "-123456 in the smallest unit of lc_monetary's currency)"
    )
    assert undecoded(v.MONEY, b"\x01") == "\\x01 (binary money, not decoded)"
    assert undecoded(791, b"") == "\\x (binary money[], not decoded)"


# --- random bytes never raise ------------------------------------------------------------

ALL_TYPES = sorted(v.DECODED_TYPES)


@settings(max_examples=3000, deadline=None)
@given(
    oid=st.sampled_from([*ALL_TYPES, 0, 3614, v.MONEY]),
    data=st.binary(max_size=64),
    codec=st.sampled_from(["utf-8", "latin-1", "cp932", "ascii", ""]),
)
@example(oid=v.NUMERIC, data=numeric(32767, 0, 0x3FFF, 9999), codec="utf-8")
@example(oid=v.JSONB, data=b"\x01[1e999999999999]", codec="utf-8")
def test_random_bytes_never_raise(oid: int, data: bytes, codec: str) -> None:
    text = render_binary(oid, data, codec)
    assert text is None or isinstance(text, str)
    assert undecoded(oid, data).startswith("\\x" + data.hex())


# --- against the server --------------------------------------------------------------


class Server:
    """The local PostgreSQL printing binary parameters (text result format)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def prints(self, oid: int, data: bytes) -> str | None:
        """What the server prints for ``data`` as a binary ``oid`` parameter; None
        if it refuses the bytes."""
        result = self.conn.pgconn.exec_params(b"SELECT $1", [data], [oid], [1], 0)
        if result.status != ExecStatus.TUPLES_OK:
            return None
        value = result.get_value(0, 0)
        assert value is not None
        return value.decode("utf-8")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    url = make_url(os.environ.get(PG_ENV) or DEFAULT_PG).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 1;"
            "SET bytea_output = 'hex'; SET client_encoding = 'UTF8'"
        )
        yield Server(conn)


@pytest.mark.parametrize(("oid", "data", "text"), CASES)
def test_the_hand_cases_are_what_the_server_prints(
    server: Server, oid: int, data: bytes, text: str
) -> None:
    assert server.prints(oid, data) == text


@pytest.mark.parametrize(("oid", "data"), [c for c in REFUSED if c[0] in v.DECODED_TYPES])
def test_the_refused_cases_are_refused_by_the_server(server: Server, oid: int, data: bytes) -> None:
    assert server.prints(oid, data) is None


#: Values the server takes that are shown as hex all the same (see values.py).
NOT_SHOWN: list[tuple[int, bytes]] = [
    (v.MONEY, pack("q", 123456)),  # cash_out follows lc_monetary
    (791, array(v.MONEY, [pack("q", 5)])),
    # Equal ranges printing differently: which one the server keeps is up to its qsort.
    (
        v.NUMMULTIRANGE,
        multirange(
            rng(LB_INC, numeric(0, 0, 1, 1), numeric(0, 0, 0, 3)),
            rng(LB_INC, numeric(0, 0, 2, 1), numeric(0, 0, 0, 3)),
        ),
    ),
    (v.XML, b'<?xml version="1.0" encoding="LATIN1"?><a>\xe9</a>'),  # not UTF-8
    (v.XML, b"<!DOCTYPE a><a/>"),  # expat reads no DTD within an element
    (v.XML, b"<\xe0\xa5\xa6/>"),  # names expat's tables do not have
]


@pytest.mark.parametrize(("oid", "data"), NOT_SHOWN)
def test_what_jitgate_leaves_undecoded_the_server_takes(
    server: Server, oid: int, data: bytes
) -> None:
    assert render_binary(oid, data) is None
    assert server.prints(oid, data) is not None


def test_xml_is_utf8_whatever_the_client_encoding(server: Server) -> None:
    # xml_recv reads the bytes as the declaration says, UTF-8 without one.
    utf8, latin1 = "<a>été</a>".encode(), "<a>été</a>".encode("latin-1")
    assert render_binary(v.XML, utf8, "latin-1") == "<a>été</a>"
    assert render_binary(v.XML, latin1, "latin-1") is None
    server.conn.execute("SET client_encoding = 'LATIN1'")
    try:
        taken = server.conn.pgconn.exec_params(b"SELECT $1", [utf8], [v.XML], [1], 0)
        refused = server.conn.pgconn.exec_params(b"SELECT $1", [latin1], [v.XML], [1], 0)
    finally:
        server.conn.execute("SET client_encoding = 'UTF8'")
    assert taken.status == ExecStatus.TUPLES_OK
    assert (taken.get_value(0, 0) or b"").decode("latin-1") == "<a>été</a>"
    assert refused.status != ExecStatus.TUPLES_OK


#: A value of each element type that PostgreSQL accepts (from the hand cases).
SAMPLES: dict[int, bytes] = {oid: data for oid, data, _text in CASES}


@pytest.mark.parametrize("oid", sorted(v.ARRAY_TYPES), ids=lambda oid: v.TYPE_NAMES[oid])
def test_each_array_type_reads_an_array_as_the_server_does(server: Server, oid: int) -> None:
    # Not vacuous: the random arrays below are often refused by both sides.
    element = v.ARRAY_TYPES[oid]
    data = array(element, [SAMPLES[element], None, SAMPLES[element]], dims=[3], lower=[0])
    shown = render_binary(oid, data)
    assert shown is not None
    assert shown.startswith("[0:2]={")
    assert shown == server.prints(oid, data)


def _in(low: int, high: int, *special: int, bits: int) -> st.SearchStrategy[int]:
    """Integers in [low, high], around its ends (as far as ``bits`` signed bits
    hold them), and the special values."""
    edges = [
        x
        for e in (low, high)
        for x in range(e - 3, e + 4)
        if -(2 ** (bits - 1)) <= x < 2 ** (bits - 1)
    ]
    return st.integers(low, high) | st.sampled_from(edges + list(special))


_MICROS = _in(-211813488000000000, 9223371331200000000, -(2**63), 2**63 - 1, bits=64)
_texts = st.text(st.characters(codec="utf-8"), max_size=30).map(str.encode) | st.binary(max_size=12)
_digit = st.integers(0, 9999) | st.sampled_from([0, 9999, 10000, -1])
_numerics = st.builds(
    lambda digits, weight, sign, dscale, cut: numeric(weight, sign, dscale, *digits)[:cut],
    st.lists(_digit, max_size=6),
    st.integers(-4, 4) | st.integers(-(2**15), 2**15 - 1),
    st.sampled_from([0, NEG, NAN, PINF, NINF, 0x8000]),
    st.integers(0, 12) | st.integers(0, 0x4001),
    st.none() | st.integers(0, 20),
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
_json_texts = st.builds(
    lambda doc, ascii_only, spaced: json.dumps(
        doc, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":")
    ).encode("utf-8", "surrogatepass"),
    _json_values,
    st.booleans(),
    st.booleans(),
) | st.sampled_from(
    [b"1.50e-3", b"-0", b"1E+2", b"0.000e5", b'{"a":1,"a":2}', b"[1,]", b"01", b'"\\u0000"']
)
_TIMES = _in(0, 86_400_000_000, -1, 86_400_000_001, bits=64)
_ZONES = _in(-57599, 57599, -57600, 57600, 0, 3600, -19800, 3661, bits=32)
_INT32 = _in(-(2**31), 2**31 - 1, bits=32)


def _small(bound: int) -> st.SearchStrategy[int]:
    return st.integers(-bound, bound) | st.sampled_from([0, 1, -1, 12, -12])


def _networks(cidr: bool) -> st.SearchStrategy[bytes]:
    """inet/cidr values (IPv4, IPv6 with runs of zeros and embedded IPv4, masks;
    for cidr mostly without host bits), and damaged ones."""
    words = st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x2001, 0xDB8]), min_size=8, max_size=8)
    v6 = words.map(lambda w: b"".join(x.to_bytes(2, "big") for x in w)) | st.binary(
        min_size=16, max_size=16
    )
    v4 = st.binary(min_size=4, max_size=4)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        family = draw(st.sampled_from([2, 3, 2, 3, 4]))
        address = draw(v4 if family == 2 else v6)
        top = 8 * len(address)
        bits = draw(st.sampled_from([top, top, 0, 8, 24, 64]) | st.integers(0, top + 2))
        if cidr and draw(st.booleans()) and bits <= top:
            number = int.from_bytes(address, "big") >> (top - bits) << (top - bits)
            address = number.to_bytes(len(address), "big")
        size = draw(st.sampled_from([len(address)] * 6 + [4, 16, 5]))
        data = bytes([family, bits, int(cidr), size]) + address
        return data[: draw(st.sampled_from([len(data)] * 8 + [3, len(data) - 1]))]

    return build()


def _damaged(values: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """``values``, sometimes cut short or with bytes after the end."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(values)
        damage = draw(st.sampled_from(["none"] * 8 + ["cut", "extra"]))
        if damage == "cut":
            return data[: draw(st.integers(0, max(0, len(data) - 1)))]
        if damage == "extra":
            return data + draw(st.binary(min_size=1, max_size=3))
        return data

    return build()


@st.composite
def _bit_strings(draw: st.DrawFn) -> bytes:
    """Bit strings, with padding bits set or not, and lengths that do not fit."""
    length = draw(st.integers(0, 40) | st.sampled_from([-1, 2**31 - 8, 2**31 - 7]))
    size = (length + 7) // 8 if 0 <= length <= 40 else draw(st.integers(0, 3))
    size = max(0, size + draw(st.sampled_from([0] * 8 + [1, -1])))
    return bits(length, draw(st.binary(min_size=size, max_size=size)))


#: A value of a range's subtype: (how it orders, its bytes).
_Keyed = tuple[Any, bytes]


def _keyed(values: st.SearchStrategy[int], fmt: str) -> st.SearchStrategy[_Keyed]:
    return (st.integers(-3, 3) | values).map(lambda n: (n, pack(fmt, n)))


_NUMERIC_SPECIALS = {NAN: (2, Decimal(0)), PINF: (1, Decimal(0)), NINF: (-1, Decimal(0))}


def _keyed_numerics(canonical: bool) -> st.SearchStrategy[_Keyed]:
    """numerics and their order; ``canonical``: each value printed one way only
    (1, never 1.0), so that equal values in a multirange never print differently."""

    @st.composite
    def build(draw: st.DrawFn) -> _Keyed:
        special = draw(st.sampled_from([0] * 8 + list(_NUMERIC_SPECIALS)))
        if special:
            return _NUMERIC_SPECIALS[special], numeric(0, special, 0)
        whole = draw(st.integers(-3, 3) | st.integers(-(10**9), 10**9))
        value = Decimal(whole).scaleb(-draw(st.integers(0, 6)))
        if canonical:
            value = value.normalize()
            value = value.quantize(Decimal(1)) if value.as_tuple().exponent > 0 else value
            return (0, value), numeric_of(value)
        return (0, value), numeric_of(value, draw(st.none() | st.integers(0, 8)))

    return build()


def _ranges(values: st.SearchStrategy[_Keyed]) -> st.SearchStrategy[bytes]:
    """Ranges as clients send them (bounds mostly in order, any flags), and
    ones the server refuses: a bound missing or left over, lengths that lie."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        common = [0, LB_INC, UB_INC, LB_INC | UB_INC, EMPTY, LB_INF, UB_INF, LB_INF | UB_INF]
        flags = draw(st.sampled_from(common) | st.integers(0, 255))
        (low_key, low), (high_key, high) = draw(values), draw(values)
        if high_key < low_key and draw(st.integers(0, 9)):
            low, high = high, low
        data = bytes([flags])
        for infinite, value in ((LB_INF, low), (UB_INF, high)):
            present = not flags & (EMPTY | infinite)
            if present == (draw(st.integers(0, 29)) == 0):
                continue
            value += draw(st.sampled_from([b""] * 10 + [b"\x00", b"zz"]))  # not read
            length = draw(st.sampled_from([len(value)] * 10 + [len(value) - 1, -1]))
            data += pack("i", length) + value
        return data

    return build()


def _multiranges(ranges: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        items = draw(st.lists(ranges, max_size=5))
        count = draw(st.sampled_from([len(items)] * 10 + [len(items) + 1, -1]))
        return pack("i", count) + b"".join(pack("i", len(r)) + r for r in items)

    return build()


_RANGE_VALUES: dict[int, tuple[st.SearchStrategy[_Keyed], st.SearchStrategy[_Keyed]]] = {
    # Per range type: its subtype's values for ranges, and for multiranges.
    v.INT4RANGE: (_keyed(_INT32, "i"),) * 2,
    v.INT8RANGE: (_keyed(_in(-(2**63), 2**63 - 1, bits=64), "q"),) * 2,
    v.DATERANGE: (_keyed(_in(-2451545, 2145031948, -(2**31), 2**31 - 1, bits=32), "i"),) * 2,
    v.TSRANGE: (_keyed(_MICROS, "q"),) * 2,
    v.TSTZRANGE: (_keyed(_MICROS, "q"),) * 2,
    v.NUMRANGE: (_keyed_numerics(canonical=False), _keyed_numerics(canonical=True)),
}

_float8s = (
    st.floats().map(lambda x: pack("d", x))
    | st.integers(0, 2**64 - 1).map(lambda n: pack("Q", n))
    | st.sampled_from([pack("d", x) for x in (0.0, -0.0, 1e-6, -1e-6, 1e-7, -1.0, math.nan)])
)


def _geometric(count: int) -> st.SearchStrategy[bytes]:
    """``count`` float8s, or bytes of another length."""
    exact = st.lists(_float8s, min_size=count, max_size=count).map(b"".join)
    return exact | st.binary(max_size=8 * count + 1)


def _paths(closed_flag: bool) -> st.SearchStrategy[bytes]:
    """Paths (with their closed flag) or polygons: a count, then the points."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        count = draw(st.integers(0, 4))
        declared = draw(st.sampled_from([count] * 8 + [count + 1, count - 1, -1, 2**31 - 1]))
        points = draw(st.lists(_float8s, min_size=2 * count, max_size=2 * count))
        head = pack("i", declared)
        if closed_flag:
            head = bytes([draw(st.sampled_from([0, 1, 0xFF]))]) + head
        return head + b"".join(points)

    return build()


#: xml as clients send it, well-formed or not; not what is knowingly left
#: undecoded (see NOT_SHOWN): another encoding, a DOCTYPE.
_XML_DECLARATIONS = [
    '<?xml version="1.0"?>',
    "<?xml version='1.0' encoding='UTF-8'?>\n",
    '<?xml version="1.0" standalone="no"?>\n\n',
    "<?xml  version='1.1'  encoding = 'utf8' standalone = 'yes' ?>",
    "<?xml version='1.0'encoding='x'?>",
    "<?xml ?>",
    "<?xml-stylesheet x?>",
]
_XML_PARTS = [
    *("<a>", "</a>", "<b x='1'>", "</b>", "<c/>", "<p:d/>", "<e a='x' a='y'/>", '<f a="<"/>'),
    *("text", " ", "\n", "\r\n", "\t", '"', "'", "=", "&", "<", ">", "]]>", "?>"),
    *("&amp;", "&lt;", "&#65;", "&#x1F600;", "&#0;", "&#xFFFE;", "&nbsp;"),
    *("<!-- c -->", "<!--", "-->", "<!-- - -- -->", "<![CDATA[x<y]]>", "<![CDATA[", "<?pi d?>"),
    *('<?xml version="1.0"?>', "<g xmlns:p='u' p:x='1' p:x='2'/>"),
    *("é", "\u00a0", "\ufeff", "\ufffd", "\x01", "\x7f", "\u0085", "\U0001f600", "\ufffe", "\x00"),
]
_xml_texts = st.builds(
    lambda declaration, parts, wrap: (
        declaration + ("<w>{}</w>" if wrap else "{}").format("".join(parts))
    ).encode(),
    st.sampled_from([""] * 8 + _XML_DECLARATIONS),
    st.lists(st.sampled_from(_XML_PARTS), max_size=8),
    st.booleans(),
)


#: For each decoded type, bytes a client would send, and bytes none would.
VALUES: dict[int, st.SearchStrategy[bytes]] = {
    v.BOOL: st.binary(max_size=2),
    v.INT2: _in(-(2**15), 2**15 - 1, bits=16).map(lambda n: pack("h", n)) | st.binary(max_size=3),
    v.INT4: _in(-(2**31), 2**31 - 1, bits=32).map(lambda n: pack("i", n)) | st.binary(max_size=5),
    v.INT8: _in(-(2**63), 2**63 - 1, bits=64).map(lambda n: pack("q", n)) | st.binary(max_size=9),
    v.OID: st.integers(0, 2**32 - 1).map(lambda n: pack("I", n)),
    v.FLOAT4: st.integers(0, 2**32 - 1).map(lambda n: pack("I", n))
    | st.floats(width=32).map(lambda x: pack("f", x)),
    v.FLOAT8: st.integers(0, 2**64 - 1).map(lambda n: pack("Q", n))
    | st.floats().map(lambda x: pack("d", x)),
    v.TEXT: _texts,
    v.VARCHAR: _texts,
    v.BPCHAR: _texts,
    v.NAME: _texts | st.integers(60, 66).map(lambda n: b"n" * n),
    v.UNKNOWN: _texts,
    v.BYTEA: st.binary(max_size=20),
    v.UUID: st.binary(min_size=15, max_size=17),
    v.DATE: _in(-2451545, 2145031948, -(2**31), 2**31 - 1, bits=32).map(lambda n: pack("i", n)),
    v.TIMESTAMP: _MICROS.map(lambda n: pack("q", n)),
    v.TIMESTAMPTZ: _MICROS.map(lambda n: pack("q", n)),
    v.NUMERIC: _numerics,
    v.JSON: _json_texts | _texts,
    v.JSONB: (_json_texts | _texts).map(lambda b: b"\x01" + b) | st.binary(max_size=6),
    v.CHAR: st.binary(max_size=2),
    v.TIME: _TIMES.map(lambda n: pack("q", n)) | st.binary(max_size=9),
    v.TIMETZ: st.tuples(_TIMES, _ZONES).map(lambda t: pack("qi", *t)) | st.binary(max_size=13),
    v.INTERVAL: st.tuples(_MICROS | _small(10**12), _INT32 | _small(400), _INT32 | _small(30)).map(
        lambda t: pack("qii", *t)
    )
    | st.binary(max_size=17),
    v.INET: _networks(cidr=False),
    v.CIDR: _networks(cidr=True),
    v.MACADDR: st.binary(min_size=5, max_size=7),
    v.MACADDR8: st.binary(min_size=5, max_size=9),
    v.BIT: _bit_strings(),
    v.VARBIT: _bit_strings(),
    v.POINT: _geometric(2),
    v.LSEG: _geometric(4),
    v.BOX: _geometric(4),
    v.LINE: _geometric(3),
    v.CIRCLE: _geometric(3),
    v.PATH: _paths(closed_flag=True),
    v.POLYGON: _paths(closed_flag=False),
    v.XML: _xml_texts | _texts,
}

for _range_type, (_bounds, _canonical_bounds) in _RANGE_VALUES.items():
    VALUES[_range_type] = _damaged(_ranges(_bounds))
for _multirange_type, _range_type in v.MULTIRANGE_TYPES.items():
    # Inside, ranges whose bounds tie print alike: see test_what_jitgate_leaves_undecoded.
    VALUES[_multirange_type] = _damaged(_multiranges(_ranges(_RANGE_VALUES[_range_type][1])))


def _arrays(element: int, items: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Arrays of ``element`` as clients send them (up to 3 dimensions, NULLs,
    lower bounds other than 1), and damaged ones: another element type, bad
    flags, cut short or with bytes after the end."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        dims = draw(st.lists(st.integers(0, 3), max_size=3))
        count = math.prod(dims) if dims else 0
        values = draw(st.lists(st.none() | items, min_size=count, max_size=count))
        bounds = st.sampled_from([1, 1, 1, 0, -2, 5, 2**31 - 2])
        lower = draw(st.lists(bounds, min_size=len(dims), max_size=len(dims)))  # fmt: skip
        flags = draw(st.sampled_from([0, 1, 1, 2]))
        element_type = draw(st.sampled_from([element] * 8 + [v.INT4, v.TEXT]))
        data = array(element_type, values, dims, lower, flags)
        damage = draw(st.sampled_from(["none"] * 6 + ["cut", "extra"]))
        if damage == "cut":
            return data[: draw(st.integers(0, max(0, len(data) - 1)))]
        if damage == "extra":
            return data + draw(st.binary(min_size=1, max_size=4))
        return data

    return build()


for _array_type, _element in v.ARRAY_TYPES.items():
    VALUES[_array_type] = _arrays(_element, VALUES[_element])


def test_every_decoded_type_is_checked_against_the_server() -> None:
    assert set(VALUES) == v.DECODED_TYPES


@pytest.mark.parametrize("oid", sorted(VALUES), ids=lambda oid: v.TYPE_NAMES[oid])
@CHECKED
@given(data=st.data())
def test_values_read_as_the_server_prints_them(
    server: Server, oid: int, data: st.DataObject
) -> None:
    value = data.draw(VALUES[oid])
    assert render_binary(oid, value) == server.prints(oid, value)


# --- through the gateway ---------------------------------------------------------------

INT4_2 = pack("i", 2)
#: Bytes that read as text ("1234") and as an int4 (825373492) alike.
AMBIGUOUS = b"1234"


@pytest.fixture
async def env(
    fresh_pg_url: str, sqlite_template: Path, tmp_path: Path
) -> AsyncIterator[GatewayEnv]:
    await create_table_t(fresh_pg_url, 5)
    async with gateway_env(fresh_pg_url, sqlite_template, tmp_path) as built:
        yield built


@pytest.fixture
async def client(env: GatewayEnv) -> AsyncIterator[RawClient]:
    client = await env.login()
    try:
        yield client
    finally:
        await client.close()


async def held(
    env: GatewayEnv, client: RawClient, *parts: bytes, approve: bool = False
) -> dict[str, Any]:
    """Send ``parts`` (ending with the held Execute and a Sync); the request's view,
    once it is denied (or approved) and the batch answered."""
    await client.send(*parts)
    seen: list[Message] = []
    while (request_id := held_request_id(seen)) is None:
        seen.append(await client.read())
    view = dict(await env.service.get(env.principals["bob"], request_id))
    if approve:
        await env.approve(request_id)
    else:
        await env.deny(request_id)
    answer = await client.until_ready()
    assert codes(answer) == ([] if approve else ["42501"]), answer
    return view


def attributes(view: dict[str, Any]) -> dict[str, Any]:
    return dict(view["action"]["attributes"])


async def test_a_held_statement_shows_decoded_values_beside_the_exact_ones(
    env: GatewayEnv, client: RawClient
) -> None:
    text = "DELETE FROM t WHERE id = $1 AND v = $2"
    # As asyncpg does: no types in Parse, a Describe, then binary values.
    assert not codes(await client.round(parse("", text), describe("S", ""), SYNC))
    view = await held(
        env,
        client,
        bind("", "", [INT4_2, b"v2"], formats=[1, 1]),
        execute(),
        SYNC,
        approve=True,
    )
    exact = ["\\x00000002", "\\x7632"]
    assert attributes(view)["parameters"] == exact
    assert attributes(view)["parameter_values"] == ["2", "v2"]
    # The approval is bound to the exact bytes, as before.
    action = Action(
        kind=ActionKind.SQL,
        text=text,
        target="app",
        environment="production",
        attributes={"parameters": exact},
    )
    assert view["fingerprint"] == fingerprint(action)
    # The statement's record carries both too.
    assert await env.recorder.flush(10)
    async with env.db.transaction(readonly=True) as session:
        events = await list_events(session, after_seq=0, limit=1000)
    (record,) = [e for e in events if e.type == "statement.executed" and e.payload["text"] == text]
    assert record.payload["parameters"] == exact
    assert record.payload["extra"] == {"parameter_values": ["2", "v2"]}


async def test_an_array_for_any_shows_its_elements(env: GatewayEnv, client: RawClient) -> None:
    # What asyncpg sends for conn.execute("... = ANY($1)", [1, None, 3]): the
    # bulk delete an approver most needs to read.
    text = "DELETE FROM t WHERE id = ANY($1)"
    assert not codes(await client.round(parse("", text), describe("S", ""), SYNC))
    ids = array(v.INT4, [pack("i", 1), None, pack("i", 3)])
    view = await held(env, client, bind("", "", [ids], formats=[1]), execute(), SYNC, approve=True)
    assert attributes(view)["parameters"] == ["\\x" + ids.hex()]
    assert attributes(view)["parameter_values"] == ["{1,NULL,3}"]
    left = await client.simple("SELECT string_agg(id::text, ',' ORDER BY id) FROM t")
    assert b"2,4,5" in b"".join(body for kind, body in left if kind == "D")


@pytest.mark.parametrize("count", [500, 1400])
async def test_binary_values_past_the_bound_are_not_decoded(
    env: GatewayEnv, client: RawClient, count: int
) -> None:
    # Decoding runs on the gateway's event loop: 16 KiB of binary values at
    # most (1,400 float8s are 16.8 KB with their lengths: over it).
    text = "DELETE FROM t WHERE id::float8 = ANY($1)"
    assert not codes(await client.round(parse("", text), describe("S", ""), SYNC))
    floats = array(v.FLOAT8, [pack("d", i + 0.5) for i in range(count)])
    view = await held(env, client, bind("", "", [floats], formats=[1]), execute(), SYNC)
    assert attributes(view)["parameters"] == ["\\x" + floats.hex()]
    if len(floats) <= 16 * 1024:
        shown = attributes(view)["parameter_values"]
        assert shown == ["{" + ",".join(f"{i + 0.5}" for i in range(count)) + "}"]
    else:
        assert "parameter_values" not in attributes(view)


async def test_text_values_alone_are_shown_once(env: GatewayEnv, client: RawClient) -> None:
    view = await held(
        env, client, parse("", "DELETE FROM t WHERE id = $1"), bind("", "", [b"2"]), execute(), SYNC
    )
    assert attributes(view)["parameters"] == ["2"]
    assert "parameter_values" not in attributes(view)


async def test_declared_types_need_no_describe(env: GatewayEnv, client: RawClient) -> None:
    # As psycopg does for %b: the OIDs in Parse. NULL stays null.
    view = await held(
        env,
        client,
        parse("", "DELETE FROM t WHERE id = $1 OR v = $2", [v.INT8, 0]),
        bind("", "", [pack("q", 3), None], formats=[1]),
        execute(),
        SYNC,
    )
    assert attributes(view)["parameter_values"] == ["3", None]


async def test_an_unknown_type_shows_labelled_hex(env: GatewayEnv, client: RawClient) -> None:
    view = await held(
        env,
        client,
        parse("", "DELETE FROM t WHERE id = $1"),
        bind("", "", [INT4_2], formats=[1]),
        execute(),
        SYNC,
    )
    assert attributes(view)["parameters"] == ["\\x00000002"]
    assert attributes(view)["parameter_values"] == [
        "\\x00000002 (binary, type not known to jitgate)"
    ]


async def test_a_re_parse_does_not_reuse_the_types_of_the_statement_it_replaces(
    env: GatewayEnv, client: RawClient
) -> None:
    # s1 takes text; the Describe says so.
    await client.round(parse("s1", "DELETE FROM t WHERE v = $1"), describe("S", "s1"), SYNC)
    # Closed and parsed again taking an int: until described, its type is unknown.
    run = (bind("", "s1", [AMBIGUOUS], formats=[1]), execute(), SYNC)
    redefine = (close("S", "s1"), parse("s1", "DELETE FROM t WHERE id = $1"))
    view = await held(env, client, *redefine, *run)
    assert attributes(view)["parameter_values"] == [
        "\\x31323334 (binary, type not known to jitgate)"
    ]
    await client.round(describe("S", "s1"), SYNC)
    view = await held(env, client, *run)
    assert attributes(view)["parameter_values"] == ["825373492"]
    # The unnamed statement, replaced by a Parse declaring another type.
    await client.round(parse("", "DELETE FROM t WHERE v = $1"), describe("S", ""), SYNC)
    view = await held(
        env,
        client,
        parse("", "DELETE FROM t WHERE id = $1", [v.INT4]),
        bind("", "", [AMBIGUOUS], formats=[1]),
        execute(),
        SYNC,
    )
    assert attributes(view)["parameter_values"] == ["825373492"]


async def test_a_refused_parse_keeps_the_types_of_the_statement_it_would_replace(
    env: GatewayEnv, client: RawClient
) -> None:
    await client.round(parse("s1", "DELETE FROM t WHERE id = $1"), describe("S", "s1"), SYNC)
    # s1 exists: the server refuses the Parse, so s1 is still the int statement.
    view = await held(
        env,
        client,
        parse("s1", "DELETE FROM t WHERE v = $1", [v.TEXT]),
        SYNC,
        bind("", "s1", [AMBIGUOUS], formats=[1]),
        execute(),
        SYNC,
    )
    assert view["action"]["text"] == "DELETE FROM t WHERE id = $1"
    assert attributes(view)["parameter_values"] == ["825373492"]


async def test_a_statement_defined_again_knows_only_its_declared_types(
    env: GatewayEnv, client: RawClient
) -> None:
    await client.round(parse("s1", "DELETE FROM t WHERE id = $1"), describe("S", "s1"), SYNC)
    # SQL puts a statement taking text under the name; the server describes that one.
    answer = await client.round(query("DEALLOCATE s1; PREPARE s1(text) AS SELECT $1"))
    assert not codes(answer), answer
    await client.round(describe("S", "s1"), SYNC)
    # The gateway defines its s1 again before the Bind: the server infers its
    # type anew, so what either Describe said is not shown as its type.
    view = await held(env, client, bind("", "s1", [AMBIGUOUS], formats=[1]), execute(), SYNC)
    assert view["action"]["text"] == "DELETE FROM t WHERE id = $1"
    assert attributes(view)["parameter_values"] == [
        "\\x31323334 (binary, type not known to jitgate)"
    ]


async def test_a_describe_of_a_name_sql_redefined_teaches_nothing(
    env: GatewayEnv, client: RawClient
) -> None:
    await client.round(parse("s1", "DELETE FROM t WHERE id = $1"), SYNC)
    view = await held(
        env,
        client,
        # The unnamed portal runs s1 as it is now (taking an int), whatever s1 becomes.
        bind("", "s1", [AMBIGUOUS], formats=[1]),
        # SQL puts a statement taking text under the name s1 ...
        parse("s2", "DEALLOCATE s1"),
        bind("p2", "s2"),
        execute("p2"),
        parse("s3", "PREPARE s1(text) AS SELECT $1"),
        bind("p3", "s3"),
        execute("p3"),
        # ... and the server describes that one: not the portal's statement.
        describe("S", "s1"),
        execute(""),
        SYNC,
    )
    assert view["action"]["text"] == "DELETE FROM t WHERE id = $1"
    assert attributes(view)["parameter_values"] == [
        "\\x31323334 (binary, type not known to jitgate)"
    ]


#: Floats whose neighbours' midpoints are often short decimals (large integers).
_ROUND_FLOATS = st.integers(2**24, 2**70).map(float)


@pytest.mark.parametrize(
    ("oid", "fmt"), [(v.FLOAT4, "f"), (v.FLOAT8, "d")], ids=["float4", "float8"]
)
@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(x=_ROUND_FLOATS | st.floats(allow_nan=False, width=32))
def test_floats_never_print_a_midpoint(server: Server, oid: int, fmt: str, x: float) -> None:
    data = pack(fmt, x)
    assert render_binary(oid, data) == server.prints(oid, data)


# --- the fast path of float4out / float8out ------------------------------------------------

_FORMATS = {"float8": (v._BINARY64, 64), "float4": (v._BINARY32, 32)}


def _positive_finite_bits(bitsize: int, mantissa_bits: int) -> st.SearchStrategy[int]:
    exponent = st.integers(0, (1 << (bitsize - 1 - mantissa_bits)) - 2)  # not inf/NaN
    edge = st.sampled_from([1, 2, 3, (1 << mantissa_bits) - 1, (1 << mantissa_bits) - 2])
    fraction = st.one_of(st.integers(0, (1 << mantissa_bits) - 1), edge)
    return st.builds(lambda e, f: (e << mantissa_bits) | f, exponent, fraction).filter(bool)


@pytest.mark.parametrize("name", sorted(_FORMATS))
@settings(max_examples=3000, deadline=None)
@given(data=st.data())
def test_the_fast_shortest_digits_are_the_exact_ones(name: str, data: st.DataObject) -> None:
    kind, bitsize = _FORMATS[name]
    bits = data.draw(_positive_finite_bits(bitsize, kind.mantissa_bits))
    (value,) = kind.layout.unpack(kind.bits.pack(bits))
    fast = v._rounded_shortest(kind, bits, value)
    if bits & ((1 << kind.mantissa_bits) - 1) == 0:
        assert fast is None  # a power of two: the interval is not symmetric
    else:
        assert fast == v._shortest(kind, bits)
