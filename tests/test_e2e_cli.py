"""End to end, as people and pipelines use it: a real `jitgate serve` process,
the real `jitgate` command in subprocesses, approvals given by other users
through the REST API.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

JITGATE = [sys.executable, "-m", "jitgate"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    env: dict[str, str]
    tokens: dict[str, str]

    def cli(self, user: str, *args: str, **kw: object) -> subprocess.Popen[str]:
        env = {**self.env, "JITGATE_URL": self.url, "JITGATE_TOKEN": self.tokens[user]}
        return subprocess.Popen(
            [*JITGATE, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,  # type: ignore[call-overload]
        )

    def api(self, user: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            timeout=10,
        )

    def pending_for(self, approver: str, text: str, timeout: float = 20) -> dict[str, object]:
        """The request for ``text`` awaiting ``approver``, waiting for it to appear."""
        deadline = time.monotonic() + timeout
        with self.api(approver) as api:
            while time.monotonic() < deadline:
                page = api.get("/api/v1/requests", params={"awaiting_me": "true"}).json()
                for view in page["requests"]:
                    if view["action"]["text"] == text:
                        return dict(view)
                time.sleep(0.05)
        raise AssertionError(f"no request for {text!r} reached {approver} within {timeout}s")


def admin(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*JITGATE, "admin", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("jitgate-data")
    env = {**os.environ, "JITGATE_DATA_DIR": str(data)}
    env.pop("JITGATE_DB", None)
    admin(env, "user", "add", "ann", "--group", "dev")
    admin(env, "user", "add", "bob", "--group", "approvers")
    admin(env, "user", "add", "carol", "--group", "approvers")
    tokens = {u: admin(env, "token", "create", u, "--quiet") for u in ("ann", "bob", "carol")}
    port = free_port()
    process = subprocess.Popen(
        [*JITGATE, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"jitgate serve did not start: {process.stderr.read()}")
        time.sleep(0.1)
    try:
        yield Server(url, env, tokens)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def finish(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_run_blocks_until_approved_then_runs_exactly_that(server: Server, tmp_path: Path) -> None:
    victim = tmp_path / "cache"
    (victim / "deep").mkdir(parents=True)
    runner = server.cli("ann", "run", "--env", "production", "--", "rm", "-rf", str(victim))
    request = server.pending_for("bob", f"rm -rf {victim}")
    time.sleep(0.3)
    assert runner.poll() is None, "the command waits for approval"
    assert victim.exists(), "nothing ran before the approval"
    with server.api("bob") as bob:
        approved_at = time.monotonic()
        assert bob.post(f"/api/v1/requests/{request['id']}/approve", json={}).status_code == 200
    code, _, err = finish(runner)
    resumed_after = time.monotonic() - approved_at
    assert code == 0, err
    assert not victim.exists()
    assert resumed_after < 1.5, f"resumed {resumed_after:.2f}s after the approval"
    with server.api("ann") as ann:
        final = ann.get(f"/api/v1/requests/{request['id']}").json()
    assert final["status"] == "executed"
    assert final["execution"]["exit_code"] == 0
    assert final["action"]["text"] == f"rm -rf {victim}"


def test_run_reports_a_failing_command_and_exits_with_its_code(
    server: Server, tmp_path: Path
) -> None:
    runner = server.cli(
        "ann", "run", "--env", "production", "--", "sh", "-c", f"rm -rf {tmp_path}/x; exit 7"
    )
    request = server.pending_for("carol", f"sh -c 'rm -rf {tmp_path}/x; exit 7'")
    with server.api("carol") as carol:
        carol.post(f"/api/v1/requests/{request['id']}/approve", json={"comment": "ok"})
    code, _, _ = finish(runner)
    assert code == 7
    with server.api("ann") as ann:
        final = ann.get(f"/api/v1/requests/{request['id']}").json()
    assert final["status"] == "failed"
    assert final["execution"]["exit_code"] == 7


def test_run_denied_never_runs(server: Server, tmp_path: Path) -> None:
    victim = tmp_path / "keep"
    victim.mkdir()
    runner = server.cli("ann", "run", "--env", "production", "--", "rm", "-rf", str(victim))
    request = server.pending_for("bob", f"rm -rf {victim}")
    with server.api("bob") as bob:
        bob.post(f"/api/v1/requests/{request['id']}/deny", json={"reason": "not today"})
    code, _, err = finish(runner)
    assert code == 3
    assert "not today" in err
    assert victim.exists()


def test_harmless_commands_run_without_a_request(server: Server) -> None:
    code, out, _ = finish(server.cli("ann", "run", "--env", "production", "--", "echo", "hi"))
    assert code == 0
    assert out.strip() == "hi"


def test_unreachable_server_means_nothing_runs(server: Server, tmp_path: Path) -> None:
    victim = tmp_path / "keep"
    victim.mkdir()
    env = {
        **server.env,
        "JITGATE_URL": f"http://127.0.0.1:{free_port()}",
        "JITGATE_TOKEN": server.tokens["ann"],
    }
    done = subprocess.run(
        [*JITGATE, "run", "--env", "production", "--", "rm", "-rf", str(victim)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot reach" in done.stderr
    assert victim.exists()
    harmless = subprocess.run(
        [*JITGATE, "run", "--env", "production", "--", "echo", "hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert harmless.returncode == 1, "without the server nothing runs, not even harmless commands"


def test_request_wait_exits_0_when_approved(server: Server) -> None:
    waiter = server.cli("ann", "request", "--env", "prod", "--wait", "DELETE FROM invoices")
    request = server.pending_for("bob", "DELETE FROM invoices")
    with server.api("bob") as bob:
        approved_at = time.monotonic()
        bob.post(f"/api/v1/requests/{request['id']}/approve", json={})
    code, _, err = finish(waiter)
    assert code == 0, err
    assert time.monotonic() - approved_at < 1.5
    with server.api("ann") as ann:
        final = ann.get(f"/api/v1/requests/{request['id']}").json()
    assert final["status"] == "executing", "the pipeline consumed its single-use grant"


def test_request_wait_exits_3_when_denied_and_4_on_timeout(server: Server) -> None:
    waiter = server.cli("ann", "request", "--env", "prod", "--wait", "TRUNCATE invoices")
    request = server.pending_for("bob", "TRUNCATE invoices")
    with server.api("bob") as bob:
        bob.post(f"/api/v1/requests/{request['id']}/deny", json={"reason": "wrong table"})
    assert finish(waiter)[0] == 3
    waiter = server.cli(
        "ann", "request", "--env", "prod", "--wait", "--timeout", "1", "DROP TABLE invoices"
    )
    code, _, err = finish(waiter)
    assert code == 4, err
    assert "timed out" in err


def test_request_without_approval_needed_exits_0(server: Server) -> None:
    code, out, _ = finish(
        server.cli("ann", "request", "--env", "prod", "--wait", "--json", "SELECT 1")
    )
    assert code == 0
    assert '"decision": "allow"' in out


def test_self_approval_is_refused_through_the_cli(server: Server) -> None:
    waiter = server.cli("ann", "request", "--env", "prod", "DELETE FROM t")
    assert finish(waiter)[0] == 0
    request = server.pending_for("bob", "DELETE FROM t")
    approve = server.cli("ann", "approve", str(request["id"]))
    code, _, err = finish(approve)
    assert code == 1
    assert "self_approval" in err


def test_run_keeps_a_signed_receipt_of_exactly_what_ran(server: Server, tmp_path: Path) -> None:
    import hashlib
    import json
    import shlex
    import sqlite3

    from jitgate.actions.model import Action, fingerprint

    victim = tmp_path / "scratch"
    victim.mkdir()
    kept = tmp_path / "receipt.json"
    command = ["rm", "-rf", str(victim)]
    text = shlex.join(command)
    runner = server.cli(
        "ann", "run", "--env", "production", "--receipt", str(kept), "--", *command
    )
    request = server.pending_for("bob", text)
    assert not kept.exists(), "no receipt before the approval"
    with server.api("bob") as bob:
        bob.post(f"/api/v1/requests/{request['id']}/approve", json={"comment": "go"})
    code, _, err = finish(runner)
    assert code == 0, err
    assert not victim.exists()

    doc = json.loads(kept.read_bytes())
    assert doc["request_id"] == request["id"]
    ran = Action.create("shell", text, environment="production")
    assert doc["fingerprint"] == fingerprint(ran) == request["fingerprint"]
    assert [a["approver"] for a in doc["approvals"]] == ["bob"]

    # offline, with the server's key from the data directory (JITGATE_DATA_DIR)
    verify = server.cli("ann", "receipt", "verify", str(kept), "-k", "shell", "-e", "prod", text)
    code, out, err = finish(verify)
    assert code == 0, err
    assert "bob (stage approvers" in out
    # ... and with the exported public key; not for another command
    public = tmp_path / "server.pem"
    assert finish(server.cli("carol", "receipt", "public-key", "--output", str(public)))[0] == 0
    other = server.cli(
        "ann", "receipt", "verify", str(kept), "--public-key", str(public),
        "-k", "shell", "-e", "prod", "rm -rf /",
    )
    code, _, err = finish(other)
    assert code == 1
    assert "action_mismatch" in err

    # fetched again: the same bytes; its digest is in the execution.finished event
    code, out, err = finish(server.cli("ann", "receipt", "get", str(request["id"])))
    assert code == 0, err
    assert out.encode() == kept.read_bytes() + b"\n"
    digest = hashlib.sha256(kept.read_bytes()).hexdigest()
    database = Path(server.env["JITGATE_DATA_DIR"]) / "jitgate.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        (payload,) = db.execute(
            "SELECT payload FROM events WHERE request_id = ? AND type = 'execution.finished'",
            (request["id"],),
        ).fetchone()
    assert json.loads(payload)["receipt_sha256"] == digest
