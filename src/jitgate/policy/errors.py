"""Policy problems: what is wrong with a policy file, and exactly where."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """``("rules", 2, "match", "risk")`` → ``rules[2].match.risk``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    message: str
    #: Where in the document (field path); empty for the whole file.
    path: Path = ()
    file: str = ""
    #: 1-based line, when known.
    line: int | None = None

    def __str__(self) -> str:
        where = self.file or "<policy>"
        if self.line is not None:
            where += f":{self.line}"
        field = format_path(self.path)
        return f"{where}: {field}: {self.message}" if field else f"{where}: {self.message}"


class PolicyError(ValueError):
    """A policy (or a file of policy test cases) that cannot be used.

    Carries every problem found, not only the first, so one run of
    ``jitgate policy check`` shows them all.
    """

    def __init__(self, problems: Iterable[PolicyProblem]) -> None:
        self.problems: tuple[PolicyProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
