"""SQL analyzer (PostgreSQL dialect) on the real PostgreSQL parser, pglast.

The text is parsed once by libpg_query (``parse_sql_json``); every top-level
statement becomes a :class:`Unit` and is dispatched on its node tag to a small
handler. A statement type without a handler is ``sql.unclassified``: what the
analyzer does not know to be safe is held (fail closed), and so is text that
does not parse.

Two things can hide anywhere in a tree: data-modifying statements (in a CTE,
a rule, ``EXPLAIN ANALYZE``, ``PREPARE``, ``COPY (...)``, a function body) and
calls of dangerous functions. One iterative walk finds them, and it only runs
when cheap substring tests on the JSON text say there may be something to
find. JSON escapes the quotes inside string values, so a key such as
``"DeleteStmt":`` cannot be forged by a literal; a literal *can* contain a
function name, so a name hit is only a reason to walk, never a finding.

Function bodies are strings to the parser: SQL bodies are parsed again,
PL/pgSQL bodies with ``parse_plpgsql_json``, and the statements inside are
analysed as nested ones.

Statements that differ only in their constants (``... WHERE aid = 48213``)
share a *shape* (:func:`sql_shape`, from the lexer's tokens);
:func:`analyze_sql_shaped` says when an analysis is, provably, the analysis of
every text of its shape, so that the evaluator may answer for the shape.

This module is the driver and the data-changing statements; schema, privilege,
role and server statements are in :mod:`sqlddl`, dangerous calls and
run-time parameters in :mod:`sqlcalls`, WHERE-clause folding in
:mod:`sqlfold` and reading names off the tree in :mod:`sqlnames`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from itertools import pairwise
from typing import Any, Final

from pglast.parser import ParseError, parse_plpgsql_json, parse_sql_json, scan

from jitgate.actions.findings import Analysis, Finding, Risk, Unit
from jitgate.actions.sqlcalls import DANGEROUS_NAME, check_call, set_parameter
from jitgate.actions.sqlcontext import Context, Handler, statement_excerpt
from jitgate.actions.sqlddl import DDL_HANDLERS
from jitgate.actions.sqlfold import Verdict, always_true
from jitgate.actions.sqlnames import (
    Node,
    definitions,
    describe,
    is_temporary,
    join_names,
    name_of,
    name_parts,
    only,
    option_is_on,
    relation_name,
    subject_of,
    unit_type,
)

#: How deep function bodies inside function bodies are followed.
_MAX_BODY_DEPTH: Final = 6
#: Longest parser message quoted in a finding.
_MAX_MESSAGE: Final = 300

_WRITES: Final = {
    "InsertStmt": "INSERT into",
    "UpdateStmt": "UPDATE of",
    "DeleteStmt": "DELETE from",
    "MergeStmt": "MERGE into",
}


# --- entry point -------------------------------------------------------------------------


def analyze_sql(text: str) -> Analysis:
    """Analyse PostgreSQL text: one unit per statement, findings on each."""
    return analyze_sql_shaped(text, shapes=False)[0]


def analyze_sql_shaped(text: str, *, shapes: bool = True) -> tuple[Analysis, bool]:
    """The analysis of ``text`` and whether it is *constant-free*.

    Constant-free means provably the analysis of every text of the same
    shape (:func:`sql_shape`: the same tokens, constants aside) that parses:
    the statements are of types whose handling never reads a value (see
    :data:`_CONSTANT_FREE_HANDLERS`), the tree holds no call (a literal may
    name a dangerous function and send the analysis on a walk, and
    ``set_config`` is judged on its arguments), no ``INTO`` clause, nothing
    nested that the walk would have to look at, and there is no finding.
    Anything else, including every failure, is not constant-free. With
    ``shapes=False`` the second value is always False (and not computed).
    """
    try:
        return _analyze(text, shapes)
    except RecursionError:
        return _unparsable(text, "SQL is nested too deeply to analyse"), False
    except Exception as error:  # fail closed: an analyzer bug must not let SQL through
        return _unparsable(text, f"SQL could not be analysed ({type(error).__name__})"), False


def _analyze(text: str, shapes: bool) -> tuple[Analysis, bool]:
    parsed = _parse(text)
    if isinstance(parsed, str):
        return _unparsable(text, parsed), False
    json_text, statements = parsed
    if not statements:
        return _unparsable(text, "no SQL statement"), False
    walk = _may_hide_something(json_text, statements)
    texts = _statement_texts(text, statements)
    findings: list[Finding] = []
    units: list[Unit] = []
    plain = shapes and not walk
    for index, raw in enumerate(statements):
        tag, node = only(raw["stmt"])
        statement_text = texts[index]
        handler = _HANDLERS.get(tag)
        if walk or handler is not _allow:
            _statement(tag, node, Context(index, statement_text, statement_text, findings), walk)
        if plain and handler not in _CONSTANT_FREE_HANDLERS:
            plain = False
        units.append(Unit(index, unit_type(tag, node), statement_text))
    if not findings:
        constant_free = (
            plain and '"FuncCall":' not in json_text and '"intoClause":' not in json_text
        )
        return Analysis(units=tuple(units)), constant_free
    unique = tuple(dict.fromkeys(findings)) if len(findings) > 1 else tuple(findings)
    # What Analysis.of computes, without its generator overhead on the hot path.
    return Analysis(
        units=tuple(units),
        findings=unique,
        codes=frozenset([finding.code for finding in unique]),
        risk=max([finding.risk for finding in unique]),
    ), False


def _parse(text: str) -> tuple[str, list[Node]] | str:
    """The JSON text and statements of ``text``, or why there are none."""
    if "\x00" in text:
        # libpg_query reads a C string: everything after a NUL would go unseen.
        return "SQL text contains a NUL byte"
    try:
        json_text = parse_sql_json(text)
    except ParseError as error:
        return _clip(f"SQL does not parse: {error}")
    except UnicodeError:
        return "SQL text is not valid Unicode"
    try:
        tree = json.loads(json_text)
    except RecursionError:
        return "SQL is nested too deeply to analyse"
    return json_text, tree.get("stmts") or []


def _unparsable(text: str, message: str) -> Analysis:
    quoted = statement_excerpt(text)
    finding = Finding.of("sql.parse_error", message, unit=0, excerpt=quoted)
    return Analysis.of((Unit(0, "unparsable", text),), (finding,))


def _statement_texts(text: str, statements: list[Node]) -> list[str]:
    """Each statement's source text; libpg_query's offsets count UTF-8 bytes."""
    if len(statements) == 1 and not statements[0].keys() & {"stmt_location", "stmt_len"}:
        return [text.strip()]
    source: str | bytes = text if text.isascii() else text.encode("utf-8")
    texts: list[str] = []
    for raw in statements:
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len", 0)
        piece = source[start : start + length] if length else source[start:]
        if isinstance(piece, bytes):
            piece = piece.decode("utf-8", errors="replace")
        texts.append(piece.strip())
    return texts


def _may_hide_something(json_text: str, statements: list[Node]) -> bool:
    """Whether the tree may hold nested statements or dangerous calls.

    Counts ``...Stmt":`` keys: each statement node has one; a nested SELECT
    (subqueries, CTEs) is harmless by itself, anything else nested is worth
    the walk.
    """
    if '"FuncCall":' in json_text and DANGEROUS_NAME.search(json_text):
        return True
    nested = json_text.count('Stmt":') - len(statements)
    if nested <= 0:
        return False
    # INSERT's "selectStmt" field is the one field name ending the same way.
    nested -= json_text.count('"selectStmt":')
    if nested <= 0:
        return False
    top_selects = sum(1 for raw in statements if "SelectStmt" in raw["stmt"])
    return nested > json_text.count('"SelectStmt":') - top_selects


def _statement(tag: str, node: Node, context: Context, walk: bool) -> None:
    if context.scope and tag in _WRITES:
        _nested_write(tag, node, context, context.scope)
    else:
        handler = _HANDLERS.get(tag)
        if handler is None:
            what = describe(tag, node)
            context.add(
                "sql.unclassified",
                f"{what} is a statement type the analyzer does not know to be safe",
                subject=subject_of(node),
            )
        else:
            handler(tag, node, context)
    if walk and not (tag == "ExplainStmt" and not _explain_executes(node)):
        where = "EXPLAIN ANALYZE" if tag == "ExplainStmt" else describe(tag, node)
        _walk(node, context, context.scope or where)


# --- shapes: statements that differ only in their constants ------------------------------

#: What a shape puts in place of each kind of constant token of the PostgreSQL
#: lexer (NUL never occurs in a text that has a shape, so a marker cannot be
#: confused with text); "" marks the tokens that make a text have no shape.
#: ``U&'...'`` strings (USCONST) are not in the table: they are kept as
#: written, since the parser, not the lexer, decodes their escapes and may
#: reject them; their ``UESCAPE '?'`` clause makes the value of a string
#: change how a neighbour decodes, and ``FLOAT(p)`` is the one place where the
#: grammar itself checks a number (p must be 1 to 53), so neither has a shape.
_SHAPE_TOKENS: Final[Mapping[str, str]] = {
    "ICONST": "\x00i",
    "FCONST": "\x00f",
    "SCONST": "\x00s",
    "BCONST": "\x00b",
    "XCONST": "\x00x",
    "PARAM": "\x00p",
    "UESCAPE": "",
    "FLOAT_P": "",
}
#: How a constant token of each kind may start and end (a check on the
#: offsets pglast reports for texts that are not ASCII).
_SHAPE_BOUNDS: Final[Mapping[str, tuple[str, str]]] = {
    "ICONST": ("0123456789", "0123456789abcdefABCDEF"),
    "FCONST": ("0123456789.", "0123456789abcdefABCDEF."),
    "SCONST": ("'$eE", "'$"),
    "BCONST": ("bB", "'"),
    "XCONST": ("xX", "'"),
    "PARAM": ("$", "0123456789"),
}
#: The lexer pglast offers maps byte offsets to characters in time that grows
#: with the product of tokens and non-ASCII characters: longer texts that are
#: not ASCII get no shape.
MAX_NON_ASCII_SHAPE: Final = 512


#: A text's character classes, for the shortcut in :func:`sql_shape`: ASCII
#: digits become ``0``, letters and ``_`` ``a``; the characters that start
#: strings, quoted identifiers, parameters, escapes and comments (and NUL)
#: ``!``; ``.`` stays; everything else is a space.
_CLASSES: Final = bytes(
    ord("0")
    if 48 <= c <= 57
    else ord("a")
    if 65 <= c <= 90 or 97 <= c <= 122 or c == 95
    else ord("!")
    if c < 128 and chr(c) in "'\"$\\\x00-/"
    else ord(".")
    if c == 46
    else ord(" ")
    for c in range(256)
)
#: Classes that need the lexer: a string or the like, maybe a comment, a
#: digit touching a dot (``1.5``, ``.5``) or a letter (``1e5``, ``1_000``,
#: ``0x1F``, and digits inside words, to keep the rule simple), ten digits in
#: a row (the integer may not fit in 32 bits).
_LEXER_CLASSES: Final = (b"!", b".0", b"0.", b"0a", b"0" * 10)
#: What the classes of a text say: the lexer is needed, or there is no
#: digit (the text is its own shape), or every run of digits is an integer.
_LEXER, _NO_CONSTANT, _INTEGERS = 0, 1, 2
#: The answer for classes seen before (texts of one shape have the same).
_SHORTCUTS: dict[bytes, int] = {}
_MAX_SHORTCUTS: Final = 4096
_INTEGER: Final = re.compile(r"\b\d+", re.ASCII)


def _shortcut(classes: bytes) -> int:
    if any(part in classes for part in _LEXER_CLASSES):
        answer = _LEXER
    else:
        answer = _INTEGERS if b"0" in classes else _NO_CONSTANT
    if len(_SHORTCUTS) >= _MAX_SHORTCUTS:
        _SHORTCUTS.clear()
    _SHORTCUTS[classes] = answer
    return answer


def sql_shape(text: str) -> str | None:
    """``text`` with each constant replaced by a marker of its kind, or None.

    Two texts with the same shape are the same sequence of PostgreSQL tokens
    (the real lexer's, comments included), in the same places with the same
    white space around them, except for the values of their numbers, strings
    (``'...'``, ``E'...'``, ``$$...$$``, bit and hex strings) and parameter
    numbers (``$1``). Whether a token is a constant and of which kind is the
    lexer's call (``99999999999`` is a float to it, not an integer). A text
    has no shape when it does not lex, holds a NUL, is long and not ASCII, or
    holds a token listed above as having none.
    """
    if text.isascii():
        # The shortcut: when the lexer would see no constant but integers,
        # each a run of digits alone, the shape is the text with the runs
        # replaced. FLOAT and UESCAPE are the keywords that give no shape.
        classes = text.encode("ascii").translate(_CLASSES)
        answer = _SHORTCUTS.get(classes)
        if answer is None:
            answer = _shortcut(classes)
        if answer:
            lower = text.lower()
            if "float" not in lower and "uescape" not in lower:
                if answer == _NO_CONSTANT:
                    return text
                shape, count = _INTEGER.subn("\x00i", text)
                return shape if count else text  # digits only inside words
    return _lexed_shape(text)


def _lexed_shape(text: str) -> str | None:
    """:func:`sql_shape` by the lexer's tokens."""
    check = not text.isascii()
    if (check and len(text) > MAX_NON_ASCII_SHAPE) or "\x00" in text:
        return None
    try:
        tokens = scan(text)
    except Exception:  # does not lex (or is not valid Unicode): no shape
        return None
    markers = _SHAPE_TOKENS
    parts: list[str] = []
    position = 0
    for start, end, name, _kind in tokens:
        marker = markers.get(name)
        if marker is None:
            continue
        if not marker:
            return None
        if check and not (position <= start and _within_bounds(text, start, end, name)):
            return None
        parts.append(text[position:start])
        parts.append(marker)
        position = end + 1
    if not parts:
        return text
    parts.append(text[position:])
    return "".join(parts)


#: First words of statements that are never constant-free (their handlers
#: read values, or they are never allowed by shape): a text that starts with
#: one is not worth a scan for its shape. Only a shortcut: a text it misses
#: is scanned, analysed and found not constant-free.
_NEVER_SHAPED: Final = re.compile(
    r"\s*(?:update|delete|merge|copy|explain|do|call|execute|create|alter|drop|truncate"
    r"|grant|revoke|vacuum|analy[sz]e|lock|cluster|reindex|refresh|comment)\b",
    re.IGNORECASE,
)
_NEVER_SHAPED_FIRST: Final = frozenset(" \t\n\r\f\vuUdDmMcCeEaAtTgGrRvVlL")


def may_have_shape_worth_caching(text: str) -> bool:
    """False when ``text`` certainly starts with a statement that is never
    constant-free (``UPDATE``, ``DELETE``, DDL, ...): no need for its shape."""
    return text[:1] not in _NEVER_SHAPED_FIRST or _NEVER_SHAPED.match(text) is None


def _within_bounds(text: str, start: int, end: int, name: str) -> bool:
    first, last = _SHAPE_BOUNDS[name]
    return 0 <= start <= end < len(text) and text[start] in first and text[end] in last


# --- the walk for nested statements and calls --------------------------------------------


def _walk(root: Node, context: Context, where: str) -> None:
    """Find nested data-modifying statements and dangerous calls under ``root``."""
    stack: list[tuple[Any, str]] = [(root, where)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, list):
            stack.extend((item, where) for item in reversed(value) if isinstance(item, dict | list))
            continue
        children: list[tuple[Any, str]] = []
        for key, child in value.items():
            if key in _LEAVES:
                continue
            if isinstance(child, list):
                children.append((child, where))
            elif isinstance(child, dict):
                children.append((child, _visit(key, child, context, where)))
        stack.extend(reversed(children))


#: Nodes and fields with nothing below them worth walking into.
_LEAVES: Final = frozenset(
    {"A_Const", "String", "Integer", "Float", "Boolean", "ColumnRef", "ParamRef", "funcname"}
)


def _visit(key: str, child: Node, context: Context, where: str) -> str:
    """Look at one node met in the walk; returns what its children are nested in."""
    if key in _WRITES:
        _nested_write(key, child, context, where)
    elif key == "FuncCall":
        check_call(child, context)
    elif key == "CommonTableExpr":
        return f"WITH query {child.get('ctename', '')}"
    elif key.endswith("Stmt") and key[0].isupper() and key != "SelectStmt":
        _statement_inside(key, child, context)
    return where


def _statement_inside(tag: str, node: Node, context: Context) -> None:
    """A non-SELECT statement nested in another (CREATE SCHEMA elements, ...)."""
    handler = _HANDLERS.get(tag)
    if handler is None:
        context.add(
            "sql.unclassified",
            f"nested {describe(tag, node)} is a statement type the analyzer does not know",
            subject=subject_of(node),
        )
    else:
        handler(tag, node, context)


def _nested_write(tag: str, node: Node, context: Context, where: str) -> None:
    table = relation_name(node.get("relation"))
    context.add(
        "sql.nested_dml",
        f"{_WRITES[tag]} {table} is nested inside {where}: it modifies data",
        subject=table,
    )
    _check_write(tag, node, context)


# --- data changes ------------------------------------------------------------------------


def _check_write(tag: str, node: Node, context: Context) -> None:
    """The rows a DELETE, UPDATE or MERGE touches: all of them?"""
    relation = node.get("relation")
    table = relation_name(relation)
    if tag == "MergeStmt":
        _check_merge(table, node, context)
        return
    if tag == "InsertStmt" or is_temporary(relation):
        return
    verb, effect = ("DELETE from", "deletes") if tag == "DeleteStmt" else ("UPDATE of", "changes")
    where = node.get("whereClause")
    if where is None:
        code = "sql.delete_without_where" if tag == "DeleteStmt" else "sql.update_without_where"
        context.add(code, f"{verb} {table} has no WHERE clause: it {effect} every row", table)
        return
    if "CurrentOfExpr" in where:
        return
    others = node.get("usingClause") or node.get("fromClause")
    verdict = always_true(where, single_relation=not others)
    if verdict is Verdict.ALWAYS_TRUE:
        context.add(
            "sql.always_true_where",
            f"{verb} {table} has a WHERE clause that is always true: it {effect} every row",
            table,
        )
    elif verdict is Verdict.TOO_DEEP:
        context.add(
            "sql.always_true_where",
            f"{verb} {table} has a WHERE clause nested too deeply to prove it selective",
            table,
        )


def _check_merge(table: str, node: Node, context: Context) -> None:
    context.add("sql.merge", f"MERGE into {table} may insert, update or delete rows", table)
    condition = node.get("joinCondition")
    if condition is None or always_true(condition, single_relation=False) is Verdict.NOT_PROVEN:
        return
    for clause in node.get("mergeWhenClauses") or []:
        when = clause.get("MergeWhenClause", {})
        if (
            when.get("matchKind") == "MERGE_WHEN_MATCHED"
            and when.get("commandType") in ("CMD_DELETE", "CMD_UPDATE")
            and when.get("condition") is None
        ):
            context.add(
                "sql.always_true_where",
                f"MERGE into {table} joins on an always-true condition and "
                f"{'deletes' if when['commandType'] == 'CMD_DELETE' else 'updates'} every row",
                table,
            )
            return


def _select(tag: str, node: Node, context: Context) -> None:
    """SELECT INTO creates a table (any branch of a UNION may carry the INTO)."""
    branches = [node]
    while branches:
        branch = branches.pop()
        into = branch.get("intoClause")
        if into is not None and not is_temporary(into.get("rel")):
            table = name_of(into.get("rel"))
            context.add(
                "sql.schema_change", f"SELECT INTO {table} creates a persistent table", table
            )
        if branch.get("op", "SETOP_NONE") != "SETOP_NONE":
            branches.extend(side for side in (branch.get("larg"), branch.get("rarg")) if side)


def _truncate(tag: str, node: Node, context: Context) -> None:
    tables = join_names(relation_name(item) for item in node.get("relations") or [])
    context.add("sql.truncate", f"TRUNCATE {tables} removes every row", tables)


def _copy(tag: str, node: Node, context: Context) -> None:
    target = relation_name(node.get("relation")) or "a query"
    direction = "from" if node.get("is_from") else "to"
    filename = node.get("filename", "")
    if node.get("is_program"):
        context.add(
            "sql.copy_program",
            f"COPY {target} {direction} PROGRAM '{filename}' runs a command on the database server",
            target,
        )
    elif filename or not _copies_through_client(context.source):
        context.add(
            "sql.copy_server_file",
            f"COPY {target} {direction} the server file '{filename}'",
            target,
        )


_COMMENTS: Final = frozenset({"SQL_COMMENT", "C_COMMENT"})
#: Every way of writing an empty string contains one of these.
_EMPTY_STRING: Final = re.compile(r"''|\$\w*\$")


def _copies_through_client(source: str) -> bool:
    """``FROM STDIN`` or ``TO STDOUT``, rather than a file named ``''``.

    The JSON leaves out empty strings, so a missing file name may be either;
    only text that spells an empty string somewhere needs a closer look.
    """
    if not _EMPTY_STRING.search(source):
        return True
    names = [token.name for token in scan(source) if token.name not in _COMMENTS]
    return any(
        (first, second) in (("FROM", "STDIN"), ("TO", "STDOUT"))
        for first, second in pairwise(names)
    )


# --- wrappers and code the analyzer cannot see -------------------------------------------


def _explain_executes(node: Node) -> bool:
    """EXPLAIN ANALYZE runs the statement; plain EXPLAIN only plans it."""
    for option in node.get("options") or []:
        element = option.get("DefElem", {})
        if element.get("defname") == "analyze" and option_is_on(element.get("arg")):
            return True
    return False


def _explain(tag: str, node: Node, context: Context) -> None:
    # The other statements EXPLAIN ANALYZE can run are found by the walk.
    query = node.get("query") or {}
    if _explain_executes(node) and "SelectStmt" in query:
        _select("SelectStmt", query["SelectStmt"], context)


def _execute(tag: str, node: Node, context: Context) -> None:
    name = str(node.get("name", ""))
    context.add(
        "sql.dynamic_sql",
        f"EXECUTE {name} runs a prepared statement whose text is not in view",
        name,
    )


def _call(tag: str, node: Node, context: Context) -> None:
    call = node.get("funccall") or {}
    name = ".".join(name_parts(call.get("funcname")))
    check_call(call, context)
    context.add(
        "sql.dynamic_sql",
        f"CALL {name}(): the procedure's body is not visible",
        name,
        risk=Risk.MEDIUM,
    )


def _do(tag: str, node: Node, context: Context) -> None:
    options = definitions(node.get("args"))
    language = str(name_of(options.get("language")) or "plpgsql").lower()
    context.add("sql.dynamic_sql", f"DO runs an anonymous {language} code block")
    if language == "plpgsql":
        _plpgsql_body(context, "a DO block")


def _create_function(tag: str, node: Node, context: Context) -> None:
    names = name_parts(node.get("funcname"))
    name = ".".join(names)
    kind = "procedure" if node.get("is_procedure") else "function"
    if names[:1] != ["pg_temp"]:
        verb = "CREATE OR REPLACE" if node.get("replace") else "CREATE"
        context.add("sql.schema_change", f"{verb} {kind.upper()} {name} defines a {kind}", name)
    if node.get("sql_body") is not None:
        return  # BEGIN ATOMIC / RETURN bodies are in the tree: the walk covers them
    options = definitions(node.get("options"))
    language = str(name_of(options.get("language"))).lower()
    body = options.get("as")
    scope = f"the body of {kind} {name}"
    if language == "sql":
        texts = name_parts(body.get("List", {}).get("items") if isinstance(body, dict) else None)
        _sql_body(" ".join(texts), context.nested(scope))
    elif language == "plpgsql":
        _plpgsql_body(context, scope, name)
    elif language == "c":
        context.add(
            "sql.server_change",
            f"CREATE {kind.upper()} {name} in language C loads a shared library into the server",
            name,
        )
    elif language != "internal":
        context.add(
            "sql.dynamic_sql",
            f"{scope} is written in {language or 'an unknown language'}: "
            "the analyzer cannot see into it",
            name,
        )


# --- function bodies ---------------------------------------------------------------------


def _sql_body(text: str, context: Context) -> None:
    """The statements of an SQL function body, analysed as nested ones."""
    if context.depth > _MAX_BODY_DEPTH:
        context.add("sql.dynamic_sql", f"{context.scope} is nested too deeply to analyse")
        return
    parsed = _parse(text)
    if isinstance(parsed, str):
        context.add("sql.dynamic_sql", f"{context.scope} cannot be analysed: {parsed}")
        return
    json_text, statements = parsed
    walk = _may_hide_something(json_text, statements)
    for raw, source in zip(statements, _statement_texts(text, statements), strict=True):
        tag, node = only(raw["stmt"])
        _statement(tag, node, replace(context, source=source), walk)


def _plpgsql_body(context: Context, scope: str, subject: str = "") -> None:
    """SQL inside a PL/pgSQL body (of the statement in ``context.source``)."""
    inner = context.nested(scope)
    if inner.depth > _MAX_BODY_DEPTH:
        context.add("sql.dynamic_sql", f"{scope} is nested too deeply to analyse")
        return
    try:
        tree = json.loads(parse_plpgsql_json(context.source))
    except (ParseError, RecursionError, UnicodeError, ValueError) as error:
        context.add(
            "sql.dynamic_sql",
            _clip(f"{scope} does not parse as PL/pgSQL ({error}): its statements are not visible"),
        )
        return
    stack: list[Any] = [tree]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
            continue
        if not isinstance(value, dict):
            continue
        children: list[Any] = []
        for key, child in value.items():
            if key in ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors", "dynquery"):
                context.add(
                    "sql.dynamic_sql",
                    f"EXECUTE of a query string inside {scope}: the SQL it runs is not visible",
                    subject,
                )
            if key == "PLpgSQL_expr" and isinstance(child, dict):
                _plpgsql_expression(child, inner)
            elif isinstance(child, dict | list):
                children.append(child)
        stack.extend(reversed(children))


def _plpgsql_expression(expression: Node, context: Context) -> None:
    query = str(expression.get("query", ""))
    mode = expression.get("parseMode", 0)
    if mode == 0:
        _sql_body(query, context)
    elif mode == 2:
        _sql_body("SELECT " + query, context)
    elif mode in (3, 4, 5):
        _sql_body("SELECT " + _assigned_value(query), context)


def _assigned_value(assignment: str) -> str:
    """The expression of a PL/pgSQL assignment ``target := expression``."""
    depth = 0
    for token in scan(assignment):
        if token.name in ("ASCII_40", "ASCII_91"):
            depth += 1
        elif token.name in ("ASCII_41", "ASCII_93"):
            depth -= 1
        elif depth == 0 and token.name in ("COLON_EQUALS", "ASCII_61"):
            return assignment.encode("utf-8")[token.end + 1 :].decode("utf-8", errors="replace")
    return assignment


# --- dispatch ----------------------------------------------------------------------------


def _allow(tag: str, node: Node, context: Context) -> None:
    """Statements known to be harmless by their type."""


_ALLOWED: Final = (
    "CheckPointStmt",
    "ClosePortalStmt",
    "ConstraintsSetStmt",
    "DeallocateStmt",
    "DeclareCursorStmt",
    "DiscardStmt",
    "FetchStmt",
    "InsertStmt",
    "ListenStmt",
    "NotifyStmt",
    "PrepareStmt",
    "ReturnStmt",
    "TransactionStmt",
    "UnlistenStmt",
    "VariableShowStmt",
)


_HANDLERS: Final[Mapping[str, Handler]] = {
    **DDL_HANDLERS,
    **dict.fromkeys(_ALLOWED, _allow),
    "SelectStmt": _select,
    "UpdateStmt": _check_write,
    "DeleteStmt": _check_write,
    "MergeStmt": _check_write,
    "TruncateStmt": _truncate,
    "CopyStmt": _copy,
    "ExplainStmt": _explain,
    "ExecuteStmt": _execute,
    "CallStmt": _call,
    "DoStmt": _do,
    "VariableSetStmt": set_parameter,
    "CreateFunctionStmt": _create_function,
}


#: Handlers whose verdict on a statement depends on its structure and names
#: only, never on a constant's value, as long as :func:`analyze_sql_shaped`'s
#: other conditions hold: ``_allow`` reads nothing and ``_select`` reads the
#: ``INTO`` clauses, which a constant-free tree does not have.
_CONSTANT_FREE_HANDLERS: Final = (_allow, _select)


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"
