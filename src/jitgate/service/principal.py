"""Who is calling: an authenticated user of the approval service."""

from __future__ import annotations

from dataclasses import dataclass

from jitgate.actions.model import Actor


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    groups: frozenset[str] = frozenset()
    is_admin: bool = False
    is_auditor: bool = False
    is_service_account: bool = False

    @property
    def actor(self) -> Actor:
        return Actor(self.user, self.groups)
