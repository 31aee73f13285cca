"""Dangerous calls and run-time parameters in SQL.

Function names are matched on the parsed name, never on text: the parser
folds unquoted names to lower case and keeps quoted ones as written, so
``PG_TERMINATE_BACKEND(1)`` is the server function and
``"PG_TERMINATE_BACKEND"(1)`` is some other, user-defined one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from jitgate.actions.findings import Risk
from jitgate.actions.sqlcontext import Context
from jitgate.actions.sqlnames import Node, name_parts

#: Function name -> (finding code, what calling it does). ``set_config`` is
#: judged on its arguments.
_DANGEROUS_FUNCTIONS: Final[Mapping[str, tuple[str, str]]] = {
    "pg_terminate_backend": ("sql.dangerous_function", "terminates a server session"),
    "pg_cancel_backend": ("sql.dangerous_function", "cancels another session's query"),
    "pg_reload_conf": ("sql.dangerous_function", "reloads the server configuration"),
    "pg_rotate_logfile": ("sql.dangerous_function", "rotates the server log file"),
    "pg_promote": ("sql.dangerous_function", "promotes a standby server to primary"),
    **dict.fromkeys(
        ("pg_switch_wal", "pg_switch_xlog"),
        ("sql.dangerous_function", "forces a switch to a new WAL file"),
    ),
    **dict.fromkeys(
        ("pg_wal_replay_pause", "pg_wal_replay_resume"),
        ("sql.dangerous_function", "pauses or resumes recovery on a standby"),
    ),
    **dict.fromkeys(
        (
            "pg_drop_replication_slot",
            "pg_create_logical_replication_slot",
            "pg_create_physical_replication_slot",
            "pg_replication_slot_advance",
        ),
        ("sql.dangerous_function", "manages a replication slot (slots retain WAL)"),
    ),
    **dict.fromkeys(
        ("pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_ls_dir"),
        ("sql.dangerous_function", "reads files on the database server"),
    ),
    **dict.fromkeys(
        ("pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync"),
        ("sql.dangerous_function", "writes files on the database server"),
    ),
    "lo_import": ("sql.dangerous_function", "reads a server file into a large object"),
    "lo_export": ("sql.dangerous_function", "writes a large object to a server file"),
    "lo_unlink": ("sql.dangerous_function", "deletes a large object"),
    **dict.fromkeys(
        (
            "dblink",
            "dblink_exec",
            "dblink_connect",
            "dblink_connect_u",
            "dblink_send_query",
            "dblink_open",
        ),
        ("sql.dangerous_function", "runs SQL on another database connection"),
    ),
    **dict.fromkeys(
        (
            "query_to_xml",
            "query_to_xmlschema",
            "query_to_xml_and_xmlschema",
            "ts_stat",
            "crosstab",
            "crosstab2",
            "crosstab3",
            "crosstab4",
        ),
        ("sql.dynamic_sql", "runs SQL given as a string"),
    ),
    "set_config": ("sql.dangerous_function", "sets a run-time parameter"),
}


#: Any dangerous name in the parser's JSON: a reason to walk the tree, not yet a
#: finding (string literals and column names show up here too).
DANGEROUS_NAME: Final = re.compile(
    '"sval":"(?:' + "|".join(map(re.escape, sorted(_DANGEROUS_FUNCTIONS))) + ')"'
)


#: Run-time parameters that switch the privileges the session runs with.
_ROLE_PARAMETERS: Final = frozenset({"role", "session_authorization"})


def check_call(call: Node, context: Context) -> None:
    """A ``FuncCall`` node: a call of a dangerous server function?"""
    names = name_parts(call.get("funcname"))
    if not names or names[-1] not in _DANGEROUS_FUNCTIONS:
        return
    name = ".".join(names)
    if names[-1] == "set_config":
        _check_set_config(name, call.get("args") or [], context)
        return
    code, effect = _DANGEROUS_FUNCTIONS[names[-1]]
    context.add(code, f"{name}() {effect}", subject=name)


def _check_set_config(name: str, args: list[Any], context: Context) -> None:
    parameter = _constant_text(args[0]) if args else None
    if parameter is None:
        context.add(
            "sql.dangerous_function",
            f"{name}() sets a run-time parameter whose name is only known at run time",
            subject=name,
        )
        return
    value = _constant_text(args[1]) if len(args) > 1 else None
    _check_parameter(parameter, value, context, f"{name}('{parameter}', {_shown(value)})")


def _check_parameter(parameter: str, value: str | None, context: Context, what: str) -> None:
    """Run-time parameters that matter: the replication role and the role."""
    parameter = parameter.lower()
    if parameter == "session_replication_role":
        if value is None or value.strip().lower() != "origin":
            context.add(
                "sql.replication_role",
                f"{what} stops triggers and foreign-key checks from firing",
                subject="session_replication_role",
            )
    elif parameter in _ROLE_PARAMETERS and (value is None or value.lower() != "none"):
        # Only to roles the session is already a member of: recorded, not held.
        context.add(
            "sql.privilege_change",
            f"{what} switches the privileges the session runs with",
            subject=value or parameter,
            risk=Risk.LOW,
        )


def _shown(value: str | None) -> str:
    return "<computed>" if value is None else repr(value)


def _constant_text(node: Any) -> str | None:
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    constant = node.get("A_Const") if isinstance(node, dict) else None
    if not isinstance(constant, dict):
        return None
    if "sval" in constant:
        return str(constant["sval"].get("sval", ""))
    if "ival" in constant:
        return str(constant["ival"].get("ival", 0))
    return None


def set_parameter(tag: str, node: Node, context: Context) -> None:
    """SET and SET LOCAL; plain SETs (search_path, timeouts, ...) are harmless."""
    if node.get("kind") not in ("VAR_SET_VALUE", "VAR_SET_CURRENT"):
        return  # SET ... TO DEFAULT, RESET, SET TRANSACTION ...
    parameter = str(node.get("name", "")).lower()
    args = node.get("args") or []
    value = _constant_text(args[0]) if len(args) == 1 else None
    keyword = "SET LOCAL" if node.get("is_local") else "SET"
    _check_parameter(parameter, value, context, f"{keyword} {parameter} = {_shown(value)}")
