"""safety_scp: the DICOM listener's allow-list of callers (AE title, network, facility)

Revision ID: safety_scp_01
Revises: intake_01
Create Date: 2026-12-01 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'safety_scp_01'
down_revision = 'intake_01'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('scp_callers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('network', sa.String(length=64), nullable=True),
    sa.Column('facility_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['facility_id'], ['facilities.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('scp_callers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scp_callers_ae_title'), ['ae_title'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('scp_callers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scp_callers_ae_title'))
    op.drop_table('scp_callers')
