"""Reading PostgreSQL parse trees: names of objects, statements and options.

The parse trees are libpg_query's JSON: a node is ``{"Tag": {...fields}}``,
except fields declared with a concrete node type (a ``RangeVar`` relation, a
``RoleSpec``), which come without the tag wrapper. Findings quote object
names (``subject``) so a reason can say which table or role is concerned;
units carry a statement's type as a short snake_case name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

#: A parse-tree node as decoded from libpg_query's JSON.
Node = dict[str, Any]

#: Fields that name the object a statement is about, most telling first.
_SUBJECT_FIELDS: Final = (
    "relation",
    "table",
    "relations",
    "view",
    "sequence",
    "into",
    "base",
    "typevar",
    "trigname",
    "funcname",
    "objects",
    "object",
    "typeName",
    "domainname",
    "defnames",
    "extname",
    "schemaname",
    "subname",
    "pubname",
    "servername",
    "fdwname",
    "tablespacename",
    "orig_tablespacename",
    "dbname",
    "role",
    "roles",
    "granted_roles",
    "plname",
    "amname",
    "cfgname",
    "dictname",
    "opclassname",
    "opfamilyname",
    "conversion_name",
    "policy_name",
    "local_schema",
    "type_name",
    "filename",
    "name",
    "setstmt",
)

_ROLE_KEYWORDS: Final = {
    "ROLESPEC_CURRENT_ROLE": "CURRENT_ROLE",
    "ROLESPEC_CURRENT_USER": "CURRENT_USER",
    "ROLESPEC_SESSION_USER": "SESSION_USER",
    "ROLESPEC_PUBLIC": "PUBLIC",
}


def only(node: Node) -> tuple[str, Any]:
    """The tag and the fields of a one-key ``{"Tag": {...}}`` node."""
    return next(iter(node.items()))


def relation_name(relation: Any) -> str:
    """``schema.table`` of a RangeVar (wrapped or not)."""
    if not isinstance(relation, dict):
        return ""
    relation = relation.get("RangeVar", relation)
    name = str(relation.get("relname", ""))
    if "schemaname" in relation:
        name = f"{relation['schemaname']}.{name}"
    if "catalogname" in relation:
        name = f"{relation['catalogname']}.{name}"
    return name


def is_temporary(relation: Any) -> bool:
    """A RangeVar that certainly names a temporary relation.

    ``CREATE TEMP ...`` marks the RangeVar; ``pg_temp.x`` always resolves to
    the session's own temporary schema.
    """
    if not isinstance(relation, dict):
        return False
    relation = relation.get("RangeVar", relation)
    return bool(relation.get("relpersistence") == "t" or relation.get("schemaname") == "pg_temp")


def name_parts(items: Any) -> list[str]:
    """The strings of a list of ``String`` nodes (a qualified name)."""
    if not isinstance(items, list):
        return []
    parts: list[str] = []
    for item in items:
        string = item.get("String") if isinstance(item, dict) else None
        if not isinstance(string, dict):
            return []
        parts.append(string.get("sval", ""))
    return parts


def name_of(value: Any) -> str:
    """A readable name for whatever naming value a statement carries."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, body),) = value.items()
            named = _NAMED_NODES.get(tag)
            if named is not None and isinstance(body, dict):
                return named(body)
        if "relname" in value:
            return relation_name(value)
        if "roletype" in value:
            return _role_name(value)
        for field in ("rel", "relation", "objname", "names", "name"):
            if field in value:
                return name_of(value[field])
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = name_parts(value)
        if parts:
            return ".".join(parts)
        return join_names(name_of(item) for item in value)
    return ""


#: Fields holding a list of objects rather than one qualified name.
_PLURAL_FIELDS: Final = frozenset({"relations", "objects", "roles", "granted_roles", "rels"})


def subject_of(node: Node) -> str:
    """The name of the object a statement node is about, or ``""``."""
    for field in _SUBJECT_FIELDS:
        value = node.get(field)
        if value:
            name = names_of(value) if field in _PLURAL_FIELDS else name_of(value)
            if name:
                return name
    return ""


def names_of(items: Any) -> str:
    """The names of a list of objects, comma-separated."""
    if not isinstance(items, list):
        return name_of(items)
    if len(items) == 1:
        return name_of(items[0])
    return join_names(name_of(item) for item in items)


def join_names(names: Iterable[str]) -> str:
    return ", ".join([name for name in names if name])


def _role_name(spec: Node) -> str:
    return str(spec.get("rolename") or _ROLE_KEYWORDS.get(spec.get("roletype", ""), ""))


_NAMED_NODES: Final[dict[str, Callable[[Node], str]]] = {
    "String": lambda body: str(body.get("sval", "")),
    "List": lambda body: name_of(body.get("items", [])),
    "ObjectWithArgs": lambda body: name_of(body.get("objname", [])),
    "TypeName": lambda body: name_of(body.get("names", [])),
    "RangeVar": relation_name,
    "RoleSpec": _role_name,
    "AccessPriv": lambda body: str(body.get("priv_name", "")),
    "VacuumRelation": lambda body: name_of(body.get("relation")),
}


def definitions(items: Any) -> dict[str, Any]:
    """``DefElem`` options as name -> argument."""
    options: dict[str, Any] = {}
    for item in items or []:
        element = item.get("DefElem") if isinstance(item, dict) else None
        if isinstance(element, dict):
            options[str(element.get("defname", ""))] = element.get("arg")
    return options


def option_is_on(arg: Any) -> bool:
    """A boolean option's argument (``ANALYZE``, ``FULL false``, ``CONCURRENTLY 1``)."""
    if not isinstance(arg, dict):
        return True
    if "Integer" in arg:
        return bool(arg["Integer"].get("ival", 0))
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval", False))
    if "String" in arg:
        return str(arg["String"].get("sval", "")).lower() not in ("false", "off", "0", "no")
    return True  # an option the analyzer cannot read: assume it runs


# --- statement types -----------------------------------------------------------------

_UNIT_TYPES: Final = {
    "SelectStmt": "select",
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "TruncateStmt": "truncate",
    "DropStmt": "drop",
    "CreateStmt": "create_table",
    "CreateTableAsStmt": "create_table_as",
    "IndexStmt": "create_index",
    "ViewStmt": "create_view",
    "CreateSeqStmt": "create_sequence",
    "AlterSeqStmt": "alter_sequence",
    "CreateFunctionStmt": "create_function",
    "CreateTrigStmt": "create_trigger",
    "CreateEventTrigStmt": "create_event_trigger",
    "RuleStmt": "create_rule",
    "CreatedbStmt": "create_database",
    "DropdbStmt": "drop_database",
    "CreatePLangStmt": "create_language",
    "CreateFdwStmt": "create_foreign_data_wrapper",
    "CreateForeignServerStmt": "create_server",
    "AlterForeignServerStmt": "alter_server",
    "AlterDatabaseSetStmt": "alter_database",
    "AlterRoleSetStmt": "alter_role",
    "RefreshMatViewStmt": "refresh_materialized_view",
    "AlterOwnerStmt": "alter_owner",
    "GrantStmt": "grant",
    "GrantRoleStmt": "grant_role",
    "DoStmt": "do",
    "CopyStmt": "copy",
    "ExplainStmt": "explain",
    "VariableSetStmt": "set",
    "VariableShowStmt": "show",
    "TransactionStmt": "transaction",
    "CheckPointStmt": "checkpoint",
    "ClosePortalStmt": "close",
    "DeclareCursorStmt": "declare_cursor",
    "SecLabelStmt": "security_label",
    "CompositeTypeStmt": "create_type",
    "CreateEnumStmt": "create_type",
    "CreateRangeStmt": "create_type",
    "AlterTableMoveAllStmt": "alter_tablespace_move",
    "CreateTableSpaceStmt": "create_tablespace",
    "DropTableSpaceStmt": "drop_tablespace",
    "CommentStmt": "comment_on",
    "AlterTableSpaceOptionsStmt": "alter_tablespace",
    "ReassignOwnedStmt": "reassign_owned",
}

_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def unit_type(tag: str, node: Node) -> str:
    """A short snake_case name for a statement: ``delete``, ``create_table``, ..."""
    refine = _UNIT_TYPE_RULES.get(tag)
    if refine is not None:
        return refine(node)
    known = _UNIT_TYPES.get(tag)
    if known is not None:
        return known
    return _CAMEL.sub("_", tag.removesuffix("Stmt")).lower()


def _alter_type(node: Node) -> str:
    kind = str(node.get("objtype", "OBJECT_TABLE")).removeprefix("OBJECT_").lower()
    return "alter_" + kind.replace("matview", "materialized_view")


#: Statement types whose unit type depends on the statement's fields.
_UNIT_TYPE_RULES: Final[Mapping[str, Callable[[Node], str]]] = {
    "SelectStmt": lambda node: (
        "values" if "valuesLists" in node and "targetList" not in node else "select"
    ),
    "GrantStmt": lambda node: "grant" if node.get("is_grant") else "revoke",
    "GrantRoleStmt": lambda node: "grant_role" if node.get("is_grant") else "revoke_role",
    "CreateTableAsStmt": lambda node: (
        "create_materialized_view" if node.get("objtype") == "OBJECT_MATVIEW" else "create_table_as"
    ),
    "CreateFunctionStmt": lambda node: (
        "create_procedure" if node.get("is_procedure") else "create_function"
    ),
    "AlterTableStmt": _alter_type,
    "VariableSetStmt": lambda node: (
        "reset" if str(node.get("kind", "")).startswith("VAR_RESET") else "set"
    ),
    "VacuumStmt": lambda node: "vacuum" if node.get("is_vacuumcmd") else "analyze",
    "DefineStmt": lambda node: (
        "create_" + str(node.get("kind", "")).removeprefix("OBJECT_").lower()
    ),
}


def describe(tag: str, node: Node) -> str:
    """The statement type as SQL words: ``CREATE TABLE``, ``ALTER ROLE``."""
    return unit_type(tag, node).replace("_", " ").upper()
