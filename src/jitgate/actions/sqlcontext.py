"""Where the SQL analyzer's findings go: the context of one statement.

Every handler gets the node of one statement and a :class:`Context`; the
context knows which unit the statement belongs to and quotes it in every
finding, and when the statement sits in a function body, what body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from jitgate.actions.findings import Finding, Risk, excerpt
from jitgate.actions.sqlnames import Node

#: Excerpts only show the start of a statement; no need to squeeze 10 MB.
EXCERPT_SOURCE: Final = 4096


@dataclass(slots=True)
class Context:
    """Where findings about the statement being looked at go.

    ``text`` is the top-level statement every finding quotes; ``source`` the
    statement being looked at, a function-body statement when ``scope`` says
    what it is nested in.
    """

    unit: int
    text: str
    source: str
    findings: list[Finding]
    scope: str = ""
    depth: int = 0
    quote: str = ""

    def add(self, code: str, message: str, subject: str = "", risk: Risk | None = None) -> None:
        if not self.quote:
            self.quote = statement_excerpt(self.text)
        self.findings.append(
            Finding.of(
                code, message, unit=self.unit, excerpt=self.quote, subject=subject, risk=risk
            )
        )

    def nested(self, scope: str) -> Context:
        return replace(self, scope=scope, depth=self.depth + 1)


Handler = Callable[[str, Node, Context], None]


def statement_excerpt(text: str) -> str:
    """The excerpt of a statement, without squeezing all of a 10 MB one."""
    return excerpt(text[:EXCERPT_SOURCE] + "…" if len(text) > EXCERPT_SOURCE else text)
