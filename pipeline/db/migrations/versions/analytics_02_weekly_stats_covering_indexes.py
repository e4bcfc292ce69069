"""analytics: weekly facility rollup and covering facility-first stats indexes (issue 5)

Revision ID: analytics_02
Revises: lifecycle_01
Create Date: 2026-11-24 09:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = 'analytics_02'
down_revision = 'lifecycle_01'
branch_labels = None
depends_on = None

MEASURES = ("uploads", "bytes", "studies", "quarantined", "delivered", "pending_deliveries",
            "failed_deliveries", "latency_sum_ms", "latency_max_ms", *(f"lat_b{i}" for i in range(12)))
BIG = {"bytes", "latency_sum_ms", "latency_max_ms"}


def upgrade() -> None:
    op.create_table(
        'weekly_facility_stats',
        sa.Column('week', sa.DateTime(timezone=True), nullable=False),
        sa.Column('facility_id', sa.Integer(), nullable=False),
        *(sa.Column(name, sa.BigInteger() if name in BIG else sa.Integer(), nullable=False)
          for name in MEASURES),
        sa.ForeignKeyConstraint(['facility_id'], ['facilities.id']),
        sa.PrimaryKeyConstraint('week', 'facility_id'),
    )
    op.create_index('ix_hourly_stats_facility_hour_cover', 'hourly_stats', ['facility_id', 'hour'],
                    postgresql_include=['status', 'modality', 'user_id', *MEASURES])
    op.create_index('ix_hourly_stats_user_hour_cover', 'hourly_stats', ['user_id', 'hour'],
                    postgresql_include=['status', *MEASURES])
    op.create_index('ix_daily_facility_stats_facility_day_cover', 'daily_facility_stats',
                    ['facility_id', 'day'], postgresql_include=list(MEASURES))
    # The covering indexes lead with the same columns: the narrow ones only cost writes.
    op.drop_index('ix_hourly_stats_facility_hour', table_name='hourly_stats')
    op.drop_index('ix_hourly_stats_user_hour', table_name='hourly_stats')
    # Existing daily rows make their weeks at once (the stats job keeps them current after).
    if op.get_bind().dialect.name == "postgresql":
        week = "timezone('UTC', date_trunc('week', timezone('UTC', day)))"
    else:
        week = "strftime('%Y-%m-%d 00:00:00.000000', day, 'weekday 0', '-6 days')"
    sums = ", ".join(f"max({m})" if m == "latency_max_ms" else f"sum({m})" for m in MEASURES)
    op.execute(f"INSERT INTO weekly_facility_stats (week, facility_id, {', '.join(MEASURES)})"
               f" SELECT {week}, facility_id, {sums} FROM daily_facility_stats GROUP BY 1, 2")


def downgrade() -> None:
    op.create_index('ix_hourly_stats_user_hour', 'hourly_stats', ['user_id', 'hour'])
    op.create_index('ix_hourly_stats_facility_hour', 'hourly_stats', ['facility_id', 'hour'])
    op.drop_index('ix_daily_facility_stats_facility_day_cover', table_name='daily_facility_stats')
    op.drop_index('ix_hourly_stats_user_hour_cover', table_name='hourly_stats')
    op.drop_index('ix_hourly_stats_facility_hour_cover', table_name='hourly_stats')
    op.drop_table('weekly_facility_stats')
