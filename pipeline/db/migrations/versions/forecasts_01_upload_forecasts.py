"""forecasts: upload volume forecasts and facility calendars (issue 7)

Revision ID: forecasts_01
Revises: exports_01
Create Date: 2026-11-24 06:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = 'forecasts_01'
down_revision = 'exports_01'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('facility_calendars',
    sa.Column('facility_id', sa.Integer(), nullable=False),
    sa.Column('country', sa.String(length=8), nullable=True),
    sa.Column('subdivision', sa.String(length=16), nullable=True),
    sa.Column('closed_days', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['facility_id'], ['facilities.id'], ),
    sa.PrimaryKeyConstraint('facility_id')
    )
    op.create_table('upload_forecasts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('facility_id', sa.Integer(), nullable=True),
    sa.Column('metric', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('horizon', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=32), nullable=False),
    sa.Column('model_order', sa.JSON(), nullable=True),
    sa.Column('aic', sa.Double(), nullable=True),
    sa.Column('train_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('train_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('fallback_reason', sa.Text(), nullable=True),
    sa.Column('regressors', sa.JSON(), nullable=False),
    sa.Column('candidates', sa.JSON(), nullable=False),
    sa.Column('backtest', sa.JSON(), nullable=False),
    sa.Column('points', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['facility_id'], ['facilities.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_upload_forecasts_facility_metric_created', 'upload_forecasts',
                    ['facility_id', 'metric', 'created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_upload_forecasts_facility_metric_created', table_name='upload_forecasts')
    op.drop_table('upload_forecasts')
    op.drop_table('facility_calendars')
