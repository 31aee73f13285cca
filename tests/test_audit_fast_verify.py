"""The verifier's fast path over stored rows says exactly what ``verify_chain`` says.

``verify_store`` checks the stored rows with ``verify_rows`` (a tight loop that
hashes the document around the stored payload text) and hands anything that
does not check out to the steps of ``verify_chain``. Whatever was done to the
rows, the two must agree on everything they report, down to the problem's
kind, seq and message.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitgate.audit.chain import GENESIS, event_hash, seal
from jitgate.audit.checkpoint import Checkpoint, sign_checkpoint
from jitgate.audit.keys import SigningKey, TrustedKeys
from jitgate.audit.verify import (
    ARCHIVED_EVENT,
    Anchor,
    Row,
    Verification,
    verify_chain,
    verify_rows,
)
from jitgate.store import Database
from jitgate.store.audit import (
    _pages,
    _row_event,
    _sqlite_time,
    get_anchor,
    list_checkpoints,
    verify_store,
)
from jitgate.store.database import compact_json
from test_audit_store import TAMPERINGS as TAMPERINGS_ON_STORE
from test_audit_store import TRUSTED as STORE_TRUSTED
from test_audit_store import fill, problem, sql

KEY = SigningKey.generate()
OTHER = SigningKey.generate()
TRUSTED = TrustedKeys([KEY.verify_key])
T0 = datetime(2030, 1, 1, tzinfo=UTC)

#: Payloads as the service writes them. The store escapes non-ASCII text, which
#: the fast check decodes; floats are not stored in canonical form, so their rows
#: take the exact path even untouched.
PAYLOADS: list[dict[str, Any]] = [
    {"n": 1, "comment": "ok", "groups": ["dba"]},
    {"approver": "carol", "mfa_verified": False, "stage_index": 0},
    {"note": "event ✓", "who": "José"},
    {"ratio": 0.1, "big": 2**60},
    {},
    {"path": "C:\\users\\u00e9", "smile": "😀", "odd": "\x7f\x01\u2028", "q": '"'},
]


def stored(seq: int, at: datetime, payload: dict[str, Any], prev: str, **fields: Any) -> Row:
    """The row SQLite holds for this event (naive UTC time text, compact JSON)."""
    event = seal(
        seq=seq,
        id=fields.get("id", f"ev-{seq}"),
        at=at,
        type=fields.get("type", "approval.given" if seq % 2 else "request.created"),
        actor=fields.get("actor", None if seq % 5 == 0 else f"user{seq % 3}"),
        request_id=fields.get("request_id", f"req_{seq // 4}"),
        target="orders-db",
        environment=None if seq % 7 == 0 else "production",
        payload=payload,
        prev_hash=prev,
    )
    return (
        event.seq,
        event.id,
        event.at[:10] + " " + event.at[11:26],
        event.type,
        event.actor,
        event.request_id,
        event.target,
        event.environment,
        compact_json(dict(event.payload)),
        event.prev_hash,
        event.hash,
    )


def trail(n: int, start: Anchor | None) -> list[Row]:
    first = 1 if start is None else start.seq + 1
    prev = GENESIS if start is None else start.hash
    rows = []
    for seq in range(first, first + n):
        row = stored(seq, T0 + timedelta(seconds=seq), PAYLOADS[seq % len(PAYLOADS)], prev)
        rows.append(row)
        prev = row[10]
    return rows


def rehashed(rows: list[Row], k: int) -> list[Row]:
    """``rows`` with every hash from index ``k`` on recomputed (no key needed)."""
    out = list(rows[:k])
    prev = out[-1][10] if out else rows[0][9]
    for row in rows[k:]:
        event = replace(_row_event(row), prev_hash=prev)
        digest = event_hash(event.document())
        out.append((*row[:9], prev, digest))
        prev = digest
    return out


def at_variants(row: Row) -> list[Any]:
    at = row[2]
    iso = at[:10] + "T" + at[11:] + "+00:00"
    return [
        iso,  # the same instant in ISO form: intact through the exact path
        at[:19] + "," + at[20:],  # a comma before the microseconds
        at[:19],  # no microseconds
        at.replace("2030", "2031"),
        at + "Z",
        "not a time",
        None,
        12345,
    ]


def payload_variants(row: Row) -> list[Any]:
    data = json.loads(row[8])
    return [
        json.dumps(data),  # spaces: the same payload, not stored canonically
        json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
        json.dumps({**data, "n": -1}, sort_keys=True, separators=(",", ":")),
        "{}",
        "[1, 2]",
        "not json",
        None,
        7,
        # Escapes: the same JSON spelled otherwise, or something else that looks alike.
        row[8].replace("\\u00e9", "\\u00E9"),
        row[8].replace("\\u", "\\U"),
        row[8].replace("\\u", "\\\\u"),
        row[8].replace("\\ud83d\\ude00", "\\ude00\\ud83d"),
        row[8].replace("\\ud83d", "\\udcff"),
        row[8].replace("\\\\", "\\u005c"),
        row[8].replace("\\u007f", "\\u007F"),
        row[8].replace("\\u0001", "\\u0041"),
    ]


TAMPERINGS = [
    "none",
    "field",
    "at",
    "payload",
    "seq",
    "delete",
    "renumber",
    "insert",
    "swap",
    "truncate",
    "rehash",
    "reseal",
    "checkpoint",
]
TEXT_VALUES = st.none() | st.text(max_size=6) | st.sampled_from(["", '"', "\\", "\n", "\udcff"])


@st.composite
def tampered(draw: st.DrawFn) -> tuple[list[Row], list[Checkpoint], dict[str, Any]]:
    n = draw(st.integers(min_value=0, max_value=14), label="events")
    anchored = draw(st.booleans(), label="anchored")
    start = None
    before: list[Checkpoint] = []
    if anchored:
        archived = trail(6, None)
        start = Anchor(6, archived[-1][10])
        before = [sign_checkpoint(KEY, 6, start.hash, T0)]
    rows = trail(n, start)
    if anchored and rows and draw(st.booleans(), label="archive record"):
        # Replace the last event by the audit.archived event that records the anchor.
        last = rows[-1]
        payload = {"through_seq": start.seq, "hash": start.hash} if start else {}
        rows[-1] = stored(
            last[0], T0 + timedelta(days=1), payload, last[9], type=ARCHIVED_EVENT, actor=None
        )
    seqs = [r[0] for r in rows]
    signed = draw(st.lists(st.sampled_from(seqs), unique=True) if seqs else st.just([]))
    if rows and draw(st.booleans(), label="sign the head"):
        signed.append(rows[-1][0])
    by_seq = {r[0]: r for r in rows}
    checkpoints = before + [sign_checkpoint(KEY, s, by_seq[s][10], T0) for s in sorted(set(signed))]

    how = draw(
        st.sampled_from(TAMPERINGS),
        label="tampering",
    )
    if rows and how != "none":
        k = draw(st.integers(min_value=0, max_value=len(rows) - 1), label="index")
        row = list(rows[k])
        if how == "field":
            i = draw(st.sampled_from([1, 3, 4, 5, 6, 7, 9, 10]), label="column")
            row[i] = draw(TEXT_VALUES | st.sampled_from([r[i] for r in rows]), label="value")
            rows[k] = tuple(row)
        elif how == "at":
            row[2] = draw(st.sampled_from(at_variants(rows[k])), label="at")
            rows[k] = tuple(row)
        elif how == "payload":
            row[8] = draw(st.sampled_from(payload_variants(rows[k])), label="payload")
            rows[k] = tuple(row)
        elif how == "seq":
            row[0] = draw(st.integers(min_value=-1, max_value=30), label="seq")
            rows[k] = tuple(row)
        elif how == "delete":
            del rows[k]
        elif how == "renumber":
            del rows[k]
            rows[k:] = [(r[0] - 1, *r[1:]) for r in rows[k:]]
        elif how == "insert":
            forged = stored(rows[k][0], T0, {}, rows[k][9], id="forged", actor="mallory")
            rows[k:] = [forged, *[(r[0] + 1, *r[1:]) for r in rows[k:]]]
        elif how == "swap" and k + 1 < len(rows):
            a, b = rows[k], rows[k + 1]
            renumber = draw(st.booleans(), label="keep seqs")
            rows[k : k + 2] = [(a[0], *b[1:]), (b[0], *a[1:])] if renumber else [b, a]
        elif how == "truncate":
            del rows[k:]
        elif how == "rehash":
            rows = rehashed(rows, k)
        elif how == "reseal":  # one event edited, its own hash recomputed
            rows[k] = rehashed([(*row[:4], "mallory", *row[5:])], 0)[0]
        elif how == "checkpoint" and checkpoints:
            j = draw(st.integers(min_value=0, max_value=len(checkpoints) - 1), label="checkpoint")
            cp = checkpoints[j]
            checkpoints[j] = draw(
                st.sampled_from(
                    [
                        replace(cp, hash="0" * 64),
                        replace(cp, at="2031-01-01T00:00:00.000000+00:00"),
                        sign_checkpoint(OTHER, cp.seq, cp.hash, T0),
                        sign_checkpoint(KEY, cp.seq + 3, cp.hash, T0),
                    ]
                ),
                label="forged checkpoint",
            )
    options: dict[str, Any] = {
        "anchor": start,
        "allow_unsigned": draw(st.integers(min_value=0, max_value=20), label="allow_unsigned"),
    }
    if draw(st.booleans(), label="expect") and checkpoints:
        options["expect"] = draw(st.sampled_from(checkpoints), label="expected")
    return rows, checkpoints, options


def pages(rows: list[Row], cuts: list[int]) -> list[list[Row]]:
    bounds = sorted({0, len(rows), *(c % (len(rows) + 1) for c in cuts)})
    return [rows[a:b] for a, b in pairwise(bounds)]


def both(
    rows: list[Row], checkpoints: list[Checkpoint], options: dict[str, Any], cuts: list[int]
) -> tuple[Verification, Verification]:
    fast = verify_rows(
        pages(rows, cuts), _row_event, checkpoints, TRUSTED, time=_sqlite_time, **options
    )
    exact = verify_chain([_row_event(r) for r in rows], checkpoints, TRUSTED, **options)
    return fast, exact


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tampered(), cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=4))
def test_the_fast_path_agrees_with_verify_chain(
    case: tuple[list[Row], list[Checkpoint], dict[str, Any]], cuts: list[int]
) -> None:
    rows, checkpoints, options = case
    fast, exact = both(rows, checkpoints, options, cuts)
    assert fast.to_dict() == exact.to_dict()


def test_an_untouched_trail_is_accepted_on_the_fast_path_too() -> None:
    rows = trail(40, None)
    checkpoints = [sign_checkpoint(KEY, s, rows[s - 1][10], T0) for s in (10, 20, 40)]
    fast, exact = both(rows, checkpoints, {}, [7, 13])
    assert fast.ok, fast.problem
    assert fast.to_dict() == exact.to_dict()
    assert (fast.events, fast.first_seq, fast.last_seq, fast.signed_through) == (40, 1, 40, 40)


def test_rows_that_need_the_exact_path_do_not_stop_the_fast_one() -> None:
    """Non-canonical payload text (escaped non-ASCII, spaces) is intact all the same."""
    rows = trail(10, None)
    assert '"note":"event \\u2713"' in rows[1][8]  # escaped: the fast check misses it
    rows[4] = (*rows[4][:8], json.dumps(json.loads(rows[4][8])), *rows[4][9:])
    checkpoints = [sign_checkpoint(KEY, 10, rows[-1][10], T0)]
    fast, exact = both(rows, checkpoints, {}, [])
    assert fast.ok, fast.problem
    assert fast.to_dict() == exact.to_dict()


def test_every_spelling_of_a_time_or_a_payload_is_judged_alike() -> None:
    """Each variant of each row's ``at`` and payload, on its own (deterministic:
    the property test above reaches the rarer ones only now and then)."""
    base = trail(2 * len(PAYLOADS), None)
    for k, row in enumerate(base):
        for column, variants in ((2, at_variants(row)), (8, payload_variants(row))):
            for variant in variants:
                rows = list(base)
                rows[k] = (*row[:column], variant, *row[column + 1 :])
                fast, exact = both(rows, [], {"allow_unsigned": len(rows)}, [k])
                assert fast.to_dict() == exact.to_dict(), (k, variant)


@pytest.mark.parametrize(
    ("original", "forged"),
    [
        # Escaped quotes that, decoded, would spell the original's keys and values.
        ({"a": "x", "b": "y"}, '{"a":"x\\u0022,\\u0022b\\u0022:\\u0022y"}'),
        ({"a": '"'}, '{"a":"\\u005c\\u0022"}'),
        ({"a": "é"}, '{"a":"\\\\u00e9"}'),  # a backslash, then "u00e9"
        ({"a": "é"}, '{"a":"\\U00e9"}'),  # not JSON
        ({"a": "😀"}, '{"a":"\\ude00\\ud83d"}'),
    ],
)
def test_a_payload_that_only_looks_like_the_original_is_altered(
    original: dict[str, Any], forged: str
) -> None:
    rows = trail(3, None)
    rows[1] = stored(2, T0, original, rows[0][10])
    rows[2] = stored(3, T0, {}, rows[1][10])
    untouched = both(rows, [], {"allow_unsigned": 3}, [])
    assert untouched[0].ok, untouched[0].problem
    rows[1] = (*rows[1][:8], forged, *rows[1][9:])
    fast, exact = both(rows, [], {"allow_unsigned": 3}, [])
    assert fast.problem is not None
    assert (fast.problem.kind, fast.problem.seq) == ("altered", 2)
    assert fast.to_dict() == exact.to_dict()


def test_a_problem_is_named_alike_at_a_page_boundary() -> None:
    rows = trail(12, None)
    rows[5], rows[6] = (rows[5][0], *rows[6][1:]), (rows[6][0], *rows[5][1:])
    for cut in range(13):
        fast, exact = both(rows, [], {"allow_unsigned": 12}, [cut])
        assert fast.problem is not None
        assert (fast.problem.kind, fast.problem.seq) == ("reordered", 6)
        assert fast.to_dict() == exact.to_dict()


# --- on the stores ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["none", *TAMPERINGS_ON_STORE])
async def test_verify_store_says_what_verify_chain_says(db: Database, how: str) -> None:
    """On both backends: the same result as verify_chain over the events read one
    by one through the session (how the trail was verified before)."""
    await fill(db)
    if how != "none":
        await TAMPERINGS_ON_STORE[how][0](db)
    fast = await verify_store(db, STORE_TRUSTED)
    async with db.transaction(readonly=True) as session:
        checkpoints = await list_checkpoints(session)
        anchor = await get_anchor(session)
        events = [event async for page in _pages(session, 0) for event in page]
    exact = verify_chain(events, checkpoints, STORE_TRUSTED, anchor=anchor)
    assert fast.to_dict() == exact.to_dict()


async def test_odd_stored_times_are_read_as_before(db: Database) -> None:
    await fill(db)
    if db.backend == "sqlite":
        # The same instant spelled in ISO form is the same time: still intact.
        await sql(db, "UPDATE events SET at = '2030-01-01T00:17:00.000000+00:00' WHERE seq = 17")
        assert (await verify_store(db, STORE_TRUSTED)).ok
        # A comma before the microseconds is not how the time was written.
        await sql(db, "UPDATE events SET at = '2030-01-01 00:17:00,000000' WHERE seq = 17")
        assert await problem(db) == ("altered", 17)
        await sql(db, "UPDATE events SET at = 'soon' WHERE seq = 17")
    else:
        # Times no Python datetime can hold: reported, not a crash.
        await sql(db, "UPDATE events SET at = 'infinity' WHERE seq = 17")
        assert await problem(db) == ("altered", 17)
        await sql(db, "UPDATE events SET at = '10000-01-01 00:00:00+00' WHERE seq = 17")
    assert await problem(db) == ("altered", 17)
