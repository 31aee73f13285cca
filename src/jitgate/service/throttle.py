"""Failed authentications: coalesced audit records and a per-address lockout.

Recording every failed token as its own ``auth.failed`` event would let
anyone with network access fill the disk (and hold the audit trail's lock)
with a flood of bad tokens. :class:`AuthThrottle` keeps, per client address
(bounded LRU of ``max_clients``), what has not been written yet:

* the first failure of an address is reported at once (one event);
* later ones are counted, and reported in ONE event at most every
  ``interval``: ``count`` failures, the attempts refused unchecked
  (``throttled``), the first 8 characters of the tokens tried
  (``token_prefixes``; nothing for a token of 8 characters or fewer, so a
  whole token is never written), the first and last failure times. A report
  is written with the next failure that finds the interval passed, by the
  service's periodic flush (its ticker) and by its ``stop()``: counts are
  never dropped silently. An address evicted from the LRU hands its unwritten
  counts to an overflow record (``client`` null, ``evicted_clients`` n);
* an address with ``max_failures`` failures within the last ``window``
  is refused (:class:`TooManyFailures`, HTTP 429 ``too_many_failures`` with
  ``Retry-After``) before its token is even looked at: no database access at
  all, valid tokens included, until the oldest of those failures leaves the
  window. Below the limit a valid token from the address is accepted (and
  successes neither reset nor add to the count: interleaving a known good
  token does not buy an attacker more guesses).

Pure bookkeeping: no I/O and no clock of its own (the service passes its
clock's ``now``), so it is deterministic under a fake clock. Not thread-safe;
it lives on the service's event loop. Attempts already past :meth:`check` and
waiting on the database when the limit is reached still complete, so a
burst of concurrent requests may overshoot the limit by its concurrency.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from jitgate.service.errors import ServiceError

#: How many leading characters of a bad token a report keeps.
PREFIX_LENGTH: Final = 8
#: The key of failures whose client address is unknown.
UNKNOWN_CLIENT: Final = "unknown"


class TooManyFailures(ServiceError):
    """Refused before authentication: the address failed too often (HTTP 429)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too_many_failures",
            f"too many failed authentications from this address; retry in {retry_after} s",
            429,
        )
        #: Whole seconds until an attempt can be checked again (``Retry-After``).
        self.retry_after = retry_after


def token_prefix(token: str) -> str | None:
    """The first :data:`PREFIX_LENGTH` characters of ``token``; None if it is not longer."""
    if not isinstance(token, str) or len(token) <= PREFIX_LENGTH:
        return None
    return token[:PREFIX_LENGTH]


@dataclass(frozen=True, slots=True)
class FailureReport:
    """One ``auth.failed`` event: the failures of one address since the last one."""

    #: The client address; None for the overflow of evicted addresses.
    client: str | None
    count: int
    throttled: int
    token_prefixes: tuple[str, ...]
    prefixes_truncated: bool
    first_at: datetime | None
    last_at: datetime | None
    evicted_clients: int = 0

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reason": "invalid_token",
            "client": self.client,
            "count": self.count,
            "throttled": self.throttled,
            "token_prefixes": list(self.token_prefixes),
            "first_at": None if self.first_at is None else self.first_at.isoformat(),
            "last_at": None if self.last_at is None else self.last_at.isoformat(),
        }
        if self.prefixes_truncated:
            data["prefixes_truncated"] = True
        if self.client is None:
            data["evicted_clients"] = self.evicted_clients
        return data


@dataclass(slots=True)
class _State:
    """One address: recent failure times, and what is not reported yet."""

    recent: deque[datetime]
    last_report: datetime | None = None
    count: int = 0
    throttled: int = 0
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    first_at: datetime | None = None
    last_at: datetime | None = None
    evicted: int = 0

    @property
    def pending(self) -> bool:
        return self.count > 0 or self.throttled > 0

    def add_prefix(self, prefix: str | None, limit: int) -> None:
        if prefix is None or prefix in self.prefixes:
            return
        if len(self.prefixes) < limit:
            self.prefixes.append(prefix)
        else:
            self.truncated = True

    def merge(self, other: _State | FailureReport, limit: int) -> None:
        """Add ``other``'s unreported counts to this one."""
        if isinstance(other, FailureReport):
            prefixes: Iterable[str] = other.token_prefixes
            truncated, evicted = other.prefixes_truncated, other.evicted_clients
        else:
            prefixes, truncated, evicted = other.prefixes, other.truncated, other.evicted
        self.count += other.count
        self.throttled += other.throttled
        self.evicted += evicted
        for prefix in prefixes:
            self.add_prefix(prefix, limit)
        self.truncated = self.truncated or truncated
        self.first_at = _earliest(self.first_at, other.first_at)
        self.last_at = _latest(self.last_at, other.last_at)

    def take(self, client: str | None, now: datetime) -> FailureReport:
        report = FailureReport(
            client=client,
            count=self.count,
            throttled=self.throttled,
            token_prefixes=tuple(self.prefixes),
            prefixes_truncated=self.truncated,
            first_at=self.first_at,
            last_at=self.last_at,
            evicted_clients=self.evicted,
        )
        self.count = self.throttled = self.evicted = 0
        self.prefixes = []
        self.truncated = False
        self.first_at = self.last_at = None
        self.last_report = now
        return report


class AuthThrottle:
    """Per-address accounting of failed authentications (see the module docstring)."""

    def __init__(
        self,
        *,
        interval: timedelta = timedelta(seconds=60),
        window: timedelta = timedelta(seconds=60),
        max_failures: int = 20,
        max_clients: int = 10_000,
        max_prefixes: int = 16,
    ) -> None:
        if interval <= timedelta(0) or window <= timedelta(0):
            raise ValueError("interval and window must be positive")
        if max_failures < 1 or max_clients < 1 or max_prefixes < 0:
            raise ValueError("max_failures and max_clients must be at least 1")
        self.interval = interval
        self.window = window
        self.max_failures = max_failures
        self.max_clients = max_clients
        self.max_prefixes = max_prefixes
        self._clients: OrderedDict[str, _State] = OrderedDict()
        #: Unreported counts of addresses evicted from ``_clients``.
        self._overflow = _State(deque())
        #: ``(due, n, client)`` of addresses with unreported counts (None: the
        #: overflow); stale entries (reported or evicted since) are skipped.
        self._due: list[tuple[datetime, int, str | None]] = []
        self._pushed = 0

    def __len__(self) -> int:
        """How many addresses are tracked."""
        return len(self._clients)

    @property
    def pending(self) -> bool:
        """Whether some counts are not reported yet."""
        return self._overflow.pending or any(s.pending for s in self._clients.values())

    def check(self, client: str | None, now: datetime) -> int | None:
        """Before an attempt: None if it may be checked, else the whole seconds
        to wait (and the refused attempt is counted as ``throttled``)."""
        key = client or UNKNOWN_CLIENT
        state = self._clients.get(key)
        if state is None:
            return None
        self._clients.move_to_end(key)
        recent = state.recent
        while recent and now - recent[0] >= self.window:
            recent.popleft()
        if len(recent) < self.max_failures:
            return None
        if not state.pending:
            self._push(key, state)
        state.throttled += 1
        window = math.ceil(self.window.total_seconds())
        wait = math.ceil((recent[0] + self.window - now).total_seconds())
        return max(1, min(wait, window))

    def failure(self, client: str | None, token: str, now: datetime) -> list[FailureReport]:
        """Count a failed attempt; the reports to write now (this address's when
        it is its first failure or its interval has passed, and any others due)."""
        key = client or UNKNOWN_CLIENT
        state = self._clients.get(key)
        if state is None:
            state = self._clients[key] = _State(deque(maxlen=self.max_failures))
            self._evict()
        else:
            self._clients.move_to_end(key)
        was_pending = state.pending
        state.recent.append(now)
        state.count += 1
        state.add_prefix(token_prefix(token), self.max_prefixes)
        state.first_at = _earliest(state.first_at, now)
        state.last_at = _latest(state.last_at, now)
        reports = []
        if self._is_due(state, now):
            reports.append(state.take(key, now))
        elif not was_pending:
            self._push(key, state)
        reports.extend(self.due(now))
        return reports

    def due(self, now: datetime) -> list[FailureReport]:
        """Take the reports whose interval has passed."""
        reports: list[FailureReport] = []
        while self._due and self._due[0][0] <= now:
            _, _, key = heapq.heappop(self._due)
            state = self._overflow if key is None else self._clients.get(key)
            if state is None or not state.pending:
                continue
            if self._is_due(state, now):
                reports.append(state.take(key, now))
            else:  # reported since this entry was pushed: due later
                self._push(key, state)
        return reports

    def drain(self, now: datetime) -> list[FailureReport]:
        """Take every unreported count (on shutdown)."""
        reports = [state.take(key, now) for key, state in self._clients.items() if state.pending]
        if self._overflow.pending:
            reports.append(self._overflow.take(None, now))
        self._due.clear()
        return reports

    def restore(self, reports: Iterable[FailureReport]) -> None:
        """Put back reports that could not be written: they are reported later."""
        for report in reports:
            key = report.client
            state = None if key is None else self._clients.get(key)
            if state is None:
                key, state = None, self._overflow
                if report.client is not None:
                    state.evicted += 1
            was_pending = state.pending
            state.merge(report, self.max_prefixes)
            if not was_pending and state.pending:
                self._push(key, state)

    # --- internals ------------------------------------------------------------------

    def _is_due(self, state: _State, now: datetime) -> bool:
        last = state.last_report
        return last is None or not timedelta(0) <= now - last < self.interval

    def _push(self, key: str | None, state: _State) -> None:
        last = state.last_report
        due = _EPOCH if last is None else last + self.interval
        self._pushed += 1
        heapq.heappush(self._due, (due, self._pushed, key))

    def _evict(self) -> None:
        while len(self._clients) > self.max_clients:
            _, state = self._clients.popitem(last=False)
            if state.pending:
                if not self._overflow.pending:
                    self._push(None, self._overflow)
                self._overflow.merge(state, self.max_prefixes)
                self._overflow.evicted += 1


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None or a <= b else b


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None or a >= b else b
