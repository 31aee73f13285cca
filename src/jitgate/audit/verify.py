"""Verify a trail: recompute the chain, check every checkpoint, name the first problem.

:func:`verify_chain` reads the events once, in ``seq`` order, holding two
events of look-ahead (to tell an insertion from a deletion from a swap) and
nothing else, so a million events need no more memory than ten.
:func:`verify_rows` is the same verification over stored rows: it checks
each row in a tight loop and hands only what does not check out (and the
events at checkpoints) to the steps of :func:`verify_chain`, so both accept
and name problems alike; the store verifies a million events in seconds.

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

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from jitgate.audit.chain import GENESIS, ChainEvent, matches, raw_hash
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


class _Walk:
    """One verification's state: what :func:`verify_chain` checks event by event.

    :func:`verify_chain` and :func:`verify_rows` drive the same walk, so they
    accept, diagnose and report alike.
    """

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        trusted: TrustedKeys,
        anchor: Anchor | None,
        anchor_must_be_signed: bool,
    ) -> None:
        self.result = Verification()
        self.trusted = trusted
        self.anchor = anchor
        self.anchor_must_be_signed = anchor_must_be_signed
        self.start = anchor or Anchor(0, GENESIS)
        self.cps = sorted(checkpoints, key=lambda c: c.seq)
        self.i = 0
        self.last_good_cp = self.start.seq
        self.archived_recorded = False
        self.expected = self.start.seq + 1
        self.running = self.start.hash

    def fail(self, problem: Problem) -> Verification:
        self.result.ok = False
        self.result.problem = problem
        return self.result

    def begin(self) -> Problem | None:
        """Check the anchor (before any event); skip checkpoints it covers."""
        anchor, cps, trusted = self.anchor, self.cps, self.trusted
        if anchor is not None and self.anchor_must_be_signed:
            at_anchor = [c for c in cps if c.seq == anchor.seq]
            if (
                not at_anchor
                or at_anchor[0].hash != anchor.hash
                or not at_anchor[0].signed_by(trusted)
            ):
                return Problem(
                    "anchor",
                    anchor.seq + 1,
                    f"the trail starts after seq {anchor.seq} (archived), but no valid signed "
                    "checkpoint proves that start",
                )
            self.result.signed_through = anchor.seq
            self.result.checkpoints += 1
        while self.i < len(cps) and cps[self.i].seq <= self.start.seq:
            self.i += 1
        return None

    def links(self, event: ChainEvent) -> bool:
        """Whether ``event`` is the next event, links to the last one and is intact."""
        return event.seq == self.expected and event.prev_hash == self.running and _intact(event)

    def diagnose(
        self, event: ChainEvent, previous: ChainEvent | None, after: ChainEvent | None
    ) -> Problem:
        """What is wrong with ``event``, which does not :meth:`links`."""
        return _diagnose(event, self.expected, self.running, previous, after)

    def accept(self, event: ChainEvent) -> Problem | None:
        """Take ``event`` (it :meth:`links`): check the checkpoints at its seq,
        note an archive record, move on."""
        result, cps, trusted = self.result, self.cps, self.trusted
        if result.first_seq is None:
            result.first_seq = event.seq
        result.events += 1
        while self.i < len(cps) and cps[self.i].seq == event.seq:
            cp = cps[self.i]
            self.i += 1
            first = self.last_good_cp + 1
            if cp.key_id not in trusted:
                return Problem(
                    "unknown_key",
                    first,
                    f"the checkpoint at seq {cp.seq} is signed by key {cp.key_id}, "
                    "which is not trusted",
                )
            if not cp.signed_by(trusted):
                return Problem(
                    "bad_signature",
                    first,
                    f"the checkpoint at seq {cp.seq} has an invalid signature (forged or "
                    f"altered); events {first}..{cp.seq} are unproven",
                )
            if cp.hash != event.hash:
                return Problem(
                    "rewritten",
                    first,
                    f"events {first}..{cp.seq} were rewritten: the chain no longer "
                    f"matches the checkpoint signed at seq {cp.seq}",
                )
            result.checkpoints += 1
            result.signed_through = cp.seq
            self.last_good_cp = cp.seq
        anchor = self.anchor
        if (
            anchor is not None
            and event.type == ARCHIVED_EVENT
            and event.payload_data().get("through_seq") == anchor.seq
            and event.payload_data().get("hash") == anchor.hash
        ):
            self.archived_recorded = True
        self.running = event.hash
        self.expected = event.seq + 1
        return None

    def next_checkpoint(self) -> int:
        """The seq of the next checkpoint to check (-1: none left)."""
        return self.cps[self.i].seq if self.i < len(self.cps) else -1

    def skip(self, events: int, expected: int, running: str) -> None:
        """Count ``events`` checked elsewhere (:func:`verify_rows`), none of them
        at a checkpoint or an archive record: the next event is ``expected``
        and links to ``running``."""
        if events:
            if self.result.first_seq is None:
                self.result.first_seq = self.expected
            self.result.events += events
            self.expected = expected
            self.running = running

    def finish(self, allow_unsigned: int, expect: Checkpoint | None) -> Verification:
        """The checks after the last event: truncation, the expected checkpoint,
        the archive record, the unsigned tail."""
        result, cps, trusted, anchor = self.result, self.cps, self.trusted, self.anchor
        result.last_seq = self.expected - 1
        result.head_hash = self.running

        if self.i < len(cps):
            cp = cps[self.i]
            if cp.signed_by(trusted):
                return self.fail(
                    Problem(
                        "truncated",
                        result.last_seq + 1,
                        f"the trail ends at seq {result.last_seq} but a signed checkpoint "
                        f"covers seq {cp.seq}: events {result.last_seq + 1}..{cp.seq} "
                        "were deleted",
                    )
                )
            return self.fail(
                Problem(
                    "bad_signature",
                    result.last_seq + 1,
                    f"a checkpoint at seq {cp.seq}, past the end of the trail, has an invalid "
                    "signature",
                )
            )
        if expect is not None:
            if not expect.signed_by(trusted):
                return self.fail(
                    Problem(
                        "bad_signature",
                        expect.seq,
                        "the expected checkpoint's signature is invalid",
                    )
                )
            if expect.seq > result.last_seq:
                return self.fail(
                    Problem(
                        "truncated",
                        result.last_seq + 1,
                        f"the trail ends at seq {result.last_seq} but the expected checkpoint "
                        f"covers seq {expect.seq}: events {result.last_seq + 1}..{expect.seq} "
                        "were deleted",
                    )
                )
            if expect.seq > self.start.seq and expect.seq not in {c.seq for c in cps}:
                result.warnings.append(
                    f"the expected checkpoint at seq {expect.seq} is not stored (it was removed)"
                )
        if anchor is not None and self.anchor_must_be_signed and not self.archived_recorded:
            return self.fail(
                Problem(
                    "anchor",
                    self.start.seq + 1,
                    f"the trail starts after seq {anchor.seq}, but no audit.archived event "
                    "records that archive",
                )
            )
        if result.unsigned > allow_unsigned:
            first = result.signed_through + 1
            return self.fail(
                Problem(
                    "unsigned",
                    first,
                    f"events {first}..{result.last_seq} ({result.unsigned}) follow the last "
                    "signed checkpoint: chained, but nothing proves they were not rewritten "
                    "or added",
                )
            )
        if result.unsigned:
            result.warnings.append(
                f"{result.unsigned} newest event(s) after the last signed checkpoint (allowed)"
            )
        return result


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
    walk = _Walk(checkpoints, trusted, anchor, anchor_must_be_signed)
    problem = walk.begin()
    if problem is not None:
        return walk.fail(problem)
    previous: ChainEvent | None = None
    stream = _Lookahead(events)
    for event in stream:
        if not walk.links(event):
            return walk.fail(walk.diagnose(event, previous, stream.peek(1)))
        problem = walk.accept(event)
        if problem is not None:
            return walk.fail(problem)
        previous = event
    return walk.finish(allow_unsigned, expect)


#: A stored event as :func:`verify_rows` reads it: ``(seq, id, at, type, actor,
#: request_id, target, environment, payload_text, prev_hash, hash)``.
Row = tuple[Any, ...]


def verify_rows(
    pages: Iterable[Sequence[Row]],
    to_event: Callable[[Row], ChainEvent],
    checkpoints: Sequence[Checkpoint],
    trusted: TrustedKeys,
    *,
    anchor: Anchor | None = None,
    anchor_must_be_signed: bool = True,
    allow_unsigned: int = 0,
    expect: Checkpoint | None = None,
    time: Callable[[Any], str | None] | None = None,
) -> Verification:
    """:func:`verify_chain` over stored rows, without making an event of each.

    ``pages`` yields the rows in ``seq`` order; ``to_event`` turns a row into
    the event :func:`verify_chain` would check. The result is exactly
    ``verify_chain(map(to_event, rows), ...)``: a row whose seq, link and
    :func:`~jitgate.audit.chain.raw_hash` check out, and which is neither at a
    checkpoint nor an ``audit.archived`` record, is accepted on the spot,
    which is what :meth:`ChainEvent.intact` would do first with the same
    fields; every other row (a checkpoint's, a payload stored in another
    form, anything wrong) goes through ``to_event`` and the very steps of
    :func:`verify_chain`, which diagnose it.

    ``time`` turns the stored ``at`` into the chain's text (None: it is that
    text already); where it gives a string, ``to_event`` must give the same,
    and the row's other fields unchanged (the fast check only ever accepts
    such rows). ``to_event`` may normalise anything else.
    """
    walk = _Walk(checkpoints, trusted, anchor, anchor_must_be_signed)
    problem = walk.begin()
    if problem is not None:
        return walk.fail(problem)
    digest = raw_hash
    archived = ARCHIVED_EVENT
    expected = walk.expected
    running = walk.running
    stop = walk.next_checkpoint()
    count = 0
    last: Row | None = None
    rows = chain.from_iterable(pages)
    for row in rows:
        seq, id_, at, type_, actor, request_id, target, environment, text, prev, hash_ = row
        if seq == expected and prev == running and seq != stop and type_ != archived:
            if time is not None:
                at = time(at)
            try:
                fast = (
                    digest(seq, id_, at, type_, actor, request_id, target, environment, text, prev)
                    == hash_
                )
            except TypeError:  # a field that is not text: the exact path says what it is
                fast = False
            if fast:
                expected = seq + 1
                running = hash_
                count += 1
                last = row
                continue
        walk.skip(count, expected, running)
        count = 0
        event = to_event(row)
        if not walk.links(event):
            after = next(rows, None)
            return walk.fail(
                walk.diagnose(
                    event,
                    None if last is None else to_event(last),
                    None if after is None else to_event(after),
                )
            )
        problem = walk.accept(event)
        if problem is not None:
            return walk.fail(problem)
        expected = walk.expected
        running = walk.running
        stop = walk.next_checkpoint()
        last = row
    walk.skip(count, expected, running)
    return walk.finish(allow_unsigned, expect)
