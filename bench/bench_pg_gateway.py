"""The PostgreSQL gateway against direct PostgreSQL and PgBouncer, side by side.

One run sets up everything it needs, measures, prints the tables and cleans
up (processes, database, temporary files) even on failure or Ctrl-C:

* a fresh database ``jitgate_bench_<random>`` on the local PostgreSQL
  (``pgbench -i -s SCALE``);
* ``jitgate serve`` (SQLite in a temporary data directory) with a user and a
  service account, and ``jitgate proxy postgres`` in front of the database
  (environment ``production``: the default catalog lets plain SELECTs through
  and records every statement in the audit trail);
* PgBouncer in session mode in front of the same database (installed with
  apt-get if it is missing; the output says so).

Measured:

1. throughput: ``pgbench -n -S -c 8 -j 2 -T DURATION`` with ``-M simple`` and
   ``-M prepared`` against direct, jitgate and PgBouncer; every configuration
   gets the same warm-up, runs are interleaved (the order rotates each round)
   and the median of ``--rounds`` is shown, with the ratio to direct and the
   CPU the proxy process used. ``-n`` (no vacuum) for all three: pgbench's
   VACUUM/TRUNCATE before a run are not plain SELECTs, and the comparison is
   of the select-only load itself. After a run through jitgate the bench
   waits until the audit trail holds every statement (shown as "drain"), so
   the next configuration does not pay for jitgate's backlog.
   ``jitgate×N`` (``--workers N``, default 2; 1 leaves it out) is the same
   gateway run with ``--workers N``: N processes on one port (SO_REUSEPORT);
   its CPU and RSS are the supervisor's and all workers' together.
   With the breakdown (default; ``--no-breakdown`` skips it), two reference
   proxies from bench/pg_reference.py run the same load: ``relay``, a bare
   uvloop byte relay (what moving the bytes costs in Python), and
   ``unaudited``, the gateway with its statement records discarded (its own
   per-statement work without the audit trail's).
2. added latency: one client, sequential ``SELECT 1`` (simple query, and a
   prepared statement), interleaved in chunks across the three paths; median
   and p99 per statement, and what the proxies add to direct.
3. memory per idle client: a fresh gateway's and a fresh PgBouncer's VmRSS
   before and after opening N authenticated idle connections through it
   (after 5 warm-up connections), divided by N, and how many PostgreSQL
   backends the idle clients hold. jitgate opens one upstream connection per
   client at login, so when the local server has no room for N more backends
   (``max_connections``) this part runs against a private, temporary cluster
   (initdb in the temporary directory, as postgres).

Every connection is plain TCP: clients use sslmode=disable, the gateway's
upstream DSN says sslmode=disable and PgBouncer's server_tls_sslmode = disable.
Both proxies run as separate processes on the same machine as pgbench and
PostgreSQL: on a small machine they compete for the same cores, as they would
on a shared host. The jitgate path also includes the ``jitgate serve``
process, which writes the audit trail; its CPU is shown too.

    .venv/bin/python bench/bench_pg_gateway.py [--duration 20] [--rounds 1]
        [--clients 8] [--threads 2] [--scale 10] [--roundtrips 5000] [--idle 500]

Needs root (PgBouncer and the private cluster run as ``postgres``), pgbench,
and a PostgreSQL reachable with trust authentication (``--pg-host``,
``--pg-port``, ``--pg-user``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

JITGATE = [sys.executable, "-m", "jitgate"]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
MODES = ("simple", "prepared")
PATHS = ("direct", "jitgate", "pgbouncer")
#: The breakdown's reference proxies (bench/pg_reference.py), throughput only:
#: a bare uvloop byte relay, and the gateway with its statement records discarded.
REFERENCE_PATHS = ("relay", "unaudited")
REFERENCE = [sys.executable, str(Path(__file__).with_name("pg_reference.py"))]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """Set-up failed; the message says what and where."""


def say(text: str = "") -> None:
    print(text, flush=True)


# --- small helpers --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[Any], what: str, log: Path | None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode}: {tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise BenchError(f"{what} did not listen on port {port} within 30 s: {tail(log)}")


def tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and its live descendants, added up."""
    return sum(rss_kib(each) for each in process_tree(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its live descendants (a gateway
    with workers: the supervisor and every worker)."""
    total = 0.0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            stat = Path(f"/proc/{each}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    found, queue = [], [pid]
    while queue:
        each = queue.pop()
        found.append(each)
        for task in Path(f"/proc/{each}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                queue.extend(int(child) for child in task.read_text().split())
    return found


def machine_busy(seconds: float = 2.0) -> float:
    """Share of all cores busy over ``seconds`` (other load skews every figure)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        list(cmd), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}): {done.stderr}")
    return done.stdout


def as_postgres() -> dict[str, Any]:
    """Popen arguments that run the child as the postgres user (PgBouncer and the
    postmaster refuse root); the child's pid is the server's own."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


# --- the world ------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Somewhere a client connects: PostgreSQL itself or a proxy in front of it."""

    name: str
    port: int
    user: str
    dbname: str
    password: str | None = None
    host: str = "127.0.0.1"
    pid: int | None = None  # the proxy process (for CPU and RSS)
    helper_pid: int | None = None  # jitgate serve, which writes the audit trail

    def conninfo(self) -> str:
        info = (
            f"host={self.host} port={self.port} user={self.user} dbname={self.dbname} "
            "sslmode=disable gssencmode=disable connect_timeout=30"
        )
        if self.password is not None:
            info += f" password={self.password}"
        return info

    def libpq_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGDATABASE=self.dbname,
            PGSSLMODE="disable",
            PGGSSENCMODE="disable",
        )
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


@dataclass
class World:
    args: argparse.Namespace
    root: Path
    cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    database: str = ""
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    pgbouncer_note: str = ""
    #: Statements sent through the main gateway that must appear in the audit trail.
    sent_through_jitgate: int = 0

    def on_cleanup(self, what: str, action: Callable[[], None]) -> None:
        self.cleanups.append((what, action))

    def cleanup(self) -> None:
        while self.cleanups:
            what, action = self.cleanups.pop()
            try:
                action()
            except Exception as exc:  # go on cleaning up the rest
                say(f"cleanup: {what} failed: {exc}")

    def spawn(
        self,
        name: str,
        cmd: Sequence[str],
        stop_signal: signal.Signals = signal.SIGTERM,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        log = self.root / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop them in order
                **kwargs,
            )
        self.processes[name] = process
        self.on_cleanup(f"stop {name}", lambda: stop(process, stop_signal))
        return process

    # --- PostgreSQL ---------------------------------------------------------------------

    def admin_conn(self, dbname: str = "postgres", port: int | None = None) -> psycopg.Connection:
        """A connection to the local server, or (``port``) to the private cluster."""
        a = self.args
        host = a.pg_host if port is None or port == a.pg_port else "127.0.0.1"
        return psycopg.connect(
            f"host={host} port={port or a.pg_port} user={a.pg_user} dbname={dbname} "
            "sslmode=disable",
            autocommit=True,
        )

    def create_database(self) -> None:
        a = self.args
        self.database = f"jitgate_bench_{secrets.token_hex(4)}"
        with self.admin_conn() as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.on_cleanup(f"drop database {self.database}", self.drop_database)
        say(f"database {self.database}: pgbench -i -s {a.scale} ...")
        started = time.monotonic()
        run(
            [
                "pgbench",
                "-i",
                "-q",
                "-s",
                str(a.scale),
                "-h",
                a.pg_host,
                "-p",
                str(a.pg_port),
                "-U",
                a.pg_user,
                self.database,
            ],
            env={**os.environ, "PGSSLMODE": "disable"},
        )
        say(f"  initialised in {time.monotonic() - started:.1f} s")
        self.endpoints["direct"] = Endpoint(
            "direct", a.pg_port, a.pg_user, self.database, host=a.pg_host
        )

    def drop_database(self) -> None:
        with self.admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    # --- jitgate ------------------------------------------------------------------------

    def start_jitgate(self) -> None:
        data = self.root / "jitgate-data"
        data.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JITGATE_", "PG"))}
        env["JITGATE_DATA_DIR"] = str(data)
        self.env = env
        run([*JITGATE, "admin", "user", "add", "bench", "--group", "dev"], env=env)
        run([*JITGATE, "admin", "user", "add", "gw", "--service"], env=env)
        for user in ("bench", "gw"):
            self.tokens[user] = run(
                [*JITGATE, "admin", "token", "create", user, "--quiet"], env=env
            ).strip()
        port = free_port()
        server = self.spawn(
            "jitgate-serve",
            [*JITGATE, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"jitgate serve did not start: {tail(self.logs['jitgate-serve'])}")
            time.sleep(0.1)
        a = self.args
        # sslmode=disable, as PgBouncer's server_tls_sslmode: plain TCP upstream for both.
        upstream = (
            f"postgresql://{a.pg_user}@{a.pg_host}:{a.pg_port}/{self.database}?sslmode=disable"
        )
        self.endpoints["jitgate"] = self.start_gateway("jitgate-proxy", upstream, "bench")
        self.endpoints["jitgate"].helper_pid = server.pid
        if a.workers > 1:
            path = workers_path(a)
            self.endpoints[path] = self.start_gateway(
                "jitgate-proxy-workers", upstream, "bench", workers=a.workers
            )
            self.endpoints[path].helper_pid = server.pid

    def start_gateway(self, name: str, upstream: str, target: str, workers: int = 1) -> Endpoint:
        port = free_port()
        process = self.spawn(
            name,
            [
                *JITGATE,
                "proxy",
                "postgres",
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                upstream,
                "--env",
                "production",
                "--target",
                target,
                "--url",
                self.url,
                "--token",
                self.tokens["gw"],
                *(["--workers", str(workers)] if workers > 1 else []),
            ],
            env=self.env,
        )
        wait_port(port, process, name, self.logs[name])
        return Endpoint(
            "jitgate", port, "bench", target, password=self.tokens["bench"], pid=process.pid
        )

    def start_references(self) -> None:
        """The breakdown's reference proxies, each its own process."""
        a = self.args
        upstream = (
            f"postgresql://{a.pg_user}@{a.pg_host}:{a.pg_port}/{self.database}?sslmode=disable"
        )
        kinds = {
            "relay": ["--upstream", f"{a.pg_host}:{a.pg_port}"],
            "unaudited": ["--upstream", upstream, "--env", "production", "--target", "bench",
                          "--url", self.url, "--token", self.tokens["gw"]],
        }  # fmt: skip
        for name, options in kinds.items():
            port = free_port()
            kind = "relay" if name == "relay" else "gateway-unaudited"
            process = self.spawn(
                name, [*REFERENCE, kind, "--listen", f"127.0.0.1:{port}", *options], env=self.env
            )
            wait_port(port, process, name, self.logs[name])
            if name == "relay":
                endpoint = Endpoint(name, port, a.pg_user, self.database, pid=process.pid)
            else:
                endpoint = Endpoint(
                    name, port, "bench", "bench", password=self.tokens["bench"], pid=process.pid
                )
            self.endpoints[name] = endpoint

    def audit_count(self) -> int:
        """``statement.executed`` events in the trail (read-only; the store is in WAL mode)."""
        db = self.root / "jitgate-data" / "jitgate.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute(
                "SELECT count(*) FROM events WHERE type = 'statement.executed'"
            ).fetchone()
            return int(row[0])
        finally:
            conn.close()

    def wait_for_audit(self, timeout: float = 600) -> float:
        """Wait until the trail holds every statement sent through the main gateway
        (pgbench's own start-up queries come on top); the seconds waited."""
        started = time.monotonic()
        while self.audit_count() < self.sent_through_jitgate:
            if time.monotonic() - started > timeout:
                raise BenchError(
                    f"the audit trail holds {self.audit_count()} of "
                    f"{self.sent_through_jitgate} statements after {timeout:.0f} s"
                )
            time.sleep(0.2)
        return time.monotonic() - started

    # --- PgBouncer ----------------------------------------------------------------------

    def ensure_pgbouncer(self) -> str:
        found = shutil.which("pgbouncer") or (
            "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
        )
        if found:
            if not self.pgbouncer_note:
                self.pgbouncer_note = f"PgBouncer was already installed ({found})"
                say(self.pgbouncer_note)
            return found
        say("pgbouncer is missing: installing it with apt-get (package pgbouncer) ...")
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "pgbouncer"]
        done = subprocess.run(install, env=apt_env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            run(["apt-get", "update", "-q"], env=apt_env)
            run(install, env=apt_env)
        found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(found).exists():
            raise BenchError("pgbouncer is not installed and apt-get did not install it")
        self.pgbouncer_note = "PgBouncer was missing and was installed by this run (apt-get)"
        say(f"  {self.pgbouncer_note}")
        return found

    def start_pgbouncer(
        self, name: str, upstream_port: int, dbname: str, upstream_host: str | None = None
    ) -> Endpoint:
        binary = self.ensure_pgbouncer()
        a = self.args
        home = self.root / name
        home.mkdir()
        port = free_port()
        (home / "userlist.txt").write_text(f'"{a.pg_user}" ""\n')
        (home / "pgbouncer.ini").write_text(
            f"""[databases]
bench = host={upstream_host or a.pg_host} port={upstream_port} dbname={dbname} user={a.pg_user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home / "userlist.txt"}
pool_mode = session
max_client_conn = {a.idle + 200}
default_pool_size = {a.clients + 16}
server_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
logfile = {home / "pgbouncer.log"}
pidfile = {home / "pgbouncer.pid"}
log_connections = 0
log_disconnections = 0
"""
        )
        for path in (home, home / "userlist.txt", home / "pgbouncer.ini"):
            give_to_postgres(path)
        process = self.spawn(name, [binary, str(home / "pgbouncer.ini")], **as_postgres())
        wait_port(port, process, name, home / "pgbouncer.log")
        return Endpoint("pgbouncer", port, a.pg_user, "bench", pid=process.pid)

    # --- a private cluster for the idle-connection test ---------------------------------

    def start_private_cluster(self, max_connections: int) -> int:
        home = self.root / "pgidle"
        home.mkdir()
        give_to_postgres(home)
        data = home / "data"
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust",
                  "-U", self.args.pg_user, "-E", "UTF8", "--no-sync"]  # fmt: skip
        # PostgreSQL's binaries refuse to run as root.
        run(["runuser", "-u", "postgres", "--", *initdb] if os.geteuid() == 0 else initdb)
        port = free_port()
        process = self.spawn(
            "pgidle-postgres",
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={home}",
                "-c",
                f"max_connections={max_connections}",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "fsync=off",
                "-c",
                "ssl=off",
            ],
            stop_signal=signal.SIGINT,  # fast shutdown
            **as_postgres(),
        )
        wait_port(port, process, "private cluster", self.logs["pgidle-postgres"])
        deadline = time.monotonic() + 30
        while True:  # accepting TCP is not yet accepting logins
            try:
                self.admin_conn(port=port).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return port


def stop(
    process: subprocess.Popen[Any], how: signal.Signals = signal.SIGTERM, timeout: float = 15
) -> None:
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --- 1. throughput: pgbench -S --------------------------------------------------------


@dataclass
class PgbenchResult:
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int = 0
    failed: int = 0
    proxy_cpu: float | None = None  # % of one core, over the run
    proxy_us: float | None = None  # proxy CPU per transaction
    helper_us: float | None = None  # jitgate serve CPU per transaction (run + audit drain)
    audit_rate: float | None = None  # statement records written per second during the run
    drain: float | None = None  # seconds the audit trail needed to catch up after the run
    rss_mb: float | None = None  # proxy RSS after the run
    error: str | None = None


_TPS = re.compile(r"^tps = ([\d.]+)", re.M)
_LAT = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_TX = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_ABORTED = re.compile(r"client \d+ .*aborted")


def pgbench(world: World, path: str, mode: str, seconds: int) -> PgbenchResult:
    """One pgbench run; through jitgate, also waits until the audit trail has
    caught up, so that the next run does not pay for this one's records."""
    args, endpoint = world.args, world.endpoints[path]
    cmd = ["pgbench", "-n", "-S", "-M", mode, "-c", str(args.clients), "-j", str(args.threads),
           "-T", str(seconds), endpoint.dbname]  # fmt: skip
    audited = world.audit_count() if path.startswith("jitgate") else None
    proxy0 = cpu_seconds(endpoint.pid) if endpoint.pid else 0.0
    helper0 = cpu_seconds(endpoint.helper_pid) if endpoint.helper_pid else 0.0
    started = time.monotonic()
    try:
        done = subprocess.run(
            cmd, env=endpoint.libpq_env(), capture_output=True, text=True,
            timeout=seconds + 120, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return PgbenchResult(error=f"pgbench did not finish within {seconds + 120} s")
    wall = time.monotonic() - started
    result = PgbenchResult()
    out = done.stdout
    if m := _TX.search(out):
        result.transactions = int(m.group(1))
    if m := _FAILED.search(out):
        result.failed = int(m.group(1))
    if endpoint.pid:
        used = cpu_seconds(endpoint.pid) - proxy0
        result.proxy_cpu = used / wall * 100
        result.proxy_us = used / result.transactions * 1e6 if result.transactions else None
        result.rss_mb = tree_rss_kib(endpoint.pid) / 1024
    if audited is not None:
        world.sent_through_jitgate += result.transactions
        written = world.audit_count()
        result.audit_rate = (written - audited) / wall
        result.drain = world.wait_for_audit()
    if endpoint.helper_pid and result.transactions:
        result.helper_us = (cpu_seconds(endpoint.helper_pid) - helper0) / result.transactions * 1e6
    tps, lat = _TPS.search(out), _LAT.search(out)
    problems = [
        line
        for line in done.stderr.splitlines()
        if "abort" in line or "error" in line.lower() or "FATAL" in line
    ]
    if done.returncode != 0 or tps is None or problems or result.failed:
        aborted = sum(bool(_ABORTED.search(line)) for line in problems)
        first = (problems or done.stderr.strip().splitlines() or ["no output"])[0]
        result.error = (
            f"pgbench exit {done.returncode}, {aborted} of {args.clients} clients aborted, "
            f"first: {first.removeprefix('pgbench: error: ')}"
        )
    if tps is not None:
        result.tps = float(tps.group(1))
    if lat is not None:
        result.latency_ms = float(lat.group(1))
    return result


def throughput(world: World) -> dict[tuple[str, str], list[PgbenchResult]]:
    a = world.args
    configs = [(path, mode) for mode in MODES for path in throughput_paths(world)]
    say(f"warm-up: {a.warmup} s of the same load per configuration ...")
    for path, mode in configs:
        warm = pgbench(world, path, mode, a.warmup)
        if warm.error:
            say(f"  warm-up {path}/{mode}: {warm.error}")
    results: dict[tuple[str, str], list[PgbenchResult]] = {c: [] for c in configs}
    for r in range(a.rounds):
        shift = r % len(configs)
        order = configs[shift:] + configs[:shift]
        for path, mode in order:
            res = pgbench(world, path, mode, a.duration)
            results[path, mode].append(res)
            shown = f"{res.tps:9.1f} tps" if res.tps is not None else "  no tps"
            drained = f" (audit trail caught up {res.drain:.1f} s later)" if res.drain else ""
            say(
                f"  round {r + 1}/{a.rounds} {mode:8} {path:9} {shown}{drained}"
                + (f"  FAILED: {res.error}" if res.error else "")
            )
    return results


def workers_path(args: argparse.Namespace) -> str:
    return f"jitgate×{args.workers}"


def throughput_paths(world: World) -> tuple[str, ...]:
    a = world.args
    paths = PATHS + ((workers_path(a),) if a.workers > 1 else ())
    return paths + REFERENCE_PATHS if a.breakdown else paths


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report_throughput(
    world: World, results: dict[tuple[str, str], list[PgbenchResult]]
) -> list[str]:
    a = world.args
    say()
    say(
        f"1. Throughput: pgbench -n -S, {a.clients} clients, {a.threads} threads, {a.duration} s "
        f"per run, scale {a.scale}, median of {a.rounds} round(s); "
        f"{os.cpu_count()} CPU cores shared by pgbench, PostgreSQL and the proxies"
    )
    say(
        f"   {'protocol':9} {'path':10} {'tps':>9} {'lat ms':>7} {'vs direct':>9} "
        f"{'proxy CPU':>9} {'µs CPU/tx':>9} {'serve µs/tx':>11} {'audit rec/s':>11} "
        f"{'drain s':>7} {'RSS MB':>7}  notes"
    )
    verdicts: list[str] = []
    for mode in MODES:
        tps: dict[str, float | None] = {}
        for path in throughput_paths(world):
            runs = results[path, mode]
            tps[path] = here = _median([r.tps for r in runs])
            direct = tps["direct"]
            ratio = here / direct if here is not None and direct else None
            cpu = _median([r.proxy_cpu for r in runs])
            errors = [r.error for r in runs if r.error]
            note = f"{len(errors)} failed run(s): {errors[0]}" if errors else ""
            say(
                f"   {mode:9} {path:10} {_fmt(tps[path], '9.0f')} "
                f"{_fmt(_median([r.latency_ms for r in runs]), '7.3f')} {_fmt(ratio, '9.2f')} "
                f"{_fmt(cpu, '8.0f') + ('%' if cpu is not None else ''):>9} "
                f"{_fmt(_median([r.proxy_us for r in runs]), '9.1f')} "
                f"{_fmt(_median([r.helper_us for r in runs]), '11.1f')} "
                f"{_fmt(_median([r.audit_rate for r in runs]), '11.0f')} "
                f"{_fmt(_median([r.drain for r in runs]), '7.1f')} "
                f"{_fmt(_median([r.rss_mb for r in runs]), '7.1f')}  {note}"
            )
        bouncer = tps["pgbouncer"]
        for jitgate in ("jitgate", *((workers_path(a),) if a.workers > 1 else ())):
            jit = tps[jitgate]
            failed = [r.error for p in (jitgate, "pgbouncer") for r in results[p, mode] if r.error]
            if jit is None or bouncer is None:
                verdicts.append(f"{mode}: {jitgate}: no comparison (a run failed)")
                continue
            verdict = ">=" if jit >= bouncer and not failed else "<"
            verdicts.append(
                f"{mode}: {jitgate} {jit:.0f} tps {verdict} PgBouncer {bouncer:.0f} tps "
                f"({jitgate}/PgBouncer = {jit / bouncer:.2f})"
                + (f"; {len(failed)} run(s) FAILED (see notes)" if failed else "")
            )
    say(
        "   proxy CPU: % of one core used by the proxy process during the run; µs CPU/tx: "
        "the same per transaction;\n"
        "   serve µs/tx: CPU of jitgate serve (audit trail writes) per transaction, until it "
        "caught up; audit rec/s:\n"
        "   statement records written to the trail per second during the run; drain s: time "
        "the trail needed after\n"
        "   the run to hold every statement (the next run waits for it)."
    )
    if a.breakdown:
        say(
            "   breakdown (references, not products): relay = a bare uvloop byte relay in "
            "Python (bench/pg_reference.py),\n"
            "   what moving the bytes costs; unaudited = the jitgate gateway with its "
            "statement records discarded\n"
            "   (no audit trail), its own per-statement work. jitgate - unaudited = what "
            "the audit trail costs."
        )
    return verdicts


# --- 2. added latency per statement -----------------------------------------------------


def latency(world: World) -> None:
    a = world.args
    chunk = max(1, a.roundtrips // 10)
    say()
    say(
        f"2. Added latency per statement: 1 client, {a.roundtrips} sequential SELECT 1 per path "
        f"and protocol (libpq via psycopg), interleaved in chunks of {chunk}, after "
        f"{a.roundtrips // 10} warm-up round trips"
    )
    conns = {p: psycopg.connect(world.endpoints[p].conninfo(), autocommit=True) for p in PATHS}
    samples: dict[tuple[str, str], list[float]] = {(p, m): [] for p in PATHS for m in MODES}
    try:
        for conn in conns.values():
            conn.pgconn.prepare(b"s1", b"SELECT 1")

        def trip(path: str, mode: str, n: int, keep: bool) -> None:
            pgconn = conns[path].pgconn
            out = samples[path, mode]
            clock = time.perf_counter_ns
            ok = psycopg.pq.ExecStatus.TUPLES_OK
            for _ in range(n):
                t0 = clock()
                res = (
                    pgconn.exec_(b"SELECT 1")
                    if mode == "simple"
                    else pgconn.exec_prepared(b"s1", [])
                )
                t1 = clock()
                if res.status != ok:
                    raise BenchError(f"{path}: SELECT 1 failed: {res.error_message!r}")
                if keep:
                    out.append((t1 - t0) / 1000.0)

        for path in PATHS:
            for mode in MODES:
                trip(path, mode, a.roundtrips // 10, keep=False)
        world.sent_through_jitgate += len(MODES) * (a.roundtrips // 10 + a.roundtrips)
        serve = world.endpoints["jitgate"].helper_pid
        assert serve is not None
        serve0, started = cpu_seconds(serve), time.monotonic()
        done = 0
        rotation = 0
        while done < a.roundtrips:
            n = min(chunk, a.roundtrips - done)
            order = [(p, m) for m in MODES for p in PATHS]
            rotation = (rotation + 1) % len(order)
            for path, mode in order[rotation:] + order[:rotation]:
                trip(path, mode, n, keep=True)
            done += n
        serve_cpu = (cpu_seconds(serve) - serve0) / (time.monotonic() - started)
        behind = world.sent_through_jitgate - world.audit_count()
    finally:
        for conn in conns.values():
            conn.close()
    say(
        f"   {'protocol':9} {'path':10} {'median µs':>10} {'p99 µs':>9} "
        f"{'added median':>13} {'added p99':>10}"
    )
    for mode in MODES:
        base = sorted(samples["direct", mode])
        base_med, base_p99 = statistics.median(base), percentile(base, 99)
        for path in PATHS:
            values = sorted(samples[path, mode])
            med, p99 = statistics.median(values), percentile(values, 99)
            added = "" if path == "direct" else f"{med - base_med:+13.1f} {p99 - base_p99:+10.1f}"
            say(f"   {mode:9} {path:10} {med:10.1f} {p99:9.1f} {added}")
    say(
        f"   meanwhile jitgate serve used {serve_cpu:.0%} of a core writing the audit trail, "
        f"and was {max(0, behind)} statement records behind at the end"
    )
    world.wait_for_audit()


# --- 3. memory per idle client ----------------------------------------------------------


def backends(world: World, port: int, dbname: str) -> int:
    with world.admin_conn(port=port) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def idle_memory(world: World) -> None:
    a = world.args
    n = a.idle
    with world.admin_conn() as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    assert row is not None
    room = int(row[0])
    say()
    if room >= n + 10:
        where = f"the local server ({room} connection slots free)"
        upstream_host, upstream_port, upstream_db = a.pg_host, a.pg_port, world.database
    else:
        where = (
            f"a private temporary cluster (the local server has {room} free connection slots, "
            f"and jitgate opens one upstream connection per client)"
        )
        upstream_port = world.start_private_cluster(n + 30)
        upstream_host, upstream_db = "127.0.0.1", "postgres"
    upstream = (
        f"postgresql://{a.pg_user}@{upstream_host}:{upstream_port}/{upstream_db}?sslmode=disable"
    )
    # Fresh proxies: a process that has just carried the load has free memory
    # in its heap that new connections would reuse unseen.
    targets = {
        "jitgate": world.start_gateway("jitgate-proxy-idle", upstream, "idle"),
        "pgbouncer": world.start_pgbouncer(
            "pgbouncer-idle", upstream_port, upstream_db, upstream_host
        ),
    }
    say(
        f"3. Memory per idle client: {n} authenticated idle connections (psycopg, opened one "
        f"after the other) through each proxy, upstream: {where}"
    )
    say(
        f"   {'path':10} {'RSS before':>11} {'RSS after':>10} {'per client':>11} "
        f"{'upstream backends held':>23} {'open time':>10}"
    )
    for path, endpoint in targets.items():
        assert endpoint.pid is not None
        for _ in range(5):  # first connections load code and fill caches: not per-client cost
            with psycopg.connect(endpoint.conninfo(), autocommit=True) as warm:
                warm.execute("SELECT 1")
        time.sleep(1.0)
        before = rss_kib(endpoint.pid)
        held_before = backends(world, upstream_port, upstream_db)
        conns: list[psycopg.Connection] = []
        started = time.monotonic()
        try:
            for _ in range(n):
                conns.append(psycopg.connect(endpoint.conninfo(), autocommit=True))
            opened = time.monotonic() - started
            time.sleep(1.0)
            after = rss_kib(endpoint.pid)
            held = backends(world, upstream_port, upstream_db) - held_before
        finally:
            for conn in conns:
                conn.close()
        per = (after - before) / n
        say(
            f"   {path:10} {before / 1024:9.1f} MB {after / 1024:8.1f} MB {per:8.1f} KiB "
            f"{held:23d} {opened:9.1f}s"
        )
    say("   (PgBouncer gives a client a server connection at its first query, so idle")
    say("   logins hold none; jitgate connects upstream at login: each idle client also")
    say("   holds a PostgreSQL backend, whose memory is not in the proxy's RSS.)")


# --- the audit trail: did jitgate record what went through it? ---------------------------


def report_gateway_log(world: World) -> None:
    for name, log in world.logs.items():
        if not name.startswith("jitgate-proxy") or not log.exists():
            continue
        bad = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if " WARNING " in line or " ERROR " in line or "Traceback" in line
        ]
        if bad:
            say(f"   {name} logged {len(bad)} warning/error line(s), first ones:")
            for line in bad[:5]:
                say(f"     {line}")


# --- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=20, help="seconds per pgbench run (-T)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per configuration")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median shown)")
    p.add_argument("--clients", type=int, default=8, help="pgbench -c")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    p.add_argument("--roundtrips", type=int, default=5000, help="SELECT 1 per path and protocol")
    p.add_argument("--idle", type=int, default=500, help="idle connections for the memory test")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also measure a gateway with this many worker processes (jitgate proxy postgres "
        "--workers N; 1: only the single-process gateway)",
    )
    p.add_argument(
        "--no-breakdown",
        dest="breakdown",
        action="store_false",
        help="skip the reference proxies (bare relay, gateway without audit) in part 1",
    )
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres")
    args = p.parse_args(argv)
    if min(args.duration, args.rounds, args.clients, args.threads, args.scale) < 1:
        p.error("--duration, --rounds, --clients, --threads and --scale must be >= 1")
    if args.roundtrips < 10 or args.idle < 1:
        p.error("--roundtrips must be >= 10 and --idle >= 1")
    return args


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    # Ctrl-C interrupts even where the shell started us with SIGINT ignored.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("pgbench",):
        if shutil.which(tool) is None:
            say(f"error: {tool} is not on PATH")
            return 2
    root = Path(tempfile.mkdtemp(prefix="jitgate-pgbench-"))
    root.chmod(0o711)  # PgBouncer and the private cluster run as postgres
    world = World(args, root)
    world.on_cleanup(f"remove {root}", lambda: shutil.rmtree(root, ignore_errors=True))
    code = 0
    with sigterm_as_interrupt():
        try:
            world.create_database()
            world.start_jitgate()
            world.endpoints["pgbouncer"] = world.start_pgbouncer(
                "pgbouncer", args.pg_port, world.database
            )
            if args.breakdown:
                world.start_references()
            busy = machine_busy()
            say(
                f"machine before the runs: {busy:.0%} of {os.cpu_count()} cores busy, load average "
                + " ".join(f"{x:.2f}" for x in os.getloadavg())
                + ("  (WARNING: other load; figures are skewed)" if busy > 0.1 else "")
            )
            results = throughput(world)
            verdicts = report_throughput(world, results)
            latency(world)
            idle_memory(world)
            say()
            say("Audit trail: waiting for every statement, then stopping the gateways ...")
            world.wait_for_audit()
            for name, process in world.processes.items():
                if name.startswith("jitgate-proxy"):
                    stop(process, timeout=60)
            say(
                f"   statement.executed events: {world.audit_count()}; statements sent through "
                f"jitgate by pgbench and the latency test: {world.sent_through_jitgate} "
                "(pgbench's start-up queries come on top)"
            )
            report_gateway_log(world)
            say()
            say("Target: jitgate at least as fast as PgBouncer (pgbench -S tps):")
            for line in verdicts:
                say(f"   {line}")
            # Per protocol, the best jitgate configuration counts.
            met = all(
                any(">=" in line for line in verdicts if line.startswith(f"{mode}:"))
                for mode in MODES
            )
            say(f"   => {'MET' if met else 'NOT MET'}")
        except KeyboardInterrupt:
            say("interrupted: cleaning up")
            code = 130
        except BenchError as exc:
            say(f"error: {exc}")
            code = 1
        finally:
            world.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
