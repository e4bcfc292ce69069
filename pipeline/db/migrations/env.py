"""Alembic environment: the URL comes from settings unless the caller passed one."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from config import load_settings
from pipeline.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or load_settings().database_url


def render_item(type_: str, obj: object, autogen_context) -> str | bool:  # noqa: ANN001
    # Migrations must not import app types: UTCDateTime is a plain timestamptz column.
    if type_ == "type" and type(obj).__name__ == "UTCDateTime":
        return "sa.DateTime(timezone=True)"
    return False


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)  # one-shot: no pooled connections
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_item=render_item,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
