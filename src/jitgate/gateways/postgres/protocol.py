"""The PostgreSQL v3 wire protocol: framing, and the messages the gateway reads or writes.

Pure functions over bytes, no I/O. A regular message is a type byte, a
big-endian int32 length that counts itself but not the type byte, and the
body. The startup packets (StartupMessage, SSLRequest, GSSENCRequest,
CancelRequest) have no type byte. Every decoder raises
:class:`ProtocolViolation` on malformed input; nothing here trusts a length.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

PROTOCOL_V3: Final = 196608  # 3 << 16
SSL_REQUEST: Final = 80877103
GSSENC_REQUEST: Final = 80877104
CANCEL_REQUEST: Final = 80877102
#: Largest startup packet accepted (PostgreSQL's own limit is 10,000 bytes).
MAX_STARTUP: Final = 10_000

_I32: Final = struct.Struct("!i")
_U32: Final = struct.Struct("!I")
_I16: Final = struct.Struct("!h")
_HEADER: Final = struct.Struct("!cI")
_TYPED_HEADER: Final = struct.Struct("!BI")


class ProtocolViolation(Exception):
    """The peer sent something that is not valid protocol; the connection ends."""


# --- startup packets -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Startup:
    """A StartupMessage: protocol version and parameters (``user``, ``database``, ...)."""

    version: int
    parameters: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: int


StartupPacket = Startup | SSLRequest | GSSENCRequest | CancelRequest


def startup_length(header: bytes) -> int:
    """The length of a startup packet from its first four bytes (checked)."""
    (length,) = _I32.unpack(header)
    if not 8 <= length <= MAX_STARTUP:
        raise ProtocolViolation(f"invalid startup packet length {length}")
    return int(length)


def decode_startup(packet: bytes) -> StartupPacket:
    """Decode a whole startup packet (length included)."""
    if len(packet) < 8 or startup_length(packet[:4]) != len(packet):
        raise ProtocolViolation("truncated startup packet")
    (code,) = _I32.unpack_from(packet, 4)
    if code == SSL_REQUEST and len(packet) == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST and len(packet) == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST and len(packet) == 16:
        pid, secret = struct.unpack_from("!ii", packet, 8)
        return CancelRequest(pid, secret)
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    body = packet[8:]
    if not body.endswith(b"\x00"):
        raise ProtocolViolation("startup parameters are not terminated")
    fields = body[:-1].split(b"\x00")
    if fields and fields[-1] == b"":
        fields.pop()
    if len(fields) % 2:
        raise ProtocolViolation("startup parameters are not name/value pairs")
    # Strictly: with replacement characters, different bytes would make the same
    # user, database or setting name.
    decoded: list[str] = []
    for i, raw in enumerate(fields):
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            if i % 2:
                what = f"the value of startup parameter {decoded[i - 1]!r}"
            else:
                what = "a startup parameter name"
            raise ProtocolViolation(f"{what} is not UTF-8") from None
    params = dict(zip(decoded[0::2], decoded[1::2], strict=True))
    if "" in params:
        raise ProtocolViolation("empty startup parameter name")
    return Startup(code, params)


def startup_message(parameters: Mapping[str, str], version: int = PROTOCOL_V3) -> bytes:
    body = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in parameters.items())
    body += b"\x00"
    return _I32.pack(len(body) + 8) + _I32.pack(version) + body


SSL_REQUEST_PACKET: Final = struct.pack("!ii", 8, SSL_REQUEST)


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST, pid, secret)


# --- framing ------------------------------------------------------------------------


class Frames:
    """Splits a byte stream into messages: feed bytes, then take complete ones.

    ``max_length`` bounds the declared length of one message; a longer
    declaration is a violation before any of it is buffered. After
    :meth:`next`, ``start`` and ``end`` delimit the message (header included)
    in the buffer, for :meth:`span`; offsets stay valid until the next :meth:`feed`.
    """

    __slots__ = ("_buf", "_pos", "end", "max_length", "start")

    def __init__(self, max_length: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.start = 0
        self.end = 0
        self.max_length = max_length

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def next(self) -> tuple[int, bytes] | None:
        """The next complete message as (type byte, body), or None if incomplete."""
        kind = self.skip()
        if kind is None:
            return None
        return kind, bytes(self._buf[self.start + 5 : self.end])

    def skip(self) -> int | None:
        """Step over the next complete message without copying it; its type or None."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 5:
            return None
        kind, length = _TYPED_HEADER.unpack_from(buf, pos)
        if length < 4 or length > self.max_length:
            raise ProtocolViolation(f"invalid length {length} for message {chr(kind)!r}")
        end = pos + 1 + length
        if len(buf) < end:
            return None
        self._pos = self.end = end
        self.start = pos
        return int(kind)

    def rewind(self, start: int) -> None:
        """Give back what was taken since ``start`` (a message to process again)."""
        self._pos = start

    def span(self, start: int, end: int) -> bytes:
        return bytes(self._buf[start:end])

    @property
    def position(self) -> int:
        """Offset of the first byte not yet taken."""
        return self._pos

    def take_rest(self) -> bytes:
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + _U32.pack(len(body) + 4) + body


def cstring(value: str) -> bytes:
    data = value.encode("utf-8")
    if b"\x00" in data:
        raise ValueError("a protocol string cannot contain NUL")
    return data + b"\x00"


class _Reader:
    """Reads fields of one message body, raising ProtocolViolation when short."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    def _short(self) -> ProtocolViolation:
        return ProtocolViolation(f"malformed {self._what} message")

    def cstring_bytes(self) -> bytes:
        end = self._data.find(b"\x00", self._pos)
        if end < 0:
            raise self._short()
        value = self._data[self._pos : end]
        self._pos = end + 1
        return value

    def cstring(self) -> str:
        try:
            return self.cstring_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation(f"{self._what}: a name is not UTF-8") from None

    def int16(self) -> int:
        if self._pos + 2 > len(self._data):
            raise self._short()
        (value,) = _I16.unpack_from(self._data, self._pos)
        self._pos += 2
        return int(value)

    def int32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise self._short()
        (value,) = _I32.unpack_from(self._data, self._pos)
        self._pos += 4
        return int(value)

    def uint32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise self._short()
        (value,) = _U32.unpack_from(self._data, self._pos)
        self._pos += 4
        return int(value)

    def byte(self) -> int:
        if self._pos >= len(self._data):
            raise self._short()
        value = self._data[self._pos]
        self._pos += 1
        return value

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise self._short()
        value = self._data[self._pos : self._pos + n]
        self._pos += n
        return value

    def rest(self) -> bytes:
        value = self._data[self._pos :]
        self._pos = len(self._data)
        return value

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolViolation(f"malformed {self._what} message (trailing bytes)")


# --- frontend messages the gateway reads --------------------------------------------


def query_text(body: bytes | memoryview) -> bytes:
    """The SQL bytes of a Query message (without the terminating NUL)."""
    data = bytes(body)
    if not data.endswith(b"\x00") or data.find(b"\x00") != len(data) - 1:
        raise ProtocolViolation("malformed Query message")
    return data[:-1]


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    query: bytes
    param_types: tuple[int, ...]


def decode_parse(body: bytes | memoryview) -> Parse:
    r = _Reader(body, "Parse")
    name = r.cstring()
    query = r.cstring_bytes()
    count = r.int16()
    if count < 0:
        raise ProtocolViolation("malformed Parse message (negative count)")
    types = tuple(r.uint32() for _ in range(count))
    r.end()
    return Parse(name, query, types)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def param_format(self, index: int) -> int:
        """0 (text) or 1 (binary) for parameter ``index``, as the protocol defines."""
        formats = self.param_formats
        if not formats:
            return 0
        return formats[0] if len(formats) == 1 else formats[index]


def decode_bind(body: bytes | memoryview) -> Bind:
    r = _Reader(body, "Bind")
    portal = r.cstring()
    statement = r.cstring()
    nformats = r.int16()
    if nformats < 0:
        raise ProtocolViolation("malformed Bind message (negative count)")
    formats = tuple(r.int16() for _ in range(nformats))
    nparams = r.int16()
    if nparams < 0:
        raise ProtocolViolation("malformed Bind message (negative count)")
    if nformats not in (0, 1, nparams) or any(f not in (0, 1) for f in formats):
        raise ProtocolViolation("Bind: parameter formats do not match the parameters")
    params: list[bytes | None] = []
    for _ in range(nparams):
        length = r.int32()
        if length == -1:
            params.append(None)
        elif length < 0:
            raise ProtocolViolation("malformed Bind message (negative length)")
        else:
            params.append(r.take(length))
    nresults = r.int16()
    if nresults < 0:
        raise ProtocolViolation("malformed Bind message (negative count)")
    results = tuple(r.int16() for _ in range(nresults))
    r.end()
    return Bind(portal, statement, formats, tuple(params), results)


def decode_execute(body: bytes | memoryview) -> tuple[str, int]:
    """(portal, max rows) of an Execute message."""
    r = _Reader(body, "Execute")
    portal = r.cstring()
    max_rows = r.int32()
    r.end()
    return portal, max_rows


def decode_target(body: bytes | memoryview, what: str) -> tuple[str, str]:
    """(``S`` or ``P``, name) of a Describe or Close message."""
    r = _Reader(body, what)
    kind = r.byte()
    name = r.cstring()
    r.end()
    if kind not in (ord("S"), ord("P")):
        raise ProtocolViolation(f"{what}: unknown kind {kind!r}")
    return chr(kind), name


def password_message(body: bytes | memoryview) -> bytes:
    """The password of a PasswordMessage sent for cleartext authentication."""
    data = bytes(body)
    if not data.endswith(b"\x00") or data.find(b"\x00") != len(data) - 1:
        raise ProtocolViolation("malformed password message")
    return data[:-1]


# --- backend messages ----------------------------------------------------------------

#: ErrorResponse / NoticeResponse field codes.
SEVERITY: Final = "S"
SEVERITY_NONLOCALIZED: Final = "V"
CODE: Final = "C"
MESSAGE: Final = "M"
DETAIL: Final = "D"
HINT: Final = "H"


def _fields(fields: Iterable[tuple[str, str]]) -> bytes:
    out = bytearray()
    for code, value in fields:
        out += code.encode("ascii")
        out += value.replace("\x00", "\\0").encode("utf-8", "replace") + b"\x00"
    out += b"\x00"
    return bytes(out)


def _report(
    kind: bytes, severity: str, sqlstate: str, text: str, detail: str | None, hint: str | None
) -> bytes:
    fields = [(SEVERITY, severity), (SEVERITY_NONLOCALIZED, severity), (CODE, sqlstate)]
    fields.append((MESSAGE, text))
    if detail:
        fields.append((DETAIL, detail))
    if hint:
        fields.append((HINT, hint))
    return message(kind, _fields(fields))


def error_response(
    sqlstate: str,
    text: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    severity: str = "ERROR",
) -> bytes:
    return _report(b"E", severity, sqlstate, text, detail, hint)


def notice_response(
    text: str, *, detail: str | None = None, hint: str | None = None, sqlstate: str = "00000"
) -> bytes:
    return _report(b"N", "NOTICE", sqlstate, text, detail, hint)


def decode_fields(body: bytes | memoryview) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse."""
    data = bytes(body)
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        end = data.find(b"\x00", pos + 1)
        if end < 0:
            raise ProtocolViolation("malformed error fields")
        out[chr(data[pos])] = data[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return out


def ready_for_query(status: bytes) -> bytes:
    return message(b"Z", status)


def authentication(code: int, extra: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + extra)


AUTH_OK: Final = 0
AUTH_CLEARTEXT: Final = 3
AUTH_MD5: Final = 5
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstring(name) + cstring(value))


def decode_parameter_status(body: bytes | memoryview) -> tuple[str, str]:
    r = _Reader(body, "ParameterStatus")
    name = r.cstring()
    value = r.cstring()
    return name, value


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!ii", pid, secret))


def decode_backend_key_data(body: bytes | memoryview) -> tuple[int, int]:
    r = _Reader(body, "BackendKeyData")
    pid = r.int32()
    secret = r.int32()
    return pid, secret


def decode_parameter_description(body: bytes | memoryview) -> tuple[int, ...]:
    """The parameter type OIDs of a ParameterDescription (the answer to a
    Describe of a prepared statement)."""
    r = _Reader(body, "ParameterDescription")
    count = r.int16()
    if count < 0:
        raise ProtocolViolation("malformed ParameterDescription message (negative count)")
    types = tuple(r.uint32() for _ in range(count))
    r.end()
    return types


def command_rows(tag: str) -> int | None:
    """Rows a command tag reports (``INSERT 0 5`` -> 5, ``SELECT 3`` -> 3), else None."""
    parts = tag.split()
    # ASCII decimal only: str.isdigit() also takes superscripts, which int() refuses.
    if len(parts) >= 2 and parts[-1].isascii() and parts[-1].isdigit():
        return int(parts[-1])
    return None


# --- frontend messages the gateway writes upstream ------------------------------------


def query(text: str) -> bytes:
    return message(b"Q", cstring(text))


def describe_statement(name: str) -> bytes:
    return message(b"D", b"S" + cstring(name))


SYNC: Final = message(b"S")
FLUSH: Final = message(b"H")
TERMINATE: Final = message(b"X")
