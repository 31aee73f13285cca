"""Analyzers for deployments, agent tool calls, HTTP requests, custom actions."""

from __future__ import annotations

import pytest

from jitgate.actions import Action, analyze
from jitgate.actions.findings import FINDING_CODES
from jitgate.actions.structured import name_words


def codes(kind: str, payload: dict[str, object]) -> set[str]:
    analysis = analyze(Action.create(kind, payload=payload))
    assert all(f.code in FINDING_CODES for f in analysis.findings)
    return set(analysis.codes)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("cancelWorkflow", ["cancel", "workflow"]),
        ("delete-user", ["delete", "user"]),
        ("db.drop_table", ["db", "drop", "table"]),
        ("HTTPDelete", ["http", "delete"]),
    ],
)
def test_name_words(name: str, words: list[str]) -> None:
    assert name_words(name) == words


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"tool": "delete_user", "arguments": {"id": 4}}, {"tool.destructive"}),
        ({"tool": "cancelWorkflow", "arguments": {}}, {"tool.destructive"}),
        ({"tool": "search_docs", "arguments": {"q": "how to drop a table"}}, {"tool.call"}),
        ({"name": "list_files"}, {"tool.call"}),
        (
            {"tool": "run_sql", "arguments": {"query": "DELETE FROM invoices"}},
            {"sql.delete_without_where"},
        ),
        ({"tool": "run_sql", "arguments": {"query": "SELECT 1"}}, {"tool.call"}),
        (
            {"tool": "execute", "arguments": {"options": {"command": "rm -rf /var/lib/mysql"}}},
            {"shell.rm_recursive"},
        ),
        (
            {"tool": "run", "arguments": {"command": ["ls", "terraform destroy"]}},
            {"shell.terraform_destroy"},
        ),
        ({"arguments": {}}, {"action.invalid"}),
        ({"tool": "x", "arguments": "rm -rf /"}, {"action.invalid"}),
    ],
)
def test_tool_calls(payload: dict[str, object], expected: set[str]) -> None:
    assert expected <= codes("tool_call", payload)


def test_tool_call_text_in_harmless_argument_names_is_not_analyzed() -> None:
    assert codes("tool_call", {"tool": "note", "arguments": {"body": "DELETE FROM x"}}) == {
        "tool.call"
    }


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"service": "api", "version": "1.2.3"}, {"deploy.release"}),
        ({"service": "api", "operation": "rollback"}, {"deploy.rollback"}),
        ({"service": "api", "replicas": 0}, {"deploy.scale_down"}),
        ({"service": "api", "operation": "destroy"}, {"deploy.scale_down"}),
        ({"version": "1"}, {"action.invalid"}),
    ],
)
def test_deploys(payload: dict[str, object], expected: set[str]) -> None:
    assert codes("deploy", payload) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"method": "delete", "url": "https://api/users/1"}, {"http.delete"}),
        ({"method": "POST", "url": "/x"}, {"http.write"}),
        ({"method": "GET", "url": "/x"}, set()),
        ({"method": "BREW", "url": "/x"}, {"action.invalid"}),
        ({"url": "/x"}, {"action.invalid"}),
    ],
)
def test_http(payload: dict[str, object], expected: set[str]) -> None:
    assert codes("http", payload) == expected


def test_custom_reads_the_operation_verb() -> None:
    assert codes("custom", {"operation": "cancel_billing_run"}) == {"custom.destructive"}
    assert codes("custom", {"operation": "export_report"}) == set()
    assert codes("custom", {"operation": 3}) == {"action.invalid"}
