"""uploads.photo: a phone photo's checked request, for the conversion to DICOM before parsing

Revision ID: photos_01
Revises: safety_recovery_01
Create Date: 2026-12-06 19:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'photos_01'
down_revision = "forecast_01"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('uploads', sa.Column('photo', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('uploads', 'photo')
