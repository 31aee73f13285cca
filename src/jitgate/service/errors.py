"""Errors of the service layer, each with a stable code and an HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal with a stable ``code`` (see docs/api.md) and an HTTP status."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
