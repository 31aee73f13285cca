"""Loading policy files: YAML in, a compiled :class:`Policy` or every problem out.

Every problem is reported as ``file:line: field.path: message``; nothing that
is wrong with a file surfaces as a traceback.
"""

from __future__ import annotations

import hashlib
import types
import typing
from os import PathLike
from pathlib import Path as FsPath
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from jitgate.policy.compile import compile_policy
from jitgate.policy.engine import Policy
from jitgate.policy.errors import Path, PolicyError, PolicyProblem
from jitgate.policy.model import PolicySpec, clean_loc
from jitgate.policy.source import SourceMap, describe_type, parse_yaml

M = TypeVar("M", bound=BaseModel)


def load_policy(path: str | PathLike[str]) -> Policy:
    """The policy in the file at ``path``; its ``source_sha256`` is over the file's bytes."""
    source = str(path)
    try:
        raw = FsPath(path).read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problem = PolicyProblem(f"cannot read the policy: {reason}", file=source)
        raise PolicyError([problem]) from None
    return _load(text, source, hashlib.sha256(raw).hexdigest())


def load_policy_text(text: str, source: str = "<string>") -> Policy:
    """The policy in ``text``; its ``source_sha256`` is over ``text`` in UTF-8."""
    return _load(text, source, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())


def _load(text: str, source: str, digest: str) -> Policy:
    data, where = parse_yaml(text, source)
    if data is None:
        raise PolicyError([PolicyProblem("the policy is empty (expected a mapping with "
                                         "version, rules, ...)", file=source, line=1)])
    if not isinstance(data, dict):
        raise PolicyError([where.problem((), f"the policy must be a mapping, not "
                                             f"{describe_type(data)}")])
    spec = validate(PolicySpec, data, where)
    return compile_policy(
        spec, source=source, source_map=where, source_sha256=digest, source_text=text
    )


def validate(model: type[M], data: Any, where: SourceMap, base: Path = ()) -> M:
    """``model`` validated from ``data``; :class:`PolicyError` with lines if invalid."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [problem_of(error, model, where, base) for error in exc.errors()]
        raise PolicyError(sorted(problems, key=lambda p: p.line or 0)) from None


def problem_of(
    error: ErrorDetails, model: type[BaseModel], where: SourceMap, base: Path = ()
) -> PolicyProblem:
    """A pydantic error as a located, readable problem."""
    loc = clean_loc(tuple(error["loc"]))
    path: Path = (*base, *loc)
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    offset = 0
    if kind == "invalid_key":
        path = path[:-1]
        message = (
            f"key {value!r} is not a string: quote it (YAML reads on/off/yes/no as booleans "
            "and digits as numbers)"
        )
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        message = f"unknown field {loc[-1]!r}" + (
            f" (expected one of: {', '.join(allowed)})" if allowed else ""
        )
    elif "reason" in ctx:
        message = str(ctx["reason"])
        line = ctx.get("condition_line")
        if isinstance(line, int):
            # A condition's line N is N-1 lines below the key, one more for
            # a block scalar (its text starts on the line after the key).
            offset = line - 1 + (1 if path in where.blocks else 0)
    elif kind == "literal_error" and loc == ("version",):
        message = f"unsupported policy version {value!r} (expected 1)"
    elif kind == "too_short" and loc[-1:] == ("groups",):
        message = "a stage needs at least one approver group"
    elif kind == "too_short" and loc[-1:] == ("stages",):
        message = "a chain needs at least one stage"
    elif kind == "too_short":
        message = f"needs at least {ctx.get('min_length', 1)} item(s)"
    elif kind == "greater_than_equal" and loc[-1:] == ("approvals",):
        message = f"approvals must be at least 1, not {value!r}"
    elif kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, not {describe_type(value)}"
    else:
        message = error["msg"]
    return where.problem(path, message, offset)


_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "chain": "the name of a chain or an inline chain mapping",
}


def _fields_at(model: type[BaseModel], loc: Path) -> list[str]:
    """The field names of the model found at ``loc`` under ``model``."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    current = _model_in(current)
    return list(current.model_fields) if current is not None else []


def _step(annotation: Any, part: str | int) -> Any:
    target = _model_in(annotation)
    if target is not None and isinstance(part, str):
        field = target.model_fields.get(part)
        return field.annotation if field is not None else None
    # Containers: list[X] is indexed by int, dict[str, X] by key.
    for candidate in _alternatives(annotation):
        origin = typing.get_origin(candidate)
        args = typing.get_args(candidate)
        if origin is list and isinstance(part, int):
            return args[0]
        if origin is dict:
            return args[1]
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for candidate in _alternatives(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _alternatives(annotation: Any) -> list[Any]:
    """The members of an (optional, annotated) union, unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [alt for arg in typing.get_args(annotation) for alt in _alternatives(arg)]
    return [annotation]
