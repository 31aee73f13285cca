"""Reference proxies for bench_pg_gateway.py's breakdown (not part of jitgate).

Two processes that bracket the gateway's cost, each run as its own process
like ``jitgate proxy postgres``:

* ``relay``: a bare byte relay on the same event loop (uvloop) as the
  gateway, ``asyncio.Protocol`` pairs and nothing else: what any Python
  proxy pays to move the bytes. No authentication, no parsing.
* ``gateway-unaudited``: the real gateway (``start_gateway`` over the REST
  API, as ``jitgate proxy postgres`` runs it), except that its statement
  records are discarded instead of sent to the audit trail: the gateway's
  own per-statement work, without the trail's.

    python bench/pg_reference.py relay --listen 127.0.0.1:PORT --upstream HOST:PORT
    python bench/pg_reference.py gateway-unaudited --listen 127.0.0.1:PORT \\
        --upstream DSN --env ENV --target NAME --url URL --token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence
from typing import Any


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    """One client connection, relayed byte for byte to a new upstream connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: Any = None
        self.upstream: Any = None
        self.early: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(self), self.host, self.port
            )
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream
        for data in self.early:
            upstream.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def relay(listen: str, upstream: str) -> None:
    up_host, up_port = _address(upstream)
    host, port = _address(listen)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(up_host, up_port), host, port)
    try:
        await _until_terminated()
    finally:
        server.close()


async def gateway_unaudited(args: argparse.Namespace) -> None:
    from jitgate.gateways.postgres import start_gateway
    from jitgate.gateways.postgres.config import GatewayConfig
    from jitgate.gateways.remote import RemoteApprovals

    config = GatewayConfig.single(args.listen, args.upstream, args.env, args.target)
    port = RemoteApprovals(args.url, args.token, gateway=config.name)

    async def discard(records: Sequence[Any]) -> None:
        return None

    port.record_statements = discard  # type: ignore[method-assign]
    await port.start()
    gateway = await start_gateway(config, port, args.url)
    try:
        await _until_terminated()
    finally:
        await gateway.stop()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("relay", "gateway-unaudited"))
    p.add_argument("--listen", required=True)
    p.add_argument("--upstream", required=True)
    for option in ("--env", "--target", "--url", "--token"):
        p.add_argument(option)
    args = p.parse_args(argv)
    # jitgate is imported by gateway_unaudited() alone: the relay's memory is
    # that of the interpreter and uvloop.
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    work = relay(args.listen, args.upstream) if args.kind == "relay" else gateway_unaudited(args)
    with asyncio.Runner(loop_factory=loop_factory) as runner, contextlib.suppress(
        KeyboardInterrupt
    ):
        runner.run(work)


if __name__ == "__main__":
    main()
