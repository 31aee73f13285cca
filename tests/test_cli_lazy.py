"""The command line imports a command's implementation only when it is used:
``jitgate proxy postgres`` runs as a long-lived process of its own and must
not carry the store, the API server or the audit tooling (memory, start-up),
and ``jitgate --help`` lists every command without importing any."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from jitgate.cli import app
from jitgate.cli.app import COMMANDS

runner = CliRunner()

#: What the other commands need and the gateway does not.
NOT_IN_THE_GATEWAY = (
    "sqlalchemy",
    "alembic",
    "mako",
    "greenlet",
    "aiosqlite",
    "asyncpg",
    "psycopg",
    "fastapi",
    "starlette",
    "uvicorn",
    "jinja2",
    "segno",
    "cryptography",
    "jitgate.store",
    "jitgate.server",
    "jitgate.service",
    "jitgate.notify",
    # SQL only: the shell analyzer's grammar and command tables stay out.
    "jitgate.actions.shell",
    "jitgate.actions.commands",
    "tree_sitter",
    "tree_sitter_bash",
)

#: The modules of the commands, each imported only when its command runs.
COMMAND_MODULES = sorted(
    {lazy.target.partition(":")[0] for lazy in COMMANDS.values()} | {"jitgate.cli.audit_report"}
)


def loaded_after(code: str) -> list[str]:
    """``sys.modules`` of a fresh interpreter after ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


def offenders(modules: list[str], names: tuple[str, ...] | list[str]) -> list[str]:
    return sorted(
        {name for name in names for m in modules if m == name or m.startswith(name + ".")}
    )


def test_the_gateway_process_loads_only_what_it_uses() -> None:
    # The command as far as it goes without a server, then the gateway it
    # would start: listening, and stopped.
    modules = loaded_after(
        """
import asyncio
from typer.testing import CliRunner
from jitgate.cli import app
result = CliRunner().invoke(app, [
    "proxy", "postgres", "--listen", "127.0.0.1:0",
    "--upstream", "postgresql://u@127.0.0.1:9/db", "--env", "production",
    "--url", "http://127.0.0.1:9", "--token", "jg_test",
])
assert result.exit_code == 1, result.output
assert "cannot reach the jitgate server" in result.output, result.output

from jitgate.gateways.postgres import start_gateway
from jitgate.gateways.postgres.config import GatewayConfig
from jitgate.gateways.remote import RemoteApprovals

async def main():
    config = GatewayConfig.single(
        "127.0.0.1:0", "postgresql://u@127.0.0.1:9/db", "production", None
    )
    port = RemoteApprovals("http://127.0.0.1:9", "jg_test", gateway=config.name)
    gateway = await start_gateway(config, port, "http://127.0.0.1:9")
    await gateway.stop()

asyncio.run(main())
"""
    )
    assert "jitgate.gateways.postgres.session" in modules  # it did get that far
    assert offenders(modules, NOT_IN_THE_GATEWAY) == []
    other_commands = [m for m in COMMAND_MODULES if m != "jitgate.cli.proxy"]
    assert offenders(modules, other_commands) == []


def test_help_lists_every_command_without_importing_one() -> None:
    modules = loaded_after(
        """
from typer.testing import CliRunner
from jitgate.cli import app
result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
assert result.exit_code == 0, result.output
from jitgate.cli.app import COMMANDS
missing = [name for name in COMMANDS if f" {name} " not in result.output]
assert not missing, (missing, result.output)
"""
    )
    assert offenders(modules, COMMAND_MODULES) == []
    assert offenders(modules, [*NOT_IN_THE_GATEWAY, "jitgate.policy", "jitgate.client"]) == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_listed_help_is_the_commands_own(name: str) -> None:
    command = COMMANDS[name].load(name)
    assert command.name == name
    own = inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0].strip()
    assert COMMANDS[name].help == own
    result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"Usage: jitgate {name} " in result.output


def test_run_keeps_its_context_settings() -> None:
    command = COMMANDS["run"].load("run")
    assert command.context_settings.get("allow_interspersed_args") is False


def test_a_mistyped_command_is_still_suggested() -> None:
    result = runner.invoke(app, ["evaluat"])
    assert result.exit_code == 2
    assert "Did you mean 'evaluate'?" in result.output
