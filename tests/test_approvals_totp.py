"""TOTP step-up: RFC 4226 / RFC 6238 test vectors, the window and replay refusal."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitgate.approvals import ApprovalError, check_totp, hotp, totp, verify_totp
from jitgate.approvals.totp import decode_secret, time_step

# The RFC 6238 appendix B seeds: the ASCII digits repeated to the hash size.
SEED_SHA1 = b"12345678901234567890"
SEED_SHA256 = b"12345678901234567890123456789012"
SEED_SHA512 = b"1234567890123456789012345678901234567890123456789012345678901234"


def b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode()


def at(unix: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=unix)


@pytest.mark.parametrize(
    ("counter", "code"),
    list(
        enumerate(
            [
                "755224",
                "287082",
                "359152",
                "969429",
                "338314",
                "254676",
                "287922",
                "162583",
                "399871",
                "520489",
            ]
        )
    ),
)
def test_rfc4226_hotp_vectors(counter: int, code: str) -> None:
    assert hotp(SEED_SHA1, counter) == code


@pytest.mark.parametrize(
    ("unix", "sha1", "sha256", "sha512"),
    [
        (59, "94287082", "46119246", "90693936"),
        (1111111109, "07081804", "68084774", "25091201"),
        (1111111111, "14050471", "67062674", "99943326"),
        (1234567890, "89005924", "91819424", "93441116"),
        (2000000000, "69279037", "90698825", "38618901"),
        (20000000000, "65353130", "77737706", "47863826"),
    ],
)
def test_rfc6238_totp_vectors(unix: int, sha1: str, sha256: str, sha512: str) -> None:
    now = at(unix)
    assert totp(b32(SEED_SHA1), now, digits=8) == sha1
    assert totp(b32(SEED_SHA256), now, digits=8, algorithm="sha256") == sha256
    assert totp(b32(SEED_SHA512), now, digits=8, algorithm="sha512") == sha512


def test_the_rfc6238_time_steps() -> None:
    assert time_step(at(59)) == 1
    assert time_step(at(1111111109)) == 0x23523EC
    assert time_step(at(20000000000)) == 0x27BC86AA
    # Another offset, the same instant: the same step.
    assert time_step(at(59).astimezone(UTC).replace(tzinfo=UTC)) == 1


SECRET = b32(SEED_SHA1)
NOW = at(1_700_000_000)


def test_the_current_code_and_one_step_either_side_are_accepted() -> None:
    step = time_step(NOW)
    for offset in (-1, 0, 1):
        code = totp(SECRET, NOW + timedelta(seconds=30 * offset))
        assert check_totp(SECRET, code, NOW, None) == step + offset
    for offset in (-3, -2, 2, 3):
        code = totp(SECRET, NOW + timedelta(seconds=30 * offset))
        assert verify_totp(SECRET, code, NOW, None) is None


def test_a_used_code_is_refused_as_a_replay() -> None:
    code = totp(SECRET, NOW)
    step = check_totp(SECRET, code, NOW, None)
    with pytest.raises(ApprovalError) as info:
        check_totp(SECRET, code, NOW + timedelta(seconds=5), step)
    assert info.value.code == "mfa_replayed"
    assert verify_totp(SECRET, code, NOW, step) is None
    # An older code, still inside the window, is a replay too.
    older = totp(SECRET, NOW - timedelta(seconds=30))
    with pytest.raises(ApprovalError) as info:
        check_totp(SECRET, older, NOW, step)
    assert info.value.code == "mfa_replayed"
    # The next code is fine.
    later = NOW + timedelta(seconds=30)
    assert check_totp(SECRET, totp(SECRET, later), later, step) == step + 1


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "12345x"])
def test_malformed_codes_are_invalid(code: str) -> None:
    with pytest.raises(ApprovalError) as info:
        check_totp(SECRET, code, NOW, None)
    assert info.value.code == "mfa_invalid"


def test_a_wrong_code_is_invalid() -> None:
    right = totp(SECRET, NOW)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    with pytest.raises(ApprovalError) as info:
        check_totp(SECRET, wrong, NOW, None)
    assert info.value.code == "mfa_invalid"


def test_secrets_are_read_as_apps_show_them() -> None:
    code = totp(SECRET, NOW)
    spaced = " ".join(SECRET[i : i + 4] for i in range(0, len(SECRET), 4)).lower()
    assert check_totp(spaced, code[:3] + " " + code[3:], NOW, None) == time_step(NOW)
    assert decode_secret("JBSWY3DPEHPK3PXP") == decode_secret("jbswy3dpehpk3pxp====")


@pytest.mark.parametrize("secret", ["", "   ", "not base32!", "====", "JBSWY3DP1"])
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ApprovalError) as info:
        check_totp(secret, "123456", NOW, None)
    assert info.value.code == "totp_secret_invalid"


def test_naive_times_are_refused() -> None:
    with pytest.raises(ApprovalError) as info:
        check_totp(SECRET, "123456", NOW.replace(tzinfo=None), None)
    assert info.value.code == "invalid_time"


secrets = st.binary(min_size=10, max_size=64).map(b32)
instants = st.integers(min_value=60, max_value=10**10).map(at)


@given(secret=secrets, now=instants, drift=st.integers(min_value=-29, max_value=29))
def test_a_fresh_code_verifies_once(secret: str, now: datetime, drift: int) -> None:
    code = totp(secret, now)
    step = check_totp(secret, code, now + timedelta(seconds=drift), None)
    assert step >= time_step(now)
    # Whatever the clock says within the window, the same code never works twice.
    for later in (0, 1, 29, 30):
        assert verify_totp(secret, code, now + timedelta(seconds=later), step) is None


@given(secret=secrets, now=instants, last=st.integers(min_value=0, max_value=10**9))
def test_a_step_not_after_the_last_used_is_never_accepted(
    secret: str, now: datetime, last: int
) -> None:
    step = verify_totp(secret, totp(secret, now), now, last)
    assert step is None or step > last
