"""A private, throwaway PostgreSQL cluster with password authentication.

The shared test server (``conftest.py``) trusts everyone; the gateway's
upstream authentication needs a server that asks for passwords. The session
fixture :func:`pg_cluster` initdb's a cluster in a temporary directory, on a
free port of 127.0.0.1 (no Unix socket), with these ``pg_hba.conf`` lines::

    host all scram_user 127.0.0.1/32 scram-sha-256
    host all scram_nfkc 127.0.0.1/32 scram-sha-256   (a password SASLprep changes)
    host all md5_user   127.0.0.1/32 md5
    host all clear_user 127.0.0.1/32 password
    host all all        127.0.0.1/32 trust           (trust_user, postgres)

and a database ``app`` owned by ``scram_user``. It is stopped and removed at
the end of the session. As root, initdb and pg_ctl run as the ``postgres``
user (``runuser``); otherwise as the current user. The binaries are looked up
in ``$JITGATE_TEST_PG_BIN``, ``/usr/lib/postgresql/<version>/bin`` and the
``PATH``; without them the fixture fails (it does not skip) and says how to
install PostgreSQL.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import pytest

BIN_ENV = "JITGATE_TEST_PG_BIN"
INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`, "
    "Fedora: `dnf install postgresql-server`, macOS: `brew install postgresql`), "
    f"or set {BIN_ENV} to the directory that holds initdb and pg_ctl"
)

#: user -> password. Each has characters a DSN must percent-encode or SQL must quote.
PASSWORDS: dict[str, str] = {
    "scram_user": "scr@m:p/ss w%rd?#",
    # SASLprep maps the soft hyphen to nothing and NFKC turns Ⅸ into IX and ﬁ into fi.
    "scram_nfkc": "I\u00adX-\u2168-\ufb01-pässwörd",
    "md5_user": "md5-p@ss'word",
    "clear_user": "clear&text=pw",
}
TRUST_USER = "trust_user"
SUPERUSER = "postgres"
DATABASE = "app"

HBA = """\
# jitgate test cluster
host all scram_user 127.0.0.1/32 scram-sha-256
host all scram_nfkc 127.0.0.1/32 scram-sha-256
host all md5_user   127.0.0.1/32 md5
host all clear_user 127.0.0.1/32 password
host all all        127.0.0.1/32 trust
"""

CONF = """
# jitgate test cluster: fast and private
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 40
password_encryption = 'scram-sha-256'
"""


@dataclass
class PgCluster:
    """A running private cluster: where it is and who can log in."""

    host: str
    port: int
    data_dir: Path
    bin_dir: Path
    #: user -> password for the password-authenticated roles.
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))
    trust_user: str = TRUST_USER
    superuser: str = SUPERUSER
    database: str = DATABASE

    def dsn(self, user: str, database: str | None = None, password: str | None = None) -> str:
        """``postgresql://user:password@127.0.0.1:port/app``, percent-encoded; the
        user's known password unless ``password`` is given (none for trust users)."""
        secret = password if password is not None else self.passwords.get(user)
        auth = quote(user, safe="")
        if secret is not None:
            auth += ":" + quote(secret, safe="")
        db = quote(database or self.database, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{db}?sslmode=disable"

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser (trust); its output."""
        return _psql(self.bin_dir, self.port, sql, database=database)


def _fail(message: str) -> NoReturn:
    pytest.fail(f"private PostgreSQL cluster: {message}", pytrace=False)


def _log_tail(log: Path) -> str:
    if not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-20:]
    return "\nserver log:\n" + "\n".join(lines)


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = [p for p in root.iterdir() if re.fullmatch(r"\d+(\.\d+)?", p.name)]
        versions.sort(key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
        candidates.extend(p / "bin" for p in versions)
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_owner(command: list[str]) -> list[str]:
    """``command`` run as the cluster's owner (postgres when we are root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _run(command: list[str], what: str, cwd: Path, log: Path | None = None) -> bool:
    """Run ``command``; True if it worked, False if it failed and ``log`` shows
    the port was taken; any other failure fails the test."""
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _fail(f"{what} failed: {exc}")
    if result.returncode == 0:
        return True
    tail = _log_tail(log) if log is not None else ""
    if "could not bind" in tail or "already in use" in tail:
        return False
    _fail(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}{tail}")


def _psql(bin_dir: Path, port: int, sql: str, *, database: str = "postgres") -> str:
    psql = bin_dir / "psql"
    command = [str(psql) if psql.is_file() else "psql", "-X", "-q", "-A", "-t"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", database]
    command += ["-v", "ON_ERROR_STOP=1", "-f", "-"]
    env = {**os.environ, "PGCLIENTENCODING": "UTF8", "PGCONNECT_TIMEOUT": "10"}
    env.pop("PGPASSWORD", None)
    result = subprocess.run(
        command, input=sql, capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if result.returncode != 0:
        _fail(f"psql failed: {result.stderr.strip()}")
    return result.stdout


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _setup_sql() -> str:
    roles = f"""
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN PASSWORD {_literal(PASSWORDS["scram_user"])};
CREATE ROLE scram_nfkc LOGIN PASSWORD {_literal(PASSWORDS["scram_nfkc"])};
CREATE ROLE clear_user LOGIN PASSWORD {_literal(PASSWORDS["clear_user"])};
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD {_literal(PASSWORDS["md5_user"])};
CREATE ROLE {TRUST_USER} LOGIN;
"""
    # psql sends each statement on its own: CREATE DATABASE cannot be in a transaction.
    return roles + f"CREATE DATABASE {DATABASE} OWNER scram_user;\n"


def start_cluster() -> tuple[PgCluster, Path]:
    """Create and start a cluster: (the cluster, the directory to remove at the end)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _fail(f"initdb and pg_ctl were not found; {INSTALL_HINT}")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _fail("running as root needs `runuser` to start PostgreSQL as the postgres user")
    base = Path(tempfile.mkdtemp(prefix="jitgate-pgcluster-"))
    data = base / "data"
    log = base / "postgres.log"
    if os.geteuid() == 0:
        try:
            shutil.chown(base, "postgres", "postgres")
        except (LookupError, OSError) as exc:
            shutil.rmtree(base, ignore_errors=True)
            _fail(f"as root, the cluster runs as the `postgres` user, which is missing: {exc}")
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust"]
    initdb += ["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
    try:
        _run(_as_owner(initdb), "initdb", base)
        (data / "pg_hba.conf").write_text(HBA)
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(CONF)
        for _ in range(3):  # another process may take the free port first
            port = _free_port()
            pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
            pg_ctl += ["-o", f"-p {port}", "start"]
            if _run(_as_owner(pg_ctl), "pg_ctl start", base, log):
                break
            log.unlink(missing_ok=True)
        else:
            _fail(f"no free port to start on{_log_tail(log)}")
        cluster = PgCluster("127.0.0.1", port, data, bin_dir)
        cluster.psql(_setup_sql())
    except BaseException:
        stop_cluster(bin_dir, data, base)
        raise
    return cluster, base


def stop_cluster(bin_dir: Path, data: Path, base: Path) -> None:
    if (data / "postmaster.pid").exists():
        stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        subprocess.run(_as_owner(stop), cwd=base, capture_output=True, check=False, timeout=60)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A running private cluster with scram_user, scram_nfkc, md5_user, clear_user
    (passwords in ``.passwords``), trust_user and the database ``app``."""
    cluster, base = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster.bin_dir, cluster.data_dir, base)
