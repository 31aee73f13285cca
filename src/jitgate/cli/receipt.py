"""``jitgate receipt``: fetch signed approval receipts, verify them offline.

``get`` and ``public-key`` ask the server; ``verify`` needs nothing but the
receipt file and the server's public key (docs/receipts.md). ``jitgate run``
keeps the receipt of what it runs through :func:`keep_receipt`.

Exit codes of ``verify``: 0 valid; 1 not valid (malformed, unknown key, bad
signature, for another action); 2 bad input (unreadable file, no key).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from jitgate.actions.model import Action, InvalidAction
from jitgate.audit.chain import canonical_bytes
from jitgate.audit.keys import DEFAULT_KEY_FILENAME, KeyFileError, TrustedKeys, VerifyKey
from jitgate.audit.receipts import (
    ReceiptError,
    receipt_digest,
    receipt_problem,
    verify_receipt,
)
from jitgate.cli.common import EXIT_ERROR, EXIT_USAGE, data_dir, dump_json, err_console, fail
from jitgate.cli.options import Json, Token, Url
from jitgate.cli.requests import client_call
from jitgate.client import ApiError, Client, ClientError, View

app = typer.Typer(
    help="Signed approval receipts: fetch one, verify one offline.", no_args_is_help=True
)

#: ``verify``: the receipt is not valid (or not for the given action).
EXIT_INVALID = EXIT_ERROR

PublicKeys = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        help="Trusted public key (PEM, from `jitgate receipt public-key`); repeat for "
        "several. Default: the key in the data directory, if there is one.",
        show_default=False,
    ),
]
Output = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write to this file instead of stdout.", show_default=False
    ),
]


# --- fetching ---------------------------------------------------------------------


def receipt_bytes(doc: Mapping[str, Any]) -> bytes:
    """The receipt as stored: its RFC 8785 bytes (``sha256`` of them is its digest)."""
    try:
        return canonical_bytes(doc)
    except (ValueError, TypeError) as exc:
        fail(f"the server sent a receipt that is not canonical JSON: {exc}", EXIT_ERROR)


def write_file(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_ERROR)


@app.command("get")
def get_command(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    output: Output = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Fetch the signed receipt of an approved request."""
    with Client(url, token) as client:
        doc = client_call(lambda: client.receipt(request_id))
    data = receipt_bytes(doc)
    if output is None:
        sys.stdout.write(data.decode("utf-8") + "\n")
        return
    write_file(output, data)
    err_console.print(
        f"receipt of {escape(request_id)} written to {escape(str(output))} "
        f"(sha256 {receipt_digest(doc)})",
        highlight=False,
    )


@app.command("public-key")
def public_key_command(output: Output = None, url: Url = None, token: Token = None) -> None:
    """Fetch the server's public key (PEM), to verify receipts offline."""
    with Client(url, token) as client:
        answer = client_call(client.public_key)
    pem = answer.get("pem")
    try:
        key = VerifyKey.from_pem(pem if isinstance(pem, str) else "")
    except KeyFileError as exc:
        fail(f"the server sent no usable public key: {exc}", EXIT_ERROR)
    if output is None:
        sys.stdout.write(key.pem())
        return
    write_file(output, key.pem().encode("ascii"))
    err_console.print(f"public key {key.key_id} written to {escape(str(output))}", highlight=False)


def keep_receipt(
    client: Client, view: View, action_body: Mapping[str, Any], path: Path | None
) -> str | None:
    """For ``jitgate run``: the receipt of the approved request ``view``, which
    must be for exactly the action about to run (``action_body``, as
    submitted); written to ``path`` if given. Its digest, or None when the
    server issues no receipts and none was asked for. Any other failure stops
    the run (exit 1): the command must not run without the receipt asked for."""
    request_id = str(view["id"])
    try:
        doc = client.receipt(request_id)
    except ApiError as error:
        if path is None and (error.code == "receipts_unavailable" or error.status == 404):
            err_console.print(f"[yellow]warning:[/] no receipt: {escape(error.message)}")
            return None
        fail(
            f"cannot get the receipt of {request_id}: {error.message} [{error.code}]; not run",
            EXIT_ERROR,
        )
    except ClientError as error:
        fail(f"cannot get the receipt of {request_id}: {error}; not run", EXIT_ERROR)
    problem = receipt_problem(doc)
    if problem is not None:
        fail(f"the receipt of {request_id} is malformed: {problem}; not run", EXIT_ERROR)
    try:
        expected = Action.from_record(dict(action_body)).fingerprint()
    except InvalidAction as exc:
        fail(f"{exc}; not run", EXIT_ERROR)
    if doc["request_id"] != request_id or doc["fingerprint"] != expected:
        fail(f"the receipt of {request_id} is for another action; not run", EXIT_ERROR)
    data = receipt_bytes(doc)
    if path is not None:
        write_file(path, data)
    try:
        return receipt_digest(doc)
    except ReceiptError as exc:
        fail(f"{exc.message}; not run", EXIT_ERROR)


# --- verifying --------------------------------------------------------------------


def trusted_keys(paths: list[Path] | None) -> TrustedKeys:
    """The keys ``verify`` trusts: ``--public-key`` files, else the data directory's key."""
    if not paths:
        default = data_dir() / DEFAULT_KEY_FILENAME
        if not default.exists():
            fail(
                f"no public key to verify with: pass --public-key FILE (`jitgate receipt "
                f"public-key` fetches the server's); {default} does not exist",
                EXIT_USAGE,
            )
        paths = [default]
    keys: list[VerifyKey] = []
    for path in paths:
        try:
            keys.append(VerifyKey.load(path))
        except KeyFileError as exc:
            fail(str(exc), EXIT_USAGE)
    return TrustedKeys(keys)


def read_receipt(file: Path) -> Any:
    """The JSON in ``file`` (``-``: stdin); None when it is not JSON (malformed)."""
    try:
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def given_action(
    text: str | None, kind: str | None, env: str | None, target: str | None
) -> Action | None:
    if text is None:
        if kind is not None or env is not None or target is not None:
            fail("give the action's TEXT (or JSON payload) to check the receipt against")
        return None
    record: dict[str, Any] = {"kind": kind or "sql", "env": env or "", "target": target or ""}
    if record["kind"] in {"sql", "shell"}:
        record["text"] = text
    else:
        try:
            record["payload"] = json.loads(text)
        except json.JSONDecodeError as exc:
            fail(f"a {record['kind']} action takes a JSON payload: {exc}")
    try:
        return Action.from_record(record)
    except InvalidAction as exc:
        fail(str(exc))


@app.command("verify")
def verify_command(
    file: Annotated[Path, typer.Argument(help="The receipt (JSON); '-' reads stdin.")],
    text: Annotated[
        str | None,
        typer.Argument(
            help="Also check that the receipt is for this action: statement, command "
            "line, or JSON payload for other kinds.",
            show_default=False,
        ),
    ] = None,
    public_key: PublicKeys = None,
    kind: Annotated[
        str | None, typer.Option("--kind", "-k", help="The action's kind (default sql).")
    ] = None,
    env: Annotated[str | None, typer.Option("--env", "-e")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t")] = None,
    as_json: Json = False,
) -> None:
    """Verify a receipt offline. Exit 0 if it is valid (and for the given
    action), 1 if not, 2 on bad input."""
    action = given_action(text, kind, env, target)
    trusted = trusted_keys(public_key)
    doc = read_receipt(file)
    check = verify_receipt(doc, trusted, action=action)
    if as_json:
        result: dict[str, Any] = {
            "valid": check.ok,
            "reason": check.reason,
            "message": check.message,
            "key_id": check.key_id,
        }
        if check.ok:
            result |= {"request_id": doc["request_id"], "fingerprint": doc["fingerprint"]}
        sys.stdout.write(dump_json(result) + "\n")
        if not check.ok:
            raise typer.Exit(EXIT_INVALID)
        return
    if not check.ok:
        hint = ""
        if check.reason == "action_mismatch":
            signed = doc["action"]
            hint = (
                f" (the receipt is for a {signed['kind']} action on "
                f"{signed['environment'] or '-'} / {signed['target'] or '-'})"
            )
        fail(f"receipt not valid ({check.reason}): {check.message}{hint}", EXIT_INVALID)
    for line in summary(doc, check.key_id, checked=action is not None):
        sys.stdout.write(line + "\n")


def summary(doc: Mapping[str, Any], key_id: str | None, *, checked: bool) -> list[str]:
    """What a valid receipt says, one fact a line."""
    action = doc["action"]
    what = action["text"] if action["kind"] in {"sql", "shell"} else json.dumps(action["payload"])
    requester = doc["requester"]
    lines = [
        f"valid receipt {doc['request_id']}, signed by key {key_id}",
        f"  action:      {action['kind']} · {action['environment'] or '-'} · "
        f"{action['target'] or '-'}",
        f"               {what}",
        f"  fingerprint: {doc['fingerprint']}"
        + ("  (matches the given action)" if checked else ""),
        f"  requester:   {requester['user']}",
        f"  requested:   {doc['created_at']}",
        f"  approved:    {doc['approved_at']}",
    ]
    for approval in doc["approvals"]:
        mfa = ", MFA" if approval["mfa_verified"] else ""
        group = f" as {approval['group']}" if approval["group"] else ""
        comment = f": {approval['comment']}" if approval["comment"] else ""
        lines.append(
            f"  approval:    {approval['approver']} (stage {approval['stage']}{group}{mfa}) "
            f"at {approval['at']}{comment}"
        )
    if doc["break_glass"]:
        lines.append(f"  break-glass: {doc['break_glass_justification']}")
    grant = doc["grant"]
    lines.append(f"  grant:       {grant['scope']}, valid until {grant['expires_at']}")
    return [_printable(line) for line in lines]


def _printable(text: str) -> str:
    """No terminal control characters from a (signed, but foreign) document."""
    return "".join(c if c.isprintable() or c == " " else "\ufffd" for c in text)
