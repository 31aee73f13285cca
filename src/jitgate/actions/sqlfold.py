"""Constant folding of SQL conditions: does a WHERE clause match every row?

The analyzer needs one answer only: is the condition *provably* true for
every row (``WHERE 1=1``, ``WHERE 'a'='a' OR id = 3``, ``WHERE col = col``)?
The folder evaluates what it can with PostgreSQL's three-valued logic
(literals, casts, comparisons, arithmetic, AND/OR/NOT, IS [NOT] NULL, IN,
BETWEEN, LIKE, CASE, COALESCE, EXISTS of a FROM-less SELECT) and gives up on
everything else, which reads as "not proven": the clause counts as selective.

Deep trees are not folded past a fixed depth; the caller is told so and
fails closed rather than letting ``NOT NOT NOT ... true`` through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, Final

from jitgate.actions.sqlnames import Node, name_parts, only


class Verdict(Enum):
    ALWAYS_TRUE = "always_true"
    NOT_PROVEN = "not_proven"
    TOO_DEEP = "too_deep"


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: SQL NULL.
NULL: Final = _Marker("NULL")
#: A value the folder cannot know (a column, a parameter, a function call).
UNKNOWN: Final = _Marker("UNKNOWN")


class Untyped(str):
    """A string literal whose type PostgreSQL takes from its context.

    ``'1' = 1`` compares numbers and ``'t' = true`` booleans, while a
    ``'1'::text`` is text and stays text.
    """

    __slots__ = ()


Value = bool | int | Decimal | str | _Marker

#: Folding stops below this depth (each level is a Python call or two).
MAX_DEPTH: Final = 120
#: Numbers and strings bigger than this are not worth folding.
_MAX_DIGITS: Final = 60
_MAX_TEXT: Final = 10_000
_MAX_MAGNITUDE: Final[int] = 10**30

_COMPARISONS: Final = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_REFLEXIVE: Final = frozenset({"=", "<=", ">="})
_BOOL_TYPES: Final = frozenset({"bool", "boolean"})
_INT_TYPES: Final = frozenset({"int2", "int4", "int8", "smallint", "integer", "int", "bigint"})
_NUMERIC_TYPES: Final = _INT_TYPES | {"numeric", "decimal", "float4", "float8", "real"}
_TEXT_TYPES: Final = frozenset({"text", "varchar"})
_BETWEEN: Final = frozenset(
    {"AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN", "AEXPR_BETWEEN_SYM", "AEXPR_NOT_BETWEEN_SYM"}
)


class _TooDeep(Exception):
    pass


def always_true(where: Node, *, single_relation: bool) -> Verdict:
    """Whether ``where`` holds for every row of the statement's target.

    ``single_relation``: the statement reads no other table (no USING/FROM),
    so ``t.id`` and ``id`` are the same column.
    """
    try:
        proven = _proves_true(where, 0, single_relation)
    except _TooDeep:
        return Verdict.TOO_DEEP
    return Verdict.ALWAYS_TRUE if proven else Verdict.NOT_PROVEN


def _proves_true(node: Any, depth: int, single: bool) -> bool:
    """Whether ``node`` is TRUE, short-circuiting through AND and OR.

    Only TRUE matters at the top of a WHERE clause, so ``id = 3 AND ...``
    stops at its first conjunct; below a NOT the full three-valued fold runs.
    """
    boolean = node.get("BoolExpr") if isinstance(node, dict) else None
    if isinstance(boolean, dict) and depth <= MAX_DEPTH:
        args = boolean.get("args") or []
        if boolean.get("boolop") == "AND_EXPR":
            return all(_proves_true(arg, depth + 1, single) for arg in args)
        if boolean.get("boolop") == "OR_EXPR":
            return _covers_null_and_not_null(args, single) or any(
                _proves_true(arg, depth + 1, single) for arg in args
            )
    return truth(_fold(node, depth, single)) is True


def truth(value: Value) -> Value:
    """A value as an SQL boolean: True, False, NULL or UNKNOWN."""
    if isinstance(value, bool) or value is NULL:
        return value
    if isinstance(value, Untyped):
        parsed = parse_bool(value)
        return UNKNOWN if parsed is None else parsed
    return UNKNOWN


def parse_bool(text: str) -> bool | None:
    """PostgreSQL's boolean input: any prefix of true/false/yes/no, on/off, 1/0."""
    word = text.strip().lower()
    if not word:
        return None
    if word == "1":
        return True
    if word == "0":
        return False
    for spelling, value in (("true", True), ("false", False), ("yes", True), ("no", False)):
        if spelling.startswith(word):
            return value
    if len(word) >= 2 and "on".startswith(word):
        return True
    if len(word) >= 2 and "off".startswith(word):
        return False
    return None


# --- the folder ---------------------------------------------------------------

Rule = Callable[[Node, int, bool], Value]


def _fold(node: Any, depth: int, single: bool) -> Value:
    if depth > MAX_DEPTH:
        raise _TooDeep
    if not isinstance(node, dict) or len(node) != 1:
        return UNKNOWN
    ((tag, body),) = node.items()
    rule = _RULES.get(tag)
    if rule is None or not isinstance(body, dict):
        return UNKNOWN
    return rule(body, depth + 1, single)


def _const(body: Node, depth: int, single: bool) -> Value:
    if body.get("isnull"):
        return NULL
    if "ival" in body:
        return int(body["ival"].get("ival", 0))
    if "boolval" in body:
        return bool(body["boolval"].get("boolval", False))
    if "sval" in body:
        return Untyped(body["sval"].get("sval", ""))
    if "fval" in body:
        return _number(str(body["fval"].get("fval", "")))
    return UNKNOWN


def _cast(body: Node, depth: int, single: bool) -> Value:
    value = _fold(body.get("arg"), depth, single)
    type_name = body.get("typeName")
    if not isinstance(type_name, dict) or type_name.get("arrayBounds"):
        return UNKNOWN
    names = name_parts(type_name.get("names"))
    if not names or (len(names) > 1 and names[0] != "pg_catalog") or len(names) > 2:
        return UNKNOWN
    if type_name.get("typmods"):
        return UNKNOWN
    return _coerce(value, names[-1])


def _coerce(value: Value, target: str) -> Value:
    if isinstance(value, _Marker):
        return value
    if target in _BOOL_TYPES:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            parsed = parse_bool(value)
            return UNKNOWN if parsed is None else parsed
        return value != 0 if isinstance(value, int) else UNKNOWN
    if target in _NUMERIC_TYPES:
        number: Value = value
        if isinstance(value, bool):
            number = int(value)
        elif isinstance(value, str):
            number = _number(value)
        if target in _INT_TYPES and isinstance(number, Decimal):
            return int(number) if number == number.to_integral_value() else UNKNOWN
        return number
    if target in _TEXT_TYPES:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    return UNKNOWN


def _a_expr(body: Node, depth: int, single: bool) -> Value:
    kind = body.get("kind", "")
    names = name_parts(body.get("name"))
    operator = names[-1] if names else ""
    left, right = body.get("lexpr"), body.get("rexpr")
    if kind == "AEXPR_OP":
        return _operator(operator, left, right, depth, single)
    if kind in ("AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"):
        same = _distinct(left, right, depth, single)
        return _not(same) if kind == "AEXPR_NOT_DISTINCT" else same
    if kind == "AEXPR_IN":
        items = right.get("List", {}).get("items", []) if isinstance(right, dict) else []
        found = _any_of("=", left, items, depth, single)
        return found if operator == "=" else _not(found)
    if kind in ("AEXPR_OP_ANY", "AEXPR_OP_ALL"):
        array = right.get("A_ArrayExpr") if isinstance(right, dict) else None
        if not isinstance(array, dict) or operator not in _COMPARISONS:
            return UNKNOWN
        items = array.get("elements", [])
        if kind == "AEXPR_OP_ANY":
            return _any_of(operator, left, items, depth, single)
        negated = _negation(operator)
        return _not(_any_of(negated, left, items, depth, single))
    if kind in ("AEXPR_LIKE", "AEXPR_ILIKE"):
        return _like(operator, left, right, kind == "AEXPR_ILIKE", depth, single)
    if kind in _BETWEEN:
        return _between(kind, left, right, depth, single)
    return UNKNOWN


def _operator(operator: str, left: Any, right: Any, depth: int, single: bool) -> Value:
    if left is None:
        value = _as_number(_fold(right, depth, single))
        if operator == "-" and not isinstance(value, _Marker):
            return -value
        return value if operator == "+" else UNKNOWN
    a = _fold(left, depth, single)
    if a is UNKNOWN:
        # Columns and rows fold to UNKNOWN: ``col = col`` and ``ROW(..) = ROW(..)``.
        if operator not in _COMPARISONS:
            return UNKNOWN
        if same_column(left, right, single):
            return operator in _REFLEXIVE
        rows = _rows(left, right)
        if rows is None or operator not in ("=", "<>", "!="):
            return UNKNOWN
        equal = _and(_compare("=", x, y, depth, single) for x, y in rows)
        return equal if operator == "=" else _not(equal)
    b = _fold(right, depth, single)
    if operator in _COMPARISONS:
        return compare(operator, a, b)
    if operator in ("+", "-", "*", "/"):
        return _arithmetic(operator, a, b)
    if operator == "||":
        return _concat(a, b)
    return UNKNOWN


def _compare(operator: str, left: Any, right: Any, depth: int, single: bool) -> Value:
    if same_column(left, right, single):
        return operator in _REFLEXIVE
    return compare(operator, _fold(left, depth, single), _fold(right, depth, single))


def compare(operator: str, a: Value, b: Value) -> Value:
    """``a <operator> b`` on folded values."""
    if a is UNKNOWN or b is UNKNOWN:
        return UNKNOWN
    if a is NULL or b is NULL:
        return NULL
    pair = _unify(a, b)
    if pair is None:
        return UNKNOWN
    x, y = pair
    if operator == "=":
        return bool(x == y)
    if operator in ("<>", "!="):
        return bool(x != y)
    if isinstance(x, str) and isinstance(y, str) and not _collation_agnostic(x, y):
        return UNKNOWN
    if operator == "<":
        return bool(x < y)
    if operator == ">":
        return bool(x > y)
    if operator == "<=":
        return bool(x <= y)
    return bool(x >= y)


def _unify(a: Value, b: Value) -> tuple[Any, Any] | None:
    """Both values as one comparable kind, as PostgreSQL would resolve them."""
    if isinstance(a, Untyped) and not isinstance(b, str):
        converted = _coerce(a, "bool" if isinstance(b, bool) else "numeric")
        return None if converted is UNKNOWN else _unify(converted, b)
    if isinstance(b, Untyped) and not isinstance(a, str):
        swapped = _unify(b, a)
        return None if swapped is None else (swapped[1], swapped[0])
    if isinstance(a, bool) or isinstance(b, bool):
        return (a, b) if isinstance(a, bool) and isinstance(b, bool) else None
    if isinstance(a, str) or isinstance(b, str):
        return (a, b) if isinstance(a, str) and isinstance(b, str) else None
    return a, b


def _collation_agnostic(x: str, y: str) -> bool:
    """Whether every sane collation orders ``x`` and ``y`` the same way.

    Plain ASCII letters and digits, ordered alike with and without case.
    """
    for word in (x, y):
        if word and not (word.isascii() and word.isalnum()):
            return False
    return (x < y) == (x.lower() < y.lower()) and (x > y) == (x.lower() > y.lower())


def _arithmetic(operator: str, a: Value, b: Value) -> Value:
    x, y = _as_number(a), _as_number(b)
    if isinstance(x, _Marker) or isinstance(y, _Marker):
        return NULL if x is NULL or y is NULL else UNKNOWN
    result: int | Decimal
    if operator == "+":
        result = x + y
    elif operator == "-":
        result = x - y
    elif operator == "*":
        result = x * y
    elif y == 0:
        return UNKNOWN
    elif isinstance(x, int) and isinstance(y, int):
        quotient = abs(x) // abs(y)
        result = quotient if (x < 0) == (y < 0) else -quotient
    else:
        try:
            result = Decimal(x) / Decimal(y)
        except InvalidOperation:
            return UNKNOWN
    return result if -_MAX_MAGNITUDE <= result <= _MAX_MAGNITUDE else UNKNOWN


def _concat(a: Value, b: Value) -> Value:
    if isinstance(a, _Marker) or isinstance(b, _Marker):
        return NULL if a is NULL or b is NULL else UNKNOWN
    if not (isinstance(a, str) or isinstance(b, str)):
        return UNKNOWN
    text = _as_text(a) + _as_text(b)
    return text if len(text) <= _MAX_TEXT else UNKNOWN


def _distinct(left: Any, right: Any, depth: int, single: bool) -> Value:
    """``left IS DISTINCT FROM right``: never NULL."""
    if same_column(left, right, single):
        return False
    a, b = _fold(left, depth, single), _fold(right, depth, single)
    if a is UNKNOWN or b is UNKNOWN:
        return UNKNOWN
    if a is NULL or b is NULL:
        return not (a is NULL and b is NULL)
    return _not(compare("=", a, b))


def _any_of(operator: str, left: Any, items: list[Any], depth: int, single: bool) -> Value:
    """``left <operator> ANY (items)``; ``left`` is folded once, however long the list."""
    value = _fold(left, depth, single)
    if value is UNKNOWN:
        # Only ``col IN (..., col, ...)`` can still be decided.
        reflexive = operator in _REFLEXIVE and any(
            same_column(left, item, single) for item in items if _may_be_column(item)
        )
        return True if reflexive else UNKNOWN
    results: list[Value] = []
    for item in items:
        results.append(
            operator in _REFLEXIVE
            if same_column(left, item, single)
            else compare(operator, value, _fold(item, depth, single))
        )
        if results[-1] is True:
            return True
    return _or(results)


def _negation(operator: str) -> str:
    return {"=": "<>", "<>": "=", "!=": "=", "<": ">=", ">": "<=", "<=": ">", ">=": "<"}[operator]


def _between(kind: str, left: Any, right: Any, depth: int, single: bool) -> Value:
    bounds = right.get("List", {}).get("items", []) if isinstance(right, dict) else []
    if not isinstance(bounds, list) or len(bounds) != 2:
        return UNKNOWN
    value = _fold(left, depth, single)
    if value is UNKNOWN:
        return UNKNOWN
    low, high = (_fold(bound, depth, single) for bound in bounds)
    inside = _and((compare(">=", value, low), compare("<=", value, high)))
    if kind.endswith("_SYM"):
        inside = _or((inside, _and((compare(">=", value, high), compare("<=", value, low)))))
    return _not(inside) if "NOT" in kind else inside


def _like(operator: str, left: Any, right: Any, ilike: bool, depth: int, single: bool) -> Value:
    negated = operator.startswith("!")
    pattern = _fold(right, depth, single)
    if not isinstance(pattern, str):
        return pattern if pattern is NULL else UNKNOWN
    if pattern and set(pattern) == {"%"} and column_key(left, single) is not None:
        # Like ``col = col``: every row with a value matches.
        return not negated
    subject = _fold(left, depth, single)
    if not isinstance(subject, str) or len(pattern) > 100 or len(subject) > 1000:
        return subject if subject is NULL else UNKNOWN
    if ilike:
        pattern, subject = pattern.lower(), subject.lower()
    return like(subject, pattern) != negated


def like(subject: str, pattern: str) -> bool:
    """SQL LIKE (``%``, ``_``, backslash escapes), in O(len(subject) * len(pattern)).

    Not a regular expression: ``%a%a%a...`` must not backtrack exponentially.
    """
    # A token is None for '%', "" for '_', else the one character it matches.
    tokens: list[str | None] = []
    chars = iter(pattern)
    for char in chars:
        if char == "%":
            tokens.append(None)
        elif char == "_":
            tokens.append("")
        else:
            tokens.append(next(chars, "\\") if char == "\\" else char)
    # matched[j]: the first j tokens match the part of the subject read so far.
    matched = [True] + [False] * len(tokens)
    for j, token in enumerate(tokens, 1):
        matched[j] = matched[j - 1] and token is None
    for char in subject:
        following = [False] * len(matched)
        for j, token in enumerate(tokens, 1):
            if token is None:
                following[j] = following[j - 1] or matched[j]
            else:
                following[j] = matched[j - 1] and token in ("", char)
        matched = following
    return matched[-1]


def _bool_expr(body: Node, depth: int, single: bool) -> Value:
    operator = body.get("boolop")
    args = body.get("args") or []
    if operator == "NOT_EXPR":
        return _not(truth(_fold(args[0], depth, single))) if args else UNKNOWN
    if operator == "OR_EXPR":
        if _covers_null_and_not_null(args, single):
            return True
        return _or(truth(_fold(arg, depth, single)) for arg in args)
    if operator == "AND_EXPR":
        return _and(truth(_fold(arg, depth, single)) for arg in args)
    return UNKNOWN


def _covers_null_and_not_null(args: list[Any], single: bool) -> bool:
    """``col IS NULL OR col IS NOT NULL``: a tautology even for NULLs."""
    seen: dict[str, set[tuple[str, ...]]] = {"IS_NULL": set(), "IS_NOT_NULL": set()}
    for arg in args:
        test = arg.get("NullTest") if isinstance(arg, dict) else None
        if isinstance(test, dict):
            key = column_key(test.get("arg"), single)
            if key is not None and test.get("nulltesttype") in seen:
                seen[test["nulltesttype"]].add(key)
    return bool(seen["IS_NULL"] & seen["IS_NOT_NULL"])


def _null_test(body: Node, depth: int, single: bool) -> Value:
    value = _fold(body.get("arg"), depth, single)
    if value is UNKNOWN:
        return UNKNOWN
    is_null = value is NULL
    return is_null if body.get("nulltesttype") == "IS_NULL" else not is_null


def _boolean_test(body: Node, depth: int, single: bool) -> Value:
    value = truth(_fold(body.get("arg"), depth, single))
    if value is UNKNOWN:
        return UNKNOWN
    return {
        "IS_TRUE": value is True,
        "IS_NOT_TRUE": value is not True,
        "IS_FALSE": value is False,
        "IS_NOT_FALSE": value is not False,
        "IS_UNKNOWN": value is NULL,
        "IS_NOT_UNKNOWN": value is not NULL,
    }.get(body.get("booltesttype", ""), UNKNOWN)


def _coalesce(body: Node, depth: int, single: bool) -> Value:
    for arg in body.get("args") or []:
        value = _fold(arg, depth, single)
        if value is not NULL:
            return value
    return NULL


def _case(body: Node, depth: int, single: bool) -> Value:
    subject = _fold(body["arg"], depth, single) if body.get("arg") else None
    for clause in body.get("args") or []:
        when = clause.get("CaseWhen", {}) if isinstance(clause, dict) else {}
        condition = _fold(when.get("expr"), depth, single)
        if subject is not None:
            condition = compare("=", subject, condition)
        verdict = truth(condition)
        if verdict is True:
            return _fold(when.get("result"), depth, single)
        if verdict is UNKNOWN:
            return UNKNOWN
    default = body.get("defresult")
    return NULL if default is None else _fold(default, depth, single)


def _sublink(body: Node, depth: int, single: bool) -> Value:
    select = body.get("subselect", {}).get("SelectStmt")
    if not isinstance(select, dict):
        return UNKNOWN
    rows = _row_count(select, depth, single)
    kind = body.get("subLinkType")
    if kind == "EXISTS_SUBLINK":
        return UNKNOWN if rows is UNKNOWN else rows is True
    if kind == "EXPR_SUBLINK" and rows is not UNKNOWN:
        targets = select.get("targetList") or []
        if rows is False:
            return NULL
        if len(targets) == 1:
            return _fold(targets[0].get("ResTarget", {}).get("val"), depth, single)
    return UNKNOWN


def _row_count(select: Node, depth: int, single: bool) -> Value:
    """True if a SELECT yields at least one row, False if none, else UNKNOWN."""
    if select.get("op", "SETOP_NONE") != "SETOP_NONE":
        return UNKNOWN
    if any(select.get(part) for part in ("fromClause", "groupClause", "havingClause")):
        return UNKNOWN
    if select.get("valuesLists"):
        return True
    rows: Value = True
    if select.get("whereClause") is not None:
        rows = truth(_fold(select["whereClause"], depth, single))
        if rows is UNKNOWN:
            return UNKNOWN
        rows = rows is True
    for part, at_least in (("limitCount", 1), ("limitOffset", 0)):
        if select.get(part) is not None:
            bound = _fold(select[part], depth, single)
            if bound is NULL and part == "limitCount":
                continue
            if not isinstance(bound, int) or isinstance(bound, bool):
                return UNKNOWN
            if (bound < 1) if at_least == 1 else (bound > 0):
                rows = False
    return rows


def _collate(body: Node, depth: int, single: bool) -> Value:
    return _fold(body.get("arg"), depth, single)


_RULES: Final[dict[str, Rule]] = {
    "A_Const": _const,
    "TypeCast": _cast,
    "A_Expr": _a_expr,
    "BoolExpr": _bool_expr,
    "NullTest": _null_test,
    "BooleanTest": _boolean_test,
    "CoalesceExpr": _coalesce,
    "CaseExpr": _case,
    "SubLink": _sublink,
    "CollateClause": _collate,
}


# --- three-valued logic and conversions ----------------------------------------


def _not(value: Value) -> Value:
    return (not value) if isinstance(value, bool) else value


def _or(values: Iterable[Value]) -> Value:
    result: Value = False
    for value in values:
        if value is True:
            return True
        if value is UNKNOWN or (value is NULL and result is False):
            result = value
    return result


def _and(values: Iterable[Value]) -> Value:
    result: Value = True
    for value in values:
        if value is False:
            return False
        if value is UNKNOWN or (value is NULL and result is True):
            result = value
    return result


def _rows(left: Any, right: Any) -> list[tuple[Any, Any]] | None:
    """The element pairs of ``ROW(...) = ROW(...)`` with equal arity."""
    if not (isinstance(left, dict) and "RowExpr" in left and isinstance(right, dict)):
        return None
    a, b = left.get("RowExpr"), right.get("RowExpr")
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return None
    items_a, items_b = a.get("args") or [], b.get("args") or []
    return list(zip(items_a, items_b, strict=True)) if len(items_a) == len(items_b) else None


def column_key(node: Any, single: bool) -> tuple[str, ...] | None:
    """A column reference (through casts and COLLATE) as comparable names.

    With a single relation in scope ``t.id`` and ``id`` are the same column.
    """
    while isinstance(node, dict) and len(node) == 1:
        tag, body = only(node)
        if tag in ("TypeCast", "CollateClause") and isinstance(body, dict):
            node = body.get("arg")
            continue
        if tag != "ColumnRef" or not isinstance(body, dict):
            return None
        fields = name_parts(body.get("fields"))
        if not fields:
            return None
        return (fields[-1],) if single else tuple(fields)
    return None


def same_column(left: Any, right: Any, single: bool) -> bool:
    if not (_may_be_column(left) and _may_be_column(right)):
        return False  # the common case, decided without building keys
    key = column_key(left, single)
    return key is not None and key == column_key(right, single)


def _may_be_column(node: Any) -> bool:
    return isinstance(node, dict) and (
        "ColumnRef" in node or "TypeCast" in node or "CollateClause" in node
    )


def _number(text: str) -> Value:
    if len(text) > _MAX_DIGITS:
        return UNKNOWN
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return UNKNOWN
    if not number.is_finite() or abs(number) > _MAX_MAGNITUDE:
        return UNKNOWN
    return int(number) if number == number.to_integral_value() and "." not in text else number


def _as_number(value: Value) -> int | Decimal | _Marker:
    if isinstance(value, bool):
        return UNKNOWN
    if isinstance(value, int | Decimal):
        return value
    if isinstance(value, Untyped):
        number = _number(value)
        return number if isinstance(number, int | Decimal) else UNKNOWN
    return value if isinstance(value, _Marker) else UNKNOWN


def _as_text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
