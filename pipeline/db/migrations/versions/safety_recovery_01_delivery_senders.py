"""delivery senders: the heartbeat of each forwarding run, so a killed worker's study is taken over

Revision ID: safety_recovery_01
Revises: safety_batch_01
Create Date: 2026-11-25 16:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'safety_recovery_01'
down_revision = 'safety_batch_01'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'delivery_senders',
        sa.Column('claim', sa.String(length=64), nullable=False),
        sa.Column('study_id', sa.Integer(), nullable=False),
        sa.Column('destination_id', sa.Integer(), nullable=False),
        sa.Column('worker', sa.String(length=200), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['destination_id'], ['destinations.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('claim'),
    )
    op.create_index('ix_delivery_senders_heartbeat_at', 'delivery_senders', ['heartbeat_at'])


def downgrade() -> None:
    op.drop_index('ix_delivery_senders_heartbeat_at', table_name='delivery_senders')
    op.drop_table('delivery_senders')
