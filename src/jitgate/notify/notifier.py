"""The notifier: approval events to webhooks and Slack, in the background.

:meth:`Notifier.attach` subscribes :meth:`Notifier.hook` to the service's
``on_change`` hooks. The service calls it on the event loop right after a
commit, with the topic ``"events"`` and the events the change wrote; the
hook only picks the sinks that want each event and appends a delivery to
their queues (no I/O, no waiting, no exception escapes it). Each sink has its
own bounded queue and its own worker task, so a slow or dead sink delays only
its own messages; within a sink deliveries go out in order.

Queue: ``queue_size`` deliveries per sink; when full the *oldest* waiting one
is dropped (counted ``dropped``): the newest state of the world matters most.

Delivery: one ``httpx.AsyncClient`` (timeouts from the config, no redirects
followed). An attempt that fails with a network error, a timeout, ``408``,
``429`` or a ``5xx`` is retried up to ``max_attempts`` attempts in all, after
``Retry-After`` when the answer has one (seconds or an HTTP date, capped at
``retry_after_max``), else after an exponential backoff with jitter
(``backoff_base * 2**(n-1)`` capped at ``backoff_max``, of which a random half).
Another ``4xx`` fails at once. Webhooks are re-signed on each attempt
(fresh timestamp, same delivery id).

Counters (:attr:`Notifier.counts`, keyed ``(sink name, sink type, result)``):
``delivered``, ``failed`` (gave up: attempts exhausted or refused),
``dropped`` (queue overflow), ``abandoned`` (still queued when shutdown gave
up waiting, or submitted after it); :attr:`Notifier.retries` counts retried
attempts per ``(sink name, sink type)``. :mod:`jitgate.notify.metrics`
exports them to Prometheus.

Secrets (webhook secrets, every sink URL: a Slack URL is a credential) are
never logged: log lines name the sink by its ``name`` (or ``webhook-1`` ...),
and while the notifier runs a filter on the ``httpx`` logger (which logs each
request's URL at INFO) replaces the sinks' URLs and paths with ``<redacted>``.

Lifecycle: :meth:`start` once the event loop runs; :meth:`stop` on shutdown
lets the workers drain their queues for up to ``drain_timeout`` seconds,
then cancels them. Neither raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx

from jitgate import __version__
from jitgate.notify.config import (
    NotifyConfig,
    SlackSink,
    WebhookSink,
    resolve_secret,
    resolve_url,
    sink_name,
)
from jitgate.notify.slack import slack_message
from jitgate.notify.webhook import json_bytes, signed_headers, webhook_body

log = logging.getLogger("jitgate.notify")

RESULTS: Final = ("delivered", "failed", "dropped", "abandoned")
USER_AGENT: Final = f"jitgate/{__version__}"
_RETRY_STATUSES: Final = frozenset({408, 429})


class _RedactFilter(logging.Filter):
    """Replaces the given secrets in the records of a logger it is attached to."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        # Longest first, so a URL goes before its own path.
        self.secrets = sorted((s for s in secrets if s), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "<redacted>")
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _url_secrets(url: str) -> set[str]:
    """The spellings of ``url`` a log line could contain: as given, as httpx
    renders it, and its path and query (where webhook tokens live)."""
    out = {url}
    try:
        parsed = httpx.URL(url)
    except Exception:
        return out
    out.add(str(parsed))
    target = parsed.raw_path.decode("ascii", "replace")
    if len(target) > 1:
        out.add(target)
    return out


@dataclass(frozen=True, slots=True)
class _Item:
    event: Mapping[str, Any]
    request: Mapping[str, Any]
    delivery: str


@dataclass(eq=False)
class _Sink:
    name: str
    config: WebhookSink | SlackSink
    url: str
    secret: bytes
    queue: deque[_Item] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    busy: bool = False

    @property
    def type(self) -> str:
        return self.config.type


class Notifier:
    def __init__(
        self,
        config: NotifyConfig,
        *,
        environ: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        drain_timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        """``environ`` resolves ``url_env`` / ``secret_env`` (default: the process
        environment, read now); ``client`` an HTTP client to use instead of
        one of the notifier's own (the caller then closes it)."""
        env = os.environ if environ is None else environ
        self.config = config
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.drain_timeout = drain_timeout
        self._rng = rng or random.Random()
        self._client = client
        self._own_client = client is None
        self.sinks: list[_Sink] = [
            _Sink(
                name=sink_name(sink, index),
                config=sink,
                url=resolve_url(sink, env),
                secret=resolve_secret(sink, env) if isinstance(sink, WebhookSink) else b"",
            )
            for index, sink in enumerate(config.sinks)
        ]
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.retries: Counter[tuple[str, str]] = Counter()
        self._started = False
        self._closing = False
        self._stopped = False
        secrets: set[str] = set()
        for sink in self.sinks:
            secrets |= _url_secrets(sink.url)
            if sink.secret:
                secrets.add(sink.secret.decode("utf-8", "replace"))
        self._redact_filter = _RedactFilter(secrets)

    # --- subscription -----------------------------------------------------------------

    def attach(self, service: Any) -> None:
        """Subscribe to ``service.on_change`` (an :class:`ApprovalService`)."""
        service.on_change.append(self.hook)

    def hook(self, topic: str, data: Mapping[str, Any]) -> None:
        """The ``on_change`` hook: enqueue deliveries for the ``events`` topic. Never
        raises, never blocks."""
        if topic != "events":
            return
        try:
            self._enqueue_events(data)
        except Exception:
            log.exception("notify: cannot queue the events of a change")

    def _enqueue_events(self, data: Mapping[str, Any]) -> None:
        events = [e for e in data.get("events") or () if isinstance(e, Mapping)]
        request: Mapping[str, Any] = data.get("request") or {}
        types = {str(e.get("type")) for e in events}
        for sink in self.sinks:
            for event in events:
                kind = str(event.get("type"))
                if not sink.config.wants(kind) or self._merged(sink, event, kind, types):
                    continue
                self._put(sink, _Item(event, request, str(uuid.uuid4())))

    @staticmethod
    def _merged(sink: _Sink, event: Mapping[str, Any], kind: str, types: set[str]) -> bool:
        """Slack: skip what another message of the same change already says."""
        if not isinstance(sink.config, SlackSink):
            return False
        if kind == "request.created":
            # The stage.started message of the new request names the approvers.
            return "stage.started" in types and sink.config.wants("stage.started")
        if kind == "execution.finished" and not sink.config.lists(kind):
            payload = event.get("payload") or {}
            return bool(payload.get("succeeded"))  # failures only, unless listed
        return False

    def _put(self, sink: _Sink, item: _Item) -> None:
        if self._stopped:
            self.counts[sink.name, sink.type, "abandoned"] += 1
            return
        if len(sink.queue) >= self.config.queue_size:
            sink.queue.popleft()
            self.counts[sink.name, sink.type, "dropped"] += 1
            log.warning("notify: queue of sink %s full, dropped its oldest message", sink.name)
        sink.queue.append(item)
        sink.wake.set()

    @property
    def pending(self) -> int:
        """Deliveries queued or in progress, over all sinks."""
        return sum(len(s.queue) + s.busy for s in self.sinks)

    async def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is queued or in progress; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started, self._closing, self._stopped = True, False, False
        logging.getLogger("httpx").addFilter(self._redact_filter)
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.timeout, connect=min(5.0, self.config.timeout)),
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )
            self._own_client = True
        for sink in self.sinks:
            sink.wake = asyncio.Event()
            if sink.queue:
                sink.wake.set()
            sink.task = asyncio.create_task(self._run(sink), name=f"jitgate-notify-{sink.name}")

    async def stop(self, timeout: float | None = None) -> None:
        """Drain the queues for up to ``timeout`` seconds (default ``drain_timeout``),
        then cancel what is left and close the client."""
        limit = self.drain_timeout if timeout is None else timeout
        self._closing = True
        for sink in self.sinks:
            sink.wake.set()
        tasks = [s.task for s in self.sinks if s.task is not None]
        try:
            if tasks:
                _, late = await asyncio.wait(tasks, timeout=max(0.0, limit))
                if late:
                    log.warning(
                        "notify: %d sink(s) did not drain within %.1f s; abandoning their messages",
                        len(late),
                        limit,
                    )
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        finally:
            self._stopped = True
            for sink in self.sinks:
                sink.task = None
                left = len(sink.queue) + sink.busy
                if left:
                    self.counts[sink.name, sink.type, "abandoned"] += left
                sink.queue.clear()
                sink.busy = False
            client, self._client = self._client, None
            if client is not None and self._own_client:
                with contextlib.suppress(Exception):
                    await client.aclose()
            logging.getLogger("httpx").removeFilter(self._redact_filter)
            self._started = False

    # --- delivery ---------------------------------------------------------------------

    async def _run(self, sink: _Sink) -> None:
        while True:
            while not sink.queue:
                if self._closing:
                    return
                sink.wake.clear()
                await sink.wake.wait()
            item = sink.queue.popleft()
            sink.busy = True
            try:
                await self._deliver(sink, item)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counts[sink.name, sink.type, "failed"] += 1
                log.exception("notify: delivery to sink %s failed unexpectedly", sink.name)
            sink.busy = False

    def _render(self, sink: _Sink, item: _Item) -> bytes:
        if isinstance(sink.config, SlackSink):
            message = slack_message(item.event, item.request, base_url=sink.config.base_url)
            return json_bytes(message)
        return webhook_body(item.event, item.request)

    async def _deliver(self, sink: _Sink, item: _Item) -> None:
        kind = str(item.event.get("type"))
        body = self._render(sink, item)
        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            if isinstance(sink.config, WebhookSink):
                headers = signed_headers(sink.secret, kind, item.delivery, body)
            else:
                headers = {"Content-Type": "application/json"}
            retry_after: float | None = None
            client = self._client
            if client is None:  # stopped meanwhile
                self.counts[sink.name, sink.type, "abandoned"] += 1
                return
            status = 0
            try:
                async with client.stream("POST", sink.url, content=body, headers=headers) as answer:
                    status = answer.status_code
                    retry_after = self._retry_after(answer.headers.get("Retry-After"))
            except httpx.HTTPError as exc:
                reason = self._redact(sink, f"{type(exc).__name__}: {exc}")
                retryable = True
            else:
                if 200 <= status < 300:
                    self.counts[sink.name, sink.type, "delivered"] += 1
                    log.debug("notify: %s %s delivered to %s", kind, item.delivery, sink.name)
                    return
                reason = f"HTTP {status}"
                retryable = status >= 500 or status in _RETRY_STATUSES
            if not retryable or attempt >= attempts:
                self.counts[sink.name, sink.type, "failed"] += 1
                log.warning(
                    "notify: giving up on %s of request %s to sink %s after %d attempt(s): %s",
                    kind,
                    item.request.get("id"),
                    sink.name,
                    attempt,
                    reason,
                )
                return
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            self.retries[sink.name, sink.type] += 1
            log.info(
                "notify: sink %s: %s; retrying %s in %.2f s (attempt %d of %d)",
                sink.name,
                reason,
                kind,
                delay,
                attempt + 1,
                attempts,
            )
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    def _retry_after(self, value: str | None) -> float | None:
        if not value:
            return None
        value = value.strip()
        seconds: float
        if value.isdigit():
            seconds = float(value)
        else:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        return min(max(seconds, 0.0), self.retry_after_max)

    def _redact(self, sink: _Sink, text: str) -> str:
        for secret in self._redact_filter.secrets:
            text = text.replace(secret, "<redacted>")
        return text


__all__ = ["RESULTS", "Notifier"]
