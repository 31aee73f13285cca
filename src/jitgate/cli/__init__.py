"""The ``jitgate`` command line."""

from jitgate.cli.app import app, main

__all__ = ["app", "main"]
