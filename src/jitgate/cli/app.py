"""The typer application; each command group lives in its own module.

The modules are imported lazily, when their command runs (or shows its own
``--help``): ``jitgate proxy postgres`` runs as a long-lived process of its
own and must not carry the store, the API server or the audit tooling, and
``jitgate --help`` should not wait for them. :data:`COMMANDS` names every
command with the first paragraph of its help, which ``jitgate --help`` lists
without importing anything (tests/test_cli_lazy.py checks that it matches).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """A command whose implementation is imported when it is used."""

    #: ``"module:attribute"``: a :class:`typer.Typer` (a command group) or a
    #: command function.
    target: str
    #: The first paragraph of the command's help, as ``jitgate --help`` shows it.
    help: str
    context_settings: Mapping[str, Any] = field(default_factory=dict)

    def load(self, name: str) -> TyperCommand | TyperGroup:
        """The command as Typer builds it, named ``name``."""
        module_name, _, attribute = self.target.partition(":")
        implementation = getattr(importlib.import_module(module_name), attribute)
        holder = typer.Typer(add_completion=False)
        if isinstance(implementation, typer.Typer):
            holder.add_typer(implementation, name=name)
        else:
            holder.command(name, context_settings=dict(self.context_settings))(implementation)
        command = typer.main.get_group(holder).commands[name]
        assert isinstance(command, TyperCommand | TyperGroup)
        return command


#: Every command, in the order ``jitgate --help`` lists them.
COMMANDS: dict[str, LazyCommand] = {
    "evaluate": LazyCommand(
        "jitgate.cli.evaluate:evaluate_command",
        "Decide whether an action is allowed, needs approval, or is denied.",
    ),
    "serve": LazyCommand(
        "jitgate.cli.serve:serve_command",
        "Run the approval service: REST API, live events, metrics (and, with\n"
        "--gateway, the PostgreSQL gateway).",
    ),
    "request": LazyCommand(
        "jitgate.cli.requests:request_command",
        "Ask for an action. With --wait: exit 0 when allowed or approved, 3 when\n"
        "denied, 4 when expired or timed out, 1 on any other error.",
    ),
    "approve": LazyCommand(
        "jitgate.cli.requests:approve_command", "Approve a request's current stage."
    ),
    "deny": LazyCommand("jitgate.cli.requests:deny_command", "Deny a request, with a reason."),
    "cancel": LazyCommand(
        "jitgate.cli.requests:cancel_command", "Withdraw your own pending request."
    ),
    "outcome": LazyCommand(
        "jitgate.cli.requests:outcome_command",
        "Report how an approved action went (after `jitgate request --wait`).",
    ),
    "run": LazyCommand(
        "jitgate.cli.run:run_command",
        "Evaluate a command; if it needs approval, request it and wait; then run it\n"
        "exactly as approved and report the outcome (with the digest of the signed\n"
        "approval receipt, checked to name this very command). Exits with the\n"
        "command's exit code, 3 if denied, 4 if expired, 1 if jitgate could not be\n"
        "asked (then the command does not run).",
        context_settings={"allow_interspersed_args": False},
    ),
    "policy": LazyCommand("jitgate.cli.policy:app", "Check, test and show policies."),
    "admin": LazyCommand(
        "jitgate.cli.admin:app",
        "Users, groups, API tokens and MFA (works on the store directly).",
    ),
    "audit": LazyCommand("jitgate.cli.audit:app", "The tamper-evident audit trail."),
    "requests": LazyCommand(
        "jitgate.cli.requests:requests_app", "List and show approval requests."
    ),
    "grants": LazyCommand("jitgate.cli.grants:grants_app", "List and revoke grants."),
    "receipt": LazyCommand(
        "jitgate.cli.receipt:app", "Signed approval receipts: fetch one, verify one offline."
    ),
    "proxy": LazyCommand(
        "jitgate.cli.proxy:app", "Gateways that hold dangerous actions in the connection itself."
    ),
}


# The click types are Typer's (recent Typer versions carry their own click):
# the overrides below say Any rather than name them.


class _Deferred(TyperCommand):
    """Stands for a command in the listing until it is used."""

    def __init__(self, name: str, lazy: LazyCommand) -> None:
        super().__init__(name, help=lazy.help)
        self.lazy = lazy
        self._loaded: TyperCommand | TyperGroup | None = None

    def load(self) -> TyperCommand | TyperGroup:
        if self._loaded is None:
            assert self.name is not None
            self._loaded = self.lazy.load(self.name)
        return self._loaded

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        # Whoever runs the stand-in runs the command.
        return self.load().make_context(info_name, args, parent=parent, **extra)


class LazyGroup(TyperGroup):
    """The top-level group: lists :data:`COMMANDS`, imports one when it is used."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, lazy in COMMANDS.items():
            self.commands.setdefault(name, _Deferred(name, lazy))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, _Deferred) and name is not None:
            command = self.commands[name] = command.load()
        return name, command, rest


app = typer.Typer(
    name="jitgate",
    help="Just-In-Time action approval: stop dangerous actions and hold them for approval.",
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    # A callback makes ``app`` a group though its commands are not registered
    # with Typer (LazyGroup provides them).
    pass


def main() -> None:
    app()
