"""A database that was never migrated (or is behind): the CLI and the API say
``relaypacs db upgrade`` instead of a SQLAlchemy traceback or a 500."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from config import load_settings

UPGRADE = "relaypacs db upgrade"


@pytest.fixture
def empty_db(tmp_path):
    """Settings and environment on a SQLite file nobody migrated."""
    env = {"RELAYPACS_VAR_DIR": str(tmp_path), "RELAYPACS_BROKER_URL": "memory://",
           "RELAYPACS_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite'}"}
    return env, load_settings(env)


@pytest.mark.parametrize("args", [
    ["users", "create", "--email", "a@b.test", "--facility", "F", "--role", "admin"],
    ["users", "revoke", "--email", "a@b.test"],
    ["destinations", "add", "pacs", "--folder", "pacs-folder"],
    ["destinations", "list"],
    ["deliveries", "list"],
    ["routes", "list"],
    ["storage", "report"],
    ["forecast", "--facility", "total"],
])
def test_cli_on_an_unmigrated_database_names_db_upgrade(empty_db, args):
    from api.cli import main

    env, _ = empty_db
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code != 0
    assert UPGRADE in result.output
    assert "no such table" not in result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback


def test_cli_works_once_upgraded(empty_db):
    from api.cli import main

    env, _ = empty_db
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    result = runner.invoke(main, ["users", "create", "--email", "a@b.test", "--facility", "F",
                                  "--role", "admin"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1]  # the token


def _is_upgrade_503(response) -> bool:
    body = response.get_json() or {}
    return (response.status_code == 503 and body.get("error", {}).get("status") == 503
            and UPGRADE in body["error"]["message"])


def test_api_answers_503_until_the_schema_is_at_head(empty_db):
    from api import create_app
    from pipeline.db.migrate import upgrade_database

    _, settings = empty_db
    app = create_app(settings)  # starts: a migration may be running right now
    client = app.test_client()
    bearer = {"Authorization": "Bearer nope"}
    assert client.get("/healthz").status_code == 200  # liveness: the process is up
    assert _is_upgrade_503(client.get("/readyz"))
    assert _is_upgrade_503(client.post("/login", data={"email": "x@y.test", "password": "x"}))
    assert _is_upgrade_503(client.get("/api/v1/batches/1", headers=bearer))
    assert _is_upgrade_503(client.get("/metrics"))

    upgrade_database(settings.database_url)
    guard = app.extensions["relaypacs.schema"]
    # Not re-checked on every request: still refused within the re-check interval...
    assert _is_upgrade_503(client.get("/readyz"))
    now = guard.clock()
    guard.clock = lambda: now + guard.recheck_seconds + 1
    # ...then at head, and the routes answer as usual.
    assert "checks" in client.get("/readyz").get_json()
    assert client.post("/login", data={"email": "x@y.test", "password": "x"}).status_code == 401
    assert client.get("/api/v1/batches/1", headers=bearer).status_code == 401


def test_guard_checks_at_most_once_per_interval_and_never_again_at_head(empty_db, monkeypatch):
    from pipeline.db import engine as database
    from pipeline.db import migrate

    _, settings = empty_db
    answers = iter(["run `relaypacs db upgrade`", "run `relaypacs db upgrade`", None])
    calls = []

    def fake_problem(engine):  # noqa: ANN001, ANN202
        calls.append(engine)
        return next(answers)

    monkeypatch.setattr(migrate, "schema_problem", fake_problem)
    now = [100.0]
    guard = migrate.SchemaGuard(database.make_engine(settings.database_url),
                                 recheck_seconds=5.0, clock=lambda: now[0])
    assert guard.problem() and len(calls) == 1
    now[0] += 4.9
    assert guard.problem() and len(calls) == 1
    now[0] += 0.2
    assert guard.problem() and len(calls) == 2
    now[0] += 5.1
    assert guard.problem() is None and len(calls) == 3
    now[0] += 3600
    assert guard.problem() is None and len(calls) == 3


def test_schema_problem_on_empty_behind_and_head(empty_db):
    from alembic import command
    from alembic.config import Config

    from pipeline.db.engine import make_engine
    from pipeline.db.migrate import SCRIPT_LOCATION, schema_problem

    _, settings = empty_db
    engine = make_engine(settings.database_url)
    assert UPGRADE in schema_problem(engine)
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.set_main_option("sqlalchemy.url", settings.database_url)
    command.upgrade(cfg, "0001")
    behind = schema_problem(engine)
    assert UPGRADE in behind and "0001" in behind
    command.upgrade(cfg, "head")
    assert schema_problem(engine) is None
