"""Schema migrations: bring a database up to the newest Alembic revision.

Alembic and SQLAlchemy only, so the CLI, the embedded demo and the tests share one way to
create or upgrade a schema without importing each other.
"""

from __future__ import annotations

from pathlib import Path

# The revisions ship inside the package, so an installed gateway finds them without a checkout.
SCRIPT_LOCATION = "pipeline.db:migrations"


def upgrade_database(database_url: str) -> None:
    """Apply every migration up to head (a SQLite file's folder is created first)."""
    from alembic import command
    from alembic.config import Config

    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    # Alembic's config is ConfigParser: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(cfg, "head")
