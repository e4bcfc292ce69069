"""intake: a partial index for the open-uploads count of each tus creation (issue 3)

Revision ID: intake_01
Revises: forecasts_02
Create Date: 2026-11-24 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'intake_01'
down_revision = 'forecasts_02'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Without it the count walks every upload the user ever sent (ix_uploads_user_created),
    # so each creation got slower with the user's history.
    receiving = sa.text("state = 'receiving'")
    op.create_index('ix_uploads_user_receiving', 'uploads', ['user_id'], unique=False,
                    postgresql_where=receiving, sqlite_where=receiving)


def downgrade() -> None:
    op.drop_index('ix_uploads_user_receiving', table_name='uploads')
