"""event outbox: events written in the state change's transaction, ordered by the relay

Revision ID: events_01
Revises: consults_01
Create Date: 2026-12-06 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'events_01'
down_revision = 'consults_01'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'event_outbox',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('position', sa.BigInteger(), nullable=True),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('facility_id', sa.Integer(), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('position'),
    )
    op.create_index('ix_event_outbox_pending', 'event_outbox', ['id'],
                    postgresql_where=sa.text('position IS NULL'), sqlite_where=sa.text('position IS NULL'))
    op.create_index('ix_event_outbox_unpublished', 'event_outbox', ['position'],
                    postgresql_where=sa.text('published_at IS NULL AND position IS NOT NULL'),
                    sqlite_where=sa.text('published_at IS NULL AND position IS NOT NULL'))
    op.create_index('ix_event_outbox_facility_position', 'event_outbox', ['facility_id', 'position'])
    op.create_index('ix_event_outbox_occurred_at', 'event_outbox', ['occurred_at'])


def downgrade() -> None:
    op.drop_index('ix_event_outbox_occurred_at', table_name='event_outbox')
    op.drop_index('ix_event_outbox_facility_position', table_name='event_outbox')
    op.drop_index('ix_event_outbox_unpublished', table_name='event_outbox')
    op.drop_index('ix_event_outbox_pending', table_name='event_outbox')
    op.drop_table('event_outbox')
