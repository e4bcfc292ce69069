"""docker-compose.yml stays valid and only starts processes the code base actually has."""

from __future__ import annotations

import ast
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from config.settings import QUEUES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
RELAYPACS_SUBCOMMANDS = {"api", "worker", "beat", "db", "demo", "scp", "events", "events-relay"}


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def test_compose_file_is_valid():
    binary = shutil.which("docker-compose")
    # `make test` runs .ci/setup.sh first, which installs it: missing is a failure, not a skip.
    assert binary is not None, "docker-compose is not installed (run `bash .ci/setup.sh`)"

    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr


def test_relaypacs_commands_use_known_subcommands():
    commands = [_command(s) for s in _services().values()]
    relaypacs = [c for c in commands if c and c[0] == "relaypacs"]

    assert relaypacs, "no service runs relaypacs"
    for command in relaypacs:
        assert len(command) > 1 and command[1] in RELAYPACS_SUBCOMMANDS, command


def test_one_worker_service_per_queue():
    queues = []
    for name, service in _services().items():
        command = _command(service)
        if command[:2] == ["relaypacs", "worker"]:
            queue_list = command[command.index("-Q") + 1]
            assert "," not in queue_list, f"{name}: one queue per worker service"
            assert "container_name" not in service, f"{name}: must stay scalable"
            queues.append(queue_list)

    assert sorted(queues) == sorted(QUEUES)


def test_gunicorn_target_exists():
    targets = [c[-1] for c in map(_command, _services().values()) if c and c[0] == "gunicorn"]
    assert targets == ["api:create_app()"]

    module, _, call = targets[0].partition(":")
    package_init = ROOT / module / "__init__.py"
    assert package_init.exists(), f"compose runs {targets[0]} but {package_init.relative_to(ROOT)} is missing"
    tree = ast.parse(package_init.read_text())
    defined = {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    } | {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert call.removesuffix("()") in defined, f"{module} has no {call}"
