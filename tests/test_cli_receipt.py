"""``jitgate receipt verify``: offline verification and its exit codes.

0 valid (with a summary), 1 not valid (malformed, unknown key, bad
signature, for another action), 2 bad input (no key, unreadable file).
Fetching (``receipt get``, ``run --receipt``) is tested end to end in
tests/test_e2e_cli.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jitgate.approvals import break_glass
from jitgate.audit.chain import canonical_bytes
from jitgate.audit.keys import DEFAULT_KEY_FILENAME, SigningKey
from jitgate.audit.receipts import sign_receipt
from jitgate.cli import app
from test_audit_receipts import ANN, KEY, MINUTE, OTHER_KEY, T0, new_request, signed

runner = CliRunner()

TEXT = "DELETE FROM users WHERE id = 1"


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A receipt, the server's public key and another key; an empty data directory."""
    monkeypatch.setenv("JITGATE_DATA_DIR", str(tmp_path / "data"))
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(canonical_bytes(signed()))
    public = tmp_path / "server.pem"
    public.write_text(KEY.verify_key.pem())
    other = tmp_path / "other.pem"
    other.write_text(OTHER_KEY.verify_key.pem())
    return {"receipt": receipt, "public": public, "other": other, "dir": tmp_path}


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_a_valid_receipt_exits_0_with_a_summary(files: dict[str, Path]) -> None:
    code, out, err = run(
        "receipt", "verify", str(files["receipt"]), "--public-key", str(files["public"])
    )
    assert code == 0, err
    assert out.startswith("valid receipt req_1, signed by key " + KEY.key_id)
    assert TEXT in out
    assert "requester:   ann" in out
    assert "bob (stage dba as dba)" in out
    assert "carol (stage security as dba, MFA)" in out
    assert "approved:    2025-01-06T09:03:00.000000+00:00" in out


def test_it_checks_the_action_when_given(files: dict[str, Path]) -> None:
    key = ("--public-key", str(files["public"]))
    receipt = str(files["receipt"])
    code, out, err = run("receipt", "verify", receipt, *key, "--env", "prod", "-t", "db-main", TEXT)
    assert code == 0, err
    assert "matches the given action" in out
    code, _, err = run(
        "receipt", "verify", receipt, *key, "--env", "prod", "-t", "db-main", "DELETE FROM users"
    )
    assert code == 1
    assert "action_mismatch" in err
    assert "production / db-main" in err, "says what the receipt is for"
    code, _, err = run(
        "receipt", "verify", receipt, *key, "--env", "staging", "-t", "db-main", TEXT
    )
    assert code == 1
    code, _, err = run("receipt", "verify", receipt, *key, "--kind", "shell", "-e", "prod", TEXT)
    assert code == 1
    assert "action_mismatch" in err


def test_tampered_unknown_and_malformed_receipts_exit_1(files: dict[str, Path]) -> None:
    key = ("--public-key", str(files["public"]))
    doc = json.loads(files["receipt"].read_text())
    tampered = copy.deepcopy(doc)
    tampered["approvals"][0]["approver"] = "mallory"
    path = write(files["dir"] / "tampered.json", tampered)
    code, _, err = run("receipt", "verify", str(path), *key)
    assert (code, "bad_signature" in err) == (1, True), err

    code, _, err = run(
        "receipt", "verify", str(files["receipt"]), "--public-key", str(files["other"])
    )
    assert (code, "unknown_key" in err) == (1, True), err

    garbage = files["dir"] / "garbage.json"
    garbage.write_text("not json {")
    code, _, err = run("receipt", "verify", str(garbage), *key)
    assert (code, "malformed" in err) == (1, True), err

    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    code, _, err = run("receipt", "verify", str(write(garbage, unsigned)), *key)
    assert (code, "malformed" in err) == (1, True), err


def test_several_keys_may_be_trusted(files: dict[str, Path]) -> None:
    other_signed = write(files["dir"] / "other.json", sign_receipt(signed(), OTHER_KEY))
    keys = ("--public-key", str(files["public"]), "--public-key", str(files["other"]))
    assert run("receipt", "verify", str(other_signed), *keys)[0] == 0
    assert run("receipt", "verify", str(files["receipt"]), *keys)[0] == 0


def test_json_output(files: dict[str, Path]) -> None:
    code, out, _ = run(
        "receipt", "verify", str(files["receipt"]), "--public-key", str(files["public"]), "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["valid"] is True
    assert result["request_id"] == "req_1"
    assert result["key_id"] == KEY.key_id
    code, out, _ = run(
        "receipt", "verify", str(files["receipt"]), "--public-key", str(files["other"]), "--json"
    )
    assert code == 1
    assert json.loads(out)["reason"] == "unknown_key"


def test_stdin(files: dict[str, Path]) -> None:
    code, _, err = run(
        "receipt",
        "verify",
        "-",
        "--public-key",
        str(files["public"]),
        stdin=files["receipt"].read_text(),
    )
    assert code == 0, err


def test_without_a_key_it_uses_the_data_directory_or_asks(files: dict[str, Path]) -> None:
    code, _, err = run("receipt", "verify", str(files["receipt"]))
    assert code == 2
    assert "--public-key" in err
    data = files["dir"] / "data"
    data.mkdir()
    (data / DEFAULT_KEY_FILENAME).write_bytes(KEY.pem())  # the server's own key file
    code, out, err = run("receipt", "verify", str(files["receipt"]))
    assert code == 0, err
    assert out.startswith("valid receipt")


def test_bad_input_exits_2(files: dict[str, Path]) -> None:
    key = ("--public-key", str(files["public"]))
    assert run("receipt", "verify", str(files["dir"] / "missing.json"), *key)[0] == 2
    code, _, err = run(
        "receipt", "verify", str(files["receipt"]), "--public-key", str(files["receipt"])
    )
    assert code == 2
    assert "PEM" in err
    code, _, err = run("receipt", "verify", str(files["receipt"]), *key, "--env", "prod")
    assert code == 2
    assert "TEXT" in err
    code, _, _ = run("receipt", "verify", str(files["receipt"]), *key, "--kind", "nope", TEXT)
    assert code == 2


def test_break_glass_is_shown(files: dict[str, Path]) -> None:
    req, _ = break_glass(
        new_request(), ANN, "the site is down, no time", T0 + MINUTE, mfa_verified=True
    )
    path = write(files["dir"] / "glass.json", sign_receipt(signed(req), KEY))
    code, out, err = run("receipt", "verify", str(path), "--public-key", str(files["public"]))
    assert code == 0, err
    assert "break-glass: the site is down, no time" in out


def test_another_signing_key_file_is_also_accepted(files: dict[str, Path]) -> None:
    private = files["dir"] / "private.pem"
    SigningKey.save(KEY, private)
    code, _, err = run("receipt", "verify", str(files["receipt"]), "--public-key", str(private))
    assert code == 0, err
