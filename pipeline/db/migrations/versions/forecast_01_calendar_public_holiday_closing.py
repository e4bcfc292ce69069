"""facility calendars: whether the facility closes on public holidays (issue 20: a holiday
ahead is a closed day only when the facility says so)

Revision ID: forecast_01
Revises: safety_recovery_01
Create Date: 2026-12-06 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'forecast_01'
down_revision = 'teaching_01'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('facility_calendars',
                  sa.Column('closes_on_public_holidays', sa.Boolean(), nullable=False,
                            server_default=sa.false()))


def downgrade() -> None:
    op.drop_column('facility_calendars', 'closes_on_public_holidays')
