"""The command line, as a user and a pipeline use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jitgate.cli import app

runner = CliRunner()


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_evaluate_json_has_the_documented_fields() -> None:
    code, out, _ = run("evaluate", "--env", "prod", "--json", "DELETE FROM invoices")
    assert code == 0
    result = json.loads(out)
    assert result["decision"] == "require_approval"
    assert result["risk"] == "high"
    assert result["rules"]
    assert any("invoices" in reason for reason in result["reasons"])
    assert result["fingerprint"].startswith("sha256:")
    assert [s["groups"] for s in result["chain"]["stages"]] == [["approvers"]]


def test_evaluate_human_output_names_the_statement() -> None:
    code, out, _ = run("evaluate", "-e", "production", "SELECT 1; TRUNCATE invoices")
    assert code == 0
    assert "REQUIRE APPROVAL" in out
    assert "TRUNCATE invoices" in out
    assert "approvers" in out


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (["--check", "-e", "prod", "SELECT 1"], 0),
        (["--check", "-e", "prod", "DROP TABLE invoices"], 5),
        (["--check", "-e", "staging", "DROP TABLE invoices"], 0),
    ],
)
def test_check_exit_codes_gate_pipelines(args: list[str], exit_code: int) -> None:
    assert run("evaluate", *args)[0] == exit_code


def test_evaluate_reads_standard_input() -> None:
    code, out, _ = run(
        "evaluate", "--kind", "shell", "-e", "prod", "--json", "-", stdin="rm -rf /var/lib/mysql\n"
    )
    assert code == 0
    assert json.loads(out)["decision"] == "require_approval"


def test_structured_kind_takes_a_json_payload() -> None:
    payload = json.dumps({"tool": "drop_database", "arguments": {"name": "main"}})
    code, out, _ = run("evaluate", "--kind", "tool_call", "-e", "prod", "--json", payload)
    assert code == 0
    assert json.loads(out)["decision"] == "require_approval"
    code, _, err = run("evaluate", "--kind", "tool_call", "not json")
    assert code == 2
    assert "JSON payload" in err


def test_bad_kind_is_a_clear_error() -> None:
    code, _, err = run("evaluate", "--kind", "sqll", "SELECT 1")
    assert code == 2
    assert "unknown action kind 'sqll'" in err


def test_batch_answers_line_for_line_and_survives_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"kind": "sql", "text": "DELETE FROM invoices", "env": "production"}),
        "{not json",
        json.dumps(
            {
                "kind": "sql",
                "text": "SELECT 1",
                "env": "production",
                "user": "ann",
                "groups": ["dev"],
                "target": "db",
            }
        ),
        json.dumps({"kind": "shell", "text": "ls", "env": "prod", "colour": "red"}),
        "",
        json.dumps({"kind": "shell", "text": "terraform destroy", "env": "prod"}),
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, _ = run("evaluate", "--batch", str(batch))
    assert code == 0
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == len(lines)
    assert [r["line"] for r in results] == list(range(1, len(lines) + 1))
    assert results[0]["decision"] == "require_approval"
    assert results[1]["error"]["code"] == "invalid_action"
    assert results[2]["decision"] == "allow"
    assert "unknown field" in results[3]["error"]["message"]
    assert "error" in results[4]
    assert results[5]["decision"] == "require_approval"


def test_batch_from_stdin_with_check_exits_on_the_worst() -> None:
    stdin = json.dumps({"kind": "sql", "text": "SELECT 1", "env": "prod"}) + "\n"
    assert run("evaluate", "--batch", "-", "--check", stdin=stdin)[0] == 0
    stdin += json.dumps({"kind": "sql", "text": "DROP TABLE x", "env": "prod"}) + "\n"
    assert run("evaluate", "--batch", "-", "--check", stdin=stdin)[0] == 5


def test_missing_batch_file_and_missing_text() -> None:
    code, _, err = run("evaluate", "--batch", "/nonexistent/x.jsonl")
    assert code == 2
    assert "cannot read" in err
    code, _, err = run("evaluate")
    assert code == 2
    assert "missing TEXT" in err


def test_invalid_policy_file_is_reported_with_line(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("version: 1\nrules:\n  - id: r1\n    outcome: maybe\n", encoding="utf-8")
    code, _, err = run("evaluate", "--policy", str(policy), "SELECT 1")
    assert code == 2
    assert "bad.yaml:" in err
    assert "Traceback" not in err


def test_policy_default_round_trips_through_check(tmp_path: Path) -> None:
    code, out, _ = run("policy", "default")
    assert code == 0
    copy = tmp_path / "catalog.yaml"
    copy.write_text(out, encoding="utf-8")
    code, out, _ = run("policy", "check", str(copy))
    assert code == 0
    assert "ok" in out


def test_policy_codes_lists_the_vocabulary() -> None:
    code, out, _ = run("policy", "codes")
    assert code == 0
    assert "sql.delete_without_where" in out
    assert "shell.rm_recursive" in out


@pytest.mark.parametrize(
    "stdin",
    [
        "",
        "\x00\x01\x02\xff binary",
        "SELECT " + "(" * 50_000 + "1" + ")" * 50_000,
    ],
)
def test_the_installed_command_never_prints_a_traceback(stdin: str) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "jitgate", "evaluate", "-e", "prod", "--json", "-"],
        input=stdin.encode("utf-8", "surrogateescape"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert b"Traceback" not in process.stderr
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout)["decision"] != "allow"


def test_error_messages_are_plain_text_not_markup(tmp_path: Path) -> None:
    # A path like "cases[/x].yaml" once raised rich's MarkupError (a traceback).
    missing = tmp_path / "cases[" / "x].yaml"
    code, _, err = run("policy", "test", "examples/policy.yaml", str(missing))
    assert code == 2
    assert "cannot read" in err
    assert "Traceback" not in err
