"""Verify a trail: recompute the chain, check every checkpoint, name the first problem.

:func:`verify_chain` reads the events once, in ``seq`` order, holding two
events of look-ahead (to tell an insertion from a deletion from a swap) and
nothing else, so a million events need no more memory than ten.

What each tampering looks like, and what is reported (``Problem.kind``):

``altered``
    An event's content (payload, time, actor ...) no longer matches its hash,
    or an event was rewritten with a recomputed hash (then the next event's
    link breaks, and the rewritten one is named).
``deleted``
    A ``seq`` is missing, or the events after it were renumbered down.
``inserted``
    An event that was not in the chain sits between two that were (the
    events after it were renumbered up).
``reordered``
    Two events traded places.
``rewritten``
    The chain is internally consistent but does not match a signed
    checkpoint: a stretch was rewritten with recomputed hashes. The hashes
    cannot say which event of the stretch changed first; the first event
    after the previous good checkpoint is named, with the stretch.
``bad_signature`` / ``unknown_key``
    A checkpoint whose signature does not verify with the trusted keys
    (forged, altered, or signed by a key the verifier does not trust).
``truncated``
    A signed checkpoint covers events that are no longer there.
``unsigned``
    More events follow the last signed checkpoint than allowed: they are
    chained, but nothing proves they were not rewritten. A running server
    signs within seconds; a verifier reading a live trail allows a few.
``anchor``
    The stored trail starts after archived events, but the start is not
    proven by a signed checkpoint and a recorded ``audit.archived`` event.

Deleting the newest events together with every checkpoint that covers them
is the one change the stored trail cannot reveal by itself; compare with a
copy of a recent checkpoint kept elsewhere (``expect``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from jitgate.audit.chain import GENESIS, ChainEvent, matches
from jitgate.audit.checkpoint import Checkpoint
from jitgate.audit.keys import TrustedKeys

#: Event type recorded when older events are archived (see ``jitgate audit archive``).
ARCHIVED_EVENT = "audit.archived"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    #: The first event concerned (for ``deleted``: the first missing seq).
    seq: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "message": self.message}


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a trail starts when it does not start at the genesis."""

    seq: int
    hash: str


@dataclass(slots=True)
class Verification:
    ok: bool = True
    events: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    head_hash: str = GENESIS
    checkpoints: int = 0
    #: The highest seq covered by a valid signed checkpoint (0: none).
    signed_through: int = 0
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def unsigned(self) -> int:
        return max(0, self.last_seq - self.signed_through)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head_hash": self.head_hash,
            "checkpoints": self.checkpoints,
            "signed_through": self.signed_through,
            "unsigned": self.unsigned,
            "problem": None if self.problem is None else self.problem.to_dict(),
            "warnings": list(self.warnings),
        }


def _as_written(event: ChainEvent, seq: int) -> bool:
    """Whether ``event`` hashes correctly had it been written with ``seq``."""
    return matches({**event.document(), "seq": seq}, event.hash)


def _intact(event: ChainEvent) -> bool:
    return event.intact()


class _Lookahead:
    def __init__(self, events: Iterable[ChainEvent]) -> None:
        self._it: Iterator[ChainEvent] = iter(events)
        self._buffer: list[ChainEvent] = []

    def __iter__(self) -> _Lookahead:
        return self

    def __next__(self) -> ChainEvent:
        if self._buffer:
            return self._buffer.pop(0)
        return next(self._it)

    def peek(self, n: int) -> ChainEvent | None:
        while len(self._buffer) < n:
            try:
                self._buffer.append(next(self._it))
            except StopIteration:
                return None
        return self._buffer[n - 1]


def _diagnose(
    event: ChainEvent,
    expected: int,
    running: str,
    previous: ChainEvent | None,
    after: ChainEvent | None,
) -> Problem:
    s = event.seq
    if s > expected:
        missing = f"{expected}" if s == expected + 1 else f"{expected}..{s - 1}"
        return Problem("deleted", expected, f"event(s) {missing} are missing (deleted)")
    if s < expected:
        return Problem("reordered", s, f"event {s} appears after event {expected - 1}")
    if not _intact(event):
        if _as_written(event, s + 1):
            if after is not None and _as_written(after, after.seq - 1):
                return Problem(
                    "reordered", s, f"events {s} and {s + 1} traded places (both hash as the other)"
                )
            return Problem(
                "deleted",
                s,
                f"event {s} was deleted: the event now stored as {s} was written as {s + 1} "
                "(later events renumbered)",
            )
        if after is not None and after.prev_hash == running and _as_written(after, after.seq - 1):
            return Problem(
                "inserted",
                s,
                f"event {s} was inserted: the event after it was written as {s} "
                f"and links to event {s - 1}",
            )
        if _as_written(event, s - 1):
            return Problem(
                "inserted",
                s - 1,
                f"an event was inserted before seq {s}: the event stored as {s} "
                f"was written as {s - 1}",
            )
        return Problem("altered", s, f"event {s} does not match its hash (its content was edited)")
    # The event is intact but does not link to its predecessor: the predecessor
    # was rewritten with a recomputed hash, or this event was forged onto it.
    if previous is not None:
        return Problem(
            "altered",
            previous.seq,
            f"event {previous.seq} was rewritten (its hash recomputed): "
            f"event {s} does not link to it",
        )
    return Problem(
        "altered",
        s,
        f"event {s} does not link to the start of the trail (prev_hash {event.prev_hash[:12]}...)",
    )


def verify_chain(
    events: Iterable[ChainEvent],
    checkpoints: Sequence[Checkpoint],
    trusted: TrustedKeys,
    *,
    anchor: Anchor | None = None,
    anchor_must_be_signed: bool = True,
    allow_unsigned: int = 0,
    expect: Checkpoint | None = None,
) -> Verification:
    """Check ``events`` (in ``seq`` order) against themselves and the checkpoints.

    ``anchor``: the trail starts after archived events (``anchor_must_be_signed``:
    a signed checkpoint at the anchor and an ``audit.archived`` event must
    prove it; off for an archive file, whose start is proven by the archive
    before it). ``allow_unsigned``: how many events may follow the last
    signed checkpoint. ``expect``: a checkpoint kept outside the store; the
    trail must still contain what it signed.
    """
    result = Verification()
    start = anchor or Anchor(0, GENESIS)
    cps = sorted(checkpoints, key=lambda c: c.seq)
    i = 0
    last_good_cp = start.seq
    archived_recorded = False

    def fail(problem: Problem) -> Verification:
        result.ok = False
        result.problem = problem
        return result

    if anchor is not None and anchor_must_be_signed:
        at_anchor = [c for c in cps if c.seq == anchor.seq]
        if not at_anchor or at_anchor[0].hash != anchor.hash or not at_anchor[0].signed_by(trusted):
            return fail(
                Problem(
                    "anchor",
                    anchor.seq + 1,
                    f"the trail starts after seq {anchor.seq} (archived), but no valid signed "
                    "checkpoint proves that start",
                )
            )
        result.signed_through = anchor.seq
        result.checkpoints += 1
    while i < len(cps) and cps[i].seq <= start.seq:
        i += 1

    expected = start.seq + 1
    running = start.hash
    previous: ChainEvent | None = None
    stream = _Lookahead(events)
    for event in stream:
        if event.seq != expected or event.prev_hash != running or not _intact(event):
            return fail(_diagnose(event, expected, running, previous, stream.peek(1)))
        if result.first_seq is None:
            result.first_seq = event.seq
        result.events += 1
        while i < len(cps) and cps[i].seq == event.seq:
            cp = cps[i]
            i += 1
            if cp.key_id not in trusted:
                return fail(
                    Problem(
                        "unknown_key",
                        last_good_cp + 1,
                        f"the checkpoint at seq {cp.seq} is signed by key {cp.key_id}, "
                        "which is not trusted",
                    )
                )
            if not cp.signed_by(trusted):
                return fail(
                    Problem(
                        "bad_signature",
                        last_good_cp + 1,
                        f"the checkpoint at seq {cp.seq} has an invalid signature (forged or "
                        f"altered); events {last_good_cp + 1}..{cp.seq} are unproven",
                    )
                )
            if cp.hash != event.hash:
                return fail(
                    Problem(
                        "rewritten",
                        last_good_cp + 1,
                        f"events {last_good_cp + 1}..{cp.seq} were rewritten: the chain no longer "
                        f"matches the checkpoint signed at seq {cp.seq}",
                    )
                )
            result.checkpoints += 1
            result.signed_through = cp.seq
            last_good_cp = cp.seq
        if (
            anchor is not None
            and event.type == ARCHIVED_EVENT
            and event.payload_data().get("through_seq") == anchor.seq
            and event.payload_data().get("hash") == anchor.hash
        ):
            archived_recorded = True
        running = event.hash
        expected = event.seq + 1
        previous = event
    result.last_seq = expected - 1
    result.head_hash = running

    if i < len(cps):
        cp = cps[i]
        if cp.signed_by(trusted):
            return fail(
                Problem(
                    "truncated",
                    result.last_seq + 1,
                    f"the trail ends at seq {result.last_seq} but a signed checkpoint covers seq "
                    f"{cp.seq}: events {result.last_seq + 1}..{cp.seq} were deleted",
                )
            )
        return fail(
            Problem(
                "bad_signature",
                result.last_seq + 1,
                f"a checkpoint at seq {cp.seq}, past the end of the trail, has an invalid "
                "signature",
            )
        )
    if expect is not None:
        if not expect.signed_by(trusted):
            return fail(
                Problem(
                    "bad_signature", expect.seq, "the expected checkpoint's signature is invalid"
                )
            )
        if expect.seq > result.last_seq:
            return fail(
                Problem(
                    "truncated",
                    result.last_seq + 1,
                    f"the trail ends at seq {result.last_seq} but the expected checkpoint "
                    f"covers seq {expect.seq}: events {result.last_seq + 1}..{expect.seq} "
                    "were deleted",
                )
            )
        if expect.seq > start.seq and expect.seq not in {c.seq for c in cps}:
            result.warnings.append(
                f"the expected checkpoint at seq {expect.seq} is not stored (it was removed)"
            )
    if anchor is not None and anchor_must_be_signed and not archived_recorded:
        return fail(
            Problem(
                "anchor",
                start.seq + 1,
                f"the trail starts after seq {anchor.seq}, but no audit.archived event records "
                "that archive",
            )
        )
    if result.unsigned > allow_unsigned:
        first = result.signed_through + 1
        return fail(
            Problem(
                "unsigned",
                first,
                f"events {first}..{result.last_seq} ({result.unsigned}) follow the last signed "
                "checkpoint: chained, but nothing proves they were not rewritten or added",
            )
        )
    if result.unsigned:
        result.warnings.append(
            f"{result.unsigned} newest event(s) after the last signed checkpoint (allowed)"
        )
    return result
