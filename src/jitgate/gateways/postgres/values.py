"""Binary parameter values as PostgreSQL prints them, for approvers.

A held statement's parameters are shown to the people who approve it. Values
a client binds in text format read as they are; values bound in binary format
(asyncpg always, psycopg's ``%b``) are bytes in the type's binary "send"
format, which means nothing to a person. :func:`render_binary` gives, for the
common types, the text PostgreSQL's output function prints for the value the
server would receive: ``42`` rather than ``\\x0000002a``.

Pure functions over bytes, no I/O. Only the *display* comes from here: what
runs, and what an approval is bound to, are the exact bytes the client sent
(``jitgate.gateways.postgres.session``). So nothing here may raise or guess:
bytes the server would refuse (a wrong length, an invalid encoding, a NaN
sign with digits out of range...) and types not handled give ``None``, and
the caller shows the hex instead (:func:`undecoded`), labelled with the type.

Dates and times are printed in the ISO style (PostgreSQL's default
``DateStyle``), ``timestamptz`` in UTC, whatever the session's settings;
``jsonb`` as the server stores it (keys sorted, the last of a repeated key
kept, numbers as ``numeric`` prints them), ``json`` as sent.

Values are printed as the server keeps them, which is not always as sent:
``bit``/``varbit`` with the padding bits of the last byte cleared (the server
clears them rather than refusing them); discrete ranges (``int4range``,
``int8range``, ``daterange``) canonical, ``[1,5]`` as ``[1,6)``; multiranges
sorted and merged, ``{[5,7),[1,5)}`` as ``{[1,7)}``; a ``box`` with its high
corner first. Equal ranges in a multirange that print differently (numeric
``1.0`` and ``1.00``) give None: which one the server keeps depends on its
sort. The geometric types print their float8s as ``float8out`` does with the
default ``extra_float_digits``.

``xml`` is read as ``xml_recv`` reads it: as UTF-8 unless its declaration
names another encoding (then None), whatever ``client_encoding`` is, and
printed with the declaration rewritten as ``xml_out`` does. The server also
requires it well-formed, with ``libxml2``: what expat (Python's parser)
refuses gives None, what it takes is trusted to be taken by the server too
(it was, in every comparison the tests make), in the default ``xmloption``
(``content``: a session with ``xmloption = document`` refuses content that
is not one document, and the statement fails).

``money`` is not decoded: ``cash_out`` prints it by the session's
``lc_monetary``, which any session may SET and the server does not report,
and which even decides how many of the int64's digits are decimals.
:func:`undecoded` labels its hex with the amount in the currency's smallest
unit instead.
"""

from __future__ import annotations

import itertools
import json
import math
import string
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Final
from xml.parsers import expat

# --- type OIDs (pg_type.dat) -----------------------------------------------------------

BOOL: Final = 16
BYTEA: Final = 17
NAME: Final = 19
INT8: Final = 20
INT2: Final = 21
INT4: Final = 23
TEXT: Final = 25
OID: Final = 26
JSON: Final = 114
FLOAT4: Final = 700
FLOAT8: Final = 701
UNKNOWN: Final = 705
BPCHAR: Final = 1042
VARCHAR: Final = 1043
DATE: Final = 1082
TIMESTAMP: Final = 1114
TIMESTAMPTZ: Final = 1184
NUMERIC: Final = 1700
UUID: Final = 2950
JSONB: Final = 3802
CHAR: Final = 18
CIDR: Final = 650
MACADDR8: Final = 774
MACADDR: Final = 829
INET: Final = 869
TIME: Final = 1083
INTERVAL: Final = 1186
TIMETZ: Final = 1266
XML: Final = 142
POINT: Final = 600
LSEG: Final = 601
PATH: Final = 602
BOX: Final = 603
POLYGON: Final = 604
LINE: Final = 628
CIRCLE: Final = 718
MONEY: Final = 790
BIT: Final = 1560
VARBIT: Final = 1562
INT4RANGE: Final = 3904
NUMRANGE: Final = 3906
TSRANGE: Final = 3908
TSTZRANGE: Final = 3910
DATERANGE: Final = 3912
INT8RANGE: Final = 3926
INT4MULTIRANGE: Final = 4451
NUMMULTIRANGE: Final = 4532
TSMULTIRANGE: Final = 4533
TSTZMULTIRANGE: Final = 4534
DATEMULTIRANGE: Final = 4535
INT8MULTIRANGE: Final = 4536

#: Names for the label of values shown as hex: the decoded types, and others
#: clients commonly bind in binary (asyncpg: arrays, ranges, intervals...).
TYPE_NAMES: Final[dict[int, str]] = {
    BOOL: "bool",
    BYTEA: "bytea",
    18: "char",
    NAME: "name",
    INT8: "int8",
    INT2: "int2",
    INT4: "int4",
    TEXT: "text",
    OID: "oid",
    JSON: "json",
    142: "xml",
    600: "point",
    650: "cidr",
    774: "macaddr8",
    790: "money",
    829: "macaddr",
    869: "inet",
    FLOAT4: "float4",
    FLOAT8: "float8",
    UNKNOWN: "unknown",
    BPCHAR: "bpchar",
    VARCHAR: "varchar",
    DATE: "date",
    1083: "time",
    TIMESTAMP: "timestamp",
    TIMESTAMPTZ: "timestamptz",
    1186: "interval",
    1266: "timetz",
    1560: "bit",
    1562: "varbit",
    NUMERIC: "numeric",
    UUID: "uuid",
    3614: "tsvector",
    JSONB: "jsonb",
    3904: "int4range",
    3906: "numrange",
    3908: "tsrange",
    3910: "tstzrange",
    3912: "daterange",
    3926: "int8range",
    199: "json[]",
    1000: "bool[]",
    1003: "name[]",
    1001: "bytea[]",
    1005: "int2[]",
    1007: "int4[]",
    1009: "text[]",
    1014: "bpchar[]",
    1015: "varchar[]",
    1016: "int8[]",
    1021: "float4[]",
    1022: "float8[]",
    1028: "oid[]",
    1115: "timestamp[]",
    1182: "date[]",
    1185: "timestamptz[]",
    1231: "numeric[]",
    2951: "uuid[]",
    3807: "jsonb[]",
    1002: "char[]",
    651: "cidr[]",
    775: "macaddr8[]",
    1040: "macaddr[]",
    1041: "inet[]",
    1183: "time[]",
    1187: "interval[]",
    1270: "timetz[]",
    LSEG: "lseg",
    PATH: "path",
    BOX: "box",
    POLYGON: "polygon",
    LINE: "line",
    CIRCLE: "circle",
    INT4MULTIRANGE: "int4multirange",
    NUMMULTIRANGE: "nummultirange",
    TSMULTIRANGE: "tsmultirange",
    TSTZMULTIRANGE: "tstzmultirange",
    DATEMULTIRANGE: "datemultirange",
    INT8MULTIRANGE: "int8multirange",
    143: "xml[]",
    1017: "point[]",
    1018: "lseg[]",
    1019: "path[]",
    1020: "box[]",
    1027: "polygon[]",
    629: "line[]",
    719: "circle[]",
    791: "money[]",
    1561: "bit[]",
    1563: "varbit[]",
    3905: "int4range[]",
    3907: "numrange[]",
    3909: "tsrange[]",
    3911: "tstzrange[]",
    3913: "daterange[]",
    3927: "int8range[]",
    6150: "int4multirange[]",
    6151: "nummultirange[]",
    6152: "tsmultirange[]",
    6153: "tstzmultirange[]",
    6155: "datemultirange[]",
    6157: "int8multirange[]",
}


def undecoded(oid: int, data: bytes) -> str:
    """How a binary value :func:`render_binary` cannot read is shown: its hex
    (as before values were decoded), labelled so the approver knows why."""
    if oid == 0:
        why = "binary, type not known to jitgate"
    else:
        name = TYPE_NAMES.get(oid)
        why = f"binary {name}, not decoded" if name else f"binary, type OID {oid}, not decoded"
        if oid == MONEY and len(data) == _INT8.size:
            # cash_out's text depends on the session's lc_monetary, which the
            # gateway cannot see (see _RENDERERS); the amount itself is exact.
            why += f": {_INT8.unpack(data)[0]} in the smallest unit of lc_monetary's currency"
    return f"\\x{data.hex()} ({why})"


def render_binary(oid: int, data: bytes, codec: str = "utf-8") -> str | None:
    """The text PostgreSQL prints for the value ``data`` of type ``oid`` in the
    binary format, or None if the type is not handled or the server would
    refuse the bytes. ``codec`` is the Python codec of the session's
    ``client_encoding`` ("" when jitgate cannot read it): text arrives in it."""
    render = _RENDERERS.get(oid)
    if render is None:
        return None
    try:
        return render(data, codec)
    except (ValueError, OverflowError, RecursionError, struct.error, InvalidOperation):
        # Malformed input of any sort: shown as hex, never an error on the hold.
        return None


# --- integers and booleans -------------------------------------------------------------

_INT2: Final = struct.Struct("!h")
_INT4: Final = struct.Struct("!i")
_INT8: Final = struct.Struct("!q")
_UINT4: Final = struct.Struct("!I")
_FLOAT4: Final = struct.Struct("!f")
_FLOAT8: Final = struct.Struct("!d")


def _integer(layout: struct.Struct) -> Callable[[bytes, str], str | None]:
    def render(data: bytes, _codec: str) -> str | None:
        if len(data) != layout.size:
            return None
        return str(layout.unpack(data)[0])

    return render


def _bool(data: bytes, _codec: str) -> str | None:
    # boolrecv: any byte other than 0 is true; boolout prints t/f.
    if len(data) != 1:
        return None
    return "t" if data[0] else "f"


# --- floating point --------------------------------------------------------------------

#: Decimal exponents printed in fixed notation (src/common/d2s.c and f2s.c: as printf's %g).
_FIXED_FLOAT8: Final = range(-4, 15)
_FIXED_FLOAT4: Final = range(-4, 6)
_UINT8: Final = struct.Struct("!Q")


@dataclass(frozen=True, slots=True)
class _Binary:
    """An IEEE 754 binary format: what float4out and float8out print from."""

    layout: struct.Struct
    bits: struct.Struct
    mantissa_bits: int
    bias: int
    fixed: range
    #: Significant digits that always identify a value of the format.
    digits: int


_BINARY32: Final = _Binary(_FLOAT4, _UINT4, 23, 127, _FIXED_FLOAT4, 9)
_BINARY64: Final = _Binary(_FLOAT8, _UINT8, 52, 1023, _FIXED_FLOAT8, 17)


def _float(kind: _Binary) -> Callable[[bytes, str], str | None]:
    def render(data: bytes, _codec: str) -> str | None:
        if len(data) != kind.layout.size:
            return None
        return _float_out(kind, data)

    return render


def _float_out(kind: _Binary, data: bytes) -> str:
    """float4out or float8out of ``data``, exactly ``kind``'s size."""
    (value,) = kind.layout.unpack(data)
    special = _float_special(value)
    if special is not None:
        return special
    (bits,) = kind.bits.unpack(data)
    positive = bits & ~(1 << (8 * kind.layout.size - 1))
    found = _rounded_shortest(kind, positive, abs(value))
    digits, exponent = found if found is not None else _shortest(kind, positive)
    return _float_text(value < 0, digits, exponent, kind.fixed)


def _float_special(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    return None


def _shortest(kind: _Binary, bits: int) -> tuple[str, int]:
    """(significant digits, decimal exponent of the first) of the shortest decimal
    strictly between the value of ``bits`` (positive, finite, not zero) and the
    midpoints to its neighbours, the nearest one when several are: what
    PostgreSQL's Ryu prints (d2s.c, f2s.c). Unlike Python's repr() it never
    takes a midpoint itself (STRICTLY_SHORTEST 0), so it is computed exactly here.
    """
    biased, fraction = bits >> kind.mantissa_bits, bits & ((1 << kind.mantissa_bits) - 1)
    mantissa = fraction | (1 << kind.mantissa_bits) if biased else fraction
    shift = (biased or 1) - kind.bias - kind.mantissa_bits
    value = Fraction(mantissa) * Fraction(2) ** shift
    half_up = Fraction(2) ** shift / 2
    # Just above a power of two the value below is nearer: the interval is narrower there.
    half_down = half_up / 2 if fraction == 0 and biased > 1 else half_up
    low, high = value - half_down, value + half_up
    exponent = _decimal_exponent(value)
    for precision in range(1, kind.digits + 1):
        scale = Fraction(10) ** (exponent - precision + 1)
        floor = math.floor(value / scale)
        inside = [c for c in (floor, floor + 1) if low < c * scale < high]
        if inside:
            best = min(inside, key=lambda c: (abs(c * scale - value), c % 2))
            text = str(best)
            return text.rstrip("0"), exponent - precision + len(text)
    raise AssertionError("a format's digits always identify its values")  # pragma: no cover


def _rounded_shortest(kind: _Binary, bits: int, value: float) -> tuple[str, int] | None:
    """:func:`_shortest`, fast (a few µs where it takes a hundred), or None
    where this shortcut does not apply (the value's mantissa is a power of two).

    Elsewhere the interval around the value is symmetric, so if any decimal
    of a given length lies inside it, the one nearest the value does, and
    that is the value correctly rounded to that length (halfway: the even
    one), which Python's formatting gives. Lengths are tried from the one
    repr() needs (repr takes a midpoint when it reads back to the value, so
    it is never longer than the answer), each checked exactly in integers.
    """
    biased, fraction = bits >> kind.mantissa_bits, bits & ((1 << kind.mantissa_bits) - 1)
    if fraction == 0:
        return None
    mantissa = fraction | (1 << kind.mantissa_bits) if biased else fraction
    half = (biased or 1) - kind.bias - kind.mantissa_bits - 1  # half an ulp is 2**half
    first = 1
    if kind.mantissa_bits == 52:
        mantissa_text = repr(value).partition("e")[0]
        first = len(mantissa_text.replace(".", "").strip("0")) or 1
    for precision in range(first, kind.digits + 1):
        mantissa_text, _, exponent_text = f"{value:.{precision - 1}e}".partition("e")
        digits = mantissa_text.replace(".", "")
        exponent = int(exponent_text)
        if _strictly_near(int(digits), exponent - precision + 1, mantissa, half):
            return digits.rstrip("0"), exponent
    return None


def _strictly_near(digits: int, power: int, mantissa: int, half: int) -> bool:
    """Whether ``digits * 10**power`` lies strictly between ``(2 * mantissa -
    1) * 2**half`` and ``(2 * mantissa + 1) * 2**half``, in exact integers."""
    twos = max(0, -power, -half)
    fives = max(0, -power)
    candidate: int = digits * 2 ** (power + twos) * 5 ** (power + fives)
    scale: int = 2 ** (half + twos) * 5**fives
    return (2 * mantissa - 1) * scale < candidate < (2 * mantissa + 1) * scale


def _decimal_exponent(value: Fraction) -> int:
    """floor(log10(value)) for a positive fraction, exactly."""
    exponent = len(str(value.numerator)) - len(str(value.denominator))
    while Fraction(10) ** exponent > value:
        exponent -= 1
    while Fraction(10) ** (exponent + 1) <= value:
        exponent += 1
    return exponent


def _float_text(negative: bool, digits: str, exponent: int, fixed: range) -> str:
    sign = "-" if negative else ""
    if exponent in fixed:
        if exponent < 0:
            return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
        whole = digits[: exponent + 1].ljust(exponent + 1, "0")
        rest = digits[exponent + 1 :]
        return f"{sign}{whole}.{rest}" if rest else f"{sign}{whole}"
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


# --- text ------------------------------------------------------------------------------

#: What cp932 decodes as one byte where PostgreSQL's SJIS reads the first of two
#: (0x80, 0xA0, 0xFD-0xFF): text holding one is not what the server reads.
SJIS_STRAYS: Final = frozenset("\x80\uf8f0\uf8f1\uf8f2\uf8f3")
#: PostgreSQL's NAMEDATALEN: a name is at most 63 bytes.
_NAME_BYTES: Final = 63


def client_text(data: bytes, codec: str) -> str | None:
    """``data`` read in the client encoding as the server reads it, or None if
    it cannot be (an encoding jitgate cannot read, invalid bytes, or a NUL,
    which no PostgreSQL text can hold)."""
    if not codec:
        return None
    try:
        text = data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None
    if "\x00" in text or (codec == "cp932" and not SJIS_STRAYS.isdisjoint(text)):
        return None
    return text


def _text(data: bytes, codec: str) -> str | None:
    return client_text(data, codec)


def _name(data: bytes, codec: str) -> str | None:
    text = client_text(data, codec)
    if text is None or len(text.encode("utf-8", "surrogatepass")) > _NAME_BYTES:
        return None  # namerecv refuses it ("identifier too long")
    return text


def _bytea(data: bytes, _codec: str) -> str | None:
    return "\\x" + data.hex()  # bytea_output = hex, the default


def _uuid(data: bytes, _codec: str) -> str | None:
    if len(data) != 16:
        return None
    return str(uuid.UUID(bytes=data))


# --- dates and times -------------------------------------------------------------------

#: Julian day of 2000-01-01, PostgreSQL's epoch for dates and timestamps.
_POSTGRES_EPOCH_JDATE: Final = 2451545
#: Valid dates: Julian day 0 (4714-11-24 BC) up to, not including, 5874898-01-01.
_DATE_MIN: Final = -_POSTGRES_EPOCH_JDATE
_DATE_END: Final = 2147483494 - _POSTGRES_EPOCH_JDATE
#: Valid timestamps, in microseconds since the epoch: 4714-11-24 BC to 294277-01-01.
_TIMESTAMP_MIN: Final = -211813488000000000
_TIMESTAMP_END: Final = 9223371331200000000
_USECS_PER_DAY: Final = 86_400_000_000
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _date(data: bytes, _codec: str) -> str | None:
    if len(data) != 4:
        return None
    (days,) = _INT4.unpack(data)
    if days == _INT32_MIN:
        return "-infinity"
    if days == _INT32_MAX:
        return "infinity"
    if not _DATE_MIN <= days < _DATE_END:
        return None  # date_recv: "date out of range"
    year, month, day = _julian_to_date(days + _POSTGRES_EPOCH_JDATE)
    text, era = _iso_date(year, month, day)
    return text + era


def _timestamp(data: bytes, _codec: str) -> str | None:
    return _timestamp_text(data, "")


def _timestamptz(data: bytes, _codec: str) -> str | None:
    return _timestamp_text(data, "+00")


def _timestamp_text(data: bytes, zone: str) -> str | None:
    if len(data) != 8:
        return None
    (micros,) = _INT8.unpack(data)
    if micros == _INT64_MIN:
        return "-infinity"
    if micros == _INT64_MAX:
        return "infinity"
    if not _TIMESTAMP_MIN <= micros < _TIMESTAMP_END:
        return None  # timestamp_recv: "timestamp out of range"
    days, time_of_day = divmod(micros, _USECS_PER_DAY)
    year, month, day = _julian_to_date(days + _POSTGRES_EPOCH_JDATE)
    date, era = _iso_date(year, month, day)
    seconds, fraction = divmod(time_of_day, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    time = f"{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        time += "." + f"{fraction:06d}".rstrip("0")
    return f"{date} {time}{zone}{era}"


def _julian_to_date(julian_day: int) -> tuple[int, int, int]:
    """(year, month, day) of a Julian day number: PostgreSQL's j2date, whose
    year 0 is 1 BC."""
    julian = julian_day + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y != 0 else (julian + 306) % 366) + 123
    y += quad * 4
    quad = julian * 2141 // 65536
    day = julian - 7834 * quad // 256
    month = (quad + 10) % 12 + 1
    return y - 4800, month, day


def _iso_date(year: int, month: int, day: int) -> tuple[str, str]:
    """The ISO date and its era suffix (" BC" for years up to 0)."""
    if year > 0:
        return f"{year:04d}-{month:02d}-{day:02d}", ""
    return f"{1 - year:04d}-{month:02d}-{day:02d}", " BC"


def _time_of_day(micros: int) -> str:
    """``HH:MM:SS[.ffffff]`` (trailing zeros of the fraction dropped)."""
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += "." + f"{fraction:06d}".rstrip("0")
    return text


def _time(data: bytes, _codec: str) -> str | None:
    if len(data) != 8:
        return None
    (micros,) = _INT8.unpack(data)
    if not 0 <= micros <= _USECS_PER_DAY:
        return None  # time_recv: "time out of range" (24:00:00 is a time)
    return _time_of_day(micros)


_TIMETZ: Final = struct.Struct("!qi")
#: A time zone displacement's bound, in seconds (TZDISP_LIMIT: 16 hours).
_TZDISP_LIMIT: Final = 16 * 3600


def _timetz(data: bytes, _codec: str) -> str | None:
    if len(data) != _TIMETZ.size:
        return None
    micros, zone = _TIMETZ.unpack(data)
    if not 0 <= micros <= _USECS_PER_DAY or not -_TZDISP_LIMIT < zone < _TZDISP_LIMIT:
        return None  # timetz_recv
    return _time_of_day(micros) + _zone_text(zone)


def _zone_text(zone: int) -> str:
    """EncodeTimezone: ``zone`` is in seconds west of UTC, shown as an offset east."""
    east = -zone
    hours, rest = divmod(abs(east), 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{'-' if east < 0 else '+'}{hours:02d}"
    if minutes or seconds:
        text += f":{minutes:02d}"
    if seconds:
        text += f":{seconds:02d}"
    return text


_INTERVAL: Final = struct.Struct("!qii")
_USECS_PER_HOUR: Final = 3_600_000_000


def _toward_zero(a: int, b: int) -> tuple[int, int]:
    """C's ``a / b`` and ``a % b`` (truncating), which interval2itm uses."""
    quotient = abs(a) // b * (-1 if a < 0 else 1)
    return quotient, a - quotient * b


def _interval(data: bytes, _codec: str) -> str | None:
    """interval_out in the default IntervalStyle (postgres): ``1 year 2 mons
    -3 days +04:05:06.5``, as EncodeInterval spells it."""
    if len(data) != _INTERVAL.size:
        return None
    micros, days, months = _INTERVAL.unpack(data)
    years, months = _toward_zero(months, 12)
    hours, rest = _toward_zero(micros, _USECS_PER_HOUR)
    minutes, rest = _toward_zero(rest, 60_000_000)
    seconds, fraction = _toward_zero(rest, 1_000_000)
    parts: list[str] = []
    before = False  # the previous field was negative: a positive one shows its +
    for value, unit in ((years, "year"), (months, "mon"), (days, "day")):
        if value:
            plural = "" if value == 1 else "s"
            parts.append(f"{'+' if before and value > 0 else ''}{value} {unit}{plural}")
            before = value < 0
    if not parts or hours or minutes or seconds or fraction:
        minus = hours < 0 or minutes < 0 or seconds < 0 or fraction < 0
        sign = "-" if minus else ("+" if before else "")
        clock = f"{sign}{abs(hours):02d}:{abs(minutes):02d}:{abs(seconds):02d}"
        if fraction:
            clock += "." + f"{abs(fraction):06d}".rstrip("0")
        parts.append(clock)
    return " ".join(parts)


# --- "char", network addresses ---------------------------------------------------------


def _char(data: bytes, _codec: str) -> str | None:
    # char_recv takes one byte; charout shows a byte above 127 as \ooo octal.
    if len(data) != 1:
        return None
    byte = data[0]
    if byte > 127:
        return f"\\{byte:03o}"
    return "" if byte == 0 else chr(byte)


#: PGSQL_AF_INET and PGSQL_AF_INET6, and the address sizes they take.
_INET_SIZES: Final = {2: 4, 3: 16}


def _network(cidr: bool) -> Callable[[bytes, str], str | None]:
    """inet_recv then network_out (``cidr``: the cidr type, bits past the mask
    refused, ``/bits`` always shown)."""

    def render(data: bytes, _codec: str) -> str | None:
        if len(data) < 4:
            return None
        family, bits, _is_cidr, size = data[:4]
        address = data[4:]
        if _INET_SIZES.get(family) != size or len(address) != size or bits > 8 * size:
            return None
        number = int.from_bytes(address, "big")
        if cidr and number & ((1 << (8 * size - bits)) - 1):
            return None  # "Value has bits set to right of mask."
        text = _ipv4_text(address) if size == 4 else _ipv6_text(address)
        if cidr or bits != 8 * size:
            text += f"/{bits}"
        return text

    return render


def _ipv4_text(address: bytes) -> str:
    return ".".join(str(b) for b in address)


def _ipv6_text(address: bytes) -> str:
    """inet_net_ntop's IPv6 form: lowercase hex words, the first longest run of
    two or more zero words as ``::``, an embedded IPv4 address (``::a.b.c.d``,
    ``::ffff:a.b.c.d``) in dotted form."""
    words = [int.from_bytes(address[i : i + 2], "big") for i in range(0, 16, 2)]
    best_base, best_len, base, length = -1, 0, -1, 0
    for i, word in enumerate(words):
        if word == 0:
            if base < 0:
                base, length = i, 0
            length += 1
            if length > best_len:
                best_base, best_len = base, length
        else:
            base = -1
    if best_len < 2:
        best_base = -1
    out = ""
    for i, word in enumerate(words):
        if best_base <= i < best_base + best_len:
            if i == best_base:
                out += ":"
            continue
        if i:
            out += ":"
        embedded = best_base == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF))
        if i == 6 and embedded:
            out += _ipv4_text(address[12:])
            break
        out += f"{word:x}"
    if best_base >= 0 and best_base + best_len == 8:
        out += ":"
    return out


def _macaddr(data: bytes, _codec: str) -> str | None:
    if len(data) != 6:
        return None
    return ":".join(f"{b:02x}" for b in data)


def _macaddr8(data: bytes, _codec: str) -> str | None:
    if len(data) == 6:  # macaddr8_recv takes an EUI-48 too, as EUI-64 (FF:FE inserted)
        data = data[:3] + b"\xff\xfe" + data[3:]
    if len(data) != 8:
        return None
    return ":".join(f"{b:02x}" for b in data)


# --- numeric ---------------------------------------------------------------------------

_NUMERIC_HEAD: Final = struct.Struct("!HhHH")
_NUMERIC_POS, _NUMERIC_NEG = 0x0000, 0x4000
_NUMERIC_NAN, _NUMERIC_PINF, _NUMERIC_NINF = 0xC000, 0xD000, 0xF000
_NUMERIC_SPECIAL: Final = {
    _NUMERIC_NAN: "NaN",
    _NUMERIC_PINF: "Infinity",
    _NUMERIC_NINF: "-Infinity",
}
_DSCALE_MAX: Final = 0x3FFF
#: Decimal digits per base-10000 digit.
_DEC_DIGITS: Final = 4


def _numeric(data: bytes, _codec: str) -> str | None:
    """numeric_recv, then numeric_out: digits beyond the display scale are cut
    off, zeros stripped, zero is positive."""
    if len(data) < _NUMERIC_HEAD.size:
        return None
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(data)
    if len(data) != _NUMERIC_HEAD.size + 2 * ndigits:
        return None
    digits = list(struct.unpack_from(f"!{ndigits}h", data, _NUMERIC_HEAD.size))
    if any(not 0 <= d < 10000 for d in digits) or dscale > _DSCALE_MAX:
        return None
    if sign in _NUMERIC_SPECIAL:
        return _NUMERIC_SPECIAL[sign]
    if sign not in (_NUMERIC_POS, _NUMERIC_NEG):
        return None
    digits, weight, negative = _truncate(digits, weight, dscale, sign == _NUMERIC_NEG)
    while digits and digits[0] == 0:  # make_result strips leading zeros...
        digits.pop(0)
        weight -= 1
    while digits and digits[-1] == 0:  # ... and trailing ones
        digits.pop()
    if not digits:
        weight, negative = 0, False
    # No weight overflow is possible: below weight -4096 a digit is beyond any dscale.
    return _numeric_text(digits, weight, negative, dscale)


def _truncate(
    digits: list[int], weight: int, dscale: int, negative: bool
) -> tuple[list[int], int, bool]:
    """PostgreSQL's trunc_var: keep ``dscale`` decimal digits after the point."""
    wanted = (weight + 1) * _DEC_DIGITS + dscale
    if wanted <= 0:
        return [], 0, False
    keep = (wanted + _DEC_DIGITS - 1) // _DEC_DIGITS
    if keep <= len(digits):
        digits = digits[:keep]
        within = wanted % _DEC_DIGITS
        if within:
            power = 10 ** (_DEC_DIGITS - within)
            digits[-1] -= digits[-1] % power
    return digits, weight, negative


def _numeric_text(digits: list[int], weight: int, negative: bool, dscale: int) -> str:
    """numeric_out's get_str_from_var."""
    decimal = "".join(f"{d:04d}" for d in digits)
    if weight >= 0:
        width = (weight + 1) * _DEC_DIGITS
        whole = decimal[:width].ljust(width, "0").lstrip("0") or "0"
        after = decimal[width:]
    else:
        whole = "0"
        after = "0" * ((-weight - 1) * _DEC_DIGITS) + decimal
    text = ("-" if negative else "") + whole
    if dscale > 0:
        text += "." + after[:dscale].ljust(dscale, "0")
    return text


# --- json and jsonb --------------------------------------------------------------------

#: Limits of a numeric (jsonb stores its numbers as numeric): 32768 base-10000
#: digits before the point, 0x3FFF decimal digits after it.
_NUMERIC_WHOLE_DIGITS: Final = 4 * 2**15


def _json(data: bytes, codec: str) -> str | None:
    text = client_text(data, codec)
    if text is None:
        return None
    # json_recv refuses what is not JSON; what it takes it keeps as sent. Numbers
    # stay strings: int() refuses very long ones, the server does not.
    json.loads(text, parse_int=str, parse_float=str, parse_constant=_no_constant)
    return text


def _jsonb(data: bytes, codec: str) -> str | None:
    if not data or data[0] != 1:
        return None  # jsonb_recv knows version 1 only
    text = client_text(data[1:], codec)
    if text is None:
        return None
    try:
        document = json.loads(
            text,
            object_pairs_hook=_JsonbObject,
            parse_int=_jsonb_number,
            parse_float=_jsonb_number,
            parse_constant=_no_constant,
        )
    except json.JSONDecodeError:
        return None
    parts: list[str] = []
    _jsonb_out(document, parts)
    return "".join(parts)


class _JsonbObject(dict[str, Any]):
    """A JSON object as jsonb keeps it: the last value of a repeated key."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)


class _JsonbNumber(str):
    """A JSON number as jsonb prints it (numeric_out of numeric_in)."""


def _jsonb_number(token: str) -> _JsonbNumber:
    number = Decimal(token)
    if number.is_zero():
        number = abs(number)  # numeric has no negative zero
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: JSON has no NaN or Infinity
    if -exponent > _DSCALE_MAX or number.adjusted() >= _NUMERIC_WHOLE_DIGITS:
        raise ValueError("numeric out of range")
    return _JsonbNumber(format(number, "f"))


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _jsonb_out(value: Any, parts: list[str]) -> None:
    """JsonbToCString: keys by length, then bytes; ", " and ": " between items."""
    if isinstance(value, _JsonbObject):
        keys = sorted(value, key=_jsonb_key)
        parts.append("{")
        for i, key in enumerate(keys):
            if i:
                parts.append(", ")
            parts.append(_jsonb_string(key))
            parts.append(": ")
            _jsonb_out(value[key], parts)
        parts.append("}")
    elif isinstance(value, list):
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(", ")
            _jsonb_out(item, parts)
        parts.append("]")
    elif isinstance(value, _JsonbNumber):
        parts.append(str(value))
    elif isinstance(value, str):
        parts.append(_jsonb_string(value))
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    else:
        parts.append("null")


def _jsonb_key(key: str) -> tuple[int, bytes]:
    raw = _jsonb_bytes(key)
    return len(raw), raw


def _jsonb_bytes(text: str) -> bytes:
    # jsonb refuses \u0000 and unpaired surrogates; encode() then raises ValueError.
    if "\x00" in text:
        raise ValueError("\\u0000 cannot be converted to text")
    return text.encode("utf-8")


#: escape_json: the two-character escapes; other control characters as \u00xx.
_JSON_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    **{chr(c): f"\\u{c:04x}" for c in range(0x20) if chr(c) not in "\b\f\n\r\t"},
}
_JSON_ESCAPE_TABLE: Final = str.maketrans(_JSON_ESCAPES)


def _jsonb_string(text: str) -> str:
    _jsonb_bytes(text)
    return '"' + text.translate(_JSON_ESCAPE_TABLE) + '"'


# --- bit strings -----------------------------------------------------------------------

#: VARBITMAXLEN: the longest bit string, in bits.
_VARBIT_MAX_BITS: Final = _INT32_MAX - 8 + 1


def _bit(data: bytes, _codec: str) -> str | None:
    """bit_recv and varbit_recv (a bit length, then the bits eight to a byte,
    the most significant first), then varbit_out."""
    (length,) = _INT4.unpack_from(data)
    if not 0 <= length <= _VARBIT_MAX_BITS or len(data) - _INT4.size != (length + 7) // 8:
        return None
    # Padding bits set in the last byte are not refused: the receive functions
    # clear them (VARBIT_PAD), so the value is the first ``length`` bits.
    return "".join(f"{byte:08b}" for byte in data[_INT4.size :])[:length]


# --- ranges and multiranges ------------------------------------------------------------

#: range_recv's flags (rangetypes.h). It masks off the others (the NULL bounds,
#: "contains empty"), and reads no bound that is infinite or of an empty range.
_RANGE_EMPTY: Final = 0x01
_RANGE_LB_INC: Final = 0x02
_RANGE_UB_INC: Final = 0x04
_RANGE_LB_INF: Final = 0x08
_RANGE_UB_INF: Final = 0x10
_UINT2: Final = struct.Struct("!H")

#: A bound's value as its type's btree comparison orders it: (rank, number).
_Key = tuple[int, Decimal]
#: The key of an infinite bound, which only its rank orders.
_NO_KEY: Final[_Key] = (0, Decimal(0))


@dataclass(frozen=True, slots=True)
class _Subtype:
    """A range's element type, as range_recv, the range comparisons and the
    canonical function of its range type use it."""

    oid: int
    #: The bytes of a bound the element's receive function reads: range_recv
    #: refuses fewer but, unlike array_recv, does not check that it read them all.
    size: Callable[[bytes], int]
    key: Callable[[bytes, str], _Key]
    #: For a discrete type, what its canonical function adds one to: the next
    #: value, None to leave the value as it is; raising where the server does.
    successor: Callable[[bytes], bytes | None] | None = None


@dataclass(frozen=True, slots=True)
class _Bound:
    raw: bytes
    text: str
    key: _Key


@dataclass(frozen=True, slots=True)
class _Range:
    """A range as range_serialize keeps it: an infinite bound is None and is
    never inclusive; an empty range has no bounds."""

    empty: bool
    lower: _Bound | None = None
    upper: _Bound | None = None
    lower_inc: bool = False
    upper_inc: bool = False


_EMPTY_RANGE: Final = _Range(empty=True)


def _fixed_size(size: int) -> Callable[[bytes], int]:
    return lambda _data: size


def _numeric_size(data: bytes) -> int:
    ndigits: int = _UINT2.unpack_from(data)[0]
    return _NUMERIC_HEAD.size + 2 * ndigits


def _integer_key(layout: struct.Struct) -> Callable[[bytes, str], _Key]:
    # Dates and timestamps too: their infinities are the extreme integers.
    return lambda raw, _text: (0, Decimal(layout.unpack(raw)[0]))


#: numeric_cmp: -Infinity, the numbers, Infinity, then NaN (equal to itself).
_NUMERIC_KEYS: Final[dict[str, _Key]] = {
    "-Infinity": (-1, Decimal(0)),
    "Infinity": (1, Decimal(0)),
    "NaN": (2, Decimal(0)),
}


def _numeric_key(_raw: bytes, text: str) -> _Key:
    # numeric_out prints the value exactly: 1.0 and 1.00 are equal, as there.
    return _NUMERIC_KEYS.get(text) or (0, Decimal(text))


def _integer_successor(layout: struct.Struct, top: int) -> Callable[[bytes], bytes | None]:
    def successor(raw: bytes) -> bytes | None:
        (value,) = layout.unpack(raw)
        if value == top:
            raise ValueError("integer out of range")  # int4pl, int8pl
        return bytes(layout.pack(value + 1))

    return successor


def _date_successor(raw: bytes) -> bytes | None:
    (days,) = _INT4.unpack(raw)
    if days in (_INT32_MIN, _INT32_MAX):
        return None  # daterange_canonical leaves -infinity and infinity as they are
    if days + 1 >= _DATE_END:
        raise ValueError("date out of range")  # date_pli
    return bytes(_INT4.pack(days + 1))


_RANGE_SUBTYPES: Final[dict[int, _Subtype]] = {
    INT4RANGE: _Subtype(
        INT4, _fixed_size(4), _integer_key(_INT4), _integer_successor(_INT4, _INT32_MAX)
    ),
    NUMRANGE: _Subtype(NUMERIC, _numeric_size, _numeric_key),
    TSRANGE: _Subtype(TIMESTAMP, _fixed_size(8), _integer_key(_INT8)),
    TSTZRANGE: _Subtype(TIMESTAMPTZ, _fixed_size(8), _integer_key(_INT8)),
    DATERANGE: _Subtype(DATE, _fixed_size(4), _integer_key(_INT4), _date_successor),
    INT8RANGE: _Subtype(
        INT8, _fixed_size(8), _integer_key(_INT8), _integer_successor(_INT8, _INT64_MAX)
    ),
}

#: Multirange types and their range types.
MULTIRANGE_TYPES: Final[dict[int, int]] = {
    INT4MULTIRANGE: INT4RANGE,
    NUMMULTIRANGE: NUMRANGE,
    TSMULTIRANGE: TSRANGE,
    TSTZMULTIRANGE: TSTZRANGE,
    DATEMULTIRANGE: DATERANGE,
    INT8MULTIRANGE: INT8RANGE,
}


def _range(subtype: _Subtype) -> Callable[[bytes, str], str | None]:
    def render(data: bytes, codec: str) -> str | None:
        return _range_out(_read_range(subtype, data, codec))

    return render


def _read_range(subtype: _Subtype, data: bytes, codec: str) -> _Range:
    """range_recv: the flags, then each bound it has (length, value), nothing
    after; made into a range as make_range does. Raises ValueError (or
    struct.error) where the server refuses the bytes."""
    if not data:
        raise ValueError("insufficient data left in message")
    flags = data[0]
    offset = 1
    lower = upper = None
    if not flags & (_RANGE_EMPTY | _RANGE_LB_INF):
        lower, offset = _read_bound(subtype, data, offset, codec)
    if not flags & (_RANGE_EMPTY | _RANGE_UB_INF):
        upper, offset = _read_bound(subtype, data, offset, codec)
    if offset != len(data):
        raise ValueError("invalid message format")
    return _make_range(
        subtype,
        lower,
        bool(flags & _RANGE_LB_INC),
        upper,
        bool(flags & _RANGE_UB_INC),
        empty=bool(flags & _RANGE_EMPTY),
    )


def _read_bound(subtype: _Subtype, data: bytes, offset: int, codec: str) -> tuple[_Bound, int]:
    (length,) = _UINT4.unpack_from(data, offset)
    offset += _UINT4.size
    if length > len(data) - offset:
        raise ValueError("insufficient data left in message")
    value = data[offset : offset + length]
    size = subtype.size(value)
    if size > length:
        raise ValueError("insufficient data left in message")
    return _bound(subtype, value[:size], codec), offset + length


def _bound(subtype: _Subtype, raw: bytes, codec: str) -> _Bound:
    text = _RENDERERS[subtype.oid](raw, codec)
    if text is None:
        raise ValueError("a bound its type refuses")
    return _Bound(raw, text, subtype.key(raw, text))


def _make_range(
    subtype: _Subtype,
    lower: _Bound | None,
    lower_inc: bool,
    upper: _Bound | None,
    upper_inc: bool,
    empty: bool = False,
) -> _Range:
    """make_range: range_serialize, then (unless empty) the canonical function
    of a discrete type, which makes bounds [inclusive, exclusive) and serializes
    again: ``[1,5]`` is ``[1,6)``, ``(1,2)`` empty."""
    value = _serialize(lower, lower_inc, upper, upper_inc, empty)
    if value.empty or subtype.successor is None:
        return value
    lower, lower_inc, upper, upper_inc = value.lower, value.lower_inc, value.upper, value.upper_inc
    # No range subtype is text: the client encoding does not matter for a bound.
    if lower is not None and not lower_inc:
        after = subtype.successor(lower.raw)
        if after is not None:
            lower, lower_inc = _bound(subtype, after, ""), True
    if upper is not None and upper_inc:
        after = subtype.successor(upper.raw)
        if after is not None:
            upper, upper_inc = _bound(subtype, after, ""), False
    return _serialize(lower, lower_inc, upper, upper_inc, False)


def _serialize(
    lower: _Bound | None, lower_inc: bool, upper: _Bound | None, upper_inc: bool, empty: bool
) -> _Range:
    """range_serialize: bounds out of order are refused; equal ones make the
    range empty unless both are inclusive; an infinite bound is not inclusive."""
    if empty:
        return _EMPTY_RANGE
    if lower is not None and upper is not None:
        order = _compare(lower.key, upper.key)
        if order > 0:
            raise ValueError("range lower bound must be less than or equal to range upper bound")
        if order == 0 and not (lower_inc and upper_inc):
            return _EMPTY_RANGE
    return _Range(
        False, lower, upper, lower_inc and lower is not None, upper_inc and upper is not None
    )


def _compare(a: _Key, b: _Key) -> int:
    return (a > b) - (a < b)


#: Characters that make range_out quote a bound (besides an empty one): those
#: it escapes ('"' and '\\'), the range's own punctuation and isspace's.
_RANGE_QUOTED: Final = frozenset('"\\()[], \t\n\r\v\f')


def _range_out(value: _Range) -> str:
    if value.empty:
        return "empty"
    lower = _range_bound_out(value.lower.text) if value.lower is not None else ""
    upper = _range_bound_out(value.upper.text) if value.upper is not None else ""
    opening = "[" if value.lower_inc else "("
    closing = "]" if value.upper_inc else ")"
    return f"{opening}{lower},{upper}{closing}"


def _range_bound_out(text: str) -> str:
    # range_bound_escape doubles the characters it escapes.
    if text and _RANGE_QUOTED.isdisjoint(text):
        return text
    return '"' + text.replace('"', '""').replace("\\", "\\\\") + '"'


def _multirange(subtype: _Subtype) -> Callable[[bytes, str], str | None]:
    """multirange_recv (a count, then each range's length and bytes, nothing
    after), then multirange_out."""

    def render(data: bytes, codec: str) -> str | None:
        (count,) = _UINT4.unpack_from(data)
        offset = _UINT4.size
        if count > (len(data) - offset) // (_UINT4.size + 1):
            return None  # each range takes its length and its flags at least
        ranges: list[_Range] = []
        for _ in range(count):
            (length,) = _UINT4.unpack_from(data, offset)
            offset += _UINT4.size
            if length > len(data) - offset:
                return None
            ranges.append(_read_range(subtype, data[offset : offset + length], codec))
            offset += length
        if offset != len(data):
            return None
        merged = _canonical_ranges(subtype, ranges)
        if merged is None:
            return None
        return "{" + ",".join(_range_out(value) for value in merged) + "}"

    return render


def _canonical_ranges(subtype: _Subtype, ranges: list[_Range]) -> list[_Range] | None:
    """multirange_canonicalize: the ranges in order, empty ones dropped, those
    that overlap or meet merged. None when two equal ranges print differently
    (numeric ``[1.0,2)`` and ``[1.00,2)``): which one the server keeps depends
    on how its qsort orders equal items, not reproduced here."""
    kept = sorted((value for value in ranges if not value.empty), key=_range_order)
    for first, second in itertools.pairwise(kept):
        if _range_order(first) == _range_order(second) and _range_out(first) != _range_out(second):
            return None
    merged: list[_Range] = []
    for value in kept:
        if not merged:
            merged.append(value)
        elif _adjacent(subtype, merged[-1], value) or not _before(merged[-1], value):
            merged[-1] = _union(subtype, merged[-1], value)
        else:
            merged.append(value)
    return merged


#: range_cmp_bounds as a sort key: (rank, value, offset). An infinite lower
#: bound is below everything and an infinite upper one above; at a value, an
#: exclusive upper bound is below an inclusive bound, an exclusive lower one above.
_BoundOrder = tuple[int, _Key, int]


def _lower_order(value: _Range) -> _BoundOrder:
    if value.lower is None:
        return (-1, _NO_KEY, 0)
    return (0, value.lower.key, 0 if value.lower_inc else 1)


def _upper_order(value: _Range) -> _BoundOrder:
    if value.upper is None:
        return (1, _NO_KEY, 0)
    return (0, value.upper.key, 0 if value.upper_inc else -1)


def _range_order(value: _Range) -> tuple[_BoundOrder, _BoundOrder]:
    """range_compare, for non-empty ranges: by lower bound, then upper bound."""
    return _lower_order(value), _upper_order(value)


def _before(first: _Range, second: _Range) -> bool:
    """range_before_internal: ``first`` ends before ``second`` begins."""
    return _upper_order(first) < _lower_order(second)


def _adjacent(subtype: _Subtype, first: _Range, second: _Range) -> bool:
    """range_adjacent_internal of two non-empty ranges."""
    return _meets(subtype, first, second) or _meets(subtype, second, first)


def _meets(subtype: _Subtype, first: _Range, second: _Range) -> bool:
    """bounds_adjacent: ``first``'s upper bound meets ``second``'s lower one."""
    upper, lower = first.upper, second.lower
    if upper is None or lower is None:
        return False
    order = _compare(upper.key, lower.key)
    if order == 0:
        return first.upper_inc != second.lower_inc
    if order > 0 or subtype.successor is None:
        return False
    # A discrete type: they meet when no value lies between the two bounds.
    between = _make_range(subtype, upper, not first.upper_inc, lower, not second.lower_inc)
    return between.empty


def _union(subtype: _Subtype, first: _Range, second: _Range) -> _Range:
    """range_union_internal of two ranges that overlap or meet: where their
    bounds are equal, ``second``'s."""
    if _lower_order(first) < _lower_order(second):
        lower, lower_inc = first.lower, first.lower_inc
    else:
        lower, lower_inc = second.lower, second.lower_inc
    if _upper_order(first) > _upper_order(second):
        upper, upper_inc = first.upper, first.upper_inc
    else:
        upper, upper_inc = second.upper, second.upper_inc
    return _make_range(subtype, lower, lower_inc, upper, upper_inc)


# --- geometric types -------------------------------------------------------------------

_FLOAT8_SIZE: Final = 8
#: geo_decls.h's EPSILON: line_recv refuses A and B both within it of zero.
_GEO_EPSILON: Final = 1.0e-06


def _float8s(data: bytes, count: int) -> list[str] | None:
    """float8out of ``count`` float8s, or None if ``data`` is not that long."""
    if len(data) != _FLOAT8_SIZE * count:
        return None
    size = _FLOAT8_SIZE
    return [_float_out(_BINARY64, data[i : i + size]) for i in range(0, len(data), size)]


def _pairs(numbers: list[str]) -> str:
    """path_encode's points: ``(x,y)`` joined by commas."""
    return ",".join(f"({x},{y})" for x, y in zip(numbers[::2], numbers[1::2], strict=True))


def _point(data: bytes, _codec: str) -> str | None:
    numbers = _float8s(data, 2)
    return None if numbers is None else _pairs(numbers)


def _lseg(data: bytes, _codec: str) -> str | None:
    numbers = _float8s(data, 4)
    return None if numbers is None else f"[{_pairs(numbers)}]"


def _box(data: bytes, _codec: str) -> str | None:
    if len(data) != 4 * _FLOAT8_SIZE:
        return None
    size = _FLOAT8_SIZE
    high_x, high_y, low_x, low_y = (data[i : i + size] for i in range(0, len(data), size))
    # box_recv puts the high corner first, whatever order the client sent.
    if _float8_gt(low_x, high_x):
        high_x, low_x = low_x, high_x
    if _float8_gt(low_y, high_y):
        high_y, low_y = low_y, high_y
    return _pairs([_float_out(_BINARY64, c) for c in (high_x, high_y, low_x, low_y)])


def _float8_gt(a: bytes, b: bytes) -> bool:
    """float8_gt: NaN is above every other value, and equal to itself."""
    ((x,), (y,)) = _FLOAT8.unpack(a), _FLOAT8.unpack(b)
    if math.isnan(x):
        return not math.isnan(y)
    return not math.isnan(y) and x > y


_PATH_HEAD: Final = struct.Struct("!Bi")
_LINE: Final = struct.Struct("!ddd")


def _path(data: bytes, _codec: str) -> str | None:
    # path_recv: any byte but 0 means closed; a path has at least one point.
    closed, count = _PATH_HEAD.unpack_from(data)
    if count <= 0:
        return None
    numbers = _float8s(data[_PATH_HEAD.size :], 2 * count)
    if numbers is None:
        return None
    return f"({_pairs(numbers)})" if closed else f"[{_pairs(numbers)}]"


def _polygon(data: bytes, _codec: str) -> str | None:
    (count,) = _INT4.unpack_from(data)
    if count <= 0:
        return None
    numbers = _float8s(data[_INT4.size :], 2 * count)
    return None if numbers is None else f"({_pairs(numbers)})"


def _line(data: bytes, _codec: str) -> str | None:
    numbers = _float8s(data, 3)
    if numbers is None:
        return None
    a, b, _c = _LINE.unpack(data)
    if abs(a) <= _GEO_EPSILON and abs(b) <= _GEO_EPSILON:
        return None  # "invalid line specification: A and B cannot both be zero"
    return "{" + ",".join(numbers) + "}"


def _circle(data: bytes, _codec: str) -> str | None:
    numbers = _float8s(data, 3)
    if numbers is None:
        return None
    (radius,) = _FLOAT8.unpack_from(data, 2 * _FLOAT8_SIZE)
    if radius < 0.0:
        return None  # "invalid radius": NaN and -0 are taken
    x, y, r = numbers
    return f"<({x},{y}),{r}>"


# --- xml -------------------------------------------------------------------------------

#: libxml2's limits without XML_PARSE_HUGE, past which the server refuses
#: content: elements nested (xmlParserMaxDepth), a name's length
#: (XML_MAX_NAME_LENGTH), a text node's or attribute's bytes (XML_MAX_TEXT_LENGTH:
#: values this long are not checked).
_XML_MAX_DEPTH: Final = 256
_XML_MAX_NAME: Final = 50_000
_XML_MAX_TEXT: Final = 10_000_000
#: xmlIsBlank_ch, which parse_xml_decl skips.
_XML_BLANKS: Final = frozenset(" \t\n\r")
#: Name characters that make "<?xml..." a processing instruction such as
#: <?xml-stylesheet?>, not the XML declaration (the ASCII ones only: past
#: them, libxml2's tables and expat's differ).
_XML_NAME_ASCII: Final = frozenset(string.ascii_letters + string.digits + ".-_:")
#: pg_char_to_encoding's names of UTF8 once cleaned (lower case, letters and digits).
_XML_UTF8_NAMES: Final = frozenset({"utf8", "unicode"})
_NAMEDATALEN: Final = 64


def _xml(data: bytes, _codec: str) -> str | None:
    """xml_recv, then xml_out. The bytes are UTF-8 unless the declaration names
    another encoding (whatever client_encoding is: not as text), and must be
    well-formed content (xmloption's default; a session with xmloption =
    document also refuses content that is not one document). Values expat
    refuses, or in another encoding, give None; libxml2 is trusted to take
    what expat takes (tests/test_pg_values.py compares them)."""
    if len(data) > _XML_MAX_TEXT:
        return None
    text = client_text(data, "utf-8")
    if text is None:
        return None
    declaration = _xml_declaration(text)
    if declaration is None:
        return None
    end, version, encoding, standalone = declaration
    if encoding is not None and _encoding_name(encoding) not in _XML_UTF8_NAMES:
        return None
    body = text[end:]
    if not _xml_content(body):
        return None
    # xml_out drops the encoding, and the whole declaration if it says nothing
    # else (eating one newline after it), whatever the client encoding.
    if (version is not None and version != "1.0") or standalone is not None:
        head = f'<?xml version="{"1.0" if version is None else version}"'
        if standalone is not None:
            head += f' standalone="{"yes" if standalone else "no"}"'
        return head + "?>" + body
    return body.removeprefix("\n")


def _xml_declaration(text: str) -> tuple[int, str | None, str | None, bool | None] | None:
    """parse_xml_decl: where the XML declaration ends (0 without one), its
    version, encoding and standalone; None if the server refuses it."""
    if not text.startswith("<?xml"):
        return 0, None, None, None
    if text[5:6] not in _XML_BLANKS:
        return (0, None, None, None) if text[5:6] in _XML_NAME_ASCII else None
    position = _xml_skip(text, 5)
    if not text.startswith("version", position):
        return None
    position = _xml_skip(text, position + 7)
    if not text.startswith("=", position):
        return None
    version, position = _xml_quoted(text, _xml_skip(text, position + 1))
    if version is None:
        return None
    encoding = None
    start, position = position, _xml_skip(text, position)
    if text.startswith("encoding", position):
        if position == start:
            return None  # a blank must come first
        position = _xml_skip(text, position + 8)
        if not text.startswith("=", position):
            return None
        encoding, position = _xml_quoted(text, _xml_skip(text, position + 1))
        if encoding is None:
            return None
    else:
        position = start
    standalone = None
    start, position = position, _xml_skip(text, position)
    if text.startswith("standalone", position):
        if position == start:
            return None
        position = _xml_skip(text, position + 10)
        if not text.startswith("=", position):
            return None
        position = _xml_skip(text, position + 1)
        for word, value in (("'yes'", True), ('"yes"', True), ("'no'", False), ('"no"', False)):
            if text.startswith(word, position):
                standalone, position = value, position + len(word)
                break
        else:
            return None
    else:
        position = start
    position = _xml_skip(text, position)
    if not text.startswith("?>", position):
        return None
    position += 2
    if not text[:position].isascii():
        return None
    return position, version, encoding, standalone


def _xml_skip(text: str, position: int) -> int:
    while text[position : position + 1] in _XML_BLANKS:
        position += 1
    return position


def _xml_quoted(text: str, position: int) -> tuple[str | None, int]:
    # Up to the next same quote anywhere after it, as xmlStrchr finds it.
    quote = text[position : position + 1]
    if quote not in ("'", '"'):
        return None, position
    end = text.find(quote, position + 1)
    if end < 0:
        return None, position
    return text[position + 1 : end], end + 1


def _encoding_name(name: str) -> str:
    """pg_char_to_encoding's key for ``name`` ("" for one it cannot know)."""
    if not 0 < len(name) < _NAMEDATALEN:
        return ""
    return "".join(c.lower() for c in name if c.isascii() and c.isalnum())


def _xml_content(body: str) -> bool:
    """Whether ``body`` is well-formed XML content (what xml_parse hands
    xmlParseBalancedChunkMemory after the declaration) as expat reads it in
    an element, within libxml2's limits."""
    parser = expat.ParserCreate("UTF-8")
    depth = deepest = longest = 0

    def start(name: str, attributes: dict[str, str]) -> None:
        nonlocal depth, deepest, longest
        depth += 1
        deepest = max(deepest, depth)
        longest = max(longest, len(name), *map(len, attributes))

    def end(_name: str) -> None:
        nonlocal depth
        depth -= 1

    def instruction(target: str, _data: str) -> None:
        nonlocal longest
        longest = max(longest, len(target))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.ProcessingInstructionHandler = instruction
    try:
        # A DOCTYPE inside the element is refused: expat reads no DTD here.
        parser.Parse(("<r>" + body + "</r>").encode("utf-8"), True)
    except expat.ExpatError:
        return False
    return deepest - 1 <= _XML_MAX_DEPTH and longest <= _XML_MAX_NAME


# --- arrays ----------------------------------------------------------------------------

#: An array's header: dimensions, flags (0 or 1: whether it has NULLs), element type.
_ARRAY_HEAD: Final = struct.Struct("!iiI")
_ARRAY_DIM: Final = struct.Struct("!ii")
#: MAXDIM, and MaxArraySize (MaxAllocSize / sizeof(Datum)).
_ARRAY_MAX_DIMS: Final = 6
_ARRAY_MAX_ITEMS: Final = 0x3FFFFFFF // 8
#: Characters that make array_out quote an element (besides '"' and '\\', which
#: it also escapes, and the type's delimiter): braces and array_isspace's white space.
_ARRAY_QUOTED: Final = frozenset('{}"\\ \t\n\r\v\f')
#: Element types whose typdelim is not a comma (pg_type.dat): box's text has commas.
_ARRAY_DELIMITERS: Final = {BOX: ";"}


def _array(element: int) -> Callable[[bytes, str], str | None]:
    """array_recv then array_out for arrays of ``element`` (its renderer reads
    each item, as the element type's receive function would)."""
    delimiter = _ARRAY_DELIMITERS.get(element, ",")

    def render(data: bytes, codec: str) -> str | None:
        ndim, flags, element_type = _ARRAY_HEAD.unpack_from(data)
        if not 0 <= ndim <= _ARRAY_MAX_DIMS or flags not in (0, 1) or element_type != element:
            return None
        offset = _ARRAY_HEAD.size
        dims: list[int] = []
        bounds: list[int] = []
        count = 1
        for _ in range(ndim):
            size, lower = _ARRAY_DIM.unpack_from(data, offset)
            offset += _ARRAY_DIM.size
            if size < 0 or size + lower > _INT32_MAX:
                return None  # ArrayGetNItems, ArrayCheckBounds
            dims.append(size)
            bounds.append(lower)
            count *= size
            if count > _ARRAY_MAX_ITEMS:
                return None
        if count == 0 or ndim == 0:
            # An empty array, whatever its dimensions said; nothing may follow.
            return "{}" if offset == len(data) else None
        if count > (len(data) - offset) // 4:
            return None  # each item takes at least its length word
        items: list[str] = []
        read_item = _RENDERERS[element]
        for _ in range(count):
            (length,) = _INT4.unpack_from(data, offset)
            offset += 4
            if length == -1:
                items.append("NULL")
                continue
            if length < 0 or length > len(data) - offset:
                return None
            text = read_item(data[offset : offset + length], codec)
            if text is None:
                return None
            offset += length
            items.append(_array_item(text, delimiter))
        if offset != len(data):
            return None
        head = ""
        if any(lower != 1 for lower in bounds):
            head = "".join(f"[{lo}:{lo + n - 1}]" for lo, n in zip(bounds, dims, strict=True))
            head += "="
        return head + _nested(items, dims, delimiter)

    return render


def _array_item(text: str, delimiter: str) -> str:
    # pg_strcasecmp: "null" in any ASCII case would read back as a NULL.
    literal_null = len(text) == 4 and text.isascii() and text.upper() == "NULL"
    if text and not literal_null and _ARRAY_QUOTED.isdisjoint(text) and delimiter not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _nested(items: list[str], dims: list[int], delimiter: str) -> str:
    """``items`` (in row-major order) in braces, one level per dimension."""
    if len(dims) == 1:
        return "{" + delimiter.join(items) + "}"
    step = len(items) // dims[0]
    inner = dims[1:]
    return (
        "{"
        + delimiter.join(
            _nested(items[i : i + step], inner, delimiter) for i in range(0, len(items), step)
        )
        + "}"
    )


#: Array types and their element types (pg_type.dat: typarray).
ARRAY_TYPES: Final[dict[int, int]] = {
    199: JSON,
    1000: BOOL,
    1001: BYTEA,
    1003: NAME,
    1005: INT2,
    1007: INT4,
    1009: TEXT,
    1014: BPCHAR,
    1015: VARCHAR,
    1016: INT8,
    1021: FLOAT4,
    1022: FLOAT8,
    1028: OID,
    1115: TIMESTAMP,
    1182: DATE,
    1185: TIMESTAMPTZ,
    1231: NUMERIC,
    2951: UUID,
    3807: JSONB,
    1002: CHAR,
    651: CIDR,
    775: MACADDR8,
    1040: MACADDR,
    1041: INET,
    1183: TIME,
    1187: INTERVAL,
    1270: TIMETZ,
    143: XML,
    1017: POINT,
    1018: LSEG,
    1019: PATH,
    1020: BOX,
    1027: POLYGON,
    629: LINE,
    719: CIRCLE,
    1561: BIT,
    1563: VARBIT,
    3905: INT4RANGE,
    3907: NUMRANGE,
    3909: TSRANGE,
    3911: TSTZRANGE,
    3913: DATERANGE,
    3927: INT8RANGE,
    6150: INT4MULTIRANGE,
    6151: NUMMULTIRANGE,
    6152: TSMULTIRANGE,
    6153: TSTZMULTIRANGE,
    6155: DATEMULTIRANGE,
    6157: INT8MULTIRANGE,
}


# --- the table -------------------------------------------------------------------------

_RENDERERS: Final[dict[int, Callable[[bytes, str], str | None]]] = {
    BOOL: _bool,
    BYTEA: _bytea,
    NAME: _name,
    INT8: _integer(_INT8),
    INT2: _integer(_INT2),
    INT4: _integer(_INT4),
    TEXT: _text,
    OID: _integer(_UINT4),
    JSON: _json,
    FLOAT4: _float(_BINARY32),
    FLOAT8: _float(_BINARY64),
    UNKNOWN: _text,
    BPCHAR: _text,
    VARCHAR: _text,
    DATE: _date,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamptz,
    NUMERIC: _numeric,
    UUID: _uuid,
    JSONB: _jsonb,
    CHAR: _char,
    CIDR: _network(cidr=True),
    MACADDR8: _macaddr8,
    MACADDR: _macaddr,
    INET: _network(cidr=False),
    TIME: _time,
    INTERVAL: _interval,
    TIMETZ: _timetz,
    XML: _xml,
    BIT: _bit,
    VARBIT: _bit,
    POINT: _point,
    LSEG: _lseg,
    PATH: _path,
    BOX: _box,
    POLYGON: _polygon,
    LINE: _line,
    CIRCLE: _circle,
    # Not money: cash_out prints in the session's lc_monetary (currency sign,
    # separators, and how many of the int64's digits are decimals), which can be
    # SET at any time and is not reported to the gateway. See undecoded().
}

_RENDERERS.update({oid: _range(subtype) for oid, subtype in _RANGE_SUBTYPES.items()})
_RENDERERS.update(
    {oid: _multirange(_RANGE_SUBTYPES[range_]) for oid, range_ in MULTIRANGE_TYPES.items()}
)

_RENDERERS.update({array: _array(element) for array, element in ARRAY_TYPES.items()})

#: The type OIDs :func:`render_binary` decodes.
DECODED_TYPES: Final = frozenset(_RENDERERS)
