"""safety_batch: versions of one SOPInstanceUID (instances.version_state, sop_instances)

Revision ID: safety_batch_01
Revises: safety_hostile_01
Create Date: 2026-12-06 16:00:00

An instance row becomes one version of its SOPInstanceUID: new bytes for a known
SOPInstanceUID get their own row, filed under their own UIDs, instead of overwriting the
old one in its old study. The unique (facility, SOPInstanceUID) constraint becomes a unique
index over the current versions only.
"""

import sqlalchemy as sa
from alembic import op

revision = 'safety_batch_01'
down_revision = 'safety_hostile_01'
branch_labels = None
depends_on = None

_CURRENT = sa.text("version_state = 'current'")


def _unique_name(bind) -> str | None:  # noqa: ANN001
    for constraint in sa.inspect(bind).get_unique_constraints('instances'):
        if constraint['column_names'] == ['facility_id', 'sop_instance_uid']:
            return constraint['name']
    return None


def upgrade() -> None:
    bind = op.get_bind()
    # SQLite's table was made with an unnamed constraint: the batch copy names it by the
    # convention so that it can be dropped.
    convention = {"uq": "uq_%(table_name)s_%(column_0_name)s_%(column_1_name)s"}
    name = _unique_name(bind) or "uq_instances_facility_id_sop_instance_uid"
    with op.batch_alter_table('instances', naming_convention=convention) as batch_op:
        batch_op.add_column(sa.Column('version_state', sa.String(length=16), nullable=False,
                                      server_default='current'))
        batch_op.drop_constraint(name, type_='unique')
    op.create_index('ix_instances_facility_sop', 'instances', ['facility_id', 'sop_instance_uid'])
    op.create_index('uq_instances_current_version', 'instances', ['facility_id', 'sop_instance_uid'],
                    unique=True, postgresql_where=_CURRENT, sqlite_where=_CURRENT)
    op.create_table(
        'sop_instances',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('facility_id', sa.Integer(), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('chosen_instance_id', sa.Integer(), nullable=True),
        sa.Column('conflict', sa.String(length=24), nullable=True),
        sa.Column('conflict_state', sa.String(length=16), nullable=True),
        sa.Column('rule', sa.Text(), nullable=True),
        sa.Column('decided_by', sa.Integer(), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['chosen_instance_id'], ['instances.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['decided_by'], ['users.id']),
        sa.ForeignKeyConstraint(['facility_id'], ['facilities.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('facility_id', 'sop_instance_uid'),
    )
    # The batch report lists the open and decided conflicts; most rows have none.
    has_conflict = sa.text("conflict IS NOT NULL")
    op.create_index('ix_sop_instances_conflicts', 'sop_instances', ['facility_id'],
                    postgresql_where=has_conflict, sqlite_where=has_conflict)


def downgrade() -> None:
    # Checked before anything changes: SQLite's DDL is not transactional.
    several = op.get_bind().execute(
        sa.text("SELECT count(*) FROM instances WHERE version_state <> 'current'")).scalar()
    if several:
        raise RuntimeError(f"{several} instances are older or held versions of a SOPInstanceUID; "
                           "the previous schema holds one row per SOPInstanceUID")
    op.drop_index('ix_sop_instances_conflicts', table_name='sop_instances')
    op.drop_table('sop_instances')
    op.drop_index('uq_instances_current_version', table_name='instances')
    op.drop_index('ix_instances_facility_sop', table_name='instances')
    with op.batch_alter_table('instances') as batch_op:
        batch_op.drop_column('version_state')
        batch_op.create_unique_constraint('uq_instances_facility_id_sop_instance_uid',
                                          ['facility_id', 'sop_instance_uid'])
