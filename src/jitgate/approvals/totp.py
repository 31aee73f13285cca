"""TOTP step-up for approvers (RFC 6238 over RFC 4226 HOTP), pure.

Approvals on a stage with ``mfa`` need a fresh one-time code. The adapter
keeps each approver's secret and the last time step they used, and calls
:func:`check_totp` (or :func:`verify_totp`); on success it stores the
returned step and passes ``mfa_verified=True`` to ``approve``. Refusing any
step not later than the last one used is what makes a code single-use
(RFC 6238 section 5.2): a code read over a shoulder, or replayed from a log,
is worthless once its owner used it.

Parameters are those every authenticator app defaults to: SHA-1, 6 digits,
30-second steps, and one step of tolerance either side for clock drift.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Literal

from jitgate.approvals.errors import (
    InvalidTimeError,
    InvalidTotpSecretError,
    MfaInvalidError,
    MfaReplayedError,
)

TOTP_PERIOD = 30
TOTP_DIGITS = 6
#: Accepted steps either side of the current one.
TOTP_WINDOW = 1

Algorithm = Literal["sha1", "sha256", "sha512"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DIGITS = frozenset("0123456789")


def decode_secret(secret_b32: str) -> bytes:
    """The key bytes of a base32 secret as authenticator apps show it.

    Case, spaces and missing ``=`` padding are forgiven, as apps and
    provisioning URIs vary on them; anything else is refused.
    """
    cleaned = "".join(secret_b32.split()).upper().rstrip("=")
    if not cleaned:
        raise InvalidTotpSecretError("the TOTP secret is empty")
    padded = cleaned + "=" * (-len(cleaned) % 8)
    try:
        key = base64.b32decode(padded, casefold=False)
    except (binascii.Error, ValueError):
        raise InvalidTotpSecretError("the TOTP secret is not valid base32") from None
    if not key:
        raise InvalidTotpSecretError("the TOTP secret is empty")
    return key


def hotp(
    key: bytes, counter: int, *, digits: int = TOTP_DIGITS, algorithm: Algorithm = "sha1"
) -> str:
    """RFC 4226 HOTP value of ``counter`` (dynamic truncation), zero-padded."""
    if counter < 0:
        raise ValueError("the HOTP counter cannot be negative")
    if not 6 <= digits <= 10:
        raise ValueError("HOTP codes have 6 to 10 digits")
    mac = hmac.new(key, counter.to_bytes(8, "big"), getattr(hashlib, algorithm)).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFF_FFFF
    return str(value % 10**digits).zfill(digits)


def time_step(now: datetime, *, period: int = TOTP_PERIOD) -> int:
    """The RFC 6238 time step ``now`` falls in (exact integer arithmetic)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidTimeError("times must be timezone-aware datetimes")
    return (now - _EPOCH) // timedelta(seconds=period)


def totp(
    secret_b32: str,
    now: datetime,
    *,
    digits: int = TOTP_DIGITS,
    period: int = TOTP_PERIOD,
    algorithm: Algorithm = "sha1",
) -> str:
    """The code an authenticator shows at ``now``."""
    return hotp(
        decode_secret(secret_b32), time_step(now, period=period), digits=digits, algorithm=algorithm
    )


def check_totp(secret_b32: str, code: str, now: datetime, last_used_step: int | None) -> int:
    """Return the time step ``code`` is valid for at ``now``, or refuse it.

    Raises :class:`MfaReplayedError` for a right code whose step is not later
    than ``last_used_step`` and :class:`MfaInvalidError` for a wrong one.
    """
    key = decode_secret(secret_b32)
    current = time_step(now)
    typed = "".join(code.split())
    if len(typed) != TOTP_DIGITS or not set(typed) <= _DIGITS:
        raise MfaInvalidError("a TOTP code is six digits")
    # Compare against every step in the window, without stopping early, so
    # the time taken says nothing about which step (if any) matched.
    matched = [
        step
        for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1)
        if step >= 0 and hmac.compare_digest(hotp(key, step).encode(), typed.encode())
    ]
    if not matched:
        raise MfaInvalidError("the TOTP code is not valid")
    fresh = [step for step in matched if last_used_step is None or step > last_used_step]
    if not fresh:
        raise MfaReplayedError("the TOTP code has already been used")
    return max(fresh)


def verify_totp(
    secret_b32: str, code: str, now: datetime, last_used_step: int | None
) -> int | None:
    """Like :func:`check_totp`, with ``None`` for a wrong or replayed code."""
    try:
        return check_totp(secret_b32, code, now, last_used_step)
    except (MfaInvalidError, MfaReplayedError):
        return None
