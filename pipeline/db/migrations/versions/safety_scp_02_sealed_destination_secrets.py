"""safety_scp: destination passwords and tokens sealed (Fernet) out of the options column

Revision ID: safety_scp_02
Revises: safety_scp_01
Create Date: 2026-12-01 11:00:00

Rows that hold a password or token in ``options`` have it moved, encrypted, into
``sealed_secrets``, with the key of the settings the gateway runs with (RELAYPACS_SECRET_KEY;
with SQLite and no key set, the key file in the var folder). With another database and no key
set, the upgrade stops before changing anything, naming the variable: a row is never left in
plain text, nor sealed with a key the other processes do not have.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = 'safety_scp_02'
down_revision = 'safety_scp_01'
branch_labels = None
depends_on = None

SECRET_FIELDS = ("password", "token")

destinations = sa.table(
    'destinations',
    sa.column('id', sa.Integer),
    sa.column('name', sa.String),
    sa.column('options', sa.JSON),
    sa.column('sealed_secrets', sa.Text),
)


def _box():
    from config import load_settings
    from pipeline.delivery.destinations.credentials import SecretBox

    settings = load_settings()
    embedded = op.get_bind().dialect.name == "sqlite"
    return SecretBox(settings.secret_keys, key_file_dir=settings.var_dir if embedded else None)


def _options(value):
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def upgrade() -> None:
    from pipeline.delivery.destinations.credentials import SecretKeyError

    with op.batch_alter_table('destinations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sealed_secrets', sa.Text(), nullable=True))

    bind = op.get_bind()
    changes = []
    for row in bind.execute(sa.select(destinations.c.id, destinations.c.name,
                                      destinations.c.options)):
        options = _options(row.options)
        if not any(field in options for field in SECRET_FIELDS):
            continue
        secrets = {f: str(options[f]) for f in SECRET_FIELDS if options.get(f)}
        plain = {k: v for k, v in options.items() if k not in SECRET_FIELDS}
        changes.append((row.id, row.name, plain, secrets))
    if not changes:
        return
    box = _box()
    sealed = []
    try:
        for dest_id, _name, plain, secrets in changes:
            sealed.append((dest_id, plain, box.seal(secrets) if secrets else None))
    except SecretKeyError as exc:
        names = ", ".join(sorted(name for _, name, _, s in changes if s))
        raise RuntimeError(
            f"destinations {names} hold a password or token in plain text, which this upgrade "
            f"encrypts; set RELAYPACS_SECRET_KEY first ({exc})") from None
    for dest_id, plain, token in sealed:
        bind.execute(destinations.update().where(destinations.c.id == dest_id)
                     .values(options=plain, sealed_secrets=token))


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(destinations.c.id, destinations.c.options,
                                  destinations.c.sealed_secrets)
                        .where(destinations.c.sealed_secrets.is_not(None))).all()
    if rows:
        box = _box()
        for row in rows:
            options = {**_options(row.options), **box.open(row.sealed_secrets)}
            bind.execute(destinations.update().where(destinations.c.id == row.id)
                         .values(options=options))
    with op.batch_alter_table('destinations', schema=None) as batch_op:
        batch_op.drop_column('sealed_secrets')
