"""batches held until confirmed: a batch opened from the upload screen waits for the person

Revision ID: web_01
Revises: safety_recovery_01
Create Date: 2026-12-06 19:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'web_01'
down_revision = "photos_01"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as batch_op:
        batch_op.add_column(sa.Column('held', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batches') as batch_op:
        batch_op.drop_column('confirmed_at')
        batch_op.drop_column('held')
