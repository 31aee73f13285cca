"""YAML documents with their line numbers.

PyYAML's constructed data forgets where each value came from and silently
keeps the last of two duplicate keys. Here the node tree is composed first,
walked once to record the line of every key and item (by field path) and to
reject duplicate keys, and only then constructed, so every later problem can
be reported as ``file:line: path: message``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from jitgate.policy.errors import Path, PolicyError, PolicyProblem, format_path

#: Walking stops recording lines past this many nodes: a document full of
#: aliases can expand exponentially, and lines are only a convenience.
_MAX_NODES = 200_000


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Lines (1-based) of the keys and items of one YAML document."""

    source: str
    lines: dict[Path, int] = field(default_factory=dict)
    #: Paths whose value is a block scalar (``|`` or ``>``): its content starts
    #: on the line after the key.
    blocks: frozenset[Path] = frozenset()

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, or of its nearest ancestor in the document."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def problem(self, path: Path, message: str, line_offset: int = 0) -> PolicyProblem:
        line = self.line_of(path)
        if line is not None and line_offset:
            line += line_offset
        return PolicyProblem(message=message, path=path, file=self.source, line=line)


def parse_yaml(text: str, source: str) -> tuple[Any, SourceMap]:
    """The document's data and its source map; :class:`PolicyError` if unusable."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise PolicyError([_reader_problem(exc, text, source)]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, SourceMap(source)
        lines: dict[Path, int] = {(): node.start_mark.line + 1}
        blocks: set[Path] = set()
        duplicates = list(_walk(node, (), lines, blocks, [0]))
        if duplicates:
            raise PolicyError(
                PolicyProblem(message=m, path=p, file=source, line=ln) for p, ln, m in duplicates
            )
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise PolicyError([_syntax_problem(exc, source)]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([_reader_problem(exc, text, source)]) from None
    finally:
        loader.dispose()
    return data, SourceMap(source, lines, frozenset(blocks))


def _syntax_problem(exc: yaml.MarkedYAMLError, source: str) -> PolicyProblem:
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or "invalid YAML"
    if exc.context:
        what = f"{exc.context}, {what}"
    line = mark.line + 1 if mark is not None else None
    return PolicyProblem(message=f"YAML syntax error: {what}", file=source, line=line)


def _reader_problem(exc: yaml.YAMLError, text: str, source: str) -> PolicyProblem:
    """Errors of the reader (a character YAML does not allow) carry a position."""
    position = getattr(exc, "position", None)
    line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
    reason = getattr(exc, "reason", None) or "invalid YAML"
    character = getattr(exc, "character", None)
    if isinstance(character, int):
        reason = f"character U+{character:04X}: {reason}"
    return PolicyProblem(message=f"YAML syntax error: {reason}", file=source, line=line)


def _walk(
    node: yaml.Node, path: Path, lines: dict[Path, int], blocks: set[Path], count: list[int]
) -> Iterator[tuple[Path, int, str]]:
    """Record lines under ``node``; yield (path, line, message) per duplicate key."""
    count[0] += 1
    if count[0] > _MAX_NODES:
        return
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            line = key_node.start_mark.line + 1
            child = (*path, key)
            if key in first:
                yield (
                    child,
                    line,
                    f"duplicate key {key!r} in {format_path(path) or 'the document'} "
                    f"(first at line {first[key]})",
                )
                continue
            first[key] = line
            lines.setdefault(child, line)
            if isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">"):
                blocks.add(child)
            yield from _walk(value_node, child, lines, blocks, count)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines.setdefault(child, item.start_mark.line + 1)
            yield from _walk(item, child, lines, blocks, count)


def describe_type(value: Any) -> str:
    """How a YAML value's type reads in an error message."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
