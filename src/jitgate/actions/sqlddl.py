"""Handlers for statements that change schema, privileges, roles or the server.

Most of these are findings by their type alone (``CREATE TABLE``,
``GRANT``, ``ALTER SYSTEM``); the handlers add what the type does not say:
temporary objects are exempt, a non-concurrent index build locks, dropping a
column destroys data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from jitgate.actions.sqlcalls import set_parameter
from jitgate.actions.sqlcontext import Context, Handler
from jitgate.actions.sqlnames import (
    Node,
    definitions,
    describe,
    is_temporary,
    join_names,
    name_of,
    names_of,
    option_is_on,
    relation_name,
    subject_of,
)

#: PostgreSQL's lock modes above ROW EXCLUSIVE (what every write takes anyway):
#: each of them blocks other sessions' writes, or worse.
_LOCK_MODES: Final = {
    4: "SHARE UPDATE EXCLUSIVE",
    5: "SHARE",
    6: "SHARE ROW EXCLUSIVE",
    7: "EXCLUSIVE",
    8: "ACCESS EXCLUSIVE",
}


def schema_change(tag: str, node: Node, context: Context) -> None:
    """The finding for a CREATE/ALTER of a persistent object."""
    subject = subject_of(node)
    context.add(
        "sql.schema_change",
        f"{describe(tag, node)} {subject} changes the database schema".replace("  ", " "),
        subject,
    )


def _unless_temporary(field: str) -> Handler:
    def handler(tag: str, node: Node, context: Context) -> None:
        relation = node.get(field)
        if field == "into" and isinstance(relation, dict):
            relation = relation.get("rel")
        if not is_temporary(relation):
            schema_change(tag, node, context)

    return handler


def _create_index(tag: str, node: Node, context: Context) -> None:
    relation = node.get("relation")
    if is_temporary(relation):
        return
    schema_change(tag, node, context)
    if not node.get("concurrent"):
        table = relation_name(relation)
        context.add(
            "sql.heavy_lock",
            f"CREATE INDEX on {table} without CONCURRENTLY blocks writes while it builds",
            table,
        )


def _alter_table(tag: str, node: Node, context: Context) -> None:
    relation = node.get("relation")
    if is_temporary(relation):
        return
    schema_change(tag, node, context)
    table = relation_name(relation)
    for item in node.get("cmds") or []:
        command = item.get("AlterTableCmd", {})
        subtype = command.get("subtype")
        if subtype == "AT_ChangeOwner":
            owner = name_of(command.get("newowner"))
            context.add("sql.privilege_change", f"ALTER TABLE {table} OWNER TO {owner}", table)
        elif subtype == "AT_DropColumn":
            column = f"{table}.{command.get('name', '')}"
            context.add(
                "sql.drop", f"ALTER TABLE {table} drops column {column} and its data", column
            )
        elif subtype == "AT_AlterColumnType":
            context.add(
                "sql.heavy_lock",
                f"changing a column type rewrites {table} under an exclusive lock",
                table,
            )
        elif subtype in ("AT_DisableRowSecurity", "AT_NoForceRowSecurity"):
            context.add(
                "sql.privilege_change", f"ALTER TABLE {table} relaxes row-level security", table
            )


def _refresh(tag: str, node: Node, context: Context) -> None:
    schema_change(tag, node, context)
    if not node.get("concurrent"):
        view = relation_name(node.get("relation"))
        context.add(
            "sql.heavy_lock",
            f"REFRESH MATERIALIZED VIEW {view} without CONCURRENTLY blocks reads of {view}",
            view,
        )


def _rename(tag: str, node: Node, context: Context) -> None:
    kind = node.get("renameType", "")
    subject = subject_of(node) or str(node.get("subname", ""))
    what = f"RENAME of {kind.removeprefix('OBJECT_').lower().replace('_', ' ')} {subject}"
    if kind == "OBJECT_ROLE":
        context.add("sql.role_change", f"{what} to {node.get('newname', '')}", subject)
    elif kind in ("OBJECT_DATABASE", "OBJECT_TABLESPACE"):
        context.add("sql.server_change", f"{what} to {node.get('newname', '')}", subject)
    else:
        context.add(
            "sql.schema_change", f"{what} to {node.get('newname', '')} changes the schema", subject
        )


def _drop(tag: str, node: Node, context: Context) -> None:
    kind = str(node.get("removeType", "")).removeprefix("OBJECT_")
    objects = [name_of(item) for item in node.get("objects") or []]
    if objects and all(name.startswith("pg_temp.") for name in objects):
        return
    subject = join_names(objects)
    what = f"DROP {_kind(kind)} {subject}"
    if kind == "SCHEMA":
        extent = " and everything in it" if node.get("behavior") == "DROP_CASCADE" else ""
        context.add("sql.drop_schema", f"{what} removes the schema{extent}", subject)
        return
    effect = " and all its rows" if kind in ("TABLE", "MATVIEW", "FOREIGN_TABLE") else ""
    context.add("sql.drop", f"{what} removes it{effect}", subject)
    if kind in _SERVER_OBJECTS:
        context.add("sql.server_change", f"{what} changes the server's setup", subject)


_OBJECT_WORDS: Final = {"MATVIEW": "MATERIALIZED VIEW", "FDW": "FOREIGN DATA WRAPPER"}
_SERVER_OBJECTS: Final = frozenset(
    {"FOREIGN_SERVER", "FDW", "PUBLICATION", "EVENT_TRIGGER", "LANGUAGE", "ACCESS_METHOD"}
)


def _drop_database(tag: str, node: Node, context: Context) -> None:
    name = str(node.get("dbname", ""))
    context.add("sql.drop_database", f"DROP DATABASE {name} destroys the whole database", name)


def _drop_owned(tag: str, node: Node, context: Context) -> None:
    roles = names_of(node.get("roles"))
    context.add("sql.drop", f"DROP OWNED BY {roles} drops every object the role owns", roles)
    context.add("sql.privilege_change", f"DROP OWNED BY {roles} revokes its privileges", roles)


def _also_drop(code: str) -> Handler:
    def handler(tag: str, node: Node, context: Context) -> None:
        subject = subject_of(node)
        what = f"{describe(tag, node)} {subject}"
        context.add("sql.drop", f"{what} removes it", subject)
        _flag(code)(tag, node, context)

    return handler


_FLAG_EFFECTS: Final = {
    "sql.privilege_change": "changes who may do what",
    "sql.role_change": "changes database roles",
    "sql.server_change": "changes the database server",
    "sql.heavy_lock": "takes a heavy lock",
}


def _flag(code: str) -> Handler:
    """A handler for statements whose type alone is the finding."""

    def handler(tag: str, node: Node, context: Context) -> None:
        subject = subject_of(node)
        what = f"{describe(tag, node)} {subject}".rstrip()
        context.add(code, f"{what} {_FLAG_EFFECTS[code]}", subject)

    return handler


def _owner(tag: str, node: Node, context: Context) -> None:
    kind = _kind(node.get("objectType", ""))
    subject = subject_of(node)
    owner = name_of(node.get("newowner"))
    context.add(
        "sql.privilege_change", f"ALTER {kind} {subject} OWNER TO {owner} hands it over", subject
    )


def _kind(object_type: str) -> str:
    """``OBJECT_MATVIEW`` -> ``MATERIALIZED VIEW``."""
    kind = object_type.removeprefix("OBJECT_")
    return _OBJECT_WORDS.get(kind, kind.replace("_", " "))


def _grant(tag: str, node: Node, context: Context) -> None:
    prefix = ""
    if tag == "AlterDefaultPrivilegesStmt":
        node = node.get("action") or {}
        prefix = "default privileges: "
    if tag == "GrantRoleStmt":
        what = subject = names_of(node.get("granted_roles"))
        target = ""
        people = names_of(node.get("grantee_roles"))
    else:
        what = names_of(node.get("privileges")) or "ALL"
        subject = names_of(node.get("objects"))
        kind = _kind(str(node.get("objtype", ""))).lower()
        if node.get("targtype") == "ACL_TARGET_ALL_IN_SCHEMA":
            target = f" ON all {kind}s in schema {subject}"
        else:
            target = f" ON {kind} {subject}" if subject else f" ON all {kind}s"
        people = names_of(node.get("grantees"))
    verb, to = ("GRANT", "TO") if node.get("is_grant") else ("REVOKE", "FROM")
    context.add(
        "sql.privilege_change",
        f"{prefix}{verb} {what}{target} {to} {people} changes who may do what",
        subject or people,
    )


def _with_parameter(code: str) -> Handler:
    """ALTER ROLE/DATABASE/SYSTEM ... SET: the finding, and what is set."""

    def handler(tag: str, node: Node, context: Context) -> None:
        _flag(code)(tag, node, context)
        setting = node.get("setstmt")
        if isinstance(setting, dict):
            set_parameter(tag, setting, context)

    return handler


def _lock(tag: str, node: Node, context: Context) -> None:
    mode = node.get("mode", 8)
    if mode in _LOCK_MODES:
        tables = join_names(relation_name(item) for item in node.get("relations") or [])
        context.add(
            "sql.heavy_lock",
            f"LOCK {tables} IN {_LOCK_MODES[mode]} MODE blocks other sessions",
            tables,
        )


def _vacuum(tag: str, node: Node, context: Context) -> None:
    options = definitions(node.get("options"))
    if "full" in options and option_is_on(options["full"]):
        tables = names_of(node.get("rels")) or "every table"
        context.add(
            "sql.heavy_lock", f"VACUUM FULL {tables} rewrites under an exclusive lock", tables
        )


def _reindex(tag: str, node: Node, context: Context) -> None:
    options = definitions(node.get("params"))
    if "concurrently" in options and option_is_on(options["concurrently"]):
        return
    target = relation_name(node.get("relation")) or str(node.get("name", ""))
    context.add("sql.heavy_lock", f"REINDEX {target} without CONCURRENTLY blocks writes", target)


_SCHEMA_CHANGES: Final = (
    "AlterCollationStmt",
    "AlterDomainStmt",
    "AlterEnumStmt",
    "AlterExtensionContentsStmt",
    "AlterExtensionStmt",
    "AlterFunctionStmt",
    "AlterObjectDependsStmt",
    "AlterObjectSchemaStmt",
    "AlterOpFamilyStmt",
    "AlterOperatorStmt",
    "AlterPolicyStmt",
    "AlterSeqStmt",
    "AlterStatsStmt",
    "AlterTSConfigurationStmt",
    "AlterTSDictionaryStmt",
    "AlterTypeStmt",
    "CommentStmt",
    "CompositeTypeStmt",
    "CreateAmStmt",
    "CreateCastStmt",
    "CreateConversionStmt",
    "CreateDomainStmt",
    "CreateEnumStmt",
    "CreateExtensionStmt",
    "CreateForeignTableStmt",
    "CreateOpClassStmt",
    "CreateOpFamilyStmt",
    "CreatePLangStmt",
    "CreatePolicyStmt",
    "CreateRangeStmt",
    "CreateSchemaStmt",
    "CreateStatsStmt",
    "CreateTransformStmt",
    "CreateTrigStmt",
    "DefineStmt",
    "ImportForeignSchemaStmt",
    "RuleStmt",
    "SecLabelStmt",
)


_SERVER_CHANGES: Final = (
    "AlterDatabaseRefreshCollStmt",
    "AlterDatabaseStmt",
    "AlterEventTrigStmt",
    "AlterFdwStmt",
    "AlterForeignServerStmt",
    "AlterPublicationStmt",
    "AlterSubscriptionStmt",
    "AlterTableSpaceOptionsStmt",
    "CreateEventTrigStmt",
    "CreateFdwStmt",
    "CreateForeignServerStmt",
    "CreatePublicationStmt",
    "CreateSubscriptionStmt",
    "CreateTableSpaceStmt",
    "CreatedbStmt",
    "LoadStmt",
)


#: Handlers by statement tag.
DDL_HANDLERS: Final[Mapping[str, Handler]] = {
    **dict.fromkeys(_SCHEMA_CHANGES, schema_change),
    **dict.fromkeys(_SERVER_CHANGES, _flag("sql.server_change")),
    "CreateStmt": _unless_temporary("relation"),
    "ViewStmt": _unless_temporary("view"),
    "CreateSeqStmt": _unless_temporary("sequence"),
    "CreateTableAsStmt": _unless_temporary("into"),
    "IndexStmt": _create_index,
    "AlterTableStmt": _alter_table,
    "RefreshMatViewStmt": _refresh,
    "RenameStmt": _rename,
    "DropStmt": _drop,
    "DropdbStmt": _drop_database,
    "DropOwnedStmt": _drop_owned,
    "DropTableSpaceStmt": _also_drop("sql.server_change"),
    "DropSubscriptionStmt": _also_drop("sql.server_change"),
    "DropUserMappingStmt": _also_drop("sql.role_change"),
    "DropRoleStmt": _flag("sql.role_change"),
    "CreateRoleStmt": _flag("sql.role_change"),
    "AlterRoleStmt": _flag("sql.role_change"),
    "CreateUserMappingStmt": _flag("sql.role_change"),
    "AlterUserMappingStmt": _flag("sql.role_change"),
    "AlterRoleSetStmt": _with_parameter("sql.role_change"),
    "AlterDatabaseSetStmt": _with_parameter("sql.server_change"),
    "AlterSystemStmt": _with_parameter("sql.server_change"),
    "AlterTableMoveAllStmt": _flag("sql.server_change"),
    "GrantStmt": _grant,
    "GrantRoleStmt": _grant,
    "AlterDefaultPrivilegesStmt": _grant,
    "ReassignOwnedStmt": _flag("sql.privilege_change"),
    "AlterOwnerStmt": _owner,
    "LockStmt": _lock,
    "VacuumStmt": _vacuum,
    "ClusterStmt": _flag("sql.heavy_lock"),
    "ReindexStmt": _reindex,
}
