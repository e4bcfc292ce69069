"""``relaypacs db ...``: the database schema (Alembic migrations, in pipeline/db/migrate.py)."""

from __future__ import annotations

import click

from config import load_settings
from pipeline.db.migrate import upgrade_database


@click.group()
def db() -> None:
    """Database schema."""


@db.command()
def upgrade() -> None:
    """Apply Alembic migrations up to the newest."""
    upgrade_database(load_settings().database_url)
    click.echo("database is up to date")
