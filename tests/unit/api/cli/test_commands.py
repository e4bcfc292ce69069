"""Every ``relaypacs`` command group is registered on ``main`` and lists its commands: a group
module that ``api/cli/__init__.py`` forgets to register would otherwise only fail in a shell."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from api.cli import main

TOP_LEVEL = {"api", "worker", "beat", "events", "scp", "db", "users", "destinations", "deliveries",
             "routes", "storage", "forecast", "upload", "demo", "scp-callers"}

GROUPS = {
    "db": {"upgrade"},
    "users": {"create", "revoke", "rotate", "set-password", "disable", "enable", "roles", "assign",
              "unassign"},
    "destinations": {"add", "list", "rotate-key", "new-key"},
    "scp-callers": {"add", "list", "remove"},
    "deliveries": {"list", "retry"},
    "routes": {"add", "list"},
    "storage": {"policy", "report", "tier", "setup", "restore", "replicate"},
}


def _listed(args: list[str]) -> set[str]:
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    commands = result.output.split("Commands:\n", 1)[1]
    return {line.split()[0] for line in commands.splitlines() if line.startswith("  ")}


def test_main_lists_every_command():
    assert _listed([]) == TOP_LEVEL


@pytest.mark.parametrize(("group", "commands"), sorted(GROUPS.items()))
def test_each_group_lists_its_commands(group, commands):
    assert _listed([group]) == commands


@pytest.mark.parametrize("command", sorted(TOP_LEVEL - set(GROUPS)))
def test_each_command_answers_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: main {command} ")
