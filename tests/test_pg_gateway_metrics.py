"""``jitgate proxy postgres --metrics HOST:PORT``: Prometheus metrics.

The configuration and the small HTTP responder in process; then real
processes: a ``jitgate serve``, a standalone gateway and a two-worker one in
front of a database on the local PostgreSQL, psycopg clients, and scrapes
with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from psycopg import errors as pgerrors
from typer.testing import CliRunner

from jitgate.cli import app
from jitgate.gateways.postgres.config import (
    GatewayConfig,
    GatewayConfigError,
    load_gateway_config,
    parse_gateway_config,
)
from jitgate.gateways.postgres.metrics import aggregate, serve_metrics
from pggateway import WAIT, Lines, conninfo, free_port, spawn
from test_pg_gateway_e2e import JITGATE, proxy_ready, stop
from test_pg_gateway_workers import (
    Server,
    running_gateway,
    server,  # noqa: F401 (a fixture, see jitgate)
    upstream_url,  # noqa: F401 (a fixture server needs)
)

UPSTREAM = "postgresql://u:p@127.0.0.1:5432/app"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[
        (f"jitgate_gateway_{name}", frozenset({"gateway": "postgres", **labels}.items()))
    ]


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return parse(response.text)


def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


# --- the configuration -------------------------------------------------------------------


def config_data(**more: object) -> dict[str, object]:
    return {"targets": [{"name": "app", "environment": "prod", "upstream": UPSTREAM}], **more}


def test_metrics_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f'listen: "127.0.0.1:6432"\nmetrics: "[::1]:9187"\n'
        f"targets:\n  - {{name: app, environment: prod, upstream: {UPSTREAM}}}\n"
    )
    config = load_gateway_config(path, standalone=True)
    assert config.metrics is not None
    assert (config.metrics.host, config.metrics.port) == ("::1", 9187)
    # The command line wins.
    assert str(config.with_options(metrics="127.0.0.1:9999").metrics) == "127.0.0.1:9999"
    assert parse_gateway_config(config_data(), standalone=True).metrics is None


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ("nowhere", "metrics: expected host:port"),
        ("127.0.0.1:99999", "metrics"),
        ("127.0.0.1:6432", "metrics: metrics cannot be served on the listen address"),
    ],
)
def test_bad_metrics_addresses_are_refused(metrics: str, expected: str) -> None:
    with pytest.raises(GatewayConfigError) as caught:
        parse_gateway_config(config_data(metrics=metrics), "inline", standalone=True)
    assert expected in str(caught.value)


def test_metrics_need_a_standalone_gateway() -> None:
    with pytest.raises(GatewayConfigError) as caught:
        parse_gateway_config(config_data(metrics="127.0.0.1:9187"), "inline")
    assert "metrics are served by a standalone gateway" in str(caught.value)


def test_the_command_line_option_is_checked() -> None:
    with pytest.raises(GatewayConfigError) as caught:
        GatewayConfig.single("127.0.0.1:6432", UPSTREAM, "prod", metrics="nope")
    assert str(caught.value).startswith("--metrics: expected host:port")
    config = parse_gateway_config(config_data(), standalone=True)
    with pytest.raises(GatewayConfigError) as caught:
        config.with_options(metrics="127.0.0.1:6432")
    assert "--metrics: metrics cannot be served on the listen address" in str(caught.value)
    result = CliRunner().invoke(
        app,
        [
            "proxy", "postgres", "--upstream", UPSTREAM, "--env", "production",
            "--url", "http://127.0.0.1:9", "--token", "jg_test", "--metrics", "nope",
        ],
        env={"COLUMNS": "300"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--metrics: expected host:port" in result.output


# --- the responder and the workers' aggregation, in process -------------------------------


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_the_responder_answers_get_metrics_only() -> None:
    renders = 0

    async def render() -> bytes:
        nonlocal renders
        renders += 1
        return b"x 1\n"

    responder = await serve_metrics("127.0.0.1", 0, render)
    port = responder.sockets[0].getsockname()[1]
    try:
        ok = await _exchange(port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
        assert ok.endswith(b"\r\n\r\nx 1\n")
        assert b"Content-Length: 4\r\n" in ok
        assert (await _exchange(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _exchange(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 404"
        )
        # Garbage, an endless head, a head never finished: dropped without an answer.
        assert await _exchange(port, b"\x00\xff\xfe garbage\r\n\r\n") == b""
        assert await _exchange(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000) == b""
        assert renders == 1
        _reader, silent = await asyncio.open_connection("127.0.0.1", port)
        silent.write(b"GET /metr")
        # ... while others are served.
        assert (await _exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")).endswith(b"x 1\n")
        silent.close()
    finally:
        responder.close()
        await responder.wait_closed()


def test_aggregate_labels_every_sample_with_its_worker() -> None:
    one = (
        "# TYPE jitgate_gateway_connections gauge\n"
        'jitgate_gateway_connections{gateway="g"} 2.0\n'
        "# TYPE jitgate_gateway_connections_total counter\n"
        'jitgate_gateway_connections_total{gateway="g"} 5.0\n'
    )
    two = one.replace("2.0", "3.0").replace("5.0", "7.0")
    samples = parse(aggregate({0: one, 1: two, 2: None}, 4, "g").decode())
    assert samples == {
        ("jitgate_gateway_connections", frozenset({("gateway", "g"), ("worker", "0")})): 2.0,
        ("jitgate_gateway_connections", frozenset({("gateway", "g"), ("worker", "1")})): 3.0,
        ("jitgate_gateway_connections_total", frozenset({("gateway", "g"), ("worker", "0")})): 5,
        ("jitgate_gateway_connections_total", frozenset({("gateway", "g"), ("worker", "1")})): 7,
        ("jitgate_gateway_worker_scrape_failures_total", frozenset({("gateway", "g")})): 4.0,
    }


# --- a standalone gateway ----------------------------------------------------------------


@pytest.fixture(scope="module")
def jitgate(request: pytest.FixtureRequest) -> Server:
    """The ``jitgate serve`` of test_pg_gateway_workers (its ``server`` fixture)."""
    found: Server = request.getfixturevalue("server")
    return found


def gateway_env(jitgate: Server) -> dict[str, str]:
    return {
        **jitgate.env,
        "JITGATE_UPSTREAM": jitgate.upstream,
        "JITGATE_TOKEN": jitgate.tokens["gw"],
    }


@contextlib.contextmanager
def standalone(jitgate: Server, metrics_port: int) -> Iterator[tuple[int, Lines]]:
    """``jitgate proxy postgres --metrics 127.0.0.1:<metrics_port>``; its port and log."""
    port = free_port()
    process, _, err = spawn(
        [
            *JITGATE, "proxy", "postgres", "--listen", f"127.0.0.1:{port}",
            "--env", "production", "--target", "app", "--url", jitgate.url,
            "--metrics", f"127.0.0.1:{metrics_port}",
        ],
        gateway_env(jitgate),
    )  # fmt: skip
    try:
        proxy_ready(process, port, err)
        yield port, err
    finally:
        assert stop(process) == 0, err.text()


def test_a_standalone_gateway_counts_what_goes_through(jitgate: Server) -> None:
    metrics_port = free_port()
    with standalone(jitgate, metrics_port) as (port, err):
        before = scrape(metrics_port)
        assert value(before, "connections") == 0
        assert value(before, "statements_total", decision="allow") == 0
        assert value(before, "audit_accepting") == 1
        ann = conninfo(port, "ann", jitgate.tokens["ann"])
        with psycopg.connect(ann, autocommit=True) as first, psycopg.connect(ann) as second:
            for n in range(3):
                assert first.execute(f"SELECT {n}").fetchone() == (n,)
            with pytest.raises(pgerrors.Error, match="not dropped in production"):
                first.execute("DROP TABLE nothing_here")
            during = scrape(metrics_port)
            assert value(during, "connections") == 2
            assert value(during, "connections_total") == 2
            assert value(during, "held_statements") == 0
            second.close()
            eventually(lambda: value(scrape(metrics_port), "connections") == 1)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(conninfo(port, "ann", "jg_wrong"))
        eventually(lambda: value(scrape(metrics_port), "connections") == 0)
        eventually(lambda: value(scrape(metrics_port), "audit_records_written_total") == 4)
        after = scrape(metrics_port)
        assert value(after, "statements_total", decision="allow") == 3
        assert value(after, "statements_total", decision="deny") == 1
        assert value(after, "statements_total", decision="require_approval") == 0
        assert value(after, "connections_total") == 2
        assert value(after, "login_failures_total") == 1
        assert value(after, "audit_records_pending") == 0
        for failures in ("audit_write_failures", "audit_records_rejected", "audit_records_dropped"):
            assert value(after, f"{failures}_total") == 0
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/", timeout=5).status_code == 404
        # Garbage on the metrics port: no answer, and the gateway goes on.
        with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as raw:
            raw.sendall(os.urandom(64) + b"\r\n\r\n")
            assert raw.recv(100) == b""
        with psycopg.connect(ann, autocommit=True) as again:
            assert again.execute("SELECT 42").fetchone() == (42,)
        assert value(scrape(metrics_port), "statements_total", decision="allow") == 4
        assert re.search(rf"metrics on http://127\.0\.0\.1:{metrics_port}/metrics", err.text())
    # Stopped with the gateway.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)


def test_without_the_option_nothing_listens_for_metrics(jitgate: Server) -> None:
    metrics_port = free_port()
    port = free_port()
    process, _, err = spawn(
        [
            *JITGATE, "proxy", "postgres", "--listen", f"127.0.0.1:{port}",
            "--env", "production", "--target", "app", "--url", jitgate.url,
        ],
        gateway_env(jitgate),
    )  # fmt: skip
    try:
        proxy_ready(process, port, err)
        assert "metrics on" not in err.text()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    finally:
        assert stop(process) == 0, err.text()


# --- workers -------------------------------------------------------------------------------


def worker_values(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    """Worker index -> the value of ``name`` in that worker's samples."""
    found: dict[str, float] = {}
    for (sample, sample_labels), number in samples.items():
        given = dict(sample_labels)
        worker = given.pop("worker", None)
        wanted = given == {"gateway": "postgres", **labels}
        if sample == f"jitgate_gateway_{name}" and worker is not None and wanted:
            found[worker] = number
    return found


def test_workers_are_scraped_by_the_supervisor(jitgate: Server) -> None:
    metrics_port = free_port()
    with running_gateway(jitgate, "--metrics", f"127.0.0.1:{metrics_port}") as gateway:
        ann = conninfo(gateway.port, "ann", jitgate.tokens["ann"])
        connections: list[psycopg.Connection[tuple[object, ...]]] = []
        try:
            owners: set[int] = set()
            # The kernel picks the worker: connect until both have sessions.
            while owners != {0, 1}:
                assert len(connections) < 60, owners
                conn = psycopg.connect(ann, autocommit=True)
                connections.append(conn)
                owners.add(conn.info.backend_pid % 2)
            for conn in connections:
                conn.execute("SELECT 1")
            samples = scrape(metrics_port)
            opened = worker_values(samples, "connections")
            assert set(opened) == {"0", "1"}
            assert sum(opened.values()) == len(connections)
            allowed = worker_values(samples, "statements_total", decision="allow")
            assert sum(allowed.values()) == len(connections)
            assert value(samples, "worker_scrape_failures_total") == 0
            # A worker that does not answer is left out, and counted.
            pids = gateway.worker_pids()
            os.kill(pids[1], signal.SIGSTOP)
            try:
                started = time.monotonic()
                samples = scrape(metrics_port)
                assert time.monotonic() - started < 5
            finally:
                os.kill(pids[1], signal.SIGCONT)
            assert set(worker_values(samples, "connections")) == {"0"}
            assert value(samples, "worker_scrape_failures_total") == 1
        finally:
            for conn in connections:
                conn.close()
        sockets = sorted(p.name for p in gateway.socket_dir().glob("m*.sock"))
        assert sockets == ["m0.sock", "m1.sock"]
        assert set(worker_values(scrape(metrics_port), "connections")) == {"0", "1"}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
