"""Authenticating the gateway to the upstream PostgreSQL server.

The gateway logs in upstream with credentials of its own (from the gateway
configuration), which its clients never see. :func:`authenticate_upstream`
runs the client side of the exchange right after the StartupMessage was sent,
and returns once the server sent AuthenticationOk; the caller then reads
ParameterStatus, BackendKeyData and ReadyForQuery itself.

Supported methods: trust, cleartext password, md5 and SCRAM-SHA-256 (RFC 5802
and RFC 7677, without channel binding). With SCRAM the server's signature is
verified: a server that cannot prove it knows the password's verifier is not
the server it claims to be, and AuthenticationOk before a verified final
message is refused. GSSAPI, SSPI and Kerberos are not supported.

Passwords are prepared for SCRAM with SASLprep (RFC 4013) as PostgreSQL does:
a password that SASLprep rejects (a control character, an unassigned code
point, bad bidirectional text) is used as its raw UTF-8 bytes, which is what
both the server and libpq do in that case.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import struct
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Final

from jitgate.gateways.postgres.protocol import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    CODE,
    MESSAGE,
    ProtocolViolation,
    cstring,
    decode_fields,
    message,
)

#: The next backend message: (type byte as an int, body).
Recv = Callable[[], Awaitable[tuple[int, bytes]]]
#: Write raw bytes (whole messages).
Send = Callable[[bytes], Awaitable[None]]

SCRAM_SHA_256: Final = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS: Final = "SCRAM-SHA-256-PLUS"
#: Iteration counts above this are refused: a hostile server could otherwise
#: make the gateway burn seconds of CPU per connection (PostgreSQL uses 4096).
MAX_ITERATIONS: Final = 10_000_000

#: SQLSTATEs of failures detected on this side (the server's own errors keep theirs).
SQLSTATE_PROTOCOL: Final = "08P01"  # protocol_violation
SQLSTATE_AUTH: Final = "28000"  # invalid_authorization_specification

_AUTH_KERBEROS_V5: Final = 2
_AUTH_SCM_CREDENTIAL: Final = 6
_AUTH_GSS: Final = 7
_AUTH_GSS_CONTINUE: Final = 8
_AUTH_SSPI: Final = 9
_UNSUPPORTED: Final = {
    _AUTH_KERBEROS_V5: "Kerberos V5",
    _AUTH_SCM_CREDENTIAL: "SCM credentials",
    _AUTH_GSS: "GSSAPI",
    _AUTH_GSS_CONTINUE: "GSSAPI",
    _AUTH_SSPI: "SSPI",
}

_I32: Final = struct.Struct("!i")


class UpstreamAuthFailed(Exception):
    """The gateway could not log in to the upstream server.

    ``sqlstate`` is the server's when the server refused (``28P01`` for a wrong
    password), else :data:`SQLSTATE_AUTH` or :data:`SQLSTATE_PROTOCOL`;
    ``from_server`` tells which. Messages never contain the password.
    """

    def __init__(
        self, message: str, *, sqlstate: str = SQLSTATE_AUTH, from_server: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.from_server = from_server


class ScramError(UpstreamAuthFailed):
    """A SCRAM exchange failed: malformed server message, wrong server signature, ..."""

    def __init__(self, message: str, *, sqlstate: str = SQLSTATE_PROTOCOL) -> None:
        super().__init__(f"SCRAM authentication failed: {message}", sqlstate=sqlstate)


# --- SASLprep (RFC 4013) ----------------------------------------------------------------

_PROHIBITED: Final = (
    stringprep.in_table_c12,  # non-ASCII space (mapped before, so never left)
    stringprep.in_table_c21_c22,  # control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogates
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties / deprecated
    stringprep.in_table_c9,  # tagging characters
    stringprep.in_table_a1,  # unassigned (stored strings, as PostgreSQL treats them)
)


def saslprep(value: str) -> str:
    """``value`` prepared with SASLprep (RFC 4013, stored-strings profile).

    Raises :class:`ValueError` for a string the profile prohibits.
    """
    if value.isascii() and value.isprintable():
        return value
    # Map: non-ASCII spaces to SPACE, "commonly mapped to nothing" removed.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in value if not stringprep.in_table_b1(c)
    )
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not prepared:
        return prepared
    for char in prepared:
        if any(prohibited(char) for prohibited in _PROHIBITED):
            raise ValueError(f"SASLprep prohibits the character U+{ord(char):04X}")
    # Bidirectional text (RFC 3454 section 6).
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise ValueError("SASLprep: mixed right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise ValueError("SASLprep: right-to-left text must start and end with such a char")
    return prepared


def scram_password(password: str) -> bytes:
    """The bytes PostgreSQL derives SCRAM keys from: SASLprep'd if possible, else raw."""
    try:
        return saslprep(password).encode("utf-8")
    except ValueError:
        return password.encode("utf-8", "surrogatepass")


# --- SCRAM-SHA-256 --------------------------------------------------------------------

#: printable = %x21-2B / %x2D-7E (no comma), RFC 5802 section 7.
_NONCE: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_ITERATIONS: Final = re.compile(r"[0-9]{1,12}")
_ATTRIBUTE: Final = re.compile(r"[A-Za-z]")
_GS2_HEADER: Final = b"n,,"


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _saslname(user: str) -> str:
    return user.replace("=", "=3D").replace(",", "=2C")


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ScramError(f"the server's {what} is not valid base64") from None


def _attributes(text: str, what: str) -> list[tuple[str, str]]:
    """``a=value,b=value`` as pairs, checking the shape of each attribute."""
    out: list[tuple[str, str]] = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not _ATTRIBUTE.fullmatch(part[0]):
            raise ScramError(f"malformed {what} (attribute {part[:16]!r})")
        out.append((part[0], part[2:]))
    return out


class ScramClient:
    """The client's side of one SCRAM-SHA-256 exchange (no channel binding).

    ``first_message`` → send; ``final_message(server_first)`` → send;
    ``verify_final(server_final)`` checks the server's signature. Every
    problem with what the server sent raises :class:`ScramError`.
    """

    def __init__(self, user: str, password: str, nonce: str | None = None) -> None:
        if nonce is None:
            nonce = base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        elif not _NONCE.fullmatch(nonce):
            raise ValueError("a SCRAM nonce is printable ASCII without commas")
        self._password = scram_password(password)
        self._nonce = nonce
        self._first_bare = f"n={_saslname(user)},r={nonce}"
        self._server_signature: bytes | None = None
        self._done = False

    def first_message(self) -> bytes:
        """client-first-message: the GS2 header ``n,,`` and the bare message."""
        return _GS2_HEADER + self._first_bare.encode("utf-8")

    def final_message(self, server_first: bytes) -> bytes:
        """client-final-message (with the proof) for the server's first message."""
        if self._server_signature is not None:
            raise ScramError("the server sent a second server-first-message")
        try:
            text = server_first.decode("ascii")
        except UnicodeDecodeError:
            raise ScramError("the server-first-message is not ASCII") from None
        attributes = _attributes(text, "server-first-message")
        names = "".join(name for name, _ in attributes)
        if names.startswith("m"):
            raise ScramError("the server requires an unsupported extension (m=)")
        if not names.startswith("rsi"):
            raise ScramError(
                "malformed server-first-message (expected r=, s= and i= in this order)"
            )
        nonce, salt_b64, iterations_text = (value for _, value in attributes[:3])
        if not _NONCE.fullmatch(nonce):
            raise ScramError("the server's nonce has characters SCRAM does not allow")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("the server's nonce does not extend the client's nonce")
        salt = _b64decode(salt_b64, "salt")
        if not salt:
            raise ScramError("the server sent an empty salt")
        if not _ITERATIONS.fullmatch(iterations_text):
            raise ScramError("the server's iteration count is not a number")
        iterations = int(iterations_text)
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ScramError(
                f"the server's iteration count {iterations} is out of range "
                f"(1 to {MAX_ITERATIONS:,})"
            )

        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        channel = base64.b64encode(_GS2_HEADER).decode("ascii")
        without_proof = f"c={channel},r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")

    def verify_final(self, server_final: bytes) -> None:
        """Check the server-final-message; :class:`ScramError` unless it proves the server."""
        if self._server_signature is None:
            raise ScramError("the server-final-message came before the server-first-message")
        if self._done:
            raise ScramError("the server sent a second server-final-message")
        try:
            text = server_final.decode("ascii")
        except UnicodeDecodeError:
            raise ScramError("the server-final-message is not ASCII") from None
        attributes = _attributes(text, "server-final-message")
        name, value = attributes[0]
        if name == "e":
            raise ScramError(f"the server reported {value[:100]!r}", sqlstate=SQLSTATE_AUTH)
        if name != "v":
            raise ScramError("malformed server-final-message (expected v=)")
        signature = _b64decode(value, "signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise ScramError(
                "the server's signature is wrong: the upstream server does not know "
                "this password (it is not the server it claims to be)",
                sqlstate=SQLSTATE_AUTH,
            )
        self._done = True

    @property
    def verified(self) -> bool:
        """Whether the server's final message was checked and proved the server."""
        return self._done


# --- the exchange ---------------------------------------------------------------------


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The response to an MD5 challenge: ``md5`` + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode("utf-8"), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode("ascii") + salt, usedforsecurity=False).hexdigest()
    return b"md5" + outer.encode("ascii")


def _server_error(body: bytes) -> UpstreamAuthFailed:
    try:
        fields = decode_fields(body)
    except ProtocolViolation:
        fields = {}
    sqlstate = fields.get(CODE) or SQLSTATE_AUTH
    text = fields.get(MESSAGE) or "authentication failed"
    return UpstreamAuthFailed(
        f"the upstream server refused the login: {text} (SQLSTATE {sqlstate})",
        sqlstate=sqlstate,
        from_server=True,
    )


def _sasl_mechanisms(data: bytes) -> list[str]:
    if not data.endswith(b"\x00\x00") and data != b"\x00":
        raise UpstreamAuthFailed(
            "malformed SASL mechanism list from the upstream server", sqlstate=SQLSTATE_PROTOCOL
        )
    return [m.decode("utf-8", "replace") for m in data.split(b"\x00") if m]


def _require(password: str | None, user: str, method: str) -> str:
    if password is None:
        raise UpstreamAuthFailed(
            f"the upstream server asks {method} authentication for user {user!r}, "
            "but no password is configured for it"
        )
    return password


def _protocol_error(text: str) -> UpstreamAuthFailed:
    return UpstreamAuthFailed(text, sqlstate=SQLSTATE_PROTOCOL)


async def authenticate_upstream(recv: Recv, send: Send, *, user: str, password: str | None) -> None:
    """Log in as ``user``; returns when the server sent AuthenticationOk.

    Raises :class:`UpstreamAuthFailed` (the server's SQLSTATE and message when
    it refused), :class:`ScramError` (a subclass) for a SCRAM exchange that
    failed or a server that could not prove itself.
    """
    scram: ScramClient | None = None
    while True:
        kind, body = await recv()
        if kind == ord("E"):
            raise _server_error(body)
        if kind == ord("N"):  # NoticeResponse: allowed at any time
            continue
        if kind != ord("R"):
            raise _protocol_error(
                f"the upstream server sent message {chr(kind)!r} during authentication"
            )
        if len(body) < 4:
            raise _protocol_error("malformed authentication request from the upstream server")
        (code,) = _I32.unpack_from(body)
        data = body[4:]

        if code == AUTH_OK:
            if scram is not None and not scram.verified:
                raise ScramError(
                    "the upstream server ended the exchange without proving itself "
                    "(AuthenticationOk before a verified server-final-message)",
                    sqlstate=SQLSTATE_AUTH,
                )
            return
        if code == AUTH_CLEARTEXT:
            secret = _require(password, user, "cleartext password")
            await send(message(b"p", cstring(secret)))
        elif code == AUTH_MD5:
            secret = _require(password, user, "md5 password")
            if len(data) != 4:
                raise _protocol_error("malformed md5 request from the upstream server")
            await send(message(b"p", md5_password(user, secret, data) + b"\x00"))
        elif code == AUTH_SASL:
            if scram is not None:
                raise _protocol_error("the upstream server restarted SASL authentication")
            mechanisms = _sasl_mechanisms(data)
            if SCRAM_SHA_256 not in mechanisms:
                offered = ", ".join(mechanisms) or "none"
                hint = (
                    " (channel binding is not supported by the gateway)"
                    if SCRAM_SHA_256_PLUS in mechanisms
                    else ""
                )
                raise UpstreamAuthFailed(
                    f"the upstream server offers no supported SASL mechanism: {offered}{hint}"
                )
            secret = _require(password, user, "SCRAM-SHA-256")
            # PostgreSQL ignores the SCRAM user name (the startup user counts);
            # like libpq, send none, so no name has to survive SASLprep.
            scram = ScramClient("", secret)
            first = scram.first_message()
            await send(message(b"p", cstring(SCRAM_SHA_256) + _I32.pack(len(first)) + first))
        elif code == AUTH_SASL_CONTINUE:
            if scram is None:
                raise _protocol_error("SASL continue without a SASL exchange")
            await send(message(b"p", scram.final_message(data)))
        elif code == AUTH_SASL_FINAL:
            if scram is None:
                raise _protocol_error("SASL final without a SASL exchange")
            scram.verify_final(data)
        elif code in _UNSUPPORTED:
            raise UpstreamAuthFailed(
                f"the upstream server asks {_UNSUPPORTED[code]} authentication for user "
                f"{user!r}, which the gateway does not support (use scram-sha-256, md5 or "
                "password in the server's pg_hba.conf)"
            )
        else:
            raise _protocol_error(f"unknown authentication request {code} from the upstream server")
