"""Why the store refuses an operation.

Every refusal is a :class:`StoreError` subclass with a stable ``code`` that
adapters may map to HTTP statuses and CLI messages; the message is for humans.
"""

from __future__ import annotations

from typing import ClassVar


class StoreError(Exception):
    """The store cannot do what was asked (bad URL, bad input, integrity)."""

    code: ClassVar[str] = "store_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code.replace("_", " "))

    @property
    def message(self) -> str:
        return str(self.args[0])


class DatabaseURLError(StoreError):
    """The database URL is malformed or names an unsupported backend."""

    code: ClassVar[str] = "database_url"


class DuplicateError(StoreError):
    """A row with the same unique key already exists."""

    code: ClassVar[str] = "duplicate"


class NotFoundError(StoreError):
    """The row the operation refers to does not exist."""

    code: ClassVar[str] = "not_found"


class InvalidValueError(StoreError):
    """A value the store refuses to persist (empty name, naive datetime ...)."""

    code: ClassVar[str] = "invalid_value"
