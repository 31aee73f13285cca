"""``jitgate proxy postgres --metrics HOST:PORT``: the gateway's Prometheus metrics.

The gateway counts in plain ints as it goes (:class:`PostgresGateway`
``logins``, ``login_failures``, ``decisions``; the recorder's own counters);
:class:`GatewayCollector` reads them, and the live sessions, at scrape time.
:func:`serve_metrics` answers ``GET /metrics`` on the gateway's event loop:
a deliberately small HTTP/1.x responder (one request per connection, a
bounded request head, a read timeout), so a bad request never touches the
gateway.

With ``--workers N`` the supervisor serves the address: per scrape it asks
every worker for its exposition over the worker's Unix socket
``<dir>/m<i>.sock`` (:func:`serve_worker_metrics`), and re-exposes every
sample with a ``worker`` label (:func:`aggregate`). A worker that does not
answer within :data:`WORKER_SCRAPE_TIMEOUT` is left out, and counted.

prometheus_client is imported here only, and only when metrics are asked for.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from jitgate.gateways.postgres.gateway import PostgresGateway

log = logging.getLogger("jitgate.gateway.postgres.metrics")

PREFIX: Final = "jitgate_gateway_"
#: The largest request head read (request line and headers).
MAX_REQUEST: Final = 8192
#: How long a client may take to send its request head.
READ_TIMEOUT: Final = 5.0
#: How long writing the answer may take.
WRITE_TIMEOUT: Final = 10.0
#: How long the supervisor waits for a worker's exposition.
WORKER_SCRAPE_TIMEOUT: Final = 1.0
#: The largest exposition read from a worker.
MAX_EXPOSITION: Final = 16 * 1024 * 1024
#: The decisions a statement is recorded with (always exposed, 0 included).
DECISIONS: Final = ("allow", "require_approval", "deny")


class GatewayCollector:
    """The metrics of one gateway, read from its live state at every scrape."""

    def __init__(self, gateway: PostgresGateway) -> None:
        self.gateway = gateway

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the names are fixed

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        gateway = self.gateway
        name = gateway.config.name
        recorder = gateway.recorder
        sessions = list(gateway.sessions.values())
        held = sum(1 for session in sessions if session.holding)

        def gauge(metric: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(PREFIX + metric, text, labels=["gateway"])
            family.add_metric([name], value)
            return family

        def counter(metric: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(PREFIX + metric, text, labels=["gateway"])
            family.add_metric([name], value)
            return family

        yield gauge("connections", "Client sessions open now.", len(sessions))
        yield counter("connections", "Client logins accepted.", gateway.logins)
        yield counter(
            "login_failures", "Logins refused: a wrong API token.", gateway.login_failures
        )
        yield gauge("held_statements", "Statements waiting for an approval now.", held)
        statements = CounterMetricFamily(
            PREFIX + "statements",
            "Statements finished, by the decision recorded.",
            labels=["gateway", "decision"],
        )
        counts = gateway.decisions
        for decision in (*DECISIONS, *sorted(set(counts) - set(DECISIONS))):
            statements.add_metric([name, decision], counts.get(decision, 0))
        yield statements
        yield counter(
            "audit_records_written", "Statement records written to the audit trail.",
            recorder.written,
        )  # fmt: skip
        yield gauge("audit_records_pending", "Statement records not written yet.", recorder.pending)
        yield counter(
            "audit_write_failures", "Failed attempts to write a batch of records.", recorder.failed
        )
        yield counter(
            "audit_records_rejected", "Statement records the server refused.", recorder.rejected
        )
        yield counter(
            "audit_records_dropped", "Statement records dropped: the backlog was full.",
            recorder.dropped,
        )  # fmt: skip
        yield gauge(
            "audit_accepting", "1 while the recorder accepts statements, 0 when it refuses them.",
            1 if recorder.accepting else 0,
        )  # fmt: skip


def exposition(gateway: PostgresGateway) -> Callable[[], bytes]:
    """A function that renders ``gateway``'s metrics (the text format)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))

    def render() -> bytes:
        return generate_latest(registry)

    return render


# --- the HTTP responder -----------------------------------------------------------------


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def serve_metrics(
    host: str, port: int, render: Callable[[], Awaitable[bytes]]
) -> asyncio.Server:
    """Answer ``GET /metrics`` on ``host:port`` with what ``render`` gives; any
    other request gets a 404, one that is malformed or too slow is dropped."""
    from prometheus_client import CONTENT_TYPE_LATEST

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
                return  # not HTTP: nothing to say
            method, target = parts[0], parts[1].split(b"?", 1)[0]
            if method in (b"GET", b"HEAD") and target == b"/metrics":
                body = await render()
                data = _response("200 OK", body, CONTENT_TYPE_LATEST)
                if method == b"HEAD":
                    data = data[: len(data) - len(body)]
            else:
                data = _response("404 Not Found", b"not found\n", "text/plain; charset=utf-8")
            writer.write(data)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            log.debug("metrics: a bad request: %s", exc)
        except (OSError, TimeoutError) as exc:
            log.debug("metrics: %s", exc)
        except Exception:
            log.exception("metrics: answering failed")
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port, limit=MAX_REQUEST, reuse_address=True)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    log.info("metrics on http://%s:%d/metrics", shown, bound_port)
    return server


# --- workers ---------------------------------------------------------------------------


def worker_socket(directory: str, index: int) -> str:
    """Where worker ``index`` answers with its metrics."""
    return os.path.join(directory, f"m{index}.sock")


async def serve_worker_metrics(path: str, render: Callable[[], bytes]) -> asyncio.AbstractServer:
    """Give every connection to ``path`` the worker's exposition, then close it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(render())
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            log.debug("metrics for the supervisor: %s", exc)
        except Exception:
            log.exception("metrics for the supervisor failed")
        finally:
            writer.close()

    from jitgate.gateways.postgres.workers import private_unix_server

    return await private_unix_server(answer, path)


async def scrape_worker(path: str, timeout: float = WORKER_SCRAPE_TIMEOUT) -> str | None:
    """Worker's exposition at ``path``; None if it does not answer in time."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                data = await reader.read(MAX_EXPOSITION + 1)
                chunks = [data]
                total = len(data)
                while data and total <= MAX_EXPOSITION:
                    data = await reader.read(MAX_EXPOSITION + 1 - total)
                    chunks.append(data)
                    total += len(data)
            finally:
                writer.close()
        if total > MAX_EXPOSITION:
            log.warning("metrics of %s: larger than %d bytes, left out", path, MAX_EXPOSITION)
            return None
        return b"".join(chunks).decode("utf-8")
    except (OSError, TimeoutError, UnicodeDecodeError) as exc:
        log.warning("metrics of %s not read: %s", path, exc)
        return None


class _Families:
    """A collector of families built beforehand (one scrape's)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        return self.families


def aggregate(expositions: dict[int, str | None], failures: int, gateway: str) -> bytes:
    """One exposition of every worker's samples (labelled ``worker``), and the
    supervisor's count of the scrapes of a worker that failed (``failures``)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    merged: dict[tuple[str, str], Metric] = {}
    for index, text in sorted(expositions.items()):
        if text is None:
            continue
        try:
            families = list(text_string_to_metric_families(text))
        except Exception as exc:  # a worker's output is ours: this is a bug
            log.error("metrics of worker %d cannot be parsed: %s", index, exc)
            continue
        for family in families:
            key = (family.name, family.type)
            target = merged.get(key)
            if target is None:
                target = merged[key] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                labels: dict[str, Any] = {**sample.labels, "worker": str(index)}
                target.samples.append(sample._replace(labels=labels))
    scrape_failures = CounterMetricFamily(
        PREFIX + "worker_scrape_failures",
        "Scrapes of a worker's metrics that got no answer in time.",
        labels=["gateway"],
    )
    scrape_failures.add_metric([gateway], failures)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*merged.values(), scrape_failures]))
    return generate_latest(registry)
