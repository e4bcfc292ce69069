"""forecasts: a granularity on stored forecasts, for the next-48-hour ones (issue 7)

Revision ID: forecasts_02
Revises: analytics_02
Create Date: 2026-11-24 09:45:00
"""

from alembic import op
import sqlalchemy as sa


revision = 'forecasts_02'
down_revision = 'analytics_02'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows are the daily forecasts.
    op.add_column('upload_forecasts', sa.Column('granularity', sa.String(length=8), nullable=False,
                                                server_default='day'))
    op.create_index('ix_upload_forecasts_granularity_facility_metric', 'upload_forecasts',
                    ['granularity', 'facility_id', 'metric', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_upload_forecasts_granularity_facility_metric', table_name='upload_forecasts')
    op.drop_column('upload_forecasts', 'granularity')
