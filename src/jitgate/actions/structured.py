"""Analyzers for the structured kinds: deployments, AI-agent tool calls, HTTP
requests and custom actions.

Their payloads are small JSON objects. Where a payload carries SQL or a command
line (an agent's ``run_sql`` or ``shell`` tool), that text goes through the SQL
or shell analyzer, so an agent cannot launder a ``DROP TABLE`` through a tool.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jitgate.actions.findings import Analysis, Finding, Unit, excerpt
from jitgate.actions.sql import analyze_sql

#: Verbs that make an operation destructive or disruptive when they appear as a
#: word of a tool or operation name (``delete_user``, ``cancelWorkflow``).
DESTRUCTIVE_VERBS = frozenset(
    {
        "delete",
        "del",
        "drop",
        "remove",
        "rm",
        "destroy",
        "kill",
        "terminate",
        "truncate",
        "wipe",
        "purge",
        "reset",
        "revoke",
        "erase",
        "shutdown",
        "uninstall",
        "overwrite",
        "cancel",
        "abort",
        "disable",
        "detach",
        "evict",
        "flush",
        "format",
        "deprovision",
        "decommission",
        "rollback",
        "force",
        "nuke",
        "clear",
        "unpublish",
        "deactivate",
    }
)

#: Argument names whose string value is SQL, or a command line.
SQL_ARGUMENTS = frozenset({"sql", "query", "statement", "statements"})
COMMAND_ARGUMENTS = frozenset({"command", "cmd", "script", "shell", "commandline", "command_line"})

_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def name_words(name: str) -> list[str]:
    """Split ``cancelWorkflow``, ``delete-user``, ``db.drop_table`` into words."""
    return [w.lower() for w in _WORD.findall(name)]


def _destructive_verbs(name: str) -> list[str]:
    return [w for w in name_words(name) if w in DESTRUCTIVE_VERBS]


def _invalid(message: str) -> Analysis:
    return Analysis.of((Unit(0, "invalid", ""),), (Finding.of("action.invalid", message),))


def _text_arguments(arguments: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(name, value) of every string argument, nested objects included."""
    stack: list[tuple[str, Any]] = list(arguments.items())
    while stack:
        name, value = stack.pop()
        if isinstance(value, str):
            yield name, value
        elif isinstance(value, Mapping):
            stack.extend(value.items())
        elif isinstance(value, list):
            stack.extend((name, v) for v in value)


def _embedded(label: str, analysis: Analysis, unit: int, text: str) -> list[Finding]:
    return [
        Finding.of(
            f.code,
            f"{label}: {f.message}",
            unit=unit,
            excerpt=excerpt(text),
            subject=f.subject,
            risk=f.risk,
        )
        for f in analysis.findings
    ]


def analyze_tool_call(payload: Mapping[str, Any]) -> Analysis:
    tool = payload.get("tool", payload.get("name"))
    arguments = payload.get("arguments", {})
    if not isinstance(tool, str) or not tool.strip():
        return _invalid("a tool call needs the tool's name in payload.tool")
    if not isinstance(arguments, Mapping):
        return _invalid("a tool call's payload.arguments must be an object")
    unit = Unit(0, f"tool {tool}", tool)
    findings: list[Finding] = []
    verbs = _destructive_verbs(tool)
    if verbs:
        findings.append(
            Finding.of(
                "tool.destructive",
                f"tool {tool!r} is destructive ({', '.join(verbs)})",
                excerpt=excerpt(tool),
                subject=tool,
            )
        )
    for name, value in _text_arguments(arguments):
        key = name.lower()
        if key in SQL_ARGUMENTS:
            findings += _embedded(f"{tool}.{name}", analyze_sql(value), 0, value)
        elif key in COMMAND_ARGUMENTS:
            from jitgate.actions.shell import analyze_shell  # loaded on first use

            findings += _embedded(f"{tool}.{name}", analyze_shell(value), 0, value)
    if not findings:
        findings.append(Finding.of("tool.call", f"tool {tool!r} called", subject=tool))
    return Analysis.of((unit,), tuple(findings))


def analyze_deploy(payload: Mapping[str, Any]) -> Analysis:
    service = payload.get("service")
    if not isinstance(service, str) or not service.strip():
        return _invalid("a deployment needs the service name in payload.service")
    operation = str(payload.get("operation", "release")).lower()
    replicas = payload.get("replicas")
    unit = Unit(0, f"deploy {operation}", service)
    if operation in {"destroy", "delete", "teardown", "uninstall"} or replicas == 0:
        finding = Finding.of(
            "deploy.scale_down", f"{service} is torn down or scaled to zero", subject=service
        )
    elif operation == "rollback":
        finding = Finding.of("deploy.rollback", f"{service} is rolled back", subject=service)
    else:
        version = payload.get("version") or payload.get("image") or "a new version"
        finding = Finding.of(
            "deploy.release", f"{service} is deployed at {version}", subject=service
        )
    return Analysis.of((unit,), (finding,))


def analyze_http(payload: Mapping[str, Any]) -> Analysis:
    method = payload.get("method")
    url = payload.get("url", "")
    if not isinstance(method, str) or not isinstance(url, str):
        return _invalid("an HTTP action needs payload.method and payload.url as strings")
    method = method.upper()
    unit = Unit(0, f"http {method.lower()}", f"{method} {url}")
    if method == "DELETE":
        findings: tuple[Finding, ...] = (
            Finding.of("http.delete", f"DELETE {url}", excerpt=excerpt(url), subject=url),
        )
    elif method in {"POST", "PUT", "PATCH"}:
        findings = (Finding.of("http.write", f"{method} {url}", excerpt=excerpt(url), subject=url),)
    elif method in {"GET", "HEAD", "OPTIONS"}:
        findings = ()
    else:
        return _invalid(f"unknown HTTP method {method!r}")
    return Analysis.of((unit,), findings)


def analyze_custom(payload: Mapping[str, Any]) -> Analysis:
    """Custom actions are described by an ``operation`` name; policies match
    them on attributes and conditions, the analyzer only reads the verb."""
    operation = payload.get("operation", "")
    if not isinstance(operation, str):
        return _invalid("a custom action's payload.operation must be a string")
    unit = Unit(0, "custom", operation)
    verbs = _destructive_verbs(operation)
    if not verbs:
        return Analysis.of((unit,), ())
    finding = Finding.of(
        "custom.destructive",
        f"operation {operation!r} is destructive ({', '.join(verbs)})",
        excerpt=excerpt(operation),
        subject=operation,
    )
    return Analysis.of((unit,), (finding,))


STRUCTURED_ANALYZERS: Mapping[str, Callable[[Mapping[str, Any]], Analysis]] = {
    "tool_call": analyze_tool_call,
    "deploy": analyze_deploy,
    "http": analyze_http,
    "custom": analyze_custom,
}
