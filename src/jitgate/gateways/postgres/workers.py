"""``jitgate proxy postgres --workers N``: N gateway processes on one port.

One gateway process spends a core on its per-statement Python work; with
cores to spare, N processes serve more. The process started from the command
line becomes a :class:`Supervisor`: it starts N workers (``spawn``: a fresh
interpreter, the configuration, URL and token handed over through a pipe,
never on a command line). Each worker is a whole standalone gateway (its own
approval port, statement recorder and event streams) listening with
SO_REUSEPORT, so the kernel spreads new connections across them.

**Cancels.** A CancelRequest comes on a new connection, which the kernel may
hand to any worker. Worker ``i`` hands out backend keys whose pid is ``i``
modulo N (:func:`random_pid`); a worker that receives a CancelRequest for a
pid another worker owns passes the 16 bytes, as they came, to that worker's
Unix socket ``<dir>/w<j>.sock`` (the directory is private: mode 0700). The
owner checks it exactly as one it received itself.

**Lifecycle.** SIGTERM or SIGINT to the supervisor: every worker gets
SIGTERM and stops as a single gateway does (FATAL 57P01 to its clients,
queued statement records written); then the socket directory is removed. A
worker that cannot start stops them all (:class:`StartFailed`); one that
dies later is restarted after 1 s, then 2, 4 ... 30 s while it keeps dying,
and the others go on serving. A worker whose supervisor is gone stops.

**Metrics.** With ``--metrics``, the supervisor serves ``GET /metrics``: it
asks each worker for its exposition at ``<dir>/m<i>.sock`` and labels the
samples ``worker="i"`` (metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from jitgate.gateways.postgres.config import GatewayConfig
    from jitgate.gateways.postgres.gateway import RunningGateway

log = logging.getLogger("jitgate.gateway.postgres.workers")

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Backend pids are positive int32s (clients keep them in a signed 32-bit field).
MAX_PID: Final = 2**31 - 1
#: A CancelRequest: length, code, pid, secret.
CANCEL_PACKET_SIZE: Final = 16
#: How long passing a cancel to another worker, or reading one, may take.
FORWARD_TIMEOUT: Final = 5.0
#: Delay before restarting a worker that died: doubled while it keeps dying.
RESTART_DELAY: Final = 1.0
MAX_RESTART_DELAY: Final = 30.0
#: A worker that served this long before dying starts the delays afresh.
HEALTHY_AFTER: Final = 60.0
#: How long the supervisor waits for a worker told to stop (its own stop takes
#: up to STOP_TIMEOUT, then its statement records are written) before killing it.
WORKER_STOP_TIMEOUT: Final = 30.0


class StartFailed(Exception):
    """The gateway (or one of its workers) could not start; the message says why."""


# --- which worker owns a key ----------------------------------------------------------


def random_pid(index: int = 0, count: int = 1) -> int:
    """A random backend pid in 1..2**31-1 that is ``index`` modulo ``count``."""
    first = 1 if index == 0 else 0  # pid 0 is no pid
    last = (MAX_PID - index) // count
    return index + count * (first + secrets.randbelow(last - first + 1))


@dataclass(frozen=True)
class WorkerSlot:
    """Worker ``index`` of ``count``, and the private directory of their cancel sockets."""

    index: int
    count: int
    directory: str

    def owner(self, pid: int) -> int:
        """The worker that handed out ``pid``."""
        return pid % self.count

    def owns(self, pid: int) -> bool:
        return self.owner(pid) == self.index

    def new_pid(self) -> int:
        return random_pid(self.index, self.count)

    def cancel_socket(self, index: int | None = None) -> str:
        """The Unix socket of worker ``index`` (this one by default)."""
        return os.path.join(self.directory, f"w{self.index if index is None else index}.sock")


# --- cancels between workers ------------------------------------------------------------


async def forward_cancel(path: str, packet: bytes) -> None:
    """Pass a CancelRequest, as it came, to the worker listening at ``path``.
    Failures are logged: a lost cancel is what a client risks anyway."""
    try:
        async with asyncio.timeout(FORWARD_TIMEOUT):
            _reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(packet)
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        log.warning("cancel not passed on to %s: %s", path, exc)
    else:
        log.debug("cancel passed on to %s", path)


async def listen_for_cancels(
    path: str, on_cancel: Callable[[bytes], None]
) -> asyncio.AbstractServer:
    """Listen at ``path`` for the CancelRequests other workers pass on; each
    connection carries one packet, handed to ``on_cancel`` before it is closed."""

    async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(FORWARD_TIMEOUT):
                packet = await reader.readexactly(CANCEL_PACKET_SIZE)
            on_cancel(packet)
        except (asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
            log.warning("a cancel from another worker was not read: %s", exc)
        except Exception:
            log.exception("a cancel from another worker failed")
        finally:
            writer.close()

    return await private_unix_server(receive, path)


async def private_unix_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], path: str
) -> asyncio.AbstractServer:
    """A Unix socket server at ``path`` that only this user may use (mode 0600,
    in the supervisor's 0700 directory)."""
    # A worker that was killed left its socket behind; its successor takes the path.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.start_unix_server(handler, path)
    os.chmod(path, 0o600)
    return server


# --- one standalone gateway (a worker, or the only process) --------------------------------


async def start_standalone(
    config: GatewayConfig, url: str, token: str, *, worker: WorkerSlot | None = None
) -> RunningGateway:
    """The gateway of ``config`` over the jitgate server at ``url``, listening;
    :class:`StartFailed` if the server cannot be reached or the port not listened on."""
    from jitgate.gateways.postgres import start_gateway
    from jitgate.gateways.remote import RemoteApprovals

    port = RemoteApprovals(url, token, gateway=config.name)
    try:
        await port.start()
    except Exception as error:
        await port.close()
        raise StartFailed(f"cannot reach the jitgate server: {error}") from None
    try:
        return await start_gateway(config, port, url, worker=worker)
    except OSError as error:  # the recorder and the port are closed
        raise StartFailed(f"cannot listen on {config.listen}: {error}") from None


async def start_metrics(
    gateway: RunningGateway, worker: WorkerSlot | None = None
) -> asyncio.AbstractServer | None:
    """Serve ``gateway``'s metrics if its configuration asks for them: on the
    metrics address, or for a worker on its socket for the supervisor. None
    when there are none; :class:`StartFailed` (the gateway stopped) if the
    address cannot be listened on."""
    config = gateway.config
    if config.metrics is None:
        return None
    from jitgate.gateways.postgres.metrics import (
        exposition,
        serve_metrics,
        serve_worker_metrics,
        worker_socket,
    )

    render = exposition(gateway.gateway)
    try:
        if worker is not None:
            return await serve_worker_metrics(worker_socket(worker.directory, worker.index), render)

        async def rendered() -> bytes:
            return render()

        return await serve_metrics(config.metrics.host, config.metrics.port, rendered)
    except OSError as error:
        await gateway.stop()
        raise StartFailed(f"cannot serve metrics on {config.metrics}: {error}") from None


async def stop_metrics(server: asyncio.AbstractServer | None) -> None:
    if server is None:
        return
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 1.0)


@dataclass(frozen=True)
class WorkerOrders:
    """What a worker process is started with (pickled into the spawn pipe)."""

    slot: WorkerSlot
    config: GatewayConfig
    url: str
    token: str
    log_level: int


def run_worker(orders: WorkerOrders, channel: Connection) -> None:
    """A worker process: serve until SIGTERM, or until the supervisor is gone.

    ``channel`` tells the supervisor ``("listening", host, port)`` or
    ``("failed", message)``; its end of it closing means the supervisor died.
    """
    # Ctrl-C reaches the whole process group: the supervisor decides, and
    # sends SIGTERM; a worker stopping on its own would look like a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=orders.log_level,
        format=LOG_FORMAT.replace("%(name)s", f"%(name)s [worker {orders.slot.index}]"),
    )
    from jitgate.gateways.postgres import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        status = runner.run(_serve_as_worker(orders, channel))
    channel.close()
    raise SystemExit(status)


async def _serve_as_worker(orders: WorkerOrders, channel: Connection) -> int:
    try:
        gateway = await start_standalone(
            orders.config, orders.url, orders.token, worker=orders.slot
        )
        metrics = await start_metrics(gateway, orders.slot)
    except StartFailed as failure:
        channel.send(("failed", str(failure)))
        return 1
    except Exception as error:
        log.exception("worker %d cannot start", orders.slot.index)
        channel.send(("failed", f"worker {orders.slot.index} cannot start: {error}"))
        return 1
    host, port = gateway.address
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def supervisor_gone() -> None:
        loop.remove_reader(channel.fileno())
        if not stop.is_set():
            log.warning("worker %d: the supervisor is gone; stopping", orders.slot.index)
            stop.set()

    # The supervisor never writes: the channel becomes readable when it closes.
    loop.add_reader(channel.fileno(), supervisor_gone)
    channel.send(("listening", host, port))
    try:
        await stop.wait()
    finally:
        loop.remove_reader(channel.fileno())
        await stop_metrics(metrics)
        await gateway.stop()
    return 0


# --- the supervisor ---------------------------------------------------------------------


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _Worker:
    """A worker process as the supervisor follows it: ``ready`` resolves to None
    once it listens, or to why it did not; ``exited`` to its exit code."""

    def __init__(self, index: int, process: BaseProcess, channel: Connection) -> None:
        self.index = index
        self.process = process
        self.channel = channel
        self._loop = asyncio.get_running_loop()
        self.started_at = self._loop.time()
        self.address: tuple[str, int] | None = None
        self.ready: asyncio.Future[str | None] = self._loop.create_future()
        self.exited: asyncio.Future[int | None] = self._loop.create_future()
        self._loop.add_reader(channel.fileno(), self._on_message)
        self._loop.add_reader(process.sentinel, self._on_exit)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def _on_message(self) -> None:
        try:
            message = self.channel.recv()
        except (EOFError, OSError):
            self._loop.remove_reader(self.channel.fileno())
            self.channel.close()
            return
        if self.ready.done():
            return
        if message[0] == "listening":
            self.address = (str(message[1]), int(message[2]))
            self.ready.set_result(None)
        else:
            self.ready.set_result(str(message[1]))

    def _on_exit(self) -> None:
        self._loop.remove_reader(self.process.sentinel)
        # A report sent just before exiting is read first.
        while not self.ready.done() and not self.channel.closed and self.channel.poll():
            self._on_message()
        if not self.channel.closed:
            self._loop.remove_reader(self.channel.fileno())
            self.channel.close()
        # Its end of the sentinel closed as it exited: this only collects it.
        self.process.join()
        code = self.process.exitcode
        if not self.ready.done():
            self.ready.set_result(f"worker {self.index} {_describe_exit(code)} before it listened")
        self.exited.set_result(code)


class Supervisor:
    """Runs ``config.workers`` gateway processes on one port (see the module doc)."""

    def __init__(
        self, config: GatewayConfig, url: str, token: str, *, log_level: int = logging.INFO
    ) -> None:
        self.config = config
        self.count = config.workers
        self._url = url
        self._token = token
        self._log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self.directory = ""
        self.workers: list[_Worker | None] = [None] * self.count
        self._stop = asyncio.Event()
        #: Scrapes of a worker's metrics that got no answer (a metric of its own).
        self.scrape_failures = 0

    def stop_soon(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[str, int], None]) -> None:
        """Start the workers, call ``on_ready`` with the address once every one
        listens, and keep them running until SIGTERM or SIGINT; stop them all.
        :class:`StartFailed` with a worker's message if one cannot start."""
        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM)
        for sig in handled:
            loop.add_signal_handler(sig, self.stop_soon)
        # Private: only this user may pass cancels to the workers.
        self.directory = tempfile.mkdtemp(prefix="jitgate-gw-")
        os.chmod(self.directory, 0o700)
        log.info("%d workers; their cancel sockets in %s", self.count, self.directory)
        keepers: list[asyncio.Task[None]] = []
        metrics: asyncio.AbstractServer | None = None
        try:
            metrics = await self._serve_metrics()
            address = await self._start_all()
            if address is None:
                return  # told to stop while starting
            on_ready(*address)
            keepers = [loop.create_task(self._keep(i)) for i in range(self.count)]
            await self._stop.wait()
        finally:
            self._stop.set()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            await stop_metrics(metrics)
            await self._stop_all()
            shutil.rmtree(self.directory, ignore_errors=True)
            for sig in handled:
                loop.remove_signal_handler(sig)

    async def _serve_metrics(self) -> asyncio.AbstractServer | None:
        """Serve the workers' metrics, if the configuration asks for them."""
        address = self.config.metrics
        if address is None:
            return None
        from jitgate.gateways.postgres.metrics import serve_metrics

        try:
            return await serve_metrics(address.host, address.port, self.scrape)
        except OSError as error:
            raise StartFailed(f"cannot serve metrics on {address}: {error}") from None

    async def scrape(self) -> bytes:
        """Every worker's metrics, labelled ``worker``, in one exposition."""
        from jitgate.gateways.postgres.metrics import aggregate, scrape_worker, worker_socket

        texts = await asyncio.gather(
            *(scrape_worker(worker_socket(self.directory, i)) for i in range(self.count))
        )
        self.scrape_failures += sum(1 for text in texts if text is None)
        return aggregate(dict(enumerate(texts)), self.scrape_failures, self.config.name)

    def _spawn(self, index: int) -> _Worker:
        orders = WorkerOrders(
            WorkerSlot(index, self.count, self.directory),
            self.config,
            self._url,
            self._token,
            self._log_level,
        )
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=run_worker,
            args=(orders, theirs),
            name=f"jitgate-gateway-worker-{index}",
            daemon=True,  # should the supervisor fail, multiprocessing stops it
        )
        try:
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the worker has its own: ours sees EOF if it dies
        worker = _Worker(index, process, ours)
        self.workers[index] = worker
        log.info("worker %d started (pid %s)", index, worker.pid)
        return worker

    async def _start_all(self) -> tuple[str, int] | None:
        try:
            started = [self._spawn(i) for i in range(self.count)]
        except OSError as error:
            raise StartFailed(f"cannot start the gateway's workers: {error}") from None
        stop = asyncio.get_running_loop().create_task(self._stop.wait())
        try:
            pending: set[asyncio.Future[Any]] = {w.ready for w in started}
            while pending:
                done, pending = await asyncio.wait(
                    {*pending, stop}, return_when=asyncio.FIRST_COMPLETED
                )
                if stop in done:
                    return None
                pending.discard(stop)
                for worker in started:
                    failure = worker.ready.result() if worker.ready in done else None
                    if failure is not None:
                        raise StartFailed(failure)
        finally:
            stop.cancel()
        for worker in started:
            log.info("worker %d listening (pid %s)", worker.index, worker.pid)
        address = started[0].address
        assert address is not None
        return address

    async def _keep(self, index: int) -> None:
        """Restart worker ``index`` whenever it dies, with growing delays."""
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY
        while True:
            worker = self.workers[index]
            assert worker is not None
            code = await asyncio.shield(worker.exited)
            if self._stop.is_set():
                return
            if loop.time() - worker.started_at >= HEALTHY_AFTER:
                delay = RESTART_DELAY
            log.error(
                "worker %d (pid %s) %s; restarting it in %g s",
                index,
                worker.pid,
                _describe_exit(code),
                delay,
            )
            if await self._stopped_within(delay):
                return
            delay = min(delay * 2, MAX_RESTART_DELAY)
            try:
                worker = self._spawn(index)
            except OSError as error:
                log.error("worker %d cannot be started: %s", index, error)
                continue  # the dead worker stays in its slot: try again, later
            failure = await asyncio.shield(worker.ready)
            if failure is None:
                log.info("worker %d restarted, listening (pid %s)", index, worker.pid)
            else:
                log.error("worker %d did not restart: %s", index, failure)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _stop_all(self) -> None:
        """SIGTERM to every worker; wait for them (killing the ones that hang)."""
        live = [w for w in self.workers if w is not None and not w.exited.done()]
        for worker in live:
            worker.terminate()
        if not live:
            return
        _, hanging = await asyncio.wait([w.exited for w in live], timeout=WORKER_STOP_TIMEOUT)
        for worker in live:
            if worker.exited in hanging:
                log.error(
                    "worker %d did not stop within %g s: killed", worker.index, WORKER_STOP_TIMEOUT
                )
                worker.kill()
        if hanging:
            await asyncio.wait(hanging, timeout=5)
        for worker in live:
            code = worker.exited.result() if worker.exited.done() else None
            if code not in (0, None):
                log.warning("worker %d %s while stopping", worker.index, _describe_exit(code))
