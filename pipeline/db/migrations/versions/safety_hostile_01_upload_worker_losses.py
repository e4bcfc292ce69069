"""safety_hostile: count the attempts at an upload's assembly or parse that never finished

Revision ID: safety_hostile_01
Revises: safety_sessions_01
Create Date: 2026-12-01 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'safety_hostile_01'
down_revision = 'safety_sessions_01'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Raised before the work starts and set back to 0 when it ends either way: what is left
    # counts the workers that died on this upload (out of memory, a crash).
    with op.batch_alter_table('uploads') as batch:
        batch.add_column(sa.Column('unfinished_attempts', sa.Integer(), nullable=False,
                                   server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('uploads') as batch:
        batch.drop_column('unfinished_attempts')
